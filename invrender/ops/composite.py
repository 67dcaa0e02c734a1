"""Layered compositing of rasterized faces: UNICORN's front-to-back alpha compositing
(:func:`composite_layers`, with :func:`layer_alpha`) and SoftRas aggregation restricted to the
layers of each pixel (:func:`softras_blend`)."""

import math
from numbers import Real
from typing import NamedTuple, Sequence, Tuple

import torch
from torch import Tensor

from ._util import (check_like, check_real, fake_check, forbid_double_backward, fragment_field, register_fake,
                    require_tensor)


_ops = torch.ops.invrender

__all__ = ["CompositeResult", "SoftrasResult", "composite_layers", "layer_alpha", "softras_blend"]


class CompositeResult(NamedTuple):
    """``image (B, C, H, W)``, ``mask (B, 1, H, W)``."""

    image: Tensor
    mask: Tensor


class SoftrasResult(NamedTuple):
    """``image (B, C, H, W)``, ``silhouette (B, 1, H, W)``."""

    image: Tensor
    silhouette: Tensor


# ------------------------------------------------------------------------------------------------
# Argument handling shared with invrender.reference.composite


def _check_layers(layers: Tensor, name: str, colors: Tensor, op: str) -> Tuple[int, int, int, int, int]:
    """Ranks and sizes of ``layers`` (B, H, W, L) and ``colors`` (B, H, W, L, C): (B, C, H, W, L)."""
    require_tensor(layers, name, op)
    require_tensor(colors, "colors", op)
    if layers.dim() != 4:
        raise ValueError(f"{op}: argument '{name}' must be a 4-D tensor (B, H, W, L), got shape {tuple(layers.shape)}")
    if colors.dim() != 5:
        raise ValueError(f"{op}: argument 'colors' must be a 5-D tensor (B, H, W, L, C), got shape {tuple(colors.shape)}")
    if tuple(colors.shape[:4]) != tuple(layers.shape):
        raise ValueError(f"{op}: argument 'colors' must have shape (B, H, W, L, C) with (B, H, W, L) = "
                         f"{tuple(layers.shape)} like '{name}' (same number of layers L), got {tuple(colors.shape)}")
    B, H, W, L = layers.shape
    return B, colors.shape[4], H, W, L


def _background(background, size: Tuple[int, int, int, int], like: Tensor, op: str) -> Tensor:
    """``background`` (None, a number, a colour (C,) or a tensor broadcastable to (B, C, H, W))
    as a contiguous (B, C, H, W) tensor; its gradient reduces back through the expand."""
    if background is None:
        return like.new_zeros(size)
    if not isinstance(background, Tensor):
        if isinstance(background, (bool, str)) or not isinstance(background, (Real, Sequence)):
            raise TypeError(f"{op}: argument 'background' must be None, a tensor, a number or a sequence of "
                            f"numbers, got {type(background).__name__}")
        background = torch.as_tensor(background, dtype=like.dtype, device=like.device)
    if not background.is_floating_point():
        raise TypeError(f"{op}: argument 'background' must be a floating-point tensor, got {background.dtype}")
    if background.dtype != like.dtype:
        raise TypeError(f"{op}: argument 'background' has dtype {background.dtype} but the layers have dtype "
                        f"{like.dtype}; they must match")
    if background.device != like.device:
        raise ValueError(f"{op}: argument 'background' is on {background.device} but the layers are on "
                         f"{like.device}; they must be on one device")
    if background.dim() == 1:  # a colour (C,)
        background = background.reshape(1, -1, 1, 1)
    shape = tuple(background.shape)
    if len(shape) > 4 or any(s != 1 and s != t for s, t in zip(reversed(shape), reversed(size))):
        raise ValueError(f"{op}: argument 'background' of shape {tuple(shape)} is neither a colour (C,) nor "
                         f"broadcastable to the image shape (B, C, H, W) = {tuple(size)}")
    return background.expand(size).contiguous()


