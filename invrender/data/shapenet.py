"""ShapeNet renderings in the Neural Mesh Renderer / SoftRas split, in the layout DVR and UNICORN use."""

from __future__ import annotations

import os
import re
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import yaml
from PIL import Image
from torch.utils.data import Dataset

from ..errors import ConfigError

from ._io import (alpha_array, as_size, binary_mask_tensor, has_alpha, load_npz, npz_array, open_image,
                  require_dir, require_file, resize, rgb_tensor)
from .parts import PartNoise, one_hot_parts

_VIEW_FILE = re.compile(r"^(\d+)\.(png|jpg|jpeg)$", re.IGNORECASE)


def project_to_ndc(points: np.ndarray, world_mat: np.ndarray, camera_mat: np.ndarray) -> np.ndarray:
    """Object-space ``points (N, 3)`` to normalised device coordinates ``(N, 2)`` (x left to right, y bottom to
    top, [-1, 1] across the image) with a ShapeNet-NMR camera: ``world_mat`` (3, 4) to the camera frame, then the
    pinhole of focal lengths ``camera_mat[0, 0], camera_mat[1, 1]`` about the image centre. The frame is read as
    :class:`ShapeNetNMR` reads ``rotation``: OpenGL-style (looking along -z, y up) when ``world_mat[2, 3] <= 0``
    (the synthetic data), else OpenCV-style (looking along +z, y down; DVR's files)."""
    p = np.asarray(points, dtype=np.float64) @ world_mat[:, :3].T + world_mat[:, 3]
    if world_mat[2, 3] <= 0:
        x, y, depth = p[:, 0], p[:, 1], -p[:, 2]
    else:
        x, y, depth = p[:, 0], -p[:, 1], p[:, 2]
    return np.stack([camera_mat[0, 0] * x / depth, camera_mat[1, 1] * y / depth], 1)


def read_split_list(path: str) -> List[str]:
    """Object folder names of a ``.lst`` file: one per line, blank lines ignored, order kept."""
    require_file(path, "split list")
    with open(path, "r", encoding="utf-8") as f:
        names = [line.strip() for line in f]
    return [n for n in names if n]


