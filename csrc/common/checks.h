// Argument checks for the torch glue: every message names the op, the argument and what was
// expected. TORCH_CHECK_TYPE / TORCH_CHECK_VALUE surface in Python as TypeError / ValueError.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <string>

namespace invrender {

inline void check_floating(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op,
                   ": argument '", name, "' must be float32 or float64, got ", t.scalar_type());
}

inline void check_dim(const at::Tensor& t, int64_t ndim, const char* op, const char* name,
                      const char* layout) {
  TORCH_CHECK_VALUE(t.dim() == ndim, op, ": argument '", name, "' must be a ", ndim,
                    "-D tensor ", layout, ", got shape ", t.sizes());
}

// `t` must match `ref` in device and dtype.
inline void check_same(const at::Tensor& t, const at::Tensor& ref, const char* op,
                       const char* name, const char* ref_name) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), op, ": argument '", name, "' is on ", t.device(),
                    " but '", ref_name, "' is on ", ref.device(), "; they must be on one device");
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), op, ": argument '", name, "' has dtype ",
                   t.scalar_type(), " but '", ref_name, "' has dtype ", ref.scalar_type(),
                   "; they must match");
}

inline void check_shape(const at::Tensor& t, at::IntArrayRef expected, const char* op,
                        const char* name) {
  TORCH_CHECK_VALUE(t.sizes() == expected, op, ": argument '", name, "' must have shape ",
                    expected, ", got ", t.sizes());
}

inline void check_finite(const at::Tensor& t, const char* op, const char* name) {
  if (t.numel() == 0) return;
  TORCH_CHECK_VALUE(t.isfinite().all().item<bool>(), op, ": argument '", name,
                    "' contains NaN or Inf");
}

inline void check_cuda_built(const at::Tensor& t, const char* op) {
#ifndef WITH_CUDA
  TORCH_CHECK(!t.is_cuda(), op, ": invrender was built without CUDA; rebuild with a CUDA toolkit ",
              "(FORCE_CUDA=1) to run on ", t.device());
#endif
  TORCH_CHECK_VALUE(t.is_cpu() || t.is_cuda(), op, ": tensors on ", t.device(),
                    " are not supported (CPU and CUDA only)");
}

}  // namespace invrender

#ifdef WITH_CUDA
// Turns the cudaError_t of a launcher into a Python RuntimeError naming the op.
#define CUDA_LAUNCH(op, call)                                                   \
  do {                                                                          \
    const cudaError_t err_ = (call);                                            \
    TORCH_CHECK(err_ == cudaSuccess, op, ": CUDA launch failed: ",              \
                cudaGetErrorString(err_));                                      \
  } while (0)
#endif

