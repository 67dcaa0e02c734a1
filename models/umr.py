"""UMR: self-supervised single-view mesh reconstruction with semantic part consistency (Li et al. 2020,
"Self-supervised Single-view 3D Reconstruction via Semantic Consistency", ECCV; NVlabs/UMR, on CMR's code).

From images, silhouettes and 2-D part segmentations (SCOPS in the paper; ground truth, optionally corrupted, on
the synthetic data), with no 3-D supervision and no keypoints, UMR learns per image a mesh (a category template
plus symmetric per-vertex offsets), a texture flow (where each texel of a UV map is sampled in the input image)
and a weak-perspective camera. Its contribution: 2-D part maps made consistent with a *canonical semantic UV
map* shared by every instance resolve the camera-shape ambiguity (section 3.1), and the template is learned
from a sphere by EM (section 3.2).

Building blocks, each unit-tested (``tests/test_umr.py``):

- :func:`symmetric_template`: the 642-vertex icosphere, left / right vertices paired (mirror symmetry);
- :class:`UmrModel`: CMR's reconstruction network (ResNet-18 -> 200-d; shape, camera-multiplex and texture-flow
  decoders) and its renderer (:func:`invrender.rasterize` + :func:`invrender.softras_blend`);
- the losses: :func:`semantic_uv_maps` / :func:`canonical_uv_map` (eq. 1), :func:`part_probability_loss`
  (eq. 2), :func:`vertex_part_loss` (eq. 3), :func:`texture_cycle_loss` (eqs. 5-6, face centroids through
  :func:`invrender.face_pixel_centroids`: never a dense face-by-pixel tensor), :func:`texture_dt_loss`,
  :func:`camera_entropy`, mask negative IoU, Laplacian, flatten and deformation;
- the EM template update (eq. 4, :meth:`UmrModel.m_step`) with the appendix's selection of consistent samples;
- :class:`UmrTask`: ``invrender train umr`` in the paper's stages, ``invrender eval`` (mask IoU, keypoint
  transfer PCK via texture flow and via camera, and on synthetic data pose error and Chamfer-L1).

Defaults are the paper's or its code's (marked "(code)", from ``../shared/reference-notes.md`` and the released
code); "(ours)" marks choices the paper leaves open. :class:`UmrConfig` also carries first-stage options of ours
(bounded, shared camera hypotheses; mesh gradients from the best hypothesis; a multiplex reset at each M-step;
eq. 1 from the mesh's projection; a flat-inside distance barrier; a recentred decoder; each image's lowest-loss
hypothesis trained, :func:`aligned_canonical_map` for eq. 1), all off by default and on
in ``configs/umr/airplane_cpu.yaml``, where they made the cameras learn at a CPU budget
(``benchmarks/results/umr-ablation.md``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

import invrender
from invrender.errors import ConfigError

from .networks import ResNet18
from .unicorn import SyntheticDataMixin, _Views

__all__ = ["UmrConfig", "UmrModel", "UmrTask", "camera_entropy", "canonical_uv_map", "part_probability_loss",
           "semantic_uv_maps", "symmetric_template", "texture_cycle_loss", "texture_dt_loss", "vertex_part_loss"]


# ------------------------------------------------------------------------------------------------
# Configuration


@dataclass
class UmrConfig:
    """Hyper-parameters of :class:`UmrModel` (the paper and its code unless marked)."""

    image_size: int = 256               # (code) SoftRas at 256 x 256; 64 for CPUs (configs/umr/*_cpu.yaml)
    num_parts: int = 4                  # SCOPS parts on CUB (code): head, neck, back, belly
    feature_dim: int = 200              # (code) ResNet-18 -> 200-d
    template_level: int = 3             # 642 vertices (code)
    template_radius: float = 0.75       # (ours) the sphere fills 3/4 of the view at scale 1
    num_cameras: int = 8                # (code) camera multiplex
    camera_elevation: float = 0.0       # (ours; UNICORN 30 on ShapeNet) degrees the hypotheses start above the horizon
    camera_bounds: Optional[Tuple[float, float, float]] = None  # (code az_ele_quat; UNICORN) see UmrModel.predict
    camera_shared_offsets: bool = False  # (ours) with camera_bounds: one pose offset, the hypotheses its turned copies
    reset_multiplex: bool = False       # (ours) each M-step resets the hypotheses' probabilities to uniform
    recenter_decoder: bool = False      # (ours) the M-step takes the offset it adds to the template off the decoder
    uv_size: Tuple[int, int] = (128, 256)  # (ours) texture-flow UV map (H, W); CPU configs (32, 64)
    flow_channels: int = 128            # (ours) width of the texture-flow decoder
    layers: int = 25                    # faces kept per pixel for the soft rasteriser (ours, as UNICORN)
    sigma: float = 1e-5                 # (code) SoftRas blur at 256^2; scale by (256 / image_size)^2 for less
    gamma: float = 1e-4                 # (code) SoftRas depth temperature
    lr: float = 1e-4                    # (code) Adam
    lr_decay: float = 5e-4              # (code) lr / (1 + lr_decay * iteration)
    betas: Tuple[float, float] = (0.9, 0.999)
    # Loss weights (code; reference-notes).
    mask_weight: float = 2.5
    laplacian_weight: float = 0.15
    flatten_weight: float = 5e-4
    regularizer_reduction: str = "sum"  # (code: SoftRas) Laplacian summed over vertices, flatten over edges; or "mean"
    deform_weight: float = 1.0
    texture_weight: float = 3.0         # perceptual with VGG weights from a file; masked L1 without (ours)
    texture_dt_weight: float = 3.0
    texture_dt_flat_inside: bool = False  # (ours) the barrier 0 on the whole silhouette (see mask_distance)
    texture_detach: bool = True         # (code: detach_shape, detach_cam) texture losses leave mesh and camera alone
    semantic_uv_source: str = "flow"    # eq. 1's instance maps: "flow" (paper) or "projection" (ours; m_step)
    texture_cycle_weight: float = 1.0
    gan_weight: float = 1.0
    camera_entropy_weight: float = 0.05
    part_probability_weight: float = 5.0
    part_vertex_weight: float = 10.0
    part_pixels: int = 128              # (ours) pixels sampled per part for eq. 3's Chamfer
    cycle_samples: int = 6              # (ours) N_c texture-flow samples per face in eq. 5
    select_fraction: float = 0.5        # (ours) share of the M-step's samples kept in Q and U (the appendix's top k)
    perceptual_weights: Optional[str] = None  # VGG16 weights file (torchvision layout); None: masked L1
    # The first E-step (stage 1; see UmrModel.losses).
    deform_start_round: int = 1         # (code, train_s1) the deformation loss applies after the first template update
    rigid_steps: int = 0                # (ours, UNICORN's stage 1) first iterations with one shape for all images
    shape_from_best: bool = False       # (ours, UNICORN's 3D step) mesh gradients from the most probable camera only
    camera_usage_weight: float = 0.0    # (ours, UNICORN's 0.02) sum_k |mean_b p_k - 1/K|: every hypothesis used
    semantic_trains_probability: bool = False  # (ours) eqs. 2-3 train the multiplex probabilities, as the mask loss
    # (ours; UCMR/UNICORN-style) "min_loss": from EM round camera_selection_round on, each image trains only its
    # hypothesis of lowest mask (+ semantic) loss, and the probabilities learn that choice by cross-entropy
    # (weight camera_choice_weight); "probability" (code): the probability-weighted multiplex.
    camera_selection: str = "probability"
    camera_selection_round: int = 0
    camera_choice_weight: float = 1.0
    # (ours, UNICORN's uniform prior carried to the min-loss choice) the choice minimises the loss plus
    # camera_balance_weight * log(K u_k), u the running share of images each hypothesis has won (balanced_choice):
    # a hypothesis that stops winning gets back the images it explains nearly as well, and no hypothesis dies.
    camera_balance_weight: float = 0.0
    # (ours) the M-step's template update: "mean_code" (eq. 4: the decoded mean code of the selected samples) or
    # "fit": the template fitted directly (per-vertex offsets, mirror symmetric, Adam) to the silhouettes of the
    # select_fraction of samples best explained by their most probable camera, under those cameras, with the mask
    # loss and the regularizers (the M-step maximising over the template given the E-step's cameras)
    template_update: str = "mean_code"
    template_fit_steps: int = 100
    template_fit_lr: float = 1e-2
    # (ours) False: once the semantic losses apply, the mask loss trains the mesh and the probabilities but not the
    # cameras' pose, scale and translation, which learn from the parts (eqs. 2-3): a camera cannot turn or stretch
    # to fit the silhouette of a wrong shape, so the shape has to change
    mask_trains_camera: bool = True
    m_step_align_hypotheses: bool = False  # (ours) eq. 1 from each sample's best-agreeing hypothesis (aligned_canonical_map)

    def __post_init__(self):
        def fail(name, expected, value):
            raise ConfigError(f"umr: model.{name} must be {expected}, got {value!r}")

        for name, lo in (("image_size", 32), ("num_parts", 1), ("feature_dim", 1), ("num_cameras", 1),
                         ("flow_channels", 1), ("layers", 1), ("part_pixels", 1), ("cycle_samples", 1),
                         ("deform_start_round", 0), ("rigid_steps", 0), ("camera_selection_round", 0),
                         ("template_fit_steps", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                fail(name, f"an int >= {lo}", v)
        if isinstance(self.template_level, bool) or not isinstance(self.template_level, int) or \
                not 1 <= self.template_level <= 5:
            fail("template_level", "an int in [1, 5]", self.template_level)
        uv = self.uv_size
        if (not isinstance(uv, (tuple, list)) or len(uv) != 2
                or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 8 and x % 8 == 0 for x in uv)):
            fail("uv_size", "a pair (H, W) of multiples of 8", uv)
        self.uv_size = tuple(uv)
        for name in ("template_radius", "sigma", "gamma", "lr", "template_fit_lr"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
                fail(name, "a positive number", v)
        for f in dataclasses.fields(self):
            if f.name.endswith("_weight") or f.name == "lr_decay":
                v = getattr(self, f.name)
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v >= 0):
                    fail(f.name, "a number >= 0", v)
        for name in ("shape_from_best", "semantic_trains_probability", "camera_shared_offsets", "reset_multiplex",
                     "texture_dt_flat_inside", "texture_detach", "recenter_decoder", "m_step_align_hypotheses",
                     "mask_trains_camera"):
            if not isinstance(getattr(self, name), bool):
                fail(name, "a bool", getattr(self, name))
        if self.regularizer_reduction not in ("sum", "mean"):
            fail("regularizer_reduction", "'sum' or 'mean'", self.regularizer_reduction)
        if self.template_update not in ("mean_code", "fit"):
            fail("template_update", "'mean_code' or 'fit'", self.template_update)
        if self.camera_selection not in ("probability", "min_loss"):
            fail("camera_selection", "'probability' or 'min_loss'", self.camera_selection)
        if self.semantic_uv_source not in ("flow", "projection"):
            fail("semantic_uv_source", "'flow' or 'projection'", self.semantic_uv_source)
        if not 0 < self.select_fraction <= 1:
            fail("select_fraction", "a number in (0, 1]", self.select_fraction)
        b = self.betas
        if not (isinstance(b, (tuple, list)) and len(b) == 2 and all(0 <= x < 1 for x in b)):
            fail("betas", "a pair in [0, 1)", b)
        self.betas = tuple(float(x) for x in b)
        if isinstance(self.camera_elevation, bool) or not isinstance(self.camera_elevation, (int, float)) or \
                not -90 <= self.camera_elevation <= 90:
            fail("camera_elevation", "degrees in [-90, 90]", self.camera_elevation)
        cb = self.camera_bounds
        if cb is not None:
            if (not isinstance(cb, (tuple, list)) or len(cb) != 3
                    or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x <= 180 for x in cb)):
                fail("camera_bounds", "None or three angles in [0, 180] degrees (azimuth, elevation, roll)", cb)
            self.camera_bounds = tuple(float(x) for x in cb)
        if not self.mask_trains_camera and not self.texture_detach:
            fail("mask_trains_camera", "true unless texture_detach is true (its render is the one it detaches)", False)
        if self.m_step_align_hypotheses and self.semantic_uv_source != "projection":
            fail("m_step_align_hypotheses", "false unless semantic_uv_source is 'projection' (the maps it compares "
                 "depend on the camera)", True)
        if self.camera_shared_offsets and cb is None:
            fail("camera_shared_offsets", "false without camera_bounds (the offsets it shares)", True)


# ------------------------------------------------------------------------------------------------
# Template


def symmetric_template(level: int = 3, radius: float = 1.0, dtype=torch.float32) -> Tuple[Tensor, Tensor, Tensor]:
    """The icosphere as CMR's symmetric template: ``verts (V, 3)``, ``faces (F, 3)`` and ``mirror (V,)``, the
    index of each vertex's reflection through the plane ``x = 0`` (itself on the plane). The icosahedron's
    standard orientation is symmetric under ``x -> -x`` and subdivision keeps it, so every reflected vertex is
    a vertex (found to 1e-9); level 3 gives CMR / UMR's 642 vertices."""
    verts, faces = invrender.mesh.icosphere(level, radius, dtype=torch.float64)
    reflected = verts * verts.new_tensor([-1.0, 1.0, 1.0])
    d, mirror = (reflected[:, None] - verts[None]).norm(dim=-1).min(1)
    if float(d.max()) > 1e-9 * max(1.0, radius):
        raise RuntimeError("symmetric_template: the icosphere is not mirror-symmetric in x (internal error)")
    return verts.to(dtype), faces, mirror


