// C++ smoke test of the registered ops through the dispatcher, without Python (run by ctest).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <cstdio>
#include <optional>
#include <string>

#include "build_info.h"

namespace {

int failures = 0;

void expect(bool ok, const char* what) {
  std::printf("%s: %s\n", ok ? "ok  " : "FAIL", what);
  if (!ok) ++failures;
}

c10::OperatorHandle op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
}

}  // namespace

int main() {
  using at::Tensor;
  std::printf("invrender smoke test (cuda compiled: %d)\n", int(invrender::built_with_cuda()));
  const auto rotation = op("invrender::rotation_matrix_forward")
                            .typed<Tensor(const Tensor&, const Tensor&, const Tensor&)>();
  const auto rotate = op("invrender::rotate_voxels_forward")
                          .typed<Tensor(const Tensor&, const Tensor&, c10::IntArrayRef,
                                        c10::string_view)>();
  const auto project = op("invrender::project_voxels_forward")
                           .typed<Tensor(const Tensor&, const Tensor&, c10::string_view, double)>();
  const auto project_bwd =
      op("invrender::project_voxels_backward")
          .typed<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                            const Tensor&, c10::string_view, double)>();

  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  // Azimuth 90 degrees: object (1, 0, 0) lands at view (0, 0, 1).
  const Tensor az = at::full({1}, M_PI / 2, f64), zero = at::zeros({1}, f64);
  const Tensor R = rotation.call(az, zero, zero);
  const Tensor p = at::matmul(R[0], at::tensor({1.0, 0.0, 0.0}, f64));
  expect(at::allclose(p, at::tensor({0.0, 0.0, 1.0}, f64), 1e-12, 1e-12), "rotation_matrix convention");

  const Tensor vox = at::rand({2, 3, 4, 5, 6}, f64);
  const Tensor eye = at::eye(3, f64).expand({2, 3, 3}).contiguous();
  expect(at::equal(rotate.call(vox, eye, {4, 5, 6}, "trilinear"), vox), "identity rotation is exact");

  const double tau = 0.5;
  const Tensor img = project.call(vox, eye, "trilinear", tau);
  expect(at::allclose(img, 1 - at::exp(-tau * vox.sum(2)), 1e-12, 1e-12), "identity projection");

  const auto grads = project_bwd.call(at::ones_like(img), img, vox, eye, "trilinear", tau);
  const Tensor expected = (tau * (1 - img)).unsqueeze(2).expand_as(vox);
  expect(at::allclose(std::get<0>(grads), expected, 1e-12, 1e-12), "projection backward");

  bool raised = false;
  try {
    project.call(vox, eye, "trilinear", -1.0);
  } catch (const c10::ValueError& e) {
    raised = std::string(e.what()).find("tau") != std::string::npos;
  }
  expect(raised, "bad tau raises ValueError naming 'tau'");

  // Ray marching, absorption-only, identity orthographic view: alpha = 1 - prod_d (1 - a).
  const auto raymarch =
      op("invrender::raymarch_forward")
          .typed<std::tuple<Tensor, Tensor, Tensor>(
              const Tensor&, const std::optional<Tensor>&, const Tensor&, c10::IntArrayRef,
              int64_t, bool, double, double, double, double, bool)>();
  const Tensor absorption = at::rand({2, 1, 4, 5, 6}, f64);
  const auto rm = raymarch.call(absorption, std::nullopt, eye, {5, 6}, 4, false, 1.0, 0.0, 0.0,
                                1.0, false);
  expect(at::allclose(std::get<1>(rm), 1 - at::prod(1 - absorption, 2), 1e-12, 1e-12),
         "identity absorption-only ray marching");

  // Rasterization: a full-screen square (two faces) at depth 2 covers every pixel of a 4x4 image
  // at depth 2; compositing one opaque layer shows its colour with mask 1.
  const auto rasterize =
      op("invrender::rasterize_forward")
          .typed<std::tuple<Tensor, Tensor, Tensor, Tensor>(
              const Tensor&, const Tensor&, c10::IntArrayRef, int64_t, double, bool)>();
  const Tensor sq = at::tensor({-2.0, -2.0, 2.0, 2.0, -2.0, 2.0, 2.0, 2.0, 2.0, -2.0, 2.0, 2.0},
                               f64).reshape({1, 4, 3});
  const Tensor sq_faces = at::tensor({0, 1, 2, 0, 2, 3}, at::kLong).reshape({1, 2, 3});
  const auto frag = rasterize.call(sq, sq_faces, {4, 4}, 2, 0.0, false);
  expect(at::all(std::get<3>(frag).select(3, 0) >= 0).item<bool>() &&
             at::allclose(std::get<2>(frag).select(3, 0), at::full({1, 4, 4}, 2.0, f64)),
         "rasterize covers the screen at the square's depth");
  const auto composite =
      op("invrender::composite_layers_forward")
          .typed<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&)>();
  const Tensor alpha = at::ones({1, 4, 4, 2}, f64);
  const Tensor colors = at::rand({1, 4, 4, 2, 3}, f64);
  const auto shown = composite.call(alpha, colors, at::zeros({1, 3, 4, 4}, f64));
  expect(at::allclose(std::get<0>(shown), colors.select(3, 0).permute({0, 3, 1, 2})) &&
             at::allclose(std::get<1>(shown), at::ones({1, 1, 4, 4}, f64)),
         "composite_layers shows an opaque front layer");

  std::printf("%d failure(s)\n", failures);
  return failures == 0 ? 0 : 1;
}