def _check_depth_range(znear, zfar, eps, dtype: torch.dtype, op: str) -> Tuple[float, float, float]:
    znear, zfar, eps = (check_real(v, n, op, dtype) for n, v in (("znear", znear), ("zfar", zfar), ("eps", eps)))
    if not znear < zfar:
        raise ValueError(f"{op}: arguments 'znear' and 'zfar' must satisfy znear < zfar, got znear={znear}, zfar={zfar}")
    # The kernels divide by zfar - znear in the dtype: it must be positive and finite there.
    span = torch.tensor(zfar, dtype=dtype) - torch.tensor(znear, dtype=dtype)
    if not (0 < span.item() < math.inf):
        raise ValueError(f"{op}: arguments 'znear' = {znear:g} and 'zfar' = {zfar:g}: zfar - znear must be positive and "
                         f"finite in {dtype}, got {span.item():g}")
    return znear, zfar, eps


def _softras_args(fragments, colors, sigma, gamma, znear, zfar, eps, op: str):
    """Checks the arguments of softras_blend: ((face_idx, depth, dist), (B, C, H, W), (gamma, znear,
    zfar, eps)) with the numbers as floats usable in the fragments' dtype."""
    fields = tuple(fragment_field(fragments, name, op) for name in ("face_idx", "depth", "dist"))
    dist = fields[2]
    B, C, H, W, _ = _check_layers(dist, "fragments.dist", colors, op)
    dtype = dist.dtype if dist.is_floating_point() else None  # layer_alpha reports a bad dtype
    check_real(sigma, "sigma", op, dtype, positive=True)
    gamma = check_real(gamma, "gamma", op, dtype, positive=True)
    return fields, (B, C, H, W), (gamma, *_check_depth_range(znear, zfar, eps, dtype or torch.float64, op))


# ------------------------------------------------------------------------------------------------
# Public functions


def layer_alpha(fragments, sigma: float, kind: str = "exp") -> Tensor:
    """Per-layer opacity of rasterized fragments (pure PyTorch, differentiable in ``dist``).

    - ``kind="exp"`` (UNICORN, Monnier et al. 2022): ``alpha = exp(-max(dist, 0) / sigma)``,
      exactly 1 inside a face;
    - ``kind="sigmoid"`` (SoftRas, Liu et al. 2019): ``alpha = sigmoid(-dist / sigma)``.

    Empty layers (``face_idx < 0``) get ``alpha = 0`` and a zero gradient, whatever their ``dist``
    holds (even inf or NaN).

    Args:
        fragments: any object with attributes ``face_idx`` ``(B, H, W, L)`` int64 (index of the
            face seen in layer l of the pixel, -1 for an empty layer) and ``dist`` ``(B, H, W, L)``
            float32/float64, the signed squared distance from the pixel centre to that face in NDC
            (negative inside the face), e.g. :class:`invrender.Fragments`.
        sigma: sharpness, a positive number (1e-4 in UNICORN and SoftRas).
        kind: ``"exp"`` or ``"sigmoid"``.

    Returns:
        ``alpha`` ``(B, H, W, L)`` in [0, 1], the dtype and device of ``dist``.
    """
    op = "layer_alpha"
    face_idx = fragment_field(fragments, "face_idx", op)
    dist = fragment_field(fragments, "dist", op)
    if kind not in ("exp", "sigmoid"):
        raise ValueError(f"{op}: argument 'kind' must be \"exp\" or \"sigmoid\", got {kind!r}")
    if face_idx.dtype != torch.int64:
        raise TypeError(f"{op}: argument 'fragments.face_idx' must be int64, got {face_idx.dtype}")
    if not dist.is_floating_point():
        raise TypeError(f"{op}: argument 'fragments.dist' must be float32 or float64, got {dist.dtype}")
    sigma = check_real(sigma, "sigma", op, dist.dtype, positive=True)
    if face_idx.shape != dist.shape:
        raise ValueError(f"{op}: 'fragments.face_idx' {tuple(face_idx.shape)} and 'fragments.dist' "
                         f"{tuple(dist.shape)} must have one shape (B, H, W, L)")
    valid = face_idx >= 0
    zero = torch.zeros((), dtype=dist.dtype, device=dist.device)
    d = torch.where(valid, dist, zero)  # no inf / NaN of an empty layer reaches the gradient
    if kind == "exp":
        a = torch.exp(-d.clamp(min=0) / sigma)
    else:
        a = torch.sigmoid(-d / sigma)
    return torch.where(valid, a, zero)


