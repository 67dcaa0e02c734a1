// Nearest neighbours between point clouds, written once for the CPU loops and the CUDA kernels.
// No torch types.
//
//   x (B, N, D), y (B, M, D), D <= kMaxDim; x_len, y_len (B,) valid lengths.
//   For each valid x_i: idx_i = argmin_{j < y_len} |x_i - y_j|^2 (the smallest j among ties),
//   dist_i = that squared distance. Invalid x_i (i >= x_len) and clouds with y_len = 0 give
//   dist 0 and idx -1.
//   Backward: d dist_i / d x_i = 2 (x_i - y_idx),  d dist_i / d y_idx = -2 (x_i - y_idx).
//
// On the CPU a k-d tree over y (built per cloud; leaves of at most kLeaf points) answers the
// queries; tiny clouds are searched by brute force. On the GPU each block stages tiles of y in
// shared memory and each thread scans them for its query (brute force, O(N + M) memory).
#pragma once

#include "../common/common.h"

namespace invrender {
namespace chamfer {

constexpr int kMaxDim = 8;

struct NNSizes {
  int64_t B, N, M, D;
};

template <typename T>
HOST_DEVICE INLINE T sq_dist(const T* a, const T* b, int64_t D) {
  T s = T(0);
  for (int64_t k = 0; k < D; ++k) {
    const T d = a[k] - b[k];
    s += d * d;
  }
  return s;
}

// Keeps (d, j) if it beats (best, best_j): none yet (best_j < 0), a smaller distance, or an equal
// distance and a smaller index.
template <typename T>
HOST_DEVICE INLINE void keep_nearest(T d, int64_t j, T* best, int64_t* best_j) {
  if (*best_j < 0 || d < *best || (d == *best && j < *best_j)) {
    *best = d;
    *best_j = j;
  }
}

// Gradient of one query: adds g * 2 (x - y) to gx and -g * 2 (x - y) to gy through `scatter`.
template <typename T, typename Scatter>
HOST_DEVICE INLINE void nn_backward_point(const T* x, const T* y, T g, int64_t D, T* gx, T* gy,
                                          const Scatter& scatter) {
  for (int64_t k = 0; k < D; ++k) {
    const T v = T(2) * g * (x[k] - y[k]);
    gx[k] = v;
    if (gy != nullptr) scatter(gy + k, -v);
  }
}

}  // namespace chamfer
}  // namespace invrender
