"""Reference voxel ops: rotation matrices from angles, affine_grid + grid_sample, sum + exp."""

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor


def rotation_matrix(azimuth, elevation=0.0, roll=0.0) -> Tensor:
    """Reference of :func:`invrender.rotation_matrix`: ``Rz(roll) @ R_orbit(azimuth, elevation)``."""
    tensors = [t for t in (azimuth, elevation, roll) if isinstance(t, Tensor)]
    dtype = tensors[0].dtype if tensors else torch.get_default_dtype()
    device = tensors[0].device if tensors else None
    a, e, r = torch.broadcast_tensors(*(torch.as_tensor(t, dtype=dtype, device=device) for t in (azimuth, elevation, roll)))
    ca, sa, ce, se, cr, sr = a.cos(), a.sin(), e.cos(), e.sin(), r.cos(), r.sin()
    zero = torch.zeros_like(a)
    right = torch.stack([ca, zero, -sa], -1)  # camera axes in object coordinates before roll
    up = torch.stack([-sa * se, ce, -ca * se], -1)
    back = torch.stack([sa * ce, se, ca * ce], -1)
    R = torch.stack([cr[..., None] * right - sr[..., None] * up, sr[..., None] * right + cr[..., None] * up, back], -2)
    return R.reshape(1, 3, 3) if R.dim() == 2 else R


def _batched(rotation: Tensor, batch: int) -> Tensor:
    return rotation.reshape(-1, 3, 3).expand(batch, 3, 3) if rotation.numel() == 9 else rotation


def rotate_voxels(
    voxels: Tensor,
    rotation: Tensor,
    size: Optional[Union[int, Sequence[int]]] = None,
    mode: str = "trilinear",
) -> Tensor:
    """Reference of :func:`invrender.rotate_voxels` with ``affine_grid`` + ``grid_sample``.

    grid_sample's normalised coordinates ``g`` relate to world coordinates by ``g = diag(1, -1, -1) p``
    (its y and z run along rows and slices, ours along -y and -z). The output keeps the input
    spacing, so its world extent is ``size / input_size`` per axis.
    """
    B, C, D, H, W = voxels.shape
    if size is None:
        size = (D, H, W)
    elif isinstance(size, int):
        size = (size, size, size)
    Do, Ho, Wo = size
    R = _batched(rotation, B).to(voxels.dtype)
    flip = torch.diag(voxels.new_tensor([1.0, -1.0, -1.0]))
    extent = torch.diag(voxels.new_tensor([Wo / W, Ho / H, Do / D]))
    theta = flip @ R.transpose(1, 2) @ flip @ extent
    theta = torch.cat([theta, theta.new_zeros(B, 3, 1)], dim=2)
    grid = F.affine_grid(theta, [B, C, Do, Ho, Wo], align_corners=False)
    return F.grid_sample(voxels, grid, mode="bilinear" if mode == "trilinear" else "nearest",
                         padding_mode="zeros", align_corners=False)


def project_voxels(voxels: Tensor, rotation: Optional[Tensor] = None, mode: str = "trilinear", tau: float = 1.0) -> Tensor:
    """Reference of :func:`invrender.project_voxels`: rotate the whole grid, sum over depth."""
    rotated = voxels if rotation is None else rotate_voxels(voxels, rotation, mode=mode)
    return 1.0 - torch.exp(-tau * rotated.sum(dim=2))
