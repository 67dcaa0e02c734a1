"""Evaluation metrics of single-image 3D reconstruction: shapes, masks and images.

All metrics are batched and return one value per batch item, a ``(B,)`` tensor of the input's
floating dtype (float32 for integer or boolean inputs) on the input's device; they are plain torch
code (CPU and CUDA) and differentiable where the metric is (``chamfer_l1``, soft ``mask_iou``,
``psnr``, ``ssim``). Average over the batch yourself.

Protocols (see the papers' evaluation sections):

- **Chamfer-L1** (DVR, UNICORN): ``0.5 * (mean_x min_y ||x - y|| + mean_y min_x ||y - x||)`` with
  Euclidean (not squared) distances, on 100k points sampled per surface. Papers report it **x10**;
  :func:`chamfer_l1` does not multiply by 10.
- **Chamfer-L1 with ICP** (UNICORN): the prediction is normalised (:func:`normalize_points`:
  bounding box centred at the origin, max ``|v|`` = 0.5), then aligned to the ground truth by
  :func:`icp_align` before the Chamfer distance.
- **Voxel IoU** (SoftRas): binary occupancies at 32^3 (:func:`voxel_iou`).
- **Mask IoU** (UMR): soft IoU ``sum(p g) / sum(p + g - p g)`` (:func:`mask_iou`).
- **FID** (IG-GAN, Lunz et al. 2020, section 5): the Fréchet distance between Gaussians fitted to classifier
  features of two image sets (:func:`frechet_distance`, :func:`feature_statistics`,
  :func:`fid_from_features`). Unlike the metrics above it compares two *sets* and returns one float; the
  classifier and reference renders are in :mod:`invrender.fid`.
- **Shape-generation metrics** (Achlioptas et al. 2018; PointFlow, Yang et al. 2019): MMD, coverage and
  1-nearest-neighbour accuracy of a set of generated shapes against a set of reference shapes, from their
  pairwise distances (:func:`generation_metrics`), here ``1 - IoU`` of voxel grids
  (:func:`pairwise_voxel_iou_distance`). Unlike FID they see a generator that makes one shape: its coverage is
  ``1 / N``.
"""

import math
import warnings
from typing import Callable, NamedTuple, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .ops.chamfer import chamfer_distance

__all__ = [
    "ICPTransform",
    "chamfer_l1",
    "chamfer_l1_meshes",
    "feature_statistics",
    "fid_from_features",
    "frechet_distance",
    "generation_metrics",
    "icp_align",
    "mask_iou",
    "normalize_points",
    "pairwise_voxel_iou_distance",
    "psnr",
    "rotation_6d_to_matrix",
    "ssim",
    "voxel_iou",
]


# ------------------------------------------------------------------------------------------------
# argument checks


def _tensor(value, name: str, op: str, dims: Optional[Tuple[int, ...]] = None, what: str = "") -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{op}: argument '{name}' must be a tensor {what}, got {type(value).__name__}".replace("  ", " "))
    if dims is not None and value.dim() not in dims:
        raise ValueError(f"{op}: argument '{name}' must be a tensor {what}, got shape {tuple(value.shape)}")
    return value


def _float(t: Tensor) -> Tensor:
    return t if t.is_floating_point() else t.float()


def _points(value, name: str, op: str) -> Tensor:
    t = _tensor(value, name, op, (3,), "(B, N, 3)")
    if t.shape[-1] != 3:
        raise ValueError(f"{op}: argument '{name}' must be (B, N, 3) points, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"{op}: argument '{name}' must be a float32/float64 tensor, got {t.dtype}")
    return t


def _lengths(value, cloud: Tensor, name: str, op: str) -> Optional[Tensor]:
    if value is None:
        return None
    t = _tensor(value, name, op, (1,), "(B,) of int64")
    if t.shape[0] != cloud.shape[0]:
        raise ValueError(f"{op}: argument '{name}' must have shape ({cloud.shape[0]},), got {tuple(t.shape)}")
    if t.dtype != torch.int64:
        raise TypeError(f"{op}: argument '{name}' must be int64, got {t.dtype}")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) > cloud.shape[1]):
        raise ValueError(f"{op}: argument '{name}' must lie in [0, {cloud.shape[1]}], "
                         f"got values in [{int(t.min())}, {int(t.max())}]")
    return t.to(cloud.device)


def _same_batch(a: Tensor, b: Tensor, names: Tuple[str, str], op: str) -> None:
    """Two point clouds that belong together: same batch size, device and dtype."""
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{op}: arguments '{names[0]}' and '{names[1]}' must have the same batch size, "
                         f"got {a.shape[0]} and {b.shape[0]}")
    if a.device != b.device:
        raise ValueError(f"{op}: argument '{names[1]}' is on {b.device} but '{names[0]}' is on {a.device}")
    if a.dtype != b.dtype:
        raise TypeError(f"{op}: argument '{names[1]}' has dtype {b.dtype} but '{names[0]}' has {a.dtype}")


