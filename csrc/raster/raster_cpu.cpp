// CPU loops of the rasterization op. Per mesh, faces are binned into tiles of kTile x kTile
// pixels by their (blur-widened) bounding boxes; each pixel then considers only its tile's faces.
// Meshes run in parallel (and tiles, when there is a single mesh). The backward scatters into
// each mesh's vertex gradients from one thread per mesh, so it is deterministic.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../common/cpu_dispatch.h"
#include "raster_kernels.h"

namespace invrender {
namespace raster {
namespace {

constexpr int64_t kTile = 8;

// Range of pixel indices whose centre coordinate c(i) = a + s i can lie in [lo, hi] (conservative
// by one pixel; the per-pixel test is exact).
inline void pixel_range(double lo, double hi, double a, double s, int64_t n, int64_t* first,
                        int64_t* last) {
  double i0 = (lo - a) / s, i1 = (hi - a) / s;
  if (i0 > i1) std::swap(i0, i1);
  i0 = std::max(std::floor(i0) - 1, -1.0);
  i1 = std::min(std::ceil(i1) + 1, double(n));
  *first = static_cast<int64_t>(i0) < 0 ? 0 : static_cast<int64_t>(i0);
  *last = static_cast<int64_t>(i1) > n - 1 ? n - 1 : static_cast<int64_t>(i1);
}

template <typename T>
INVRENDER_CPU_CLONES void rasterize_tiles(const RasterParams& p, const FaceRec<T>* recs,
                                          const int64_t* bin_start, const int32_t* bin_faces,
                                          int64_t tiles_x, int64_t t_begin, int64_t t_end,
                                          int64_t* face_idx, T* bary, T* dist, T* depth) {
  for (int64_t t = t_begin; t < t_end; ++t) {
    const int64_t ty = t / tiles_x, tx = t % tiles_x;
    const int32_t* list = bin_faces + bin_start[t];
    const int64_t count = bin_start[t + 1] - bin_start[t];
    for (int64_t i = ty * kTile; i < std::min((ty + 1) * kTile, p.H); ++i) {
      const T py = pixel_y<T>(i, p.H);
      for (int64_t j = tx * kTile; j < std::min((tx + 1) * kTile, p.W); ++j) {
        const T px = pixel_x<T>(j, p.W);
        const int64_t pix = (i * p.W + j) * p.L;
        int64_t* fi = face_idx + pix;
        T* fd = depth + pix;
        int64_t n = 0;
        for (int64_t c = 0; c < count; ++c) consider_face(p, recs[list[c]], list[c], px, py, fi, fd, n);
        write_fragments(p, recs, px, py, fi, n, bary + 3 * pix, dist + pix, depth + pix);
      }
    }
  }
}

template <typename T>
void rasterize_mesh(const RasterParams& p, const T* verts_b, const int64_t* faces_b,
                    int64_t* face_idx, T* bary, T* dist, T* depth) {
  std::vector<FaceRec<T>> recs(p.F);
  for (int64_t f = 0; f < p.F; ++f) load_face(p, verts_b, faces_b + 3 * f, recs[f]);
  // Bins (CSR): faces of each tile in increasing index order.
  const int64_t tiles_x = (p.W + kTile - 1) / kTile, tiles_y = (p.H + kTile - 1) / kTile;
  const int64_t tiles = tiles_x * tiles_y;
  std::vector<int64_t> range(4 * p.F);
  std::vector<int64_t> bin_start(tiles + 1, 0);
  const double sx = 2.0 / p.W, sy = -2.0 / p.H;
  for (int64_t f = 0; f < p.F; ++f) {
    const FaceRec<T>& r = recs[f];
    int64_t* q = &range[4 * f];
    q[0] = 0;
    q[1] = -1;
    if (!r.valid) continue;
    int64_t j0, j1, i0, i1;
    pixel_range(r.xmin, r.xmax, -1.0 + 0.5 * sx, sx, p.W, &j0, &j1);
    pixel_range(r.ymin, r.ymax, 1.0 + 0.5 * sy, sy, p.H, &i0, &i1);
    if (j0 > j1 || i0 > i1) continue;
    q[0] = (i0 / kTile) * tiles_x + j0 / kTile;  // packed tile ranges
    q[1] = (i1 / kTile) * tiles_x + j1 / kTile;
    q[2] = j0 / kTile;
    q[3] = j1 / kTile;
    for (int64_t ty = i0 / kTile; ty <= i1 / kTile; ++ty)
      for (int64_t tx = q[2]; tx <= q[3]; ++tx) ++bin_start[ty * tiles_x + tx + 1];
  }
  for (int64_t t = 0; t < tiles; ++t) bin_start[t + 1] += bin_start[t];
  std::vector<int32_t> bin_faces(bin_start[tiles]);
  std::vector<int64_t> fill(bin_start.begin(), bin_start.end() - 1);
  for (int64_t f = 0; f < p.F; ++f) {
    const int64_t* q = &range[4 * f];
    if (q[0] > q[1]) continue;
    for (int64_t ty = q[0] / tiles_x; ty <= q[1] / tiles_x; ++ty)
      for (int64_t tx = q[2]; tx <= q[3]; ++tx)
        bin_faces[fill[ty * tiles_x + tx]++] = static_cast<int32_t>(f);
  }
  at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
    rasterize_tiles(p, recs.data(), bin_start.data(), bin_faces.data(), tiles_x, begin, end,
                    face_idx, bary, dist, depth);
  });
}

template <typename T>
INVRENDER_CPU_CLONES void backward_mesh(const RasterParams& p, const T* gbary, const T* gdist,
                                        const T* gdepth, const T* verts_b,
                                        const int64_t* faces_b, const int64_t* face_idx,
                                        T* gverts_b) {
  for (int64_t n = 0; n < p.H * p.W * p.L; ++n) {
    const int64_t f = face_idx[n];
    if (f < 0) continue;
    const T* gb = gbary + 3 * n;
    if (gb[0] == T(0) && gb[1] == T(0) && gb[2] == T(0) && gdist[n] == T(0) && gdepth[n] == T(0))
      continue;
    FaceRec<T> r;
    load_face(p, verts_b, faces_b + 3 * f, r);
    if (!r.valid) continue;  // cannot happen for a face the forward selected
    const int64_t pix = n / p.L;
    T g[9] = {T(0), T(0), T(0), T(0), T(0), T(0), T(0), T(0), T(0)};
    eval_face_backward(r, pixel_x<T>(pix % p.W, p.W), pixel_y<T>(pix / p.W, p.H), gb, gdist[n],
                       gdepth[n], g);
    for (int k = 0; k < 3; ++k) {
      T* gv = gverts_b + 3 * faces_b[3 * f + k];
      gv[0] += g[3 * k];
      gv[1] += g[3 * k + 1];
      gv[2] += g[3 * k + 2];
    }
  }
}

}  // namespace

