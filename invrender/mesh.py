"""Mesh construction helpers: the icosphere template and its spherical UV map.

Faces are int64 ``(F, 3)``, counter-clockwise seen from the front (outside), as everywhere in
invrender. Object space: +x right, +y up, +z toward the canonical camera.
"""

import functools
import math
from typing import List, Optional, Tuple

import torch
from torch import Tensor

__all__ = ["icosphere", "spherical_uvs"]


def _icosahedron() -> Tuple[List[Tuple[float, float, float]], List[Tuple[int, int, int]]]:
    """The 12 vertices (on the unit sphere) and 20 outward counter-clockwise faces."""
    t = (1.0 + math.sqrt(5.0)) / 2.0
    verts = [(-1, t, 0), (1, t, 0), (-1, -t, 0), (1, -t, 0),
             (0, -1, t), (0, 1, t), (0, -1, -t), (0, 1, -t),
             (t, 0, -1), (t, 0, 1), (-t, 0, -1), (-t, 0, 1)]
    faces = [(0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11),
             (1, 5, 9), (5, 11, 4), (11, 10, 2), (10, 7, 6), (7, 1, 8),
             (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8), (3, 8, 9),
             (4, 9, 5), (2, 4, 11), (6, 2, 10), (8, 6, 7), (9, 8, 1)]
    norm = math.sqrt(1.0 + t * t)
    verts = [(x / norm, y / norm, z / norm) for x, y, z in verts]
    return verts, faces


@functools.lru_cache(maxsize=8)
def _icosphere_lists(level: int):
    verts, faces = _icosahedron()
    for _ in range(level):
        cache = {}

        def midpoint(i: int, j: int) -> int:
            key = (i, j) if i < j else (j, i)
            k = cache.get(key)
            if k is None:
                a, b = verts[i], verts[j]
                m = ((a[0] + b[0]) / 2, (a[1] + b[1]) / 2, (a[2] + b[2]) / 2)
                n = math.sqrt(m[0] ** 2 + m[1] ** 2 + m[2] ** 2)
                verts.append((m[0] / n, m[1] / n, m[2] / n))
                k = cache[key] = len(verts) - 1
            return k

        new_faces = []
        for a, b, c in faces:
            ab, bc, ca = midpoint(a, b), midpoint(b, c), midpoint(c, a)
            # Each child keeps its parent's orientation (counter-clockwise from outside).
            new_faces += [(a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca)]
        faces = new_faces
    return tuple(verts), tuple(faces)


def icosphere(level: int = 3, radius: float = 1.0, dtype: Optional[torch.dtype] = None,
              device=None) -> Tuple[Tensor, Tensor]:
    """A geodesic sphere: an icosahedron subdivided ``level`` times, every vertex on the sphere.

    Each subdivision splits every face into four at its edge midpoints (shared midpoints created
    once), then pushes the new vertices to the sphere. ``V = 10 * 4**level + 2``,
    ``F = 20 * 4**level``: 12/20, 42/80, 162/320, 642/1280 (UNICORN's and UMR's template),
    2562/5120 for levels 0..4. The mesh is closed and watertight (every edge in exactly two faces).

    Args:
        level: number of subdivisions, an int >= 0.
        radius: sphere radius (> 0), centred at the origin.
        dtype: floating dtype of the vertices (default: torch's default dtype).
        device: device of both outputs.

    Returns:
        ``verts (V, 3)`` and ``faces (F, 3)`` int64, counter-clockwise seen from outside (normals
        point outward).
    """
    op = "icosphere"
    if isinstance(level, bool) or not isinstance(level, int):
        raise TypeError(f"{op}: argument 'level' must be an int, got {type(level).__name__}")
    if not 0 <= level <= 8:
        raise ValueError(f"{op}: argument 'level' must be in [0, 8], got {level}")
    if isinstance(radius, bool) or not isinstance(radius, (int, float)):
        raise TypeError(f"{op}: argument 'radius' must be a number, got {type(radius).__name__}")
    if not (math.isfinite(radius) and radius > 0):
        raise ValueError(f"{op}: argument 'radius' must be finite and positive, got {radius}")
    dtype = torch.get_default_dtype() if dtype is None else dtype
    if not dtype.is_floating_point:
        raise TypeError(f"{op}: argument 'dtype' must be a floating dtype, got {dtype}")
    verts, faces = _icosphere_lists(level)
    v = torch.tensor(verts, dtype=torch.float64) * float(radius)
    return v.to(dtype=dtype, device=device), torch.tensor(faces, dtype=torch.int64, device=device)


