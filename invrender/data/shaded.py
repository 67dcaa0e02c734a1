"""IG-GAN's training images (Lunz et al. 2020, supplement B.2): grey, Lambertian-shaded renders of the
synthetic categories' ground-truth meshes from random viewpoints, in the paper's data regimes.

The renders come from :func:`invrender.renderers.render_shaded` (a hard z-buffer with two fixed lights
and ambient, grey albedo), the renderer that IG-GAN's "off-the-shelf" voxel renderer
(:func:`invrender.renderers.render_voxel_surface`) also uses, over a black background, through an
orthographic camera whose image spans view ``[-extent, extent]^2``: the frame of a voxel grid over
``[-1, 1]^3`` embedded in a grid twice its size (``invrender.rotate_voxels(..., size=2 N)``, IG-GAN's
64^3 in 128^3). Objects are :func:`invrender.synthetic.make_object` meshes scaled to ``object_scale``
(longest side; 1.8 leaves a margin inside the generator's cube).
"""

import math
from typing import Dict, Optional, Tuple

import torch
from torch.utils.data import Dataset

from ..ops import rotation_matrix
from ..renderers import render_shaded
from ..synthetic import CATEGORIES, make_object

__all__ = ["ShadedViews", "REGIMES", "VIEWPOINTS", "sample_viewpoints"]

#: The paper's data regimes (supplement B.2-B.3, Table 1): ``views`` a fixed set of ``objects x
#: views_per_object`` images (500 images: 500 objects x 1; "one per model": every object x 1; the bathtubs'
#: "four per object": x 4), ``unlimited`` a new random view at every index (``length`` of them).
REGIMES = ("views", "unlimited")

#: Viewpoint distributions (degrees; azimuth range, elevation range): the paper's chairs (B.2), its couches
#: and bathtubs, and the limited-viewpoint (LVP) chairs of B.3.
VIEWPOINTS = {
    "chairs": ((0.0, 360.0), (-30.0, 60.0)),
    "default": ((0.0, 360.0), (15.0, 60.0)),
    "lvp": ((-60.0, 60.0), (15.0, 60.0)),
}

_TEST_SEED_OFFSET = 1_000_000  # held-out objects: seeds disjoint from the training objects'


def sample_viewpoints(n: int, azimuth_range: Tuple[float, float], elevation_range: Tuple[float, float],
                      generator: Optional[torch.Generator] = None,
                      dtype: torch.dtype = torch.float64) -> Tuple[torch.Tensor, torch.Tensor]:
    """``n`` viewpoints ``(azimuth (n,), elevation (n,))`` in radians: azimuth uniform in ``azimuth_range``,
    elevation area-uniform on the sphere's band ``elevation_range`` (``sin(elevation)`` uniform); ranges in
    degrees. IG-GAN's generator draws its views from the distribution its data was rendered with."""
    u = torch.rand(2, n, generator=generator, dtype=torch.float64)
    az_lo, az_hi = (math.radians(a) for a in azimuth_range)
    s_lo, s_hi = (math.sin(math.radians(e)) for e in elevation_range)
    azimuth = az_lo + (az_hi - az_lo) * u[0]
    elevation = torch.asin((s_lo + (s_hi - s_lo) * u[1]).clamp(-1.0, 1.0))
    return azimuth.to(dtype), elevation.to(dtype)


def _pair(value, name: str) -> Tuple[float, float]:
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
            or value[0] > value[1]):
        raise ValueError(f"ShadedViews: argument '{name}' must be a pair (lo, hi) of finite degrees with lo <= hi, "
                         f"got {value!r}")
    return float(value[0]), float(value[1])


