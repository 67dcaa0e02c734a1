"""Shared test helpers: independent numpy/scipy oracles and random inputs."""

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
