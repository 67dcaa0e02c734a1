// Torch glue of the voxel ops: argument checks, output allocation, device guard and stream,
// dtype dispatch, and the CPU / CUDA registrations. The math lives in voxel_math.h.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <limits>
#include <string>
#include <vector>

#include "../common/checks.h"
#include "voxel_kernels.h"

#ifdef WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

namespace invrender {
namespace voxel {
namespace {

using at::Tensor;


bool parse_mode(c10::string_view mode, const char* op) {
  TORCH_CHECK_VALUE(mode == "trilinear" || mode == "nearest", op,
                    ": argument 'mode' must be \"trilinear\" or \"nearest\", got \"", mode, "\"");
  return mode == "nearest";
}

void check_angles(const Tensor& a, const char* name, const Tensor& ref, ValueChecks& checks) {
  constexpr const char* op = "rotation_matrix";
  check_floating(a, op, name);
  check_dim(a, 1, op, name, "(B,)");
  check_same(a, ref, op, name, "azimuth");
  check_shape(a, ref.sizes(), op, name);
  checks.finite(a, name);
}

// Checks voxels (B, C, D, H, W) and rotation (B, 3, 3); returns the geometry with Do/Ho/Wo = D/H/W.
Geometry check_voxels_rotation(const Tensor& voxels, const Tensor& rotation, const char* op) {
  check_cuda_built(voxels, op);
  check_floating(voxels, op, "voxels");
  check_dim(voxels, 5, op, "voxels", "(B, C, D, H, W)");
  check_floating(rotation, op, "rotation");
  check_same(rotation, voxels, op, "rotation", "voxels");
  check_shape(rotation, {voxels.size(0), 3, 3}, op, "rotation");
  check_finite(rotation, op, "rotation");
  Geometry g;
  g.B = voxels.size(0);
  g.C = voxels.size(1);
  g.D = voxels.size(2);
  g.H = voxels.size(3);
  g.W = voxels.size(4);
  // The interior sampling path uses 32-bit offsets within one channel.
  TORCH_CHECK_VALUE(g.D * g.H * g.W <= std::numeric_limits<int32_t>::max(), op,
                    ": argument 'voxels' has ", g.D * g.H * g.W,
                    " voxels per channel; at most 2^31 - 1 are supported");
  g.Do = g.D;
  g.Ho = g.H;
  g.Wo = g.W;
  return g;
}

void set_output_size(Geometry& g, at::IntArrayRef size, const char* op) {
  TORCH_CHECK_VALUE(size.size() == 3, op, ": argument 'size' must have 3 entries (D, H, W), got ",
                    size);
  for (const auto s : size)
    TORCH_CHECK_VALUE(s >= 0, op, ": argument 'size' must be non-negative, got ", size);
  g.Do = size[0];
  g.Ho = size[1];
  g.Wo = size[2];
}

// tau must be representable in the voxels' dtype: 1e300 is inf in float32 (inf * 0 = NaN) and
// 1e-50 is 0 there.
double check_tau(double tau, const Tensor& voxels, const char* op) {
  TORCH_CHECK_VALUE(std::isfinite(tau) && tau > 0, op, ": argument 'tau' must be a finite ",
                    "positive number, got ", tau);
  const bool single = voxels.scalar_type() == at::kFloat;
  const double lo = single ? double(std::numeric_limits<float>::min()) : std::numeric_limits<double>::min();
  const double hi = single ? double(std::numeric_limits<float>::max()) : std::numeric_limits<double>::max();
  TORCH_CHECK_VALUE(tau >= lo && tau <= hi, op, ": argument 'tau' = ", tau, " is outside the range of ",
                    voxels.scalar_type(), " voxels; usable range [", lo, ", ", hi, "]");
  return tau;
}

// ---------------------------------------------------------------------------------------------

Tensor rotation_matrix_forward(const Tensor& azimuth, const Tensor& elevation,
                               const Tensor& roll) {
  constexpr const char* op = "rotation_matrix";
  check_cuda_built(azimuth, op);
  ValueChecks checks("rotation_matrix");
  check_angles(azimuth, "azimuth", azimuth, checks);
  check_angles(elevation, "elevation", azimuth, checks);
  check_angles(roll, "roll", azimuth, checks);
  checks.verify();
  c10::DeviceGuard guard(azimuth.device());
  const Tensor a = azimuth.contiguous(), e = elevation.contiguous(), r = roll.contiguous();
  Tensor R = at::empty({a.size(0), 3, 3}, a.options());
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), op, [&] {
    if (a.is_cuda()) {
#ifdef WITH_CUDA
      CUDA_LAUNCH(op, rotation_forward_cuda<scalar_t>(
                          a.data_ptr<scalar_t>(), e.data_ptr<scalar_t>(), r.data_ptr<scalar_t>(),
                          R.data_ptr<scalar_t>(), a.size(0), c10::cuda::getCurrentCUDAStream().stream()));
#endif
    } else {
      rotation_forward_cpu<scalar_t>(a.data_ptr<scalar_t>(), e.data_ptr<scalar_t>(),
                                     r.data_ptr<scalar_t>(), R.data_ptr<scalar_t>(), a.size(0));
    }
  });
  return R;
}

std::tuple<Tensor, Tensor, Tensor> rotation_matrix_backward(const Tensor& grad,
                                                            const Tensor& azimuth,
                                                            const Tensor& elevation,
                                                            const Tensor& roll) {
  constexpr const char* op = "rotation_matrix_backward";
  check_cuda_built(azimuth, op);
  ValueChecks checks("rotation_matrix");
  check_angles(azimuth, "azimuth", azimuth, checks);
  check_angles(elevation, "elevation", azimuth, checks);
  check_angles(roll, "roll", azimuth, checks);
  checks.verify();
  check_same(grad, azimuth, op, "grad", "azimuth");
  check_shape(grad, {azimuth.size(0), 3, 3}, op, "grad");
  c10::DeviceGuard guard(azimuth.device());
  const Tensor g = grad.contiguous(), a = azimuth.contiguous(), e = elevation.contiguous(),
               r = roll.contiguous();
  Tensor ga = at::empty_like(a), ge = at::empty_like(a), gr = at::empty_like(a);
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), op, [&] {
    if (a.is_cuda()) {
#ifdef WITH_CUDA
      CUDA_LAUNCH(op, rotation_backward_cuda<scalar_t>(
                          g.data_ptr<scalar_t>(), a.data_ptr<scalar_t>(), e.data_ptr<scalar_t>(),
                          r.data_ptr<scalar_t>(), ga.data_ptr<scalar_t>(), ge.data_ptr<scalar_t>(),
                          gr.data_ptr<scalar_t>(), a.size(0), c10::cuda::getCurrentCUDAStream().stream()));
#endif
    } else {
      rotation_backward_cpu<scalar_t>(g.data_ptr<scalar_t>(), a.data_ptr<scalar_t>(),
                                      e.data_ptr<scalar_t>(), r.data_ptr<scalar_t>(),
                                      ga.data_ptr<scalar_t>(), ge.data_ptr<scalar_t>(),
                                      gr.data_ptr<scalar_t>(), a.size(0));
    }
  });
  return {ga, ge, gr};
}

