"""Procedural 3D objects and their shaded renders: the embedded default data of invrender.

Six categories built from primitives with random proportions (car, chair, airplane, table, sofa and
mug, the last concave with a cavity and a handle). Each object is a list of closed parts, each with
a colour and a solid texture (plain, stripes, checks or noise) evaluated at the 3D surface point, so
texture and pose can be learned. Objects are centred and scaled so that their bounding box spans 1
along its longest side (ShapeNet-NMR's normalisation: max |p| = 0.5). Renders use invrender's own
rasterizer in hard mode (supersampled for antialiasing) with Lambertian shading from two directional
lights plus ambient, and the ShapeNet-NMR perspective camera (distance 2.732, focal length 3.732).

Every object also carries semantic parts (:data:`SEMANTIC_PARTS`): its geometric parts grouped into a fixed,
per-category list of names (a chair's seat, back and legs), the same count for every object of a category, as
an unsupervised part segmenter (SCOPS) would label them; :func:`render_part_labels` renders their per-view label
maps and :meth:`SyntheticObject.part_centers` gives their 3-D centres (UMR's part data, Li et al. 2020).

Everything is a deterministic function of a seed.
"""

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .errors import ConfigError
from .mesh import icosphere
from .ops import rotation_matrix
from .renderers import render_shaded

__all__ = ["CATEGORIES", "SEMANTIC_PARTS", "Part", "SyntheticObject", "make_object", "render_object",
           "render_part_labels", "camera_pose"]

CATEGORIES = ("car", "chair", "airplane", "table", "sofa", "mug")

#: The semantic parts of each category, in label order (label ``k + 1`` in part maps is ``SEMANTIC_PARTS[c][k]``;
#: 0 is the background). Every object of a category has all of them; the geometric parts are grouped into them:
#:
#: - car: ``body`` (the lower box), ``cabin`` (the upper box), ``wheels`` (all four);
#: - chair: ``seat``, ``back``, ``legs`` (all four);
#: - airplane: ``fuselage``, ``wings``, ``tail`` (the vertical fin and the horizontal stabiliser);
#: - table: ``top``, ``base`` (four legs, or the pedestal's column and foot);
#: - sofa: ``seat`` (the base block), ``back``, ``arms`` (both);
#: - mug: ``body`` (the cup with its cavity), ``handle``.
SEMANTIC_PARTS: Dict[str, Tuple[str, ...]] = {
    "car": ("body", "cabin", "wheels"),
    "chair": ("seat", "back", "legs"),
    "airplane": ("fuselage", "wings", "tail"),
    "table": ("top", "base"),
    "sofa": ("seat", "back", "arms"),
    "mug": ("body", "handle"),
}
TEXTURES = ("plain", "stripes", "checks", "noise")
DISTANCE, FOCAL = 2.732, 3.732


@dataclass
class Part:
    """A closed triangle mesh ``verts (V, 3)`` float64, ``faces (F, 3)`` int64 (outward,
    counter-clockwise), its RGB ``color`` and solid ``texture`` (one of TEXTURES) with a frequency, and
    the name of the semantic part it belongs to (one of :data:`SEMANTIC_PARTS` of its category)."""

    verts: Tensor
    faces: Tensor
    color: Tuple[float, float, float]
    texture: str = "plain"
    frequency: float = 8.0
    semantic: str = ""


