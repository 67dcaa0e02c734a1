// Launchers of the interpolation op on raw pointers (see interpolate_math.h for the layout). No
// torch types. grad_attrs zero-initialised; grad_attrs or grad_bary may be null (not needed).
#pragma once

#include <cstdint>

#include "interpolate_math.h"

#if defined(WITH_CUDA) || defined(__CUDACC__)
#include <cuda_runtime_api.h>
#endif

namespace invrender {
namespace interp {

template <typename T>
void interpolate_forward_cpu(const InterpSizes& s, const T* attrs, const int64_t* faces,
                             const int64_t* face_idx, const T* bary, T* out);
template <typename T>
void interpolate_backward_cpu(const InterpSizes& s, const T* grad, const T* attrs,
                              const int64_t* faces, const int64_t* face_idx, const T* bary,
                              T* grad_attrs, T* grad_bary);

#if defined(WITH_CUDA) || defined(__CUDACC__)
template <typename T>
cudaError_t interpolate_forward_cuda(const InterpSizes& s, const T* attrs, const int64_t* faces,
                                     const int64_t* face_idx, const T* bary, T* out,
                                     cudaStream_t stream);
template <typename T>
cudaError_t interpolate_backward_cuda(const InterpSizes& s, const T* grad, const T* attrs,
                                      const int64_t* faces, const int64_t* face_idx,
                                      const T* bary, T* grad_attrs, T* grad_bary,
                                      cudaStream_t stream);
#endif

}  // namespace interp
}  // namespace invrender