// ---------------------------------------------------------------------------------------------

Tensor rotate_voxels_forward(const Tensor& voxels, const Tensor& rotation, at::IntArrayRef size,
                             c10::string_view mode) {
  constexpr const char* op = "rotate_voxels";
  Geometry g = check_voxels_rotation(voxels, rotation, op);
  set_output_size(g, size, op);
  const bool nearest = parse_mode(mode, op);
  c10::DeviceGuard guard(voxels.device());
  Tensor out = at::zeros({g.B, g.C, g.Do, g.Ho, g.Wo}, voxels.options());
  if (voxels.numel() == 0 || out.numel() == 0) return out;
  const Tensor v = voxels.contiguous(), R = rotation.contiguous();
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), op, [&] {
    if (v.is_cuda()) {
#ifdef WITH_CUDA
      CUDA_LAUNCH(op, rotate_forward_cuda<scalar_t>(g, v.data_ptr<scalar_t>(),
                                                    R.data_ptr<scalar_t>(),
                                                    out.data_ptr<scalar_t>(), nearest,
                                                    c10::cuda::getCurrentCUDAStream().stream()));
#endif
    } else {
      rotate_forward_cpu<scalar_t>(g, v.data_ptr<scalar_t>(), R.data_ptr<scalar_t>(),
                                   out.data_ptr<scalar_t>(), nearest);
    }
  });
  return out;
}

std::tuple<Tensor, Tensor> rotate_voxels_backward(const Tensor& grad, const Tensor& voxels,
                                                  const Tensor& rotation, at::IntArrayRef size,
                                                  c10::string_view mode) {
  constexpr const char* op = "rotate_voxels_backward";
  Geometry g = check_voxels_rotation(voxels, rotation, op);
  set_output_size(g, size, op);
  const bool nearest = parse_mode(mode, op);
  check_same(grad, voxels, op, "grad", "voxels");
  check_shape(grad, {g.B, g.C, g.Do, g.Ho, g.Wo}, op, "grad");
  c10::DeviceGuard guard(voxels.device());
  Tensor gvox = at::zeros_like(voxels, at::MemoryFormat::Contiguous);
  Tensor grot = at::zeros({g.B, 3, 3}, voxels.options());
  if (voxels.numel() == 0 || grad.numel() == 0) return {gvox, grot};
  const Tensor go = grad.contiguous(), v = voxels.contiguous(), R = rotation.contiguous();
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), op, [&] {
    if (v.is_cuda()) {
#ifdef WITH_CUDA
      at::globalContext().alertNotDeterministic("invrender::rotate_voxels_backward (CUDA)");
      Tensor grot_acc = at::zeros({g.B, 3, 3}, v.options().dtype(at::kDouble));  // as the CPU
      CUDA_LAUNCH(op, rotate_backward_cuda<scalar_t>(
                          g, go.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
                          R.data_ptr<scalar_t>(), gvox.data_ptr<scalar_t>(),
                          grot_acc.data_ptr<double>(), nearest, c10::cuda::getCurrentCUDAStream().stream()));
      grot.copy_(grot_acc);
#endif
    } else {
      rotate_backward_cpu<scalar_t>(g, go.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
                                    R.data_ptr<scalar_t>(), gvox.data_ptr<scalar_t>(),
                                    grot.data_ptr<scalar_t>(), nearest);
    }
  });
  return {gvox, grot};
}