@dataclass
class SyntheticObject:
    category: str
    parts: List[Part] = field(default_factory=list)

    def mesh(self) -> Tuple[Tensor, Tensor, Tensor]:
        """The whole object: ``verts (V, 3)``, ``faces (F, 3)``, and the part of each face ``(F,)``."""
        verts, faces, part_of = [], [], []
        offset = 0
        for k, p in enumerate(self.parts):
            verts.append(p.verts)
            faces.append(p.faces + offset)
            part_of.append(torch.full((p.faces.shape[0],), k, dtype=torch.long))
            offset += p.verts.shape[0]
        return torch.cat(verts), torch.cat(faces), torch.cat(part_of)

    @property
    def semantic_names(self) -> Tuple[str, ...]:
        """The category's semantic part names, :data:`SEMANTIC_PARTS` ``[category]`` (``Np`` of them)."""
        return SEMANTIC_PARTS[self.category]

    def semantic_of_parts(self) -> Tensor:
        """The semantic part (0-based index into :attr:`semantic_names`) of each geometric part, ``(len(parts),)``
        int64. Raises ``ValueError`` for a part whose ``semantic`` name is not one of the category's."""
        names = self.semantic_names
        bad = [p.semantic for p in self.parts if p.semantic not in names]
        if bad:
            raise ValueError(f"SyntheticObject: part semantic name(s) {bad} not in the {self.category!r} "
                             f"semantic parts {names}")
        return torch.tensor([names.index(p.semantic) for p in self.parts], dtype=torch.long)

    def semantic_labels(self) -> Tensor:
        """The semantic part of each face of :meth:`mesh`, ``(F,)`` int64 in ``0 .. Np - 1`` (label maps store it
        plus one)."""
        return self.semantic_of_parts()[self.mesh()[2]]

    def part_centers(self) -> Tensor:
        """The 3-D centre of each semantic part, ``(Np, 3)`` float64 in object space: the area-weighted centroid
        of the part's surface (every face of its geometric parts, hidden or not), i.e. the mean of points drawn
        uniformly on that surface. Every category's objects have every semantic part."""
        verts, faces, _ = self.mesh()
        tri = verts[faces]  # (F, 3, 3)
        area = 0.5 * torch.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1).norm(dim=-1)
        label = self.semantic_labels()
        n = len(self.semantic_names)
        total = torch.zeros(n, dtype=verts.dtype).index_add_(0, label, area)
        moment = torch.zeros(n, 3, dtype=verts.dtype).index_add_(0, label, area[:, None] * tri.mean(1))
        return moment / total[:, None]


# ------------------------------------------------------------------------------------------------
# Primitives (closed, outward-facing)


def box(center, size) -> Tuple[Tensor, Tensor]:
    c, s = torch.tensor(center, dtype=torch.float64), torch.tensor(size, dtype=torch.float64) / 2
    corners = torch.tensor([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=torch.float64)
    v = c + corners * s
    # Corner index = 4 x + 2 y + z with x, y, z in {0, 1}; quads counter-clockwise from outside.
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    f = [[a, b, c_] for a, b, c_, d in quads] + [[a, c_, d] for a, b, c_, d in quads]
    return v, torch.tensor(f, dtype=torch.long)


def lathe(profile: Sequence[Tuple[float, float]], center=(0.0, 0.0, 0.0), segments: int = 24,
          axis: str = "y") -> Tuple[Tensor, Tensor]:
    """Surface of revolution of a closed profile ``(r, h)`` listed from the bottom axis point
    (r = 0) round to the top axis point (r = 0), about the ``axis`` through ``center``."""
    prof = torch.tensor(profile, dtype=torch.float64)
    n = prof.shape[0]
    t = torch.arange(segments, dtype=torch.float64) * 2 * math.pi / segments
    ring = [(prof[i, 0] * torch.cos(t), prof[i, 1].expand(segments), prof[i, 0] * torch.sin(t)) for i in range(n)]
    pts = torch.stack([torch.stack(r, -1) for r in ring])  # (n, S, 3) as (radial x, height, radial z)
    verts = [pts[0, 0]]  # bottom pole
    index = {}
    for i in range(1, n - 1):
        for j in range(segments):
            index[(i, j)] = len(verts)
            verts.append(pts[i, j])
    top = len(verts)
    verts.append(pts[n - 1, 0])
    faces = []
    for j in range(segments):
        k = (j + 1) % segments
        faces.append([0, index[(1, j)], index[(1, k)]])
        faces.append([top, index[(n - 2, k)], index[(n - 2, j)]])
        for i in range(1, n - 2):
            a, b, c, d = index[(i, j)], index[(i, k)], index[(i + 1, k)], index[(i + 1, j)]
            faces += [[a, d, c], [a, c, b]]
    v = torch.stack(verts)
    if axis == "x":
        v = v[:, [1, 0, 2]] * torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)
    elif axis == "z":
        v = v[:, [0, 2, 1]] * torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64)
    return v + torch.tensor(center, dtype=torch.float64), torch.tensor(faces, dtype=torch.long)