def composite_layers(alpha: Tensor, colors: Tensor, background=None) -> CompositeResult:
    """Front-to-back alpha compositing of per-pixel layers (UNICORN, Monnier et al. 2022, app. C).

    With ``T_0 = 1`` and ``T_{l+1} = T_l (1 - alpha_l)`` over the layers ``l = 0..L-1`` of a pixel
    (layer 0 nearest the camera)::

        image = sum_l T_l alpha_l colors_l + T_L background,     mask = 1 - T_L.

    The backward never divides by ``1 - alpha`` (it accumulates the colour behind each layer back to
    front), so layers with ``alpha`` exactly 0 or 1 get exact, finite gradients. One thread per
    pixel, no atomics: deterministic on CPU and CUDA.

    Args:
        alpha: ``(B, H, W, L)`` float32/float64 layer opacities, expected in [0, 1] (not checked),
            e.g. from :func:`layer_alpha`.
        colors: ``(B, H, W, L, C)`` layer colours, same dtype and device as ``alpha``.
        background: None (black), a number, a colour ``(C,)``, or a tensor broadcastable to
            ``(B, C, H, W)``; same dtype and device as ``alpha`` when a tensor.

    Returns:
        :class:`CompositeResult` ``(image (B, C, H, W), mask (B, 1, H, W))``, differentiable in
        ``alpha``, ``colors`` and ``background``. ``L = 0`` gives the background and mask 0.
    """
    op = "composite_layers"
    B, C, H, W, _ = _check_layers(alpha, "alpha", colors, op)
    bg = _background(background, (B, C, H, W), alpha, op)
    image, mask = _ops.composite_layers_forward(alpha, colors, bg)
    return CompositeResult(image, mask)


def softras_blend(fragments, colors: Tensor, sigma: float = 1e-4, gamma: float = 1e-4, znear: float = 1.0,
                  zfar: float = 100.0, background=None, eps: float = 1e-3) -> SoftrasResult:
    """SoftRas aggregation (Liu et al. 2019) over the ``L`` layers of each pixel.

    With ``prob_l = sigmoid(-dist_l / sigma)`` (0 on empty layers, ``face_idx < 0``), over the valid
    layers of a pixel::

        z'_l = (zfar - depth_l) / (zfar - znear)
        w_l  = prob_l exp(z'_l / gamma),    w_bg = exp(eps / gamma)
        image = (sum_l w_l colors_l + w_bg background) / (sum_l w_l + w_bg)
        silhouette = 1 - prod_l (1 - prob_l)

    The exponentials are evaluated relative to ``zmax = max(eps, max z'_l over valid layers)``
    (PyTorch3D's ``softmax_rgb_blend`` numerics, without its clamp of the background weight), which
    does not change the image and keeps every gradient finite. Where all the weights underflow with
    it (the front-most valid layers have ``prob`` exactly 0 and everything else lies more than about
    700 ``gamma`` behind in ``z'``, 88 ``gamma`` in float32), ``zmax`` is taken over the layers with
    ``prob > 0`` instead, so the image stays finite; a ``prob``-0 layer whose weight would then
    overflow gets a zero ``d image / d prob``. The silhouette backward uses prefix and suffix
    products (no division by ``1 - prob``). Empty layers are ignored and get zero gradients.

    Args:
        fragments: any object with attributes ``face_idx`` ``(B, H, W, L)`` int64 (-1: empty
            layer), ``dist`` ``(B, H, W, L)`` float32/float64 signed squared distance to the face
            (negative inside) and ``depth`` ``(B, H, W, L)`` view depth of the face at the pixel,
            e.g. :class:`invrender.Fragments`. Differentiable in ``dist`` and ``depth``.
        colors: ``(B, H, W, L, C)`` layer colours, same dtype and device.
        sigma: occupancy sharpness (> 0); 1e-4 in SoftRas.
        gamma: depth softmax temperature (> 0); 1e-4 in SoftRas.
        znear, zfar: depth normalisation range, ``znear < zfar``.
        background: None (black), a number, a colour ``(C,)`` or a tensor broadcastable to
            ``(B, C, H, W)``.
        eps: the background's normalised inverse depth (1e-3 in SoftRas).

    Returns:
        :class:`SoftrasResult` ``(image (B, C, H, W), silhouette (B, 1, H, W))``, differentiable in
        ``fragments.dist``, ``fragments.depth``, ``colors`` and ``background``.
    """
    op = "softras_blend"
    (face_idx, depth, dist), (B, C, H, W), (gamma, znear, zfar, eps) = _softras_args(
        fragments, colors, sigma, gamma, znear, zfar, eps, op)
    prob = layer_alpha(fragments, sigma, kind="sigmoid")
    bg = _background(background, (B, C, H, W), prob, op)
    image, silhouette = _ops.softras_blend_forward(prob, depth, face_idx, colors, bg, gamma, znear, zfar, eps)
    return SoftrasResult(image, silhouette)


