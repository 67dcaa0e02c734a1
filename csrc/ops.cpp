// Schemas of every invrender op. Implementations are registered per backend next to each op
// (csrc/<family>/<family>.cpp); autograd and fake (meta) kernels are registered from Python
// (invrender/ops/).
#include <torch/library.h>

TORCH_LIBRARY(invrender, m) {
  // Voxel family (csrc/voxel).
  m.def("rotation_matrix_forward(Tensor azimuth, Tensor elevation, Tensor roll) -> Tensor");
  m.def(
      "rotation_matrix_backward(Tensor grad, Tensor azimuth, Tensor elevation, Tensor roll) "
      "-> (Tensor, Tensor, Tensor)");
  m.def("rotate_voxels_forward(Tensor voxels, Tensor rotation, int[] size, str mode) -> Tensor");
  m.def(
      "rotate_voxels_backward(Tensor grad, Tensor voxels, Tensor rotation, int[] size, "
      "str mode) -> (Tensor, Tensor)");
  m.def(
      "project_voxels_forward(Tensor voxels, Tensor rotation, str mode, float tau) -> Tensor");
  m.def(
      "project_voxels_backward(Tensor grad, Tensor image, Tensor voxels, Tensor rotation, "
      "str mode, float tau) -> (Tensor, Tensor)");

  // Ray marching family (csrc/raymarch). Outputs the three per-ray sums; background, expected
  // depth and normalisation are applied in Python (invrender/ops/raymarch.py).
  m.def(
      "raymarch_forward(Tensor absorption, Tensor? emission, Tensor rotation, int[] image_size, "
      "int samples, bool perspective, float focal, float distance, float near, float far, "
      "bool density) -> (Tensor, Tensor, Tensor)");
  m.def(
      "raymarch_backward(Tensor grad_color, Tensor grad_alpha, Tensor grad_depth, "
      "Tensor absorption, Tensor? emission, Tensor rotation, int[] image_size, int samples, "
      "bool perspective, float focal, float distance, float near, float far, bool density) "
      "-> (Tensor, Tensor, Tensor)");
}
