"""Pure-PyTorch nearest neighbours and Chamfer distance (torch.cdist; O(B N M) memory).

Same signatures and semantics as :func:`invrender.nearest_neighbors` and
:func:`invrender.chamfer_distance`.
"""

import math
from typing import Optional

import torch
from torch import Tensor

from ..ops import chamfer as _ours
from ..ops.chamfer import NearestNeighbors

__all__ = ["nearest_neighbors", "chamfer_distance"]


def nearest_neighbors(x: Tensor, y: Tensor, x_lengths: Optional[Tensor] = None,
                      y_lengths: Optional[Tensor] = None) -> NearestNeighbors:
    B, N, M = x.shape[0], x.shape[1], y.shape[1]
    xl = _ours._lengths(x_lengths, x, "x_lengths", "nearest_neighbors")
    yl = _ours._lengths(y_lengths, y, "y_lengths", "nearest_neighbors")
    # Exact differences (not the matrix-product expansion, whose cancellation would blur ties).
    d = torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist") ** 2 if M and N else x.new_zeros(B, N, M)
    y_valid = torch.arange(M, device=x.device)[None, None, :] < yl[:, None, None]
    d = torch.where(y_valid, d, torch.full_like(d, math.inf))
    if M == 0:
        dist, idx = x.new_zeros(B, N), torch.full((B, N), -1, dtype=torch.long, device=x.device)
    else:
        idx = d.detach().argmin(-1)  # the first index among ties
        dist = torch.gather(d, 2, idx.unsqueeze(-1)).squeeze(-1)
    ok = (torch.arange(N, device=x.device)[None, :] < xl[:, None]) & (yl[:, None] > 0)
    return NearestNeighbors(torch.where(ok, dist, torch.zeros_like(dist)), torch.where(ok, idx, torch.full_like(idx, -1)))


def chamfer_distance(x, y, x_lengths=None, y_lengths=None, squared=True, point_reduction="mean",
                     batch_reduction="mean", single_directional=False, return_nn=False):
    """:func:`invrender.chamfer_distance` with the dense :func:`nearest_neighbors` above."""
    op = "chamfer_distance"
    _ours._check_chamfer_args(x, y, point_reduction, batch_reduction, op)
    xl = _ours._lengths(x_lengths, x, "x_lengths", op)
    yl = _ours._lengths(y_lengths, y, "y_lengths", op)
    return _ours._chamfer_from_nn(nearest_neighbors, x, y, xl, yl, squared, point_reduction, batch_reduction,
                                  single_directional, return_nn)
