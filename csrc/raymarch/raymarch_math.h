// Emission-absorption ray marching, written once for the CPU loops and the CUDA kernels.
//
// Per ray, samples i = 0..S-1 front to back, each a trilinear sample of the rotated volume
// (zero outside, the stencils of voxel_math.h):
//   a_i = clamp(absorption_i, 0, 1)              or, with density, 1 - exp(-max(sigma_i, 0) delta)
//   T_i = prod_{j<i} (1 - a_j),   w_i = T_i a_i
//   color[c] = sum_i w_i e_i[c],  alpha = 1 - T_S,  depth_sum = sum_i w_i z_i
// The background, the expected depth (depth_sum / (alpha + eps)) and the normalised form are
// applied on top of these three sums in Python, where autograd differentiates them.
//
// Backward without division by (1 - a): with upstream gradients g_c, g_alpha, g_z, let
// eps_i = sum_c g_c e_i[c] + g_z z_i. Back to front, r_i = a_{i+1} eps_{i+1} + (1 - a_{i+1}) r_{i+1}
// (r_{S-1} = 0) and lambda_i = prod_{k>i} (1 - a_k); then
//   dL/da_i = T_i (eps_i - r_i) + g_alpha T_i lambda_i,   dL/de_i[c] = g_c w_i.
// Back-to-front needs T_i, a prefix product. It is recomputed in chunks of kRayChunk samples: an
// absorption-only pre-pass keeps T at the start of every chunk (of every s-th on the GPU),
// then chunks are visited back to front, each marched front to back to refill its samples' state
// in a fixed per-ray array (raymarch_backward_ray). Nothing per sample is kept in memory between
// the forward and the backward. 128 samples cover a 64^3 grid under either camera in one chunk.
// The forward stops where T reaches 0 (a fully opaque sample), but the backward cannot: r_k and
// lambda_k of that sample are made of what lies behind it (d alpha / d a_k = T_k lambda_k is not 0
// when T_{k+1} is). So the backward marches on behind it, with the suffix transmittance
// prod_{i>k} (1 - a_i), until that reaches 0 too (RayStop).
//
// Cameras (view space, the camera looking down -z; pixel (i, j) at NDC x = -1 + (2j+1)/Wi,
// y = 1 - (2i+1)/Hi):
//   orthographic: the ray through (x, y) parallel to -z, samples at z = 1 - (2k+1)/S,
//                 depth z_k = 1 - z (from the front face of the volume), delta = 2/S;
//   perspective:  from (0, 0, distance) along n = (x, y, -f)/|(x, y, -f)|, samples at distance
//                 t_k = near + (k + 1/2)(far - near)/S, depth z_k = t_k f/|(x, y, -f)| (the view
//                 depth, as the rasterizer's), delta = (far - near)/S.
#pragma once

#include "../voxel/voxel_math.h"