def cylinder(center, radius: float, height: float, axis: str = "y", segments: int = 16):
    h = height / 2
    return lathe([(0.0, -h), (radius, -h), (radius, h), (0.0, h)], center, segments, axis)


def ellipsoid_part(center, radii, level: int = 2):
    v, f = icosphere(level)
    return v.double() * torch.tensor(radii, dtype=torch.float64) + torch.tensor(center, dtype=torch.float64), f


# ------------------------------------------------------------------------------------------------
# Categories


def _u(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g, dtype=torch.float64))


def _color(g: torch.Generator) -> Tuple[float, float, float]:
    return tuple(float(c) for c in 0.15 + 0.8 * torch.rand(3, generator=g, dtype=torch.float64))


def _texture(g: torch.Generator) -> Tuple[str, float]:
    return TEXTURES[int(torch.randint(len(TEXTURES), (), generator=g))], _u(g, 4.0, 14.0)


def _part(g, mesh, color=None) -> Part:
    tex, freq = _texture(g)
    return Part(mesh[0], mesh[1], color or _color(g), tex, freq)


def _named(semantic: str, *parts: Part) -> List[Part]:
    """``parts`` as a list, each tagged with the ``semantic`` part it belongs to."""
    for p in parts:
        p.semantic = semantic
    return list(parts)


def _car(g):
    L, W, H = _u(g, 1.6, 2.2), _u(g, 0.7, 0.9), _u(g, 0.3, 0.45)
    r = _u(g, 0.15, 0.22)
    body = _part(g, box((0, r + H / 2, 0), (W, H, L)))
    cabin = _part(g, box((0, r + H + _u(g, 0.12, 0.2), _u(g, -0.2, 0.1)), (W * 0.85, _u(g, 0.25, 0.4), L * _u(g, 0.4, 0.6))))
    wheel_color = (0.1, 0.1, 0.1)
    wheels = [Part(*cylinder((sx * W / 2, r, sz * L * 0.32), r, 0.15, "x"), wheel_color) for sx in (-1, 1) for sz in (-1, 1)]
    return _named("body", body) + _named("cabin", cabin) + _named("wheels", *wheels)


def _legs(g, w, d, h, t, color):
    return [Part(*box((sx * (w / 2 - t), h / 2, sz * (d / 2 - t)), (t, h, t)), color) for sx in (-1, 1) for sz in (-1, 1)]


def _chair(g):
    w, d, h = _u(g, 0.8, 1.1), _u(g, 0.8, 1.1), _u(g, 0.7, 1.0)
    t = _u(g, 0.06, 0.12)
    legc = _color(g)
    seat = _part(g, box((0, h, 0), (w, 0.12, d)))
    back = _part(g, box((0, h + _u(g, 0.4, 0.6), -d / 2 + 0.05), (w, _u(g, 0.7, 1.1), 0.1)))
    return _named("seat", seat) + _named("back", back) + _named("legs", *_legs(g, w, d, h, t, legc))


def _table(g):
    w, d, h = _u(g, 1.4, 2.0), _u(g, 0.8, 1.2), _u(g, 0.8, 1.1)
    top = _part(g, box((0, h, 0), (w, 0.1, d)))
    if torch.rand((), generator=g) < 0.5:
        return _named("top", top) + _named("base", *_legs(g, w, d, h, _u(g, 0.06, 0.12), _color(g)))
    column = _part(g, cylinder((0, h / 2, 0), _u(g, 0.08, 0.15), h))
    return _named("top", top) + _named("base", column, _part(g, cylinder((0, 0.03, 0), d * 0.4, 0.06)))


