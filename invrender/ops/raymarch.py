"""Emission-absorption ray marching of voxel volumes (PlatonicGAN / IG-GAN baselines)."""

import math
from typing import NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ._util import check_like, check_real, fake_check, forbid_double_backward, register_fake, require_tensor

from ..cameras import OrthographicCamera, PerspectiveCamera
from .voxel import _batched_rotation, _identity_rotation

_ops = torch.ops.invrender

__all__ = ["RaymarchResult", "raymarch"]


class RaymarchResult(NamedTuple):
    """``image (B, C, H, W)``, ``alpha (B, 1, H, W)``, ``depth (B, 1, H, W)``."""

    image: Tensor
    alpha: Tensor
    depth: Tensor


Camera = Union[None, str, OrthographicCamera, PerspectiveCamera]


def _camera_args(camera: Camera, depth: int, samples: Optional[int], op: str):
    """(samples, perspective, focal, distance, near, far) for the registered op."""
    if camera is None or camera == "orthographic":
        camera = OrthographicCamera()
    elif camera == "perspective":
        camera = PerspectiveCamera()
    if isinstance(camera, OrthographicCamera):
        default, args = depth, (False, 1.0, 0.0, 0.0, 1.0)
    elif isinstance(camera, PerspectiveCamera):
        near, far = camera.depth_range
        # One sample per voxel length (2 / D) along the ray.
        default = math.ceil((far - near) * depth / 2.0 - 1e-9)
        args = (True, camera.focal_length, float(camera.distance), near, far)
    else:
        raise TypeError(f"{op}: argument 'camera' must be None, 'orthographic', 'perspective', an "
                        f"OrthographicCamera or a PerspectiveCamera, got {camera!r}")
    if samples is None:
        samples = max(default, 1)
    elif isinstance(samples, bool) or not isinstance(samples, int):
        raise TypeError(f"{op}: argument 'samples' must be an int, got {type(samples).__name__}")
    return (samples,) + args


def _image_size(image_size, absorption: Tensor, op: str) -> Tuple[int, int]:
    if image_size is None:
        return (absorption.shape[3], absorption.shape[4]) if absorption.dim() == 5 else (0, 0)
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        return (image_size, image_size)
    if isinstance(image_size, (tuple, list, torch.Size)) and len(image_size) == 2 and all(
            isinstance(s, int) and not isinstance(s, bool) for s in image_size):
        return (int(image_size[0]), int(image_size[1]))
    raise ValueError(f"{op}: argument 'image_size' must be an int or a pair (H, W), got {image_size!r}")


def _background(background, image: Tensor, op: str) -> Tensor:
    if not isinstance(background, Tensor):
        if isinstance(background, (bool, str)) or not isinstance(background, (int, float, Sequence)):
            raise TypeError(f"{op}: argument 'background' must be a tensor, a number or a sequence of "
                            f"numbers, got {type(background).__name__}")
        background = torch.as_tensor(background, dtype=image.dtype, device=image.device)
    if background.device != image.device:
        raise ValueError(f"{op}: argument 'background' is on {background.device} but the volume is on "
                         f"{image.device}; they must be on one device")
    if background.dim() == 1:  # a colour (C,)
        background = background.reshape(1, -1, 1, 1)
    try:
        torch.broadcast_shapes(background.shape, image.shape)
    except RuntimeError:
        raise ValueError(f"{op}: argument 'background' of shape {tuple(background.shape)} does not "
                         f"broadcast to the image shape {tuple(image.shape)}") from None
    return background.to(image.dtype)


