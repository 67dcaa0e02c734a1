"""ShapeNet renderings in the Neural Mesh Renderer / SoftRas split, in the layout DVR and UNICORN use."""

from __future__ import annotations

import os
import re
from typing import Dict, List, Sequence, Tuple, Union

import numpy as np
import torch
import yaml
from PIL import Image
from torch.utils.data import Dataset

from ..errors import ConfigError

from ._io import (alpha_array, as_size, binary_mask_tensor, has_alpha, load_npz, npz_array, open_image,
                  require_dir, require_file, resize, rgb_tensor)

_VIEW_FILE = re.compile(r"^(\d+)\.(png|jpg|jpeg)$", re.IGNORECASE)


def read_split_list(path: str) -> List[str]:
    """Object folder names of a ``.lst`` file: one per line, blank lines ignored, order kept."""
    require_file(path, "split list")
    with open(path, "r", encoding="utf-8") as f:
        names = [line.strip() for line in f]
    return [n for n in names if n]


def read_metadata(path: str) -> Dict[str, Dict[str, str]]:
    """``metadata.yaml`` as DVR writes it: ``{synset: {id: synset, name: "airplane,aeroplane,plane"}}``."""
    require_file(path, "ShapeNet metadata.yaml")
    with open(path, "r", encoding="utf-8") as f:
        try:
            meta = yaml.safe_load(f)
        except yaml.YAMLError as exc:
            raise ValueError(f"cannot parse {path!r} as YAML: {exc}") from exc
    if not isinstance(meta, dict) or not meta:
        raise ValueError(f"{path!r} must map synset ids to {{id: ..., name: ...}} entries, got {type(meta).__name__}")
    out = {}
    for key, entry in meta.items():
        if not isinstance(entry, dict) or "name" not in entry:
            raise ValueError(f"{path!r}: entry {key!r} must be a mapping with a 'name' field, got {entry!r}")
        out[str(key)] = {"id": str(entry.get("id", key)), "name": str(entry["name"])}
    return out


