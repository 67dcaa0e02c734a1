// Launchers of the compositing ops on raw pointers, shared by the CPU loops (composite_cpu.cpp)
// and the CUDA kernels (composite_cuda.cu). No torch types. All pointers contiguous, layouts in
// composite_math.h:
//
//   alpha / prob / depth / face_idx (B, H, W, L)   colors (B, H, W, L, C)
//   background / image (B, C, H, W)                mask / silhouette (B, 1, H, W)
//
// One CPU iteration / CUDA thread per pixel writes every output and gradient entry of that pixel:
// no atomics, deterministic on both devices.
#pragma once

#include <cstdint>

#include "composite_math.h"

#if defined(WITH_CUDA) || defined(__CUDACC__)
#include <cuda_runtime_api.h>
#endif

namespace invrender {
namespace composite {

template <typename T>
void composite_forward_cpu(const Sizes& s, const T* alpha, const T* colors, const T* background,
                           T* image, T* mask);
template <typename T>
void composite_backward_cpu(const Sizes& s, const T* grad_image, const T* grad_mask,
                            const T* alpha, const T* colors, const T* background, T* grad_alpha,
                            T* grad_colors, T* grad_background);
template <typename T>
void softras_forward_cpu(const Sizes& s, const SoftrasParams& p, const T* prob, const T* depth,
                         const int64_t* face_idx, const T* colors, const T* background, T* image,
                         T* silhouette);
template <typename T>
void softras_backward_cpu(const Sizes& s, const SoftrasParams& p, const T* grad_image,
                          const T* grad_silhouette, const T* prob, const T* depth,
                          const int64_t* face_idx, const T* colors, const T* background,
                          T* grad_prob, T* grad_depth, T* grad_colors, T* grad_background);

#if defined(WITH_CUDA) || defined(__CUDACC__)
template <typename T>
cudaError_t composite_forward_cuda(const Sizes& s, const T* alpha, const T* colors,
                                   const T* background, T* image, T* mask, cudaStream_t stream);
template <typename T>
cudaError_t composite_backward_cuda(const Sizes& s, const T* grad_image, const T* grad_mask,
                                    const T* alpha, const T* colors, const T* background,
                                    T* grad_alpha, T* grad_colors, T* grad_background,
                                    cudaStream_t stream);
template <typename T>
cudaError_t softras_forward_cuda(const Sizes& s, const SoftrasParams& p, const T* prob,
                                 const T* depth, const int64_t* face_idx, const T* colors,
                                 const T* background, T* image, T* silhouette,
                                 cudaStream_t stream);
template <typename T>
cudaError_t softras_backward_cuda(const Sizes& s, const SoftrasParams& p, const T* grad_image,
                                  const T* grad_silhouette, const T* prob, const T* depth,
                                  const int64_t* face_idx, const T* colors, const T* background,
                                  T* grad_prob, T* grad_depth, T* grad_colors,
                                  T* grad_background, cudaStream_t stream);
#endif

}  // namespace composite
}  // namespace invrender