def _texel_directions(uv_size: Tuple[int, int]) -> Tensor:
    """``(Hu, Wu, 3)`` float64 unit vectors of the texel centres: ``Phi`` onto the unit sphere, the inverse of
    :func:`_vertex_uvs` (u around y from -z through +x, v down from the +y pole)."""
    hu, wu = uv_size
    u = (torch.arange(wu, dtype=torch.float64) + 0.5) / wu
    v = (torch.arange(hu, dtype=torch.float64) + 0.5) / hu
    theta, phi = torch.meshgrid(v * math.pi, u * 2 * math.pi - math.pi, indexing="ij")
    return torch.stack([torch.sin(theta) * torch.sin(phi), torch.cos(theta), torch.sin(theta) * torch.cos(phi)], -1)


def sphere_view_flow(uv_size: Tuple[int, int], radius: float) -> Tensor:
    """``(Hu, Wu, 2)`` ``grid_sample`` coordinates of the texel centres' sphere points (``Phi``,
    :func:`_texel_directions`) seen by the identity weak-perspective camera at scale 1: the texture flow's starting
    point (ours)."""
    d = _texel_directions(uv_size)
    return (torch.stack([d[..., 0], -d[..., 1]], -1) * radius).float()


def _vertex_uvs(verts: Tensor) -> Tensor:
    """Spherical UVs of points ``(V, 3)`` (u around y from +z toward +x, v down from the +y pole), the map
    :func:`invrender.mesh.spherical_uvs` uses per face corner: Phi, from UV space to the template surface."""
    x, y, z = verts.unbind(-1)
    r = verts.norm(dim=-1).clamp_min(1e-12)
    u = (torch.atan2(x, z) + math.pi) / (2 * math.pi)
    v = torch.acos((y / r).clamp(-1, 1)) / math.pi
    return torch.stack([u, v], -1)


# ------------------------------------------------------------------------------------------------
# Losses (unit-tested one by one)


def _grid_to_ndc(grid: Tensor) -> Tensor:
    """``grid_sample`` coordinates (x right, y down, [-1, 1]) -> NDC (x right, y up)."""
    return grid * grid.new_tensor([1.0, -1.0])


def semantic_uv_maps(parts: Tensor, flow: Tensor) -> Tensor:
    """Each instance's semantic UV map ``I_flow(P)`` (the summand of eq. 1): the part maps ``parts (B, Np, H, W)``
    sampled bilinearly at the texture flow ``flow (B, Hu, Wu, 2)`` (``grid_sample`` coordinates: x right, y down,
    [-1, 1]; ``align_corners=False``). Returns ``(B, Np, Hu, Wu)``."""
    return F.grid_sample(parts, flow, mode="bilinear", padding_mode="zeros", align_corners=False)


def texel_faces(uv_size: Tuple[int, int], verts: Tensor, faces: Tensor, chunk: int = 4096) -> Tuple[Tensor, Tensor]:
    """Where each texel of the UV map lies on the template: ``Phi`` of the texel centres (the unit sphere's point
    of spherical coordinates u, v, as :func:`_vertex_uvs`) cast from the centre onto the mesh of the unit-sphere
    vertices ``verts (V, 3)``, ``faces (F, 3)``. Returns ``face (Hu Wu,)`` the face hit and ``bary (Hu Wu, 3)``
    the barycentric weights of the hit point (so a deformed mesh carries every texel along)."""
    d = _texel_directions(uv_size).reshape(-1, 3)
    tri = verts.double()[faces]                                        # (F, 3, 3)
    a, e1, e2 = tri[:, 0], tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    face_out, bary_out = [], []
    for start in range(0, d.shape[0], chunk):
        ray = d[start:start + chunk, None]                             # (T, 1, 3) from the origin (Moller-Trumbore)
        h = torch.cross(ray.expand(-1, e2.shape[0], 3), e2.expand(ray.shape[0], -1, 3), dim=-1)
        det = (e1 * h).sum(-1)
        svec = -a                                                      # origin - a
        b1 = (svec * h).sum(-1) / det
        q = torch.cross(svec, e1, dim=-1)
        b2 = (ray * q).sum(-1) / det
        t = (e2 * q).sum(-1) / det
        score = torch.minimum(torch.minimum(b1, b2), 1 - b1 - b2)      # >= 0 inside the triangle
        score = torch.where((t > 0) & (det.abs() > 1e-12), score, torch.full_like(score, -math.inf))
        best = score.argmax(1)
        rows = torch.arange(best.shape[0])
        bb1, bb2 = b1[rows, best], b2[rows, best]
        face_out.append(best)
        bary_out.append(torch.stack([1 - bb1 - bb2, bb1, bb2], -1).clamp_min(0))
    bary = torch.cat(bary_out)
    return torch.cat(face_out), (bary / bary.sum(-1, keepdim=True)).float()


def canonical_uv_map(uv_maps: Tensor, selected: Optional[Tensor] = None) -> Tensor:
    """Eq. 1: the canonical semantic UV map, the mean of the instance maps ``uv_maps (N, Np, Hu, Wu)`` over the
    subset ``selected`` (a boolean ``(N,)`` or indices; all when None). Returns ``(Np, Hu, Wu)``."""
    if selected is not None:
        uv_maps = uv_maps[selected]
    if uv_maps.shape[0] == 0:
        raise ValueError("canonical_uv_map: argument 'selected' selects no sample")
    return uv_maps.mean(0)


def aligned_canonical_map(uv_maps: Tensor, seen: Tensor, exemplar: Tuple[int, int], fraction: float,
                          iterations: int = 5) -> Tuple[Tensor, Tensor, Tensor]:
    """Eq. 1 with each sample's camera hypothesis chosen to agree with the others (ours; a congealing of the
    instance maps): ``uv_maps (N, K, Np, Hu, Wu)`` are the instance semantic UV maps of ``N`` samples under each of
    ``K`` hypotheses, ``seen (N, K, 1, Hu, Wu)`` where each is observed. Starting from the map of ``exemplar``
    ``(sample, hypothesis)``, each round picks every sample's hypothesis nearest the current map (mean squared
    difference over the texels both observe), keeps the ``fraction`` of samples nearest it and averages their maps
    over the texels each observes. Returns ``(canonical (Np, Hu, Wu), hypothesis (N,), selected indices)``."""
    N, K = uv_maps.shape[:2]
    if seen.shape[:2] != (N, K) or seen.shape[2] != 1 or seen.shape[3:] != uv_maps.shape[3:]:
        raise ValueError(f"aligned_canonical_map: argument 'seen' must be {(N, K, 1, *uv_maps.shape[3:])}, "
                         f"got {tuple(seen.shape)}")
    if not (0 <= exemplar[0] < N and 0 <= exemplar[1] < K):
        raise ValueError(f"aligned_canonical_map: argument 'exemplar' must index ({N}, {K}), got {exemplar}")
    canonical, observed = uv_maps[exemplar], seen[exemplar]
    keep = max(1, math.ceil(fraction * N))
    for _ in range(iterations):
        both = seen * observed
        distance = (both * (uv_maps - canonical).pow(2)).flatten(2).sum(2) / both.flatten(2).sum(2).clamp_min(1.0)
        nearest, hypothesis = distance.min(1)
        selected = nearest.topk(keep, largest=False).indices
        rows, rows_seen = uv_maps[selected, hypothesis[selected]], seen[selected, hypothesis[selected]]
        counts = rows_seen.sum(0)
        canonical, observed = (rows * rows_seen).sum(0) / counts.clamp_min(1.0), (counts > 0).to(uv_maps.dtype)
    return canonical, hypothesis, selected


def part_probability_loss(rendered_parts: Tensor, parts: Tensor) -> Tensor:
    """Eq. 2: ``||P - R(Phi(P_uv); theta)||^2`` per image, as the mean squared error over parts and pixels
    (the paper: MSE, more robust than KL). ``rendered_parts`` and ``parts``: ``(B, Np, H, W)``. Returns ``(B,)``."""
    return (rendered_parts - parts).pow(2).flatten(1).mean(1)


def vertex_part_loss(points: Tensor, vertex_part: Tensor, part_labels: Tensor, num_parts: int,
                     pixels: int = 128, generator: Optional[torch.Generator] = None) -> Tensor:
    """Eq. 3: ``sum_p 1/|V_p| Chamfer(R(V_p; theta), Y_p)`` per image.

    Args:
        points: ``(B, V, 2)`` the template's vertices projected to NDC by each image's camera.
        vertex_part: ``(V,)`` int64 part of each template vertex (from the canonical UV map), -1 for none.
        part_labels: ``(B, H, W)`` int64 the image's part label per pixel (0 background, ``1..Np`` the parts).
        num_parts: ``Np``.
        pixels: pixels drawn per part and image (all when fewer): the set ``Y_p``.
        generator: for drawing the pixels.

    The Chamfer distance is the squared one, each direction averaged over its points (so the ``1 / |V_p|`` of
    the vertex direction is built in); a part absent from the image, or without template vertices, adds 0.

    Returns ``(B,)``.
    """
    B, H, W = part_labels.shape
    dtype, device = points.dtype, points.device
    xs = (2 * torch.arange(W, device=device, dtype=dtype) + 1 - W) / W
    ys = (H - 2 * torch.arange(H, device=device, dtype=dtype) - 1) / H
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], -1).reshape(-1, 2)  # (H W, 2) (x, y)
    total = points.new_zeros(B)
    labels = part_labels.reshape(B, -1)
    for p in range(num_parts):
        vp = (vertex_part == p).nonzero().squeeze(1)
        if vp.numel() == 0:
            continue
        x = points[:, vp]                                              # (B, Vp, 2)
        inside = labels == p + 1                                       # (B, H W)
        count = inside.sum(1)
        if int(count.max()) == 0:
            continue
        # Draw up to `pixels` of each image's part-p pixels: random keys, part pixels first.
        keys = torch.rand(B, H * W, generator=generator, device="cpu").to(device)
        keys = torch.where(inside, keys, keys + 2.0)
        take = min(pixels, H * W)
        order = keys.topk(take, dim=1, largest=False).indices          # (B, take)
        y = grid[order]                                                # (B, take, 2)
        lengths = count.clamp(max=take)
        has = lengths > 0
        d = invrender.chamfer_distance(x, y, y_lengths=lengths, batch_reduction=None)
        total = total + torch.where(has, d, torch.zeros_like(d))
    return total


def face_uv_samples(face_uvs: Tensor, samples: int) -> Tensor:
    """``samples`` fixed points inside each face's UV triangle ``face_uvs (F, 3, 2)`` (a symmetric barycentric
    pattern: the centroid, then points halfway to each corner, ...). Returns ``(F, samples, 2)``."""
    pattern = [(1 / 3, 1 / 3, 1 / 3)]
    for t in (0.5, 0.2, 0.65):
        for k in range(3):
            b = [(1 - t) / 3 * 1.0] * 3
            b[k] += t
            pattern.append(tuple(b))
    bary = face_uvs.new_tensor(pattern[:samples] if samples <= len(pattern) else
                               pattern + [pattern[0]] * (samples - len(pattern)))
    return torch.einsum("sk,fkc->fsc", bary, face_uvs)