# ------------------------------------------------------------------------------------------------
# Autograd and fake kernels.


def _zeros_if_none(grad, like: Tensor, shape):
    return like.new_zeros(shape) if grad is None else grad


def _composite_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _composite_backward(ctx, grad_image, grad_mask):
    alpha, colors, background = ctx.saved_tensors
    B, H, W, _ = alpha.shape
    C = colors.shape[4]
    grad_image = _zeros_if_none(grad_image, alpha, (B, C, H, W))
    grad_mask = _zeros_if_none(grad_mask, alpha, (B, 1, H, W))
    return tuple(_ops.composite_layers_backward(grad_image, grad_mask, alpha, colors, background))


torch.library.register_autograd("invrender::composite_layers_forward", _composite_backward,
                                setup_context=_composite_setup)


def _softras_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:5])
    ctx.params = inputs[5:]


def _softras_backward(ctx, grad_image, grad_silhouette):
    prob, depth, face_idx, colors, background = ctx.saved_tensors
    B, H, W, _ = prob.shape
    C = colors.shape[4]
    grad_image = _zeros_if_none(grad_image, prob, (B, C, H, W))
    grad_silhouette = _zeros_if_none(grad_silhouette, prob, (B, 1, H, W))
    gp, gd, gc, gbg = _ops.softras_blend_backward(grad_image, grad_silhouette, prob, depth, face_idx, colors,
                                                  background, *ctx.params)
    return gp, gd, None, gc, gbg, None, None, None, None


torch.library.register_autograd("invrender::softras_blend_forward", _softras_backward, setup_context=_softras_setup)


forbid_double_backward("composite_layers_backward", "composite_layers")
forbid_double_backward("softras_blend_backward", "softras_blend")


def _fake_check_layers(layers, name, colors, background, op):
    for arg, t in (("colors", colors), ("background", background)):
        check_like(t, arg, layers, name, op)
    fake_check(layers.dim() == 4, f"{op}: argument '{name}' must be a 4-D tensor (B, H, W, L)")
    fake_check(colors.dim() == 5, f"{op}: argument 'colors' must be a 5-D tensor (B, H, W, L, C)")
    B, H, W, _ = layers.shape
    C = colors.shape[4]
    fake_check(background.dim() == 4, f"{op}: argument 'background' must have shape (B, C, H, W)")
    return B, C, H, W


@register_fake("invrender::composite_layers_forward")
def _(alpha, colors, background):
    B, C, H, W = _fake_check_layers(alpha, "alpha", colors, background, "composite_layers")
    return alpha.new_empty((B, C, H, W)), alpha.new_empty((B, 1, H, W))


@register_fake("invrender::composite_layers_backward")
def _(grad_image, grad_mask, alpha, colors, background):
    _fake_check_layers(alpha, "alpha", colors, background, "composite_layers_backward")
    return alpha.new_empty(alpha.shape), colors.new_empty(colors.shape), background.new_empty(background.shape)


@register_fake("invrender::softras_blend_forward")
def _(prob, depth, face_idx, colors, background, gamma, znear, zfar, eps):
    B, C, H, W = _fake_check_layers(prob, "prob", colors, background, "softras_blend")
    return prob.new_empty((B, C, H, W)), prob.new_empty((B, 1, H, W))


@register_fake("invrender::softras_blend_backward")
def _(grad_image, grad_silhouette, prob, depth, face_idx, colors, background, gamma, znear, zfar, eps):
    _fake_check_layers(prob, "prob", colors, background, "softras_blend_backward")
    return (prob.new_empty(prob.shape), depth.new_empty(depth.shape), colors.new_empty(colors.shape),
            background.new_empty(background.shape))
