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

// Continuous input index (u_w, u_h, u_d) of an object-space point (voxel centres are integers).
template <typename T>
HOST_DEVICE INLINE Vec3<T> object_to_index(const Geometry& g, Vec3<T> p) {
  return {(p.x + T(1)) * T(0.5) * T(g.W) - T(0.5), (T(1) - p.y) * T(0.5) * T(g.H) - T(0.5),
          (T(1) - p.z) * T(0.5) * T(g.D) - T(0.5)};
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
  bool inside;  // false: every corner is outside, value 0, gradient 0
  T fw, fh, fd;
  int64_t off[8];  // offsets into a (D, H, W) volume; corner k = (d: k>>2, h: (k>>1)&1, w: k&1)
  bool valid[8];
};

template <typename T>
HOST_DEVICE INLINE void trilinear_setup(const Geometry& g, Vec3<T> u, Trilinear<T>& s) {
  s.inside = u.x > T(-1) && u.x < T(g.W) && u.y > T(-1) && u.y < T(g.H) && u.z > T(-1) &&
             u.z < T(g.D);
  if (!s.inside) return;
  const T w0f = floor_(u.x), h0f = floor_(u.y), d0f = floor_(u.z);
  s.fw = u.x - w0f;
  s.fh = u.y - h0f;
  s.fd = u.z - d0f;
  const int64_t w0 = static_cast<int64_t>(w0f), h0 = static_cast<int64_t>(h0f),
                d0 = static_cast<int64_t>(d0f);
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    const int64_t d = d0 + (k >> 2), h = h0 + ((k >> 1) & 1), w = w0 + (k & 1);
    s.valid[k] = d >= 0 && d < g.D && h >= 0 && h < g.H && w >= 0 && w < g.W;
    s.off[k] = (d * g.H + h) * g.W + w;
  }
}

template <typename T>
HOST_DEVICE INLINE T trilinear_weight(const Trilinear<T>& s, int k) {
  return ((k >> 2) ? s.fd : T(1) - s.fd) * (((k >> 1) & 1) ? s.fh : T(1) - s.fh) *
         ((k & 1) ? s.fw : T(1) - s.fw);
}

template <typename T>
HOST_DEVICE INLINE T trilinear_value(const Trilinear<T>& s, const T* vol) {
  if (!s.inside) return T(0);
  T v = 0;
#pragma unroll
  for (int k = 0; k < 8; ++k)
    if (s.valid[k]) v += trilinear_weight(s, k) * vol[s.off[k]];
  return v;
}

// Adds g * weight to the grid gradient (through `scatter`) and returns g * d(value)/du.
template <typename T, typename Scatter>
HOST_DEVICE INLINE Vec3<T> trilinear_backward(const Trilinear<T>& s, const T* vol, T* gvol, T g,
                                              const Scatter& scatter) {
  Vec3<T> gu = {T(0), T(0), T(0)};
  if (!s.inside) return gu;
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    if (!s.valid[k]) continue;
    const int a = k >> 2, b = (k >> 1) & 1, c = k & 1;
    const T wd = a ? s.fd : T(1) - s.fd, wh = b ? s.fh : T(1) - s.fh, ww = c ? s.fw : T(1) - s.fw;
    if (gvol != nullptr) scatter(gvol + s.off[k], g * wd * wh * ww);
    const T gv = g * vol[s.off[k]];
    gu.x += gv * wd * wh * (c ? T(1) : T(-1));
    gu.y += gv * wd * (b ? T(1) : T(-1)) * ww;
    gu.z += gv * (a ? T(1) : T(-1)) * wh * ww;
  }
  return gu;
}

// Nearest ("floor") sampling: the cell containing the point, i.e. floor(u + 1/2).
template <typename T>
HOST_DEVICE INLINE int64_t nearest_offset(const Geometry& g, Vec3<T> u) {
  const bool inside = u.x >= T(-0.5) && u.x < T(g.W) - T(0.5) && u.y >= T(-0.5) &&
                      u.y < T(g.H) - T(0.5) && u.z >= T(-0.5) && u.z < T(g.D) - T(0.5);
  if (!inside) return -1;
  const int64_t w = static_cast<int64_t>(floor_(u.x + T(0.5)));
  const int64_t h = static_cast<int64_t>(floor_(u.y + T(0.5)));
  const int64_t d = static_cast<int64_t>(floor_(u.z + T(0.5)));
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
#pragma unroll
  for (int j = 0; j < 3; ++j)
#pragma unroll
    for (int i = 0; i < 3; ++i) gR[3 * j + i] += Acc(gp[i] * p[j]);
}

