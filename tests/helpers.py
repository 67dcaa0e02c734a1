"""Shared test helpers: independent numpy/scipy oracles and random inputs."""

import math
from fractions import Fraction

import numpy as np
import torch
from scipy import ndimage

import invrender


def random_rotation(batch, dtype=torch.float64, device="cpu", generator=None):
    """Random camera rotations from uniformly drawn azimuth, elevation and roll."""
    angles = torch.rand(3, batch, dtype=dtype, generator=generator) * torch.tensor([6.2, 3.0, 6.2], dtype=dtype)[:, None]
    angles[1] -= 1.5
    return invrender.rotation_matrix(*angles.to(device))


def sample_coordinates(in_shape, out_shape, rotation):
    """Continuous input indices (d, h, w) sampled by each output voxel, computed in numpy.

    in_shape (D, H, W), out_shape (Do, Ho, Wo), rotation (3, 3) numpy. Returns (3, Do, Ho, Wo).
    """
    D, H, W = in_shape
    Do, Ho, Wo = out_shape
    d, h, w = np.meshgrid(np.arange(Do), np.arange(Ho), np.arange(Wo), indexing="ij")
    # Output voxel centres in view space, with the input's voxel spacing.
    x = (2 * w + 1 - Wo) / W
    y = (Ho - 2 * h - 1) / H
    z = (Do - 2 * d - 1) / D
    p = np.stack([x, y, z]).reshape(3, -1)
    q = rotation.T @ p  # object coordinates
    uw = (q[0] + 1) * W / 2 - 0.5
    uh = (1 - q[1]) * H / 2 - 0.5
    ud = (1 - q[2]) * D / 2 - 0.5
    return np.stack([ud, uh, uw]).reshape(3, Do, Ho, Wo)


def oracle_rotate(voxels, rotation, size=None, order=1):
    """scipy.ndimage.map_coordinates oracle of rotate_voxels (zero padding, 'grid-constant')."""
    vox = voxels.detach().cpu().double().numpy()
    rot = rotation.detach().cpu().double().numpy().reshape(-1, 3, 3)
    B, C = vox.shape[:2]
    size = tuple(vox.shape[2:]) if size is None else tuple(size)
    out = np.zeros((B, C) + size)
    for b in range(B):
        coords = sample_coordinates(vox.shape[2:], size, rot[b if rot.shape[0] > 1 else 0])
        for c in range(C):
            out[b, c] = ndimage.map_coordinates(vox[b, c], coords, order=order, mode="grid-constant", cval=0.0)
    return out


def oracle_project(voxels, rotation, tau=1.0, order=1):
    rotated = oracle_rotate(voxels, rotation, order=order)
    return 1.0 - np.exp(-tau * rotated.sum(axis=2))


def near_tie(coords, eps=1e-6):
    """Mask of samples whose nearest cell is ambiguous (a coordinate within eps of a half-integer)."""
    frac = np.abs((coords + 0.5) - np.round(coords + 0.5))
    return (frac < eps).any(axis=0)


def oracle_raymarch(absorption, emission=None, rotation=None, camera=None, image_size=None, samples=None,
                    background=None, density=False, eps=1e-6):
    """Plain numpy loop over rays and samples (scipy trilinear sampling) of invrender.raymarch.

    Written from the formulas, independently of the op and of the torch reference. ``camera`` is
    None (orthographic) or an ``invrender.PerspectiveCamera``. Returns numpy (image, alpha, depth);
    ``image`` is the plain (not normalised) emission form, or alpha without emission.
    """
    a_vol = absorption.detach().double().numpy()
    e_vol = None if emission is None else emission.detach().double().numpy()
    B, _, D, H, W = a_vol.shape
    Hi, Wi = (H, W) if image_size is None else image_size
    rot = np.eye(3)[None].repeat(B, 0) if rotation is None else rotation.detach().double().numpy().reshape(-1, 3, 3)
    rot = np.broadcast_to(rot, (B, 3, 3))
    C = 0 if e_vol is None else e_vol.shape[1]
    image, alpha, depth = np.zeros((B, max(C, 1), Hi, Wi)), np.zeros((B, 1, Hi, Wi)), np.zeros((B, 1, Hi, Wi))
    for b in range(B):
        for i in range(Hi):
            for j in range(Wi):
                x, y = -1 + (2 * j + 1) / Wi, 1 - (2 * i + 1) / Hi
                if camera is None:
                    S = D if samples is None else samples
                    ks = np.arange(S)
                    pts = np.stack([np.full(S, x), np.full(S, y), 1 - (2 * ks + 1) / S], 1)
                    zs, delta = (2 * ks + 1) / S, 2 / S
                else:
                    near, far = camera.depth_range
                    f = 1 / np.tan(np.radians(camera.fov) / 2)
                    S = int(np.ceil((far - near) * D / 2 - 1e-9)) if samples is None else samples
                    d = np.array([x, y, -f]) / np.linalg.norm([x, y, -f])
                    ts = near + (np.arange(S) + 0.5) * (far - near) / S
                    pts = np.array([0, 0, camera.distance]) + ts[:, None] * d
                    zs, delta = ts * f / np.linalg.norm([x, y, -f]), (far - near) / S
                q = pts @ rot[b]  # rows: R^T p
                coords = np.stack([(1 - q[:, 2]) * D / 2 - 0.5, (1 - q[:, 1]) * H / 2 - 0.5, (q[:, 0] + 1) * W / 2 - 0.5])
                raw = ndimage.map_coordinates(a_vol[b, 0], coords, order=1, mode="grid-constant", cval=0.0)
                a = 1 - np.exp(-np.maximum(raw, 0) * delta) if density else np.clip(raw, 0, 1)
                em = [ndimage.map_coordinates(e_vol[b, c], coords, order=1, mode="grid-constant", cval=0.0) for c in range(C)]
                T, col, zsum = 1.0, np.zeros(C), 0.0
                for k in range(S):
                    w = T * a[k]
                    col += w * np.array([e[k] for e in em]) if C else 0
                    zsum += w * zs[k]
                    T *= 1 - a[k]
                alpha[b, 0, i, j] = 1 - T
                depth[b, 0, i, j] = zsum / (1 - T + eps)
                if C:
                    image[b, :, i, j] = col
                    if background is not None:
                        image[b, :, i, j] += T * np.asarray(background, dtype=float).reshape(-1)
                else:
                    image[b, 0, i, j] = 1 - T
    return image, alpha, depth


