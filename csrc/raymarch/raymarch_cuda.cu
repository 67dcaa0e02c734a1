// CUDA kernels of the ray marching op: the math of raymarch_math.h, one thread per ray. The
// backward scatters into the volume gradients with atomicAdd (non-deterministic; the torch glue
// says so) and reduces the rotation gradient per warp. No torch headers here (see design.md).
#include <cuda_runtime.h>

#include "../common/cuda_utils.cuh"
#include "raymarch_kernels.h"

namespace invrender {
namespace raymarch {
namespace {

using namespace invrender::cuda;

template <typename T>
__global__ void __launch_bounds__(kThreads) raymarch_forward_kernel(RayParams p, const T* absorption, const T* emission,
                                        const T* rot, T* color, T* alpha, T* depth_sum) {
  const Geometry& g = p.g;
  const int64_t n = g.B * g.Ho * g.Wo;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < n;
       t += int64_t(blockDim.x) * gridDim.x) {
    const int64_t j = t % g.Wo, i = (t / g.Wo) % g.Ho, b = t / (g.Wo * g.Ho);
    raymarch_forward_ray(p, absorption, emission, rot, color, alpha, depth_sum, b, i, j);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) raymarch_backward_kernel(RayParams p, const T* gcolor, const T* galpha,
                                         const T* gdepth, const T* absorption, const T* emission,
                                         const T* rot, T* gabs, T* gem, double* grot) {
  const Geometry& g = p.g;
  const int64_t n = g.Ho * g.Wo;
  for (int64_t b = blockIdx.y; b < g.B; b += gridDim.y) {
    double acc[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};  // as the CPU: summed in double
    for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < n;
         t += int64_t(blockDim.x) * gridDim.x) {
      const int64_t j = t % g.Wo, i = t / g.Wo;
      raymarch_backward_ray(p, gcolor, galpha, gdepth, absorption, emission, rot, gabs, gem, acc,
                            b, i, j, AtomicScatter());
    }
    add_rotation_grad(acc, grot + 9 * b);
  }
}

}  // namespace

template <typename T>
cudaError_t raymarch_forward_cuda(const RayParams& p, const T* absorption, const T* emission,
                                  const T* rot, T* color, T* alpha, T* depth_sum,
                                  cudaStream_t stream) {
  const int64_t n = p.g.B * p.g.Ho * p.g.Wo;
  if (n == 0) return cudaSuccess;
  raymarch_forward_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(
      p, absorption, emission, rot, color, alpha, depth_sum);
  return cudaGetLastError();
}

template <typename T>
cudaError_t raymarch_backward_cuda(const RayParams& p, const T* gcolor, const T* galpha,
                                   const T* gdepth, const T* absorption, const T* emission,
                                   const T* rot, T* gabs, T* gem, double* grot, cudaStream_t stream) {
  const int64_t n = p.g.Ho * p.g.Wo;
  if (n == 0 || p.g.B == 0) return cudaSuccess;
  const dim3 grid(blocks_for(n), batch_blocks(p.g.B));
  raymarch_backward_kernel<T><<<grid, kThreads, 0, stream>>>(p, gcolor, galpha, gdepth, absorption,
                                                             emission, rot, gabs, gem, grot);
  return cudaGetLastError();
}

#define INSTANTIATE(T)                                                                         \
  template cudaError_t raymarch_forward_cuda<T>(const RayParams&, const T*, const T*,          \
                                                const T*, T*, T*, T*, cudaStream_t);           \
  template cudaError_t raymarch_backward_cuda<T>(const RayParams&, const T*, const T*,         \
                                                 const T*, const T*, const T*, const T*, T*,   \
                                                 T*, double*, cudaStream_t);
INSTANTIATE(float)
INSTANTIATE(double)
#undef INSTANTIATE

}  // namespace raymarch
}  // namespace invrender