// ---------------------------------------------------------------------------------------------
// rotate_voxels: out[b, c, d, h, w] = sample(vox[b, c], R_b^T p_view(d, h, w)).

template <typename T, bool Nearest>
HOST_DEVICE INLINE void rotate_forward_voxel(const Geometry& g, const T* vox, const T* R, T* out,
                                             int64_t b, int64_t d, int64_t h, int64_t w) {
  const Vec3<T> u = object_to_index(g, matTvec(R + 9 * b, output_position<T>(g, d, h, w)));
  const int64_t in_vol = g.D * g.H * g.W, out_vol = g.Do * g.Ho * g.Wo;
  const int64_t o = (d * g.Ho + h) * g.Wo + w;
  const T* src = vox + b * g.C * in_vol;
  T* dst = out + b * g.C * out_vol + o;
  if (Nearest) {
    const int64_t off = nearest_offset(g, u);
    for (int64_t c = 0; c < g.C; ++c) dst[c * out_vol] = off < 0 ? T(0) : src[c * in_vol + off];
  } else {
    Trilinear<T> s;
    trilinear_setup(g, u, s);
    for (int64_t c = 0; c < g.C; ++c) dst[c * out_vol] = trilinear_value(s, src + c * in_vol);
  }
}

// Backward of one output voxel over all channels: scatters into gvox[b] and accumulates dL/dR_b.
template <typename T, bool Nearest, typename Acc, typename Scatter>
HOST_DEVICE INLINE void rotate_backward_voxel(const Geometry& g, const T* gout, const T* vox,
                                              const T* R, T* gvox, Acc* gR, int64_t b, int64_t d,
                                              int64_t h, int64_t w, const Scatter& scatter) {
  const Vec3<T> pv = output_position<T>(g, d, h, w);
  const Vec3<T> u = object_to_index(g, matTvec(R + 9 * b, pv));
  const int64_t in_vol = g.D * g.H * g.W, out_vol = g.Do * g.Ho * g.Wo;
  const int64_t o = (d * g.Ho + h) * g.Wo + w;
  const T* go = gout + b * g.C * out_vol + o;
  if (Nearest) {
    const int64_t off = nearest_offset(g, u);
    if (off < 0) return;
    for (int64_t c = 0; c < g.C; ++c) scatter(gvox + (b * g.C + c) * in_vol + off, go[c * out_vol]);
    return;
  }
  Trilinear<T> s;
  trilinear_setup(g, u, s);
  if (!s.inside) return;
  Vec3<T> gu = {T(0), T(0), T(0)};
  for (int64_t c = 0; c < g.C; ++c) {
    const int64_t base = (b * g.C + c) * in_vol;
    const Vec3<T> gc = trilinear_backward(s, vox + base, gvox + base, go[c * out_vol], scatter);
    gu.x += gc.x;
    gu.y += gc.y;
    gu.z += gc.z;
  }
  accumulate_rotation_grad(g, gu, pv, gR);
}

// ---------------------------------------------------------------------------------------------
// project_voxels: img[b, c, h, w] = 1 - exp(-tau * sum_d sample(vox[b, c], R_b^T p_view(d, h, w))).
// Channels are processed in chunks so that one stencil serves up to kChunk channels.

constexpr int kChunk = 4;

