// Torch glue of the compositing ops (composite_layers, softras_blend): argument checks, outputs,
// device guard and stream, dtype dispatch, CPU / CUDA registration. The math lives in
// composite_math.h.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>

#include "../common/checks.h"
#include "composite_kernels.h"

#ifdef WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

namespace invrender {
namespace composite {
namespace {

using at::Tensor;

// Checks layers (B, H, W, L) named `name`, colors (B, H, W, L, C) and background (B, C, H, W);
// returns the sizes.
Sizes check_layers(const Tensor& layers, const char* name, const Tensor& colors,
                   const Tensor& background, const char* op) {
  check_cuda_built(layers, op);
  check_floating(layers, op, name);
  check_dim(layers, 4, op, name, "(B, H, W, L)");
  check_floating(colors, op, "colors");
  check_same(colors, layers, op, "colors", name);
  check_dim(colors, 5, op, "colors", "(B, H, W, L, C)");
  const int64_t B = layers.size(0), H = layers.size(1), W = layers.size(2), L = layers.size(3);
  const int64_t C = colors.size(4);
  TORCH_CHECK_VALUE(colors.size(0) == B && colors.size(1) == H && colors.size(2) == W &&
                        colors.size(3) == L,
                    op, ": argument 'colors' must have shape (B, H, W, L, C) = (", B, ", ", H,
                    ", ", W, ", ", L, ", C) like '", name, "' (B, H, W, L), got ",
                    colors.sizes());
  check_floating(background, op, "background");
  check_same(background, layers, op, "background", name);
  check_shape(background, {B, C, H, W}, op, "background");
  return Sizes{B, H * W, L, C};
}

void check_grads(const Tensor& grad_image, const char* image_name, const Tensor& grad_mask,
                 const char* mask_name, const Tensor& ref, const char* ref_name, const Sizes& s,
                 int64_t H, int64_t W, const char* op) {
  check_floating(grad_image, op, image_name);
  check_same(grad_image, ref, op, image_name, ref_name);
  check_shape(grad_image, {s.B, s.C, H, W}, op, image_name);
  check_floating(grad_mask, op, mask_name);
  check_same(grad_mask, ref, op, mask_name, ref_name);
  check_shape(grad_mask, {s.B, 1, H, W}, op, mask_name);
}

// ---------------------------------------------------------------------------------------------
// composite_layers

std::tuple<Tensor, Tensor> composite_layers_forward(const Tensor& alpha, const Tensor& colors,
                                                    const Tensor& background) {
  constexpr const char* op = "composite_layers";
  const Sizes s = check_layers(alpha, "alpha", colors, background, op);
  const int64_t H = alpha.size(1), W = alpha.size(2);
  c10::DeviceGuard guard(alpha.device());
  Tensor image = at::empty({s.B, s.C, H, W}, alpha.options());
  Tensor mask = at::empty({s.B, 1, H, W}, alpha.options());
  if (s.B * s.P == 0) return {image, mask};
  const Tensor a = alpha.contiguous(), c = colors.contiguous(), bg = background.contiguous();
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), op, [&] {
    if (a.is_cuda()) {
#ifdef WITH_CUDA
      CUDA_LAUNCH(op, composite_forward_cuda<scalar_t>(
                          s, a.data_ptr<scalar_t>(), c.data_ptr<scalar_t>(),
                          bg.data_ptr<scalar_t>(), image.data_ptr<scalar_t>(),
                          mask.data_ptr<scalar_t>(), c10::cuda::getCurrentCUDAStream().stream()));
#endif
    } else {
      composite_forward_cpu<scalar_t>(s, a.data_ptr<scalar_t>(), c.data_ptr<scalar_t>(),
                                      bg.data_ptr<scalar_t>(), image.data_ptr<scalar_t>(),
                                      mask.data_ptr<scalar_t>());
    }
  });
  return {image, mask};
}

std::tuple<Tensor, Tensor, Tensor> composite_layers_backward(const Tensor& grad_image,
                                                             const Tensor& grad_mask,
                                                             const Tensor& alpha,
                                                             const Tensor& colors,
                                                             const Tensor& background) {
  constexpr const char* op = "composite_layers_backward";
  const Sizes s = check_layers(alpha, "alpha", colors, background, op);
  const int64_t H = alpha.size(1), W = alpha.size(2);
  check_grads(grad_image, "grad_image", grad_mask, "grad_mask", alpha, "alpha", s, H, W, op);
  c10::DeviceGuard guard(alpha.device());
  // Every entry is written by the kernels (pixels are never skipped).
  Tensor ga = at::empty(alpha.sizes(), alpha.options());
  Tensor gc = at::empty(colors.sizes(), colors.options());
  Tensor gbg = at::empty(background.sizes(), background.options());
  if (s.B * s.P == 0) return {ga, gc, gbg};
  const Tensor gi = grad_image.contiguous(), gm = grad_mask.contiguous(), a = alpha.contiguous(),
               c = colors.contiguous(), bg = background.contiguous();
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), op, [&] {
    if (a.is_cuda()) {
#ifdef WITH_CUDA
      CUDA_LAUNCH(op, composite_backward_cuda<scalar_t>(
                          s, gi.data_ptr<scalar_t>(), gm.data_ptr<scalar_t>(),
                          a.data_ptr<scalar_t>(), c.data_ptr<scalar_t>(), bg.data_ptr<scalar_t>(),
                          ga.data_ptr<scalar_t>(), gc.data_ptr<scalar_t>(),
                          gbg.data_ptr<scalar_t>(), c10::cuda::getCurrentCUDAStream().stream()));
#endif
    } else {
      composite_backward_cpu<scalar_t>(s, gi.data_ptr<scalar_t>(), gm.data_ptr<scalar_t>(),
                                       a.data_ptr<scalar_t>(), c.data_ptr<scalar_t>(),
                                       bg.data_ptr<scalar_t>(), ga.data_ptr<scalar_t>(),
                                       gc.data_ptr<scalar_t>(), gbg.data_ptr<scalar_t>());
    }
  });
  return {ga, gc, gbg};
}