def read_metadata(path: str) -> Dict[str, Dict[str, object]]:
    """``metadata.yaml`` as DVR writes it: ``{synset: {id: synset, name: "airplane,aeroplane,plane"}}``; an entry's
    optional ``parts`` (the semantic part names of the category, as :func:`invrender.synthetic.generate_dataset`
    writes them) is kept as a list of str."""
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
        if "parts" in entry:
            parts = entry["parts"]
            if not isinstance(parts, list) or not parts or not all(isinstance(p, str) for p in parts):
                raise ValueError(f"{path!r}: entry {key!r} field 'parts' must be a non-empty list of part names, "
                                 f"got {parts!r}")
            out[str(key)]["parts"] = list(parts)
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
        root/<synset>/<object>/parts/0000.png ..  uint8 part labels, 0 background, k the part
                                                  metadata ``parts[k - 1]``      (only for load_parts)
        root/<synset>/<object>/mesh.npz        part_centers (Np, 3) object space (only for load_parts)

    (the part files are what :func:`invrender.synthetic.generate_dataset` writes; the metadata entry of each
    category then lists its ``parts`` names, ``Np`` of them).

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
    - with ``load_parts`` (UMR's part segmentations, Li et al. 2020): ``parts`` float32 (Np, H, W): one-hot part
      probabilities of ``parts/NNNN.png`` resized with nearest-neighbour filtering (all zero on the background),
      after ``part_noise`` when given; channel ``k`` is the part ``self.part_names[category][k]``. ``Np`` is the
      largest part count of the loaded categories (a category with fewer parts has all-zero extra channels, so
      the default collate works across categories). ``keypoints`` float32 (Np, 3): the part centres
      (``mesh.npz`` ``part_centers``) projected with the view's camera to ``(x, y, visible)``, x and y in
      normalised device coordinates with :class:`~invrender.data.CUB200`'s convention (x left to right, y bottom
      to top, [-1, 1] across the image, pixel (i, j)'s centre at ``(-1 + (2j + 1) / W, 1 - (2i + 1) / H)``;
      independent of ``image_size``); ``visible`` is 1 when the part has at least one pixel in the clean
      (uncorrupted) resized part map, else the row is (0, 0, 0). The projection is the pinhole of
      ``camera_mat``'s focal lengths ``(camera_mat[0, 0], camera_mat[1, 1])`` about the image centre, in the
      camera frame ``world_mat`` (DVR's OpenCV-style files and the synthetic OpenGL-style ones both, see
      ``rotation`` above).

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
        load_parts: add ``parts`` and ``keypoints`` (see above; needs ``parts`` lists in metadata.yaml, a
            ``parts`` folder and a ``mesh.npz`` with ``part_centers`` per object).
        part_noise: None, or a :class:`~invrender.data.PartNoise` applied to each item's part map (at the output
            size, before the one-hot encoding), seeded by the item index: the same item always gets the same
            corruption (a fixed segmenter's output); ``keypoints`` stay the ground truth. Needs ``load_parts``.

    Missing files (metadata.yaml, a split list, a listed object folder, its image folder or
    cameras.npz, requested point clouds / voxels / part folders / mesh.npz) raise ``FileNotFoundError``
    when the dataset is built (a missing part map ``parts/NNNN.png`` when its item is read); malformed
    contents raise ``ValueError`` naming the file.
    """

    def __init__(self, root: str, categories: Union[str, Sequence[str], None] = None, split: str = "train",
                 views: Union[int, Sequence[int], None] = None, load_pointcloud: bool = False,
                 load_voxels: bool = False, image_size: Union[int, Tuple[int, int], None] = None,
                 load_parts: bool = False, part_noise: Optional[PartNoise] = None):
        self.root = os.fspath(root)
        require_dir(self.root, "ShapeNet-NMR root")
        self.split = split
        self.image_size = as_size(image_size)
        self.load_pointcloud = bool(load_pointcloud)
        self.load_voxels = bool(load_voxels)
        self.load_parts = bool(load_parts)
        if part_noise is not None and not isinstance(part_noise, PartNoise):
            raise TypeError(f"ShapeNetNMR: argument 'part_noise' must be None or a PartNoise, "
                            f"got {type(part_noise).__name__}")
        if part_noise is not None and not self.load_parts:
            raise ValueError("ShapeNetNMR: argument 'part_noise' needs load_parts=True")
        self.part_noise = part_noise
        self.metadata = read_metadata(os.path.join(self.root, "metadata.yaml"))
        self.categories = self._resolve_categories(categories)
        self.category_names = [self.metadata[c]["name"] for c in self.categories]
        #: per category (in ``self.categories`` order): its semantic part names (only with load_parts)
        self.part_names: List[List[str]] = []
        if self.load_parts:
            for c in self.categories:
                if "parts" not in self.metadata[c]:
                    raise ValueError(f"{os.path.join(self.root, 'metadata.yaml')!r}: entry {c!r} has no 'parts' list "
                                     f"of part names, needed for load_parts=True (regenerate the synthetic data)")
                self.part_names.append(list(self.metadata[c]["parts"]))
        self.num_parts = max((len(p) for p in self.part_names), default=0)

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
        if self.load_parts:
            require_dir(os.path.join(obj_dir, "parts"), f"part map folder of object {synset}/{name} (load_parts=True)")
            require_file(os.path.join(obj_dir, "mesh.npz"), f"mesh.npz of object {synset}/{name} (load_parts=True)")
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
        stored_size = (im.height, im.width)
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
        if self.load_parts:
            item.update(self._parts(idx, ci, obj_dir, view, stored_size, item["camera"]))
        return item

    def _parts(self, idx: int, ci: int, obj_dir: str, view: int, size: Tuple[int, int], camera: dict) -> dict:
        count = len(self.part_names[ci])
        path = os.path.join(obj_dir, "parts", f"{view:04d}.png")
        label_im = open_image(path)
        if label_im.mode not in ("L", "P", "I", "I;16"):
            raise ValueError(f"part map {path!r} must be a single-channel label image, got mode {label_im.mode}")
        if (label_im.height, label_im.width) != size:
            raise ValueError(f"part map {path!r} is {label_im.width}x{label_im.height} but the image is "
                             f"{size[1]}x{size[0]}")
        labels = np.asarray(resize(label_im, self.image_size, Image.NEAREST)).astype(np.int64)
        if labels.size and labels.max() > count:
            raise ValueError(f"part map {path!r} has label {labels.max()} but category "
                             f"{self.categories[ci]} has {count} parts {self.part_names[ci]}")
        visible = np.isin(np.arange(1, count + 1), labels)
        if self.part_noise is not None:
            labels = self.part_noise(labels, idx, count)
        centers = self._part_centers(os.path.join(obj_dir, "mesh.npz"), count)
        keypoints = np.zeros((self.num_parts, 3), np.float32)
        keypoints[:count, :2] = project_to_ndc(centers, camera["world_mat"].double().numpy(),
                                               camera["camera_mat"].double().numpy())
        keypoints[:count] *= visible[:, None]
        keypoints[:count, 2] = visible
        return {"parts": one_hot_parts(labels, self.num_parts), "keypoints": torch.from_numpy(keypoints)}

    @staticmethod
    def _part_centers(path: str, count: int) -> np.ndarray:
        with load_npz(path, "mesh file") as npz:
            centers = np.asarray(npz_array(npz, "part_centers", path, "mesh file"), dtype=np.float64)
        if centers.shape != (count, 3):
            raise ValueError(f"mesh file {path!r}: part_centers has shape {centers.shape}, expected ({count}, 3) "
                             f"(one centre per part of the category)")
        return centers

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