def _same_shape(a: Tensor, b: Tensor, names: Tuple[str, str], op: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{op}: arguments '{names[0]}' and '{names[1]}' must have the same shape, "
                         f"got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.device != b.device:
        raise ValueError(f"{op}: argument '{names[1]}' is on {b.device} but '{names[0]}' is on {a.device}")


def _valid_mask(points: Tensor, lengths: Optional[Tensor]) -> Tensor:
    B, N = points.shape[:2]
    if lengths is None:
        return torch.ones(B, N, dtype=torch.bool, device=points.device)
    return torch.arange(N, device=points.device)[None] < lengths[:, None]


# ------------------------------------------------------------------------------------------------
# Chamfer-L1


def chamfer_l1(pred_points: Tensor, gt_points: Tensor, pred_lengths: Optional[Tensor] = None,
               gt_lengths: Optional[Tensor] = None) -> Tensor:
    """Chamfer-L1 distance of DVR / UNICORN between point clouds, per batch item.

    ``0.5 * (mean_{x in pred} min_{y in gt} ||x - y||_2 + mean_{y in gt} min_{x in pred} ||y - x||_2)``:
    Euclidean, not squared, distances. Papers report this value **multiplied by 10** (DVR, UNICORN
    on ShapeNet, 100k points per surface); this function does not scale it. Built on
    :func:`invrender.chamfer_distance` (k-d trees on the CPU, tiled brute force on the GPU); no
    N x M matrix is formed. Differentiable in both clouds.

    Args:
        pred_points: ``(B, N, 3)`` float32/float64 predicted points.
        gt_points: ``(B, M, 3)`` ground-truth points, same dtype and device.
        pred_lengths, gt_lengths: optional ``(B,)`` int64 numbers of valid points per cloud (ragged
            batches: cloud ``b`` is ``points[b, :lengths[b]]``); default all. A direction whose
            source cloud is empty contributes 0.

    Returns:
        ``(B,)`` Chamfer-L1 per batch item.
    """
    op = "chamfer_l1"
    pred = _points(pred_points, "pred_points", op)
    gt = _points(gt_points, "gt_points", op)
    _same_batch(pred, gt, ("pred_points", "gt_points"), op)
    pl = _lengths(pred_lengths, pred, "pred_lengths", op)
    gl = _lengths(gt_lengths, gt, "gt_lengths", op)
    return 0.5 * chamfer_distance(pred, gt, pl, gl, squared=False, point_reduction="mean", batch_reduction=None)


def normalize_points(points: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
    """Centre each cloud's bounding box at the origin and scale it uniformly to max ``|v|`` = 0.5.

    UNICORN's normalisation of a prediction before ICP: ``(p - c) * 0.5 / max_i ||p_i - c||_inf``
    with ``c`` the centre of the axis-aligned bounding box, so the largest absolute coordinate is
    0.5 (the box fits in ``[-0.5, 0.5]^3`` and touches it). A cloud with a single point (or all
    points equal) is only centred.

    Args:
        points: ``(B, N, 3)`` float points (for example mesh vertices or surface samples).
        lengths: optional ``(B,)`` int64 valid lengths; padding points are transformed too but do
            not enter the bounding box.

    Returns:
        ``(B, N, 3)`` normalised points, differentiable in ``points``.
    """
    op = "normalize_points"
    points = _points(points, "points", op)
    lengths = _lengths(lengths, points, "lengths", op)
    center, scale = _normalization(points, lengths)
    return (points - center[:, None]) * scale[:, None, None]


def _normalization(points: Tensor, lengths: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    valid = _valid_mask(points, lengths)[..., None]
    if points.shape[1] == 0:
        zeros = points.new_zeros(points.shape[0], 3)
        return zeros, points.new_ones(points.shape[0])
    big = torch.finfo(points.dtype).max
    hi = torch.where(valid, points, points.new_full((), -big)).amax(1)
    lo = torch.where(valid, points, points.new_full((), big)).amin(1)
    empty = ~valid.any(1)  # (B, 1)
    hi = torch.where(empty, torch.zeros_like(hi), hi)
    lo = torch.where(empty, torch.zeros_like(lo), lo)
    center = 0.5 * (hi + lo)
    half = (0.5 * (hi - lo)).amax(1)  # max |p - c| over valid points and axes
    scale = torch.where(half > 0, 0.5 / half.clamp(min=torch.finfo(points.dtype).tiny), torch.ones_like(half))
    return center, scale


# ------------------------------------------------------------------------------------------------
# gradient-based ICP (UNICORN)


class ICPTransform(NamedTuple):
    """Similarity-like transform found by :func:`icp_align`: ``x' = R (s * x) + t``.

    ``rotation (B, 3, 3)``, ``translation (B, 3)``, ``scale (B, 3)`` (anisotropic, applied along the
    source's own axes before the rotation) and ``loss (B,)``, the alignment loss of the kept iterate.
    """

    rotation: Tensor
    translation: Tensor
    scale: Tensor
    loss: Tensor

    def apply(self, points: Tensor) -> Tensor:
        """``(B, N, 3) -> (B, N, 3)``: ``R (s * x) + t`` per batch item."""
        return _apply(points, self.rotation, self.scale, self.translation)


def _apply(points: Tensor, rotation: Tensor, scale: Tensor, translation: Tensor) -> Tensor:
    return (points * scale[:, None]) @ rotation.transpose(1, 2) + translation[:, None]


def rotation_6d_to_matrix(d6: Tensor) -> Tensor:
    """Rotation matrices from the continuous 6-D representation of Zhou et al. (CVPR 2019).

    The two 3-vectors ``a1 = d6[..., :3]``, ``a2 = d6[..., 3:]`` are orthonormalised by Gram-Schmidt
    into the first two **rows** ``b1, b2`` of ``R``; ``b3 = b1 x b2``. ``(1, 0, 0, 0, 1, 0)`` is the
    identity.

    Args:
        d6: ``(..., 6)`` float tensor.

    Returns:
        ``(..., 3, 3)`` rotation matrices (determinant +1), differentiable in ``d6``.
    """
    d6 = _tensor(d6, "d6", "rotation_6d_to_matrix", None, "(..., 6)")
    if d6.dim() == 0 or d6.shape[-1] != 6:
        raise ValueError(f"rotation_6d_to_matrix: argument 'd6' must be (..., 6), got shape {tuple(d6.shape)}")
    a1, a2 = d6[..., :3], d6[..., 3:]
    b1 = F.normalize(a1, dim=-1)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack((b1, b2, b3), dim=-2)


def _subsample(points: Tensor, lengths: Optional[Tensor], k: Optional[int], generator) -> Tuple[Tensor, Optional[Tensor]]:
    """At most ``k`` random valid points per cloud (without replacement)."""
    B, N = points.shape[:2]
    if k is None or k >= N:
        return points, lengths
    keys = torch.rand(B, N, generator=generator, device=generator.device if generator is not None else "cpu")
    keys = keys.to(points.device)
    keys = torch.where(_valid_mask(points, lengths), keys, torch.full_like(keys, 2.0))
    idx = keys.argsort(1)[:, :k]
    sub = torch.gather(points, 1, idx[..., None].expand(B, k, points.shape[2]))
    sub_lengths = None if lengths is None else lengths.clamp(max=k)
    return sub, sub_lengths


def icp_align(source: Tensor, target: Tensor, iterations: int = 100, lr: float = 0.01,
              generator: Optional[torch.Generator] = None, source_lengths: Optional[Tensor] = None,
              target_lengths: Optional[Tensor] = None,
              num_points: Optional[int] = None) -> Tuple[Tensor, ICPTransform]:
    """Gradient-based ICP of UNICORN: align ``source`` to ``target`` per batch item.

    Optimises ``x' = R (s * x) + t`` with ``R`` in the 6-D representation of Zhou et al.
    (initialised at the identity), translation ``t`` (initialised at 0) and anisotropic scale ``s``
    (initialised at 1), with Adam (``lr``) for ``iterations`` steps, and keeps the iterate of lowest
    loss per batch item (the loss of the final parameters counts too). The loss is the
    **bidirectional** squared Chamfer distance (mean over points in each direction) between the
    transformed source and the target: the single ``source -> target`` term would let the
    anisotropic scale shrink the source onto a patch of the target. Batch items are independent
    (the loss is summed over the batch; Adam's steps are per parameter).

    UNICORN applies it after :func:`normalize_points` on the prediction; this function does not
    normalise. Gradients of the result with respect to the inputs are not tracked (an evaluation
    tool): the outputs are detached.

    Args:
        source: ``(B, N, 3)`` float points to move (the prediction).
        target: ``(B, M, 3)`` points to align to (the ground truth), same dtype and device.
        iterations: number of Adam steps (UNICORN: 100).
        lr: Adam learning rate (UNICORN: 0.01).
        generator: random generator for ``num_points`` subsampling (unused otherwise).
        source_lengths, target_lengths: optional ``(B,)`` int64 valid lengths (ragged clouds).
        num_points: optional cap on the points per cloud used to fit the transform (a random
            subset, chosen once); None uses all. The returned aligned cloud is always the full one.

    Returns:
        ``(aligned (B, N, 3), transform)``: the transformed source and the :class:`ICPTransform`.
    """
    op = "icp_align"
    source = _points(source, "source", op)
    target = _points(target, "target", op)
    _same_batch(source, target, ("source", "target"), op)
    if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 0:
        raise ValueError(f"{op}: argument 'iterations' must be a non-negative int, got {iterations!r}")
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0:
        raise ValueError(f"{op}: argument 'lr' must be a positive number, got {lr!r}")
    if num_points is not None and (not isinstance(num_points, int) or num_points < 1):
        raise ValueError(f"{op}: argument 'num_points' must be a positive int or None, got {num_points!r}")
    sl = _lengths(source_lengths, source, "source_lengths", op)
    tl = _lengths(target_lengths, target, "target_lengths", op)

    src, src_l = _subsample(source.detach(), sl, num_points, generator)
    tgt, tgt_l = _subsample(target.detach(), tl, num_points, generator)
    B = source.shape[0]
    dtype, device = source.dtype, source.device
    d6 = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0], dtype=dtype, device=device).repeat(B, 1).requires_grad_()
    trans = torch.zeros(B, 3, dtype=dtype, device=device, requires_grad=True)
    scale = torch.ones(B, 3, dtype=dtype, device=device, requires_grad=True)
    params = (d6, trans, scale)
    best = [p.detach().clone() for p in params]
    best_loss = torch.full((B,), math.inf, dtype=dtype, device=device)

    with torch.enable_grad():
        opt = torch.optim.Adam(params, lr=lr)
        for it in range(iterations + 1):
            moved = _apply(src, rotation_6d_to_matrix(d6), scale, trans)
            loss = chamfer_distance(moved, tgt, src_l, tgt_l, squared=True, batch_reduction=None)
            with torch.no_grad():
                better = loss.detach() < best_loss  # NaN never wins
                best_loss = torch.where(better, loss.detach(), best_loss)
                for b_param, param in zip(best, params):
                    b_param.copy_(torch.where(better[:, None], param, b_param))
            if it == iterations:
                break
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()
            opt.step()

    rotation = rotation_6d_to_matrix(best[0])
    transform = ICPTransform(rotation, best[1], best[2], best_loss)
    with torch.no_grad():
        aligned = transform.apply(source.detach())
    return aligned, transform


# ------------------------------------------------------------------------------------------------
# Chamfer-L1 between meshes


def _mesh_list(verts, faces, names: Tuple[str, str], op: str):
    """Per-item (V, 3) / (F, 3) pairs from batched tensors or sequences."""
    if isinstance(verts, Tensor):
        if verts.dim() == 2:
            verts = verts[None]
        if verts.dim() != 3 or verts.shape[-1] != 3:
            raise ValueError(f"{op}: argument '{names[0]}' must be (B, V, 3), (V, 3) or a list of (V, 3), "
                             f"got shape {tuple(verts.shape)}")
        verts = list(verts)
    elif isinstance(verts, (list, tuple)):
        verts = list(verts)
    else:
        raise TypeError(f"{op}: argument '{names[0]}' must be a tensor or a list of tensors, got {type(verts).__name__}")
    if isinstance(faces, Tensor):
        if faces.dim() == 2:
            faces = [faces] * len(verts)
        elif faces.dim() == 3:
            faces = list(faces)
        else:
            raise ValueError(f"{op}: argument '{names[1]}' must be (F, 3), (B, F, 3) or a list of (F, 3), "
                             f"got shape {tuple(faces.shape)}")
    elif isinstance(faces, (list, tuple)):
        faces = list(faces)
    else:
        raise TypeError(f"{op}: argument '{names[1]}' must be a tensor or a list of tensors, got {type(faces).__name__}")
    if len(faces) != len(verts):
        raise ValueError(f"{op}: '{names[1]}' has {len(faces)} meshes but '{names[0]}' has {len(verts)}")
    for i, (v, f) in enumerate(zip(verts, faces)):
        if not isinstance(v, Tensor) or v.dim() != 2 or v.shape[-1] != 3 or not v.is_floating_point():
            raise ValueError(f"{op}: argument '{names[0]}'[{i}] must be a float (V, 3) tensor")
        if not isinstance(f, Tensor) or f.dim() != 2 or f.shape[-1] != 3 or f.is_floating_point():
            raise ValueError(f"{op}: argument '{names[1]}'[{i}] must be an integer (F, 3) tensor")
        if f.numel() and (int(f.min()) < 0 or int(f.max()) >= v.shape[0]):
            raise ValueError(f"{op}: argument '{names[1]}'[{i}] has indices outside [0, {v.shape[0]})")
        if f.shape[0] == 0:
            raise ValueError(f"{op}: argument '{names[1]}'[{i}] has no faces; cannot sample a surface")
    return verts, faces


def _draw_points(cloud: Tensor, k: int, generator) -> Tensor:
    """``k`` points of ``cloud (P, 3)``: all of them when ``P == k``, else drawn at random (without
    replacement when ``P > k``)."""
    P = cloud.shape[0]
    if P == k:
        return cloud
    if P > k:
        index = torch.randperm(P, generator=generator)[:k]
    else:
        index = torch.randint(P, (k,), generator=generator)
    return cloud[index.to(cloud.device)]


def chamfer_l1_meshes(pred_verts, pred_faces, gt_verts, gt_faces, num_points: int = 100_000,
                      align: bool = False, generator: Optional[torch.Generator] = None,
                      sample_fn: Optional[Callable] = None, icp_num_points: Optional[int] = 10_000) -> Tensor:
    """Chamfer-L1 between predicted and ground-truth meshes (DVR / UNICORN protocol), per item.

    Samples ``num_points`` points uniformly (area-weighted) on each surface and returns
    :func:`chamfer_l1` of the two clouds: ``0.5 (mean pred->gt + mean gt->pred)`` Euclidean, **not**
    multiplied by 10 (papers report x10). With ``align=True``, UNICORN's "with ICP" number: the
    prediction is normalised (:func:`normalize_points` on its vertices: bounding box centred, max
    ``|v|`` = 0.5) before sampling, then aligned to the ground-truth samples by :func:`icp_align`
    (100 Adam steps, lr 0.01, best iterate kept). The ground truth is used as given.

    Args:
        pred_verts: ``(B, V, 3)`` float vertices, or ``(V, 3)``, or a list of ``(V_b, 3)``.
        pred_faces: ``(F, 3)`` int64 faces shared by the batch, ``(B, F, 3)``, or a list of ``(F_b, 3)``.
        gt_verts, gt_faces: the ground-truth meshes, same forms; same number of meshes as the prediction.
            ``gt_faces=None``: ``gt_verts`` are surface point clouds (``(B, P, 3)`` or a list of
            ``(P_b, 3)``, e.g. ShapeNet-NMR's ``pointcloud.npz``, 100k points each): used as given when
            ``P_b == num_points``, else ``num_points`` of them drawn (without replacement when there are
            enough, with replacement otherwise).
        num_points: points sampled per surface (the protocol uses 100k).
        align: normalise the prediction and align it with ICP first.
        generator: random generator for the sampling (and ICP subsampling).
        sample_fn: ``sample_fn(verts (1, V, 3), faces (F, 3), num_points, generator=generator) ->
            (1, num_points, 3)``; default :func:`invrender.mesh.sample_points`.
        icp_num_points: points per cloud used to fit the ICP transform (default 10k: about 3 s per
            shape on a 2-core CPU, where fitting on all 100k takes about 25 s); None uses all
            ``num_points``. The Chamfer-L1 itself is always measured on all ``num_points``.

    Returns:
        ``(B,)`` Chamfer-L1 per mesh pair.
    """
    op = "chamfer_l1_meshes"
    if not isinstance(num_points, int) or isinstance(num_points, bool) or num_points < 1:
        raise ValueError(f"{op}: argument 'num_points' must be a positive int, got {num_points!r}")
    pv, pf = _mesh_list(pred_verts, pred_faces, ("pred_verts", "pred_faces"), op)
    if gt_faces is None:  # point clouds
        n = len(gt_verts) if isinstance(gt_verts, (list, tuple)) else None
        if any(isinstance(v, Tensor) and v.dim() >= 2 and v.shape[-2] == 0
               for v in (gt_verts if n is not None else [gt_verts])):
            raise ValueError(f"{op}: argument 'gt_verts' holds an empty point cloud")
        gv, _ = _mesh_list(gt_verts, [torch.zeros(1, 3, dtype=torch.long)] * (n or 1) if n is not None
                           else torch.zeros(1, 3, dtype=torch.long), ("gt_verts", "gt_faces"), op)
    else:
        gv, gf = _mesh_list(gt_verts, gt_faces, ("gt_verts", "gt_faces"), op)
    if len(pv) != len(gv):
        raise ValueError(f"{op}: 'gt_verts' has {len(gv)} meshes but 'pred_verts' has {len(pv)}")
    if sample_fn is None:
        from .mesh import sample_points as sample_fn  # added by the mesh module; imported lazily
    if align:
        pv = [normalize_points(v[None])[0] for v in pv]
    pred = torch.cat([sample_fn(v[None], f, num_points, generator=generator) for v, f in zip(pv, pf)])
    if gt_faces is None:
        gt = torch.stack([_draw_points(v, num_points, generator) for v in gv])
    else:
        gt = torch.cat([sample_fn(v[None], f, num_points, generator=generator) for v, f in zip(gv, gf)])
    gt = gt.to(device=pred.device, dtype=pred.dtype)
    if align:
        pred, _ = icp_align(pred, gt, generator=generator, num_points=icp_num_points)
    return chamfer_l1(pred, gt)


# ------------------------------------------------------------------------------------------------
# IoU


def _iou(inter: Tensor, union: Tensor) -> Tensor:
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), torch.ones_like(union))


