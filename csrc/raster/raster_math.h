// Soft mesh rasterization, written once for the CPU loops and the CUDA kernels. No torch types.
//
// Vertices are in NDC: x in [-1, 1] left to right, y in [-1, 1] bottom to top, z = depth > 0.
// Pixel (i, j) of an (H, W) image has its centre at x = -1 + (2j+1)/W, y = 1 - (2i+1)/H.
//
// For a face (v0, v1, v2) and a pixel centre p:
//   e_k = edge(p; v_{k+1}, v_{k+2}),  edge(p; a, b) = (b.x - a.x)(p.y - a.y) - (b.y - a.y)(p.x - a.x)
//   A = edge(v0; v1, v2) (twice the signed area, > 0 counter-clockwise), w_k = e_k / A
//   bary_k = max(w_k, 0) / sum_j max(w_j, 0)      (clamped outside the face; the sum is >= 1)
//   depth = sum_k bary_k z_k                      (no perspective correction, as UNICORN)
//   dist = -d^2 inside (all w_k >= 0), +d^2 outside, d = distance from p to the nearest edge
//          segment (edge k is the segment v_{k+1} -> v_{k+2}).
// A face covers a pixel when dist <= blur. Faces with a vertex at depth <= 0, faces with a vertex
// coordinate beyond kMaxCoord (a vertex all but on the camera plane: products of four coordinates
// in the distance and its gradient would overflow float32), faces whose |A| is below kMinArea2
// (degenerate: no NaN or Inf can come from them) and, with culling, faces with A < 0 (seen from the
// back) are dropped. Each pixel keeps the L covering faces of smallest depth,
// ties broken by the smaller face index, front to back.
#pragma once

#include "../common/common.h"

