"""Dense pure-PyTorch mesh rasterization: every face against every pixel, top-L by depth.

Same signature and semantics as :func:`invrender.rasterize` (see its docstring and
csrc/raster/raster_math.h); clear before fast, O(B H W F) memory.
"""

import math
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from ..ops.raster import MAX_COORD, MIN_AREA2, Fragments, _batch_meshes, _check_faces, _image_size, default_blur

__all__ = ["interpolate", "rasterize"]


def _edge(ax, ay, bx, by, px, py):
    return (bx - ax) * (py - ay) - (by - ay) * (px - ax)


def _segment_dist2(ax, ay, bx, by, px, py):
    abx, aby, apx, apy = bx - ax, by - ay, px - ax, py - ay
    l2 = abx * abx + aby * aby
    safe = torch.where(l2 > 0, l2, torch.ones_like(l2))
    t = torch.where(l2 > 0, (apx * abx + apy * aby) / safe, torch.zeros_like(l2)).clamp(0, 1)
    dx, dy = apx - t * abx, apy - t * aby
    return dx * dx + dy * dy


def rasterize(verts, faces, image_size: Union[int, Tuple[int, int]], layers: int = 25, sigma: float = 1e-4,
              blur: Optional[float] = None, cull_backfaces: bool = False) -> Fragments:
    verts, faces = _batch_meshes(verts, faces, "rasterize")
    _check_faces(faces, "rasterize")
    H, W = _image_size(image_size, "rasterize")
    blur = default_blur(float(sigma)) if blur is None else float(blur)
    B, F = faces.shape[:2]
    dtype, device = verts.dtype, verts.device
    pad = (faces < 0).any(-1)  # (B, F)
    idx = faces.clamp(min=0)
    tri = torch.stack([verts[b][idx[b]] for b in range(B)]) if B else verts.new_zeros(0, F, 3, 3)  # (B, F, 3, 3)
    x, y, z = (tri[..., k] for k in range(3))  # (B, F, 3) each
    area2 = (x[..., 1] - x[..., 0]) * (y[..., 2] - y[..., 0]) - (y[..., 1] - y[..., 0]) * (x[..., 2] - x[..., 0])
    near = (x.abs() <= MAX_COORD) & (y.abs() <= MAX_COORD) & (z <= MAX_COORD)
    valid = ~pad & (z > 0).all(-1) & near.all(-1) & (area2.abs() >= MIN_AREA2)
    if cull_backfaces:
        valid &= area2 >= 0
    safe_area = torch.where(valid, area2, torch.ones_like(area2))

    px = (2 * torch.arange(W, dtype=dtype, device=device) + 1 - W) / W
    py = (H - 2 * torch.arange(H, dtype=dtype, device=device) - 1) / H
    py, px = torch.meshgrid(py, px, indexing="ij")
    px = px.reshape(1, H * W, 1)  # (1, P, 1) against faces (B, 1, F)
    py = py.reshape(1, H * W, 1)
    X = [x[..., k].unsqueeze(1) for k in range(3)]
    Y = [y[..., k].unsqueeze(1) for k in range(3)]
    Z = [z[..., k].unsqueeze(1) for k in range(3)]
    A = safe_area.unsqueeze(1)
    nxt = lambda k: (k + 1) % 3  # noqa: E731
    prv = lambda k: (k + 2) % 3  # noqa: E731
    w = torch.stack([_edge(X[nxt(k)], Y[nxt(k)], X[prv(k)], Y[prv(k)], px, py) / A for k in range(3)], -1)
    inside = (w >= 0).all(-1)
    c = w.clamp(min=0)
    bary = c / c.sum(-1, keepdim=True)
    depth = sum(bary[..., k] * Z[k] for k in range(3))
    d2 = torch.stack([_segment_dist2(X[nxt(k)], Y[nxt(k)], X[prv(k)], Y[prv(k)], px, py) for k in range(3)], -1)
    dmin = d2.min(-1).values
    dist = torch.where(inside, -dmin, dmin)
    covered = valid.unsqueeze(1) & (dist <= blur)  # (B, P, F)

    # Top L by (depth, face index): a stable sort of depth keeps equal depths in index order.
    key = torch.where(covered, depth.detach(), torch.full_like(depth, math.inf))
    order = torch.sort(key, dim=-1, stable=True).indices[..., :layers]  # (B, P, min(L, F))
    keep = torch.gather(covered, -1, order)
    L = order.shape[-1]
    face_idx = torch.where(keep, order, torch.full_like(order, -1))
    take = lambda t: torch.where(keep, torch.gather(t, -1, order), t.new_zeros(()))  # noqa: E731
    out_bary = torch.stack([take(bary[..., k]) for k in range(3)], -1)
    out_dist, out_depth = take(dist), take(depth)
    if L < layers:  # fewer faces than layers
        extra = layers - L
        face_idx = torch.cat([face_idx, face_idx.new_full((B, H * W, extra), -1)], -1)
        out_bary = torch.cat([out_bary, out_bary.new_zeros(B, H * W, extra, 3)], -2)
        out_dist = torch.cat([out_dist, out_dist.new_zeros(B, H * W, extra)], -1)
        out_depth = torch.cat([out_depth, out_depth.new_zeros(B, H * W, extra)], -1)
    r = lambda t, *s: t.reshape(B, H, W, layers, *s)  # noqa: E731
    return Fragments(r(face_idx), r(out_bary, 3), r(out_dist), r(out_depth))


def interpolate(fragments: Fragments, attrs: Tensor, faces: Optional[Tensor] = None) -> Tensor:
    """Gathers each layer's corner attributes and sums them with the barycentrics (same semantics as
    :func:`invrender.interpolate`)."""
    face_idx, bary = fragments.face_idx, fragments.bary
    B, H, W, L = face_idx.shape
    if attrs.dim() == 3:
        if faces.dim() == 2:
            faces = faces.unsqueeze(0).expand(B, *faces.shape)
        attrs = torch.stack([attrs[b][faces[b].clamp(min=0)] for b in range(B)]) if B else attrs.new_zeros(
            0, faces.shape[1], 3, attrs.shape[-1])  # (B, F, 3, C)
    F, C = attrs.shape[1], attrs.shape[3]
    if F == 0:
        return bary.new_zeros(B, H, W, L, C)
    idx = face_idx.clamp(min=0).reshape(B, -1, 1).expand(-1, -1, 3 * C)
    corner = attrs.reshape(B, F, 3 * C).gather(1, idx).reshape(B, H, W, L, 3, C)
    out = (bary.unsqueeze(-1) * corner).sum(-2)
    return torch.where((face_idx >= 0).unsqueeze(-1), out, out.new_zeros(()))
