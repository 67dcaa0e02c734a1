"""CUB-200-2011 birds in CMR's annotation format (Kanazawa et al. 2018), as UNICORN and UMR train on them."""

from __future__ import annotations

import numbers
import os
from typing import Dict, Optional

import numpy as np
import torch

from ..errors import MissingInputError
from ._cmr import SPLITS, BoxCropDataset
from ._crop import crop_map, jittered_box, square_about
from ._io import require_dir, require_file

#: CMR's 15 CUB keypoints, in the order of the ``parts`` columns.
KEYPOINT_NAMES = ("Back", "Beak", "Belly", "Breast", "Crown", "FHead", "LEye", "LLeg", "LWing", "Nape", "REye",
                  "RLeg", "RWing", "Tail", "Throat")
#: The keypoint each one becomes in a left-right mirrored image (CMR ``kp_perm``, 0-indexed).
KEYPOINT_FLIP = (0, 1, 2, 3, 4, 5, 10, 11, 12, 9, 6, 7, 8, 13, 14)

#: SCOPS's 4 CUB parts as UMR names them, in channel order 1..4 of its part maps (channel 0 is the background):
#: NVlabs/UMR ``data/base.py`` (``prob2center(..., ch=1)`` head, 2 neck, 3 back, 4 belly) and
#: ``experiments/avg_uv.py`` (head, neck, back, belly vertices).
SCOPS_PART_NAMES = ("head", "neck", "back", "belly")
#: The padding of the box SCOPS crops CUB images with before segmenting them (NVlabs/SCOPS ``dataset/base.py``
#: ``padding_frac``, CMR's): its part maps cover the squared box padded by 5 %.
SCOPS_PADDING = 0.05


def scops_part_path(parts_root: str, image_path: str, index: int) -> str:
    """The file UMR reads for image ``index`` (0-based row of the split's ``.mat``) at ``image_path``:
    ``parts_root/<image's folder name>/<image name up to its first '.'>_<index>.npy`` (NVlabs/UMR ``data/base.py``
    ``forward_img``), e.g. ``dcrf_prob/001.Black_footed_Albatross/Black_Footed_Albatross_0009_34_0.npy``."""
    folder = os.path.basename(os.path.dirname(image_path))
    stem = os.path.basename(image_path).split(".")[0]
    return os.path.join(parts_root, folder, f"{stem}_{int(index)}.npy")


def read_scops_parts(path: str, num_parts: int = len(SCOPS_PART_NAMES)) -> np.ndarray:
    """A SCOPS part map as UMR reads it: ``np.load`` of an ``(h, w, num_parts + 1)`` array (``h == w``; SCOPS
    writes 256 x 256) of per-pixel part probabilities after its dense CRF, channel 0 the background. Returns it
    as float32. Raises ``FileNotFoundError`` naming a missing file and ``ValueError`` naming the file for an
    unreadable one, another shape or non-finite values."""
    require_file(path, "SCOPS part map")
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise ValueError(f"cannot read SCOPS part map {path!r} as a .npy array: {exc}") from exc
    if not isinstance(arr, np.ndarray) or arr.ndim != 3 or arr.shape[0] != arr.shape[1] or arr.shape[0] == 0 \
            or arr.shape[2] != num_parts + 1:
        raise ValueError(f"SCOPS part map {path!r} has shape {getattr(arr, 'shape', None)}, expected (h, h, "
                         f"{num_parts + 1}): a square map of {num_parts} part probabilities after the background's")
    if arr.dtype.kind not in "fiu" or not np.isfinite(arr).all():
        raise ValueError(f"SCOPS part map {path!r} must hold finite numbers, got dtype {arr.dtype}")
    return arr.astype(np.float32)


