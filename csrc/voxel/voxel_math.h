// Voxel op math, written once for the CPU loops and the CUDA kernels: camera rotation matrices,
// trilinear / nearest sampling of a rotated grid, and the visual-hull projection. Forward and
// backward per element; no torch types.
//
// Conventions (see README): a grid (D, H, W) spans [-1, 1]^3 with voxel centres at -1 + (2i+1)/N;
// index w runs along +x, h along -y, d along -z. A rotation R maps object to view coordinates,
// p_view = R p_obj, so resampling the object in the view frame reads the input at R^T p_view.
#pragma once

#include "../common/common.h"

namespace invrender {
namespace voxel {

// ---------------------------------------------------------------------------------------------
// rotation_matrix(azimuth, elevation, roll): R = Rz(roll) * R_orbit(azimuth, elevation), whose
// rows are the camera's right, up and backward axes in object coordinates.

template <typename T>
HOST_DEVICE INLINE void rotation_forward(T a, T e, T r, T* R) {
  const T ca = cos_(a), sa = sin_(a), ce = cos_(e), se = sin_(e), cr = cos_(r), sr = sin_(r);
  const T x0[3] = {ca, T(0), -sa};
  const T y0[3] = {-sa * se, ce, -ca * se};
  const T z0[3] = {sa * ce, se, ca * ce};
  for (int k = 0; k < 3; ++k) {
    R[k] = cr * x0[k] - sr * y0[k];
    R[3 + k] = sr * x0[k] + cr * y0[k];
    R[6 + k] = z0[k];
  }
}

// Given dL/dR (row-major, 9 values), returns dL/da, dL/de, dL/dr.
template <typename T>
HOST_DEVICE INLINE void rotation_backward(const T* g, T a, T e, T r, T* ga, T* ge, T* gr) {
  const T ca = cos_(a), sa = sin_(a), ce = cos_(e), se = sin_(e), cr = cos_(r), sr = sin_(r);
  const T x0[3] = {ca, T(0), -sa};
  const T y0[3] = {-sa * se, ce, -ca * se};
  const T dx0_da[3] = {-sa, T(0), -ca};
  const T dy0_da[3] = {-ca * se, T(0), sa * se};
  const T dz0_da[3] = {ca * ce, T(0), -sa * ce};
  const T dy0_de[3] = {-sa * ce, -se, -ca * ce};
  const T dz0_de[3] = {-sa * se, ce, -ca * se};
  T sa_ = 0, se_ = 0, sr_ = 0;
  for (int k = 0; k < 3; ++k) {
    const T g0 = g[k], g1 = g[3 + k], g2 = g[6 + k];
    sa_ += g0 * (cr * dx0_da[k] - sr * dy0_da[k]) + g1 * (sr * dx0_da[k] + cr * dy0_da[k]) +
           g2 * dz0_da[k];
    se_ += g0 * (-sr * dy0_de[k]) + g1 * (cr * dy0_de[k]) + g2 * dz0_de[k];
    sr_ += g0 * (-sr * x0[k] - cr * y0[k]) + g1 * (cr * x0[k] - sr * y0[k]);
  }
  *ga = sa_;
  *ge = se_;
  *gr = sr_;
}

// ---------------------------------------------------------------------------------------------
// Grid geometry shared by rotate and project.
//
// Input grid (D, H, W) over [-1, 1]^3. Output grid (Do, Ho, Wo) with the input's voxel spacing,
// centred on the origin: it spans [-Wo/W, Wo/W] along x, and so on (a larger output embeds the
// object with room to rotate). Projection uses the output grid equal to the input grid.
struct Geometry {
  int64_t B, C;
  int64_t D, H, W;     // input grid
  int64_t Do, Ho, Wo;  // output grid
};

// View-space position of output voxel (d, h, w).
template <typename T>
HOST_DEVICE INLINE Vec3<T> output_position(const Geometry& g, int64_t d, int64_t h, int64_t w) {
  return {T(2 * w + 1 - g.Wo) / T(g.W), T(g.Ho - 2 * h - 1) / T(g.H), T(g.Do - 2 * d - 1) / T(g.D)};
}

// d(index)/d(object position), diagonal.
template <typename T>
HOST_DEVICE INLINE Vec3<T> index_per_object(const Geometry& g) {
  return {T(0.5) * T(g.W), T(-0.5) * T(g.H), T(-0.5) * T(g.D)};
}

// ---------------------------------------------------------------------------------------------
// Sampling stencils with zero padding. `u` holds (u_w, u_h, u_d). Range tests are done in floating
// point before any conversion to integers, so NaN or huge coordinates are simply "outside".

template <typename T>
struct Trilinear {
  bool inside;    // false: every corner is outside, value 0, gradient 0
  bool interior;  // all 8 corners inside the grid (the common case)
  bool vw[2], vh[2], vd[2];  // per axis: whether the lower / upper corner index is in range
  T fw, fh, fd;   // fractional position in the cell
  int64_t base;   // offset of corner (d0, h0, w0); may be out of range unless `interior`
  int64_t d0, h0, w0;
};

// Comparisons are combined with & rather than && so that they compile to flag arithmetic instead
// of a chain of hard-to-predict branches.
template <typename T>
HOST_DEVICE INLINE void trilinear_setup(const Geometry& g, Vec3<T> u, Trilinear<T>& s) {
  s.inside = (u.x > T(-1)) & (u.x < T(g.W)) & (u.y > T(-1)) & (u.y < T(g.H)) & (u.z > T(-1)) &
             (u.z < T(g.D));
  if (!s.inside) return;
  s.w0 = floor_int(u.x);
  s.h0 = floor_int(u.y);
  s.d0 = floor_int(u.z);
  s.fw = u.x - T(s.w0);
  s.fh = u.y - T(s.h0);
  s.fd = u.z - T(s.d0);
  s.vw[0] = s.w0 >= 0;
  s.vw[1] = s.w0 + 1 < g.W;
  s.vh[0] = s.h0 >= 0;
  s.vh[1] = s.h0 + 1 < g.H;
  s.vd[0] = s.d0 >= 0;
  s.vd[1] = s.d0 + 1 < g.D;
  s.interior = s.vw[0] & s.vw[1] & s.vh[0] & s.vh[1] & s.vd[0] & s.vd[1];
  s.base = (s.d0 * g.H + s.h0) * g.W + s.w0;
}

// Corner k = (d: k>>2, h: (k>>1)&1, w: k&1): whether it exists, and its offset clamped into the
// grid (so that reading it is always in bounds; the value is discarded when it does not exist).
template <typename T>
HOST_DEVICE INLINE bool corner_valid(const Trilinear<T>& s, int k) {
  return s.vd[k >> 2] & s.vh[(k >> 1) & 1] & s.vw[k & 1];
}

template <typename T>
HOST_DEVICE INLINE int64_t corner_offset_clamped(const Geometry& g, const Trilinear<T>& s, int k) {
  int64_t d = s.d0 + (k >> 2), h = s.h0 + ((k >> 1) & 1), w = s.w0 + (k & 1);
  d = d < 0 ? 0 : (d >= g.D ? g.D - 1 : d);
  h = h < 0 ? 0 : (h >= g.H ? g.H - 1 : h);
  w = w < 0 ? 0 : (w >= g.W ? g.W - 1 : w);
  return (d * g.H + h) * g.W + w;
}

// The 8 corner values, zero for corners outside the grid.
template <typename T>
HOST_DEVICE INLINE void trilinear_load(const Geometry& g, const Trilinear<T>& s, const T* vol,
                                       T* v) {
  if (s.interior) {
    const T* p = vol + s.base;
    const int64_t W = g.W, HW = g.H * g.W;
    v[0] = p[0];
    v[1] = p[1];
    v[2] = p[W];
    v[3] = p[W + 1];
    v[4] = p[HW];
    v[5] = p[HW + 1];
    v[6] = p[HW + W];
    v[7] = p[HW + W + 1];
  } else {
    INVRENDER_UNROLL
    for (int k = 0; k < 8; ++k) {
      const T x = vol[corner_offset_clamped(g, s, k)];
      v[k] = corner_valid(s, k) ? x : T(0);
    }
  }
}

template <typename T>
HOST_DEVICE INLINE T lerp_(T a, T b, T t) {
  return a + t * (b - a);
}

// Interpolates the 8 corner values at the fractional position of a stencil (Trilinear or
// InteriorStencil).
template <typename Stencil, typename T>
HOST_DEVICE INLINE T trilinear_interp(const Stencil& s, const T* v) {
  const T c0 = lerp_(lerp_(v[0], v[1], s.fw), lerp_(v[2], v[3], s.fw), s.fh);
  const T c1 = lerp_(lerp_(v[4], v[5], s.fw), lerp_(v[6], v[7], s.fw), s.fh);
  return lerp_(c0, c1, s.fd);
}

template <typename T>
HOST_DEVICE INLINE T trilinear_value(const Geometry& g, const Trilinear<T>& s, const T* vol) {
  if (!s.inside) return T(0);
  T v[8];
  trilinear_load(g, s, vol, v);
  return trilinear_interp(s, v);
}

// grad * d(value)/du from the 8 corner values and the fractional position.
template <typename T>
HOST_DEVICE INLINE Vec3<T> trilinear_position_grad(const T* v, T fw, T fh, T fd, T grad) {
  const T c00 = lerp_(v[0], v[1], fw), c01 = lerp_(v[2], v[3], fw);
  const T c10 = lerp_(v[4], v[5], fw), c11 = lerp_(v[6], v[7], fw);
  const T c0 = lerp_(c00, c01, fh), c1 = lerp_(c10, c11, fh);
  Vec3<T> gu;
  gu.z = grad * (c1 - c0);
  gu.y = grad * ((T(1) - fd) * (c01 - c00) + fd * (c11 - c10));
  gu.x = grad * ((T(1) - fd) * ((T(1) - fh) * (v[1] - v[0]) + fh * (v[3] - v[2])) +
                 fd * ((T(1) - fh) * (v[5] - v[4]) + fh * (v[7] - v[6])));
  return gu;
}

// The interpolated value, and its derivative d(value)/du in *du, from the same partial lerps.
template <typename Stencil, typename T>
HOST_DEVICE INLINE T trilinear_value_grad(const Stencil& s, const T* v, Vec3<T>* du) {
  const T c00 = lerp_(v[0], v[1], s.fw), c01 = lerp_(v[2], v[3], s.fw);
  const T c10 = lerp_(v[4], v[5], s.fw), c11 = lerp_(v[6], v[7], s.fw);
  const T c0 = lerp_(c00, c01, s.fh), c1 = lerp_(c10, c11, s.fh);
  du->z = c1 - c0;
  du->y = lerp_(c01 - c00, c11 - c10, s.fd);
  du->x = lerp_(lerp_(v[1] - v[0], v[3] - v[2], s.fh), lerp_(v[5] - v[4], v[7] - v[6], s.fh), s.fd);
  return lerp_(c0, c1, s.fd);
}

// grad times the 8 corner weights, corner order as in corner_valid.
template <typename T>
HOST_DEVICE INLINE void trilinear_weights(T fw, T fh, T fd, T grad, T* wk) {
  const T g0 = grad * (T(1) - fd), g1 = grad * fd;
  const T g00 = g0 * (T(1) - fh), g01 = g0 * fh, g10 = g1 * (T(1) - fh), g11 = g1 * fh;
  wk[0] = g00 * (T(1) - fw);
  wk[1] = g00 * fw;
  wk[2] = g01 * (T(1) - fw);
  wk[3] = g01 * fw;
  wk[4] = g10 * (T(1) - fw);
  wk[5] = g10 * fw;
  wk[6] = g11 * (T(1) - fw);
  wk[7] = g11 * fw;
}

// Adds wk[k] to the gradient of each corner k that exists, through `scatter`.
template <typename T, typename Scatter>
HOST_DEVICE INLINE void scatter_corners(const Geometry& g, const Trilinear<T>& s, T* gvol,
                                        const T* wk, const Scatter& scatter) {
  if (s.interior) {
    T* p = gvol + s.base;
    const int64_t W = g.W, HW = g.H * g.W;
    scatter(p, wk[0]);
    scatter(p + 1, wk[1]);
    scatter(p + W, wk[2]);
    scatter(p + W + 1, wk[3]);
    scatter(p + HW, wk[4]);
    scatter(p + HW + 1, wk[5]);
    scatter(p + HW + W, wk[6]);
    scatter(p + HW + W + 1, wk[7]);
  } else {
    for (int k = 0; k < 8; ++k)
      if (corner_valid(s, k)) scatter(gvol + corner_offset_clamped(g, s, k), wk[k]);
  }
}

// Adds grad * weight of each corner to the grid gradient through `scatter` (nothing when gvol is
// null).
template <typename T, typename Scatter>
HOST_DEVICE INLINE void trilinear_scatter(const Geometry& g, const Trilinear<T>& s, T* gvol, T grad,
                                          const Scatter& scatter) {
  if (gvol == nullptr || !s.inside) return;
  T wk[8];
  trilinear_weights(s.fw, s.fh, s.fd, grad, wk);
  scatter_corners(g, s, gvol, wk, scatter);
}

// Adds g * weight to the grid gradient (through `scatter`, skipped when gvol is null) and
// returns g * d(value)/du.
template <typename T, typename Scatter>
HOST_DEVICE INLINE Vec3<T> trilinear_backward(const Geometry& g, const Trilinear<T>& s,
                                              const T* vol, T* gvol, T grad,
                                              const Scatter& scatter) {
  Vec3<T> gu = {T(0), T(0), T(0)};
  if (!s.inside) return gu;
  T v[8];
  trilinear_load(g, s, vol, v);
  gu = trilinear_position_grad(v, s.fw, s.fh, s.fd, grad);
  trilinear_scatter(g, s, gvol, grad, scatter);
  return gu;
}

// Point t of the line a + t da.
template <typename T>
HOST_DEVICE INLINE Vec3<T> line_at(Vec3<T> a, Vec3<T> da, T t) {
  return {a.x + t * da.x, a.y + t * da.y, a.z + t * da.z};
}

// Narrows [*t_lo, *t_hi] to the real t for which lo[a] <= u0[a] + t du[a] <= hi[a] on every axis
// (a = w, h, d). Returns false when the line misses the box; the interval may also come out empty
// (or NaN for a NaN line): callers test !(*t_lo <= *t_hi) too.
template <typename T>
HOST_DEVICE INLINE bool clip_to_box(Vec3<T> u0, Vec3<T> du, const T* lo, const T* hi, T* t_lo,
                                    T* t_hi) {
  const T u0s[3] = {u0.x, u0.y, u0.z}, dus[3] = {du.x, du.y, du.z};
  for (int a = 0; a < 3; ++a) {
    if (dus[a] == T(0)) {
      if (!(u0s[a] >= lo[a] && u0s[a] <= hi[a])) return false;
      continue;
    }
    T t0 = (lo[a] - u0s[a]) / dus[a], t1 = (hi[a] - u0s[a]) / dus[a];
    if (t0 > t1) {
      const T tmp = t0;
      t0 = t1;
      t1 = tmp;
    }
    *t_lo = t0 > *t_lo ? t0 : *t_lo;
    *t_hi = t1 < *t_hi ? t1 : *t_hi;
  }
  return true;
}

// Range of sample indices [first, last] along a line u(t) = u0 + t du, t in [0, n), that can fall
// inside the trilinear support (-1, N) on every axis. Conservative by one sample at each end (the
// per-sample test stays), so rounding never drops a sample; empty when first > last.
template <typename T>
HOST_DEVICE INLINE void clip_line(const Geometry& g, Vec3<T> u0, Vec3<T> du, int64_t n,
                                  int64_t* first, int64_t* last) {
  const T lo_b[3] = {T(-1), T(-1), T(-1)}, hi_b[3] = {T(g.W), T(g.H), T(g.D)};
  T lo = T(0), hi = T(n - 1);
  if (!clip_to_box(u0, du, lo_b, hi_b, &lo, &hi) || !(lo <= hi)) {  // also catches NaN
    *first = 0;
    *last = -1;
    return;
  }
  *first = floor_int(lo);
  *last = floor_int(hi) + 1;
  if (*first < 0) *first = 0;
  if (*last > n - 1) *last = n - 1;
}

// Sub-range [*first, *last] of [first, last] whose trilinear stencils are all interior
// (0 <= u < N - 1 on every axis, so floor(u) = trunc(u) and all 8 corners exist). Such samples
// take the branch-free path of trilinear_interior_value. Along a line each axis of u is monotone in
// t (rounding included), so the interior samples form one interval: the analytic estimate is
// refined by exact tests at its ends. The result may be empty (*first > *last).
template <typename T>
HOST_DEVICE INLINE bool stencil_interior(const Geometry& g, Vec3<T> u) {
  return (u.x >= T(0)) & (u.x < T(g.W - 1)) & (u.y >= T(0)) & (u.y < T(g.H - 1)) &
         (u.z >= T(0)) & (u.z < T(g.D - 1));
}

template <typename T>
HOST_DEVICE INLINE void interior_span(const Geometry& g, Vec3<T> u0, Vec3<T> du, int64_t first,
                                      int64_t last, int64_t* ifirst, int64_t* ilast) {
  const T lo_b[3] = {T(0), T(0), T(0)}, hi_b[3] = {T(g.W - 1), T(g.H - 1), T(g.D - 1)};
  T lo = T(first), hi = T(last);
  *ifirst = 0;
  *ilast = -1;
  if (!clip_to_box(u0, du, lo_b, hi_b, &lo, &hi) || !(lo <= hi)) return;  // also catches NaN
  int64_t a = floor_int(lo), b = floor_int(hi) + 1;
  if (a < first) a = first;
  if (b > last) b = last;
  while (a <= b && !stencil_interior(g, line_at(u0, du, T(a)))) ++a;
  while (b >= a && !stencil_interior(g, line_at(u0, du, T(b)))) --b;
  *ifirst = a;
  *ilast = b;
}

// Visits the samples first..last of a line: those of the interior sub-span [ifirst, ilast]
// (trilinear_interior_* path) through `interior`, the others through `general`. The interior span
// is skipped when `use_interior` is false (nearest sampling).
template <typename T, typename Interior, typename General>
HOST_DEVICE INLINE void for_each_sample(const Geometry& g, Vec3<T> u0, Vec3<T> du, int64_t first,
                                        int64_t last, bool use_interior, const Interior& interior,
                                        const General& general) {
  int64_t ifirst = last + 1, ilast = last;
  if (use_interior) interior_span(g, u0, du, first, last, &ifirst, &ilast);
  if (ifirst > ilast) {
    ifirst = last + 1;
    ilast = last;
  }
  for (int64_t t = first; t < ifirst; ++t) general(t);
  for (int64_t t = ifirst; t <= ilast; ++t) interior(t);
  for (int64_t t = ilast + 1; t <= last; ++t) general(t);
}

// Visits the samples last..first in decreasing order: those of [ifirst, ilast] (interior stencils,
// see interior_span) through `interior`, the others through `general`.
template <typename Interior, typename General>
HOST_DEVICE INLINE void for_each_sample_reverse(int64_t first, int64_t last, int64_t ifirst,
                                                int64_t ilast, const Interior& interior,
                                                const General& general) {
  const int64_t a = ifirst > first ? ifirst : first, b = ilast < last ? ilast : last;
  if (a > b) {
    for (int64_t t = last; t >= first; --t) general(t);
    return;
  }
  for (int64_t t = last; t > b; --t) general(t);
  for (int64_t t = b; t >= a; --t) interior(t);
  for (int64_t t = a - 1; t >= first; --t) general(t);
}

// Interior stencil: the corner offset and fractional position of an interior sample
// (stencil_interior(u) holds), with the arithmetic of trilinear_setup and 32-bit offsets (the glue
// limits one channel of a grid to 2^31 - 1 voxels).
template <typename T>
struct InteriorStencil {
  int32_t base, W, HW;
  T fw, fh, fd;
};

template <typename T>
HOST_DEVICE INLINE InteriorStencil<T> interior_stencil(const Geometry& g, Vec3<T> u) {
  InteriorStencil<T> s;
  const int32_t w0 = static_cast<int32_t>(u.x), h0 = static_cast<int32_t>(u.y),
                d0 = static_cast<int32_t>(u.z);
  s.fw = u.x - T(w0);
  s.fh = u.y - T(h0);
  s.fd = u.z - T(d0);
  s.W = static_cast<int32_t>(g.W);
  s.HW = static_cast<int32_t>(g.H * g.W);
  s.base = (d0 * static_cast<int32_t>(g.H) + h0) * s.W + w0;
  return s;
}

template <typename T>
HOST_DEVICE INLINE void interior_load(const InteriorStencil<T>& s, const T* vol, T* v) {
  const T* p = vol + s.base;
  v[0] = p[0];
  v[1] = p[1];
  v[2] = p[s.W];
  v[3] = p[s.W + 1];
  v[4] = p[s.HW];
  v[5] = p[s.HW + 1];
  v[6] = p[s.HW + s.W];
  v[7] = p[s.HW + s.W + 1];
}

template <typename T, typename Scatter>
HOST_DEVICE INLINE void scatter_corners(const Geometry&, const InteriorStencil<T>& s, T* gvol,
                                        const T* wk, const Scatter& scatter) {
  T* p = gvol + s.base;
  scatter(p, wk[0]);
  scatter(p + 1, wk[1]);
  scatter(p + s.W, wk[2]);
  scatter(p + s.W + 1, wk[3]);
  scatter(p + s.HW, wk[4]);
  scatter(p + s.HW + 1, wk[5]);
  scatter(p + s.HW + s.W, wk[6]);
  scatter(p + s.HW + s.W + 1, wk[7]);
}

// The 8 corner values of a stencil, interior or general (zero for corners outside the grid).
template <typename T>
HOST_DEVICE INLINE void corner_values(const Geometry&, const InteriorStencil<T>& s, const T* vol,
                                      T* v) {
  interior_load(s, vol, v);
}

template <typename T>
HOST_DEVICE INLINE void corner_values(const Geometry& g, const Trilinear<T>& s, const T* vol,
                                      T* v) {
  trilinear_load(g, s, vol, v);
}

// Backward at an interior sample: scatters grad * weights into gvol, returns grad * d(value)/du.
template <typename T, typename Scatter>
HOST_DEVICE INLINE Vec3<T> trilinear_interior_backward(const Geometry& g,
                                                       const InteriorStencil<T>& s, const T* vol,
                                                       T* gvol, T grad, const Scatter& scatter) {
  T v[8], wk[8];
  interior_load(s, vol, v);
  trilinear_weights(s.fw, s.fh, s.fd, grad, wk);
  scatter_corners(g, s, gvol, wk, scatter);
  return trilinear_position_grad(v, s.fw, s.fh, s.fd, grad);
}

// Trilinear value at an interior sample: trilinear_value without the range bookkeeping.
template <typename T>
HOST_DEVICE INLINE T trilinear_interior_value(const Geometry& g, Vec3<T> u, const T* vol) {
  const InteriorStencil<T> s = interior_stencil(g, u);
  T v[8];
  interior_load(s, vol, v);
  return trilinear_interp(s, v);
}

// Nearest ("floor") sampling: the cell containing the point, i.e. floor(u + 1/2).
template <typename T>
HOST_DEVICE INLINE int64_t nearest_offset(const Geometry& g, Vec3<T> u) {
  const bool inside = u.x >= T(-0.5) && u.x < T(g.W) - T(0.5) && u.y >= T(-0.5) &&
                      u.y < T(g.H) - T(0.5) && u.z >= T(-0.5) && u.z < T(g.D) - T(0.5);
  if (!inside) return -1;
  const int64_t w = floor_int(u.x + T(0.5));
  const int64_t h = floor_int(u.y + T(0.5));
  const int64_t d = floor_int(u.z + T(0.5));
  // Rounding of u + 0.5 can land exactly on N; clamp to stay in bounds.
  if (w >= g.W || h >= g.H || d >= g.D) return -1;
  return (d * g.H + h) * g.W + w;
}

// dL/dR from dL/du at a sample: p_obj = R^T p_view, u = index(p_obj), so
// dL/dR[j][i] = dL/dp_obj[i] * p_view[j].
template <typename T, typename Acc>
HOST_DEVICE INLINE void accumulate_rotation_grad(const Geometry& g, Vec3<T> gu, Vec3<T> pv,
                                                 Acc* gR) {
  const Vec3<T> k = index_per_object<T>(g);
  const T gp[3] = {gu.x * k.x, gu.y * k.y, gu.z * k.z};
  const T p[3] = {pv.x, pv.y, pv.z};
INVRENDER_UNROLL
  for (int j = 0; j < 3; ++j)
INVRENDER_UNROLL
    for (int i = 0; i < 3; ++i) gR[3 * j + i] += Acc(gp[i] * p[j]);
}

// ---------------------------------------------------------------------------------------------
// Lines of samples. Both ops sample along straight lines of output positions p(t) = p0 + t dp
// (rows of the output grid for rotate, rays for project); the input index is affine in t too.

template <typename T>
struct SampleLine {
  Vec3<T> p0, dp;  // view positions
  Vec3<T> u0, du;  // input indices
};

// Input index of output voxel (d, h, w), computed in index space so that the identity maps
// indices exactly: u = c_in + M (idx - c_out) with M[i][j] = k_i R[j][i] / k_j, where k is the
// index-per-unit-length of each axis (shared by input and output, which have the same spacing)
// and c the centre index: u = k * (R^T p_view) + c with p_view = output_position(d, h, w).
template <typename T>
HOST_DEVICE INLINE Vec3<T> output_to_index(const Geometry& g, const T* Rb, int64_t d, int64_t h,
                                           int64_t w) {
  const Vec3<T> kv = index_per_object<T>(g);
  const T k[3] = {kv.x, kv.y, kv.z};
  const T q[3] = {T(w) - T(0.5) * T(g.Wo - 1), T(h) - T(0.5) * T(g.Ho - 1),
                  T(d) - T(0.5) * T(g.Do - 1)};
  const T c[3] = {T(0.5) * T(g.W - 1), T(0.5) * T(g.H - 1), T(0.5) * T(g.D - 1)};
  T u[3];
  for (int i = 0; i < 3; ++i) {
    u[i] = c[i];
    for (int j = 0; j < 3; ++j) u[i] += (k[i] * Rb[3 * j + i]) / k[j] * q[j];
  }
  return {u[0], u[1], u[2]};
}

template <typename T>
HOST_DEVICE INLINE SampleLine<T> make_line(const Geometry& g, const T* Rb, int64_t d0, int64_t h0,
                                           int64_t w0, int64_t d1, int64_t h1, int64_t w1) {
  SampleLine<T> l;
  l.p0 = output_position<T>(g, d0, h0, w0);
  const Vec3<T> p1 = output_position<T>(g, d1, h1, w1);
  l.dp = {p1.x - l.p0.x, p1.y - l.p0.y, p1.z - l.p0.z};
  l.u0 = output_to_index(g, Rb, d0, h0, w0);
  const Vec3<T> u1 = output_to_index(g, Rb, d1, h1, w1);
  l.du = {u1.x - l.u0.x, u1.y - l.u0.y, u1.z - l.u0.z};
  return l;
}

// ---------------------------------------------------------------------------------------------
// rotate_voxels: out[b, c, d, h, w] = sample(vox[b, c], R_b^T p_view(d, h, w)).
// One call handles output voxels w in [w_begin, w_end) of row (b, d, h); `out` is zero-initialised.

template <typename T>
HOST_DEVICE INLINE SampleLine<T> rotate_row(const Geometry& g, const T* R, int64_t b, int64_t d,
                                            int64_t h) {
  return make_line(g, R + 9 * b, d, h, 0, d, h, 1);
}

// Samples of [w_begin, w_end) that can fall inside the grid (a single voxel is not clipped: on the
// GPU one thread handles one voxel and the per-sample test suffices).
template <typename T>
HOST_DEVICE INLINE void clip_span(const Geometry& g, const SampleLine<T>& l, int64_t w_begin,
                                  int64_t w_end, int64_t* first, int64_t* last) {
  *first = w_begin;
  *last = w_end - 1;
  if (w_end - w_begin <= 1) return;
  clip_line(g, l.u0, l.du, g.Wo, first, last);
  if (*first < w_begin) *first = w_begin;
  if (*last > w_end - 1) *last = w_end - 1;
}

template <typename T, bool Nearest>
HOST_DEVICE INLINE void rotate_forward_span(const Geometry& g, const T* vox, const T* R, T* out,
                                            int64_t b, int64_t d, int64_t h, int64_t w_begin,
                                            int64_t w_end) {
  const SampleLine<T> l = rotate_row(g, R, b, d, h);
  int64_t first, last;
  clip_span(g, l, w_begin, w_end, &first, &last);
  const int64_t in_vol = g.D * g.H * g.W, out_vol = g.Do * g.Ho * g.Wo;
  const T* src = vox + b * g.C * in_vol;
  T* row = out + b * g.C * out_vol + (d * g.Ho + h) * g.Wo;
  for_each_sample(
      g, l.u0, l.du, first, last, !Nearest,
      [&](int64_t w) {
        const Vec3<T> u = line_at(l.u0, l.du, T(w));
        for (int64_t c = 0; c < g.C; ++c)
          row[c * out_vol + w] = trilinear_interior_value(g, u, src + c * in_vol);
      },
      [&](int64_t w) {
        const Vec3<T> u = line_at(l.u0, l.du, T(w));
        if (Nearest) {
          const int64_t off = nearest_offset(g, u);
          if (off < 0) return;
          for (int64_t c = 0; c < g.C; ++c) row[c * out_vol + w] = src[c * in_vol + off];
        } else {
          Trilinear<T> s;
          trilinear_setup(g, u, s);
          if (!s.inside) return;
          for (int64_t c = 0; c < g.C; ++c)
            row[c * out_vol + w] = trilinear_value(g, s, src + c * in_vol);
        }
      });}

// Backward of a span over all channels: scatters into gvox[b] and accumulates dL/dR_b into gR.
template <typename T, bool Nearest, typename Acc, typename Scatter>
HOST_DEVICE INLINE void rotate_backward_span(const Geometry& g, const T* gout, const T* vox,
                                             const T* R, T* gvox, Acc* gR, int64_t b, int64_t d,
                                             int64_t h, int64_t w_begin, int64_t w_end,
                                             const Scatter& scatter) {
  const SampleLine<T> l = rotate_row(g, R, b, d, h);
  int64_t first, last;
  clip_span(g, l, w_begin, w_end, &first, &last);
  const int64_t in_vol = g.D * g.H * g.W, out_vol = g.Do * g.Ho * g.Wo;
  const T* go = gout + b * g.C * out_vol + (d * g.Ho + h) * g.Wo;
  const int64_t base = b * g.C * in_vol;
  for_each_sample(
      g, l.u0, l.du, first, last, !Nearest,
      [&](int64_t w) {
        const InteriorStencil<T> s = interior_stencil(g, line_at(l.u0, l.du, T(w)));
        Vec3<T> gu = {T(0), T(0), T(0)};
        for (int64_t c = 0; c < g.C; ++c) {
          const T gc = go[c * out_vol + w];
          if (gc == T(0)) continue;
          const Vec3<T> guc = trilinear_interior_backward(g, s, vox + base + c * in_vol,
                                                          gvox + base + c * in_vol, gc, scatter);
          gu.x += guc.x;
          gu.y += guc.y;
          gu.z += guc.z;
        }
        accumulate_rotation_grad(g, gu, line_at(l.p0, l.dp, T(w)), gR);
      },
      [&](int64_t w) {
        const Vec3<T> u = line_at(l.u0, l.du, T(w));
        if (Nearest) {
          const int64_t off = nearest_offset(g, u);
          if (off < 0) return;
          for (int64_t c = 0; c < g.C; ++c)
            scatter(gvox + base + c * in_vol + off, go[c * out_vol + w]);
          return;
        }
        Trilinear<T> s;
        trilinear_setup(g, u, s);
        if (!s.inside) return;
        Vec3<T> gu = {T(0), T(0), T(0)};
        for (int64_t c = 0; c < g.C; ++c) {
          const T gc = go[c * out_vol + w];
          if (gc == T(0)) continue;
          const Vec3<T> guc = trilinear_backward(g, s, vox + base + c * in_vol,
                                                 gvox + base + c * in_vol, gc, scatter);
          gu.x += guc.x;
          gu.y += guc.y;
          gu.z += guc.z;
        }
        accumulate_rotation_grad(g, gu, line_at(l.p0, l.dp, T(w)), gR);
      });}

// ---------------------------------------------------------------------------------------------
// project_voxels: img[b, c, h, w] = 1 - exp(-tau * sum_d sample(vox[b, c], R_b^T p_view(d, h, w))).
// One ray per pixel, one sample per depth slice. Channels are processed in chunks so that one
// stencil serves up to kChunk channels.

constexpr int kChunk = 4;

template <typename T>
HOST_DEVICE INLINE SampleLine<T> project_ray(const Geometry& g, const T* R, int64_t b, int64_t h,
                                             int64_t w) {
  return make_line(g, R + 9 * b, 0, h, w, 1, h, w);
}

// Chunk is the number of channels sharing one stencil: 1 (the common single-channel case, fully
// unrolled) or kChunk.
template <typename T, bool Nearest, int Chunk = kChunk>
HOST_DEVICE INLINE void project_forward_pixel(const Geometry& g, const T* vox, const T* R, T* img,
                                              T tau, int64_t b, int64_t h, int64_t w) {
  const int64_t in_vol = g.D * g.H * g.W, plane = g.Ho * g.Wo;
  const SampleLine<T> l = project_ray(g, R, b, h, w);
  int64_t first, last;
  clip_line(g, l.u0, l.du, g.Do, &first, &last);
  for (int64_t c0 = 0; c0 < g.C; c0 += Chunk) {
    const int nc = static_cast<int>((g.C - c0) < Chunk ? (g.C - c0) : Chunk);
    const T* src = vox + (b * g.C + c0) * in_vol;
    T acc[Chunk];
    for (int c = 0; c < Chunk; ++c) acc[c] = T(0);
    for_each_sample(
        g, l.u0, l.du, first, last, !Nearest,
        [&](int64_t d) {
          const Vec3<T> u = line_at(l.u0, l.du, T(d));
          for (int c = 0; c < nc; ++c) acc[c] += trilinear_interior_value(g, u, src + c * in_vol);
        },
        [&](int64_t d) {
          const Vec3<T> u = line_at(l.u0, l.du, T(d));
          if (Nearest) {
            const int64_t off = nearest_offset(g, u);
            if (off < 0) return;
            for (int c = 0; c < nc; ++c) acc[c] += src[c * in_vol + off];
          } else {
            Trilinear<T> s;
            trilinear_setup(g, u, s);
            if (!s.inside) return;
            for (int c = 0; c < nc; ++c) acc[c] += trilinear_value(g, s, src + c * in_vol);
          }
        });
    for (int c = 0; c < nc; ++c)
      img[(b * g.C + c0 + c) * plane + h * g.Wo + w] = T(1) - exp_(-tau * acc[c]);
  }
}

// Backward of one pixel over all channels, given the forward image (d img / d sum = tau (1 - img)).
template <typename T, bool Nearest, typename Acc, typename Scatter, int Chunk = kChunk>
HOST_DEVICE INLINE void project_backward_pixel(const Geometry& g, const T* gimg, const T* img,
                                               const T* vox, const T* R, T* gvox, Acc* gR, T tau,
                                               int64_t b, int64_t h, int64_t w,
                                               const Scatter& scatter) {
  const int64_t in_vol = g.D * g.H * g.W, plane = g.Ho * g.Wo;
  const SampleLine<T> l = project_ray(g, R, b, h, w);
  int64_t first, last;
  clip_line(g, l.u0, l.du, g.Do, &first, &last);
  for (int64_t c0 = 0; c0 < g.C; c0 += Chunk) {
    const int nc = static_cast<int>((g.C - c0) < Chunk ? (g.C - c0) : Chunk);
    T gs[Chunk];
    bool any = false;
    for (int c = 0; c < nc; ++c) {
      const int64_t i = (b * g.C + c0 + c) * plane + h * g.Wo + w;
      gs[c] = gimg[i] * tau * (T(1) - img[i]);
      any = any || gs[c] != T(0);
    }
    if (!any) continue;
    const int64_t base = (b * g.C + c0) * in_vol;
    Vec3<T> gsum = {T(0), T(0), T(0)};   // sum over samples of dL/du
    Vec3<T> gzsum = {T(0), T(0), T(0)};  // sum over samples of dL/du * z_view(d)
    const auto add = [&](int64_t d, Vec3<T> gc) {
      const T z = l.p0.z + T(d) * l.dp.z;
      gsum.x += gc.x;
      gsum.y += gc.y;
      gsum.z += gc.z;
      gzsum.x += gc.x * z;
      gzsum.y += gc.y * z;
      gzsum.z += gc.z * z;
    };
    for_each_sample(
        g, l.u0, l.du, first, last, !Nearest,
        [&](int64_t d) {
          const InteriorStencil<T> s = interior_stencil(g, line_at(l.u0, l.du, T(d)));
          for (int c = 0; c < nc; ++c)
            add(d, trilinear_interior_backward(g, s, vox + base + c * in_vol,
                                               gvox + base + c * in_vol, gs[c], scatter));
        },
        [&](int64_t d) {
          const Vec3<T> u = line_at(l.u0, l.du, T(d));
          if (Nearest) {
            const int64_t off = nearest_offset(g, u);
            if (off < 0) return;
            for (int c = 0; c < nc; ++c) scatter(gvox + base + c * in_vol + off, gs[c]);
            return;
          }
          Trilinear<T> s;
          trilinear_setup(g, u, s);
          if (!s.inside) return;
          for (int c = 0; c < nc; ++c)
            add(d, trilinear_backward(g, s, vox + base + c * in_vol, gvox + base + c * in_vol,
                                      gs[c], scatter));
        });
    if (!Nearest) {
      // dL/dR[j][i] = sum_d dL/dp_obj[i] * p_view[j] with p_view = (x, y, z_d) along the ray.
      const Vec3<T> k = index_per_object<T>(g);
      const T gp[3] = {gsum.x * k.x, gsum.y * k.y, gsum.z * k.z};
      const T gzp[3] = {gzsum.x * k.x, gzsum.y * k.y, gzsum.z * k.z};
      for (int i = 0; i < 3; ++i) {
        gR[i] += Acc(gp[i] * l.p0.x);
        gR[3 + i] += Acc(gp[i] * l.p0.y);
        gR[6 + i] += Acc(gzp[i]);
      }
    }
  }
}

}  // namespace voxel
}  // namespace invrender
