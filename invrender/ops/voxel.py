"""Voxel ops: camera rotations, rotation (resampling) of voxel grids, visual-hull projection.

Conventions: a grid ``(B, C, D, H, W)`` spans ``[-1, 1]^3`` with voxel centres at
``-1 + (2i + 1) / N``; index ``w`` runs along +x, ``h`` along -y (``h = 0`` is the top row) and ``d``
along -z (``d = 0`` is the front slice, nearest the camera). A rotation ``R`` maps object to view
coordinates, ``p_view = R @ p_obj``.
"""

from numbers import Integral
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from ._util import check_like, fake_check, forbid_double_backward, register_fake, require_tensor

_ops = torch.ops.invrender

__all__ = ["rotation_matrix", "rotate_voxels", "project_voxels"]


# ------------------------------------------------------------------------------------------------
# Argument handling shared by the wrappers.


def _batched_rotation(rotation, voxels: Tensor, op: str) -> Tensor:
    """(3, 3) or (1, 3, 3) broadcast over the batch of ``voxels``; (B, 3, 3) as is."""
    rotation = require_tensor(rotation, "rotation", op)
    if voxels.dim() != 5:
        return rotation  # the op reports the bad voxels shape
    batch = voxels.shape[0]
    if rotation.dim() == 2 and rotation.shape == (3, 3):
        return rotation.unsqueeze(0).expand(batch, 3, 3)
    if rotation.dim() == 3 and rotation.shape[0] == 1 and rotation.shape[1:] == (3, 3):
        return rotation.expand(batch, 3, 3)
    return rotation


def _identity_rotation(voxels: Tensor) -> Tensor:
    batch = voxels.shape[0] if voxels.dim() == 5 else 0
    eye = torch.eye(3, dtype=voxels.dtype, device=voxels.device)
    return eye.unsqueeze(0).expand(batch, 3, 3)


# ------------------------------------------------------------------------------------------------
# rotation_matrix


def rotation_matrix(
    azimuth: Union[Tensor, float],
    elevation: Union[Tensor, float] = 0.0,
    roll: Union[Tensor, float] = 0.0,
) -> Tensor:
    """Object-to-view rotation of a camera on an orbit around the origin.

    The camera starts on +z looking at the origin. ``azimuth`` turns it about +y from +z toward +x,
    ``elevation`` raises it toward +y, ``roll`` turns it about its viewing axis (the image content
    turns counter-clockwise for positive roll). So with ``azimuth = pi/2`` the object point (1, 0, 0)
    lands at view (0, 0, 1), nearest the camera; with ``elevation = pi/2`` the point (0, 1, 0) does.

    Args:
        azimuth, elevation, roll: angles in radians; tensors of any broadcastable shapes, or Python
            numbers. Floating tensors only (float32 / float64); numbers take the dtype and device of
            the tensor arguments (default dtype and CPU when there are none).

    Returns:
        ``R`` of shape ``(*batch, 3, 3)`` where ``batch`` is the broadcast shape of the angles
        (``(1, 3, 3)`` when all are scalars), with ``p_view = R @ p_obj``. Its rows are the camera's
        right, up and backward axes in object coordinates. Differentiable in all three angles.
    """
    op = "rotation_matrix"
    args = {"azimuth": azimuth, "elevation": elevation, "roll": roll}
    tensors = [v for v in args.values() if isinstance(v, Tensor)]
    dtype = tensors[0].dtype if tensors else torch.get_default_dtype()
    device = tensors[0].device if tensors else torch.device("cpu")
    converted = []
    for name, value in args.items():
        if isinstance(value, Tensor):
            if not value.is_floating_point():
                raise TypeError(f"{op}: argument '{name}' must be a floating tensor, got {value.dtype}")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            value = torch.as_tensor(float(value), dtype=dtype, device=device)
        else:
            raise TypeError(f"{op}: argument '{name}' must be a tensor or a number, got {type(value).__name__}")
        converted.append(value)
    try:
        shape = torch.broadcast_shapes(*(t.shape for t in converted))
    except RuntimeError as e:
        raise ValueError(f"{op}: azimuth, elevation and roll must broadcast together: {e}") from None
    flat = [t.expand(shape).reshape(-1) for t in converted]
    R = _ops.rotation_matrix_forward(*flat)
    return R.reshape(*shape, 3, 3) if len(shape) > 0 else R


