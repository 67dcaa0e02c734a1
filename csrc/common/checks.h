// Argument checks for the torch glue: every message names the op, the argument and what was
// expected. TORCH_CHECK_TYPE / TORCH_CHECK_VALUE surface in Python as TypeError / ValueError.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <atomic>
#include <string>
#include <utility>
#include <vector>

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

// Checks of tensor values (finite entries, indices in range) gathered while an op validates its
// arguments and read back together by verify(): one device-to-host copy per op call on the GPU
// instead of one or two per check. Each check stays on: they keep the kernels from indexing out of
// bounds and from turning NaN into garbage. A test-only switch (set_value_checks_for_testing)
// turns them off so the benchmarks can measure what they cost.
class ValueChecks {
 public:
  explicit ValueChecks(const char* op) : op_(op) {}

  // Every entry of `t` finite.
  void finite(const at::Tensor& t, const char* name) {
    if (t.numel() == 0 || !enabled()) return;
    add(t.isfinite().all(), std::string("argument '") + name + "' contains NaN or Inf");
  }

  // Every entry of the integer tensor `t` in [lo, hi]; `what` completes "argument '<name>' ...".
  void in_range(const at::Tensor& t, int64_t lo, int64_t hi, const char* name,
                const std::string& what) {
    if (t.numel() == 0 || !enabled()) return;
    const auto mm = at::aminmax(t);
    add(std::get<0>(mm).ge(lo).logical_and(std::get<1>(mm).le(hi)),
        std::string("argument '") + name + "' " + what);
  }

  // Reads every flag in one copy; raises ValueError with the first failed check's message.
  void verify() {
    if (flags_.empty()) return;
    const at::Tensor ok = at::stack(flags_).to(at::kCPU).contiguous();
    const bool* f = ok.data_ptr<bool>();
    for (size_t i = 0; i < messages_.size(); ++i)
      TORCH_CHECK_VALUE(f[i], op_, ": ", messages_[i]);
    flags_.clear();
    messages_.clear();
  }

  static bool enabled() { return enabled_flag().load(std::memory_order_relaxed); }
  static std::atomic<bool>& enabled_flag() {
    static std::atomic<bool> on{true};
    return on;
  }

 private:
  void add(const at::Tensor& flag, std::string message) {
    flags_.push_back(flag.reshape({}));
    messages_.push_back(std::move(message));
  }

  const char* op_;
  std::vector<at::Tensor> flags_;
  std::vector<std::string> messages_;
};

// Test/benchmark-only: false skips the value checks above (unsafe on bad input).
inline void set_value_checks_for_testing(bool on) { ValueChecks::enabled_flag().store(on); }

// One finite check, verified at once.
inline void check_finite(const at::Tensor& t, const char* op, const char* name) {
  ValueChecks checks(op);
  checks.finite(t, name);
  checks.verify();
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