def voxel_iou(pred: Tensor, gt: Tensor, threshold: float = 0.5) -> Tensor:
    """Intersection over union of binarised occupancy grids (SoftRas evaluates at 32^3).

    A voxel is occupied where its value is ``> threshold`` (both grids; boolean grids work as
    is). ``|pred & gt| / |pred | gt|`` per batch item; two empty grids (empty union) give 1.0.

    Args:
        pred: ``(B, R, R, R)`` (or any ``(B, ...)``, e.g. ``(B, 1, D, H, W)``) occupancies.
        gt: ground-truth occupancies of the same shape and device.
        threshold: binarisation threshold.

    Returns:
        ``(B,)`` IoU in [0, 1] (not differentiable).
    """
    op = "voxel_iou"
    pred = _tensor(pred, "pred", op, None, "(B, R, R, R)")
    gt = _tensor(gt, "gt", op, None, "(B, R, R, R)")
    if pred.dim() < 2:
        raise ValueError(f"{op}: argument 'pred' must be (B, R, R, R), got shape {tuple(pred.shape)}")
    _same_shape(pred, gt, ("pred", "gt"), op)
    dtype = pred.dtype if pred.is_floating_point() else torch.get_default_dtype()
    p = (pred > threshold).flatten(1)
    g = (gt > threshold).flatten(1)
    inter = (p & g).sum(1).to(dtype)
    union = (p | g).sum(1).to(dtype)
    return _iou(inter, union)