template <typename T, bool Nearest>
HOST_DEVICE INLINE void project_forward_pixel(const Geometry& g, const T* vox, const T* R, T* img,
                                              T tau, int64_t b, int64_t h, int64_t w) {
  const int64_t in_vol = g.D * g.H * g.W, plane = g.Ho * g.Wo;
  const T* Rb = R + 9 * b;
  // Sample positions along the ray are start + d * step (computed, not accumulated).
  const Vec3<T> u0 = object_to_index(g, matTvec(Rb, output_position<T>(g, 0, h, w)));
  const Vec3<T> u1 = object_to_index(g, matTvec(Rb, output_position<T>(g, 1, h, w)));
  const Vec3<T> du = {u1.x - u0.x, u1.y - u0.y, u1.z - u0.z};
  for (int64_t c0 = 0; c0 < g.C; c0 += kChunk) {
    const int nc = static_cast<int>((g.C - c0) < kChunk ? (g.C - c0) : kChunk);
    const T* src = vox + (b * g.C + c0) * in_vol;
    T acc[kChunk] = {T(0), T(0), T(0), T(0)};
    for (int64_t d = 0; d < g.Do; ++d) {
      const T t = T(d);
      const Vec3<T> u = {u0.x + t * du.x, u0.y + t * du.y, u0.z + t * du.z};
      if (Nearest) {
        const int64_t off = nearest_offset(g, u);
        if (off < 0) continue;
        for (int c = 0; c < nc; ++c) acc[c] += src[c * in_vol + off];
      } else {
        Trilinear<T> s;
        trilinear_setup(g, u, s);
        if (!s.inside) continue;
        for (int c = 0; c < nc; ++c) acc[c] += trilinear_value(s, src + c * in_vol);
      }
    }
    for (int c = 0; c < nc; ++c)
      img[(b * g.C + c0 + c) * plane + h * g.Wo + w] = T(1) - exp_(-tau * acc[c]);
  }
}

// Backward of one pixel over all channels, given the forward image (d img / d sum = tau (1 - img)).
template <typename T, bool Nearest, typename Acc, typename Scatter>
HOST_DEVICE INLINE void project_backward_pixel(const Geometry& g, const T* gimg, const T* img,
                                               const T* vox, const T* R, T* gvox, Acc* gR, T tau,
                                               int64_t b, int64_t h, int64_t w,
                                               const Scatter& scatter) {
  const int64_t in_vol = g.D * g.H * g.W, plane = g.Ho * g.Wo;
  const T* Rb = R + 9 * b;
  const Vec3<T> p0 = output_position<T>(g, 0, h, w);
  const Vec3<T> u0 = object_to_index(g, matTvec(Rb, p0));
  const Vec3<T> u1 = object_to_index(g, matTvec(Rb, output_position<T>(g, 1, h, w)));
  const Vec3<T> du = {u1.x - u0.x, u1.y - u0.y, u1.z - u0.z};
  const T dz = T(-2) / T(g.D);  // view z step between samples
  for (int64_t c0 = 0; c0 < g.C; c0 += kChunk) {
    const int nc = static_cast<int>((g.C - c0) < kChunk ? (g.C - c0) : kChunk);
    T gs[kChunk] = {T(0), T(0), T(0), T(0)};
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
    for (int64_t d = 0; d < g.Do; ++d) {
      const T t = T(d);
      const Vec3<T> u = {u0.x + t * du.x, u0.y + t * du.y, u0.z + t * du.z};
      if (Nearest) {
        const int64_t off = nearest_offset(g, u);
        if (off < 0) continue;
        for (int c = 0; c < nc; ++c) scatter(gvox + base + c * in_vol + off, gs[c]);
      } else {
        Trilinear<T> s;
        trilinear_setup(g, u, s);
        if (!s.inside) continue;
        const T z = p0.z + t * dz;
        for (int c = 0; c < nc; ++c) {
          const Vec3<T> gc = trilinear_backward(s, vox + base + c * in_vol,
                                                gvox + base + c * in_vol, gs[c], scatter);
          gsum.x += gc.x;
          gsum.y += gc.y;
          gsum.z += gc.z;
          gzsum.x += gc.x * z;
          gzsum.y += gc.y * z;
          gzsum.z += gc.z * z;
        }
      }
    }
    if (!Nearest) {
      // dL/dR[j][i] = sum_d dL/dp_obj[i] * p_view[j]; p_view = (x, y, z_d).
      const Vec3<T> k = index_per_object<T>(g);
      const T gp[3] = {gsum.x * k.x, gsum.y * k.y, gsum.z * k.z};
      const T gzp[3] = {gzsum.x * k.x, gzsum.y * k.y, gzsum.z * k.z};
      for (int i = 0; i < 3; ++i) {
        gR[i] += Acc(gp[i] * p0.x);
        gR[3 + i] += Acc(gp[i] * p0.y);
        gR[6 + i] += Acc(gzp[i]);
      }
    }
  }
}

}  // namespace voxel
}  // namespace invrender