def texture_cycle_loss(flow_at_faces: Tensor, centroids: Tensor, total: Tensor, eps: float = 1e-6) -> Tensor:
    """Eqs. 5-6: ``1/|F| sum_j ||C_in^j - C_out^j||^2`` per image, over the faces the render covers.

    Args:
        flow_at_faces: ``(B, F, Nc, 2)`` the texture flow (NDC, y up) at ``Nc`` UV points inside each face:
            where the flow fetches face ``j``'s texture in the image; ``C_in^j`` is their mean.
        centroids: ``(B, F, 2)`` ``C_out^j``: the probability-weighted centroid of the pixels face ``j`` covers
            (:func:`invrender.face_pixel_centroids`).
        total: ``(B, F)`` the faces' total weight; faces below ``eps`` (not rendered) are left out.

    Returns ``(B,)`` (0 for an image that covers no face).
    """
    c_in = flow_at_faces.mean(2)
    err = (c_in - centroids).pow(2).sum(-1)
    seen = (total > eps).to(err.dtype)
    return (err * seen).sum(1) / seen.sum(1).clamp_min(1.0)


def texture_dt_loss(flow: Tensor, distance: Tensor) -> Tensor:
    """CMR's texture distance-transform loss: the mean, over the UV map, of ``distance (B, 1, H, W)`` (low inside
    the silhouette, high outside: :func:`mask_distance`) at the flow's sample points, so the flow fetches colours
    from the object. ``flow (B, Hu, Wu, 2)``; returns ``(B,)``."""
    return F.grid_sample(distance, flow, mode="bilinear", padding_mode="border", align_corners=False).flatten(1).mean(1)


def camera_entropy(prob: Tensor) -> Tensor:
    """The camera multiplex's entropy ``-sum_k p_k log p_k`` per image, ``prob (B, K)`` -> ``(B,)``."""
    return -(prob * prob.clamp_min(1e-12).log()).sum(1)


def camera_usage(prob: Tensor) -> Tensor:
    """How unevenly a batch uses the camera multiplex: ``sum_k |mean_b p_k - 1/K|`` for ``prob (B, K)`` (UNICORN's
    prior on its pose candidates; 0 when every hypothesis is chosen equally often, ``2 (K - 1) / K`` when one
    hypothesis takes every image). A scalar."""
    return (prob.mean(0) - 1.0 / prob.shape[1]).abs().sum()


def balanced_choice(score: Tensor, usage: Tensor, weight: float) -> Tensor:
    """Each image's hypothesis of lowest ``score (B, K)`` after a logit adjustment by the running share ``usage (K,)``
    (sums to 1) of images each hypothesis has won: ``argmin_k score_k + weight * log(K usage_k)`` -> ``(B,)`` long.

    A hypothesis used more than ``1/K`` pays, one used less gains, without bound as its share goes to 0 (the share
    is clamped at ``1e-3 / K``), so one that stopped winning is tried again on the images it explains nearly best.
    ``weight`` 0: the plain argmin. This carries UNICORN's uniform prior on its pose candidates, which acts on
    probabilities, to a choice by loss, where a prior on the probabilities cannot reach the choice."""
    if weight == 0:
        return score.argmin(1)
    K = score.shape[1]
    prior = (usage.to(score.dtype) * K).clamp_min(1e-3).log()
    return (score + weight * prior).argmin(1)


def mask_distance(mask: Tensor, k: float = 50.0, flat_inside: bool = False) -> Tensor:
    """CMR's distance-transform barrier of silhouettes ``mask (B, 1, H, W)`` -> ``(B, 1, H, W)`` in (0, 1):
    ``sigmoid(k (edt(outside) - edt(inside)) / max(H, W))`` (code: ``compute_dt_barrier``, k = 50), near 0 inside
    the mask and near 1 outside; an empty mask gives 0 everywhere (no pull).

    ``flat_inside`` (ours): ``2 sigmoid(k edt(outside) / max(H, W)) - 1``, exactly 0 on the whole silhouette. The
    signed barrier keeps falling with the depth inside, so it pulls every texel of the flow toward the
    silhouette's deepest pixels; on thin shapes at low resolution (an airplane at 64^2 is 3 pixels deep) that pull
    is as strong as the barrier itself and the flow collapses onto the fuselage."""
    from scipy import ndimage

    out = torch.zeros_like(mask, dtype=torch.float32, device="cpu")
    m = (mask > 0.5).cpu().numpy()
    size = max(m.shape[-2:])
    for b in range(m.shape[0]):
        if m[b, 0].any():
            outside = ndimage.distance_transform_edt(~m[b, 0])
            if flat_inside:
                out[b, 0] = (2 * torch.sigmoid(torch.from_numpy(k * outside / size)) - 1).float()
            else:
                signed = outside - ndimage.distance_transform_edt(m[b, 0])
                out[b, 0] = torch.sigmoid(torch.from_numpy(k * signed / size)).float()
    return out.to(device=mask.device, dtype=mask.dtype)


#: The gradient reversal's factor in front of the code's discriminator (``discriminators.Discriminator``).
GAN_REVERSAL = 0.2


def _quaternion_multiply(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product of ``(..., 4)`` quaternions ``(w, x, y, z)``: the rotation ``b`` then ``a``."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([aw * bw - ax * bx - ay * by - az * bz,
                        aw * bx + ax * bw + ay * bz - az * by,
                        aw * by - ax * bz + ay * bw + az * bx,
                        aw * bz + ax * by - ay * bx + az * bw], -1)


def axis_angle_quaternion(angle: Tensor, axis: int) -> Tensor:
    """Quaternions ``(..., 4)`` ``(w, x, y, z)`` of turns by ``angle (...)`` radians about coordinate ``axis``."""
    q = torch.zeros(*angle.shape, 4, dtype=angle.dtype, device=angle.device)
    q[..., 0] = torch.cos(angle / 2)
    q[..., 1 + axis] = torch.sin(angle / 2)
    return q


def base_quaternions(num: int, elevation_deg: float = 0.0) -> Tensor:
    """The camera multiplex's ``num`` starting rotations ``(num, 4)``: azimuths ``360 k / num`` degrees about the
    vertical axis (then ``elevation_deg`` about x), so every hypothesis starts on a different side (ours, as
    CSM / U-CMR spread theirs)."""
    a = torch.arange(num, dtype=torch.float64) * (2 * math.pi / num)
    qa = torch.stack([torch.cos(a / 2), torch.zeros_like(a), torch.sin(a / 2), torch.zeros_like(a)], -1)
    e = math.radians(elevation_deg)
    qe = torch.tensor([math.cos(e / 2), math.sin(e / 2), 0.0, 0.0], dtype=torch.float64).expand_as(qa)
    return _quaternion_multiply(qe, qa).float()


