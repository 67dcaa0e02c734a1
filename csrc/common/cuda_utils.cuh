// CUDA helpers shared by the kernels of every op family (compiled by nvcc only; no torch headers).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "common.h"

namespace invrender {
namespace cuda {

constexpr int kThreads = 256;

struct AtomicScatter {
  template <typename T>
  __device__ void operator()(T* p, T v) const {
    atomicAdd(p, v);
  }
};

inline unsigned int blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(std::min<int64_t>(std::max<int64_t>(b, 1), 65535 * 8));
}

inline unsigned int batch_blocks(int64_t B) {
  return static_cast<unsigned int>(std::min<int64_t>(std::max<int64_t>(B, 1), 65535));
}

template <typename T>
__device__ INLINE T warp_sum(T v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// Reduces each thread's 9 rotation-gradient partials and adds them to grot[9 b ...].
template <typename T>
__device__ INLINE void add_rotation_grad(T* acc, T* grot_b) {
#pragma unroll
  for (int k = 0; k < 9; ++k) {
    const T v = warp_sum(acc[k]);
    if ((threadIdx.x & 31) == 0 && v != T(0)) atomicAdd(grot_b + k, v);
  }
}

}  // namespace cuda
}  // namespace invrender
