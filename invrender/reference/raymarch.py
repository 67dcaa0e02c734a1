"""Reference ray marching: sample positions in view space, grid_sample, exclusive cumprod."""

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..cameras import OrthographicCamera, PerspectiveCamera
from ..ops.raymarch import RaymarchResult


def _samples(camera, H, W, S, dtype, device):
    """View positions (S, H, W, 3), depths (S, H, W) and the sample spacing along the rays."""
    if camera is None or camera == "orthographic":
        camera = OrthographicCamera()
    elif camera == "perspective":
        camera = PerspectiveCamera()
    kw = dict(dtype=dtype, device=device)
    x = -1 + (2 * torch.arange(W, **kw) + 1) / W
    y = 1 - (2 * torch.arange(H, **kw) + 1) / H
    k = torch.arange(S, **kw)
    if isinstance(camera, OrthographicCamera):
        z = 1 - (2 * k + 1) / S
        p = torch.stack(torch.broadcast_tensors(x[None, None, :], y[None, :, None], z[:, None, None]), -1)
        return p, (1 - p[..., 2]), 2.0 / S
    near, far = camera.depth_range
    f = camera.focal_length
    dirs = torch.stack(torch.broadcast_tensors(x[None, :], y[:, None], torch.full((1, 1), -f, **kw)), -1)
    length = dirs.norm(dim=-1, keepdim=True)
    n = dirs / length  # (H, W, 3)
    dt = (far - near) / S
    t = near + (k + 0.5) * dt  # (S,)
    origin = torch.tensor([0.0, 0.0, camera.distance], **kw)
    p = origin + t[:, None, None, None] * n[None]
    depth = t[:, None, None] * f / length[None, ..., 0]
    return p, depth, dt


def raymarch(absorption: Tensor, emission: Optional[Tensor] = None, rotation: Optional[Tensor] = None,
             camera=None, image_size=None, samples=None, background=None, normalize: bool = False,
             density: bool = False, eps: float = 1e-6) -> RaymarchResult:
    """Reference of :func:`invrender.raymarch`: every sample of every ray is materialised
    (O(B H W S) memory), sampled with ``grid_sample`` and composited with ``cumprod``."""
    B, _, D = absorption.shape[:3]
    if image_size is None:
        image_size = tuple(absorption.shape[3:])
    H, W = (image_size, image_size) if isinstance(image_size, int) else image_size
    if camera is None or camera == "orthographic" or isinstance(camera, OrthographicCamera):
        S = D if samples is None else samples
    else:
        cam = PerspectiveCamera() if camera == "perspective" else camera
        near, far = cam.depth_range
        S = max(math.ceil((far - near) * D / 2.0 - 1e-9), 1) if samples is None else samples
    p, z, delta = _samples(camera, H, W, S, absorption.dtype, absorption.device)
    if rotation is None:
        rotation = torch.eye(3, dtype=absorption.dtype, device=absorption.device)
    R = rotation.reshape(-1, 3, 3).expand(B, 3, 3)
    obj = torch.einsum("bji,shwj->bshwi", R, p)  # p_obj = R^T p_view
    grid = obj * torch.tensor([1.0, -1.0, -1.0], dtype=obj.dtype, device=obj.device)
    sample = lambda v: F.grid_sample(v, grid, mode="bilinear", padding_mode="zeros", align_corners=False)  # noqa: E731
    raw = sample(absorption)  # (B, 1, S, H, W)
    a = 1 - torch.exp(-raw.clamp(min=0) * delta) if density else raw.clamp(0, 1)
    ones = torch.ones_like(a[:, :, :1])
    T = torch.cat([ones, torch.cumprod(1 - a, dim=2)[:, :, :-1]], dim=2)
    w = T * a
    alpha = 1 - torch.prod(1 - a, dim=2)
    depth = (w * z).sum(2) / (alpha + eps)
    if emission is None:
        return RaymarchResult(alpha, alpha, depth)
    color = (w * sample(emission)).sum(2)
    image = color / (w.sum(2) + eps) * alpha if normalize else color
    if background is not None:
        bg = torch.as_tensor(background, dtype=image.dtype, device=image.device)
        image = image + (1 - alpha) * (bg.reshape(1, -1, 1, 1) if bg.dim() == 1 else bg)
    return RaymarchResult(image, alpha, depth)