class CUB200(BoxCropDataset):
    """CUB-200-2011 in the CMR / UNICORN layout (``root`` is UNICORN's ``datasets/cub_200``)::

        root/images/<rel_path>                                  the CUB-200-2011 images (e.g. 001.Black_footed_
                                                                Albatross/Black_Footed_Albatross_0009_34.jpg)
        root/cachedir/cub/data/{train,val,test}_cub_cleaned.mat  CMR's annotations (``annotations`` overrides
                                                                this folder, e.g. CMR's own ``cachedir/cub/data``)

    Each ``.mat`` holds a struct array ``images`` with ``rel_path``, ``bbox`` (struct ``x1, y1, x2, y2``,
    1-indexed, inclusive), ``mask`` (H, W) uint8 in {0, 1} and ``parts`` (3 x 15: x, y 1-indexed and a
    visibility row). CMR's splits: ~6k training images; the CUB test set halved into val and test.

    Items:

    - ``image`` float32 (3, S, S) in [0, 1] and ``mask`` float32 (1, S, S) in {0, 1} (from the ``.mat``),
      ``S = image_size``, cropped and resized as in :class:`~invrender.data._cmr.BoxCropDataset`: the box
      padded by 5% (``padding``, CMR and UNICORN's 0.05), squared, filled outside the image by edge
      replication (UNICORN; ``fill=1.0`` gives CMR's white);
    - ``keypoints`` float32 (15, 3): ``(x, y, visible)`` with x, y in the crop's normalised device coordinates
      (x left to right, y bottom to top, [-1, 1] inside the crop; pixel centres at ``-1 + (2j + 1) / S``, the
      renderer's convention, not CMR's y-down ``2 x / S - 1``), in :data:`KEYPOINT_NAMES` order; invisible
      keypoints are (0, 0, 0);
    - ``path`` str: the image file;
    - with ``parts_root``: ``parts`` float32 (Np, S, S), ``Np = num_parts`` (SCOPS's 4 on CUB,
      :data:`SCOPS_PART_NAMES`): the SCOPS part probabilities UMR trains with (channels 1..Np of the stored map;
      the background channel 0 is dropped), cropped, resized (nearest) and flipped with the item like the mask.

    SCOPS part maps (UMR, Li et al. 2020; layout of NVlabs/UMR ``data/base.py`` and ``data/cub.py``, files written
    by NVlabs/SCOPS ``evaluate_cub.py --crf``; UMR's ``--scops_path`` is ``SCOPS/results/cub/ITER_60000/train/
    dcrf_prob``)::

        parts_root/<image folder>/<image name>_<i>.npy   (h, h, Np + 1) float, one per row i (0-based) of the
                                                         split's .mat; e.g. 001.Black_footed_Albatross/
                                                         Black_Footed_Albatross_0009_34_0.npy (see scops_part_path)

    Each map is SCOPS's dense-CRF output over its own crop of the image: the box padded by 5 %
    (:data:`SCOPS_PADDING`) and squared as here, resized to ``h`` (256). UMR overlays it on its own crop unchanged
    (same padding, same size; only mirrored with the image); here it is placed on that un-jittered square of the
    image and resampled into the item's crop, so any ``image_size``, ``padding`` and jitter keep it aligned with
    the image (outside SCOPS's square it is 0). UMR multiplies each channel by the mask and divides it by its
    maximum before its losses (``experiments/train_s2.py`` ``set_input``); that is left to the model.

    Args:
        root: dataset folder (above).
        split: "train", "val" or "test".
        image_size: S, a positive int (UNICORN: 64).
        jitter: on the train split, jitter the box edges by up to ``jitter_fraction`` (0.05, CMR and UNICORN)
            of its size (UNICORN trains with it; off by default).
        random_flip: on the train split, mirror half of the items (keypoints permuted by
            :data:`KEYPOINT_FLIP`; UNICORN trains with it; off by default).
        annotations: folder of the ``.mat`` files (default ``root/cachedir/cub/data``).
        padding, fill: see above. generator: the jitter's and flips' random numbers (None: torch's).
        parts_root: None, or the folder of SCOPS part maps (above): items gain ``parts``.
        num_parts: parts per SCOPS map (4 on CUB); the stored maps have one more channel, the background.

    A missing root, image folder or ``.mat`` raises ``FileNotFoundError`` naming it; an unknown split or a bad
    ``image_size`` ``ValueError`` naming the argument; a malformed ``.mat`` ``ValueError`` naming the file. With
    ``parts_root``, a missing part map raises ``FileNotFoundError`` naming the file when the dataset is built, and
    a map of the wrong shape ``ValueError`` naming the file when its item is read.
    """

    def __init__(self, root: str, split: str = "train", image_size: int = 64, jitter: bool = False,
                 random_flip: bool = False, annotations: Optional[str] = None, padding: float = 0.05,
                 jitter_fraction: float = 0.05, fill="edge", generator: Optional[torch.Generator] = None,
                 parts_root: Optional[str] = None, num_parts: int = len(SCOPS_PART_NAMES)):
        self.root = require_dir(os.fspath(root), "CUB-200 root")
        if split not in SPLITS:
            raise ValueError(f"CUB200: argument 'split' must be one of {list(SPLITS)}, got {split!r}")
        anno_dir = os.fspath(annotations) if annotations is not None else \
            os.path.join(self.root, "cachedir", "cub", "data")
        super().__init__(os.path.join(self.root, "images"), os.path.join(anno_dir, f"{split}_cub_cleaned.mat"),
                         split, image_size, padding, jitter, jitter_fraction, random_flip, fill, keypoints=True,
                         flip_permutation=KEYPOINT_FLIP, generator=generator)
        for i, rec in enumerate(self.records):
            if rec["parts"].shape[0] != len(KEYPOINT_NAMES):
                raise ValueError(f"{self.annotation_path!r}: images[{i}].parts has {rec['parts'].shape[0]} "
                                 f"keypoints, expected CUB's {len(KEYPOINT_NAMES)}")
        if isinstance(num_parts, bool) or not isinstance(num_parts, numbers.Integral) or num_parts < 1:
            raise ValueError(f"CUB200: argument 'num_parts' must be a positive int, got {num_parts!r}")
        self.num_parts = int(num_parts)
        self.parts_root = None
        if parts_root is not None:
            self.parts_root = require_dir(os.fspath(parts_root), "SCOPS part map folder (argument 'parts_root')")
            missing = [p for p in (self.part_path(i) for i in range(len(self))) if not os.path.isfile(p)]
            if missing:
                raise MissingInputError(f"SCOPS part map not found: expected a file at {missing[0]!r} "
                                        f"({len(missing)} of the {len(self)} {split} images lack theirs)")

    def part_path(self, index: int) -> str:
        """The SCOPS part map file of item ``index`` (:func:`scops_part_path`); needs ``parts_root``."""
        if self.parts_root is None:
            raise ValueError("CUB200.part_path: the dataset was built without 'parts_root'")
        return scops_part_path(self.parts_root, os.path.join(self.images_dir, self.records[index]["rel_path"]), index)

    def extra_maps(self, index: int, square, flip: bool) -> Dict[str, torch.Tensor]:
        if self.parts_root is None:
            return {}
        probs = read_scops_parts(self.part_path(index), self.num_parts)
        source = square_about(jittered_box(self.records[index]["box"], SCOPS_PADDING))
        parts = crop_map(probs[..., 1:], source, square, (self.image_size,) * 2, flip)
        return {"parts": torch.from_numpy(parts)}