class ShadedViews(Dataset):
    """Grey shaded renders of one or more synthetic categories (IG-GAN's training and FID reference sets).

    Args:
        categories: a category name or a list of them (:data:`invrender.synthetic.CATEGORIES`); items cycle
            through the categories (object ``k`` is of category ``k % len(categories)``).
        objects: distinct objects (``make_object(category, seed)`` with seeds ``0 .. objects - 1`` for
            ``split="train"``, a disjoint range for ``"test"``).
        regime: ``"views"`` (``objects x views_per_object`` fixed images) or ``"unlimited"`` (``length``
            images, each a fresh random view of a random object; deterministic in ``seed`` and the index).
        views_per_object: images per object in the ``"views"`` regime.
        length: the number of items of the ``"unlimited"`` regime (default ``1000 x objects``).
        viewpoints: a key of :data:`VIEWPOINTS` or a pair ``((az_lo, az_hi), (el_lo, el_hi))`` in degrees;
            azimuth and elevation are uniform in those ranges.
        image_size: ``S`` of the ``(1, S, S)`` images.
        extent: half-width of the orthographic view window (2: the frame of a grid over ``[-1, 1]^3``
            embedded in one twice its size).
        object_scale: longest side of the objects in view units.
        split: ``"train"`` or ``"test"`` (held-out objects, e.g. FID's reference renders).
        seed: viewpoint seed.
        supersample: antialiasing factor of the renders.

    Item: ``image (1, S, S)`` float32 in [0, 1] (grey shading on black), ``mask (1, S, S)`` (coverage),
    ``rotation (3, 3)`` (object to view), ``azimuth`` / ``elevation`` (radians), ``object`` (seed),
    ``category`` (str), ``label`` (int64 index into :data:`invrender.synthetic.CATEGORIES`).
    """

    def __init__(self, categories="chair", objects: int = 500, regime: str = "views", views_per_object: int = 1,
                 length: Optional[int] = None, viewpoints="default", image_size: int = 64, extent: float = 2.0,
                 object_scale: float = 1.8, split: str = "train", seed: int = 0, supersample: int = 2):
        cats = [categories] if isinstance(categories, str) else list(categories)
        if not cats or any(c not in CATEGORIES for c in cats):
            raise ValueError(f"ShadedViews: argument 'categories' must name categories of {CATEGORIES}, got {categories!r}")
        for name, value in (("objects", objects), ("views_per_object", views_per_object), ("image_size", image_size),
                            ("supersample", supersample)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ShadedViews: argument '{name}' must be a positive int, got {value!r}")
        if regime not in REGIMES:
            raise ValueError(f"ShadedViews: argument 'regime' must be one of {REGIMES}, got {regime!r}")
        if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < 1):
            raise ValueError(f"ShadedViews: argument 'length' must be None or a positive int, got {length!r}")
        if isinstance(viewpoints, str):
            if viewpoints not in VIEWPOINTS:
                raise ValueError(f"ShadedViews: argument 'viewpoints' must be one of {sorted(VIEWPOINTS)} or a pair of "
                                 f"ranges, got {viewpoints!r}")
            viewpoints = VIEWPOINTS[viewpoints]
        if not isinstance(viewpoints, (tuple, list)) or len(viewpoints) != 2:
            raise ValueError(f"ShadedViews: argument 'viewpoints' must be ((az_lo, az_hi), (el_lo, el_hi)), "
                             f"got {viewpoints!r}")
        self.azimuth_range = _pair(viewpoints[0], "viewpoints[0] (azimuth)")
        self.elevation_range = _pair(viewpoints[1], "viewpoints[1] (elevation)")
        if not -90.0 <= self.elevation_range[0] <= self.elevation_range[1] <= 90.0:
            raise ValueError(f"ShadedViews: elevations must lie in [-90, 90], got {self.elevation_range}")
        for name, value in (("extent", extent), ("object_scale", object_scale)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
                raise ValueError(f"ShadedViews: argument '{name}' must be a positive number, got {value!r}")
        if split not in ("train", "test"):
            raise ValueError(f"ShadedViews: argument 'split' must be 'train' or 'test', got {split!r}")
        self.categories = cats
        self.objects, self.regime, self.views_per_object = objects, regime, views_per_object
        self.length = length if length is not None else 1000 * objects
        self.image_size, self.extent, self.object_scale = image_size, float(extent), float(object_scale)
        self.split, self.seed, self.supersample = split, int(seed), supersample
        self._meshes: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return self.objects * self.views_per_object if self.regime == "views" else self.length

    def object_seed(self, k: int) -> int:
        """The :func:`make_object` seed of object ``k`` of this split."""
        return k + (_TEST_SEED_OFFSET if self.split == "test" else 0)

    def category_of(self, k: int) -> str:
        return self.categories[k % len(self.categories)]

    def mesh(self, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Object ``k``'s mesh ``(verts (V, 3) float64 scaled to object_scale, faces (F, 3))``, cached."""
        if k not in self._meshes:
            verts, faces, _ = make_object(self.category_of(k), self.object_seed(k)).mesh()
            self._meshes[k] = (verts * self.object_scale, faces)
        return self._meshes[k]

    def view(self, index: int) -> Tuple[int, float, float]:
        """``(object k, azimuth, elevation)`` (radians) of item ``index``."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index * 7919 + (17 if self.split == "test" else 0))
        if self.regime == "views":
            k = index // self.views_per_object
        else:
            k = int(torch.randint(self.objects, (), generator=g))
        azimuth, elevation = sample_viewpoints(1, self.azimuth_range, self.elevation_range, g)
        return k, float(azimuth), float(elevation)

    def __getitem__(self, index: int) -> Dict[str, object]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"ShadedViews: index {index} out of range for {len(self)} items")
        index = index % len(self)
        k, azimuth, elevation = self.view(index)
        verts, faces = self.mesh(k)
        rotation = rotation_matrix(torch.tensor([azimuth], dtype=torch.float64),
                                   torch.tensor([elevation], dtype=torch.float64))
        S = self.image_size * self.supersample
        image, mask = render_shaded(verts, faces, rotation, self.image_size, supersample=self.supersample,
                                    background=torch.zeros(1, 3, S, S), orthographic=self.extent)
        category = self.category_of(k)
        return {"image": image[0, :1].contiguous(), "mask": mask[0], "rotation": rotation[0].float(),
                "azimuth": torch.tensor(azimuth), "elevation": torch.tensor(elevation),
                "object": torch.tensor(self.object_seed(k)), "category": category,
                "label": torch.tensor(CATEGORIES.index(category))}

