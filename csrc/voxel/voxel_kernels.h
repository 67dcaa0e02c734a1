// Launchers of the voxel ops on raw pointers: the CPU loops (voxel_cpu.cpp) and the CUDA kernels
// (voxel_cuda.cu) share these signatures. No torch types, so nvcc compiles the kernels without
// torch headers. All pointers are contiguous; rotations are (B, 3, 3) row-major.
//
//   vox   (B, C, D, H, W)     input grid           out   (B, C, Do, Ho, Wo)   rotated grid
//   rot   (B, 3, 3)           object -> view       img   (B, C, H, W)         projection
//   angles (n,) azimuth, elevation, roll           R     (n, 3, 3)
#pragma once

#include <cstdint>

#include "voxel_math.h"

#if defined(WITH_CUDA) || defined(__CUDACC__)
#include <cuda_runtime_api.h>
#endif

namespace invrender {
namespace voxel {

template <typename T>
void rotation_forward_cpu(const T* az, const T* el, const T* roll, T* R, int64_t n);
template <typename T>
void rotation_backward_cpu(const T* gR, const T* az, const T* el, const T* roll, T* gaz, T* gel,
                           T* groll, int64_t n);

template <typename T>
void rotate_forward_cpu(const Geometry& g, const T* vox, const T* rot, T* out, bool nearest);
// gvox (zero-initialised) and grot (written) both required.
template <typename T>
void rotate_backward_cpu(const Geometry& g, const T* gout, const T* vox, const T* rot, T* gvox,
                         T* grot, bool nearest);

template <typename T>
void project_forward_cpu(const Geometry& g, const T* vox, const T* rot, T* img, T tau,
                         bool nearest);
template <typename T>
void project_backward_cpu(const Geometry& g, const T* gimg, const T* img, const T* vox,
                          const T* rot, T* gvox, T* grot, T tau, bool nearest);

#if defined(WITH_CUDA) || defined(__CUDACC__)
// CUDA launchers: asynchronous on `stream`; they return the launch status. Backward outputs must
// be zero-initialised (they are accumulated with atomics).
template <typename T>
cudaError_t rotation_forward_cuda(const T* az, const T* el, const T* roll, T* R, int64_t n,
                                  cudaStream_t stream);
template <typename T>
cudaError_t rotation_backward_cuda(const T* gR, const T* az, const T* el, const T* roll, T* gaz,
                                   T* gel, T* groll, int64_t n, cudaStream_t stream);
template <typename T>
cudaError_t rotate_forward_cuda(const Geometry& g, const T* vox, const T* rot, T* out, bool nearest,
                                cudaStream_t stream);
template <typename T>
cudaError_t rotate_backward_cuda(const Geometry& g, const T* gout, const T* vox, const T* rot,
                                 T* gvox, double* grot, bool nearest, cudaStream_t stream);
template <typename T>
cudaError_t project_forward_cuda(const Geometry& g, const T* vox, const T* rot, T* img, T tau,
                                 bool nearest, cudaStream_t stream);
template <typename T>
cudaError_t project_backward_cuda(const Geometry& g, const T* gimg, const T* img, const T* vox,
                                  const T* rot, T* gvox, double* grot, T tau, bool nearest,
                                  cudaStream_t stream);
#endif

}  // namespace voxel
}  // namespace invrender
