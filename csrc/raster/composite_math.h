// Layered compositing (UNICORN) and SoftRas aggregation over the layers of a pixel, written once
// for the CPU loops and the CUDA kernels. One call per pixel; no torch types.
//
// Layout (all contiguous, n = b * H * W + hw the pixel index, P = H * W):
//   alpha / prob / depth / face_idx (B, H, W, L): layer l of pixel n at n * L + l
//   colors (B, H, W, L, C): (n * L + l) * C + c
//   background / image / grad_image (B, C, H, W): (b * C + c) * P + hw
//   mask / silhouette (B, 1, H, W): n
//
// composite_layers, front to back: T_0 = 1, T_{l+1} = T_l (1 - alpha_l);
//   image[c] = sum_l T_l alpha_l colors_l[c] + T_L background[c],   mask = 1 - T_L.
// Backward without division by (1 - alpha): with upstream g_c (image) and g_m (mask), let
// eps_l = sum_c g_c colors_l[c]; back to front r_{L-1} = sum_c g_c background[c],
// r_{l-1} = alpha_l eps_l + (1 - alpha_l) r_l (r_l: the contracted colour behind layer l), and
// lambda_l = prod_{k>l} (1 - alpha_k). Then
//   dL/dalpha_l = T_l (eps_l - r_l) + g_m T_l lambda_l,  dL/dcolors_l[c] = g_c T_l alpha_l,
//   dL/dbackground[c] = g_c T_L.
// The T_l (a prefix product) are written front to back into grad_alpha, used as scratch, and
// replaced by the gradient in the back-to-front pass: any L, no fixed-size local array.
//
// softras_blend over the valid layers (face_idx >= 0) of a pixel:
//   z'_l = (zfar - depth_l) / (zfar - znear),  zmax = max(eps, max_{valid l} z'_l) (see softras_zmax),
//   e_l = exp((z'_l - zmax) / gamma),  w_l = prob_l e_l,  w_bg = exp((eps - zmax) / gamma),
//   W = sum_l w_l + w_bg,  image[c] = (sum_l w_l colors_l[c] + w_bg background[c]) / W,
//   silhouette = 1 - prod_l (1 - prob_l).
// zmax only stabilises the exponentials: the image does not depend on it, so the backward treats
// it as a constant (softras_zmax falls back to another choice where all the weights underflow, so
// that the image is finite whatever the depths).
// Backward: with eps_l = sum_c g_c colors_l[c], gI = sum_c g_c image[c] and G_l = (eps_l - gI) / W:
//   dL/dprob_l  = G_l e_l + g_s prod_{k != l} (1 - prob_k)   (prefix times suffix product)
//   dL/ddepth_l = -G_l w_l / (gamma (zfar - znear)),  dL/dcolors_l[c] = g_c w_l / W,
//   dL/dbackground[c] = g_c w_bg / W.  Invalid layers get zero gradient.
#pragma once

#include "../common/common.h"