# ------------------------------------------------------------------------------------------------
# Exact oracles for boundary tests (issue 13): rational arithmetic, so ties and boundaries are
# decided exactly, not by the rounding of the code under test.


def axis_weights(n_in, n_out, scale=1, mode="trilinear"):
    """(n_out, n_in) numpy weights with which output index i of one grid axis reads input index j,
    for a diagonal rotation whose entry on this axis is ``scale`` (a float, taken exactly).

    From the conventions: output centre ``x = (2i + 1 - n_out) / n_in`` (the input's spacing),
    object point ``scale * x``, input index ``u = (scale * x + 1) n_in / 2 - 1/2`` (the same along
    the flipped axes h and d). Trilinear: the hat ``max(0, 1 - |u - j|)`` over the input cells
    (zero padding); nearest: 1 at the cell containing the point, ``j = floor(u + 1/2)`` for
    ``-1/2 <= u < n_in - 1/2`` (cells half-open, so a point on a cell face belongs to the upper
    cell). Computed in fractions: exact at ties.
    """
    s = Fraction(scale)
    out = np.zeros((n_out, n_in))
    for i in range(n_out):
        x = Fraction(2 * i + 1 - n_out, n_in)
        u = (s * x + 1) * Fraction(n_in, 2) - Fraction(1, 2)
        if mode == "nearest":
            if Fraction(-1, 2) <= u < n_in - Fraction(1, 2):
                out[i, math.floor(u + Fraction(1, 2))] = 1.0
        else:
            for j in range(n_in):
                out[i, j] = float(max(Fraction(0), 1 - abs(u - j)))
    return out


def separable_resample(voxels, diag=(1, 1, 1), size=None, mode="trilinear", adjoint=False):
    """rotate_voxels by the diagonal matrix ``diag(sx, sy, sz)`` in closed form (float64 numpy):
    the axes separate, ``out = vox x_d Md x_h Mh x_w Mw`` with :func:`axis_weights`. With
    ``adjoint``, ``voxels`` is an output-shaped gradient and the result the input gradient (the
    transposed weights; ``size`` is then the input grid)."""
    v = voxels.detach().cpu().double().numpy() if isinstance(voxels, torch.Tensor) else np.asarray(voxels)
    shape = tuple(v.shape[-3:])
    size = shape if size is None else tuple(size)
    sx, sy, sz = diag
    if adjoint:  # v has the output shape, size is the input's
        m = [axis_weights(size[0], shape[0], sz, mode).T, axis_weights(size[1], shape[1], sy, mode).T,
             axis_weights(size[2], shape[2], sx, mode).T]
    else:
        m = [axis_weights(shape[0], size[0], sz, mode), axis_weights(shape[1], size[1], sy, mode),
             axis_weights(shape[2], size[2], sx, mode)]
    return np.einsum("...dhw,Dd,Hh,Ww->...DHW", v, *m)


def exact_dist2_to_segment(a, b, p):
    """Squared distance from point p to segment a-b, in fractions (inputs: pairs of floats)."""
    ax, ay, bx, by, px, py = (Fraction(c) for c in (*a, *b, *p))
    abx, aby, apx, apy = bx - ax, by - ay, px - ax, py - ay
    l2 = abx * abx + aby * aby
    t = min(max((apx * abx + apy * aby) / l2, Fraction(0)), Fraction(1)) if l2 else Fraction(0)
    dx, dy = apx - t * abx, apy - t * aby
    return dx * dx + dy * dy


def exact_coverage(tri, p):
    """(inside, squared distance to the boundary) of a counter-clockwise triangle ((x, y) x 3) at p,
    exactly: inside when every edge function is >= 0 (points on an edge are inside)."""
    inside = True
    d2 = None
    for k in range(3):
        a, b = tri[(k + 1) % 3], tri[(k + 2) % 3]
        e = ((Fraction(b[0]) - Fraction(a[0])) * (Fraction(p[1]) - Fraction(a[1]))
             - (Fraction(b[1]) - Fraction(a[1])) * (Fraction(p[0]) - Fraction(a[0])))
        inside = inside and e >= 0
        dk = exact_dist2_to_segment(a, b, p)
        d2 = dk if d2 is None else min(d2, dk)
    return inside, d2