def pairwise_voxel_iou_distance(a: Tensor, b: Tensor, threshold: float = 0.5, chunk: int = 256) -> Tensor:
    """``1 - IoU`` between every grid of ``a`` and every grid of ``b`` (binarised at ``> threshold``): the
    Jaccard distance of the occupied voxel sets, a metric on shapes. Two empty grids are at distance 0.

    Computed as ``|x & y| = x . y`` by matrix products of the flattened 0/1 grids (float64 accumulation, exact
    for grids up to 2^53 voxels), in chunks of ``chunk`` rows of ``a``.

    Args:
        a: ``(A, ...)`` occupancies, e.g. ``(A, 1, N, N, N)``; boolean grids work as is.
        b: ``(B, ...)`` occupancies with the same per-item shape and device.
        threshold: binarisation threshold.
        chunk: rows of ``a`` per matrix product (memory ``chunk x B`` plus the chunk's grids).

    Returns:
        ``(A, B)`` float64 distances in [0, 1].
    """
    op = "pairwise_voxel_iou_distance"
    a = _tensor(a, "a", op, None, "(A, ...)")
    b = _tensor(b, "b", op, None, "(B, ...)")
    if a.dim() < 2 or b.dim() < 2:
        raise ValueError(f"{op}: arguments 'a' and 'b' must be batches of grids (A, ...), (B, ...), "
                         f"got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"{op}: arguments 'a' and 'b' must hold grids of the same shape, "
                         f"got {tuple(a.shape[1:])} and {tuple(b.shape[1:])}")
    if a.device != b.device:
        raise ValueError(f"{op}: argument 'b' is on {b.device} but 'a' is on {a.device}")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"{op}: argument 'chunk' must be a positive int, got {chunk!r}")
    y = (b > threshold).flatten(1).double()
    ny = y.sum(1)
    rows = []
    for start in range(0, a.shape[0], chunk):
        x = (a[start:start + chunk] > threshold).flatten(1).double()
        inter = x @ y.T
        union = x.sum(1)[:, None] + ny[None] - inter
        rows.append(1.0 - _iou(inter, union))
    return torch.cat(rows) if rows else torch.zeros(0, b.shape[0], dtype=torch.float64, device=b.device)