class UmrModel(nn.Module):
    """CMR's reconstruction network with UMR's semantic-consistency state (buffers: the template, the canonical
    semantic UV map, the template vertices' part labels, the EM round).

    :meth:`predict` maps images ``(B, 3, S, S)`` in [0, 1] to a dict:

    - ``features (B, 200)``: ResNet-18 pooled features -> Linear -> LeakyReLU (CMR's encoder);
    - ``delta (B, V, 3)``: the shape decoder's per-vertex offsets, predicted for the vertices with ``x >= 0`` and
      mirrored to the others (``x -> -x``; 0 in x on the symmetry plane); ``verts = template + delta``;
    - the camera multiplex ``scale (B, K)``, ``translation (B, K, 2)`` (NDC), ``quaternion (B, K, 4)`` (object to
      view, each hypothesis a small turn of its :func:`base_quaternions` start) and ``prob (B, K)`` (softmax);
      with ``camera_bounds = (a, e, r)`` degrees (the code's ``az_ele_quat``, UNICORN's bounded pose offsets) each
      hypothesis is instead ``R_z(roll) R_x(elevation) R_y(azimuth)`` with azimuth its start ``360 k / K`` plus at
      most ``a``, elevation ``camera_elevation`` plus at most ``e``, roll at most ``r`` (tanh-bounded); with
      ``camera_shared_offsets`` the offsets are hypothesis 0's for all, so hypothesis ``k`` is hypothesis 0's
      camera with the object turned ``360 k / K`` degrees about its vertical axis (its symmetric alternatives);
    - ``flow (B, Hu, Wu, 2)``: the texture flow, for each texel of the UV map the image point (``grid_sample``
      coordinates, tanh-bounded) its colour comes from, starting from :func:`sphere_view_flow` (ours); ``Phi`` maps the UV map to the template's surface by the
      sphere's spherical coordinates (:func:`_vertex_uvs`, fixed as the template deforms).

    :meth:`render` draws meshes with a weak-perspective camera through :func:`invrender.rasterize` and
    :func:`invrender.softras_blend` (SoftRas), textured by the UV map (any channels: RGB and part probabilities
    are drawn in one pass).
    """

    def __init__(self, config: UmrConfig):
        super().__init__()
        self.config = c = config
        verts, faces, mirror = symmetric_template(c.template_level, c.template_radius)
        sphere = verts / c.template_radius
        V = verts.shape[0]
        indep = (verts[:, 0] >= -1e-6).nonzero().squeeze(1)
        slot = torch.full((V,), -1, dtype=torch.long)
        slot[indep] = torch.arange(indep.numel())
        source = torch.where(slot >= 0, slot, slot[mirror])
        sign = torch.ones(V, 3)
        sign[slot < 0, 0] = -1.0
        sign[verts[:, 0].abs() < 1e-6, 0] = 0.0      # on the symmetry plane: no sideways offset
        self.register_buffer("template", verts.clone())
        self.register_buffer("faces", faces)
        edges = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).sort(1).values
        self._num_edges = int(torch.unique(edges, dim=0).shape[0])
        self.register_buffer("mirror", mirror)
        self.register_buffer("delta_source", source)
        self.register_buffer("delta_sign", sign)
        self.register_buffer("face_uvs", invrender.mesh.spherical_uvs(sphere, faces))
        self.register_buffer("vertex_uvs", _vertex_uvs(sphere))
        self.register_buffer("vertex_sphere", sphere.clone(), persistent=False)   # the unit sphere (Phi's image)
        self.register_buffer("cycle_uvs", face_uv_samples(self.face_uvs, c.cycle_samples))
        self.register_buffer("canonical_parts", torch.zeros(c.num_parts, *c.uv_size))
        self.register_buffer("vertex_part", torch.full((V,), -1, dtype=torch.long))
        self.register_buffer("em_round", torch.zeros((), dtype=torch.long))
        self.register_buffer("base_quaternion", base_quaternions(c.num_cameras, c.camera_elevation))
        # the running share of images each hypothesis wins (camera_balance_weight; saved only when it is used, so
        # checkpoints without it still load)
        self.register_buffer("choice_usage", torch.full((c.num_cameras,), 1.0 / c.num_cameras),
                             persistent=c.camera_balance_weight > 0)
        self.register_buffer("base_azimuth", torch.arange(c.num_cameras, dtype=torch.float32) * (2 * math.pi / c.num_cameras),
                             persistent=False)

        self.encoder = ResNet18()
        self.feature = nn.Sequential(nn.Linear(ResNet18.out_features, c.feature_dim), nn.LeakyReLU(0.2))
        self.shape_head = nn.Linear(c.feature_dim, indep.numel() * 3)
        nn.init.normal_(self.shape_head.weight, std=1e-4)    # (code) offsets start near 0
        nn.init.zeros_(self.shape_head.bias)
        self.camera_head = nn.Linear(c.feature_dim, c.num_cameras * 8)  # scale 1, translation 2, quaternion 4, logit 1
        nn.init.normal_(self.camera_head.weight, std=1e-4)
        nn.init.zeros_(self.camera_head.bias)
        hu, wu = c.uv_size
        ch = c.flow_channels
        self._flow_start = (ch, hu // 8, wu // 8)
        self.flow_fc = nn.Sequential(nn.Linear(c.feature_dim, ch * (hu // 8) * (wu // 8)), nn.LeakyReLU(0.2))
        layers: List[nn.Module] = []
        width = ch
        for _ in range(3):
            out = max(width // 2, 16)
            layers += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                       nn.Conv2d(width, out, 3, 1, 1), nn.BatchNorm2d(out), nn.LeakyReLU(0.2)]
            width = out
        layers += [nn.Conv2d(width, 2, 3, 1, 1)]
        self.flow_decoder = nn.Sequential(*layers)
        # (ours) The flow starts as the sphere's own orthographic view (each texel fetches the image point where
        # the template shows it at the identity camera) instead of every texel fetching the image centre
        # (tanh(~0)): at our budgets the flow otherwise stays collapsed on a few pixels and the semantic UV maps
        # with it. The last layer starts at zero so the flow starts exactly there.
        nn.init.zeros_(self.flow_decoder[-1].weight)
        nn.init.zeros_(self.flow_decoder[-1].bias)
        self.register_buffer("flow_start", sphere_view_flow(c.uv_size, c.template_radius))
        self.camera = invrender.cameras.WeakPerspectiveCamera(depth_offset=2.0)
        from invrender.renderers import LayeredRenderer

        self._texturer = LayeredRenderer(self.camera, c.image_size, c.layers, c.sigma, kind="sigmoid")
        self.discriminator = None
        if c.gan_weight > 0:
            from .networks import DCGANDiscriminator

            self.discriminator = DCGANDiscriminator(c.image_size, in_channels=3, channels=32, spectral_norm=True)
        self.perceptual = None
        if c.perceptual_weights:
            from .networks import PerceptualLoss

            self.perceptual = PerceptualLoss(c.perceptual_weights)

    # -- prediction ------------------------------------------------------------------------------------

    def mirror_offsets(self, indep: Tensor) -> Tensor:
        """``(B, V_indep, 3)`` offsets of the ``x >= 0`` vertices -> ``(B, V, 3)`` mirror-symmetric offsets."""
        return indep[:, self.delta_source] * self.delta_sign.to(indep.dtype)

    def predict(self, images: Tensor, rigid: bool = False) -> Dict[str, Tensor]:
        """``rigid``: every image of the batch gets the same shape, the decoded mean code of the batch
        ``template + D_shape(mean_b E(I_b))`` (the code detached: the shape does not train the encoder), so the
        cameras explain the silhouettes (:attr:`UmrConfig.rigid_steps`). It is the shape the M-step's template
        update (eq. 4) reads out, learned directly; the decoder's weights move it as fast as the instance shapes
        later (its bias alone would move ``lr`` per step)."""
        c = self.config
        if images.dim() != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != (c.image_size,) * 2:
            raise ValueError(f"UmrModel: argument 'images' must be (B, 3, {c.image_size}, {c.image_size}), "
                             f"got {tuple(images.shape)}")
        B, K = images.shape[0], c.num_cameras
        f = self.feature(self.encoder(images))
        shape = self.shape_head(f.detach().mean(0, keepdim=True)).expand(B, -1) if rigid else self.shape_head(f)
        delta = self.mirror_offsets(shape.reshape(B, -1, 3))
        cam = self.camera_head(f).view(B, K, 8)
        scale = F.softplus(cam[..., 0] + math.log(math.e - 1.0))            # 1 at the start
        translation = cam[..., 1:3]
        if c.camera_bounds is None:
            turn = cam[..., 3:7] + cam.new_tensor([1.0, 0.0, 0.0, 0.0])      # near the identity at the start
            quaternion = _quaternion_multiply(self.base_quaternion.to(f.dtype).expand(B, K, 4),
                                              F.normalize(turn, dim=-1))
        else:
            offsets = cam[..., 3:6]
            if c.camera_shared_offsets:
                offsets = offsets[:, :1].expand(B, K, 3)
            az, el, roll = (torch.tanh(offsets) * cam.new_tensor(c.camera_bounds) * (math.pi / 180)).unbind(-1)
            az = az + self.base_azimuth.to(f.dtype)
            el = el + math.radians(c.camera_elevation)
            quaternion = _quaternion_multiply(axis_angle_quaternion(roll, 2), _quaternion_multiply(
                axis_angle_quaternion(el, 0), axis_angle_quaternion(az, 1)))
        prob = torch.softmax(cam[..., 7], dim=1)
        h = self.flow_fc(f).view(B, *self._flow_start)
        start = torch.atanh(self.flow_start.to(h.dtype).clamp(-0.99, 0.99)).permute(2, 0, 1)
        flow = torch.tanh(self.flow_decoder(h) + start).permute(0, 2, 3, 1)
        return {"features": f, "delta": delta, "verts": self.template.to(f.dtype) + delta, "scale": scale,
                "translation": translation, "quaternion": quaternion, "prob": prob, "flow": flow}

    @staticmethod
    def best_camera(out: Dict[str, Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
        """The most probable hypothesis of :meth:`predict`'s multiplex: ``scale (B,)``, ``translation (B, 2)``,
        ``quaternion (B, 4)``."""
        best = out["prob"].argmax(1)
        idx = torch.arange(best.shape[0], device=best.device)
        return out["scale"][idx, best], out["translation"][idx, best], out["quaternion"][idx, best]

    @staticmethod
    def multiplex_cameras(out: Dict[str, Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
        """Every hypothesis of :meth:`predict`'s multiplex, flattened image-major: ``scale (B K,)``, ``translation
        (B K, 2)``, ``quaternion (B K, 4)`` (to render ``verts.repeat_interleave(K, 0)``)."""
        return out["scale"].reshape(-1), out["translation"].reshape(-1, 2), out["quaternion"].reshape(-1, 4)

    def sample_flow(self, flow: Tensor, uv: Tensor) -> Tensor:
        """The texture flow ``(B, Hu, Wu, 2)`` read at UV points ``uv (B, ..., 2)`` (circular in u), in NDC."""
        return _grid_to_ndc(self._texturer.sample_texture(flow.permute(0, 3, 1, 2), uv))

    def projected_flow(self, verts: Tensor, scale: Tensor, translation: Tensor, quaternion: Tensor,
                       fragments=None) -> Tuple[Tensor, Tensor]:
        """The texture flow the cycle (eqs. 5-6) asks for: ``(B, Hu, Wu, 2)`` ``grid_sample`` coordinates where each
        texel's point on the mesh ``verts (B, V, 3)`` (:func:`texel_faces`) projects under the camera, and ``(B, 1,
        Hu, Wu)`` 1 where that point's face is seen in ``fragments`` (the render by that camera; all 1 without).
        ``semantic_uv_source: projection`` builds eq. 1's instance maps with it (ours)."""
        c = self.config
        if getattr(self, "_texel_faces", None) is None or self._texel_faces[0].device != verts.device:
            face, bary = texel_faces(c.uv_size, self.vertex_sphere.cpu(), self.faces.cpu())
            self._texel_faces = (face.to(verts.device), bary.to(verts.device))
        face, bary = self._texel_faces
        B = verts.shape[0]
        ndc = self.project(verts, scale, translation, quaternion)
        points = (bary.to(ndc.dtype)[None, :, :, None] * ndc[:, self.faces[face]]).sum(2)     # (B, T, 3)
        flow = _grid_to_ndc(points[..., :2]).view(B, *c.uv_size, 2)
        seen = torch.ones(B, 1, *c.uv_size, dtype=verts.dtype, device=verts.device)
        if fragments is not None:   # a depth test against the nearest face at the texel's pixel
            depth = points[..., 2]
            nearest = torch.where(fragments.face_idx[..., 0] >= 0, fragments.depth[..., 0],
                                  torch.full_like(fragments.depth[..., 0], -math.inf))
            at = F.grid_sample(nearest[:, None], flow, mode="nearest", padding_mode="zeros", align_corners=False)
            seen = (depth.view(B, 1, *c.uv_size) <= at + 4.0 / c.image_size).to(verts.dtype)   # 2 pixels of slope
        return flow, seen

    # -- rendering -------------------------------------------------------------------------------------

    def project(self, verts: Tensor, scale: Tensor, translation: Tensor, quaternion: Tensor) -> Tensor:
        """NDC ``(N, V, 3)`` of object-space ``verts (N, V, 3)`` by weak-perspective cameras ``(N,)``, ``(N, 2)``,
        ``(N, 4)``."""
        return self.camera.project(verts, scale=scale, translation=translation, rotation=quaternion)

    def render(self, verts: Tensor, scale: Tensor, translation: Tensor, quaternion: Tensor, texture: Tensor):
        """Soft renders of ``N`` meshes: ``(image (N, C, S, S), silhouette (N, 1, S, S), fragments)`` with the UV
        map ``texture (N, C, Hu, Wu)`` on a black background (SoftRas: ``sigma``, ``gamma``; depth range of the
        weak-perspective camera [1, 3])."""
        from invrender.renderers import _trim_layers

        c = self.config
        ndc = self.project(verts, scale, translation, quaternion)
        fragments = _trim_layers(invrender.rasterize(ndc, self.faces, c.image_size, c.layers, c.sigma))
        uvs = self.face_uvs.to(verts.dtype).expand(verts.shape[0], *self.face_uvs.shape)
        uv = invrender.interpolate(fragments, uvs)
        colors = self._texturer._sample_covered(texture, uv, fragments.face_idx)
        image, silhouette = invrender.softras_blend(fragments, colors.contiguous(), sigma=c.sigma, gamma=c.gamma,
                                                    znear=1.0, zfar=3.0)
        return image, silhouette, fragments

    def texture_map(self, images: Tensor, flow: Tensor) -> Tensor:
        """The UV texture ``(B, 3, Hu, Wu)``: the images sampled at the texture flow (CMR)."""
        return F.grid_sample(images, flow, mode="bilinear", padding_mode="border", align_corners=False)

    def configure_optimizers(self) -> Dict[str, torch.optim.Optimizer]:
        c = self.config
        main = [p for n, p in self.named_parameters() if not n.startswith("discriminator.") and p.requires_grad]
        out = {"reconstruction": torch.optim.Adam(main, lr=c.lr, betas=c.betas)}
        if self.discriminator is not None:
            out["discriminator"] = torch.optim.Adam(self.discriminator.parameters(), lr=c.lr, betas=c.betas)
        return out

    # -- losses and the E-step -------------------------------------------------------------------------

    @staticmethod
    def part_labels(parts: Tensor) -> Tensor:
        """Hard labels ``(B, H, W)`` of part maps ``(B, Np, H, W)``: ``1 + argmax`` where the parts' total is at least
        0.5, 0 (background) elsewhere."""
        return torch.where(parts.sum(1) >= 0.5, parts.argmax(1) + 1, torch.zeros_like(parts[:, 0], dtype=torch.long))

    def canonical_texture(self, min_probability: float = 0.25) -> Tensor:
        """The texture eq. 2 renders, ``(Np, Hu, Wu)``: each texel one-hot in the canonical map's most probable part
        (0 where that probability is below ``min_probability``), as the code renders one part label per face
        (``semantic_seg.png``, the arg-max of ``semantic_prob.npy``) rather than the averaged probabilities, whose
        blends (e.g. 0.55 / 0.39 on a texel) render as no part in particular."""
        best, label = self.canonical_parts.max(0)
        hot = F.one_hot(label, self.config.num_parts).permute(2, 0, 1).to(self.canonical_parts.dtype)
        return hot * (best >= min_probability).to(hot.dtype)

    def semantic_active(self, parts: Optional[Tensor]) -> bool:
        """Whether the semantic losses apply: part maps given, a canonical map built (after the first M-step) and
        a positive weight."""
        c = self.config
        return (parts is not None and int(self.em_round) > 0
                and (c.part_probability_weight > 0 or c.part_vertex_weight > 0))

    def selects_by_loss(self) -> bool:
        """Whether :meth:`losses` trains each image's hypothesis of lowest loss (``camera_selection: min_loss``
        from EM round ``camera_selection_round``) rather than the probability-weighted multiplex."""
        c = self.config
        return c.camera_selection == "min_loss" and c.num_cameras > 1 and int(self.em_round) >= c.camera_selection_round

    def _texture_error(self, rendered: Tensor, target: Tensor, mask: Tensor, repeat: int = 1) -> Tensor:
        """Per-render texture loss: the perceptual distance (VGG16 from a file) of the masked render and the
        masked image, or without weights their mean absolute difference (ours). ``rendered (B K, 3, S, S)``,
        ``target``, ``mask`` ``(B, ...)``, each target compared with its ``repeat`` consecutive renders."""
        masked_target = target * mask
        m = mask.repeat_interleave(repeat, 0)
        if self.perceptual is not None:
            return self.perceptual(rendered * m, target_features=self.perceptual.features(masked_target))
        return (rendered * m - masked_target.repeat_interleave(repeat, 0)).abs().flatten(1).mean(1)

    def losses(self, images: Tensor, masks: Tensor, parts: Optional[Tensor] = None,
               generator: Optional[torch.Generator] = None,
               step: Optional[int] = None) -> Tuple[Tensor, Dict[str, Tensor], Dict[str, Tensor]]:
        """The reconstruction network's objective on a batch.

        Every loss that depends on the camera is computed for each of the ``K`` hypotheses and weighted by its
        probability (the multiplex): mask negative IoU, texture, texture cycle (eqs. 5-6) and, once a canonical
        map exists (:meth:`semantic_active`), the part probability (eq. 2) and vertex (eq. 3) losses. As in the
        code, only the mask loss trains the probabilities (the others weight by detached ones) and the camera
        entropy is *minimised* (weight +0.05: the multiplex settles on one hypothesis). The others act on the
        prediction: Laplacian and flatten on the mesh, deformation (the mean offset length, code), the texture
        flow's distance-transform barrier.

        The first E-step (stage 1): the deformation loss waits for round ``deform_start_round`` (code: after the
        first template update). Options of ours, from UNICORN, that let the cameras rather than the meshes explain
        the silhouettes: for the first ``rigid_steps`` iterations one shape serves every image (:meth:`predict`
        ``rigid``); ``shape_from_best`` sends the mesh gradients through the most probable hypothesis only (the
        others still train their cameras and the probabilities); ``camera_usage_weight`` keeps the batch using
        every hypothesis (:func:`camera_usage`). With ``semantic_trains_probability`` (ours) the semantic losses
        train the probabilities as the mask loss does: the parts, not only the silhouette, choose the camera.
        With ``camera_selection: min_loss`` (ours, as UCMR's and UNICORN's multiplexes) each image trains only its
        hypothesis of lowest mask plus semantic loss, and the probabilities learn that choice by cross-entropy
        (logged: ``camera_choice``, ``camera_choice_agreement`` of the most probable and the chosen hypothesis,
        ``camera_choice_usage`` as :func:`camera_usage` of the choices); ``camera_balance_weight`` (ours) makes that
        choice pay for the running share of images each hypothesis wins (:func:`balanced_choice`), so none dies.

        Args:
            images: ``(B, 3, S, S)`` in [0, 1]; masks: ``(B, 1, S, S)`` silhouettes; parts: ``(B, Np, S, S)``
                part probabilities (None: no semantic losses); step: the E-step iteration (None: past
                ``rigid_steps``).

        Returns:
            ``(loss, logs, prediction)``: the weighted scalar, the detached terms, and :meth:`predict`'s dict
            plus ``texture (B, 3, Hu, Wu)`` (the GAN step renders it).
        """
        c = self.config
        B, K = images.shape[0], c.num_cameras
        out = self.predict(images, rigid=step is not None and step < c.rigid_steps)
        verts, flow, prob = out["verts"], out["flow"], out["prob"]
        render_verts = verts.repeat_interleave(K, 0)
        by_loss = self.selects_by_loss()
        if c.shape_from_best and K > 1 and not by_loss:   # by loss, only the chosen hypothesis has a weight anyway
            best = F.one_hot(prob.detach().argmax(1), K).bool().reshape(B * K, 1, 1)
            render_verts = torch.where(best, render_verts, render_verts.detach())
        texture = self.texture_map(images, flow)
        out["texture"] = texture
        semantic = self.semantic_active(parts)
        canonical = self.canonical_texture().to(texture.dtype).expand(B, -1, -1, -1) if semantic else None
        cams = self.multiplex_cameras(out)
        if c.texture_detach:
            # (code: detach_shape, detach_cam) the texture losses train the flow only: their render has the mesh
            # and cameras detached; a second render carries the silhouette and the parts
            rgb, _, texture_fragments = self.render(render_verts.detach(), *(t.detach() for t in cams),
                                                    texture.repeat_interleave(K, 0))
            other = canonical if semantic else texture.new_zeros(B, 1, *texture.shape[2:])
            rendered_parts, silhouette, _ = self.render(render_verts, *cams, other.repeat_interleave(K, 0))
            if semantic and not c.mask_trains_camera:   # (ours) the silhouette of the cameras as they are
                _, silhouette, _ = self.render(render_verts, *(t.detach() for t in cams),
                                               texture.new_zeros(B * K, 1, *texture.shape[2:]))
        else:
            channels = texture if canonical is None else torch.cat([texture, canonical], 1)
            rendered, silhouette, texture_fragments = self.render(render_verts, *cams, channels.repeat_interleave(K, 0))
            rgb, rendered_parts = rendered[:, :3], rendered[:, 3:]
        per: Dict[str, Tensor] = {}
        per["mask"] = 1.0 - invrender.metrics.mask_iou(silhouette, masks.repeat_interleave(K, 0))
        per["texture"] = self._texture_error(rgb, images, masks, K)
        if c.texture_cycle_weight > 0:
            nf = self.faces.shape[0]
            flow_at = self.sample_flow(flow, self.cycle_uvs.to(flow.dtype).expand(B, *self.cycle_uvs.shape))
            alpha = invrender.layer_alpha(texture_fragments, c.sigma, kind="sigmoid")
            centroids, total = invrender.face_pixel_centroids(texture_fragments, alpha, nf)
            per["texture_cycle"] = texture_cycle_loss(flow_at.repeat_interleave(K, 0), centroids, total)
        if semantic:
            per["part_probability"] = part_probability_loss(rendered_parts, parts.repeat_interleave(K, 0))
            points = self.project(self.template.to(verts.dtype).expand(B * K, -1, -1), *cams)[..., :2]
            per["part_vertex"] = vertex_part_loss(points, self.vertex_part, self.part_labels(parts).repeat_interleave(K, 0),
                                                  c.num_parts, c.part_pixels, generator)
        weight = {"mask": c.mask_weight, "texture": c.texture_weight, "texture_cycle": c.texture_cycle_weight,
                  "part_probability": c.part_probability_weight, "part_vertex": c.part_vertex_weight}
        if by_loss:
            # (ours) each image's hypothesis of lowest camera loss (mask, and the parts once they are active) is
            # the only one trained; the probabilities learn to predict that choice (cross-entropy)
            score = sum(weight[k] * per[k].detach().view(B, K) for k in ("mask", "part_probability", "part_vertex")
                        if k in per)
            choice = balanced_choice(score, self.choice_usage, c.camera_balance_weight)
            chosen = F.one_hot(choice, K).to(prob.dtype)
            if self.training and torch.is_grad_enabled():   # (ours) the running share of wins, over ~100 batches
                self.choice_usage.mul_(0.99).add_(0.01 * chosen.detach().mean(0).to(self.choice_usage.dtype))
            loss = sum(chosen * (weight[k] * v).view(B, K) for k, v in per.items()).sum(1).mean()
            choice_loss = F.nll_loss(torch.log(prob.clamp_min(1e-12)), choice)
            loss = loss + c.camera_choice_weight * choice_loss
            logs = {k: (chosen * v.detach().view(B, K)).sum(1).mean() for k, v in per.items()}
            logs["camera_choice"] = choice_loss.detach()
            logs["camera_choice_agreement"] = (prob.detach().argmax(1) == choice).to(prob.dtype).mean()
            logs["camera_choice_usage"] = camera_usage(chosen)   # 0: even
        else:
            # (code) only the mask loss trains the probabilities; the others weight by detached probabilities
            trains = {"mask"} | ({"part_probability", "part_vertex"} if c.semantic_trains_probability else set())
            loss = sum((prob if k in trains else prob.detach()) * (weight[k] * v).view(B, K) for k, v in per.items())
            loss = loss.sum(1).mean()
            logs = {k: (prob.detach() * v.detach().view(B, K)).sum(1).mean() for k, v in per.items()}
        laplacian, flatten = self.smoothness(verts)
        terms = {"laplacian": (c.laplacian_weight, laplacian), "flatten": (c.flatten_weight, flatten),
                 "deformation": (c.deform_weight if int(self.em_round) >= c.deform_start_round else 0.0,
                                 (out["delta"].pow(2).sum(-1) + 1e-12).sqrt().mean()),
                 "texture_dt": (c.texture_dt_weight, texture_dt_loss(flow, mask_distance(masks, flat_inside=c.texture_dt_flat_inside))
                                                    .mean()),
                 "camera_entropy": (c.camera_entropy_weight, camera_entropy(prob).mean()),
                 "camera_usage": (c.camera_usage_weight, camera_usage(prob))}
        for name, (w, value) in terms.items():
            if w > 0:
                loss = loss + w * value
            logs[name] = value.detach()
        logs["camera_max_prob"] = prob.detach().max(1).values.mean()
        return loss, logs, out

    def smoothness(self, verts: Tensor) -> Tuple[Tensor, Tensor]:
        """Laplacian and flatten losses of meshes ``verts (B, V, 3)`` (scalars): summed over the vertices and the
        edges as SoftRas's losses in the code (``regularizer_reduction: sum``; :mod:`invrender.mesh`'s average)."""
        c, faces = self.config, self.faces
        lap_scale, flat_scale = (verts.shape[1], self._num_edges) if c.regularizer_reduction == "sum" else (1, 1)
        return (lap_scale * invrender.mesh.laplacian_loss(verts, faces),
                flat_scale * invrender.mesh.flatten_loss(verts, faces))

    def fit_template(self, scale: Tensor, translation: Tensor, quaternion: Tensor, masks: Tensor,
                     steps: Optional[int] = None) -> Tuple[Tensor, float]:
        """The template fitted to silhouettes ``masks (N, 1, S, S)`` seen by cameras ``scale (N,)``, ``translation
        (N, 2)``, ``quaternion (N, 4)`` (``template_update: fit``): mirror-symmetric per-vertex offsets from the
        current template, ``steps`` (default ``template_fit_steps``) of Adam at ``template_fit_lr`` on
        ``mask_weight`` x the mean negative IoU plus the Laplacian and flatten losses at their weights. Returns the
        new vertices ``(V, 3)`` and the final mean IoU."""
        c = self.config
        steps = c.template_fit_steps if steps is None else steps
        cams = [t.detach() for t in (scale, translation, quaternion)]
        masks = masks.detach()
        N = masks.shape[0]
        blank = masks.new_zeros(N, 1, *c.uv_size)
        indep = torch.zeros(1, int(self.delta_source.max()) + 1, 3, dtype=masks.dtype, device=masks.device,
                            requires_grad=True)
        opt = torch.optim.Adam([indep], lr=c.template_fit_lr)
        template = self.template.to(masks.dtype)
        with torch.enable_grad():
            for step in range(steps + 1):
                verts = template + self.mirror_offsets(indep)
                _, sil, _ = self.render(verts.expand(N, -1, -1), *cams, blank)
                iou = invrender.metrics.mask_iou(sil, masks).mean()
                laplacian, flatten = self.smoothness(verts)
                loss = c.mask_weight * (1 - iou) + c.laplacian_weight * laplacian + c.flatten_weight * flatten
                if step == steps:
                    break
                opt.zero_grad()
                loss.backward()
                opt.step()
        return verts.detach()[0], float(iou.detach())

    def random_view_renders(self, out: Dict[str, Tensor], generator: Optional[torch.Generator] = None) -> Tensor:
        """The GAN's fakes ``(B, 3, S, S)``: each predicted mesh seen by its most probable camera turned by a random
        angle in [0, 180) degrees about the vertical axis (code: ``rotate_cam``), its texture detached (code)."""
        B = out["verts"].shape[0]
        dtype, device = out["verts"].dtype, out["verts"].device
        turn = invrender.rotation_matrix(torch.rand(B, generator=generator).to(device, dtype) * math.pi)
        scale, translation, quaternion = self.best_camera(out)
        rotation = invrender.cameras.quaternion_to_matrix(quaternion) @ turn
        image, _, _ = self.render(out["verts"], scale, translation, rotation, out["texture"].detach())
        return image

    def _step(self, name: str, loss: Tensor, optimizers, params, reduce_gradients=None) -> None:
        optimizers[name].zero_grad(set_to_none=True)
        loss.backward()
        if reduce_gradients is not None:
            reduce_gradients(params)
        optimizers[name].step()

    def train_step(self, batch: Dict[str, Tensor], optimizers: Dict[str, torch.optim.Optimizer], step: int = 0,
                   generator: Optional[torch.Generator] = None, reduce_gradients=None) -> Dict[str, Tensor]:
        """One E-step iteration: the reconstruction network's update (learning rate ``lr / (1 + lr_decay * step)``,
        the code's schedule), then, with ``gan_weight > 0``, the discriminator's on the masked images against the
        random-view renders (:meth:`random_view_renders`); the reconstruction network's GAN term is minus
        :data:`GAN_REVERSAL` times the discriminator's loss on the fakes, the code's gradient reversal.
        ``batch``: ``image``, ``mask`` and optionally ``parts``."""
        c = self.config
        for opt in optimizers.values():
            for group in opt.param_groups:
                group["lr"] = c.lr / (1.0 + c.lr_decay * step)
        images, masks = batch["image"], batch["mask"]
        loss, logs, out = self.losses(images, masks, batch.get("parts"), generator, step=step)
        fake = None
        if self.discriminator is not None:
            fake = self.random_view_renders(out, generator)
            # (code) the discriminator sits behind a gradient reversal of 0.2: the reconstruction network ascends
            # 0.2 x the discriminator's loss on the fakes (saturating: small once the discriminator is sure)
            self.discriminator.requires_grad_(False)
            g = -GAN_REVERSAL * F.binary_cross_entropy_with_logits(
                self.discriminator(fake).flatten(), torch.zeros(fake.shape[0], dtype=fake.dtype, device=fake.device))
            self.discriminator.requires_grad_(True)
            loss = loss + c.gan_weight * g
            logs["gan_generator"] = g.detach()
        main = optimizers["reconstruction"].param_groups[0]["params"]
        self._step("reconstruction", loss, optimizers, main, reduce_gradients)
        if fake is not None:
            real = self.discriminator((images * masks))
            fake_logits = self.discriminator(fake.detach())
            d = 0.5 * (F.binary_cross_entropy_with_logits(real.flatten(), torch.ones_like(real.flatten()))
                       + F.binary_cross_entropy_with_logits(fake_logits.flatten(), torch.zeros_like(fake_logits.flatten())))
            self._step("discriminator", d, optimizers, list(self.discriminator.parameters()), reduce_gradients)
            logs["gan_discriminator"] = d.detach()
        logs["total"] = loss.detach()
        return logs

    # -- the M-step ------------------------------------------------------------------------------------

    def vertex_labels(self, canonical: Tensor, min_probability: float = 0.25) -> Tensor:
        """Part of each template vertex ``(V,)``: the canonical map ``(Np, Hu, Wu)`` read at the vertex's UV
        (``Phi``), its most probable part when that probability is at least ``min_probability`` (ours), else -1."""
        p = self._texturer.sample_texture(canonical[None].to(self.vertex_uvs.dtype), self.vertex_uvs[None])[0]
        best, label = p.max(1)
        return torch.where(best >= min_probability, label, torch.full_like(label, -1))

    @staticmethod
    def _top(scores: Tensor, fraction: float, largest: bool) -> Tensor:
        k = max(1, math.ceil(fraction * scores.numel()))
        return scores.topk(k, largest=largest).indices

    @torch.no_grad()
    def m_step(self, batches, update_template: bool = True) -> Dict[str, float]:
        """The M-step (section 3.2 and the appendix) over ``batches`` (an iterable of dicts with ``image``, ``mask``
        and optionally ``parts``), in eval mode:

        - template (eq. 4): the exemplar is the sample whose render (best camera) has the highest mask IoU; ``Q``
          the ``select_fraction`` of samples whose meshes, drawn from one canonical view, have the highest
          silhouette IoU with the exemplar's; ``template += D_shape(mean_Q E(I))``;
        - canonical semantic UV map (eq. 1): the exemplar is the sample of lowest texture loss; ``U`` the
          ``select_fraction`` of samples whose semantic UV maps are nearest (L2) to the exemplar's; the map is
          their mean, and the template vertices' parts are read from it (:meth:`vertex_labels`).

        With ``reset_multiplex`` (ours) the camera head's probability outputs are zeroed: uniform hypotheses.
        With ``recenter_decoder`` (ours) the decoder's bias gives back the offset added to the template, so every
        prediction stays where it was and the instance offsets (and the deformation loss) count from the new
        template; without it (code) each prediction jumps by the decoded mean code.
        Increments ``em_round``. Returns statistics (the selected counts, the template's mean offset)."""
        c = self.config
        was_training = self.training
        self.eval()
        feats, ious, sils, uv_maps, tex, seen_maps, best, fit = [], [], [], [], [], [], [], []
        for batch in batches:
            images, masks = batch["image"], batch["mask"]
            out = self.predict(images)
            texture = self.texture_map(images, out["flow"])
            camera = self.best_camera(out)
            image, sil, fragments = self.render(out["verts"], *camera, texture)
            ious.append(invrender.metrics.mask_iou(sil, masks))
            if update_template and c.template_update == "fit":
                fit.append((*camera, masks))
            tex.append(self._texture_error(image, images, masks))
            B = images.shape[0]
            one = torch.ones(B, dtype=images.dtype, device=images.device)
            _, canonical_sil, _ = self.render(out["verts"], one, images.new_zeros(B, 2),
                                              images.new_tensor([1.0, 0.0, 0.0, 0.0]).expand(B, 4), texture[:, :1])
            sils.append(canonical_sil > 0.5)
            feats.append(out["features"])
            if batch.get("parts") is not None:
                if c.m_step_align_hypotheses:   # every hypothesis's instance map (B, K, Np, Hu, Wu)
                    K = c.num_cameras
                    cams = self.multiplex_cameras(out)
                    verts_k = out["verts"].repeat_interleave(K, 0)
                    _, _, fragments_k = self.render(verts_k, *cams, texture[:, :1].repeat_interleave(K, 0))
                    flow, seen = self.projected_flow(verts_k, *cams, fragments_k)
                    maps = semantic_uv_maps(batch["parts"].repeat_interleave(K, 0), flow) * seen
                    uv_maps.append(maps.view(B, K, *maps.shape[1:]))
                    seen_maps.append(seen.view(B, K, *seen.shape[1:]))
                    best.append(out["prob"].argmax(1))
                elif c.semantic_uv_source == "projection":
                    flow, seen = self.projected_flow(out["verts"], *camera, fragments)
                    uv_maps.append(semantic_uv_maps(batch["parts"], flow) * seen)
                    seen_maps.append(seen)
                else:
                    uv_maps.append(semantic_uv_maps(batch["parts"], out["flow"]))
        if not feats:
            raise ValueError("UmrModel.m_step: argument 'batches' is empty")
        feats, ious, sils, tex = torch.cat(feats), torch.cat(ious), torch.cat(sils), torch.cat(tex)
        stats: Dict[str, float] = {"m_step_samples": float(len(feats)), "m_step_mask_iou": float(ious.mean())}
        if update_template and c.template_update == "fit":
            # (ours) the samples their most probable camera explains best, the template fitted to them
            q = self._top(ious, c.select_fraction, largest=True)
            scale, translation, quaternion, masks = (torch.cat(t)[q] for t in zip(*fit))
            verts, fit_iou = self.fit_template(scale, translation, quaternion, masks)
            stats.update(template_selected=float(len(q)), template_fit_iou=fit_iou,
                         template_offset=float((verts - self.template).norm(dim=-1).mean()))
            self.template.copy_(verts.to(self.template.dtype))
        elif update_template:
            exemplar = int(ious.argmax())
            similarity = invrender.metrics.mask_iou(sils.float(), sils[exemplar:exemplar + 1].float().expand_as(sils),
                                                    soft=False)
            q = self._top(similarity, c.select_fraction, largest=True)
            offset = self.shape_head(feats[q].mean(0, keepdim=True))[0]
            delta = self.mirror_offsets(offset.view(1, -1, 3))[0]
            self.template += delta.to(self.template.dtype)
            if c.recenter_decoder:   # predictions unchanged: the decoder now predicts offsets from the new template
                self.shape_head.bias -= offset
            stats.update(template_selected=float(len(q)), template_offset=float(delta.norm(dim=-1).mean()))
        if uv_maps:
            uv_maps = torch.cat(uv_maps)
            exemplar = int(tex.argmin())
            if best:   # (ours) each sample's hypothesis that agrees best with the others
                best = torch.cat(best)
                canonical, hypothesis, u = aligned_canonical_map(uv_maps, torch.cat(seen_maps),
                                                                 (exemplar, int(best[exemplar])), c.select_fraction)
                stats["aligned_changed"] = float((hypothesis != best).float().mean())
            else:
                distance = (uv_maps - uv_maps[exemplar:exemplar + 1]).pow(2).flatten(1).sum(1)
                u = self._top(distance, c.select_fraction, largest=False)
                if seen_maps:   # the mean over the selected samples that see each texel
                    seen_maps = torch.cat(seen_maps)
                    canonical = uv_maps[u].sum(0) / seen_maps[u].sum(0).clamp_min(1.0)
                else:
                    canonical = canonical_uv_map(uv_maps, u)
            self.canonical_parts.copy_(canonical.to(self.canonical_parts.dtype))
            self.vertex_part.copy_(self.vertex_labels(self.canonical_parts))
            stats.update(canonical_selected=float(len(u)),
                         labelled_vertices=float((self.vertex_part >= 0).float().mean()))
        if c.reset_multiplex:   # (ours) every hypothesis gets a new chance under the new template and parts
            logits = torch.arange(c.num_cameras, device=self.template.device) * 8 + 7
            self.camera_head.weight[logits] = 0.0
            self.camera_head.bias[logits] = 0.0
        self.em_round += 1
        self.train(was_training)
        return stats


# ------------------------------------------------------------------------------------------------
# Keypoint transfer (CUB protocol: CMR, CSM, UMR) and pose alignment


def pck(pred: Tensor, target: Tensor, valid: Tensor, alpha: float = 0.1) -> float:
    """Percentage of correct keypoints: ``|pred - target| < alpha * 2`` (``alpha`` of the image side, NDC spans
    2) over the ``valid`` ones. ``pred``, ``target`` ``(..., 2)``, ``valid`` ``(...)`` bool."""
    if int(valid.sum()) == 0:
        return float("nan")
    ok = (pred - target).norm(dim=-1) < 2 * alpha
    return float(ok[valid].double().mean() * 100)


def fit_rotation_offset(rotation: Tensor, gt_rotation: Tensor) -> Tensor:
    """The rotation ``A`` (3, 3) with ``rotation_i ~ gt_rotation_i A`` (the learned object frame in the true one)
    in the least-squares sense: the nearest rotation to ``mean_i gt_i^T rotation_i`` (SVD, det +1)."""
    m = (gt_rotation.double().transpose(1, 2) @ rotation.double()).mean(0)
    u, _, vt = torch.linalg.svd(m)
    d = torch.sign(torch.det(u @ vt))
    return u @ torch.diag(torch.stack([torch.ones_like(d), torch.ones_like(d), d])) @ vt


def rotation_errors(rotation: Tensor, gt_rotation: Tensor, offset: Tensor) -> Dict[str, float]:
    """Geodesic errors (degrees) of predicted object-to-view rotations against ``gt_rotation @ offset``."""
    from .unicorn import rotation_angle

    err = rotation_angle(rotation.double(), gt_rotation.double() @ offset.to(gt_rotation.device))
    return {"pose_rotation_median_deg": float(err.median()), "pose_rotation_mean_deg": float(err.mean()),
            "pose_accuracy_15deg": float((err < 15).double().mean()),
            "pose_accuracy_30deg": float((err < 30).double().mean())}


def _vertical_turn(k: int, dtype=torch.float64) -> Tensor:
    """The rotation by ``k`` quarter turns about the object's vertical axis ``y``."""
    q = torch.tensor([[0.0, 0, 1], [0, 1, 0], [-1, 0, 0]], dtype=dtype)
    return torch.linalg.matrix_power(q, k % 4)


def turn_tolerant_errors(rotation: Tensor, gt_rotation: Tensor, offset: Tensor, turns=(0,)) -> Tensor:
    """Per-image geodesic error (degrees) of ``rotation (N, 3, 3)`` against ``gt_rotation @ T @ offset`` for the
    best ``T`` among the ``turns`` (quarter turns about the true vertical axis: ``(0,)`` exact, ``(0, 2)`` up to
    the front-back confusion, ``(0, 1, 2, 3)`` up to any quarter turn)."""
    from .unicorn import rotation_angle

    rotation, gt_rotation = rotation.double(), gt_rotation.double()
    return torch.stack([rotation_angle(rotation, gt_rotation @ _vertical_turn(k).to(rotation.device)
                                       @ offset.double().to(rotation.device)) for k in turns]).min(0).values


def fit_rotation_offset_robust(rotation: Tensor, gt_rotation: Tensor, turns=(0,)) -> Tensor:
    """The frame alignment (3, 3) under an ambiguity of ``turns`` (see :func:`turn_tolerant_errors`), robust to
    outliers: every image's own alignment ``gt_i^T rotation_i`` is a candidate, the one of least median error is
    kept, then refined by :func:`fit_rotation_offset` with each image's best turn when that lowers the median."""
    rotation, gt_rotation = rotation.double(), gt_rotation.double()
    candidates = gt_rotation.transpose(1, 2) @ rotation
    medians = torch.stack([turn_tolerant_errors(rotation, gt_rotation, a, turns).median() for a in candidates])
    best = candidates[int(medians.argmin())]
    per_turn = torch.stack([turn_tolerant_errors(rotation, gt_rotation, best, (k,)) for k in turns])
    chosen = torch.tensor(turns)[per_turn.argmin(0).cpu()]
    turned = torch.stack([g @ _vertical_turn(int(k)).to(g.device) for g, k in zip(gt_rotation, chosen)])
    refined = fit_rotation_offset(rotation, turned)
    if float(turn_tolerant_errors(rotation, gt_rotation, refined, turns).median()) < float(medians.min()):
        return refined
    return best


# ------------------------------------------------------------------------------------------------
# Training and evaluation task

DATA_KINDS = ("shapenet", "cub")


class UmrTask(SyntheticDataMixin):
    """Trains :class:`UmrModel` with :class:`invrender.training.Trainer` in the paper's stages (section 3.2).

    ``em.steps_per_round`` steps make one E-step; after each, an M-step (:meth:`UmrModel.m_step`) over
    ``em.m_step_samples`` training views updates the template and the canonical semantic UV map. The first E-step
    trains without the semantic losses (the template is the sphere and there is no canonical map yet); the
    semantic losses apply from the second on. ``steps`` counts all E-step iterations (the paper: 200 epochs per
    E-step, 2 rounds).

    Data (``data.kind``): ``"shapenet"`` (default): a ShapeNet-NMR-layout folder with per-view part maps
    (default: the embedded synthetic data, whose generator knows each pixel's part), the part maps optionally
    corrupted as an unsupervised segmenter errs (``data.part_noise``: parts grown / shrunk, labels swapped in a
    fraction of images); ``"cub"``: CUB-200-2011 in the CMR layout with SCOPS part maps at ``data.parts_root``.

    Ablations (Table 2) are config switches: ``model.part_probability_weight=0 model.part_vertex_weight=0``
    (without semantic consistency), ``model.texture_cycle_weight=0`` (without the texture cycle).
    """

    wrap_ddp = False
    data_kinds = DATA_KINDS

    def default_config(self):
        return {
            "model": {},
            "data": {"kind": "shapenet", "root": None, "categories": ["airplane"], "image_size": 64, "cache": True,
                     "synthetic": {"objects_per_category": 20, "views": 24, "image_size": 64},
                     "part_noise": {"grow": 0, "shrink": 0, "swap_fraction": 0.0, "seed": 0},
                     "parts_root": None},
            "em": {"steps_per_round": 500, "m_step_samples": 256},
            "eval": {"seed": 0, "max_objects": None, "num_points": 10_000, "icp_num_points": 2000, "pairs": 1000,
                     "alpha": 0.1, "medoid_candidates": 16, "views": "all"},
            "batch_size": 16, "steps": 1000, "vis_every": 250, "ckpt_every": 250, "log_every": 10,
        }

    def config_schema(self):
        import typing
        from typing import List, Union

        from invrender import synthetic

        hints = typing.get_type_hints(UmrConfig)
        model = {f.name: hints[f.name] for f in dataclasses.fields(UmrConfig) if f.name not in ("image_size",)}
        model["uv_size"] = model["betas"] = List[float]
        model["camera_bounds"] = Optional[List[float]]
        data = {"kind": str, "root": Optional[str], "categories": Union[str, List[str], None], "image_size": int,
                "cache": bool, "synthetic": synthetic.default_dataset_schema(),
                "part_noise": {"grow": int, "shrink": int, "swap_fraction": float, "seed": int},
                "parts_root": Optional[str]}
        return {"model": model, "data": data, "em": {"steps_per_round": int, "m_step_samples": int},
                "eval": {"seed": int, "max_objects": Optional[int], "num_points": int, "icp_num_points": Optional[int],
                         "pairs": int, "alpha": float, "medoid_candidates": Optional[int], "views": str}}

    # -- data ------------------------------------------------------------------------------------------

    def _part_noise(self, config):
        from invrender.data import PartNoise

        noise = dict(config["data"].get("part_noise") or {})
        if not any(noise.get(k) for k in ("grow", "shrink", "swap_fraction")):
            return None
        try:
            return PartNoise(**noise)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"data.part_noise: {e}") from None

    def _base(self, config, split, noise: bool = True):
        """The split's dataset with part maps (noisy on the training split when configured: the segmenter's
        output the model learns from; evaluation reads the clean ones)."""
        from invrender.data import CUB200, ShapeNetNMR

        data = config["data"]
        size = int(data.get("image_size", 64))
        if self._kind(config) == "cub":
            if not data.get("parts_root"):
                raise ConfigError("config key 'data.parts_root' must name the SCOPS part maps for data.kind 'cub'")
            return CUB200(self._root(config), split=split, image_size=size, parts_root=data["parts_root"])
        return ShapeNetNMR(self._root(config), categories=data.get("categories"), split=split, image_size=size,
                           load_parts=True, part_noise=self._part_noise(config) if noise else None)

    def dataset(self, config, split):
        views = _Views(self._base(config, split), cache=split == "train" and bool(config["data"].get("cache", True)),
                       keys=("image", "mask", "parts"))
        if split == "train":
            self._train_views = views
        return views

    def num_parts(self, config) -> int:
        base = self._base(config, "train", noise=False)
        return int(base[0]["parts"].shape[0])

    def model_config(self, config) -> UmrConfig:
        fields = dict(config.get("model") or {})
        fields["image_size"] = int(config["data"].get("image_size", 64))
        fields.setdefault("num_parts", self.num_parts(config))
        for key in ("uv_size", "betas", "camera_bounds"):
            if fields.get(key) is not None:
                fields[key] = tuple(fields[key])
        return UmrConfig(**fields)

    def build(self, config, device):
        self._config = config
        model = UmrModel(self.model_config(config)).to(device)
        return model, model.configure_optimizers()

    # -- training --------------------------------------------------------------------------------------

    def _m_step_batches(self, config, device):
        views = getattr(self, "_train_views", None) or self.dataset(config, "train")
        n = min(int(config["em"].get("m_step_samples", 256)), len(views))
        index = torch.linspace(0, len(views) - 1, n).round().long().unique().tolist()  # spread over the objects
        bs = int(config.get("batch_size", 16))
        for start in range(0, len(index), bs):
            items = [views[i] for i in index[start:start + bs]]
            yield {k: torch.stack([it[k] for it in items]).to(device) for k in ("image", "mask", "parts")
                   if k in items[0]}

    def train_step(self, model, batch, optimizers, step):
        from invrender.training import average_gradients, broadcast_buffers, unwrap

        model = unwrap(model)
        config = self._config
        per_round = int(config["em"].get("steps_per_round", 500))
        out: Dict[str, object] = {}
        device = next(model.parameters()).device
        while int(model.em_round) < step // per_round:
            out.update(model.m_step(self._m_step_batches(config, device)))
        g = torch.Generator().manual_seed(int(config.get("seed", 0)) * 1_000_003 + step)
        out.update(model.train_step(batch, optimizers, step, generator=g, reduce_gradients=average_gradients))
        out["em_round"] = float(model.em_round)
        broadcast_buffers(model)
        return out

    # -- pictures --------------------------------------------------------------------------------------

    @torch.no_grad()
    def reconstruct(self, model: UmrModel, images: Tensor) -> Dict[str, Tensor]:
        """The model's reading of ``images`` with its most probable camera: the prediction plus ``scale``,
        ``translation``, ``quaternion`` of that camera, the ``rotation`` matrix, the render ``image``, ``mask``
        and, once a canonical map exists, the rendered ``parts``."""
        out = model.predict(images)
        cam = dict(zip(("scale", "translation", "quaternion"), model.best_camera(out)))
        texture = model.texture_map(images, out["flow"])
        channels = torch.cat([texture, model.canonical_texture().to(texture.dtype).expand(len(images), -1, -1, -1)], 1)
        image, mask, _ = model.render(out["verts"], cam["scale"], cam["translation"], cam["quaternion"], channels)
        out.update(cam, texture=texture, image=image[:, :3], mask=mask, parts=image[:, 3:],
                   rotation=invrender.cameras.quaternion_to_matrix(cam["quaternion"]))
        return out

    @staticmethod
    def part_colors(parts: Tensor) -> Tensor:
        """Part probabilities ``(B, Np, H, W)`` as colours ``(B, 3, H, W)`` (a fixed palette, black background)."""
        palette = torch.tensor([[0.9, 0.2, 0.2], [0.2, 0.8, 0.2], [0.2, 0.3, 0.9], [0.9, 0.8, 0.1], [0.8, 0.2, 0.8],
                                [0.1, 0.8, 0.8], [0.6, 0.4, 0.2], [0.5, 0.5, 0.5]], dtype=parts.dtype,
                               device=parts.device)
        colors = palette[torch.arange(parts.shape[1], device=parts.device) % len(palette)]
        return torch.einsum("bphw,pc->bchw", parts, colors).clamp(0, 1)

    def visualize(self, model, batch, out_dir, step):
        """One row per input: input | reconstruction | its silhouette | the input's part map | the rendered
        canonical part map | the mesh from three other views (azimuth +90, +180, +270 degrees) | the UV texture;
        the first mesh and the template as OBJ files."""
        import os

        from invrender import io

        images = batch["image"]
        rec = self.reconstruct(model, images)
        S = images.shape[-1]
        rows = [images, rec["image"], rec["mask"].expand(-1, 3, -1, -1)]
        if "parts" in batch:
            rows += [self.part_colors(batch["parts"]), self.part_colors(rec["parts"])]
        for turn in (90.0, 180.0, 270.0):
            spin = invrender.rotation_matrix(torch.full((len(images),), math.radians(turn), dtype=images.dtype,
                                                        device=images.device))
            rows.append(model.render(rec["verts"], rec["scale"], rec["translation"] * 0, rec["rotation"] @ spin,
                                     rec["texture"])[0])
        rows.append(F.interpolate(rec["texture"], size=(S, S), mode="bilinear", align_corners=False))
        grid = torch.stack(rows, 1)
        io.save_mesh(os.path.join(out_dir, "mesh0.obj"), rec["verts"][0].cpu(), model.faces.cpu())
        io.save_mesh(os.path.join(out_dir, "template.obj"), model.template.cpu(), model.faces.cpu())
        return {"reconstructions": io.image_grid(grid.flatten(0, 1).clamp(0, 1).cpu(), nrow=grid.shape[1])}

    # -- evaluation ------------------------------------------------------------------------------------

    @torch.no_grad()
    def _read(self, model: UmrModel, images: Tensor) -> Dict[str, Tensor]:
        """:meth:`reconstruct` in batches of 32, the tensors the evaluation reads."""
        recs = [self.reconstruct(model, images[i:i + 32]) for i in range(0, len(images), 32)]
        keys = ("verts", "scale", "translation", "quaternion", "rotation", "mask", "flow")
        return {k: torch.cat([r[k] for r in recs]) for k in keys}

    def keypoint_transfer(self, model: UmrModel, rec: Dict[str, Tensor], keypoints: Tensor, pairs: Tensor,
                          alpha: float = 0.1) -> Dict[str, float]:
        """Keypoint transfer between ``pairs (P, 2)`` of images (source, target), as the official code does it
        (``test_kp.py``):

        * **via camera**: the template vertex whose projection by the source's camera is nearest the source
          keypoint, projected by the target's camera and snapped to the nearest pixel of the target's rendered
          silhouette;
        * **via texture flow**: the face whose texture flow in the source lands nearest the keypoint (the mean of
          its ``N_c`` flow samples, ``C_in``; the code takes the arg-max of a Gaussian heat map over the samples),
          predicted where that face's flow lands in the target.

        PCK@``alpha`` (of the image side) over the keypoints visible in both, in percent; ``keypoints (N, K, 3)``:
        NDC x, y and visibility; ``rec``: :meth:`reconstruct`'s tensors of the N images.

        Reference under the same protocol: ``pck_identity``, the source keypoint's own position (no transfer)."""
        src, tgt = pairs[:, 0], pairs[:, 1]
        valid = (keypoints[src, :, 2] > 0) & (keypoints[tgt, :, 2] > 0)          # (P, K)
        kp, target = keypoints[..., :2], keypoints[tgt, :, :2]
        N, S = kp.shape[0], model.config.image_size
        template = model.template.to(kp.dtype).expand(N, -1, -1)
        projected = model.project(template, rec["scale"], rec["translation"], rec["quaternion"])[..., :2]  # (N, V, 2)
        nearest = (kp[src][:, :, None] - projected[src][:, None]).pow(2).sum(-1).argmin(-1)                # (P, K)
        moved = projected[tgt].gather(1, nearest[..., None].expand(-1, -1, 2))
        xs = (2 * torch.arange(S, dtype=kp.dtype) + 1 - S) / S
        pix = torch.stack(torch.meshgrid(-xs, xs, indexing="ij")[::-1], -1).reshape(-1, 2)   # (S S, 2) (x, y)
        inside = rec["mask"].reshape(N, -1)[tgt] > 0.5                                        # (P, S S)
        d = (moved[:, :, None] - pix[None, None]).pow(2).sum(-1)
        d = torch.where(inside[:, None], d, torch.full_like(d, float("inf")))
        snapped = torch.where(inside.any(1)[:, None, None], pix[d.argmin(-1)], moved)
        c_in = model.sample_flow(rec["flow"], model.cycle_uvs.to(kp.dtype).expand(N, -1, -1, -1)).mean(2)  # (N, F, 2)
        face = (kp[src][:, :, None] - c_in[src][:, None]).pow(2).sum(-1).argmin(-1)                          # (P, K)
        flowed = c_in[tgt].gather(1, face[..., None].expand(-1, -1, 2))
        return {"pck_camera": pck(snapped, target, valid, alpha),
                "pck_texture_flow": pck(flowed, target, valid, alpha),
                "pck_identity": pck(kp[src], target, valid, alpha),
                "pck_pairs": int(len(pairs)), "pck_keypoints": int(valid.sum())}

    def part_keypoints(self, base, index: int, item) -> Tensor:
        """Keypoints of a synthetic view for keypoint transfer, ``(3 Np, 3)`` (NDC x, y, visible): for each semantic
        part, its surface centre and the two mesh vertices farthest along the part's principal axis (a wing's tips,
        the nose and tail of a fuselage; ours: the part centres alone sit near the image centre in every view, so
        copying the source position would score as well as any transfer), projected with the view's true camera;
        visible where the clean part map shows that part within a pixel of the point."""
        import numpy as np

        from invrender.data.shapenet import project_to_ndc

        cache = self.__dict__.setdefault("_keypoint_cache", {})
        k = base._index[index][0]
        if (id(base), k) not in cache:
            import os

            _, synset, name = base.objects[k]
            with np.load(os.path.join(base.root, synset, name, "mesh.npz")) as npz:
                verts, faces, semantic = npz["verts"], npz["faces"], npz["semantic"]
                centers = npz["part_centers"]
            points = []
            for p in range(len(centers)):
                pv = verts[np.unique(faces[semantic == p])]
                axis = np.linalg.svd(pv - pv.mean(0), full_matrices=False)[2][0]
                t = (pv - pv.mean(0)) @ axis
                points += [centers[p], pv[t.argmin()], pv[t.argmax()]]
            cache[(id(base), k)] = np.stack(points)
        points = cache[(id(base), k)]
        xy = project_to_ndc(points, item["camera"]["world_mat"].double().numpy(),
                            item["camera"]["camera_mat"].double().numpy())
        labels = UmrModel.part_labels(item["parts"][None])[0]
        S = labels.shape[-1]
        near = F.max_pool2d(F.one_hot(labels, item["parts"].shape[0] + 1).permute(2, 0, 1)[None].float(), 3, 1, 1)[0]
        part = torch.arange(len(points)) // 3 + 1
        xy_t = torch.from_numpy(xy).float()
        col = ((xy_t[:, 0] + 1) * S / 2).floor().long().clamp(0, S - 1)
        row = ((1 - xy_t[:, 1]) * S / 2).floor().long().clamp(0, S - 1)
        visible = near[part, row, col] > 0
        return torch.cat([xy_t * visible[:, None], visible[:, None].float()], 1)

    @torch.no_grad()
    def evaluate(self, model, config, out_dir):
        """The paper's metrics on the test split (every test image; ``eval.views: one``: one view per synthetic
        object), each beside a learning-free reference under the same protocol (``eval.max_objects`` caps the
        images):

        * ``mask_iou``: soft IoU of the rendered and true silhouettes (UMR's metric); reference
          ``sphere_mask_iou``: the starting sphere at scale 1, centred;
        * keypoint transfer PCK@``eval.alpha`` via camera and via texture flow (:meth:`keypoint_transfer`,
          ``eval.pairs`` random pairs); reference ``pck_identity``;
        * synthetic data only: the pose error (geodesic, degrees) after one rotation aligning the learned object
          frame to the true one (:func:`fit_rotation_offset`, fitted on the val split, else the test views), with
          reference ``constant_pose_*`` (the same rotation for every image, aligned the same way: the spread of the
          true poses), and as diagnostics the errors up to a half turn (``pose_half_turn_median_deg``: the front-back
          confusion) and up to quarter turns about the vertical axis (``pose_quarter_turn_median_deg``), frames
          aligned by :func:`fit_rotation_offset_robust`, beside the constant pose's; and Chamfer-L1 x10 after ICP (:func:`invrender.metrics.chamfer_l1_meshes`, ``align=True``)
          against the true mesh, with references the sphere, the learned template, the medoid training shape and
          the category spread, on one view per test object.
        """
        from invrender import metrics

        from .unicorn import ground_truth_mesh, medoid_object, one_view_per_object

        ev = dict(self.default_config()["eval"], **(config.get("eval") or {}))
        seed = int(ev["seed"])
        kind = self._kind(config)
        base = self._base(config, "test", noise=False)
        if kind == "shapenet" and ev["views"] == "one":
            chosen = one_view_per_object(base, torch.Generator().manual_seed(seed))
        else:
            chosen = list(range(len(base)))
        if ev["max_objects"] is not None:
            chosen = chosen[:int(ev["max_objects"])]
        device = next(model.parameters()).device
        items = [base[i] for i in chosen]
        images = torch.stack([it["image"] for it in items]).to(device)
        masks = torch.stack([it["mask"] for it in items]).to(device)
        rec = self._read(model, images)
        out: Dict[str, object] = {"test_images": len(items)}
        out["mask_iou"] = float(metrics.mask_iou(rec["mask"], masks).mean())
        n = len(items)
        sphere_verts = symmetric_template(model.config.template_level, model.config.template_radius)[0].to(device)
        one = torch.ones(n, device=device)
        _, sphere_mask, _ = model.render(sphere_verts.expand(n, -1, -1), one, torch.zeros(n, 2, device=device),
                                         torch.tensor([1.0, 0, 0, 0], device=device).expand(n, 4),
                                         torch.zeros(n, 1, *model.config.uv_size, device=device))
        out["sphere_mask_iou"] = float(metrics.mask_iou(sphere_mask, masks).mean())
        if "keypoints" in items[0] and n >= 2:
            g = torch.Generator().manual_seed(seed + 1)
            pairs = torch.stack([torch.randperm(n, generator=g)[:2] for _ in range(int(ev["pairs"]))])
            if kind == "shapenet":
                keypoints = torch.stack([self.part_keypoints(base, i, it) for i, it in zip(chosen, items)])
            else:
                keypoints = torch.stack([it["keypoints"] for it in items]).float()
            out.update(self.keypoint_transfer(model, {k: v.cpu() for k, v in rec.items()}, keypoints, pairs,
                                              float(ev["alpha"])))
        if kind == "shapenet":
            gt_rotation = torch.stack([it["camera"]["rotation"] for it in items]).to(device)
            val = self._base(config, "val", noise=False)
            fitted_on = "test"
            fit_pred, fit_gt = rec["rotation"], gt_rotation
            if len(val):
                val_idx = one_view_per_object(val, torch.Generator().manual_seed(seed))
                val_items = [val[i] for i in val_idx]
                fit_pred = self._read(model, torch.stack([it["image"] for it in val_items]).to(device))["rotation"]
                fit_gt = torch.stack([it["camera"]["rotation"] for it in val_items]).to(device)
                fitted_on = "val"
            offset = fit_rotation_offset(fit_pred, fit_gt)
            out.update(rotation_errors(rec["rotation"], gt_rotation, offset))
            constant = torch.eye(3, dtype=fit_pred.dtype, device=device).expand(len(fit_pred), 3, 3)
            c_offset = fit_rotation_offset(constant, fit_gt)
            out.update({"constant_" + k: v for k, v in rotation_errors(constant[:1].expand(n, 3, 3), gt_rotation,
                                                                        c_offset).items()})
            out["pose_offset_fitted_on"] = fitted_on
            # Diagnostics of the silhouettes' ambiguities: errors up to a half turn (front-back) and up to any
            # quarter turn about the vertical axis, each frame alignment fitted robustly on the same split
            for name, turns in (("half_turn", (0, 2)), ("quarter_turn", (0, 1, 2, 3))):
                for prefix, pred, fit in (("", rec["rotation"], fit_pred), ("constant_", constant[:1].expand(n, 3, 3),
                                                                              constant)):
                    a = fit_rotation_offset_robust(fit, fit_gt, turns)
                    out[f"{prefix}pose_{name}_median_deg"] = float(turn_tolerant_errors(pred, gt_rotation, a, turns)
                                                                   .median())
            # Chamfer-L1: one view per test object (UNICORN's protocol; ICP per view is the slow part)
            first: Dict[int, int] = {}
            for j, i in enumerate(chosen):
                first.setdefault(base._index[i][0], j)
            rows = list(first.values())
            objects = list(first)
            n = len(rows)
            gt = [ground_truth_mesh(base, k) for k in objects]
            gt_v, gt_f = [v.to(device) for v, _ in gt], [f.to(device) for _, f in gt]
            faces = model.faces

            def chamfer(pred, pred_faces, gen_seed):
                value = metrics.chamfer_l1_meshes(pred, pred_faces, gt_v, gt_f, int(ev["num_points"]), align=True,
                                                  generator=torch.Generator().manual_seed(gen_seed),
                                                  icp_num_points=ev["icp_num_points"])
                return 10 * float(value.mean())

            out["chamfer_objects"] = n
            out["chamfer_l1_icp"] = chamfer(rec["verts"][rows], faces, seed + 2)
            out["sphere_chamfer_l1_icp"] = chamfer(sphere_verts.expand(n, -1, -1), faces, seed + 2)
            out["template_chamfer_l1_icp"] = chamfer(model.template.expand(n, -1, -1), faces, seed + 2)
            train = self._base(config, "train", noise=False)
            k = medoid_object(train, ev["medoid_candidates"], generator=torch.Generator().manual_seed(seed + 4))
            mv, mf = ground_truth_mesh(train, k)
            out["medoid_chamfer_l1_icp"] = chamfer([mv.to(device)] * n, [mf.to(device)] * n, seed + 2)
            if n >= 2:
                g = torch.Generator().manual_seed(seed + 3)
                other = [(i + 1 + int(torch.randint(n - 1, (), generator=g))) % n for i in range(n)]
                out["spread_chamfer_l1_icp"] = chamfer([gt_v[j] for j in other], [gt_f[j] for j in other], seed + 2)
        parts = torch.stack([it["parts"] for it in items[:6]]).to(device) if "parts" in items[0] else None
        out["files"] = self.write_pictures(model, images[:6], masks[:6], out_dir, parts)
        _print_beside(out)
        return out

    @torch.no_grad()
    def write_pictures(self, model, images, masks, out_dir, parts: Optional[Tensor] = None) -> Dict[str, str]:
        """``reconstructions.png`` (the rows of :meth:`visualize`, with the part maps when given),
        ``template.obj`` and ``mesh_<i>.obj``."""
        import os

        from invrender import io

        os.makedirs(out_dir, exist_ok=True)
        batch = {"image": images, "mask": masks}
        if parts is not None:
            batch["parts"] = parts
        grid = self.visualize(model, batch, out_dir, 0)["reconstructions"]
        path = os.path.join(out_dir, "reconstructions.png")
        io.save_image(path, grid)
        rec = self.reconstruct(model, images)
        files = {"reconstructions": path, "template": os.path.join(out_dir, "template.obj")}
        for i in range(len(images)):
            files[f"mesh_{i}"] = os.path.join(out_dir, f"mesh_{i}.obj")
            io.save_mesh(files[f"mesh_{i}"], rec["verts"][i].cpu(), model.faces.cpu())
        return files


def _print_beside(out: Dict[str, object]) -> None:
    """The model's numbers beside the learning-free references."""
    rows = [("mask IoU", "mask_iou", "sphere_mask_iou"), ("PCK via camera", "pck_camera", "pck_identity"),
            ("PCK via texture flow", "pck_texture_flow", "pck_identity"),
            ("pose median deg", "pose_rotation_median_deg", "constant_pose_rotation_median_deg"),
            ("Chamfer-L1 x10 ICP", "chamfer_l1_icp", "medoid_chamfer_l1_icp")]
    print(f"{'metric':<24}{'model':>10}{'reference':>11}")
    for name, key, ref in rows:
        if key in out:
            print(f"{name:<24}{out[key]:>10.3f}{out.get(ref, float('nan')):>11.3f}")


def _register():
    from invrender.training import register_task

    register_task("umr", UmrTask)


_register()
