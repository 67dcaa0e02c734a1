"""Annotations in CMR's ``.mat`` format (Kanazawa et al. 2018; reused by UCMR, UMR and UNICORN for CUB-200 and
Pascal3D+), and the dataset both real-image benchmarks share: a square crop around each annotated box."""

from __future__ import annotations

import math
import os
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from ._crop import check_fill, check_fraction, crop_resize, jittered_box, points_to_ndc, square_about
from ._io import open_image, require_dir, require_file

SPLITS = ("train", "val", "test")


def _field(entry, name: str, path: str, index: int):
    if not hasattr(entry, name):
        have = sorted(getattr(entry, "_fieldnames", []) or [])
        raise ValueError(f"{path!r}: images[{index}] has no field {name!r} (fields: {have})")
    return getattr(entry, name)


def read_cmr_annotations(path: str, keypoints: bool = False) -> List[Dict[str, object]]:
    """The struct array ``images`` of a CMR annotation file (``scipy.io.loadmat(struct_as_record=False,
    squeeze_me=True)``), one dict per image:

    - ``rel_path`` str: the image's path under the dataset's image folder;
    - ``box`` (4,) float64: the tight box as edges ``(left, top, right, bottom)`` in 0-indexed pixel coordinates
      (a pixel covers ``[j, j + 1)``): the stored 1-indexed inclusive ``bbox`` fields ``x1, y1, x2, y2`` give
      ``(x1 - 1, y1 - 1, x2, y2)`` (CMR subtracts 1; both ends inclusive);
    - ``mask`` (H, W) uint8 in {0, 255} (stored as 0 / 1, or any value > 0 for the object);
    - with ``keypoints``: ``parts`` (K, 3) float64, ``(x, y, visible)`` per keypoint, x and y 0-indexed (stored
      1-indexed in the ``3 x K`` field ``parts``);
    - ``cad_index`` int when the struct has that field (Pascal3D+: the CAD model of the instance).

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file (and the entry) for
    anything malformed.
    """
    from scipy.io import loadmat

    require_file(path, "annotation file")
    try:
        mat = loadmat(path, struct_as_record=False, squeeze_me=True)
    except Exception as exc:
        raise ValueError(f"cannot read {path!r} as a MATLAB .mat file: {exc}") from exc
    if "images" not in mat:
        raise ValueError(f"{path!r} has no struct array 'images' (variables: "
                         f"{sorted(k for k in mat if not k.startswith('__'))})")
    entries = np.atleast_1d(mat["images"])
    out = []
    for i, entry in enumerate(entries.ravel()):
        bbox = _field(entry, "bbox", path, i)
        try:
            x1, y1, x2, y2 = (float(getattr(bbox, k)) for k in ("x1", "y1", "x2", "y2"))
        except (AttributeError, TypeError, ValueError) as exc:
            raise ValueError(f"{path!r}: images[{i}].bbox must be a struct of numbers x1, y1, x2, y2: {exc}") from exc
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)) or x2 < x1 or y2 < y1:
            raise ValueError(f"{path!r}: images[{i}].bbox must have x1 <= x2 and y1 <= y2 (finite), "
                             f"got {(x1, y1, x2, y2)}")
        mask = np.asarray(_field(entry, "mask", path, i))
        if mask.ndim != 2 or mask.size == 0:
            raise ValueError(f"{path!r}: images[{i}].mask must be an (H, W) array, got shape {mask.shape}")
        item = {"rel_path": str(_field(entry, "rel_path", path, i)),
                "box": np.array([x1 - 1.0, y1 - 1.0, x2, y2]),
                "mask": np.where(mask > 0, 255, 0).astype(np.uint8)}
        if keypoints:
            parts = np.asarray(_field(entry, "parts", path, i), dtype=np.float64)
            if parts.ndim != 2 or parts.shape[0] != 3:
                raise ValueError(f"{path!r}: images[{i}].parts must be 3 x K (x, y, visibility rows), "
                                 f"got shape {parts.shape}")
            kp = parts.T.copy()
            kp[:, 2] = kp[:, 2] > 0
            kp[:, :2] -= 1.0
            item["parts"] = kp
        if hasattr(entry, "cad_index"):
            item["cad_index"] = int(entry.cad_index)
        out.append(item)
    if not out:
        raise ValueError(f"{path!r} lists no images")
    return out