namespace invrender {
namespace composite {

// Channels accumulated in registers per pass of the forward.
constexpr int kChunk = 4;

struct Sizes {
  int64_t B, P, L, C;  // batch, pixels per image (H * W), layers, channels
};

struct SoftrasParams {
  double gamma, znear, zfar, eps;
};

// ---------------------------------------------------------------------------------------------
// composite_layers

template <typename T>
HOST_DEVICE FORCE_INLINE void composite_forward_pixel(const Sizes& s, const T* alpha,
                                                      const T* colors, const T* background,
                                                      T* image, T* mask, int64_t n) {
  const int64_t b = n / s.P, hw = n - b * s.P;
  const T* a = alpha + n * s.L;
  const T* col = colors + n * s.L * s.C;
  int64_t c0 = 0;
  do {
    const int nc = static_cast<int>((s.C - c0) < kChunk ? (s.C - c0) : kChunk);
    T acc[kChunk] = {T(0), T(0), T(0), T(0)};
    T trans = T(1);
    for (int64_t l = 0; l < s.L; ++l) {
      const T al = a[l];
      const T w = trans * al;
      INVRENDER_UNROLL
      for (int c = 0; c < kChunk; ++c) {
        if (c >= nc) break;
        acc[c] += w * col[l * s.C + c0 + c];
      }
      trans *= T(1) - al;
      if (trans == T(0)) break;  // nothing behind an opaque layer is seen
    }
    for (int c = 0; c < nc; ++c) {
      const int64_t o = (b * s.C + c0 + c) * s.P + hw;
      image[o] = acc[c] + trans * background[o];
    }
    if (c0 == 0) mask[n] = T(1) - trans;
    c0 += kChunk;
  } while (c0 < s.C);
}

// Writes every grad_alpha, grad_colors and grad_background entry of pixel n.
template <typename T>
HOST_DEVICE FORCE_INLINE void composite_backward_pixel(const Sizes& s, const T* grad_image,
                                                       const T* grad_mask, const T* alpha,
                                                       const T* colors, const T* background,
                                                       T* grad_alpha, T* grad_colors,
                                                       T* grad_background, int64_t n) {
  const int64_t b = n / s.P, hw = n - b * s.P;
  const T* a = alpha + n * s.L;
  const T* col = colors + n * s.L * s.C;
  const T* g = grad_image + b * s.C * s.P + hw;  // channel c at g[c * P]
  const T gm = grad_mask[n];
  T* ga = grad_alpha + n * s.L;
  T* gcol = grad_colors + n * s.L * s.C;
  // Front to back: T_l into grad_alpha (scratch).
  T trans = T(1);
  for (int64_t l = 0; l < s.L; ++l) {
    ga[l] = trans;
    trans *= T(1) - a[l];
  }
  T r = T(0);
  for (int64_t c = 0; c < s.C; ++c) {
    const int64_t o = (b * s.C + c) * s.P + hw;
    r += g[c * s.P] * background[o];
    grad_background[o] = g[c * s.P] * trans;
  }
  // Back to front.
  T lam = T(1);
  for (int64_t l = s.L - 1; l >= 0; --l) {
    const T al = a[l], Tl = ga[l];
    const T w = Tl * al;
    T eps = T(0);
    for (int64_t c = 0; c < s.C; ++c) {
      const T gc = g[c * s.P];
      eps += gc * col[l * s.C + c];
      gcol[l * s.C + c] = gc * w;
    }
    ga[l] = Tl * (eps - r) + gm * Tl * lam;
    r = al * eps + (T(1) - al) * r;
    lam *= T(1) - al;
  }
}

// ---------------------------------------------------------------------------------------------
// softras_blend

// The stabiliser zmax. First max(eps, max_{valid l} z'_l) (PyTorch3D's, so every e_l <= 1 and the
// gradients are finite); when all the weights underflow with it (the front-most valid layers have
// prob 0), max(eps, max_{valid l, prob_l > 0} z'_l), which keeps one weight equal to its prob (or
// w_bg = 1), so W > 0 always. It is kept as the raw zfar - depth of the layer that attains it (or
// as "eps"), so that that layer's exponent is exactly 0: computed as z'_l - zmax, rounding (a fused
// multiply-add in one place and not in another) leaves a few ulp that a small gamma turns into
// exp(+-100) and a 0/0.
template <typename T>
struct SoftrasMax {
  T dmax;         // zfar - depth of the layer that attains zmax (unless is_eps)
  bool is_eps;    // zmax = eps
  bool over_all;  // zmax is taken over every valid layer (else over those with prob > 0)
};

// (z'_l - zmax) / gamma of a valid layer with zfar - depth = d; <= 0 where zmax was taken over it,
// up to rounding (clamped in softras_exp).
template <typename T>
HOST_DEVICE INLINE T softras_exponent(const SoftrasParams& p, const SoftrasMax<T>& m, T d,
                                      T inv_range, T inv_gamma) {
  if (m.is_eps) return (d * inv_range - T(p.eps)) * inv_gamma;
  return ((d - m.dmax) * inv_range) * inv_gamma;
}

// e_l = exp((z'_l - zmax) / gamma), the exponent clamped at 0 where zmax was taken over the layer
// (every layer when over_all, else those with prob > 0).
template <typename T>
HOST_DEVICE INLINE T softras_exp(const SoftrasParams& p, const SoftrasMax<T>& m, T depth, T prob,
                                 T inv_range, T inv_gamma) {
  T x = softras_exponent(p, m, T(p.zfar) - depth, inv_range, inv_gamma);
  if ((m.over_all || prob > T(0)) && x > T(0)) x = T(0);
  return exp_(x);
}

template <typename T>
HOST_DEVICE INLINE T softras_bg_weight(const SoftrasParams& p, const SoftrasMax<T>& m, T inv_range,
                                       T inv_gamma) {
  if (m.is_eps) return T(1);
  const T x = (T(p.eps) - m.dmax * inv_range) * inv_gamma;
  return x < T(0) ? exp_(x) : T(1);
}

template <typename T>
HOST_DEVICE INLINE SoftrasMax<T> softras_zmax(const SoftrasParams& p, int64_t L, const T* prob,
                                              const T* depth, const int64_t* face, T inv_range,
                                              T inv_gamma) {
  bool any = false, any_pos = false;
  T dall = T(0), dpos = T(0);
  for (int64_t l = 0; l < L; ++l) {
    if (face[l] < 0) continue;
    const T d = T(p.zfar) - depth[l];
    if (!any || d > dall) dall = d;
    any = true;
    if (prob[l] > T(0) && (!any_pos || d > dpos)) dpos = d;
    any_pos = any_pos || prob[l] > T(0);
  }
  SoftrasMax<T> all{dall, !(any && dall * inv_range > T(p.eps)), true};
  SoftrasMax<T> pos{dpos, !(any_pos && dpos * inv_range > T(p.eps)), false};
  if (all.is_eps == pos.is_eps && (all.is_eps || all.dmax == pos.dmax)) return all;
  T wsum = softras_bg_weight(p, all, inv_range, inv_gamma);
  for (int64_t l = 0; l < L && wsum == T(0); ++l) {
    if (face[l] < 0 || prob[l] == T(0)) continue;
    wsum += prob[l] * softras_exp(p, all, depth[l], prob[l], inv_range, inv_gamma);
  }
  return wsum > T(0) ? all : pos;
}

template <typename T>
HOST_DEVICE FORCE_INLINE void softras_forward_pixel(const Sizes& s, const SoftrasParams& p,
                                                    const T* prob, const T* depth,
                                                    const int64_t* face_idx, const T* colors,
                                                    const T* background, T* image,
                                                    T* silhouette, int64_t n) {
  const int64_t b = n / s.P, hw = n - b * s.P;
  const T* pr = prob + n * s.L;
  const T* dp = depth + n * s.L;
  const int64_t* fi = face_idx + n * s.L;
  const T* col = colors + n * s.L * s.C;
  const T inv_range = T(1) / (T(p.zfar) - T(p.znear)), inv_gamma = T(1) / T(p.gamma);
  const SoftrasMax<T> zmax = softras_zmax(p, s.L, pr, dp, fi, inv_range, inv_gamma);
  const T wbg = softras_bg_weight(p, zmax, inv_range, inv_gamma);
  int64_t c0 = 0;
  do {
    const int nc = static_cast<int>((s.C - c0) < kChunk ? (s.C - c0) : kChunk);
    T acc[kChunk] = {T(0), T(0), T(0), T(0)};
    T wsum = wbg, keep = T(1);
    for (int64_t l = 0; l < s.L; ++l) {
      if (fi[l] < 0) continue;
      const T pl = pr[l];
      keep *= T(1) - pl;
      if (pl == T(0)) continue;
      const T w = pl * softras_exp(p, zmax, dp[l], pl, inv_range, inv_gamma);
      wsum += w;
      INVRENDER_UNROLL
      for (int c = 0; c < kChunk; ++c) {
        if (c >= nc) break;
        acc[c] += w * col[l * s.C + c0 + c];
      }
    }
    for (int c = 0; c < nc; ++c) {
      const int64_t o = (b * s.C + c0 + c) * s.P + hw;
      image[o] = (acc[c] + wbg * background[o]) / wsum;
    }
    if (c0 == 0) silhouette[n] = T(1) - keep;
    c0 += kChunk;
  } while (c0 < s.C);
}

// Writes every grad_prob, grad_depth, grad_colors and grad_background entry of pixel n.
template <typename T>
HOST_DEVICE FORCE_INLINE void softras_backward_pixel(
    const Sizes& s, const SoftrasParams& p, const T* grad_image, const T* grad_silhouette,
    const T* prob, const T* depth, const int64_t* face_idx, const T* colors, const T* background,
    T* grad_prob, T* grad_depth, T* grad_colors, T* grad_background, int64_t n) {
  const int64_t b = n / s.P, hw = n - b * s.P;
  const T* pr = prob + n * s.L;
  const T* dp = depth + n * s.L;
  const int64_t* fi = face_idx + n * s.L;
  const T* col = colors + n * s.L * s.C;
  const T* g = grad_image + b * s.C * s.P + hw;  // channel c at g[c * P]
  const T gs = grad_silhouette[n];
  T* gp = grad_prob + n * s.L;
  T* gd = grad_depth + n * s.L;
  T* gcol = grad_colors + n * s.L * s.C;
  const T inv_range = T(1) / (T(p.zfar) - T(p.znear)), inv_gamma = T(1) / T(p.gamma);
  const SoftrasMax<T> zmax = softras_zmax(p, s.L, pr, dp, fi, inv_range, inv_gamma);
  const T wbg = softras_bg_weight(p, zmax, inv_range, inv_gamma);
  // Front to back: W, sum_c g_c image[c] * W, and the prefix products of (1 - prob) into
  // grad_prob (scratch).
  T bg_eps = T(0);
  for (int64_t c = 0; c < s.C; ++c) bg_eps += g[c * s.P] * background[(b * s.C + c) * s.P + hw];
  T wsum = wbg, num = wbg * bg_eps, keep = T(1);
  for (int64_t l = 0; l < s.L; ++l) {
    gp[l] = keep;
    if (fi[l] < 0) continue;
    const T pl = pr[l];
    keep *= T(1) - pl;
    if (pl == T(0)) continue;
    const T w = pl * softras_exp(p, zmax, dp[l], pl, inv_range, inv_gamma);
    T eps = T(0);
    for (int64_t c = 0; c < s.C; ++c) eps += g[c * s.P] * col[l * s.C + c];
    wsum += w;
    num += w * eps;
  }
  const T inv_w = T(1) / wsum;
  const T gI = num * inv_w;
  for (int64_t c = 0; c < s.C; ++c)
    grad_background[(b * s.C + c) * s.P + hw] = g[c * s.P] * wbg * inv_w;
  // Back to front with the suffix product.
  T suffix = T(1);
  for (int64_t l = s.L - 1; l >= 0; --l) {
    if (fi[l] < 0) {
      gp[l] = T(0);
      gd[l] = T(0);
      for (int64_t c = 0; c < s.C; ++c) gcol[l * s.C + c] = T(0);
      continue;
    }
    const T pl = pr[l];
    T e = softras_exp(p, zmax, dp[l], pl, inv_range, inv_gamma);
    if (!(e - e == T(0))) e = T(0);  // overflow: only a prob-0 layer in the fallback (see zmax)
    const T w = pl == T(0) ? T(0) : pl * e;
    T eps = T(0);
    for (int64_t c = 0; c < s.C; ++c) {
      const T gc = g[c * s.P];
      eps += gc * col[l * s.C + c];
      gcol[l * s.C + c] = gc * w * inv_w;
    }
    const T G = (eps - gI) * inv_w;
    gp[l] = G * e + gs * gp[l] * suffix;
    gd[l] = w == T(0) ? T(0) : -G * w * inv_gamma * inv_range;
    suffix *= T(1) - pl;
  }
}

}  // namespace composite
}  // namespace invrender
