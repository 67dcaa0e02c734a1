// Launchers of the nearest-neighbour op on raw pointers (layout in chamfer_math.h). No torch types.
#pragma once

#include <cstdint>

#include "chamfer_math.h"

#if defined(WITH_CUDA) || defined(__CUDACC__)
#include <cuda_runtime_api.h>
#endif

namespace invrender {
namespace chamfer {

template <typename T>
void nn_forward_cpu(const NNSizes& s, const T* x, const T* y, const int64_t* x_len,
                    const int64_t* y_len, T* dist, int64_t* idx);
// gx written for every point (0 beyond x_len); gy zero-initialised (may be null).
template <typename T>
void nn_backward_cpu(const NNSizes& s, const T* grad, const T* x, const T* y,
                     const int64_t* idx, T* gx, T* gy);
// Test-only: k-d tree leaves the CPU forward has scanned since the last call (then reset to 0).
int64_t leaf_visits_for_testing();

#if defined(WITH_CUDA) || defined(__CUDACC__)
template <typename T>
cudaError_t nn_forward_cuda(const NNSizes& s, const T* x, const T* y, const int64_t* x_len,
                            const int64_t* y_len, T* dist, int64_t* idx, cudaStream_t stream);
template <typename T>
cudaError_t nn_backward_cuda(const NNSizes& s, const T* grad, const T* x, const T* y,
                             const int64_t* idx, T* gx, T* gy, cudaStream_t stream);
#endif

}  // namespace chamfer
}  // namespace invrender