class BoxCropDataset(Dataset):
    """Images with one annotated object each (box, mask, optionally keypoints), cropped square around the
    object as CMR and UNICORN do. Subclasses set the layout (:class:`CUB200`, :class:`Pascal3DCar`).

    Preprocessing of item ``i`` (CMR ``data/base.py``; UNICORN ``src/dataset/cub_200.py``, ``p3d_car.py``):

    1. the tight box grown by ``padding`` times its width / height on each side;
    2. on the train split with ``jitter``, each edge moved by ``U(-1, 1) * jitter_fraction`` times the box's
       width / height (scale and translation jitter);
    3. the square of the larger side centred on it (:func:`square_about`), cropped with the part outside the
       image filled by ``fill`` (``"edge"``: UNICORN's border replication; a grey level: CMR's 1, white) and
       the mask by 0;
    4. resized to ``image_size`` (image bilinear, mask nearest);
    5. on the train split with ``random_flip``, mirrored left-right with probability 1/2 (keypoints mirrored
       and their left / right names swapped by ``flip_permutation``).

    Jitter and flips draw from ``generator`` (torch's global generator when None, which the DataLoader seeds
    per worker); the val and test splits are never jittered or flipped.
    """

    def __init__(self, images_dir: str, annotation_path: str, split: str, image_size: int, padding: float,
                 jitter: bool, jitter_fraction: float, random_flip: bool, fill, keypoints: bool,
                 flip_permutation: Optional[Sequence[int]] = None, generator: Optional[torch.Generator] = None):
        name = type(self).__name__
        if split not in SPLITS:
            raise ValueError(f"{name}: argument 'split' must be one of {list(SPLITS)}, got {split!r}")
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"{name}: argument 'image_size' must be a positive int, got {image_size!r}")
        self.split = split
        self.image_size = image_size
        self.padding = check_fraction(padding, "padding")
        self.jitter_fraction = check_fraction(jitter_fraction, "jitter_fraction")
        self.jitter = bool(jitter) and split == "train"
        self.random_flip = bool(random_flip) and split == "train"
        self.fill = check_fill(fill)
        self.generator = generator
        self.images_dir = require_dir(images_dir, f"{name} image folder")
        self.annotation_path = annotation_path
        self.records = read_cmr_annotations(annotation_path, keypoints=keypoints)
        self.flip_permutation = None if flip_permutation is None else np.asarray(flip_permutation, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.records)

    def square(self, index: int, jitter: Optional[bool] = None):
        """The crop ``(x0, y0, side)`` of item ``index`` in its image's pixels (drawing the jitter when on)."""
        jitter = self.jitter if jitter is None else jitter
        box = jittered_box(self.records[index]["box"], self.padding, self.jitter_fraction if jitter else 0.0,
                           self.generator)
        return square_about(box)

    def __getitem__(self, index: int) -> Dict[str, Union[torch.Tensor, str]]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} images")
        rec = self.records[index]
        path = os.path.join(self.images_dir, rec["rel_path"])
        im = open_image(path)
        if rec["mask"].shape != (im.height, im.width):
            raise ValueError(f"the mask of images[{index}] in {self.annotation_path!r} is "
                             f"{rec['mask'].shape[1]}x{rec['mask'].shape[0]} but the image {path!r} is "
                             f"{im.width}x{im.height}")
        square = self.square(index)
        flip = self.random_flip and bool(torch.rand((), generator=self.generator) < 0.5)
        image, mask = crop_resize(im, rec["mask"], square, (self.image_size,) * 2, self.fill, flip)
        item = {"image": image, "mask": mask, "path": path}
        if "parts" in rec:
            kp = rec["parts"]
            xy = points_to_ndc(kp[:, :2], square, flip)
            if flip and self.flip_permutation is not None:
                kp, xy = kp[self.flip_permutation], xy[self.flip_permutation]
            visible = kp[:, 2:] > 0
            item["keypoints"] = torch.from_numpy(np.concatenate([xy * visible, visible], 1).astype(np.float32))
        if "cad_index" in rec:
            item["cad_index"] = torch.tensor(rec["cad_index"], dtype=torch.int64)
        item.update(self.extra_maps(index, square, flip))
        return item

    def extra_maps(self, index: int, square, flip: bool) -> Dict[str, torch.Tensor]:
        """More per-pixel data of item ``index`` (subclasses: e.g. :class:`CUB200`'s part maps), cropped to
        ``square`` (the item's crop, jitter included) at ``image_size`` and mirrored when ``flip``, as the mask is."""
        return {}
