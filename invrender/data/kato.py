"""ShapeNet renderings as distributed by Kato et al. (Neural 3D Mesh Renderer) and used by SoftRas."""

from __future__ import annotations

import glob
import os
from typing import List, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from ._io import load_npz, npz_array, require_dir

VIEWS_PER_OBJECT = 24
ELEVATION = 30.0
DISTANCE = 2.732
AZIMUTH_STEP = 15.0


class KatoShapeNet(Dataset):
    """ShapeNet 64x64 renders (24 views per object) in Kato et al.'s per-class ``.npz`` files.

    On-disk layout (``root`` is the ``mesh_reconstruction`` dataset folder)::

        root/<synset>_<split>_images.npz   'arr_0': uint8 (N*24, 4, 64, 64), RGB + alpha, object-major
                                           (rows 24*i .. 24*i+23 are the 24 views of object i)
        root/<synset>_<split>_voxels.npz   'arr_0': (N, 32, 32, 32) occupancy   (optional)

    Items (index = images of the categories in order, each category's rows in file order):

    - ``image``: float32 (3, 64, 64) in [0, 1] (channels 0..2 / 255)
    - ``mask``: float32 (1, 64, 64) in [0, 1]: the alpha channel / 255 (as SoftRas uses it as the
      silhouette; Kato's renders are binary, so this is {0, 1} there)
    - ``category``: int64 index into ``self.categories``; ``synset``: str
    - ``object``: int64, the object's row in its category's file (image row // 24)
    - ``view``: int64, image row % 24
    - ``azimuth``: float32 degrees, 15 * view; ``elevation``: 30.0; ``distance``: 2.732. Note that
      Kato's and SoftRas' loaders pass ``-azimuth`` to ``get_points_from_angles`` (eye on the
      opposite rotation direction); use ``-item["azimuth"]`` to reproduce their cameras exactly.
    - ``voxels``: float32 (32, 32, 32), the object's grid, as stored (Kato/SoftRas transpose the
      *predicted* grid with ``transpose(0, 2, 1, 3)[..., ::-1]`` before comparing), when loaded.

    Args:
        root: folder with the ``.npz`` files.
        categories: synset ids (``"02691156"``, ...); None = every ``*_<split>_images.npz`` in
            ``root``, sorted.
        split: "train", "val" or "test".
        load_voxels: True = require the voxel files; False = never load them; None (default) =
            load them when every category has one, else leave ``voxels`` out of the items.

    The arrays are read into memory when the dataset is built (about 1.2 GB for the largest class,
    airplane train). Missing files raise ``FileNotFoundError``; a wrong key, shape, dtype or a
    row count that is not a multiple of 24 (or does not match the voxel count) raises ``ValueError``.
    """

    def __init__(self, root: str, categories: Union[str, Sequence[str], None] = None, split: str = "train",
                 load_voxels: Optional[bool] = None):
        self.root = os.fspath(root)
        require_dir(self.root, "Kato ShapeNet root")
        self.split = split
        if categories is None:
            suffix = f"_{split}_images.npz"
            found = sorted(glob.glob(os.path.join(glob.escape(self.root), "*" + suffix)))
            categories = [os.path.basename(p)[: -len(suffix)] for p in found]
            if not categories:
                raise FileNotFoundError(f"no <synset>{suffix} files in {self.root!r}")
        elif isinstance(categories, str):
            categories = [categories]
        self.categories: List[str] = [str(c) for c in categories]
        if not self.categories:
            raise ValueError("categories must not be empty")

        vox_paths = [os.path.join(self.root, f"{c}_{split}_voxels.npz") for c in self.categories]
        if load_voxels is None:
            load_voxels = all(os.path.isfile(p) for p in vox_paths)
        self.load_voxels = bool(load_voxels)

        self._images: List[np.ndarray] = []
        self._voxels: List[Optional[np.ndarray]] = []
        self._offsets = [0]
        for c, vox_path in zip(self.categories, vox_paths):
            path = os.path.join(self.root, f"{c}_{split}_images.npz")
            if not os.path.isfile(path):
                raise FileNotFoundError(f"images of category {c} not found: expected {path!r} "
                                        f"(array 'arr_0', uint8 (N*24, 4, 64, 64))")
            with load_npz(path, "Kato images file") as npz:
                imgs = npz_array(npz, "arr_0", path, "Kato images file")
            if imgs.dtype != np.uint8 or imgs.ndim != 4 or imgs.shape[1] != 4:
                raise ValueError(f"{path!r}: 'arr_0' is {imgs.dtype} {imgs.shape}, expected uint8 (N*24, 4, H, W)")
            if imgs.shape[0] == 0 or imgs.shape[0] % VIEWS_PER_OBJECT:
                raise ValueError(f"{path!r}: {imgs.shape[0]} images is not a positive multiple of "
                                 f"{VIEWS_PER_OBJECT} views per object")
            n_obj = imgs.shape[0] // VIEWS_PER_OBJECT
            vox = None
            if self.load_voxels:
                if not os.path.isfile(vox_path):
                    raise FileNotFoundError(f"voxels of category {c} not found: expected {vox_path!r} "
                                            f"(array 'arr_0', (N, 32, 32, 32)); pass load_voxels=False to skip")
                with load_npz(vox_path, "Kato voxels file") as npz:
                    vox = npz_array(npz, "arr_0", vox_path, "Kato voxels file")
                if vox.ndim != 4 or len(set(vox.shape[1:])) != 1:
                    raise ValueError(f"{vox_path!r}: 'arr_0' has shape {vox.shape}, expected (N, 32, 32, 32)")
                if vox.shape[0] != n_obj:
                    raise ValueError(f"{vox_path!r} has {vox.shape[0]} voxel grids but {path!r} has "
                                     f"{imgs.shape[0]} images = {n_obj} objects x {VIEWS_PER_OBJECT} views")
            self._images.append(imgs)
            self._voxels.append(vox)
            self._offsets.append(self._offsets[-1] + imgs.shape[0])

    def __len__(self) -> int:
        return self._offsets[-1]

    def __getitem__(self, idx: int) -> dict:
        if idx < 0:
            idx += len(self)
        if not 0 <= idx < len(self):
            raise IndexError(f"index {idx} out of range for a dataset of {len(self)} items")
        ci = int(np.searchsorted(self._offsets, idx, side="right")) - 1
        row = idx - self._offsets[ci]
        arr = torch.from_numpy(np.ascontiguousarray(self._images[ci][row])).float().div_(255.0)
        view = row % VIEWS_PER_OBJECT
        obj = row // VIEWS_PER_OBJECT
        item = {
            "image": arr[:3].contiguous(),
            "mask": arr[3:4].contiguous(),
            "category": torch.tensor(ci, dtype=torch.int64),
            "synset": self.categories[ci],
            "object": torch.tensor(obj, dtype=torch.int64),
            "view": torch.tensor(view, dtype=torch.int64),
            "azimuth": torch.tensor(AZIMUTH_STEP * view, dtype=torch.float32),
            "elevation": torch.tensor(ELEVATION, dtype=torch.float32),
            "distance": torch.tensor(DISTANCE, dtype=torch.float32),
        }
        if self.load_voxels:
            item["voxels"] = torch.from_numpy(np.ascontiguousarray(self._voxels[ci][obj], dtype=np.float32))
        return item