def generation_metrics(d_gen_ref, d_gen_gen, d_ref_ref) -> dict:
    """Set-to-set metrics of generated shapes against reference shapes from their pairwise distances
    (Achlioptas et al. 2018, "Learning representations and generative models for 3D point clouds"; 1-NNA from
    Lopez-Paz & Oquab 2017 as PointFlow uses it):

    * ``mmd``: minimum matching distance, the mean over reference shapes of the distance to the nearest
      generated one (fidelity; lower is better);
    * ``coverage``: the fraction of reference shapes that are the nearest reference of some generated shape
      (variety; higher is better, a generator of one shape covers ``1 / N_ref``);
    * ``nna``: the leave-one-out 1-nearest-neighbour classifier's accuracy at telling the two sets apart in
      their union (50% when the sets are alike; near 100% when they are separable). Ties count half.

    Args:
        d_gen_ref: ``(G, R)`` distances between generated and reference shapes (numpy array or tensor).
        d_gen_gen: ``(G, G)`` distances among the generated shapes.
        d_ref_ref: ``(R, R)`` distances among the reference shapes.

    Returns:
        ``{"mmd", "coverage", "nna"}`` as Python floats.
    """
    op = "generation_metrics"
    xy = _float64_array(d_gen_ref, "d_gen_ref", op, 2, "(G, R)")
    G, R = xy.shape
    if G < 2 or R < 2:
        raise ValueError(f"{op}: argument 'd_gen_ref' needs at least 2 generated and 2 reference shapes, "
                         f"got shape {(G, R)}")
    xx = _float64_array(d_gen_gen, "d_gen_gen", op, 2, f"({G}, {G})")
    yy = _float64_array(d_ref_ref, "d_ref_ref", op, 2, f"({R}, {R})")
    if xx.shape != (G, G):
        raise ValueError(f"{op}: argument 'd_gen_gen' must be ({G}, {G}), got {xx.shape}")
    if yy.shape != (R, R):
        raise ValueError(f"{op}: argument 'd_ref_ref' must be ({R}, {R}), got {yy.shape}")
    mmd = float(xy.min(0).mean())
    coverage = float(np.unique(xy.argmin(1)).size / R)
    # 1-NNA: each shape's nearest other shape in the union, leave-one-out (the diagonal excluded).
    xx, yy = xx.copy(), yy.copy()
    np.fill_diagonal(xx, np.inf)
    np.fill_diagonal(yy, np.inf)
    same_g, other_g = xx.min(1), xy.min(1)       # generated: nearest generated vs nearest reference
    same_r, other_r = yy.min(1), xy.min(0)       # reference: nearest reference vs nearest generated
    right = (same_g < other_g).sum() + (same_r < other_r).sum()
    ties = (same_g == other_g).sum() + (same_r == other_r).sum()
    nna = float((right + 0.5 * ties) / (G + R))
    return {"mmd": mmd, "coverage": coverage, "nna": nna}