# ------------------------------------------------------------------------------------------------
# rotate_voxels


def rotate_voxels(
    voxels: Tensor,
    rotation: Tensor,
    size: Optional[Union[int, Sequence[int]]] = None,
    mode: str = "trilinear",
) -> Tensor:
    """Resample a voxel grid in the view frame of ``rotation`` (zeros outside the input).

    ``out[b, c, d, h, w] = voxels[b, c](R_b^T p)`` where ``p`` is the centre of output voxel
    ``(d, h, w)``: the output is the object rotated by ``R`` (for a rotation, ``R^T`` is its inverse;
    other matrices are used as given).

    Args:
        voxels: ``(B, C, D, H, W)`` float32 or float64 grid over ``[-1, 1]^3``.
        rotation: ``(B, 3, 3)``, or ``(3, 3)`` / ``(1, 3, 3)`` shared by the batch; object-to-view.
        size: output grid ``(Do, Ho, Wo)`` (or one int for a cube); default ``(D, H, W)``. The output
            keeps the input's voxel spacing, so a larger grid has a larger extent: a 64^3 object
            rotated into ``size=128`` spans ``[-1, 1]^3`` inside ``[-2, 2]^3`` and no rotation clips it.
        mode: ``"trilinear"`` (differentiable in ``voxels`` and ``rotation``) or ``"nearest"`` (the
            cell containing each sample, i.e. floor sampling as in Ucar et al. 2019; differentiable
            in ``voxels`` only: the gradient to ``rotation`` is zero).

    Returns:
        ``(B, C, Do, Ho, Wo)`` tensor of the dtype and device of ``voxels``.
    """
    op = "rotate_voxels"
    voxels = require_tensor(voxels, "voxels", op)
    rotation = _batched_rotation(rotation, voxels, op)
    if size is None:
        size = list(voxels.shape[2:]) if voxels.dim() == 5 else [0, 0, 0]
    elif isinstance(size, int) and not isinstance(size, bool):
        size = [size] * 3
    elif (isinstance(size, (Sequence, torch.Size)) and not isinstance(size, str)
          and all(isinstance(s, Integral) and not isinstance(s, bool) for s in size)):
        size = [int(s) for s in size]  # the op checks the length
    else:  # 2.5 is not silently truncated to 2
        raise TypeError(f"{op}: argument 'size' must be an int or a sequence of 3 ints, got {size!r}")
    return _ops.rotate_voxels_forward(voxels, rotation, size, mode)


# ------------------------------------------------------------------------------------------------
# project_voxels


def project_voxels(
    voxels: Tensor,
    rotation: Optional[Tensor] = None,
    mode: str = "trilinear",
    tau: float = 1.0,
) -> Tensor:
    """Visual-hull projection of a rotated grid: ``1 - exp(-tau * sum_d rotated[:, :, d])``.

    The projection of PrGAN and of Ucar et al. 2019 (eq. 2), fused: each ray samples the rotated
    grid directly (one sample per voxel along depth) and the rotated volume is never materialised.
    With ``rotation=None`` (the identity) pixel ``(h, w)`` sums ``voxels[b, c, :, h, w]``.

    Args:
        voxels: ``(B, C, D, H, W)`` float32 or float64 occupancies (usually in [0, 1]).
        rotation: ``(B, 3, 3)``, ``(3, 3)`` or ``(1, 3, 3)`` object-to-view rotation; None: identity.
        mode: ``"trilinear"`` or ``"nearest"`` (see :func:`rotate_voxels`).
        tau: positive scale of the summed occupancy (Ucar's code uses 0.5 after a ``sigmoid / tau``
            decoder; PrGAN uses 1).

    Returns:
        ``(B, C, H, W)`` image in [0, 1) for non-negative voxels. Differentiable in ``voxels`` and,
        in trilinear mode, ``rotation``.
    """
    op = "project_voxels"
    voxels = require_tensor(voxels, "voxels", op)
    rotation = _identity_rotation(voxels) if rotation is None else _batched_rotation(rotation, voxels, op)
    if isinstance(tau, Tensor) or not isinstance(tau, (int, float)) or isinstance(tau, bool):
        raise TypeError(f"{op}: argument 'tau' must be a Python number, got {type(tau).__name__}")
    return _ops.project_voxels_forward(voxels, rotation, mode, float(tau))


