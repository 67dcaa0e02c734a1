// CUDA kernels of the interpolation op: one thread per fragment. The backward scatters into the
// attribute gradients with atomicAdd (non-deterministic; the torch glue says so). No torch headers.
#include <cuda_runtime.h>

#include "../common/cuda_utils.cuh"
#include "interpolate_kernels.h"

namespace invrender {
namespace interp {
namespace {

using namespace invrender::cuda;

template <typename T>
__global__ void interpolate_forward_kernel(InterpSizes s, const T* attrs, const int64_t* faces,
                                           const int64_t* face_idx, const T* bary, T* out) {
  const int64_t n_total = s.B * s.P;
  for (int64_t n = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; n < n_total;
       n += int64_t(blockDim.x) * gridDim.x) {
    const int64_t b = n / s.P;
    interpolate_fragment(s, attrs + b * s.V * s.C, faces + b * s.F * 3, face_idx[n],
                         bary + 3 * n, out + n * s.C);
  }
}

template <typename T>
__global__ void interpolate_backward_kernel(InterpSizes s, const T* grad, const T* attrs,
                                            const int64_t* faces, const int64_t* face_idx,
                                            const T* bary, T* grad_attrs, T* grad_bary) {
  const int64_t n_total = s.B * s.P;
  for (int64_t n = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; n < n_total;
       n += int64_t(blockDim.x) * gridDim.x) {
    const int64_t b = n / s.P;
    interpolate_fragment_backward(
        s, attrs + b * s.V * s.C, faces + b * s.F * 3, face_idx[n], bary + 3 * n,
        grad + n * s.C, grad_attrs == nullptr ? nullptr : grad_attrs + b * s.V * s.C,
        grad_bary == nullptr ? nullptr : grad_bary + 3 * n, AtomicScatter());
  }
}

}  // namespace

template <typename T>
cudaError_t interpolate_forward_cuda(const InterpSizes& s, const T* attrs, const int64_t* faces,
                                     const int64_t* face_idx, const T* bary, T* out,
                                     cudaStream_t stream) {
  const int64_t n = s.B * s.P;
  if (n == 0) return cudaSuccess;
  interpolate_forward_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(s, attrs, faces,
                                                                        face_idx, bary, out);
  return cudaGetLastError();
}

template <typename T>
cudaError_t interpolate_backward_cuda(const InterpSizes& s, const T* grad, const T* attrs,
                                      const int64_t* faces, const int64_t* face_idx,
                                      const T* bary, T* grad_attrs, T* grad_bary,
                                      cudaStream_t stream) {
  const int64_t n = s.B * s.P;
  if (n == 0) return cudaSuccess;
  interpolate_backward_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(
      s, grad, attrs, faces, face_idx, bary, grad_attrs, grad_bary);
  return cudaGetLastError();
}

#define INSTANTIATE(T)                                                                          \
  template cudaError_t interpolate_forward_cuda<T>(const InterpSizes&, const T*,                \
                                                   const int64_t*, const int64_t*, const T*,    \
                                                   T*, cudaStream_t);                           \
  template cudaError_t interpolate_backward_cuda<T>(const InterpSizes&, const T*, const T*,     \
                                                    const int64_t*, const int64_t*, const T*,   \
                                                    T*, T*, cudaStream_t);
INSTANTIATE(float)
INSTANTIATE(double)
#undef INSTANTIATE

}  // namespace interp
}  // namespace invrender
