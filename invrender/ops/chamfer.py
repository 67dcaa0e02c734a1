"""Nearest neighbours between point clouds and the Chamfer distance.

Clouds are batched ``(B, N, D)`` tensors, ragged batches given by lengths ``(B,)``: cloud ``b`` is
``x[b, :x_lengths[b]]``. Memory is O(B (N + M)): no N x M matrix is ever formed (a k-d tree per
cloud on the CPU, tiled brute force on the GPU).
"""

from typing import NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor

from ._util import forbid_double_backward, register_fake

_ops = torch.ops.invrender

__all__ = ["NearestNeighbors", "nearest_neighbors", "chamfer_distance"]


class NearestNeighbors(NamedTuple):
    """``dist (B, N)`` squared Euclidean distances and ``idx (B, N)`` int64 indices into ``y``."""

    dist: Tensor
    idx: Tensor


def _lengths(lengths, cloud: Tensor, name: str, op: str) -> Tensor:
    if lengths is None:
        return torch.full((cloud.shape[0],), cloud.shape[1], dtype=torch.int64, device=cloud.device)
    if not isinstance(lengths, Tensor):
        raise TypeError(f"{op}: argument '{name}' must be a tensor (B,) of int64, got {type(lengths).__name__}")
    return lengths


def _clouds(x, y, op: str):
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: argument '{name}' must be a tensor (B, P, D), got {type(t).__name__}")
        if t.dim() != 3:
            raise ValueError(f"{op}: argument '{name}' must be a 3-D tensor (B, P, D), got shape {tuple(t.shape)}")
    if x.device != y.device:
        raise ValueError(f"{op}: argument 'y' is on {y.device} but 'x' is on {x.device}; they must be on one device")


def nearest_neighbors(x: Tensor, y: Tensor, x_lengths: Optional[Tensor] = None,
                      y_lengths: Optional[Tensor] = None) -> NearestNeighbors:
    """For each point of ``x`` its nearest point of ``y`` (squared Euclidean distance).

    Args:
        x: ``(B, N, D)`` float32/float64 query points, ``1 <= D <= 8``.
        y: ``(B, M, D)`` points searched, same dtype and device.
        x_lengths, y_lengths: optional ``(B,)`` int64 numbers of valid points per cloud, in
            ``[0, N]`` / ``[0, M]``; default all.

    Returns:
        :class:`NearestNeighbors` ``(dist (B, N), idx (B, N))``: ``idx`` is the smallest index among
        equally near points. Points beyond ``x_lengths``, and all points of a cloud whose ``y`` is
        empty (length 0), get ``dist = 0`` and ``idx = -1``. ``dist`` is differentiable in ``x``
        and ``y`` (``d dist / d x = 2 (x - y_nn)``).
    """
    op = "nearest_neighbors"
    _clouds(x, y, op)
    xl = _lengths(x_lengths, x, "x_lengths", op)
    yl = _lengths(y_lengths, y, "y_lengths", op)
    dist, idx = _ops.nearest_neighbors_forward(x, y, xl, yl)
    return NearestNeighbors(dist, idx)


def _nn_setup(ctx, inputs, output):
    x, y = inputs[:2]
    ctx.save_for_backward(x, y, output[1])
    ctx.need_y = y.requires_grad


def _nn_backward(ctx, grad_dist, grad_idx):
    x, y, idx = ctx.saved_tensors
    if grad_dist is None:
        return None, None, None, None
    gx, gy = _ops.nearest_neighbors_backward(grad_dist.contiguous(), x, y, idx, bool(ctx.need_y))
    return gx, (gy if ctx.need_y else None), None, None


torch.library.register_autograd("invrender::nearest_neighbors_forward", _nn_backward, setup_context=_nn_setup)


forbid_double_backward("nearest_neighbors_backward", "nearest_neighbors")


@register_fake("invrender::nearest_neighbors_forward")
def _(x, y, x_lengths, y_lengths):
    torch._check(x.dim() == 3 and y.dim() == 3 and x.shape[2] == y.shape[2],
                 lambda: "nearest_neighbors: 'x' and 'y' must be (B, N, D) and (B, M, D)")
    return x.new_empty(x.shape[:2]), x.new_empty(x.shape[:2], dtype=torch.int64)


@register_fake("invrender::nearest_neighbors_backward")
def _(grad_dist, x, y, idx, need_y):
    gy = torch.empty_like(y, memory_format=torch.contiguous_format) if need_y else y.new_empty((0,))
    return torch.empty_like(x, memory_format=torch.contiguous_format), gy


_REDUCTIONS = ("mean", "sum", None)


