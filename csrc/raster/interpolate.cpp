// Torch glue of the interpolation op: argument checks, outputs, device guard and stream, dtype
// dispatch, CPU / CUDA registration. The math lives in interpolate_math.h.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros_like.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <tuple>

#include "../common/checks.h"
#include "interpolate_kernels.h"

#ifdef WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

namespace invrender {
namespace interp {
namespace {

using at::Tensor;

InterpSizes check_args(const Tensor& attrs, const Tensor& faces, const Tensor& face_idx,
                       const Tensor& bary, const char* op) {
  check_cuda_built(attrs, op);
  check_floating(attrs, op, "attrs");
  check_dim(attrs, 3, op, "attrs", "(B, V, C)");
  TORCH_CHECK_TYPE(faces.scalar_type() == at::kLong, op, ": argument 'faces' must be int64, got ",
                   faces.scalar_type());
  TORCH_CHECK_TYPE(face_idx.scalar_type() == at::kLong, op,
                   ": argument 'face_idx' must be int64, got ", face_idx.scalar_type());
  for (const auto& [t, name] : {std::pair<const Tensor&, const char*>{faces, "faces"},
                                {face_idx, "face_idx"}}) {
    TORCH_CHECK_VALUE(t.device() == attrs.device(), op, ": argument '", name, "' is on ",
                      t.device(), " but 'attrs' is on ", attrs.device(),
                      "; they must be on one device");
  }
  check_same(bary, attrs, op, "bary", "attrs");
  InterpSizes s;
  s.B = attrs.size(0);
  s.V = attrs.size(1);
  s.C = attrs.size(2);
  check_dim(faces, 3, op, "faces", "(B, F, 3)");
  TORCH_CHECK_VALUE(faces.size(0) == s.B && faces.size(2) == 3, op,
                    ": argument 'faces' must have shape (B, F, 3) with B = ", s.B, ", got ",
                    faces.sizes());
  s.F = faces.size(1);
  check_dim(face_idx, 4, op, "face_idx", "(B, H, W, L)");
  TORCH_CHECK_VALUE(face_idx.size(0) == s.B, op, ": argument 'face_idx' must have B = ", s.B,
                    ", got shape ", face_idx.sizes());
  const auto fs = face_idx.sizes();
  check_shape(bary, {fs[0], fs[1], fs[2], fs[3], 3}, op, "bary");
  s.P = fs[1] * fs[2] * fs[3];
  ValueChecks checks(op);
  checks.in_range(faces, std::numeric_limits<int64_t>::min(), s.V - 1, "faces",
                  "holds a vertex index >= V = " + std::to_string(s.V));
  checks.in_range(face_idx, -1, s.F - 1, "face_idx",
                  "holds a face index outside [-1, F = " + std::to_string(s.F) + ")");
  checks.verify();
  return s;
}

Tensor interpolate_forward(const Tensor& attrs, const Tensor& faces, const Tensor& face_idx,
                           const Tensor& bary) {
  constexpr const char* op = "interpolate";
  const InterpSizes s = check_args(attrs, faces, face_idx, bary, op);
  c10::DeviceGuard guard(attrs.device());
  auto shape = face_idx.sizes().vec();
  shape.push_back(s.C);
  Tensor out = at::empty(shape, attrs.options());
  if (out.numel() == 0) return out;
  const Tensor a = attrs.contiguous(), f = faces.contiguous(), fi = face_idx.contiguous(),
               b = bary.contiguous();
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), op, [&] {
    if (a.is_cuda()) {
#ifdef WITH_CUDA
      CUDA_LAUNCH(op, interpolate_forward_cuda<scalar_t>(
                          s, a.data_ptr<scalar_t>(), f.data_ptr<int64_t>(),
                          fi.data_ptr<int64_t>(), b.data_ptr<scalar_t>(),
                          out.data_ptr<scalar_t>(), c10::cuda::getCurrentCUDAStream().stream()));
#endif
    } else {
      interpolate_forward_cpu<scalar_t>(s, a.data_ptr<scalar_t>(), f.data_ptr<int64_t>(),
                                        fi.data_ptr<int64_t>(), b.data_ptr<scalar_t>(),
                                        out.data_ptr<scalar_t>());
    }
  });
  return out;
}

std::tuple<Tensor, Tensor> interpolate_backward(const Tensor& grad, const Tensor& attrs,
                                                const Tensor& faces, const Tensor& face_idx,
                                                const Tensor& bary) {
  constexpr const char* op = "interpolate_backward";
  const InterpSizes s = check_args(attrs, faces, face_idx, bary, op);
  check_same(grad, attrs, op, "grad", "attrs");
  auto shape = face_idx.sizes().vec();
  shape.push_back(s.C);
  check_shape(grad, shape, op, "grad");
  c10::DeviceGuard guard(attrs.device());
  Tensor grad_attrs = at::zeros_like(attrs, at::MemoryFormat::Contiguous);
  Tensor grad_bary = at::empty(bary.sizes(), bary.options());
  if (grad_bary.numel() == 0) return {grad_attrs, grad_bary};
  const Tensor g = grad.contiguous(), a = attrs.contiguous(), f = faces.contiguous(),
               fi = face_idx.contiguous(), b = bary.contiguous();
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), op, [&] {
    if (a.is_cuda()) {
#ifdef WITH_CUDA
      at::globalContext().alertNotDeterministic("invrender::interpolate_backward (CUDA)");
      CUDA_LAUNCH(op, interpolate_backward_cuda<scalar_t>(
                          s, g.data_ptr<scalar_t>(), a.data_ptr<scalar_t>(),
                          f.data_ptr<int64_t>(), fi.data_ptr<int64_t>(), b.data_ptr<scalar_t>(),
                          grad_attrs.data_ptr<scalar_t>(), grad_bary.data_ptr<scalar_t>(),
                          c10::cuda::getCurrentCUDAStream().stream()));
#endif
    } else {
      interpolate_backward_cpu<scalar_t>(s, g.data_ptr<scalar_t>(), a.data_ptr<scalar_t>(),
                                         f.data_ptr<int64_t>(), fi.data_ptr<int64_t>(),
                                         b.data_ptr<scalar_t>(), grad_attrs.data_ptr<scalar_t>(),
                                         grad_bary.data_ptr<scalar_t>());
    }
  });
  return {grad_attrs, grad_bary};
}

void register_kernels(torch::Library& m) {
  m.impl("interpolate_forward", &interpolate_forward);
  m.impl("interpolate_backward", &interpolate_backward);
}

}  // namespace

TORCH_LIBRARY_IMPL(invrender, CPU, m) { register_kernels(m); }
#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(invrender, CUDA, m) { register_kernels(m); }
#endif

}  // namespace interp
}  // namespace invrender