def raymarch(
    absorption: Tensor,
    emission: Optional[Tensor] = None,
    rotation: Optional[Tensor] = None,
    camera: Camera = None,
    image_size: Union[None, int, Sequence[int]] = None,
    samples: Optional[int] = None,
    background=None,
    normalize: bool = False,
    density: bool = False,
    eps: float = 1e-6,
) -> RaymarchResult:
    """Emission-absorption ray marching of a voxel volume (Henzler et al. 2019, PlatonicGAN).

    Each ray samples the rotated volume trilinearly (zero outside) at ``samples`` points front to
    back. With per-sample absorption ``a_i`` and transmittance ``T_i = prod_{j<i} (1 - a_j)``:

    - ``alpha = 1 - prod_i (1 - a_i)``;
    - without ``emission`` (absorption-only): ``image = alpha``;
    - with ``emission``: ``image = sum_i T_i a_i e_i + (1 - alpha) * background``; with
      ``normalize=True`` the first term becomes ``(sum_i T_i a_i e_i / (sum_i T_i a_i + eps)) *
      alpha``, the normalised form of Lunz et al. 2020 (appendix C), here with the exclusive
      transmittance (so that a fully opaque sample shows its own colour);
    - ``depth = sum_i T_i a_i z_i / (alpha + eps)``, the expected depth (0 where nothing is hit).

    The kernel keeps no per-sample state: the backward re-marches each ray (in chunks, to get the
    transmittance back to front without dividing by ``1 - a``), so ``a`` may be exactly 0 or 1 and
    the extra memory is O(B H W).

    Args:
        absorption: ``(B, 1, D, H, W)`` float32/float64 grid over ``[-1, 1]^3`` (layout of
            :func:`invrender.project_voxels`). Per-sample absorption, **clamped to [0, 1]**
            (gradient 0 where the sampled value is outside); with ``density=True`` a density
            ``sigma`` (clamped at 0) turned into ``a = 1 - exp(-sigma * delta)`` for the sample
            spacing ``delta`` (2 / samples orthographic, (far - near) / samples perspective).
        emission: optional ``(B, C, D, H, W)`` colours, same dtype and device.
        rotation: ``(B, 3, 3)``, ``(3, 3)`` or ``(1, 3, 3)`` object-to-view rotation (see
            :func:`invrender.rotation_matrix`); None: identity.
        camera: None or ``"orthographic"`` (:class:`invrender.cameras.OrthographicCamera`), or
            ``"perspective"`` / a :class:`invrender.cameras.PerspectiveCamera` (fov, distance,
            near, far).
        image_size: int or ``(H, W)``; default the grid's ``(H, W)``. Non-square allowed.
        samples: samples per ray (at most 16384); default one per voxel length along the ray
            (``D`` for the orthographic camera).
        background: with ``emission`` only: a tensor broadcastable to ``(B, C, H, W)``, a colour
            ``(C,)`` or a number; None: black.
        normalize: the normalised emission form (above).
        density: interpret ``absorption`` as a density (above).
        eps: the small constant of the depth and normalisation quotients, > 0; at least the square
            root of the dtype's smallest normal number (1.1e-19 in float32), so that the gradient of
            the quotients, which holds eps^2, stays finite.

    Returns:
        :class:`RaymarchResult` ``(image (B, C, H, W), alpha (B, 1, H, W), depth (B, 1, H, W))``,
        ``C = 1`` without emission. Differentiable in ``absorption``, ``emission``, ``background``
        and ``rotation``.
    """
    op = "raymarch"
    absorption = require_tensor(absorption, "absorption", op)
    if emission is not None:
        emission = require_tensor(emission, "emission", op)
    elif background is not None:
        raise ValueError(f"{op}: argument 'background' needs 'emission' (absorption-only rendering "
                         "has no colour to composite)")
    rotation = _identity_rotation(absorption) if rotation is None else _batched_rotation(rotation, absorption, op)
    depth_dim = absorption.shape[2] if absorption.dim() == 5 else 1
    args = _camera_args(camera, depth_dim, samples, op)
    size = _image_size(image_size, absorption, op)
    # eps^2 appears in the gradient of the quotients (at alpha = 0): it must not underflow either.
    dtype = absorption.dtype if absorption.is_floating_point() else torch.float64  # the op reports the dtype
    eps = check_real(eps, "eps", op, dtype, positive=True, lo=math.sqrt(torch.finfo(dtype).tiny))
    color, alpha, depth_sum = _ops.raymarch_forward(absorption, emission, rotation, list(size), *args, bool(density))
    depth = depth_sum / (alpha + eps)
    if emission is None:
        return RaymarchResult(alpha, alpha, depth)
    image = color * (alpha / (alpha + eps)) if normalize else color
    if background is not None:
        image = image + (1.0 - alpha) * _background(background, image, op)
    return RaymarchResult(image, alpha, depth)


# ------------------------------------------------------------------------------------------------
# Autograd and fake kernels.

_PARAMS = ("image_size", "samples", "perspective", "focal", "distance", "near", "far", "density")


def _raymarch_setup(ctx, inputs, output):
    absorption, emission, rotation = inputs[:3]
    ctx.save_for_backward(absorption, emission, rotation)
    ctx.params = inputs[3:]


def _raymarch_backward(ctx, grad_color, grad_alpha, grad_depth):
    absorption, emission, rotation = ctx.saved_tensors
    B = absorption.shape[0]
    H, W = ctx.params[0]
    C = 0 if emission is None else emission.shape[1]
    zeros = lambda *shape: absorption.new_zeros(shape)  # noqa: E731
    grad_color = zeros(B, C, H, W) if grad_color is None else grad_color
    grad_alpha = zeros(B, 1, H, W) if grad_alpha is None else grad_alpha
    grad_depth = zeros(B, 1, H, W) if grad_depth is None else grad_depth
    gabs, gem, grot = _ops.raymarch_backward(grad_color, grad_alpha, grad_depth, absorption, emission, rotation,
                                             *ctx.params)
    return (gabs, gem if emission is not None else None, grot) + (None,) * len(_PARAMS)


torch.library.register_autograd("invrender::raymarch_forward", _raymarch_backward, setup_context=_raymarch_setup)


forbid_double_backward("raymarch_backward", "raymarch")


def _fake_check_raymarch(absorption, emission, rotation):
    for name, t in (("emission", emission), ("rotation", rotation)):
        if t is not None:
            check_like(t, name, absorption, "absorption", "raymarch")
    fake_check(absorption.dim() == 5 and absorption.shape[1] == 1,
                "raymarch: argument 'absorption' must be a 5-D tensor (B, 1, D, H, W)")
    fake_check(rotation.dim() == 3 and rotation.shape[0] == absorption.shape[0],
                "raymarch: argument 'rotation' must have shape (B, 3, 3)")


@register_fake("invrender::raymarch_forward")
def _(absorption, emission, rotation, image_size, samples, perspective, focal, distance, near, far, density):
    _fake_check_raymarch(absorption, emission, rotation)
    B, (H, W) = absorption.shape[0], image_size
    C = 0 if emission is None else emission.shape[1]
    return absorption.new_empty((B, C, H, W)), absorption.new_empty((B, 1, H, W)), absorption.new_empty((B, 1, H, W))


@register_fake("invrender::raymarch_backward")
def _(grad_color, grad_alpha, grad_depth, absorption, emission, rotation, *params):
    gem = absorption.new_empty((0,)) if emission is None else torch.empty_like(emission, memory_format=torch.contiguous_format)
    return (torch.empty_like(absorption, memory_format=torch.contiguous_format), gem,
            absorption.new_empty((absorption.shape[0], 3, 3)))