namespace invrender {
namespace raster {

// Twice the area below which a face is dropped as degenerate (NDC units; a pixel of a 4096^2
// image has 2.4e-7).
constexpr double kMinArea2 = 1e-10;
// Largest |x|, |y| or z of a vertex whose faces are rasterized (NDC units; 1e8^4 = 1e32 leaves
// float32 headroom).
constexpr double kMaxCoord = 1e8;

struct RasterParams {
  int64_t B, V, F;  // batch, vertices and faces per mesh
  int64_t H, W, L;  // image size, layers
  double blur;      // coverage threshold on dist (squared NDC distance)
  bool cull;        // drop faces seen from the back
};

template <typename T>
struct FaceRec {
  T x[3], y[3], z[3];
  T area2;
  T xmin, xmax, ymin, ymax;  // bounding box in NDC, widened by the blur radius
  T zmin;
  bool valid;
};

template <typename T>
HOST_DEVICE INLINE T min3(T a, T b, T c) {
  return a < b ? (a < c ? a : c) : (b < c ? b : c);
}

template <typename T>
HOST_DEVICE INLINE T max3(T a, T b, T c) {
  return a > b ? (a > c ? a : c) : (b > c ? b : c);
}

// Face `face` (3 vertex indices into verts_b, (V, 3)); rows with a negative index are padding.
template <typename T>
HOST_DEVICE INLINE void load_face(const RasterParams& p, const T* verts_b, const int64_t* face,
                                  FaceRec<T>& r) {
  r.valid = false;
  for (int k = 0; k < 3; ++k)
    if (face[k] < 0) return;
  for (int k = 0; k < 3; ++k) {
    const T* v = verts_b + 3 * face[k];
    r.x[k] = v[0];
    r.y[k] = v[1];
    r.z[k] = v[2];
    if (!(r.z[k] > T(0))) return;  // behind the camera (or NaN)
    const T m = T(kMaxCoord);
    if (!(r.x[k] <= m && r.x[k] >= -m && r.y[k] <= m && r.y[k] >= -m && r.z[k] <= m)) return;
  }
  r.area2 = (r.x[1] - r.x[0]) * (r.y[2] - r.y[0]) - (r.y[1] - r.y[0]) * (r.x[2] - r.x[0]);
  if (!(r.area2 >= T(kMinArea2) || r.area2 <= -T(kMinArea2))) return;
  if (p.cull && r.area2 < T(0)) return;
  const T rad = p.blur > 0 ? sqrt_(T(p.blur)) : T(0);
  r.xmin = min3(r.x[0], r.x[1], r.x[2]) - rad;
  r.xmax = max3(r.x[0], r.x[1], r.x[2]) + rad;
  r.ymin = min3(r.y[0], r.y[1], r.y[2]) - rad;
  r.ymax = max3(r.y[0], r.y[1], r.y[2]) + rad;
  r.zmin = min3(r.z[0], r.z[1], r.z[2]);
  r.valid = true;
}

template <typename T>
HOST_DEVICE INLINE T pixel_x(int64_t j, int64_t W) {
  return T(2 * j + 1 - W) / T(W);
}

template <typename T>
HOST_DEVICE INLINE T pixel_y(int64_t i, int64_t H) {
  return T(H - 2 * i - 1) / T(H);
}

// Faces are binned into square tiles of kTile x kTile pixels by their bounding boxes.
constexpr int64_t kTile = 8;

// Pixel indices whose centre coordinate a + s i can lie in [lo, hi] (conservative by one pixel;
// the per-pixel test is exact): *first > *last when none.
HOST_DEVICE INLINE void pixel_range(double lo, double hi, double a, double s, int64_t n,
                                    int64_t* first, int64_t* last) {
  double i0 = (lo - a) / s, i1 = (hi - a) / s;
  if (i0 > i1) {
    const double tmp = i0;
    i0 = i1;
    i1 = tmp;
  }
  i0 = floor(i0) - 1.0;
  i1 = ceil(i1) + 1.0;
  *first = i0 < 0.0 ? 0 : (i0 > double(n) ? n : static_cast<int64_t>(i0));
  *last = i1 > double(n - 1) ? n - 1 : (i1 < -1.0 ? -1 : static_cast<int64_t>(i1));
}

// Tiles [tx0, tx1] x [ty0, ty1] that a valid face's bounding box may touch; false when none.
template <typename T>
HOST_DEVICE INLINE bool face_tiles(const RasterParams& p, const FaceRec<T>& r, int64_t* tx0,
                                   int64_t* tx1, int64_t* ty0, int64_t* ty1) {
  if (!r.valid) return false;
  const double sx = 2.0 / double(p.W), sy = -2.0 / double(p.H);
  int64_t j0, j1, i0, i1;
  pixel_range(double(r.xmin), double(r.xmax), -1.0 + 0.5 * sx, sx, p.W, &j0, &j1);
  pixel_range(double(r.ymin), double(r.ymax), 1.0 + 0.5 * sy, sy, p.H, &i0, &i1);
  if (j0 > j1 || i0 > i1) return false;
  *tx0 = j0 / kTile;
  *tx1 = j1 / kTile;
  *ty0 = i0 / kTile;
  *ty1 = i1 / kTile;
  return true;
}

template <typename T>
HOST_DEVICE INLINE T edge_fn(T ax, T ay, T bx, T by, T px, T py) {
  return (bx - ax) * (py - ay) - (by - ay) * (px - ax);
}

// Everything about one pixel and one face that the forward and the backward need.
template <typename T>
struct Hit {
  T w[3];     // unclamped barycentrics
  T s;        // sum of the clamped ones (>= 1)
  T bary[3];  // clamped, normalised
  T depth, dist;
  bool inside;
  int edge;   // nearest edge (segment v_{edge+1} -> v_{edge+2})
  T t;        // position of the nearest point on that edge, in [0, 1]
  T dx, dy;   // p - nearest point
};

// Squared distance from (px, py) to the segment a -> b, with the nearest point's parameter t.
template <typename T>
HOST_DEVICE INLINE T segment_dist2(T ax, T ay, T bx, T by, T px, T py, T* t, T* dx, T* dy) {
  const T abx = bx - ax, aby = by - ay, apx = px - ax, apy = py - ay;
  const T l2 = abx * abx + aby * aby;
  T u = l2 > T(0) ? (apx * abx + apy * aby) / l2 : T(0);
  u = u < T(0) ? T(0) : (u > T(1) ? T(1) : u);
  *t = u;
  *dx = apx - u * abx;
  *dy = apy - u * aby;
  return *dx * *dx + *dy * *dy;
}

// Barycentrics and inside test only (cheap part of eval_face).
template <typename T>
HOST_DEVICE INLINE void face_barycentrics(const FaceRec<T>& r, T px, T py, Hit<T>& h) {
  for (int k = 0; k < 3; ++k) {
    const int a = k == 2 ? 0 : k + 1, b = k == 0 ? 2 : k - 1;
    h.w[k] = edge_fn(r.x[a], r.y[a], r.x[b], r.y[b], px, py) / r.area2;
  }
  h.inside = (h.w[0] >= T(0)) & (h.w[1] >= T(0)) & (h.w[2] >= T(0));
  T c[3];
  for (int k = 0; k < 3; ++k) c[k] = h.w[k] > T(0) ? h.w[k] : T(0);
  h.s = c[0] + c[1] + c[2];
  for (int k = 0; k < 3; ++k) h.bary[k] = c[k] / h.s;
  h.depth = h.bary[0] * r.z[0] + h.bary[1] * r.z[1] + h.bary[2] * r.z[2];
  // A convex combination, but rounding can put it an ulp below zmin, which consider_face uses as
  // an exact lower bound to skip faces: the kept faces would then depend on the order faces arrive
  // in (atomic on the GPU). Clamped, the bound is exact (the gradient is the unclamped one's).
  if (h.depth < r.zmin) h.depth = r.zmin;
}

template <typename T>
HOST_DEVICE INLINE void face_distance(const FaceRec<T>& r, T px, T py, Hit<T>& h) {
  T best = T(0);
  for (int k = 0; k < 3; ++k) {
    const int a = k == 2 ? 0 : k + 1, b = k == 0 ? 2 : k - 1;
    T t, dx, dy;
    const T d2 = segment_dist2(r.x[a], r.y[a], r.x[b], r.y[b], px, py, &t, &dx, &dy);
    if (k == 0 || d2 < best) {
      best = d2;
      h.edge = k;
      h.t = t;
      h.dx = dx;
      h.dy = dy;
    }
  }
  h.dist = h.inside ? -best : best;
}

template <typename T>
HOST_DEVICE INLINE void eval_face(const FaceRec<T>& r, T px, T py, Hit<T>& h) {
  face_barycentrics(r, px, py, h);
  face_distance(r, px, py, h);
}

// Backward of eval_face: given dL/dbary (3), dL/ddist and dL/ddepth at the pixel, adds dL/dx_k,
// dL/dy_k, dL/dz_k of the face's vertices to g[3 k + 0..2].
template <typename T>
HOST_DEVICE INLINE void eval_face_backward(const FaceRec<T>& r, T px, T py, const T* gbary,
                                           T gdist, T gdepth, T* g) {
  Hit<T> h;
  eval_face(r, px, py, h);
  // depth = sum_k bary_k z_k
  T gb[3];
  for (int k = 0; k < 3; ++k) {
    gb[k] = gbary[k] + gdepth * r.z[k];
    g[3 * k + 2] += gdepth * h.bary[k];
  }
  // bary = c / s, c = max(w, 0) (gradient passed where w >= 0, as torch.clamp)
  const T dot = gb[0] * h.bary[0] + gb[1] * h.bary[1] + gb[2] * h.bary[2];
  T gw[3];
  for (int k = 0; k < 3; ++k) gw[k] = h.w[k] >= T(0) ? (gb[k] - dot) / h.s : T(0);
  // w_k = e_k / A
  T gA = T(0);
  for (int k = 0; k < 3; ++k) {
    const int a = k == 2 ? 0 : k + 1, b = k == 0 ? 2 : k - 1;
    const T ge = gw[k] / r.area2;
    gA -= gw[k] * h.w[k] / r.area2;
    g[3 * a + 0] += ge * (r.y[b] - py);
    g[3 * a + 1] += ge * (px - r.x[b]);
    g[3 * b + 0] += ge * (py - r.y[a]);
    g[3 * b + 1] += ge * (r.x[a] - px);
  }
  // A = edge(v0; v1, v2): dA/dx_k = y_{k+1} - y_{k+2}, dA/dy_k = x_{k+2} - x_{k+1}
  for (int k = 0; k < 3; ++k) {
    const int a = k == 2 ? 0 : k + 1, b = k == 0 ? 2 : k - 1;
    g[3 * k + 0] += gA * (r.y[a] - r.y[b]);
    g[3 * k + 1] += gA * (r.x[b] - r.x[a]);
  }
  // dist = -+ |p - q|^2 with q = a + t (b - a) the nearest point of the nearest edge:
  // d/da = -2 (1 - t)(p - q), d/db = -2 t (p - q) (t is stationary or clamped).
  const T gd2 = h.inside ? -gdist : gdist;
  if (gd2 != T(0)) {
    const int a = h.edge == 2 ? 0 : h.edge + 1, b = h.edge == 0 ? 2 : h.edge - 1;
    const T ca = T(-2) * gd2 * (T(1) - h.t), cb = T(-2) * gd2 * h.t;
    g[3 * a + 0] += ca * h.dx;
    g[3 * a + 1] += ca * h.dy;
    g[3 * b + 0] += cb * h.dx;
    g[3 * b + 1] += cb * h.dy;
  }
}

// Keeps the L covering faces of smallest (depth, face index) for pixel centre (px, py).
// `fi` and `fd` (L entries each) hold the selection sorted front to back; `n` how many are filled.
// Candidates may come in any order.
template <typename T>
HOST_DEVICE INLINE void consider_face(const RasterParams& p, const FaceRec<T>& r, int64_t f, T px,
                                      T py, int64_t* fi, T* fd, int64_t& n) {
  if (!r.valid || px < r.xmin || px > r.xmax || py < r.ymin || py > r.ymax) return;
  const int64_t L = p.L;
  if (n == L && (r.zmin > fd[L - 1] || (r.zmin == fd[L - 1] && f > fi[L - 1]))) return;
  Hit<T> h;
  face_barycentrics(r, px, py, h);
  if (!h.inside) {
    face_distance(r, px, py, h);
    if (!(h.dist <= T(p.blur))) return;
  }
  if (n == L && (h.depth > fd[L - 1] || (h.depth == fd[L - 1] && f > fi[L - 1]))) return;
  int64_t pos = n < L ? n : L - 1;
  while (pos > 0 && (fd[pos - 1] > h.depth || (fd[pos - 1] == h.depth && fi[pos - 1] > f))) {
    fd[pos] = fd[pos - 1];
    fi[pos] = fi[pos - 1];
    --pos;
  }
  fd[pos] = h.depth;
  fi[pos] = f;
  if (n < L) ++n;
}

// Writes bary (3 L), dist (L) and depth (L) of the selected faces of a pixel (fi, n entries),
// and -1 / zeros for the empty layers.
template <typename T>
HOST_DEVICE INLINE void write_fragments(const RasterParams& p, const FaceRec<T>* recs, T px, T py,
                                        int64_t* fi, int64_t n, T* bary, T* dist, T* depth) {
  for (int64_t l = 0; l < p.L; ++l) {
    if (l >= n) {
      fi[l] = -1;
      bary[3 * l] = bary[3 * l + 1] = bary[3 * l + 2] = T(0);
      dist[l] = T(0);
      depth[l] = T(0);
      continue;
    }
    Hit<T> h;
    eval_face(recs[fi[l]], px, py, h);
    for (int k = 0; k < 3; ++k) bary[3 * l + k] = h.bary[k];
    dist[l] = h.dist;
    depth[l] = h.depth;
  }
}

}  // namespace raster
}  // namespace invrender