def _point_term(nn: NearestNeighbors, squared: bool) -> Tensor:
    if squared:
        return nn.dist
    # Euclidean: sqrt with a zero gradient where the distance is 0 (coincident points).
    positive = nn.dist > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, nn.dist, torch.ones_like(nn.dist))),
                       torch.zeros_like(nn.dist))


def _reduce_points(term: Tensor, lengths: Tensor, reduction) -> Tensor:
    total = term.sum(1)
    if reduction == "sum":
        return total
    count = lengths.to(term.dtype)
    return torch.where(lengths > 0, total / count.clamp(min=1), torch.zeros_like(total))


def _check_chamfer_args(x, y, point_reduction, batch_reduction, op: str) -> None:
    _clouds(x, y, op)
    if point_reduction not in _REDUCTIONS:
        raise ValueError(f"{op}: argument 'point_reduction' must be 'mean', 'sum' or None, got {point_reduction!r}")
    if batch_reduction not in _REDUCTIONS:
        raise ValueError(f"{op}: argument 'batch_reduction' must be 'mean', 'sum' or None, got {batch_reduction!r}")
    if point_reduction is None and batch_reduction is not None:
        raise ValueError(f"{op}: argument 'batch_reduction' must be None when 'point_reduction' is None")


def chamfer_distance(
    x: Tensor,
    y: Tensor,
    x_lengths: Optional[Tensor] = None,
    y_lengths: Optional[Tensor] = None,
    squared: bool = True,
    point_reduction: Optional[str] = "mean",
    batch_reduction: Optional[str] = "mean",
    single_directional: bool = False,
    return_nn: bool = False,
) -> Union[Tensor, Tuple[Tensor, Tensor], Tuple[object, Tuple[NearestNeighbors, ...]]]:
    """Chamfer distance between point clouds: ``term(x -> y) + term(y -> x)``.

    Each direction sums (``point_reduction="sum"``) or averages (``"mean"``, over the valid points of
    each cloud) the distance from every point to its nearest neighbour in the other cloud: squared
    (``squared=True``, the usual training loss) or Euclidean (``squared=False``). DVR's and
    UNICORN's evaluation metric "Chamfer-L1" is ``0.5 * chamfer_distance(x, y, squared=False)`` on
    100k points sampled per surface (reported x10). A direction whose source cloud is empty
    contributes 0; a point whose target cloud is empty contributes 0.

    Args:
        x: ``(B, N, D)`` and y: ``(B, M, D)`` float32/float64 clouds, ``1 <= D <= 8``.
        x_lengths, y_lengths: optional ``(B,)`` int64 valid lengths (ragged batches).
        squared: squared (True) or Euclidean (False) point distances. The Euclidean form has a
            zero gradient for coincident points.
        point_reduction: ``"mean"``, ``"sum"`` or None (per-point distances, no sum over points).
        batch_reduction: ``"mean"``, ``"sum"`` or None (per cloud); must be None when
            ``point_reduction`` is None.
        single_directional: only ``x -> y``.
        return_nn: also return the :class:`NearestNeighbors` of each direction.

    Returns:
        With a point reduction: the distance, a scalar (batch reduction) or ``(B,)``. Without: the
        per-point distances ``(dist_x (B, N), dist_y (B, M))`` (``dist_y`` is None when single
        directional), 0 beyond the lengths. With ``return_nn``: ``(result, (nn_x, nn_y))``.
    """
    op = "chamfer_distance"
    _check_chamfer_args(x, y, point_reduction, batch_reduction, op)
    xl = _lengths(x_lengths, x, "x_lengths", op)
    yl = _lengths(y_lengths, y, "y_lengths", op)
    return _chamfer_from_nn(nearest_neighbors, x, y, xl, yl, squared, point_reduction, batch_reduction,
                            single_directional, return_nn)


def _chamfer_from_nn(nn_fn, x, y, xl, yl, squared, point_reduction, batch_reduction, single_directional,
                     return_nn):
    """The Chamfer reductions on top of a nearest-neighbour search ``nn_fn`` (ours or the reference's)."""
    nn_x = nn_fn(x, y, xl, yl)
    nn_y = None if single_directional else nn_fn(y, x, yl, xl)
    terms = [_point_term(nn_x, squared)] + ([] if nn_y is None else [_point_term(nn_y, squared)])
    if point_reduction is None:
        result = (terms[0], terms[1] if nn_y is not None else None)
    else:
        per_cloud = _reduce_points(terms[0], xl, point_reduction)
        if nn_y is not None:
            per_cloud = per_cloud + _reduce_points(terms[1], yl, point_reduction)
        if batch_reduction == "mean":
            result = per_cloud.mean() if per_cloud.numel() else per_cloud.sum()
        elif batch_reduction == "sum":
            result = per_cloud.sum()
        else:
            result = per_cloud
    return (result, (nn_x, nn_y)) if return_nn else result