def mask_iou(pred: Tensor, gt: Tensor, soft: bool = True) -> Tensor:
    """Intersection over union of silhouettes.

    Soft (UMR's metric, differentiable): ``sum(p g) / sum(p + g - p g)`` with masks in [0, 1].
    Hard (``soft=False``): masks binarised at ``> 0.5`` first. An empty union (both masks 0
    everywhere) gives 1.0.

    Args:
        pred: ``(B, H, W)`` or ``(B, 1, H, W)`` (any ``(B, ...)``) predicted mask in [0, 1].
        gt: ground-truth mask of the same shape and device.
        soft: soft IoU (default) or hard IoU at threshold 0.5.

    Returns:
        ``(B,)`` IoU in [0, 1].
    """
    op = "mask_iou"
    pred = _tensor(pred, "pred", op, None, "(B, H, W)")
    gt = _tensor(gt, "gt", op, None, "(B, H, W)")
    if pred.dim() < 2:
        raise ValueError(f"{op}: argument 'pred' must be (B, H, W), got shape {tuple(pred.shape)}")
    _same_shape(pred, gt, ("pred", "gt"), op)
    p, g = _float(pred).flatten(1), _float(gt).flatten(1)
    g = g.to(p.dtype)
    if not soft:
        p, g = (p > 0.5).to(p.dtype), (g > 0.5).to(p.dtype)
    inter = (p * g).sum(1)
    union = (p + g - p * g).sum(1)
    return _iou(inter, union)


