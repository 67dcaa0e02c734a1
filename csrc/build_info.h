// What this build of invrender contains; shared by the pybind11 module and the C++ smoke test.
#pragma once

#include <string>

#ifndef INVRENDER_CUDA_ARCHS
#define INVRENDER_CUDA_ARCHS ""
#endif

namespace invrender {

inline bool built_with_cuda() {
#ifdef WITH_CUDA
  return true;
#else
  return false;
#endif
}

// Semicolon-separated CUDA architectures compiled in (empty for a CPU-only build).
inline std::string cuda_archs() { return INVRENDER_CUDA_ARCHS; }

}  // namespace invrender
