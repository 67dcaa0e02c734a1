// CUDA kernels of the voxel ops: the math of voxel_math.h, one thread per output voxel or pixel.
// Backward kernels scatter into the grid gradient with atomicAdd (non-deterministic; the torch
// glue says so) and reduce the rotation gradient per warp before one atomicAdd per warp.
// No torch headers here (see design.md).
#include <cuda_runtime.h>

#include <algorithm>

#include "../common/cuda_utils.cuh"
#include "voxel_kernels.h"

namespace invrender {
namespace voxel {
namespace {

using namespace invrender::cuda;

template <typename T>
__global__ void rotation_forward_kernel(const T* az, const T* el, const T* roll, T* R,
                                        int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(blockDim.x) * gridDim.x)
    rotation_forward(az[i], el[i], roll[i], R + 9 * i);
}

template <typename T>
__global__ void rotation_backward_kernel(const T* gR, const T* az, const T* el, const T* roll,
                                         T* gaz, T* gel, T* groll, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(blockDim.x) * gridDim.x)
    rotation_backward(gR + 9 * i, az[i], el[i], roll[i], gaz + i, gel + i, groll + i);
}

template <typename T, bool Nearest>
__global__ void rotate_forward_kernel(Geometry g, const T* vox, const T* rot, T* out) {
  const int64_t n = g.B * g.Do * g.Ho * g.Wo;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(blockDim.x) * gridDim.x) {
    const int64_t w = i % g.Wo, h = (i / g.Wo) % g.Ho, d = (i / (g.Wo * g.Ho)) % g.Do,
                  b = i / (g.Wo * g.Ho * g.Do);
    rotate_forward_span<T, Nearest>(g, vox, rot, out, b, d, h, w, w + 1);
  }
}

template <typename T, bool Nearest>
__global__ void rotate_backward_kernel(Geometry g, const T* gout, const T* vox, const T* rot,
                                       T* gvox, double* grot) {
  const int64_t n = g.Do * g.Ho * g.Wo;
  for (int64_t b = blockIdx.y; b < g.B; b += gridDim.y) {
    double acc[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};  // as the CPU: summed in double
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
         i += int64_t(blockDim.x) * gridDim.x) {
      const int64_t w = i % g.Wo, h = (i / g.Wo) % g.Ho, d = i / (g.Wo * g.Ho);
      rotate_backward_span<T, Nearest>(g, gout, vox, rot, gvox, acc, b, d, h, w, w + 1,
                                       AtomicScatter());
    }
    if (!Nearest) add_rotation_grad(acc, grot + 9 * b);
  }
}

template <typename T, bool Nearest>
__global__ void project_forward_kernel(Geometry g, const T* vox, const T* rot, T* img, T tau) {
  const int64_t n = g.B * g.Ho * g.Wo;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(blockDim.x) * gridDim.x) {
    const int64_t w = i % g.Wo, h = (i / g.Wo) % g.Ho, b = i / (g.Wo * g.Ho);
    project_forward_pixel<T, Nearest>(g, vox, rot, img, tau, b, h, w);
  }
}

template <typename T, bool Nearest>
__global__ void project_backward_kernel(Geometry g, const T* gimg, const T* img, const T* vox,
                                        const T* rot, T* gvox, double* grot, T tau) {
  const int64_t n = g.Ho * g.Wo;
  for (int64_t b = blockIdx.y; b < g.B; b += gridDim.y) {
    double acc[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};  // as the CPU: summed in double
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
         i += int64_t(blockDim.x) * gridDim.x) {
      const int64_t w = i % g.Wo, h = i / g.Wo;
      project_backward_pixel<T, Nearest>(g, gimg, img, vox, rot, gvox, acc, tau, b, h, w,
                                         AtomicScatter());
    }
    if (!Nearest) add_rotation_grad(acc, grot + 9 * b);
  }
}

}  // namespace

template <typename T>
cudaError_t rotation_forward_cuda(const T* az, const T* el, const T* roll, T* R, int64_t n,
                                  cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  rotation_forward_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(az, el, roll, R, n);
  return cudaGetLastError();
}