def _sofa(g):
    w, d, h = _u(g, 1.8, 2.4), _u(g, 0.8, 1.0), _u(g, 0.35, 0.5)
    c = _color(g)
    base = Part(*box((0, h / 2, 0), (w, h, d)), c, *_texture(g))
    back = Part(*box((0, h + 0.3, -d / 2 + 0.12), (w, _u(g, 0.5, 0.8), 0.24)), c, *_texture(g))
    arms = [Part(*box((s * (w / 2 - 0.1), h + 0.12, 0), (0.2, 0.3, d)), c) for s in (-1, 1)]
    return _named("seat", base) + _named("back", back) + _named("arms", *arms)


def _airplane(g):
    L, r = _u(g, 2.0, 2.6), _u(g, 0.13, 0.2)
    span, chord = _u(g, 1.8, 2.6), _u(g, 0.3, 0.5)
    fuselage = _part(g, ellipsoid_part((0, 0, 0), (r, r, L / 2)))
    wings = _part(g, box((0, 0, _u(g, -0.1, 0.2)), (span, 0.05, chord)))
    tail = _part(g, box((0, _u(g, 0.15, 0.3), -L / 2 + 0.15), (0.05, _u(g, 0.3, 0.5), 0.3)))
    stab = _part(g, box((0, 0.05, -L / 2 + 0.15), (span * 0.35, 0.04, 0.22)))
    return _named("fuselage", fuselage) + _named("wings", wings) + _named("tail", tail, stab)


def _mug(g):
    R, H, wall = _u(g, 0.35, 0.5), _u(g, 0.7, 1.1), _u(g, 0.05, 0.09)
    base = _u(g, 0.06, 0.12)
    # Profile from the outer bottom centre round the rim into the cavity: a cup with a hollow inside.
    body = _part(g, lathe([(0.0, 0.0), (R, 0.0), (R, H), (R - wall, H), (R - wall, base), (0.0, base)], segments=28))
    # Handle: a half ring (torus section) on the side, swept as short cylinders along an arc.
    hr, tube = H * _u(g, 0.25, 0.35), _u(g, 0.04, 0.07)
    color = _color(g)
    handle = []
    n = 7
    for k in range(n):
        a = -math.pi / 2 + math.pi * (k + 0.5) / n
        cx, cy = R + hr * math.cos(a) - tube * 0.5, H / 2 + hr * math.sin(a)
        seg = box((cx, cy, 0), (tube * 2, hr * math.pi / n + tube, tube * 2))
        handle.append(Part(*seg, color))
    return _named("body", body) + _named("handle", *handle)


_BUILDERS: Dict[str, Callable[[torch.Generator], List[Part]]] = {
    "car": _car, "chair": _chair, "airplane": _airplane, "table": _table, "sofa": _sofa, "mug": _mug,
}


def make_object(category: str, seed: int) -> SyntheticObject:
    """A random object of ``category`` (one of CATEGORIES), a deterministic function of ``seed``,
    centred at the origin with its longest bounding-box side equal to 1."""
    if category not in _BUILDERS:
        raise ValueError(f"make_object: argument 'category' must be one of {CATEGORIES}, got {category!r}")
    g = torch.Generator().manual_seed(int(seed))
    parts = _BUILDERS[category](g)
    allv = torch.cat([p.verts for p in parts])
    lo, hi = allv.min(0).values, allv.max(0).values
    center, scale = (lo + hi) / 2, 1.0 / float((hi - lo).max())
    for p in parts:
        p.verts = (p.verts - center) * scale
    return SyntheticObject(category, parts)


# ------------------------------------------------------------------------------------------------
# Rendering


def camera_pose(azimuth: Tensor, elevation: Tensor) -> Tensor:
    """Object-to-view rotations ``(B, 3, 3)`` of the ShapeNet-NMR camera (radians)."""
    return rotation_matrix(azimuth, elevation)


