// CUDA nearest neighbours: tiled brute force. Each block stages tiles of kTilePoints points of y
// in shared memory; each thread scans them for its query point, keeping the nearest (smallest
// index among ties). Memory O(N + M). The backward scatters into the y gradient with atomicAdd
// (non-deterministic; the torch glue says so). No torch headers here (see design.md).
#include <cuda_runtime.h>

#include "../common/cuda_utils.cuh"
#include "chamfer_kernels.h"

namespace invrender {
namespace chamfer {
namespace {

using namespace invrender::cuda;

constexpr int kTilePoints = 256;

template <typename T>
__global__ void nn_forward_kernel(NNSizes s, const T* x, const T* y, const int64_t* x_len,
                                  const int64_t* y_len, T* dist, int64_t* idx) {
  __shared__ T tile[kTilePoints * kMaxDim];
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  for (int64_t b = blockIdx.y; b < s.B; b += gridDim.y) {  // uniform per block
    const int64_t m = y_len[b];
    const bool active = i < s.N && i < x_len[b];
    T q[kMaxDim];
    for (int k = 0; k < kMaxDim; ++k)
      q[k] = k < s.D && active ? x[(b * s.N + i) * s.D + k] : T(0);
    T best = T(0);
    int64_t best_j = -1;
    for (int64_t j0 = 0; j0 < m; j0 += kTilePoints) {
      const int64_t count = (m - j0) < kTilePoints ? (m - j0) : kTilePoints;
      __syncthreads();
      for (int64_t t = threadIdx.x; t < count * s.D; t += blockDim.x)
        tile[t] = y[(b * s.M + j0) * s.D + t];
      __syncthreads();
      if (!active) continue;
      for (int64_t j = 0; j < count; ++j) {
        keep_nearest(sq_dist(q, tile + j * s.D, s.D), j0 + j, &best, &best_j);
      }
    }
    if (i < s.N) {
      dist[b * s.N + i] = best_j >= 0 ? best : T(0);
      idx[b * s.N + i] = best_j;
    }
  }
}

template <typename T>
__global__ void nn_backward_kernel(NNSizes s, const T* grad, const T* x, const T* y,
                                   const int64_t* idx, T* gx, T* gy) {
  const int64_t total = s.B * s.N;
  for (int64_t n = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; n < total;
       n += int64_t(blockDim.x) * gridDim.x) {
    const int64_t b = n / s.N, j = idx[n];
    if (j < 0) {
      for (int64_t k = 0; k < s.D; ++k) gx[n * s.D + k] = T(0);
      continue;
    }
    nn_backward_point(x + n * s.D, y + (b * s.M + j) * s.D, grad[n], s.D, gx + n * s.D,
                      gy == nullptr ? nullptr : gy + (b * s.M + j) * s.D, AtomicScatter());
  }
}

}  // namespace

template <typename T>
cudaError_t nn_forward_cuda(const NNSizes& s, const T* x, const T* y, const int64_t* x_len,
                            const int64_t* y_len, T* dist, int64_t* idx, cudaStream_t stream) {
  if (s.B == 0 || s.N == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned int>((s.N + kThreads - 1) / kThreads), batch_blocks(s.B));
  nn_forward_kernel<T><<<grid, kThreads, 0, stream>>>(s, x, y, x_len, y_len, dist, idx);
  return cudaGetLastError();
}

template <typename T>
cudaError_t nn_backward_cuda(const NNSizes& s, const T* grad, const T* x, const T* y,
                             const int64_t* idx, T* gx, T* gy, cudaStream_t stream) {
  const int64_t n = s.B * s.N;
  if (n == 0) return cudaSuccess;
  nn_backward_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(s, grad, x, y, idx, gx, gy);
  return cudaGetLastError();
}

#define INSTANTIATE(T)                                                                       \
  template cudaError_t nn_forward_cuda<T>(const NNSizes&, const T*, const T*, const int64_t*, \
                                          const int64_t*, T*, int64_t*, cudaStream_t);       \
  template cudaError_t nn_backward_cuda<T>(const NNSizes&, const T*, const T*, const T*,     \
                                           const int64_t*, T*, T*, cudaStream_t);
INSTANTIATE(float)
INSTANTIATE(double)
#undef INSTANTIATE

}  // namespace chamfer
}  // namespace invrender