namespace invrender {
namespace raymarch {

using voxel::Geometry;

constexpr int64_t kMaxSamples = 16384;
// The backward's per-ray storage: kRayChunk samples of state, and the march state at the start of
// kRayCheckpoints chunks. On the CPU (128, 128) every chunk start is kept: 16384 samples, and a
// 64^3 grid needs one chunk. On the GPU the arrays live in each thread's local memory, so they are
// small (32, 32): a ray of more than 32 chunks keeps every s-th chunk start (s = ceil(chunks / 32))
// and re-marches absorption only from the nearest one, at most s - 1 chunks per chunk.
constexpr int kGpuRayChunk = 32, kGpuRayCheckpoints = 32;
#ifdef __CUDA_ARCH__
constexpr int kRayChunk = kGpuRayChunk;
constexpr int kRayCheckpoints = kGpuRayCheckpoints;
#else
constexpr int kRayChunk = 128;
constexpr int kRayCheckpoints = 128;
#endif

struct RayParams {
  Geometry g;       // B, C (emission channels, 0 when absent), D, H, W; Ho, Wo = image size
  int64_t S;        // samples per ray
  bool perspective;
  bool density;
  double focal;     // perspective: f = 1 / tan(fov / 2)
  double distance;  // perspective: camera at (0, 0, distance)
  double t_near, t_far;
};

// A ray's samples: index-scaled view position q(k) = q0 + k dq (q = K p with K the index per
// object length of each axis), input index u(k) = u0 + k du, depth z(k) = z0 + k dz.
template <typename T>
struct Ray {
  Vec3<T> q0, dq;
  Vec3<T> u0, du;
  T z0, dz;
  T delta;  // sample spacing along the ray (density mode)
};

// Where the backward can stop marching a ray: `trans` is T, and once T is 0 (at sample k),
// `behind` is prod_{k<i<=current} (1 - a_i), the transmittance of what lies behind sample k, which
// still enters r_k and lambda_k. Nothing beyond the sample that makes `behind` 0 matters.
template <typename T>
struct RayStop {
  T trans = T(1), behind = T(1);
  // Takes sample absorption a; false once the samples after this one no longer matter.
  HOST_DEVICE INLINE bool advance(T a) {
    if (trans != T(0))
      trans *= T(1) - a;
    else
      behind *= T(1) - a;
    return behind != T(0);
  }
};

// u = c + M q with M[i][j] = K_i R[j][i] / K_j: input index of the view point q (index-scaled).
// In index space the identity rotation maps exactly (M = I).
template <typename T>
HOST_DEVICE INLINE Vec3<T> scaled_view_to_index(const Geometry& g, const T* Rb, Vec3<T> q,
                                                bool translate) {
  const Vec3<T> kv = voxel::index_per_object<T>(g);
  const T k[3] = {kv.x, kv.y, kv.z};
  const T qs[3] = {q.x, q.y, q.z};
  const T c[3] = {T(0.5) * T(g.W - 1), T(0.5) * T(g.H - 1), T(0.5) * T(g.D - 1)};
  T u[3];
  for (int i = 0; i < 3; ++i) {
    u[i] = translate ? c[i] : T(0);
    for (int j = 0; j < 3; ++j) u[i] += (k[i] * Rb[3 * j + i]) / k[j] * qs[j];
  }
  return {u[0], u[1], u[2]};
}

template <typename T>
HOST_DEVICE INLINE Ray<T> make_ray(const RayParams& p, const T* R, int64_t b, int64_t i,
                                   int64_t j) {
  const Geometry& g = p.g;
  const Vec3<T> k = voxel::index_per_object<T>(g);
  Ray<T> r;
  const T S = T(p.S);
  if (!p.perspective) {
    // Computed from integers so that an image of the grid's size hits voxel centres exactly.
    r.q0 = {T(2 * j + 1 - g.Wo) * (T(g.W) / T(2 * g.Wo)),
            T(2 * i + 1 - g.Ho) * (T(g.H) / T(2 * g.Ho)), (T(1) - S) * (T(g.D) / (T(2) * S))};
    r.dq = {T(0), T(0), T(g.D) / S};
    r.z0 = T(1) / S;
    r.dz = T(2) / S;
    r.delta = T(2) / S;
  } else {
    const T x = T(2 * j + 1 - g.Wo) / T(g.Wo), y = T(g.Ho - 2 * i - 1) / T(g.Ho);
    const T f = T(p.focal);
    const T len = sqrt_(x * x + y * y + f * f);
    const Vec3<T> n = {x / len, y / len, -f / len};
    const T dt = (T(p.t_far) - T(p.t_near)) / S;
    const T t0 = T(p.t_near) + T(0.5) * dt;
    r.q0 = {k.x * (t0 * n.x), k.y * (t0 * n.y), k.z * (T(p.distance) + t0 * n.z)};
    r.dq = {k.x * (dt * n.x), k.y * (dt * n.y), k.z * (dt * n.z)};
    r.z0 = t0 * f / len;
    r.dz = dt * f / len;
    r.delta = dt;
  }
  const T* Rb = R + 9 * b;
  r.u0 = scaled_view_to_index(g, Rb, r.q0, true);
  r.du = scaled_view_to_index(g, Rb, r.dq, false);
  return r;
}

// View position of sample k (for the rotation gradient).
template <typename T>
HOST_DEVICE INLINE Vec3<T> ray_view_position(const Geometry& g, const Ray<T>& r, int64_t k) {
  const Vec3<T> kv = voxel::index_per_object<T>(g);
  const Vec3<T> q = voxel::line_at(r.q0, r.dq, T(k));
  return {q.x / kv.x, q.y / kv.y, q.z / kv.z};
}

// Absorption of a raw sample, and d(absorption)/d(raw) (torch.clamp's gradient convention: 1 on
// the closed interval, 0 outside).
template <typename T>
HOST_DEVICE INLINE T absorption_of(T raw, bool density, T delta, T* dadraw) {
  if (density) {
    if (!(raw >= T(0))) {
      *dadraw = T(0);
      return T(0);
    }
    const T e = exp_(-raw * delta);
    *dadraw = delta * e;
    return T(1) - e;
  }
  if (raw < T(0)) {
    *dadraw = T(0);
    return T(0);
  }
  if (raw > T(1)) {
    *dadraw = T(0);
    return T(1);
  }
  *dadraw = T(1);
  return raw;
}

// Samples [first, last] of a ray that can touch the volume (others have a = 0 and change nothing).
template <typename T>
HOST_DEVICE INLINE void ray_range(const RayParams& p, const Ray<T>& r, int64_t* first,
                                  int64_t* last) {
  voxel::clip_line(p.g, r.u0, r.du, p.S, first, last);
}

// Visits samples first..last of a ray in order with their stencils: f(k, InteriorStencil) inside
// [ifirst, ilast], f(k, Trilinear) elsewhere for samples whose stencil touches the grid. Stops
// early when f returns false.
template <typename T, typename F>
HOST_DEVICE FORCE_INLINE void visit_stencils(const Geometry& g, const Ray<T>& r, int64_t first,
                                       int64_t last, int64_t ifirst, int64_t ilast, const F& f) {
  for (int64_t k = first; k <= last; ++k) {
    const Vec3<T> u = voxel::line_at(r.u0, r.du, T(k));
    if (k >= ifirst && k <= ilast) {
      if (!f(k, voxel::interior_stencil(g, u))) return;
    } else {
      voxel::Trilinear<T> s;
      voxel::trilinear_setup(g, u, s);
      if (s.inside && !f(k, s)) return;
    }
  }
}

// Forward of one ray: writes color (C channels), alpha and depth_sum of pixel (b, i, j).
// Channels are marched in chunks of up to voxel::kChunk, whose sums stay in registers; the
// absorption is re-sampled per chunk (one chunk for C <= 4).
template <typename T>
HOST_DEVICE FORCE_INLINE void raymarch_forward_ray(const RayParams& p, const T* absorption,
                                             const T* emission, const T* R, T* color, T* alpha,
                                             T* depth_sum, int64_t b, int64_t i, int64_t j) {
  constexpr int kChunk = voxel::kChunk;
  const Geometry& g = p.g;
  const int64_t vol = g.D * g.H * g.W, plane = g.Ho * g.Wo, pix = i * g.Wo + j;
  const Ray<T> r = make_ray(p, R, b, i, j);
  const T* abs_b = absorption + b * vol;
  int64_t first, last, ifirst, ilast;
  ray_range(p, r, &first, &last);
  voxel::interior_span(g, r.u0, r.du, first, last, &ifirst, &ilast);
  int64_t c0 = 0;
  do {
    const int nc = static_cast<int>((g.C - c0) < kChunk ? (g.C - c0) : kChunk);
    const T* em = emission == nullptr ? nullptr : emission + (b * g.C + c0) * vol;
    T acc[kChunk] = {T(0), T(0), T(0), T(0)};
    T trans = T(1), zsum = T(0);
    visit_stencils(g, r, first, last, ifirst, ilast, [&](int64_t k, const auto& s) {
      T v[8], unused;
      voxel::corner_values(g, s, abs_b, v);
      const T a = absorption_of(voxel::trilinear_interp(s, v), p.density, r.delta, &unused);
      if (a == T(0)) return true;
      const T w = trans * a;
      INVRENDER_UNROLL
      for (int c = 0; c < kChunk; ++c) {
        if (c >= nc) break;
        voxel::corner_values(g, s, em + c * vol, v);
        acc[c] += w * voxel::trilinear_interp(s, v);
      }
      zsum += w * (r.z0 + T(k) * r.dz);
      trans *= T(1) - a;
      return trans != T(0);  // nothing behind an opaque sample is seen
    });
    for (int c = 0; c < nc; ++c) color[(b * g.C + c0 + c) * plane + pix] = acc[c];
    if (c0 == 0) {
      alpha[b * plane + pix] = T(1) - trans;
      depth_sum[b * plane + pix] = zsum;
    }
    c0 += kChunk;
  } while (c0 < g.C);
}

// Backward of one ray. gabs / gem receive the volume gradients through `scatter` (gem may be null
// when there is no emission); dL/dR is accumulated into gR (9 values).
//
// Chunks of kRayChunk samples are visited back to front. Each is first marched front to back from
// its starting transmittance: that march does all the work that needs only front-to-back
// quantities (the emission gradients g_c T_i a_i, their share of dL/du) and keeps, per sample of
// the chunk, T_i, a_i, eps_i, da/draw and d(raw)/du. A light back-to-front loop over those values
// then forms dL/da_i with the suffix recurrences and scatters it. The starting transmittance of
// each chunk comes from an absorption-only pre-pass over all but the last chunk.
template <typename T, typename Acc, typename Scatter, int kRayChunk = kRayChunk,
          int kRayCheckpoints = kRayCheckpoints>
HOST_DEVICE FORCE_INLINE void raymarch_backward_ray(const RayParams& p, const T* gcolor,
                                              const T* galpha, const T* gdepth,
                                              const T* absorption, const T* emission, const T* R,
                                              T* gabs, T* gem, Acc* gR, int64_t b, int64_t i,
                                              int64_t j, const Scatter& scatter) {
  const Geometry& g = p.g;
  const int64_t vol = g.D * g.H * g.W, plane = g.Ho * g.Wo, pix = i * g.Wo + j;
  const T ga = galpha[b * plane + pix], gz = gdepth[b * plane + pix];
  const T* gc = gcolor + b * g.C * plane + pix;
  bool any = ga != T(0) || gz != T(0);
  for (int64_t c = 0; c < g.C; ++c) any = any || gc[c * plane] != T(0);
  if (!any) return;
  const Ray<T> r = make_ray(p, R, b, i, j);
  const T* abs_b = absorption + b * vol;
  const T* em_b = emission == nullptr ? nullptr : emission + b * g.C * vol;
  T* gabs_b = gabs + b * vol;
  T* gem_b = gem == nullptr ? nullptr : gem + b * g.C * vol;
  int64_t first, last, ifirst, ilast;
  ray_range(p, r, &first, &last);
  if (first > last) return;
  voxel::interior_span(g, r.u0, r.du, first, last, &ifirst, &ilast);

  // Pre-pass: the march state (T, and the transmittance behind the sample that made T 0) at the
  // start of chunks 0, stride, 2 stride, ... (every chunk on the CPU); it stops where later samples
  // no longer matter (`end`).
  RayStop<T> checkpoint[kRayCheckpoints];
  int64_t end = last, last_chunk = (last - first) / kRayChunk;
  const int64_t stride = last_chunk / kRayCheckpoints + 1;  // ceil(chunks / kRayCheckpoints)
  if (last_chunk > 0) {
    RayStop<T> state;
    int64_t next = 1;  // next chunk whose start may be recorded
    visit_stencils(g, r, first, first + last_chunk * kRayChunk - 1, ifirst, ilast,
                   [&](int64_t k, const auto& s) {
                     for (; next <= last_chunk && first + next * kRayChunk <= k; ++next)
                       if (next % stride == 0) checkpoint[next / stride] = state;
                     T v[8], unused;
                     voxel::corner_values(g, s, abs_b, v);
                     if (state.advance(absorption_of(voxel::trilinear_interp(s, v), p.density,
                                                     r.delta, &unused)))
                       return true;
                     end = k;
                     return false;
                   });
    for (; next <= last_chunk; ++next)
      if (next % stride == 0) checkpoint[next / stride] = state;
    last_chunk = (end - first) / kRayChunk;
  }

  // Per sample of the current chunk: T_i, a_i, eps_i = sum_c g_c e_i[c] + g_z z_i, da/draw and
  // d(raw)/du (a = 0 and da/draw = 0 for samples whose stencil misses the grid).
  T ring_T[kRayChunk], ring_a[kRayChunk], ring_eps[kRayChunk], ring_da[kRayChunk];
  Vec3<T> ring_du[kRayChunk];
  // Sums over samples of dL/du and k dL/du: the view position is affine in k along the ray, so
  // dL/dR = sum_k K dL/du_k (x) (p0 + k dp) is formed once per ray.
  Vec3<T> gsum = {T(0), T(0), T(0)}, gksum = {T(0), T(0), T(0)};
  const auto add_du = [&](int64_t k, Vec3<T> gu) {
    gsum.x += gu.x;
    gsum.y += gu.y;
    gsum.z += gu.z;
    gksum.x += T(k) * gu.x;
    gksum.y += T(k) * gu.y;
    gksum.z += T(k) * gu.z;
  };
  T rr = T(0), lam = T(1);
  for (int64_t m = last_chunk; m >= 0; --m) {
    const int64_t k0 = first + m * kRayChunk;
    int64_t k1 = (k0 + kRayChunk - 1) < end ? (k0 + kRayChunk - 1) : end;
    for (int64_t k = k0; k <= k1; ++k) {
      ring_a[k - k0] = T(0);
      ring_da[k - k0] = T(0);
    }
    // The state at the chunk's start: from its checkpoint, re-marching absorption only over the
    // chunks in between (none on the CPU). They hold no stopping sample (that is in the last chunk).
    RayStop<T> state = checkpoint[m / stride];
    if (m % stride != 0)
      visit_stencils(g, r, first + (m - m % stride) * kRayChunk, k0 - 1, ifirst, ilast,
                     [&](int64_t, const auto& s) {
                       T v[8], unused;
                       voxel::corner_values(g, s, abs_b, v);
                       return state.advance(absorption_of(voxel::trilinear_interp(s, v), p.density,
                                                          r.delta, &unused));
                     });
    // Front to back: one load of each volume's corners serves value, d/du and scatter. Behind an
    // opaque sample T is 0: no gradient there, but a and eps still enter r and lambda.
    visit_stencils(g, r, k0, k1, ifirst, ilast, [&](int64_t k, const auto& s) {
      const int64_t n = k - k0;
      T v[8], wk[8];
      Vec3<T> du;
      voxel::corner_values(g, s, abs_b, v);
      const T a = absorption_of(voxel::trilinear_value_grad(s, v, &ring_du[n]), p.density,
                                r.delta, &ring_da[n]);
      const T t = state.trans, w = t * a;
      T eps = gz * (r.z0 + T(k) * r.dz);
      Vec3<T> gue = {T(0), T(0), T(0)};  // sum_c dL/de_c d(e_c)/du
      if (gem_b != nullptr) voxel::trilinear_weights(s.fw, s.fh, s.fd, T(1), wk);
      for (int64_t c = 0; c < g.C; ++c) {
        voxel::corner_values(g, s, em_b + c * vol, v);
        const T gcc = gc[c * plane];
        eps += gcc * voxel::trilinear_value_grad(s, v, &du);
        const T ge = gcc * w;
        if (ge == T(0)) continue;
        gue.x += ge * du.x;
        gue.y += ge * du.y;
        gue.z += ge * du.z;
        if (gem_b == nullptr) continue;
        T wg[8];
        for (int q = 0; q < 8; ++q) wg[q] = ge * wk[q];
        voxel::scatter_corners(g, s, gem_b + c * vol, wg, scatter);
      }
      add_du(k, gue);
      ring_T[n] = t;
      ring_a[n] = a;
      ring_eps[n] = eps;
      if (state.advance(a)) return true;
      end = k;  // only ever reached in the last chunk
      k1 = k;
      return false;
    });
    // Back to front: r_i and lambda_i, then dL/da_i = T_i (eps_i - r_i) + g_alpha T_i lambda_i.
    for (int64_t k = k1; k >= k0; --k) {
      const int64_t n = k - k0;
      const T a = ring_a[n], Ti = ring_T[n];
      if (a == T(0) && ring_da[n] == T(0)) continue;  // r and lambda unchanged, no gradient
      const T eps = ring_eps[n];
      const T dLda = Ti * (eps - rr) + ga * Ti * lam;
      rr = a * eps + (T(1) - a) * rr;
      lam *= T(1) - a;
      const T graw = dLda * ring_da[n];
      if (graw == T(0)) continue;
      const Vec3<T> u = voxel::line_at(r.u0, r.du, T(k));
      T wk[8];
      if (k >= ifirst && k <= ilast) {
        const voxel::InteriorStencil<T> s = voxel::interior_stencil(g, u);
        voxel::trilinear_weights(s.fw, s.fh, s.fd, graw, wk);
        voxel::scatter_corners(g, s, gabs_b, wk, scatter);
      } else {
        voxel::Trilinear<T> s;
        voxel::trilinear_setup(g, u, s);
        voxel::trilinear_weights(s.fw, s.fh, s.fd, graw, wk);
        voxel::scatter_corners(g, s, gabs_b, wk, scatter);
      }
      const Vec3<T> du = ring_du[n];
      add_du(k, Vec3<T>{graw * du.x, graw * du.y, graw * du.z});
    }
  }
  const Vec3<T> p0 = ray_view_position(g, r, 0), p1 = ray_view_position(g, r, 1);
  voxel::accumulate_rotation_grad(g, gsum, p0, gR);
  voxel::accumulate_rotation_grad(g, gksum, Vec3<T>{p1.x - p0.x, p1.y - p0.y, p1.z - p0.z}, gR);
}

}  // namespace raymarch
}  // namespace invrender