template <typename T>
cudaError_t rotation_backward_cuda(const T* gR, const T* az, const T* el, const T* roll, T* gaz,
                                   T* gel, T* groll, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  rotation_backward_kernel<T>
      <<<blocks_for(n), kThreads, 0, stream>>>(gR, az, el, roll, gaz, gel, groll, n);
  return cudaGetLastError();
}

template <typename T>
cudaError_t rotate_forward_cuda(const Geometry& g, const T* vox, const T* rot, T* out, bool nearest,
                                cudaStream_t stream) {
  const int64_t n = g.B * g.Do * g.Ho * g.Wo;
  if (n == 0) return cudaSuccess;
  if (nearest)
    rotate_forward_kernel<T, true><<<blocks_for(n), kThreads, 0, stream>>>(g, vox, rot, out);
  else
    rotate_forward_kernel<T, false><<<blocks_for(n), kThreads, 0, stream>>>(g, vox, rot, out);
  return cudaGetLastError();
}

template <typename T>
cudaError_t rotate_backward_cuda(const Geometry& g, const T* gout, const T* vox, const T* rot,
                                 T* gvox, double* grot, bool nearest, cudaStream_t stream) {
  const int64_t n = g.Do * g.Ho * g.Wo;
  if (n == 0 || g.B == 0) return cudaSuccess;
  const dim3 grid(blocks_for(n), batch_blocks(g.B));
  if (nearest)
    rotate_backward_kernel<T, true><<<grid, kThreads, 0, stream>>>(g, gout, vox, rot, gvox, grot);
  else
    rotate_backward_kernel<T, false><<<grid, kThreads, 0, stream>>>(g, gout, vox, rot, gvox, grot);
  return cudaGetLastError();
}

template <typename T>
cudaError_t project_forward_cuda(const Geometry& g, const T* vox, const T* rot, T* img, T tau,
                                 bool nearest, cudaStream_t stream) {
  const int64_t n = g.B * g.Ho * g.Wo;
  if (n == 0) return cudaSuccess;
  if (nearest)
    project_forward_kernel<T, true><<<blocks_for(n), kThreads, 0, stream>>>(g, vox, rot, img, tau);
  else
    project_forward_kernel<T, false><<<blocks_for(n), kThreads, 0, stream>>>(g, vox, rot, img, tau);
  return cudaGetLastError();
}

template <typename T>
cudaError_t project_backward_cuda(const Geometry& g, const T* gimg, const T* img, const T* vox,
                                  const T* rot, T* gvox, double* grot, T tau, bool nearest,
                                  cudaStream_t stream) {
  const int64_t n = g.Ho * g.Wo;
  if (n == 0 || g.B == 0) return cudaSuccess;
  const dim3 grid(blocks_for(n), batch_blocks(g.B));
  if (nearest)
    project_backward_kernel<T, true>
        <<<grid, kThreads, 0, stream>>>(g, gimg, img, vox, rot, gvox, grot, tau);
  else
    project_backward_kernel<T, false>
        <<<grid, kThreads, 0, stream>>>(g, gimg, img, vox, rot, gvox, grot, tau);
  return cudaGetLastError();
}

#define INSTANTIATE(T)                                                                         \
  template cudaError_t rotation_forward_cuda<T>(const T*, const T*, const T*, T*, int64_t,     \
                                                cudaStream_t);                                 \
  template cudaError_t rotation_backward_cuda<T>(const T*, const T*, const T*, const T*, T*,   \
                                                 T*, T*, int64_t, cudaStream_t);               \
  template cudaError_t rotate_forward_cuda<T>(const Geometry&, const T*, const T*, T*, bool,   \
                                              cudaStream_t);                                   \
  template cudaError_t rotate_backward_cuda<T>(const Geometry&, const T*, const T*, const T*,  \
                                               T*, double*, bool, cudaStream_t);                    \
  template cudaError_t project_forward_cuda<T>(const Geometry&, const T*, const T*, T*, T,     \
                                               bool, cudaStream_t);                            \
  template cudaError_t project_backward_cuda<T>(const Geometry&, const T*, const T*, const T*, \
                                                const T*, T*, double*, T, bool, cudaStream_t);
INSTANTIATE(float)
INSTANTIATE(double)
#undef INSTANTIATE

}  // namespace voxel
}  // namespace invrender