# ------------------------------------------------------------------------------------------------
# image metrics


def _images(pred, target, op: str, dims=None, what="(B, C, H, W)") -> Tuple[Tensor, Tensor]:
    pred = _tensor(pred, "pred", op, dims, what)
    target = _tensor(target, "target", op, dims, what)
    if pred.dim() < 1:
        raise ValueError(f"{op}: argument 'pred' must be a batched tensor {what}, got a scalar")
    _same_shape(pred, target, ("pred", "target"), op)
    pred = _float(pred)
    return pred, target.to(pred.dtype)


def _max_val(max_val, op: str) -> float:
    if not isinstance(max_val, (int, float)) or isinstance(max_val, bool) or not max_val > 0:
        raise ValueError(f"{op}: argument 'max_val' must be a positive number, got {max_val!r}")
    return float(max_val)


def psnr(pred: Tensor, target: Tensor, max_val: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio per image: ``10 log10(max_val^2 / MSE)``.

    Args:
        pred: ``(B, C, H, W)`` (any ``(B, ...)``) images.
        target: reference images of the same shape and device.
        max_val: the data range (1.0 for images in [0, 1], 255 for 8-bit values).

    Returns:
        ``(B,)`` PSNR in dB; ``inf`` for identical images. Differentiable.
    """
    op = "psnr"
    pred, target = _images(pred, target, op, None, "(B, C, H, W)")
    max_val = _max_val(max_val, op)
    mse = (pred - target).square().flatten(1).mean(1)
    return 10.0 * torch.log10(max_val ** 2 / mse)


def _gaussian_window(window: int, sigma: float, dtype, device) -> Tensor:
    x = torch.arange(window, dtype=dtype, device=device) - (window - 1) / 2
    g = torch.exp(-x.square() / (2 * sigma ** 2))
    return g / g.sum()


def ssim(pred: Tensor, target: Tensor, window: int = 11, sigma: float = 1.5, max_val: float = 1.0) -> Tensor:
    """Structural similarity (Wang et al. 2004) with a Gaussian window, per image.

    Local statistics use a separable normalised Gaussian ``window x window`` kernel (standard
    deviation ``sigma``), applied per channel with ``conv2d`` over the valid region only (no
    padding), constants ``C1 = (0.01 max_val)^2`` and ``C2 = (0.03 max_val)^2`` and population
    (not sample) covariances; the SSIM map is averaged over channels and positions. This matches
    ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=max_val, channel_axis=0)`` for ``window = 11``.

    Args:
        pred: ``(B, C, H, W)`` images, ``H, W >= window``.
        target: reference images of the same shape and device.
        window: odd kernel size (11).
        sigma: Gaussian standard deviation in pixels (1.5).
        max_val: the data range (1.0 for images in [0, 1]).

    Returns:
        ``(B,)`` mean SSIM (1 for identical images). Differentiable.
    """
    op = "ssim"
    pred, target = _images(pred, target, op, (4,), "(B, C, H, W)")
    if not isinstance(window, int) or isinstance(window, bool) or window < 1 or window % 2 == 0:
        raise ValueError(f"{op}: argument 'window' must be an odd positive int, got {window!r}")
    if not isinstance(sigma, (int, float)) or not sigma > 0:
        raise ValueError(f"{op}: argument 'sigma' must be a positive number, got {sigma!r}")
    max_val = _max_val(max_val, op)
    B, C, H, W = pred.shape
    if H < window or W < window:
        raise ValueError(f"{op}: argument 'pred' must be at least {window}x{window} pixels (the window), "
                         f"got {H}x{W}")
    g = _gaussian_window(window, float(sigma), pred.dtype, pred.device)
    kh = g.view(1, 1, window, 1).expand(C, 1, window, 1)
    kw = g.view(1, 1, 1, window).expand(C, 1, 1, window)

    def blur(x: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(x, kh, groups=C), kw, groups=C)

    c1, c2 = (0.01 * max_val) ** 2, (0.03 * max_val) ** 2
    mu_x, mu_y = blur(pred), blur(target)
    sxx = blur(pred * pred) - mu_x.square()
    syy = blur(target * target) - mu_y.square()
    sxy = blur(pred * target) - mu_x * mu_y
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x.square() + mu_y.square() + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1)


# ------------------------------------------------------------------------------------------------
# Fréchet distance (FID)


def _float64_array(value, name: str, op: str, ndim: int, what: str) -> np.ndarray:
    """``value`` (numpy array or tensor) as a finite float64 numpy array of ``ndim`` dimensions."""
    if isinstance(value, Tensor):
        value = value.detach().cpu().double().numpy()
    elif isinstance(value, np.ndarray):
        if not (np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)):
            raise TypeError(f"{op}: argument '{name}' must be a real-valued array {what}, got dtype {value.dtype}")
        value = value.astype(np.float64, copy=False)
    else:
        raise TypeError(f"{op}: argument '{name}' must be a numpy array or tensor {what}, got {type(value).__name__}")
    if value.ndim != ndim:
        raise ValueError(f"{op}: argument '{name}' must be {what}, got shape {tuple(value.shape)}")
    if not np.isfinite(value).all():
        raise ValueError(f"{op}: argument '{name}' has non-finite values (NaN or inf)")
    return value


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Fréchet distance between the Gaussians ``N(mu1, sigma1)`` and ``N(mu2, sigma2)`` (Heusel et al. 2017's FID).

    ``|mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2))``, computed as the reference FID
    code (``bioinf-jku/TTUR``, ``mseitzer/pytorch-fid``) does: in float64, the matrix square root by
    ``scipy.linalg.sqrtm``; when the product is singular (the root is not finite) ``eps * I`` is added to both
    covariances and the root taken again; tiny imaginary parts of the root (numerical noise) are discarded,
    large ones raise ``ValueError``. With fewer samples than feature dimensions the covariances are singular and
    the value is biased upward; compare FIDs computed with the same sample counts.

    Args:
        mu1, mu2: ``(D,)`` means (numpy arrays or tensors, any real dtype; converted to float64).
        sigma1, sigma2: ``(D, D)`` covariance matrices (symmetric positive semi-definite).
        eps: the diagonal offset of the retry (pytorch-fid: 1e-6).

    Returns:
        The distance, a Python float (>= 0 up to rounding).
    """
    op = "frechet_distance"
    mu1 = _float64_array(mu1, "mu1", op, 1, "(D,)")
    mu2 = _float64_array(mu2, "mu2", op, 1, "(D,)")
    D = mu1.shape[0]
    if mu2.shape != (D,):
        raise ValueError(f"{op}: argument 'mu2' must have the shape of 'mu1' ({D},), got {tuple(mu2.shape)}")
    sigma1 = _float64_array(sigma1, "sigma1", op, 2, f"({D}, {D}) (the feature size of 'mu1')")
    sigma2 = _float64_array(sigma2, "sigma2", op, 2, f"({D}, {D}) (the feature size of 'mu1')")
    for name, sigma in (("sigma1", sigma1), ("sigma2", sigma2)):
        if sigma.shape != (D, D):
            raise ValueError(f"{op}: argument '{name}' must be ({D}, {D}) (the feature size of 'mu1'), "
                             f"got {tuple(sigma.shape)}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"{op}: argument 'eps' must be a positive number, got {eps!r}")
    if D == 0:
        return 0.0

    from scipy import linalg

    diff = mu1 - mu2
    with warnings.catch_warnings():
        # A singular product is expected (fewer samples than features); it is handled below, as pytorch-fid's
        # sqrtm(..., disp=False) does, rather than reported.
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            offset = np.eye(D) * eps
            covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        # pytorch-fid tolerates 1e-3 absolute on the diagonal; (ours) relative to the diagonal's scale, so
        # features of any magnitude are treated alike.
        imag = np.abs(np.diagonal(covmean).imag).max()
        scale = max(1.0, np.abs(np.diagonal(covmean).real).max())
        if imag > 1e-3 * scale:
            raise ValueError(f"{op}: the square root of sigma1 @ sigma2 has a large imaginary part ({imag:.3g}); "
                             "are 'sigma1' and 'sigma2' covariance matrices (symmetric positive semi-definite)?")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def feature_statistics(features) -> Tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of a set of feature vectors, FID's Gaussian fit.

    Args:
        features: ``(N, D)`` features (numpy array or tensor), one row per image, ``N >= 2``.

    Returns:
        ``(mu (D,), sigma (D, D))`` float64 numpy arrays: the mean and the unbiased sample covariance
        (``numpy.cov(features, rowvar=False)``, normalised by ``N - 1``, as the reference FID code).
    """
    op = "feature_statistics"
    x = _float64_array(features, "features", op, 2, "(N, D)")
    if x.shape[0] < 2:
        raise ValueError(f"{op}: argument 'features' must hold at least 2 rows (a covariance needs 2 samples), "
                         f"got shape {tuple(x.shape)}")
    mu = x.mean(0)
    centred = x - mu
    sigma = centred.T @ centred / (x.shape[0] - 1)
    return mu, sigma


def fid_from_features(features1, features2, eps: float = 1e-6) -> float:
    """FID between two sets of features: :func:`frechet_distance` of their :func:`feature_statistics`.

    Args:
        features1: ``(N1, D)`` features of the first image set (``N1 >= 2``).
        features2: ``(N2, D)`` features of the second set, the same ``D``.
        eps: as in :func:`frechet_distance`.

    Returns:
        The FID, a Python float.
    """
    op = "fid_from_features"
    a = _float64_array(features1, "features1", op, 2, "(N, D)")
    b = _float64_array(features2, "features2", op, 2, "(N, D)")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{op}: arguments 'features1' and 'features2' must have the same feature size D, "
                         f"got {a.shape[1]} and {b.shape[1]}")
    for name, x in (("features1", a), ("features2", b)):
        if x.shape[0] < 2:
            raise ValueError(f"{op}: argument '{name}' must hold at least 2 rows, got shape {tuple(x.shape)}")
    return frechet_distance(*feature_statistics(a), *feature_statistics(b), eps=eps)