// ---------------------------------------------------------------------------------------------
// softras_blend

SoftrasParams check_softras(const Tensor& prob, const Tensor& depth, const Tensor& face_idx,
                            double gamma, double znear, double zfar, double eps, const char* op) {
  check_floating(depth, op, "depth");
  check_same(depth, prob, op, "depth", "prob");
  check_shape(depth, prob.sizes(), op, "depth");
  TORCH_CHECK_TYPE(face_idx.scalar_type() == at::kLong, op,
                   ": argument 'face_idx' must be int64, got ", face_idx.scalar_type());
  TORCH_CHECK_VALUE(face_idx.device() == prob.device(), op, ": argument 'face_idx' is on ",
                    face_idx.device(), " but 'prob' is on ", prob.device(),
                    "; they must be on one device");
  check_shape(face_idx, prob.sizes(), op, "face_idx");
  TORCH_CHECK_VALUE(std::isfinite(gamma) && gamma > 0, op,
                    ": argument 'gamma' must be finite and positive, got ", gamma);
  TORCH_CHECK_VALUE(std::isfinite(znear) && std::isfinite(zfar) && znear < zfar, op,
                    ": arguments 'znear' and 'zfar' must be finite with znear < zfar, got znear=",
                    znear, ", zfar=", zfar);
  TORCH_CHECK_VALUE(std::isfinite(eps), op, ": argument 'eps' must be finite, got ", eps);
  return SoftrasParams{gamma, znear, zfar, eps};
}

