"""Reference compositing: exclusive cumprod (UNICORN) and a masked softmax over layers (SoftRas)."""

import math

import torch
from torch import Tensor

from ..ops.composite import CompositeResult, SoftrasResult, _background, _check_layers, _softras_args, layer_alpha

__all__ = ["composite_layers", "layer_alpha", "softras_blend"]


def composite_layers(alpha: Tensor, colors: Tensor, background=None) -> CompositeResult:
    """Reference of :func:`invrender.composite_layers`: ``T`` by an exclusive ``cumprod``."""
    B, C, H, W, _ = _check_layers(alpha, "alpha", colors, "composite_layers")
    bg = _background(background, (B, C, H, W), alpha, "composite_layers")
    ones = torch.ones_like(alpha[..., :1])
    T = torch.cat([ones, torch.cumprod(1 - alpha, dim=-1)[..., :-1]], dim=-1)  # T_l = prod_{k<l} (1 - alpha_k)
    T_L = torch.prod(1 - alpha, dim=-1)  # (B, H, W)
    layers = ((T * alpha)[..., None] * colors).sum(dim=-2)  # (B, H, W, C)
    image = layers.permute(0, 3, 1, 2) + T_L[:, None] * bg
    return CompositeResult(image, 1 - T_L[:, None])


def softras_blend(fragments, colors: Tensor, sigma: float = 1e-4, gamma: float = 1e-4, znear: float = 1.0,
                  zfar: float = 100.0, background=None, eps: float = 1e-3) -> SoftrasResult:
    """Reference of :func:`invrender.softras_blend`, with plain tensor ops over the layer dimension."""
    op = "softras_blend"
    _, (B, C, H, W), (gamma, znear, zfar, eps) = _softras_args(fragments, colors, sigma, gamma, znear, zfar, eps, op)
    prob = layer_alpha(fragments, sigma, kind="sigmoid")
    bg = _background(background, (B, C, H, W), prob, op)
    return _softras_from_prob(prob, fragments.depth, fragments.face_idx, colors, bg, gamma, znear, zfar, eps)


def _softras_from_prob(prob, depth, face_idx, colors, bg, gamma, znear, zfar, eps) -> SoftrasResult:
    """The aggregation itself on occupancies ``prob`` (B, H, W, L) and ``bg`` (B, C, H, W)."""
    valid = face_idx >= 0
    zero = torch.zeros((), dtype=prob.dtype, device=prob.device)
    z = torch.where(valid, (zfar - depth) / (zfar - znear), zero)
    # The stabiliser zmax: the image does not depend on it, so it is held constant. PyTorch3D's
    # max(eps, max z' over valid layers), unless every weight underflows with it; then the max over
    # the valid layers with prob > 0 (and eps), which keeps the denominator positive.
    with torch.no_grad():
        pad = z.new_full((*z.shape[:-1], 1), eps)
        zmax_all = torch.cat([torch.where(valid, z, eps), pad], dim=-1).amax(dim=-1, keepdim=True)
        zmax_pos = torch.cat([torch.where(valid & (prob > 0), z, eps), pad], dim=-1).amax(dim=-1, keepdim=True)
        w_all = torch.where(valid, prob, zero) * torch.exp(torch.where(valid, z - zmax_all, -torch.inf) / gamma)
        total = w_all.sum(dim=-1, keepdim=True) + torch.exp((eps - zmax_all) / gamma)
        zmax = torch.where(total > 0, zmax_all, zmax_pos)
    arg = torch.where(valid, z - zmax, torch.full_like(z, -torch.inf)) / gamma  # -inf: e = 0 on empty layers
    # Overflow happens only for prob-0 layers under the fallback: e = 0 there (no inf * 0 anywhere).
    overflow = arg > math.log(torch.finfo(arg.dtype).max)
    e = torch.where(overflow, zero, torch.exp(torch.where(overflow, zero, arg)))
    w = torch.where(valid, prob, zero) * e  # (B, H, W, L)
    w_bg = torch.exp((eps - zmax[..., 0]) / gamma)[:, None]  # (B, 1, H, W)
    num = (w[..., None] * colors).sum(dim=-2).permute(0, 3, 1, 2) + w_bg * bg
    den = w.sum(dim=-1)[:, None] + w_bg
    silhouette = 1 - torch.prod(torch.where(valid, 1 - prob, zero + 1), dim=-1)[:, None]
    return SoftrasResult(num / den, silhouette)
