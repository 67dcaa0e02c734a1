// Launchers of the ray marching op on raw pointers, shared by the CPU loops (raymarch_cpu.cpp)
// and the CUDA kernels (raymarch_cuda.cu). No torch types. All pointers contiguous:
//
//   absorption (B, 1, D, H, W)   emission (B, C, D, H, W) or null (C = 0)   rot (B, 3, 3)
//   color (B, C, Hi, Wi)         alpha (B, 1, Hi, Wi)       depth_sum (B, 1, Hi, Wi)
#pragma once

#include <cstdint>

#include "raymarch_math.h"

#if defined(WITH_CUDA) || defined(__CUDACC__)
#include <cuda_runtime_api.h>
#endif

namespace invrender {
namespace raymarch {

// Test-only: the CPU backward uses the GPU's chunk and checkpoint sizes (raymarch_math.h).
void set_gpu_backward_layout_for_testing(bool on);

template <typename T>
void raymarch_forward_cpu(const RayParams& p, const T* absorption, const T* emission,
                          const T* rot, T* color, T* alpha, T* depth_sum);
// gabs, gem (null without emission) zero-initialised; grot written.
template <typename T>
void raymarch_backward_cpu(const RayParams& p, const T* gcolor, const T* galpha, const T* gdepth,
                           const T* absorption, const T* emission, const T* rot, T* gabs, T* gem,
                           T* grot);

#if defined(WITH_CUDA) || defined(__CUDACC__)
template <typename T>
cudaError_t raymarch_forward_cuda(const RayParams& p, const T* absorption, const T* emission,
                                  const T* rot, T* color, T* alpha, T* depth_sum,
                                  cudaStream_t stream);
// gabs, gem and grot zero-initialised; grot (double) accumulates the rotation gradient.
template <typename T>
cudaError_t raymarch_backward_cuda(const RayParams& p, const T* gcolor, const T* galpha,
                                   const T* gdepth, const T* absorption, const T* emission,
                                   const T* rot, T* gabs, T* gem, double* grot, cudaStream_t stream);
#endif

}  // namespace raymarch
}  // namespace invrender
