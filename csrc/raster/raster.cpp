// Torch glue of the rasterization op: argument checks, outputs, device guard and stream, dtype
// dispatch, CPU / CUDA registration. The math lives in raster_math.h.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <tuple>

#include "../common/checks.h"
#include "raster_kernels.h"

#ifdef WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

namespace invrender {
namespace raster {
namespace {

using at::Tensor;

RasterParams check_args(const Tensor& verts, const Tensor& faces, at::IntArrayRef image_size,
                        int64_t layers, double blur, bool cull, const char* op) {
  check_cuda_built(verts, op);
  check_floating(verts, op, "verts");
  check_dim(verts, 3, op, "verts", "(B, V, 3)");
  TORCH_CHECK_VALUE(verts.size(2) == 3, op, ": argument 'verts' must have shape (B, V, 3), got ",
                    verts.sizes());
  ValueChecks checks(op);
  checks.finite(verts, "verts");
  TORCH_CHECK_TYPE(faces.scalar_type() == at::kLong, op,
                   ": argument 'faces' must be int64, got ", faces.scalar_type());
  TORCH_CHECK_VALUE(faces.device() == verts.device(), op, ": argument 'faces' is on ",
                    faces.device(), " but 'verts' is on ", verts.device(),
                    "; they must be on one device");
  check_dim(faces, 3, op, "faces", "(B, F, 3)");
  TORCH_CHECK_VALUE(faces.size(0) == verts.size(0) && faces.size(2) == 3, op,
                    ": argument 'faces' must have shape (B, F, 3) with B = ", verts.size(0),
                    ", got ", faces.sizes());
  RasterParams p;
  p.B = verts.size(0);
  p.V = verts.size(1);
  p.F = faces.size(1);
  TORCH_CHECK_VALUE(p.F <= std::numeric_limits<int32_t>::max(), op,
                    ": argument 'faces' has ", p.F, " faces per mesh; at most 2^31 - 1");
  checks.in_range(faces, std::numeric_limits<int64_t>::min(), p.V - 1, "faces",
                  "holds a vertex index >= V = " + std::to_string(p.V));
  checks.verify();
  TORCH_CHECK_VALUE(image_size.size() == 2 && image_size[0] >= 0 && image_size[1] >= 0, op,
                    ": argument 'image_size' must be two non-negative integers (H, W), got ",
                    image_size);
  p.H = image_size[0];
  p.W = image_size[1];
  TORCH_CHECK_VALUE(layers >= 1, op, ": argument 'layers' must be >= 1, got ", layers);
  p.L = layers;
  TORCH_CHECK_VALUE(std::isfinite(blur) && blur >= 0, op,
                    ": argument 'blur' must be finite and >= 0, got ", blur);
  p.blur = blur;
  p.cull = cull;
  return p;
}

std::tuple<Tensor, Tensor, Tensor, Tensor> rasterize_forward(const Tensor& verts,
                                                             const Tensor& faces,
                                                             at::IntArrayRef image_size,
                                                             int64_t layers, double blur,
                                                             bool cull_backfaces) {
  constexpr const char* op = "rasterize";
  const RasterParams p = check_args(verts, faces, image_size, layers, blur, cull_backfaces, op);
  c10::DeviceGuard guard(verts.device());
  const auto opts = verts.options();
  // Every entry is written by the kernels (empty layers get -1 and zeros).
  Tensor face_idx = at::empty({p.B, p.H, p.W, p.L}, opts.dtype(at::kLong));
  Tensor bary = at::empty({p.B, p.H, p.W, p.L, 3}, opts);
  Tensor dist = at::empty({p.B, p.H, p.W, p.L}, opts);
  Tensor depth = at::empty({p.B, p.H, p.W, p.L}, opts);
  if (face_idx.numel() == 0) return {bary, dist, depth, face_idx};
  const Tensor v = verts.contiguous(), f = faces.contiguous();
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), op, [&] {
    if (v.is_cuda()) {
#ifdef WITH_CUDA
      const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
      Tensor recs = at::empty({std::max<int64_t>(p.B * p.F, 1) *
                               static_cast<int64_t>(sizeof(FaceRec<scalar_t>))},
                              opts.dtype(at::kByte));
      auto* recs_ptr = reinterpret_cast<FaceRec<scalar_t>*>(recs.data_ptr());
      const int64_t bins = rasterize_bins(p);
      Tensor counts = at::zeros({bins}, opts.dtype(at::kLong));
      CUDA_LAUNCH(op, rasterize_count_cuda<scalar_t>(p, v.data_ptr<scalar_t>(),
                                                     f.data_ptr<int64_t>(), recs_ptr,
                                                     counts.data_ptr<int64_t>(), stream));
      Tensor bin_start = at::zeros({bins + 1}, opts.dtype(at::kLong));
      bin_start.narrow(0, 1, bins).copy_(counts.cumsum(0));
      const int64_t entries = bin_start[bins].item<int64_t>();
      Tensor bin_faces = at::empty({std::max<int64_t>(entries, 1)}, opts.dtype(at::kInt));
      Tensor cursor = bin_start.narrow(0, 0, bins).clone();
      CUDA_LAUNCH(op, rasterize_fill_cuda<scalar_t>(p, recs_ptr, cursor.data_ptr<int64_t>(),
                                                    bin_faces.data_ptr<int32_t>(), stream));
      CUDA_LAUNCH(op, rasterize_pixels_cuda<scalar_t>(
                          p, recs_ptr, bin_start.data_ptr<int64_t>(),
                          bin_faces.data_ptr<int32_t>(), face_idx.data_ptr<int64_t>(),
                          bary.data_ptr<scalar_t>(), dist.data_ptr<scalar_t>(),
                          depth.data_ptr<scalar_t>(), stream));
#endif
    } else {
      rasterize_forward_cpu<scalar_t>(p, v.data_ptr<scalar_t>(), f.data_ptr<int64_t>(),
                                      face_idx.data_ptr<int64_t>(), bary.data_ptr<scalar_t>(),
                                      dist.data_ptr<scalar_t>(), depth.data_ptr<scalar_t>());
    }
  });
  return {bary, dist, depth, face_idx};
}

Tensor rasterize_backward(const Tensor& grad_bary, const Tensor& grad_dist,
                          const Tensor& grad_depth, const Tensor& verts, const Tensor& faces,
                          const Tensor& face_idx) {
  constexpr const char* op = "rasterize_backward";
  TORCH_CHECK_VALUE(face_idx.dim() == 4, op,
                    ": argument 'face_idx' must be a 4-D tensor (B, H, W, L), got shape ",
                    face_idx.sizes());
  const RasterParams p = check_args(verts, faces, {face_idx.size(1), face_idx.size(2)},
                                    std::max<int64_t>(face_idx.size(3), 1), 0.0, false, op);
  TORCH_CHECK_TYPE(face_idx.scalar_type() == at::kLong, op,
                   ": argument 'face_idx' must be int64, got ", face_idx.scalar_type());
  TORCH_CHECK_VALUE(face_idx.device() == verts.device() && face_idx.size(0) == p.B, op,
                    ": argument 'face_idx' must be (B, H, W, L) on the device of 'verts', got ",
                    face_idx.sizes(), " on ", face_idx.device());
  const int64_t L = face_idx.size(3);
  check_same(grad_bary, verts, op, "grad_bary", "verts");
  check_shape(grad_bary, {p.B, p.H, p.W, L, 3}, op, "grad_bary");
  check_same(grad_dist, verts, op, "grad_dist", "verts");
  check_shape(grad_dist, {p.B, p.H, p.W, L}, op, "grad_dist");
  check_same(grad_depth, verts, op, "grad_depth", "verts");
  check_shape(grad_depth, {p.B, p.H, p.W, L}, op, "grad_depth");
  ValueChecks checks(op);
  checks.in_range(face_idx, -1, p.F - 1, "face_idx", "holds a face index outside [-1, F)");
  checks.verify();
  c10::DeviceGuard guard(verts.device());
  Tensor gverts = at::zeros_like(verts, at::MemoryFormat::Contiguous);
  if (face_idx.numel() == 0) return gverts;
  RasterParams q = p;
  q.L = L;
  const Tensor gb = grad_bary.contiguous(), gd = grad_dist.contiguous(),
               gz = grad_depth.contiguous(), v = verts.contiguous(), f = faces.contiguous(),
               fi = face_idx.contiguous();
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), op, [&] {
    if (v.is_cuda()) {
#ifdef WITH_CUDA
      at::globalContext().alertNotDeterministic("invrender::rasterize_backward (CUDA)");
      CUDA_LAUNCH(op, rasterize_backward_cuda<scalar_t>(
                          q, gb.data_ptr<scalar_t>(), gd.data_ptr<scalar_t>(),
                          gz.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), f.data_ptr<int64_t>(),
                          fi.data_ptr<int64_t>(), gverts.data_ptr<scalar_t>(),
                          c10::cuda::getCurrentCUDAStream().stream()));
#endif
    } else {
      rasterize_backward_cpu<scalar_t>(q, gb.data_ptr<scalar_t>(), gd.data_ptr<scalar_t>(),
                                       gz.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
                                       f.data_ptr<int64_t>(), fi.data_ptr<int64_t>(),
                                       gverts.data_ptr<scalar_t>());
    }
  });
  return gverts;
}

void register_kernels(torch::Library& m) {
  m.impl("rasterize_forward", &rasterize_forward);
  m.impl("rasterize_backward", &rasterize_backward);
}

}  // namespace

TORCH_LIBRARY_IMPL(invrender, CPU, m) { register_kernels(m); }
#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(invrender, CUDA, m) { register_kernels(m); }
#endif

}  // namespace raster
}  // namespace invrender