class ShapeNetNMR(Dataset):
    """ShapeNet-NMR renderings (13 classes, 24 views of 64x64) in the DVR / UNICORN layout.

    On-disk layout (``root`` is e.g. DVR's ``data/NMR_Dataset``)::

        root/metadata.yaml                 {synset: {id: synset, name: "airplane,aeroplane,plane"}, ...}
        root/<synset>/softras_train.lst    object folder names, one per line (also softras_val / _test;
                                           a plain <split>.lst is used when softras_<split>.lst is absent)
        root/<synset>/<object>/image/0000.png .. 0023.png   RGB (or RGBA) renders
        root/<synset>/<object>/mask/0000.png  .. 0023.png   silhouettes (optional, see ``mask``)
        root/<synset>/<object>/cameras.npz  world_mat_<i> (3,4) or (4,4), camera_mat_<i> (4,4) per view i
        root/<synset>/<object>/pointcloud.npz  points (P,3), normals (P,3)   (only for load_pointcloud)
        root/<synset>/<object>/voxels.npy      (32,32,32) occupancy           (only for load_voxels)

    Items are (object, view) pairs, object-major (all views of the first object first). Each item is a
    dict:

    - ``image``: float32 (3, H, W) in [0, 1] (RGB; an alpha channel is dropped, not composited)
    - ``mask``: float32 (1, H, W) in {0, 1}: ``mask/NNNN.png`` > 127 when the object has a ``mask``
      folder, else the image's alpha channel > 127 (an RGB image without a mask folder is an error)
    - ``camera``: dict with ``world_mat`` float32 (3, 4) (world -> camera; the top 3 rows when stored
      as 4x4, whose last row must be [0, 0, 0, 1]) and ``camera_mat`` float32 (4, 4) (DVR's
      projection to normalised device coordinates in [-1, 1], hence independent of ``image_size``), and
      ``rotation`` float32 (3, 3): the object-to-view rotation in invrender's convention (``p_view = R p``,
      x right, y up, the camera on +z looking at the origin), read from ``world_mat`` by the sign of its
      z translation: DVR's ShapeNet-NMR files are OpenCV-style (camera looking along +z, y down,
      ``t_z = +distance``): ``R = diag(1, -1, -1) @ world_mat[:, :3]``; files written by
      :func:`invrender.synthetic.generate_dataset` are OpenGL-style (``t_z = -distance``): ``R =
      world_mat[:, :3]``
    - ``category``: int64 scalar, index into ``self.categories``; ``synset``: str; ``object``: str;
      ``view``: int64 scalar (the NNNN of the file)
    - with ``load_pointcloud``: ``pointcloud`` dict of ``points`` / ``normals`` float32 (P, 3) (the
      default collate needs the same P in every object; DVR's files have 100k points)
    - with ``load_voxels``: ``voxels`` float32 (32, 32, 32) (as stored; occupancy in {0, 1})

    Preprocessing: ``image_size`` (int or (H, W)) resizes the image with bilinear filtering and the
    mask with nearest-neighbour filtering; None keeps the stored size (64x64 for NMR, which is what
    UNICORN trains on).

    Args:
        root: dataset folder.
        categories: synset ids or names (any comma-separated part of the metadata name, e.g.
            "airplane"); None = every synset in metadata.yaml, sorted by synset id.
        split: "train", "val" or "test" (reads ``softras_<split>.lst``).
        views: None = every NNNN.png in each object's image folder; an int n = views 0..n-1;
            a sequence = those view numbers. Missing requested views raise ``FileNotFoundError``.
        load_pointcloud / load_voxels: add ``pointcloud`` / ``voxels`` (files must exist).
        image_size: output size, see above.

    Missing files (metadata.yaml, a split list, a listed object folder, its image folder or
    cameras.npz, requested point clouds / voxels) raise ``FileNotFoundError`` when the dataset is
    built; malformed contents raise ``ValueError`` naming the file.
    """

    def __init__(self, root: str, categories: Union[str, Sequence[str], None] = None, split: str = "train",
                 views: Union[int, Sequence[int], None] = None, load_pointcloud: bool = False,
                 load_voxels: bool = False, image_size: Union[int, Tuple[int, int], None] = None):
        self.root = os.fspath(root)
        require_dir(self.root, "ShapeNet-NMR root")
        self.split = split
        self.image_size = as_size(image_size)
        self.load_pointcloud = bool(load_pointcloud)
        self.load_voxels = bool(load_voxels)
        self.metadata = read_metadata(os.path.join(self.root, "metadata.yaml"))
        self.categories = self._resolve_categories(categories)
        self.category_names = [self.metadata[c]["name"] for c in self.categories]

        if views is not None and not isinstance(views, int):
            views = [int(v) for v in views]
            if not views:
                raise ValueError("views must not be empty")
        if isinstance(views, int) and views <= 0:
            raise ValueError(f"views must be positive, got {views}")

        # per object: (category index, synset, name, image dir, has mask dir, {view: file name})
        self.objects: List[Tuple[int, str, str]] = []
        self._files: List[Dict[int, str]] = []
        self._has_mask: List[bool] = []
        self._index: List[Tuple[int, int]] = []  # (object number, view)
        for ci, synset in enumerate(self.categories):
            cat_dir = require_dir(os.path.join(self.root, synset), f"category folder of {synset}")
            lst = os.path.join(cat_dir, f"softras_{split}.lst")
            if not os.path.isfile(lst) and os.path.isfile(os.path.join(cat_dir, f"{split}.lst")):
                lst = os.path.join(cat_dir, f"{split}.lst")
            if not os.path.isfile(lst):
                raise FileNotFoundError(f"split list not found: expected {lst!r} (or {split}.lst) listing the "
                                        f"{split!r} objects of category {synset}")
            for name in read_split_list(lst):
                self._add_object(ci, synset, name, lst, views)
        if not self._index:
            raise ValueError(f"no (object, view) pairs in split {split!r} of categories {self.categories} "
                             f"under {self.root!r}")

    def _resolve_categories(self, categories) -> List[str]:
        if categories is None:
            return sorted(self.metadata)
        if isinstance(categories, str):
            categories = [categories]
        out = []
        for c in categories:
            c = str(c)
            if c in self.metadata:
                out.append(c)
                continue
            hits = [s for s, e in self.metadata.items()
                    if c == e["name"] or c in [p.strip() for p in e["name"].split(",")]]
            if len(hits) != 1:
                known = ", ".join(f"{s} ({e['name']})" for s, e in sorted(self.metadata.items()))
                raise ConfigError(f"unknown or ambiguous category {c!r} in {self.root}/metadata.yaml; known: {known}")
            out.append(hits[0])
        if not out:
            raise ValueError("categories must not be empty")
        return out

    def _add_object(self, ci: int, synset: str, name: str, lst: str, views) -> None:
        obj_dir = os.path.join(self.root, synset, name)
        if not os.path.isdir(obj_dir):
            raise FileNotFoundError(f"object folder {obj_dir!r} listed in {lst!r} does not exist")
        img_dir = require_dir(os.path.join(obj_dir, "image"), f"image folder of object {synset}/{name}")
        require_file(os.path.join(obj_dir, "cameras.npz"), f"cameras.npz of object {synset}/{name}")
        if self.load_pointcloud:
            require_file(os.path.join(obj_dir, "pointcloud.npz"),
                         f"pointcloud.npz of object {synset}/{name} (load_pointcloud=True)")
        if self.load_voxels:
            require_file(os.path.join(obj_dir, "voxels.npy"),
                         f"voxels.npy of object {synset}/{name} (load_voxels=True)")
        files: Dict[int, str] = {}
        for fn in sorted(os.listdir(img_dir)):
            m = _VIEW_FILE.match(fn)
            if m:
                v = int(m.group(1))
                if v in files:
                    raise ValueError(f"view {v} appears twice in {img_dir!r}: {files[v]!r} and {fn!r}")
                files[v] = fn
        if not files:
            raise FileNotFoundError(f"no NNNN.png view images in {img_dir!r}")
        if views is None:
            use = sorted(files)
        else:
            use = list(range(views)) if isinstance(views, int) else list(views)
            missing = [v for v in use if v not in files]
            if missing:
                raise FileNotFoundError(f"views {missing} requested but {img_dir!r} has no "
                                        f"{missing[0]:04d}.png (views present: {sorted(files)})")
        k = len(self.objects)
        self.objects.append((ci, synset, name))
        self._files.append(files)
        self._has_mask.append(os.path.isdir(os.path.join(obj_dir, "mask")))
        self._index.extend((k, v) for v in use)

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, idx: int) -> dict:
        if idx < 0:
            idx += len(self)
        if not 0 <= idx < len(self):
            raise IndexError(f"index {idx} out of range for a dataset of {len(self)} items")
        k, view = self._index[idx]
        ci, synset, name = self.objects[k]
        obj_dir = os.path.join(self.root, synset, name)
        img_path = os.path.join(obj_dir, "image", self._files[k][view])
        im = open_image(img_path)
        if self._has_mask[k]:
            mask_path = os.path.join(obj_dir, "mask", f"{view:04d}.png")
            mask_im = open_image(mask_path).convert("L")
            if mask_im.size != im.size:
                raise ValueError(f"mask {mask_path!r} is {mask_im.size[0]}x{mask_im.size[1]} but image "
                                 f"{img_path!r} is {im.size[0]}x{im.size[1]}")
        elif has_alpha(im):
            mask_im = Image.fromarray(alpha_array(im))
        else:
            raise ValueError(f"no mask for {img_path!r}: {os.path.join(obj_dir, 'mask')!r} does not exist "
                             f"and the image has no alpha channel (mode {im.mode})")
        im = resize(im, self.image_size, Image.BILINEAR)
        mask_im = resize(mask_im, self.image_size, Image.NEAREST)
        item = {
            "image": rgb_tensor(im),
            "mask": binary_mask_tensor(np.asarray(mask_im, dtype=np.uint8)),
            "camera": self._camera(os.path.join(obj_dir, "cameras.npz"), view),
            "category": torch.tensor(ci, dtype=torch.int64),
            "synset": synset,
            "object": name,
            "view": torch.tensor(view, dtype=torch.int64),
        }
        if self.load_pointcloud:
            item["pointcloud"] = self._pointcloud(os.path.join(obj_dir, "pointcloud.npz"))
        if self.load_voxels:
            item["voxels"] = self._voxels(os.path.join(obj_dir, "voxels.npy"))
        return item

    def object_voxels(self, k: int) -> torch.Tensor:
        """The stored voxel grid (D, D, D) float32 of object ``k`` of ``self.objects`` (any ``load_voxels``)."""
        if not 0 <= k < len(self.objects):
            raise IndexError(f"object {k} out of range for {len(self.objects)} objects")
        _, synset, name = self.objects[k]
        path = require_file(os.path.join(self.root, synset, name, "voxels.npy"), f"voxels.npy of object {synset}/{name}")
        return self._voxels(path)

    @staticmethod
    def _camera(path: str, view: int) -> dict:
        with load_npz(path, "cameras file") as npz:
            world = np.asarray(npz_array(npz, f"world_mat_{view}", path, "cameras file"), dtype=np.float32)
            cam = np.asarray(npz_array(npz, f"camera_mat_{view}", path, "cameras file"), dtype=np.float32)
        if world.shape == (4, 4):
            if not np.allclose(world[3], [0, 0, 0, 1], atol=1e-6):
                raise ValueError(f"world_mat_{view} in {path!r} is 4x4 but its last row is {world[3].tolist()}, "
                                 f"expected [0, 0, 0, 1]")
            world = world[:3]
        if world.shape != (3, 4):
            raise ValueError(f"world_mat_{view} in {path!r} has shape {world.shape}, expected (3, 4) or (4, 4)")
        if cam.shape != (4, 4):
            raise ValueError(f"camera_mat_{view} in {path!r} has shape {cam.shape}, expected (4, 4)")
        rotation = world[:, :3] if world[2, 3] <= 0 else np.diag([1.0, -1.0, -1.0]).astype(np.float32) @ world[:, :3]
        return {"world_mat": torch.from_numpy(np.ascontiguousarray(world)), "camera_mat": torch.from_numpy(cam),
                "rotation": torch.from_numpy(np.ascontiguousarray(rotation))}

    @staticmethod
    def _pointcloud(path: str) -> dict:
        with load_npz(path, "point cloud file") as npz:
            pts = np.asarray(npz_array(npz, "points", path, "point cloud file"), dtype=np.float32)
            nrm = np.asarray(npz_array(npz, "normals", path, "point cloud file"), dtype=np.float32)
        if pts.ndim != 2 or pts.shape[1] != 3 or nrm.shape != pts.shape:
            raise ValueError(f"{path!r}: points {pts.shape} and normals {nrm.shape} must both be (P, 3)")
        return {"points": torch.from_numpy(pts), "normals": torch.from_numpy(nrm)}

    @staticmethod
    def _voxels(path: str) -> torch.Tensor:
        try:
            vox = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise ValueError(f"cannot read voxel grid {path!r} as a .npy array: {exc}") from exc
        if vox.ndim != 3 or len(set(vox.shape)) != 1:
            raise ValueError(f"voxel grid {path!r} has shape {vox.shape}, expected a cube such as (32, 32, 32)")
        return torch.from_numpy(np.ascontiguousarray(vox, dtype=np.float32))
