// Host/device helpers shared by every op's math header. No torch types here: this header is
// included by the CPU glue (compiled by the host compiler) and by the CUDA kernels (compiled by
// nvcc without torch headers).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define HOST_DEVICE __host__ __device__
#define INLINE __forceinline__
#else
#define HOST_DEVICE
#define INLINE inline
#endif

// For the per-ray / per-element entry points that the CPU loops must inline (so that they are
// compiled for each instruction-set clone of the loop, see cpu_dispatch.h).
#if defined(__CUDACC__)
#define FORCE_INLINE __forceinline__
#elif defined(__GNUC__)
#define FORCE_INLINE inline __attribute__((always_inline))
#else
#define FORCE_INLINE inline
#endif

// Loop unrolling hint understood by the compiler at hand (nvcc's device pass, or GCC).
#if defined(__CUDA_ARCH__)
#define INVRENDER_UNROLL _Pragma("unroll")
#elif defined(__CUDACC__)
#define INVRENDER_UNROLL
#elif defined(__GNUC__) && !defined(__clang__)
#define INVRENDER_UNROLL _Pragma("GCC unroll 8")
#else
#define INVRENDER_UNROLL
#endif

namespace invrender {

// Pointwise math that resolves to the right overload for float and double on host and device.
// floor(x) as an integer, for x already known to lie well inside the int64 range. Avoids the libm
// call that ::floor becomes on baseline x86-64 (no SSE4.1 round instruction).
template <typename T>
HOST_DEVICE INLINE int64_t floor_int(T x) {
  const int64_t i = static_cast<int64_t>(x);
  return i - (static_cast<T>(i) > x ? 1 : 0);
}

template <typename T>
HOST_DEVICE INLINE T exp_(T x) {
  return ::exp(x);
}
template <typename T>
HOST_DEVICE INLINE T sin_(T x) {
  return ::sin(x);
}
template <typename T>
HOST_DEVICE INLINE T cos_(T x) {
  return ::cos(x);
}
template <typename T>
HOST_DEVICE INLINE T sqrt_(T x) {
  return ::sqrt(x);
}

template <typename T>
struct Vec3 {
  T x, y, z;
};

// Scatter functor of the CPU backward loops (each grid is owned by one thread: plain adds).
struct AddScatter {
  template <typename T>
  void operator()(T* p, T v) const {
    *p += v;
  }
};

}  // namespace invrender
