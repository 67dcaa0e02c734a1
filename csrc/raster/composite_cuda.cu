// CUDA kernels of the compositing ops: the math of composite_math.h, one thread per pixel (grid
// stride). Each thread writes only its pixel's outputs and gradients: no atomics, deterministic.
// No torch headers here (see design.md).
#include <cuda_runtime.h>

#include "../common/cuda_utils.cuh"
#include "composite_kernels.h"

namespace invrender {
namespace composite {
namespace {

using namespace invrender::cuda;

#define INVRENDER_PIXEL_LOOP(n, total)                                                \
  for (int64_t n = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; n < (total); \
       n += int64_t(blockDim.x) * gridDim.x)

template <typename T>
__global__ void composite_forward_kernel(Sizes s, const T* alpha, const T* colors,
                                         const T* background, T* image, T* mask) {
  INVRENDER_PIXEL_LOOP(n, s.B * s.P)
  composite_forward_pixel(s, alpha, colors, background, image, mask, n);
}

template <typename T>
__global__ void composite_backward_kernel(Sizes s, const T* grad_image, const T* grad_mask,
                                          const T* alpha, const T* colors, const T* background,
                                          T* grad_alpha, T* grad_colors, T* grad_background) {
  INVRENDER_PIXEL_LOOP(n, s.B * s.P)
  composite_backward_pixel(s, grad_image, grad_mask, alpha, colors, background, grad_alpha,
                           grad_colors, grad_background, n);
}

template <typename T>
__global__ void softras_forward_kernel(Sizes s, SoftrasParams p, const T* prob, const T* depth,
                                       const int64_t* face_idx, const T* colors,
                                       const T* background, T* image, T* silhouette) {
  INVRENDER_PIXEL_LOOP(n, s.B * s.P)
  softras_forward_pixel(s, p, prob, depth, face_idx, colors, background, image, silhouette, n);
}

template <typename T>
__global__ void softras_backward_kernel(Sizes s, SoftrasParams p, const T* grad_image,
                                        const T* grad_silhouette, const T* prob, const T* depth,
                                        const int64_t* face_idx, const T* colors,
                                        const T* background, T* grad_prob, T* grad_depth,
                                        T* grad_colors, T* grad_background) {
  INVRENDER_PIXEL_LOOP(n, s.B * s.P)
  softras_backward_pixel(s, p, grad_image, grad_silhouette, prob, depth, face_idx, colors,
                         background, grad_prob, grad_depth, grad_colors, grad_background, n);
}

#undef INVRENDER_PIXEL_LOOP

}  // namespace

template <typename T>
cudaError_t composite_forward_cuda(const Sizes& s, const T* alpha, const T* colors,
                                   const T* background, T* image, T* mask, cudaStream_t stream) {
  const int64_t n = s.B * s.P;
  if (n == 0) return cudaSuccess;
  composite_forward_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(s, alpha, colors,
                                                                      background, image, mask);
  return cudaGetLastError();
}

template <typename T>
cudaError_t composite_backward_cuda(const Sizes& s, const T* grad_image, const T* grad_mask,
                                    const T* alpha, const T* colors, const T* background,
                                    T* grad_alpha, T* grad_colors, T* grad_background,
                                    cudaStream_t stream) {
  const int64_t n = s.B * s.P;
  if (n == 0) return cudaSuccess;
  composite_backward_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(
      s, grad_image, grad_mask, alpha, colors, background, grad_alpha, grad_colors,
      grad_background);
  return cudaGetLastError();
}

template <typename T>
cudaError_t softras_forward_cuda(const Sizes& s, const SoftrasParams& p, const T* prob,
                                 const T* depth, const int64_t* face_idx, const T* colors,
                                 const T* background, T* image, T* silhouette,
                                 cudaStream_t stream) {
  const int64_t n = s.B * s.P;
  if (n == 0) return cudaSuccess;
  softras_forward_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(
      s, p, prob, depth, face_idx, colors, background, image, silhouette);
  return cudaGetLastError();
}

template <typename T>
cudaError_t softras_backward_cuda(const Sizes& s, const SoftrasParams& p, const T* grad_image,
                                  const T* grad_silhouette, const T* prob, const T* depth,
                                  const int64_t* face_idx, const T* colors, const T* background,
                                  T* grad_prob, T* grad_depth, T* grad_colors,
                                  T* grad_background, cudaStream_t stream) {
  const int64_t n = s.B * s.P;
  if (n == 0) return cudaSuccess;
  softras_backward_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(
      s, p, grad_image, grad_silhouette, prob, depth, face_idx, colors, background, grad_prob,
      grad_depth, grad_colors, grad_background);
  return cudaGetLastError();
}

#define INSTANTIATE(T)                                                                           \
  template cudaError_t composite_forward_cuda<T>(const Sizes&, const T*, const T*, const T*, T*, \
                                                 T*, cudaStream_t);                              \
  template cudaError_t composite_backward_cuda<T>(const Sizes&, const T*, const T*, const T*,    \
                                                  const T*, const T*, T*, T*, T*, cudaStream_t); \
  template cudaError_t softras_forward_cuda<T>(const Sizes&, const SoftrasParams&, const T*,     \
                                               const T*, const int64_t*, const T*, const T*, T*, \
                                               T*, cudaStream_t);                                \
  template cudaError_t softras_backward_cuda<T>(const Sizes&, const SoftrasParams&, const T*,    \
                                                const T*, const T*, const T*, const int64_t*,    \
                                                const T*, const T*, T*, T*, T*, T*,              \
                                                cudaStream_t);
INSTANTIATE(float)
INSTANTIATE(double)
#undef INSTANTIATE

}  // namespace composite
}  // namespace invrender