def _albedo(obj: SyntheticObject, part: Tensor, p: Tensor) -> Tensor:
    """Albedo ``(N, 3)`` of surface points ``p (N, 3)`` (object space) on parts ``part (N,)``: the
    part colour times its solid texture (in [0.55, 1]): stripes along y, 3-D checks, or smooth noise
    (a sum of 4 random sinusoids per part, seeded by the part index)."""
    kinds = torch.tensor([TEXTURES.index(q.texture) for q in obj.parts])[part]
    freq = torch.tensor([q.frequency for q in obj.parts], dtype=p.dtype)[part]
    color = torch.tensor([q.color for q in obj.parts], dtype=p.dtype)[part]
    fp = freq[:, None] * p
    stripes = 0.775 + 0.225 * torch.sign(torch.sin(math.pi * fp[:, 1]))
    checks = torch.where(torch.remainder(torch.floor(fp).sum(-1), 2) == 0, 1.0, 0.55).to(p.dtype)
    waves = []
    for k in range(len(obj.parts)):
        g = torch.Generator().manual_seed(k)
        waves.append((torch.randn(4, 3, generator=g, dtype=p.dtype), torch.rand(4, generator=g, dtype=p.dtype) * 6.283))
    w = torch.stack([x[0] for x in waves])[part]  # (N, 4, 3)
    ph = torch.stack([x[1] for x in waves])[part]  # (N, 4)
    noise = 0.775 + 0.225 * torch.tanh(torch.sin((w @ fp[:, :, None])[..., 0] + ph).sum(-1))
    pattern = torch.stack([torch.ones_like(stripes), stripes, checks, noise], -1).gather(1, kinds[:, None])[:, 0]
    return pattern[:, None] * color