std::tuple<Tensor, Tensor> softras_blend_forward(const Tensor& prob, const Tensor& depth,
                                                 const Tensor& face_idx, const Tensor& colors,
                                                 const Tensor& background, double gamma,
                                                 double znear, double zfar, double eps) {
  constexpr const char* op = "softras_blend";
  const Sizes s = check_layers(prob, "prob", colors, background, op);
  const SoftrasParams p = check_softras(prob, depth, face_idx, gamma, znear, zfar, eps, op);
  const int64_t H = prob.size(1), W = prob.size(2);
  c10::DeviceGuard guard(prob.device());
  Tensor image = at::empty({s.B, s.C, H, W}, prob.options());
  Tensor sil = at::empty({s.B, 1, H, W}, prob.options());
  if (s.B * s.P == 0) return {image, sil};
  const Tensor pr = prob.contiguous(), d = depth.contiguous(), f = face_idx.contiguous(),
               c = colors.contiguous(), bg = background.contiguous();
  AT_DISPATCH_FLOATING_TYPES(pr.scalar_type(), op, [&] {
    if (pr.is_cuda()) {
#ifdef WITH_CUDA
      CUDA_LAUNCH(op, softras_forward_cuda<scalar_t>(
                          s, p, pr.data_ptr<scalar_t>(), d.data_ptr<scalar_t>(),
                          f.data_ptr<int64_t>(), c.data_ptr<scalar_t>(), bg.data_ptr<scalar_t>(),
                          image.data_ptr<scalar_t>(), sil.data_ptr<scalar_t>(),
                          c10::cuda::getCurrentCUDAStream().stream()));
#endif
    } else {
      softras_forward_cpu<scalar_t>(s, p, pr.data_ptr<scalar_t>(), d.data_ptr<scalar_t>(),
                                    f.data_ptr<int64_t>(), c.data_ptr<scalar_t>(),
                                    bg.data_ptr<scalar_t>(), image.data_ptr<scalar_t>(),
                                    sil.data_ptr<scalar_t>());
    }
  });
  return {image, sil};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> softras_blend_backward(
    const Tensor& grad_image, const Tensor& grad_silhouette, const Tensor& prob,
    const Tensor& depth, const Tensor& face_idx, const Tensor& colors, const Tensor& background,
    double gamma, double znear, double zfar, double eps) {
  constexpr const char* op = "softras_blend_backward";
  const Sizes s = check_layers(prob, "prob", colors, background, op);
  const SoftrasParams p = check_softras(prob, depth, face_idx, gamma, znear, zfar, eps, op);
  const int64_t H = prob.size(1), W = prob.size(2);
  check_grads(grad_image, "grad_image", grad_silhouette, "grad_silhouette", prob, "prob", s, H,
              W, op);
  c10::DeviceGuard guard(prob.device());
  Tensor gp = at::empty(prob.sizes(), prob.options());
  Tensor gd = at::empty(depth.sizes(), depth.options());
  Tensor gc = at::empty(colors.sizes(), colors.options());
  Tensor gbg = at::empty(background.sizes(), background.options());
  if (s.B * s.P == 0) return {gp, gd, gc, gbg};
  const Tensor gi = grad_image.contiguous(), gs = grad_silhouette.contiguous(),
               pr = prob.contiguous(), d = depth.contiguous(), f = face_idx.contiguous(),
               c = colors.contiguous(), bg = background.contiguous();
  AT_DISPATCH_FLOATING_TYPES(pr.scalar_type(), op, [&] {
    if (pr.is_cuda()) {
#ifdef WITH_CUDA
      CUDA_LAUNCH(op, softras_backward_cuda<scalar_t>(
                          s, p, gi.data_ptr<scalar_t>(), gs.data_ptr<scalar_t>(),
                          pr.data_ptr<scalar_t>(), d.data_ptr<scalar_t>(), f.data_ptr<int64_t>(),
                          c.data_ptr<scalar_t>(), bg.data_ptr<scalar_t>(),
                          gp.data_ptr<scalar_t>(), gd.data_ptr<scalar_t>(),
                          gc.data_ptr<scalar_t>(), gbg.data_ptr<scalar_t>(),
                          c10::cuda::getCurrentCUDAStream().stream()));
#endif
    } else {
      softras_backward_cpu<scalar_t>(
          s, p, gi.data_ptr<scalar_t>(), gs.data_ptr<scalar_t>(), pr.data_ptr<scalar_t>(),
          d.data_ptr<scalar_t>(), f.data_ptr<int64_t>(), c.data_ptr<scalar_t>(),
          bg.data_ptr<scalar_t>(), gp.data_ptr<scalar_t>(), gd.data_ptr<scalar_t>(),
          gc.data_ptr<scalar_t>(), gbg.data_ptr<scalar_t>());
    }
  });
  return {gp, gd, gc, gbg};
}

void register_kernels(torch::Library& m) {
  m.impl("composite_layers_forward", &composite_layers_forward);
  m.impl("composite_layers_backward", &composite_layers_backward);
  m.impl("softras_blend_forward", &softras_blend_forward);
  m.impl("softras_blend_backward", &softras_blend_backward);
}

}  // namespace

TORCH_LIBRARY_IMPL(invrender, CPU, m) { register_kernels(m); }
#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(invrender, CUDA, m) { register_kernels(m); }
#endif

}  // namespace composite
}  // namespace invrender
