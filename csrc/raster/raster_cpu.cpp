// CPU loops of the rasterization op. Per mesh, faces are binned into tiles of kTile x kTile
// pixels by their (blur-widened) bounding boxes; each pixel then considers only its tile's faces.
// Meshes run in parallel (and tiles, when there is a single mesh). The backward scatters into
// each mesh's vertex gradients from one thread per mesh, so it is deterministic.
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <random>
#include <vector>

#include "../common/cpu_dispatch.h"
#include "raster_kernels.h"

namespace invrender {
namespace raster {
namespace {

// Test-only (set_face_order_for_testing): 0 considers each tile's faces in index order, s > 0 in
// an order shuffled with seed s. The result must not depend on it: that is how the CPU tests guard
// the GPU kernel, whose bins fill in atomic (arbitrary) order.
std::atomic<int64_t> g_face_order{0};

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
  std::vector<int64_t> range(4 * p.F);  // tile ranges tx0, tx1, ty0, ty1 (tx0 > tx1: none)
  std::vector<int64_t> bin_start(tiles + 1, 0);
  for (int64_t f = 0; f < p.F; ++f) {
    int64_t* q = &range[4 * f];
    if (!face_tiles(p, recs[f], &q[0], &q[1], &q[2], &q[3])) {
      q[0] = 0;
      q[1] = -1;
      continue;
    }
    for (int64_t ty = q[2]; ty <= q[3]; ++ty)
      for (int64_t tx = q[0]; tx <= q[1]; ++tx) ++bin_start[ty * tiles_x + tx + 1];
  }
  for (int64_t t = 0; t < tiles; ++t) bin_start[t + 1] += bin_start[t];
  std::vector<int32_t> bin_faces(bin_start[tiles]);
  std::vector<int64_t> fill(bin_start.begin(), bin_start.end() - 1);
  for (int64_t f = 0; f < p.F; ++f) {
    const int64_t* q = &range[4 * f];
    for (int64_t ty = q[2]; ty <= q[3]; ++ty)
      for (int64_t tx = q[0]; tx <= q[1]; ++tx)
        bin_faces[fill[ty * tiles_x + tx]++] = static_cast<int32_t>(f);
  }
  if (const int64_t seed = g_face_order.load()) {
    for (int64_t t = 0; t < tiles; ++t) {
      std::mt19937_64 rng(static_cast<uint64_t>(seed * 1000003 + t));
      std::shuffle(bin_faces.begin() + bin_start[t], bin_faces.begin() + bin_start[t + 1], rng);
    }
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

void set_face_order_for_testing(int64_t seed) { g_face_order.store(seed); }

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