def render_object(obj: SyntheticObject, azimuth: Tensor, elevation: Tensor, image_size: int = 64,
                  supersample: int = 2, background: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """Shaded renders of one object from ``B`` viewpoints.

    Args:
        obj: a :class:`SyntheticObject`.
        azimuth, elevation: ``(B,)`` radians (ShapeNet-NMR: azimuth in [0, 2 pi), elevation 30 deg).
        image_size: output ``H = W``; rendered at ``supersample`` times that and averaged.
        background: None (white) or ``(B, 3, H, W)`` images in [0, 1].

    Returns:
        ``image (B, 3, H, W)`` and ``mask (B, 1, H, W)`` (coverage fraction) in [0, 1], float32.
    """
    verts, faces, part_of = obj.mesh()
    return render_shaded(verts, faces, camera_pose(azimuth.double(), elevation.double()), image_size,
                         albedo=lambda f_idx, p: _albedo(obj, part_of[f_idx], p), supersample=supersample,
                         background=background, distance=DISTANCE, focal_length=FOCAL)


@torch.no_grad()
def render_part_labels(obj: SyntheticObject, azimuth: Tensor, elevation: Tensor, image_size: int = 64,
                       supersample: int = 2) -> Tensor:
    """Hard semantic part maps of one object from ``B`` viewpoints, consistent with :func:`render_object`'s masks.

    The front-most face of each of the ``supersample^2`` subpixels is found with the same z-buffer as
    :func:`render_object` (so the covered subpixels are exactly those its mask averages); a pixel is foreground
    when at least half its subpixels are covered (the stored mask PNG ``> 127``), and its label is the semantic
    part of most of its covered subpixels (ties: the smaller label).

    Args:
        obj: a :class:`SyntheticObject`.
        azimuth, elevation: ``(B,)`` radians.
        image_size, supersample: as :func:`render_object`.

    Returns:
        ``(B, H, W)`` uint8: 0 background, ``k + 1`` the semantic part ``SEMANTIC_PARTS[obj.category][k]``.
    """
    from .renderers import _zbuffer

    verts, faces, _ = obj.mesh()
    semantic = obj.semantic_labels()
    n = len(obj.semantic_names)
    rotation = camera_pose(azimuth.double(), elevation.double())
    B, ss, S = rotation.shape[0], int(supersample), int(image_size)
    pv = verts.double().expand(B, -1, -1) @ rotation.transpose(1, 2)
    frag, covered, _ = _zbuffer(pv, faces, S * ss, DISTANCE, FOCAL, None)
    fi = frag.face_idx[..., 0]
    label = torch.where(covered, semantic[fi.clamp(min=0)] + 1, torch.zeros_like(fi))  # (B, S ss, S ss)
    # Votes per pixel: count of subpixels of each label 1..n, reduced over each ss x ss block.
    onehot = torch.nn.functional.one_hot(label, n + 1).permute(0, 3, 1, 2).double()
    votes = torch.nn.functional.avg_pool2d(onehot, ss, divisor_override=1)  # (B, n + 1, S, S) counts
    fg = votes[:, 1:].sum(1) * 2 >= ss * ss
    return torch.where(fg, votes[:, 1:].argmax(1) + 1, torch.zeros_like(fg, dtype=torch.long)).to(torch.uint8)


# ------------------------------------------------------------------------------------------------
# Dataset in the ShapeNet-NMR layout (DVR / UNICORN)

SPLITS = (("train", 0.7), ("val", 0.1), ("test", 0.2))


def _savez(path, **arrays) -> None:
    """np.savez with fixed zip timestamps, so that equal arrays give byte-identical files."""
    import io
    import zipfile

    import numpy as np

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            zf.writestr(info, buf.getvalue())


def _save_png(path, array) -> None:
    from PIL import Image

    Image.fromarray(array).save(path, format="PNG", optimize=False)


def camera_matrices(rotation: Tensor) -> Tuple[Tensor, Tensor]:
    """``world_mat (B, 3, 4)`` (object to camera: ``[R | (0, 0, -distance)]``, camera at the origin
    looking along -z) and ``camera_mat (B, 4, 4)`` (``diag(f, f, 1, 1)``: NDC ``x = f X / -Z``)."""
    B = rotation.shape[0]
    t = torch.tensor([0.0, 0.0, -DISTANCE], dtype=rotation.dtype).expand(B, 3)
    world = torch.cat([rotation, t[..., None]], -1)
    cam = torch.diag(torch.tensor([FOCAL, FOCAL, 1.0, 1.0], dtype=rotation.dtype)).expand(B, 4, 4)
    return world, cam.clone()


def generate_dataset(root, objects_per_category: int = 10, categories: Sequence[str] = CATEGORIES,
                     views: int = 24, image_size: int = 64, seed: int = 0, elevation=30.0,
                     points: int = 10_000, voxel_resolution: int = 32, background: str = "white",
                     progress: bool = True) -> None:
    """Writes a synthetic dataset in the ShapeNet-NMR layout read by DVR, UNICORN and
    :class:`invrender.data.ShapeNetNMR`::

        root/metadata.yaml                         {category: {id, name, parts: [semantic part names]}}
        root/<category>/softras_{train,val,test}.lst  object names (70 / 10 / 20 %)
        root/<category>/<object>/image/NNNN.png    RGB renders, image_size^2
                                  mask/NNNN.png     silhouettes
                                  parts/NNNN.png    uint8 semantic part labels (0 background, k + 1 the part
                                                    metadata ``parts[k]``; :func:`render_part_labels`):
                                                    nonzero exactly where the mask PNG is > 127
                                  cameras.npz       world_mat_i (3, 4), camera_mat_i (4, 4), azimuth, elevation
                                  pointcloud.npz    points, normals (``points`` samples on the surface)
                                  voxels.npy        (R, R, R) uint8 occupancy over [-0.5, 0.5]^3 (solid
                                                    interior plus the voxels the surface crosses)
                                  mesh.npz          verts, faces, part (ground-truth mesh; ``part`` (F,) the
                                                    geometric part of each face), semantic (F,) its semantic
                                                    part (0-based), part_centers (Np, 3) float64 each semantic
                                                    part's area-weighted surface centroid (object space)

    Azimuths are uniform in [0, 360) degrees per view; ``elevation`` is a number of degrees (fixed)
    or a pair (range, uniform). ``background="random"`` composites onto random smooth colour fields.
    The output is a deterministic function of the arguments (byte-identical files).
    """
    import os

    import numpy as np
    import yaml

    from . import mesh as mesh_ops

    if background not in ("white", "random"):
        raise ValueError(f"generate_dataset: argument 'background' must be 'white' or 'random', got {background!r}")
    for c in categories:
        if c not in CATEGORIES:
            raise ConfigError(f"generate_dataset: unknown category {c!r} in argument 'categories' (known: {CATEGORIES})")
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "metadata.yaml"), "w") as f:
        yaml.safe_dump({c: {"id": c, "name": c, "parts": list(SEMANTIC_PARTS[c])} for c in categories}, f,
                       sort_keys=True)
    jobs = [(ci, c, k) for ci, c in enumerate(categories) for k in range(objects_per_category)]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc="synthetic objects", unit="obj")
    for ci, category in enumerate(categories):
        names = [f"{category}_{k:05d}" for k in range(objects_per_category)]
        bounds = np.cumsum([0] + [int(round(frac * len(names))) for _, frac in SPLITS[:-1]])
        cat_dir = os.path.join(root, category)
        os.makedirs(cat_dir, exist_ok=True)
        for s, (split, _) in enumerate(SPLITS):
            part = names[bounds[s]:] if s == len(SPLITS) - 1 else names[bounds[s]:bounds[s + 1]]
            with open(os.path.join(cat_dir, f"softras_{split}.lst"), "w") as f:
                f.write("".join(n + "\n" for n in part))
        for k, name in enumerate(names):
            object_seed = seed * 1_000_003 + ci * 10_007 + k
            obj = make_object(category, object_seed)
            g = torch.Generator().manual_seed(object_seed)
            az = torch.rand(views, generator=g, dtype=torch.float64) * 2 * math.pi
            if isinstance(elevation, (tuple, list)):
                lo, hi = (math.radians(e) for e in elevation)
                el = lo + (hi - lo) * torch.rand(views, generator=g, dtype=torch.float64)
            else:
                el = torch.full((views,), math.radians(float(elevation)), dtype=torch.float64)
            bg = None
            if background == "random":
                bg = torch.nn.functional.interpolate(torch.rand(views, 3, 4, 4, generator=g, dtype=torch.float64),
                                                     size=(image_size, image_size), mode="bilinear",
                                                     align_corners=False)
            image, mask = render_object(obj, az, el, image_size, background=bg)
            labels = render_part_labels(obj, az, el, image_size).numpy()
            obj_dir = os.path.join(cat_dir, name)
            for sub in ("image", "mask", "parts"):
                os.makedirs(os.path.join(obj_dir, sub), exist_ok=True)
            img8 = (image.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()
            mask8 = (mask.clamp(0, 1) * 255 + 0.5).to(torch.uint8)[:, 0].numpy()
            for v in range(views):
                _save_png(os.path.join(obj_dir, "image", f"{v:04d}.png"), img8[v])
                _save_png(os.path.join(obj_dir, "mask", f"{v:04d}.png"), mask8[v])
                _save_png(os.path.join(obj_dir, "parts", f"{v:04d}.png"), labels[v])
            world, cam = camera_matrices(camera_pose(az, el))
            cams = {f"world_mat_{v}": world[v].numpy() for v in range(views)}
            cams.update({f"camera_mat_{v}": cam[v].numpy() for v in range(views)})
            cams.update(azimuth=az.numpy(), elevation=el.numpy())
            _savez(os.path.join(obj_dir, "cameras.npz"), **cams)
            verts, faces, part_of = obj.mesh()
            _savez(os.path.join(obj_dir, "mesh.npz"), verts=verts.numpy(), faces=faces.numpy(), part=part_of.numpy(),
                   semantic=obj.semantic_labels().numpy(), part_centers=obj.part_centers().numpy())
            if points > 0:
                pts, normals = mesh_ops.sample_points(verts, faces, points, return_normals=True, generator=g)
                _savez(os.path.join(obj_dir, "pointcloud.npz"), points=pts.reshape(-1, 3).float().numpy(),
                       normals=normals.reshape(-1, 3).float().numpy())
            if voxel_resolution > 0:
                occ = torch.zeros(voxel_resolution, voxel_resolution, voxel_resolution, dtype=torch.bool)
                for p in obj.parts:  # parts overlap: the solid is the union of the parts' solids
                    occ |= mesh_ops.voxelize(p.verts, p.faces, resolution=voxel_resolution,
                                             bounds=0.5).reshape(occ.shape) > 0.5
                # Plus every voxel the surface passes through (binvox-like), so that parts thinner
                # than a voxel are not lost: dense surface samples mark their voxels.
                dense = mesh_ops.sample_points(verts, faces, 64 * voxel_resolution**2, generator=g).reshape(-1, 3)
                R = voxel_resolution
                w = ((dense[:, 0] + 0.5) * R).floor().long().clamp(0, R - 1)
                h = ((0.5 - dense[:, 1]) * R).floor().long().clamp(0, R - 1)
                d = ((0.5 - dense[:, 2]) * R).floor().long().clamp(0, R - 1)
                occ[d, h, w] = True
                np.save(os.path.join(obj_dir, "voxels.npy"), occ.numpy().astype(np.uint8))
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()


def default_dataset_schema() -> dict:
    """Types of the keyword arguments :func:`default_dataset` takes (a config's ``data.synthetic``)."""
    import inspect
    import typing

    hints = typing.get_type_hints(generate_dataset)
    schema = {name: hints.get(name, typing.Any) for name in inspect.signature(generate_dataset).parameters
              if name not in ("root", "progress")}
    schema["cache_dir"] = Optional[str]
    return schema


def cache_root(cache_dir: Optional[str] = None) -> str:
    """invrender's cache directory: ``cache_dir`` if given, else ``$INVRENDER_CACHE``, else ``~/.cache/invrender``
    (the default dataset's and :mod:`invrender.fid`'s files live under it)."""
    import os

    return cache_dir or os.environ.get("INVRENDER_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "invrender")


#: Version of the files :func:`generate_dataset` writes; part of the default dataset's cache folder name, bumped
#: whenever the layout or the contents change so that older caches are regenerated, not reused.
#: v2: semantic part maps (``parts/NNNN.png``), ``mesh.npz`` ``semantic`` and ``part_centers``, metadata ``parts``.
DATASET_VERSION = 2


def default_dataset(cache_dir: Optional[str] = None, **kwargs) -> str:
    """The embedded default data: generated on first use into ``cache_dir`` (default
    ``$INVRENDER_CACHE`` or ``~/.cache/invrender``; :func:`cache_root`)/``synthetic-v<DATASET_VERSION>-<hash>``
    and reused afterwards; ``<hash>`` digests every argument of :func:`generate_dataset` (``kwargs`` over its
    defaults, ``progress`` aside), so different settings never share a folder. Returns its root."""
    import hashlib
    import inspect
    import json
    import os

    bound = inspect.signature(generate_dataset).bind(None, **kwargs)  # unknown arguments raise TypeError here
    bound.apply_defaults()
    settings = {k: list(v) if isinstance(v, tuple) else v for k, v in bound.arguments.items()
                if k not in ("root", "progress")}
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:10]
    root = os.path.join(cache_root(cache_dir), f"synthetic-v{DATASET_VERSION}-{digest}")
    done = os.path.join(root, ".complete")
    if not os.path.exists(done):
        print(f"invrender: generating the default synthetic dataset into {root} (once; later runs reuse it)")
        generate_dataset(root, **kwargs)
        with open(done, "w") as f:
            f.write("ok\n")
    return root
