// Barycentric interpolation of vertex attributes at the fragments of rasterize, written once for
// the CPU loops and the CUDA kernels. No torch types.
//
//   attrs (B, V, C), faces (B, F, 3) int64, face_idx (B, H, W, L) int64 (-1: empty layer),
//   bary (B, H, W, L, 3)  ->  out (B, H, W, L, C) = sum_k bary_k attrs[faces[f, k]], 0 if empty.
// Per-face-corner attributes (B, F, 3, C) are the case V = 3F with faces[f] = (3f, 3f+1, 3f+2).
// Backward: grad_bary_k = sum_c grad_c attrs[faces[f, k], c]; grad_attrs[faces[f, k], c] +=
// bary_k grad_c (scattered through `scatter`).
#pragma once

#include "../common/common.h"

namespace invrender {
namespace interp {

struct InterpSizes {
  int64_t B, V, F, P, C;  // P = H * W * L fragments per mesh
};

template <typename T>
HOST_DEVICE FORCE_INLINE void interpolate_fragment(const InterpSizes& s, const T* attrs_b,
                                                   const int64_t* faces_b, int64_t f,
                                                   const T* bary, T* out) {
  if (f < 0 || faces_b[3 * f] < 0 || faces_b[3 * f + 1] < 0 || faces_b[3 * f + 2] < 0) {
    for (int64_t c = 0; c < s.C; ++c) out[c] = T(0);  // empty layer (or a padding face)
    return;
  }
  const T* a0 = attrs_b + faces_b[3 * f] * s.C;
  const T* a1 = attrs_b + faces_b[3 * f + 1] * s.C;
  const T* a2 = attrs_b + faces_b[3 * f + 2] * s.C;
  const T b0 = bary[0], b1 = bary[1], b2 = bary[2];
  for (int64_t c = 0; c < s.C; ++c) out[c] = b0 * a0[c] + b1 * a1[c] + b2 * a2[c];
}

template <typename T, typename Scatter>
HOST_DEVICE FORCE_INLINE void interpolate_fragment_backward(const InterpSizes& s,
                                                            const T* attrs_b,
                                                            const int64_t* faces_b, int64_t f,
                                                            const T* bary, const T* grad,
                                                            T* grad_attrs_b, T* grad_bary,
                                                            const Scatter& scatter) {
  T gb[3] = {T(0), T(0), T(0)};
  if (f >= 0 && faces_b[3 * f] >= 0 && faces_b[3 * f + 1] >= 0 && faces_b[3 * f + 2] >= 0) {
    for (int k = 0; k < 3; ++k) {
      const int64_t v = faces_b[3 * f + k];
      const T* a = attrs_b + v * s.C;
      T* ga = grad_attrs_b == nullptr ? nullptr : grad_attrs_b + v * s.C;
      const T bk = bary[k];
      T acc = T(0);
      for (int64_t c = 0; c < s.C; ++c) {
        acc += grad[c] * a[c];
        if (ga != nullptr && grad[c] != T(0)) scatter(ga + c, bk * grad[c]);
      }
      gb[k] = acc;
    }
  }
  if (grad_bary != nullptr)
    for (int k = 0; k < 3; ++k) grad_bary[k] = gb[k];
}

}  // namespace interp
}  // namespace invrender