# ------------------------------------------------------------------------------------------------
# Autograd and fake kernels of the registered ops.


def _rotation_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _rotation_backward(ctx, grad):
    azimuth, elevation, roll = ctx.saved_tensors
    return tuple(_ops.rotation_matrix_backward(grad, azimuth, elevation, roll))


def _rotate_setup(ctx, inputs, output):
    voxels, rotation, size, mode = inputs
    ctx.save_for_backward(voxels, rotation)
    ctx.size, ctx.mode = size, mode


def _rotate_backward(ctx, grad):
    voxels, rotation = ctx.saved_tensors
    gvox, grot = _ops.rotate_voxels_backward(grad, voxels, rotation, ctx.size, ctx.mode)
    return gvox, grot, None, None


def _project_setup(ctx, inputs, output):
    voxels, rotation, mode, tau = inputs
    ctx.save_for_backward(output, voxels, rotation)
    ctx.mode, ctx.tau = mode, tau


def _project_backward(ctx, grad):
    image, voxels, rotation = ctx.saved_tensors
    gvox, grot = _ops.project_voxels_backward(grad, image, voxels, rotation, ctx.mode, ctx.tau)
    return gvox, grot, None, None


torch.library.register_autograd("invrender::rotation_matrix_forward", _rotation_backward, setup_context=_rotation_setup)
torch.library.register_autograd("invrender::rotate_voxels_forward", _rotate_backward, setup_context=_rotate_setup)
torch.library.register_autograd("invrender::project_voxels_forward", _project_backward, setup_context=_project_setup)


for _name in ("rotation_matrix_backward", "rotate_voxels_backward", "project_voxels_backward"):
    forbid_double_backward(_name, _name)


@register_fake("invrender::rotation_matrix_forward")
def _(azimuth, elevation, roll):
    fake_check(azimuth.dim() == 1, "rotation_matrix: argument 'azimuth' must be 1-D")
    return azimuth.new_empty((azimuth.shape[0], 3, 3))


@register_fake("invrender::rotation_matrix_backward")
def _(grad, azimuth, elevation, roll):
    return azimuth.new_empty(azimuth.shape), azimuth.new_empty(azimuth.shape), azimuth.new_empty(azimuth.shape)


def _fake_check_voxels(voxels, rotation, op):
    check_like(rotation, "rotation", voxels, "voxels", op)
    fake_check(voxels.dim() == 5, f"{op}: argument 'voxels' must be a 5-D tensor (B, C, D, H, W)")
    fake_check(rotation.dim() == 3 and rotation.shape[0] == voxels.shape[0],
                f"{op}: argument 'rotation' must have shape (B, 3, 3)")


@register_fake("invrender::rotate_voxels_forward")
def _(voxels, rotation, size, mode):
    _fake_check_voxels(voxels, rotation, "rotate_voxels")
    return voxels.new_empty((voxels.shape[0], voxels.shape[1], *size))


@register_fake("invrender::rotate_voxels_backward")
def _(grad, voxels, rotation, size, mode):
    return torch.empty_like(voxels, memory_format=torch.contiguous_format), voxels.new_empty((voxels.shape[0], 3, 3))


@register_fake("invrender::project_voxels_forward")
def _(voxels, rotation, mode, tau):
    _fake_check_voxels(voxels, rotation, "project_voxels")
    return voxels.new_empty((voxels.shape[0], voxels.shape[1], voxels.shape[3], voxels.shape[4]))


@register_fake("invrender::project_voxels_backward")
def _(grad, image, voxels, rotation, mode, tau):
    return torch.empty_like(voxels, memory_format=torch.contiguous_format), voxels.new_empty((voxels.shape[0], 3, 3))
