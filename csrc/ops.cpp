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

  // Mesh rasterization family (csrc/raster). verts (B, V, 3) in NDC with depth z > 0; faces
  // (B, F, 3) int64 into each mesh's own vertices, rows with an index < 0 are padding; blur is the
  // coverage radius in squared NDC distance. Outputs (B, H, W, L[, 3]): bary, dist (signed
  // squared distance), depth, face_idx (int64, -1 for empty layers).
  m.def(
      "rasterize_forward(Tensor verts, Tensor faces, int[] image_size, int layers, float blur, "
      "bool cull_backfaces) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "rasterize_backward(Tensor grad_bary, Tensor grad_dist, Tensor grad_depth, Tensor verts, "
      "Tensor faces, Tensor face_idx) -> Tensor");
  // Interpolation of vertex attributes attrs (B, V, C) at the fragments: faces (B, F, 3),
  // face_idx (B, H, W, L), bary (B, H, W, L, 3) -> (B, H, W, L, C).
  m.def("interpolate_forward(Tensor attrs, Tensor faces, Tensor face_idx, Tensor bary) -> Tensor");
  m.def(
      "interpolate_backward(Tensor grad, Tensor attrs, Tensor faces, Tensor face_idx, "
      "Tensor bary) -> (Tensor, Tensor)");
  // Layered compositing: alpha (B, H, W, L), colors (B, H, W, L, C), background (B, C, H, W)
  // -> image (B, C, H, W), mask (B, 1, H, W).
  m.def(
      "composite_layers_forward(Tensor alpha, Tensor colors, Tensor background) "
      "-> (Tensor, Tensor)");
  m.def(
      "composite_layers_backward(Tensor grad_image, Tensor grad_mask, Tensor alpha, "
      "Tensor colors, Tensor background) -> (Tensor, Tensor, Tensor)");
  // SoftRas aggregation over the layers: prob (B, H, W, L) occupancies (0 on empty layers), depth
  // (B, H, W, L), face_idx (B, H, W, L) int64 (-1: empty layer), colors (B, H, W, L, C),
  // background (B, C, H, W) -> image (B, C, H, W), silhouette (B, 1, H, W).
  m.def(
      "softras_blend_forward(Tensor prob, Tensor depth, Tensor face_idx, Tensor colors, "
      "Tensor background, float gamma, float znear, float zfar, float eps) -> (Tensor, Tensor)");
  m.def(
      "softras_blend_backward(Tensor grad_image, Tensor grad_silhouette, Tensor prob, "
      "Tensor depth, Tensor face_idx, Tensor colors, Tensor background, float gamma, "
      "float znear, float zfar, float eps) -> (Tensor, Tensor, Tensor, Tensor)");

  // Nearest neighbours (csrc/chamfer): x (B, N, D), y (B, M, D), x_len / y_len (B,) int64 ->
  // dist (B, N) squared distances, idx (B, N) int64 (-1 beyond x_len or when y_len = 0).
  m.def(
      "nearest_neighbors_forward(Tensor x, Tensor y, Tensor x_lengths, Tensor y_lengths) "
      "-> (Tensor, Tensor)");
  m.def(
      "nearest_neighbors_backward(Tensor grad_dist, Tensor x, Tensor y, Tensor idx, "
      "bool need_y) -> (Tensor, Tensor)");
}