def spherical_uvs(verts: Tensor, faces: Tensor) -> Tensor:
    """Per-face-corner spherical UV coordinates (UNICORN's texture map).

    For a vertex ``(x, y, z)`` at distance ``r`` from the origin::

        u = (atan2(x, z) + pi) / (2 pi),    v = acos(y / r) / pi

    so ``u`` runs around the +y axis (``u = 0.5`` at +z, in front of the canonical camera; the seam
    ``u = 0 ~ 1`` is at -z) and ``v`` goes from 0 at the north pole (+y, top row of the texture) to
    1 at the south pole. A vertex at the origin gets ``u = 0.5, v = 0.5``.

    Seam fix: a face whose three ``u`` span more than 0.5 straddles the seam; its corners with
    small ``u`` get ``u + 1`` so that interpolation across the face does not sweep the whole
    texture. Which corners are "small" is chosen so the face covers the shortest arc of ``u``
    (for a face across the seam: those with ``u < 0.5``; near a pole a face may legitimately span
    a wider arc, and the shortest one is kept). A corner on the polar axis (``x = z = 0``, where
    ``atan2`` is arbitrary) takes the middle of its face's other corners' arc. Hence ``u`` lies in
    ``[0, 2)`` (in ``[0, 1.5)`` for faces spanning at most half the texture); the renderer wraps
    it into ``[0, 1)`` (:class:`invrender.renderers.LayeredRenderer`).

    Args:
        verts: ``(V, 3)`` or ``(B, V, 3)`` float32/float64 vertices.
        faces: ``(F, 3)`` int64 vertex indices.

    Returns:
        ``(F, 3, 2)`` (or ``(B, F, 3, 2)``) corner UVs ``(u, v)`` with ``u`` to the right and ``v``
        down the texture, ready for :func:`invrender.interpolate` as ``(B, F, 3, 2)`` corner
        attributes. Computed without gradient concerns at the poles (``acos`` is not
        differentiable at ``|y| = r``): compute them on the template.
    """
    op = "spherical_uvs"
    if not isinstance(verts, Tensor):
        raise TypeError(f"{op}: argument 'verts' must be a tensor (V, 3), got {type(verts).__name__}")
    if not isinstance(faces, Tensor):
        raise TypeError(f"{op}: argument 'faces' must be a tensor (F, 3), got {type(faces).__name__}")
    if not verts.is_floating_point():
        raise TypeError(f"{op}: argument 'verts' must be float32 or float64, got {verts.dtype}")
    if verts.dim() not in (2, 3) or verts.shape[-1] != 3:
        raise ValueError(f"{op}: argument 'verts' must have shape (V, 3) or (B, V, 3), got {tuple(verts.shape)}")
    if faces.dtype != torch.int64:
        raise TypeError(f"{op}: argument 'faces' must be int64, got {faces.dtype}")
    if faces.dim() != 2 or faces.shape[1] != 3:
        raise ValueError(f"{op}: argument 'faces' must have shape (F, 3), got {tuple(faces.shape)}")
    x, y, z = verts.unbind(-1)
    r = torch.linalg.vector_norm(verts, dim=-1)
    safe_r = torch.where(r > 0, r, torch.ones_like(r))
    u = (torch.atan2(x, z) + math.pi) / (2 * math.pi)
    v = torch.acos((y / safe_r).clamp(-1.0, 1.0)) / math.pi
    u = torch.where(r > 0, u, torch.full_like(u, 0.5))
    v = torch.where(r > 0, v, torch.full_like(v, 0.5))
    uc = u[..., faces]  # (..., F, 3)
    vc = v[..., faces]
    pole = ((x * x + z * z) <= 1e-20 * (r * r))[..., faces]  # on the polar axis (or at the origin)
    return torch.stack([_fix_seam(uc, pole), vc], dim=-1)


def _fix_seam(uc: Tensor, pole: Tensor) -> Tensor:
    """Per face, the shortest arc through the ``u`` of its non-pole corners: the corners below the
    arc's start get ``+1``; pole corners get the arc's middle."""
    inf = torch.full_like(uc, math.inf)
    best, best_span = uc, (torch.where(pole, -inf, uc).amax(-1) - torch.where(pole, inf, uc).amin(-1))
    for k in range(3):
        start = uc[..., k:k + 1]
        shifted = torch.where(uc < start, uc + 1.0, uc)
        span = torch.where(pole, -inf, shifted).amax(-1) - start[..., 0]
        span = torch.where(pole[..., k], inf[..., 0], span)
        better = span < best_span - 1e-12
        best = torch.where(better.unsqueeze(-1), shifted, best)
        best_span = torch.where(better, span, best_span)
    lo = torch.where(pole, inf, best).amin(-1, keepdim=True)
    hi = torch.where(pole, -inf, best).amax(-1, keepdim=True)
    mid = torch.where(pole.all(-1, keepdim=True), torch.full_like(lo, 0.5), (lo + hi) / 2)
    return torch.where(pole, mid.expand_as(best), best)