template <typename T>
void rasterize_forward_cpu(const RasterParams& p, const T* verts, const int64_t* faces,
                           int64_t* face_idx, T* bary, T* dist, T* depth) {
  const int64_t pix = p.H * p.W * p.L;
  at::parallel_for(0, p.B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b)
      rasterize_mesh(p, verts + b * p.V * 3, faces + b * p.F * 3, face_idx + b * pix,
                     bary + 3 * b * pix, dist + b * pix, depth + b * pix);
  });
}

template <typename T>
void rasterize_backward_cpu(const RasterParams& p, const T* gbary, const T* gdist,
                            const T* gdepth, const T* verts, const int64_t* faces,
                            const int64_t* face_idx, T* gverts) {
  const int64_t pix = p.H * p.W * p.L;
  at::parallel_for(0, p.B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b)
      backward_mesh(p, gbary + 3 * b * pix, gdist + b * pix, gdepth + b * pix,
                    verts + b * p.V * 3, faces + b * p.F * 3, face_idx + b * pix,
                    gverts + b * p.V * 3);
  });
}

#define INSTANTIATE(T)                                                                        \
  template void rasterize_forward_cpu<T>(const RasterParams&, const T*, const int64_t*,       \
                                         int64_t*, T*, T*, T*);                               \
  template void rasterize_backward_cpu<T>(const RasterParams&, const T*, const T*, const T*,  \
                                          const T*, const int64_t*, const int64_t*, T*);
INSTANTIATE(float)
INSTANTIATE(double)
#undef INSTANTIATE

}  // namespace raster
}  // namespace invrender
