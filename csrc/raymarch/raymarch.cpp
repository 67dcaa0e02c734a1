// Torch glue of the ray marching op: argument checks, outputs, device guard and stream, dtype
// dispatch, CPU / CUDA registration. The math lives in raymarch_math.h.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <optional>
#include <tuple>

#include "../common/checks.h"
#include "raymarch_kernels.h"

#ifdef WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

namespace invrender {
namespace raymarch {
namespace {

using at::Tensor;

RayParams check_args(const Tensor& absorption, const std::optional<Tensor>& emission,
                     const Tensor& rotation, at::IntArrayRef image_size, int64_t samples,
                     bool perspective, double focal, double distance, double t_near,
                     double t_far, bool density, const char* op) {
  check_cuda_built(absorption, op);
  check_floating(absorption, op, "absorption");
  check_dim(absorption, 5, op, "absorption", "(B, 1, D, H, W)");
  TORCH_CHECK_VALUE(absorption.size(1) == 1, op,
                    ": argument 'absorption' must have one channel (B, 1, D, H, W), got shape ",
                    absorption.sizes());
  RayParams p;
  Geometry& g = p.g;
  g.B = absorption.size(0);
  g.C = 0;
  g.D = absorption.size(2);
  g.H = absorption.size(3);
  g.W = absorption.size(4);
  // The interior sampling path uses 32-bit offsets within one channel.
  TORCH_CHECK_VALUE(g.D * g.H * g.W <= std::numeric_limits<int32_t>::max(), op,
                    ": argument 'absorption' has ", g.D * g.H * g.W,
                    " voxels per channel; at most 2^31 - 1 are supported");
  if (emission.has_value()) {
    const Tensor& e = *emission;
    check_floating(e, op, "emission");
    check_same(e, absorption, op, "emission", "absorption");
    check_dim(e, 5, op, "emission", "(B, C, D, H, W)");
    TORCH_CHECK_VALUE(e.size(0) == g.B && e.size(2) == g.D && e.size(3) == g.H &&
                          e.size(4) == g.W && e.size(1) >= 1,
                      op, ": argument 'emission' must have shape (B, C, D, H, W) = (", g.B,
                      ", C >= 1, ", g.D, ", ", g.H, ", ", g.W, ") like 'absorption', got ",
                      e.sizes());
    g.C = e.size(1);
  }
  check_floating(rotation, op, "rotation");
  check_same(rotation, absorption, op, "rotation", "absorption");
  check_shape(rotation, {g.B, 3, 3}, op, "rotation");
  check_finite(rotation, op, "rotation");
  TORCH_CHECK_VALUE(image_size.size() == 2 && image_size[0] >= 0 && image_size[1] >= 0, op,
                    ": argument 'image_size' must be two non-negative integers (H, W), got ",
                    image_size);
  g.Do = 1;
  g.Ho = image_size[0];
  g.Wo = image_size[1];
  TORCH_CHECK_VALUE(samples >= 1 && samples <= kMaxSamples, op,
                    ": argument 'samples' must be in [1, ", kMaxSamples, "], got ", samples);
  p.S = samples;
  p.perspective = perspective;
  p.density = density;
  p.focal = focal;
  p.distance = distance;
  p.t_near = t_near;
  p.t_far = t_far;
  if (perspective) {
    TORCH_CHECK_VALUE(std::isfinite(focal) && focal > 0, op,
                      ": camera focal length must be finite and positive, got ", focal);
    TORCH_CHECK_VALUE(std::isfinite(distance), op, ": camera distance must be finite, got ",
                      distance);
    TORCH_CHECK_VALUE(std::isfinite(t_near) && std::isfinite(t_far) && t_near >= 0 &&
                          t_far > t_near,
                      op, ": camera near/far must satisfy 0 <= near < far, got near=", t_near,
                      ", far=", t_far);
  }
  return p;
}

std::tuple<Tensor, Tensor, Tensor> raymarch_forward(
    const Tensor& absorption, const std::optional<Tensor>& emission, const Tensor& rotation,
    at::IntArrayRef image_size, int64_t samples, bool perspective, double focal, double distance,
    double t_near, double t_far, bool density) {
  constexpr const char* op = "raymarch";
  const RayParams p = check_args(absorption, emission, rotation, image_size, samples,
                                 perspective, focal, distance, t_near, t_far, density, op);
  const Geometry& g = p.g;
  c10::DeviceGuard guard(absorption.device());
  Tensor color = at::zeros({g.B, g.C, g.Ho, g.Wo}, absorption.options());
  Tensor alpha = at::zeros({g.B, 1, g.Ho, g.Wo}, absorption.options());
  Tensor depth = at::zeros({g.B, 1, g.Ho, g.Wo}, absorption.options());
  if (alpha.numel() == 0) return {color, alpha, depth};
  const Tensor a = absorption.contiguous(), R = rotation.contiguous();
  const Tensor e = emission.has_value() ? emission->contiguous() : Tensor();
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), op, [&] {
    const scalar_t* e_ptr = e.defined() ? e.data_ptr<scalar_t>() : nullptr;
    if (a.is_cuda()) {
#ifdef WITH_CUDA
      CUDA_LAUNCH(op, raymarch_forward_cuda<scalar_t>(
                          p, a.data_ptr<scalar_t>(), e_ptr, R.data_ptr<scalar_t>(),
                          color.data_ptr<scalar_t>(), alpha.data_ptr<scalar_t>(),
                          depth.data_ptr<scalar_t>(), c10::cuda::getCurrentCUDAStream().stream()));
#endif
    } else {
      raymarch_forward_cpu<scalar_t>(p, a.data_ptr<scalar_t>(), e_ptr, R.data_ptr<scalar_t>(),
                                     color.data_ptr<scalar_t>(), alpha.data_ptr<scalar_t>(),
                                     depth.data_ptr<scalar_t>());
    }
  });
  return {color, alpha, depth};
}

std::tuple<Tensor, Tensor, Tensor> raymarch_backward(
    const Tensor& grad_color, const Tensor& grad_alpha, const Tensor& grad_depth,
    const Tensor& absorption, const std::optional<Tensor>& emission, const Tensor& rotation,
    at::IntArrayRef image_size, int64_t samples, bool perspective, double focal, double distance,
    double t_near, double t_far, bool density) {
  constexpr const char* op = "raymarch_backward";
  const RayParams p = check_args(absorption, emission, rotation, image_size, samples,
                                 perspective, focal, distance, t_near, t_far, density, op);
  const Geometry& g = p.g;
  check_same(grad_color, absorption, op, "grad_color", "absorption");
  check_shape(grad_color, {g.B, g.C, g.Ho, g.Wo}, op, "grad_color");
  check_same(grad_alpha, absorption, op, "grad_alpha", "absorption");
  check_shape(grad_alpha, {g.B, 1, g.Ho, g.Wo}, op, "grad_alpha");
  check_same(grad_depth, absorption, op, "grad_depth", "absorption");
  check_shape(grad_depth, {g.B, 1, g.Ho, g.Wo}, op, "grad_depth");
  c10::DeviceGuard guard(absorption.device());
  Tensor gabs = at::zeros_like(absorption, at::MemoryFormat::Contiguous);
  Tensor gem = emission.has_value() ? at::zeros_like(*emission, at::MemoryFormat::Contiguous)
                                    : at::zeros({0}, absorption.options());
  Tensor grot = at::zeros({g.B, 3, 3}, absorption.options());
  if (absorption.numel() == 0 || g.Ho * g.Wo == 0) return {gabs, gem, grot};
  const Tensor gc = grad_color.contiguous(), ga = grad_alpha.contiguous(),
               gd = grad_depth.contiguous(), a = absorption.contiguous(), R = rotation.contiguous();
  const Tensor e = emission.has_value() ? emission->contiguous() : Tensor();
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), op, [&] {
    const scalar_t* e_ptr = e.defined() ? e.data_ptr<scalar_t>() : nullptr;
    scalar_t* gem_ptr = e.defined() ? gem.data_ptr<scalar_t>() : nullptr;
    if (a.is_cuda()) {
#ifdef WITH_CUDA
      at::globalContext().alertNotDeterministic("invrender::raymarch_backward (CUDA)");
      // The rotation gradient sums over every sample of every ray: in double, as on the CPU.
      Tensor grot_acc = at::zeros({g.B, 3, 3}, a.options().dtype(at::kDouble));
      CUDA_LAUNCH(op, raymarch_backward_cuda<scalar_t>(
                          p, gc.data_ptr<scalar_t>(), ga.data_ptr<scalar_t>(),
                          gd.data_ptr<scalar_t>(), a.data_ptr<scalar_t>(), e_ptr,
                          R.data_ptr<scalar_t>(), gabs.data_ptr<scalar_t>(), gem_ptr,
                          grot_acc.data_ptr<double>(), c10::cuda::getCurrentCUDAStream().stream()));
      grot.copy_(grot_acc);
#endif
    } else {
      raymarch_backward_cpu<scalar_t>(p, gc.data_ptr<scalar_t>(), ga.data_ptr<scalar_t>(),
                                      gd.data_ptr<scalar_t>(), a.data_ptr<scalar_t>(), e_ptr,
                                      R.data_ptr<scalar_t>(), gabs.data_ptr<scalar_t>(), gem_ptr,
                                      grot.data_ptr<scalar_t>());
    }
  });
  return {gabs, gem, grot};
}

void register_kernels(torch::Library& m) {
  m.impl("raymarch_forward", &raymarch_forward);
  m.impl("raymarch_backward", &raymarch_backward);
}

}  // namespace

TORCH_LIBRARY_IMPL(invrender, CPU, m) { register_kernels(m); }
#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(invrender, CUDA, m) { register_kernels(m); }
#endif

}  // namespace raymarch
}  // namespace invrender
