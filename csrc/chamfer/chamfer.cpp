// Torch glue of the nearest-neighbour op: argument checks (lengths included), outputs, device
// guard and stream, dtype dispatch, CPU / CUDA registration. The math lives in chamfer_math.h.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <limits>
#include <tuple>

#include "../common/checks.h"
#include "chamfer_kernels.h"

#ifdef WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

namespace invrender {
namespace chamfer {
namespace {

using at::Tensor;

NNSizes check_clouds(const Tensor& x, const Tensor& y, const char* op) {
  check_cuda_built(x, op);
  check_floating(x, op, "x");
  check_dim(x, 3, op, "x", "(B, N, D)");
  check_same(y, x, op, "y", "x");
  check_dim(y, 3, op, "y", "(B, M, D)");
  NNSizes s{x.size(0), x.size(1), y.size(1), x.size(2)};
  TORCH_CHECK_VALUE(y.size(0) == s.B, op, ": argument 'y' must have the batch size of 'x' (", s.B,
                    "), got shape ", y.sizes());
  TORCH_CHECK_VALUE(y.size(2) == s.D, op, ": argument 'y' must have the point dimension of 'x' (",
                    s.D, "), got shape ", y.sizes());
  TORCH_CHECK_VALUE(s.D >= 1 && s.D <= kMaxDim, op, ": point dimension D must be in [1, ",
                    kMaxDim, "], got ", s.D);
  TORCH_CHECK_VALUE(s.N <= std::numeric_limits<int32_t>::max() &&
                        s.M <= std::numeric_limits<int32_t>::max(),
                    op, ": at most 2^31 - 1 points per cloud");
  return s;
}

void check_lengths(const Tensor& len, const Tensor& x, int64_t size, const char* op,
                   const char* name, ValueChecks& checks) {
  TORCH_CHECK_TYPE(len.scalar_type() == at::kLong, op, ": argument '", name,
                   "' must be int64, got ", len.scalar_type());
  TORCH_CHECK_VALUE(len.device() == x.device(), op, ": argument '", name, "' is on ", len.device(),
                    " but 'x' is on ", x.device(), "; they must be on one device");
  check_shape(len, {x.size(0)}, op, name);
  checks.in_range(len, 0, size, name, "must hold lengths in [0, " + std::to_string(size) + "]");
}

std::tuple<Tensor, Tensor> nn_forward(const Tensor& x, const Tensor& y, const Tensor& x_lengths,
                                      const Tensor& y_lengths) {
  constexpr const char* op = "nearest_neighbors";
  const NNSizes s = check_clouds(x, y, op);
  ValueChecks checks(op);
  check_lengths(x_lengths, x, s.N, op, "x_lengths", checks);
  check_lengths(y_lengths, x, s.M, op, "y_lengths", checks);
  checks.finite(x, "x");
  checks.finite(y, "y");
  checks.verify();
  c10::DeviceGuard guard(x.device());
  Tensor dist = at::empty({s.B, s.N}, x.options());
  Tensor idx = at::empty({s.B, s.N}, x.options().dtype(at::kLong));
  if (dist.numel() == 0) return {dist, idx};
  const Tensor xc = x.contiguous(), yc = y.contiguous(), xl = x_lengths.contiguous(),
               yl = y_lengths.contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), op, [&] {
    if (x.is_cuda()) {
#ifdef WITH_CUDA
      CUDA_LAUNCH(op, nn_forward_cuda<scalar_t>(s, xc.data_ptr<scalar_t>(), yc.data_ptr<scalar_t>(),
                                                xl.data_ptr<int64_t>(), yl.data_ptr<int64_t>(),
                                                dist.data_ptr<scalar_t>(), idx.data_ptr<int64_t>(),
                                                c10::cuda::getCurrentCUDAStream().stream()));
#endif
    } else {
      nn_forward_cpu<scalar_t>(s, xc.data_ptr<scalar_t>(), yc.data_ptr<scalar_t>(),
                               xl.data_ptr<int64_t>(), yl.data_ptr<int64_t>(),
                               dist.data_ptr<scalar_t>(), idx.data_ptr<int64_t>());
    }
  });
  return {dist, idx};
}

std::tuple<Tensor, Tensor> nn_backward(const Tensor& grad_dist, const Tensor& x, const Tensor& y,
                                       const Tensor& idx, bool need_y) {
  constexpr const char* op = "nearest_neighbors_backward";
  const NNSizes s = check_clouds(x, y, op);
  check_same(grad_dist, x, op, "grad_dist", "x");
  check_shape(grad_dist, {s.B, s.N}, op, "grad_dist");
  TORCH_CHECK_TYPE(idx.scalar_type() == at::kLong, op, ": argument 'idx' must be int64, got ",
                   idx.scalar_type());
  TORCH_CHECK_VALUE(idx.device() == x.device(), op, ": argument 'idx' must be on ", x.device());
  check_shape(idx, {s.B, s.N}, op, "idx");
  ValueChecks checks(op);
  checks.in_range(idx, -1, s.M - 1, "idx", "holds an index outside [-1, M = " + std::to_string(s.M) + ")");
  checks.verify();
  c10::DeviceGuard guard(x.device());
  Tensor gx = at::empty(x.sizes(), x.options());
  Tensor gy = need_y ? at::zeros(y.sizes(), y.options()) : at::zeros({0}, y.options());
  if (gx.numel() == 0) return {gx, gy};
  const Tensor g = grad_dist.contiguous(), xc = x.contiguous(), yc = y.contiguous(),
               ic = idx.contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), op, [&] {
    scalar_t* gy_ptr = need_y ? gy.data_ptr<scalar_t>() : nullptr;
    if (x.is_cuda()) {
#ifdef WITH_CUDA
      if (need_y) at::globalContext().alertNotDeterministic("invrender::nearest_neighbors_backward (CUDA)");
      CUDA_LAUNCH(op, nn_backward_cuda<scalar_t>(s, g.data_ptr<scalar_t>(), xc.data_ptr<scalar_t>(),
                                                 yc.data_ptr<scalar_t>(), ic.data_ptr<int64_t>(),
                                                 gx.data_ptr<scalar_t>(), gy_ptr,
                                                 c10::cuda::getCurrentCUDAStream().stream()));
#endif
    } else {
      nn_backward_cpu<scalar_t>(s, g.data_ptr<scalar_t>(), xc.data_ptr<scalar_t>(),
                                yc.data_ptr<scalar_t>(), ic.data_ptr<int64_t>(),
                                gx.data_ptr<scalar_t>(), gy_ptr);
    }
  });
  return {gx, gy};
}

void register_kernels(torch::Library& m) {
  m.impl("nearest_neighbors_forward", &nn_forward);
  m.impl("nearest_neighbors_backward", &nn_backward);
}

}  // namespace

TORCH_LIBRARY_IMPL(invrender, CPU, m) { register_kernels(m); }
#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(invrender, CUDA, m) { register_kernels(m); }
#endif

}  // namespace chamfer
}  // namespace invrender