// ---------------------------------------------------------------------------------------------

Tensor project_voxels_forward(const Tensor& voxels, const Tensor& rotation,
                              c10::string_view mode, double tau) {
  constexpr const char* op = "project_voxels";
  const Geometry g = check_voxels_rotation(voxels, rotation, op);
  const bool nearest = parse_mode(mode, op);
  check_tau(tau, voxels, op);
  c10::DeviceGuard guard(voxels.device());
  Tensor img = at::zeros({g.B, g.C, g.H, g.W}, voxels.options());
  if (voxels.numel() == 0) return img;
  const Tensor v = voxels.contiguous(), R = rotation.contiguous();
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), op, [&] {
    const scalar_t t = static_cast<scalar_t>(tau);
    if (v.is_cuda()) {
#ifdef WITH_CUDA
      CUDA_LAUNCH(op, project_forward_cuda<scalar_t>(g, v.data_ptr<scalar_t>(),
                                                     R.data_ptr<scalar_t>(),
                                                     img.data_ptr<scalar_t>(), t, nearest,
                                                     c10::cuda::getCurrentCUDAStream().stream()));
#endif
    } else {
      project_forward_cpu<scalar_t>(g, v.data_ptr<scalar_t>(), R.data_ptr<scalar_t>(),
                                    img.data_ptr<scalar_t>(), t, nearest);
    }
  });
  return img;
}

std::tuple<Tensor, Tensor> project_voxels_backward(const Tensor& grad, const Tensor& image,
                                                   const Tensor& voxels, const Tensor& rotation,
                                                   c10::string_view mode, double tau) {
  constexpr const char* op = "project_voxels_backward";
  const Geometry g = check_voxels_rotation(voxels, rotation, op);
  const bool nearest = parse_mode(mode, op);
  check_tau(tau, voxels, op);
  check_same(grad, voxels, op, "grad", "voxels");
  check_shape(grad, {g.B, g.C, g.H, g.W}, op, "grad");
  check_same(image, voxels, op, "image", "voxels");
  check_shape(image, {g.B, g.C, g.H, g.W}, op, "image");
  c10::DeviceGuard guard(voxels.device());
  Tensor gvox = at::zeros_like(voxels, at::MemoryFormat::Contiguous);
  Tensor grot = at::zeros({g.B, 3, 3}, voxels.options());
  if (voxels.numel() == 0) return {gvox, grot};
  const Tensor gi = grad.contiguous(), im = image.contiguous(), v = voxels.contiguous(),
               R = rotation.contiguous();
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), op, [&] {
    const scalar_t t = static_cast<scalar_t>(tau);
    if (v.is_cuda()) {
#ifdef WITH_CUDA
      at::globalContext().alertNotDeterministic("invrender::project_voxels_backward (CUDA)");
      Tensor grot_acc = at::zeros({g.B, 3, 3}, v.options().dtype(at::kDouble));  // as the CPU
      CUDA_LAUNCH(op, project_backward_cuda<scalar_t>(
                          g, gi.data_ptr<scalar_t>(), im.data_ptr<scalar_t>(),
                          v.data_ptr<scalar_t>(), R.data_ptr<scalar_t>(),
                          gvox.data_ptr<scalar_t>(), grot_acc.data_ptr<double>(), t, nearest,
                          c10::cuda::getCurrentCUDAStream().stream()));
      grot.copy_(grot_acc);
#endif
    } else {
      project_backward_cpu<scalar_t>(g, gi.data_ptr<scalar_t>(), im.data_ptr<scalar_t>(),
                                     v.data_ptr<scalar_t>(), R.data_ptr<scalar_t>(),
                                     gvox.data_ptr<scalar_t>(), grot.data_ptr<scalar_t>(), t,
                                     nearest);
    }
  });
  return {gvox, grot};
}

void register_kernels(torch::Library& m) {
  m.impl("rotation_matrix_forward", &rotation_matrix_forward);
  m.impl("rotation_matrix_backward", &rotation_matrix_backward);
  m.impl("rotate_voxels_forward", &rotate_voxels_forward);
  m.impl("rotate_voxels_backward", &rotate_voxels_backward);
  m.impl("project_voxels_forward", &project_voxels_forward);
  m.impl("project_voxels_backward", &project_voxels_backward);
}

}  // namespace

// One implementation per op serves both backends; it branches on the device after the checks.
TORCH_LIBRARY_IMPL(invrender, CPU, m) { register_kernels(m); }
#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(invrender, CUDA, m) { register_kernels(m); }
#endif

}  // namespace voxel
}  // namespace invrender
