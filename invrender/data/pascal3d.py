"""Pascal3D+ cars in the CMR-format annotations of UCMR (Goel et al. 2020), as UNICORN trains on them."""

from __future__ import annotations

import os
from typing import Optional

import torch

from ._cmr import SPLITS, BoxCropDataset
from ._io import require_dir


class Pascal3DCar(BoxCropDataset):
    """Pascal3D+ cars in UNICORN's layout (``root`` is UNICORN's ``datasets/pascal_3d``, i.e.
    ``PASCAL3D+_release1.1`` plus the annotations)::

        root/Images/<rel_path>                         PASCAL3D+ images (e.g. car_imagenet/n02814533_10002.JPEG)
        root/ucmr_anno/data/car_{train,test}.mat        UCMR's annotations (``annotations`` overrides this folder,
                                                       e.g. UCMR's ``cachedir/p3d/data``); car_val.mat is read
                                                       for split "val" when present (UNICORN has none and shows
                                                       5 training images instead)

    Each ``.mat`` holds a struct array ``images`` with ``rel_path``, ``bbox`` (struct ``x1, y1, x2, y2``,
    1-indexed, inclusive), ``mask`` (H, W) uint8 in {0, 1} and ``cad_index`` (1..10, the instance's CAD model);
    other fields (``parts``, poses) are not read. UNICORN's paper: 5000 training and 220 test images.

    Items: ``image`` float32 (3, S, S) in [0, 1], ``mask`` float32 (1, S, S) in {0, 1} (from the ``.mat``),
    ``cad_index`` int64 (when the struct has it) and ``path`` str. Cropping as in
    :class:`~invrender.data._cmr.BoxCropDataset` with UNICORN's car settings: the box padded by 10% on each
    side (``padding``; UNICORN ``p3d_car.py``; CMR 5%) and, on the train split with ``jitter``, edges jittered
    by up to 10% (``jitter_fraction``); ``random_flip`` mirrors half of the training items; outside the image
    the crop repeats the border (``fill="edge"``, UNICORN) or is a grey level (``fill=1.0``: CMR's white).

    Errors as :class:`~invrender.data.CUB200`: missing root / image folder / ``.mat`` ``FileNotFoundError``,
    bad split / ``image_size`` ``ValueError`` naming the argument, malformed ``.mat`` ``ValueError`` naming it.
    """

    def __init__(self, root: str, split: str = "train", image_size: int = 64, jitter: bool = False,
                 random_flip: bool = False, annotations: Optional[str] = None, padding: float = 0.1,
                 jitter_fraction: float = 0.1, fill="edge", generator: Optional[torch.Generator] = None):
        self.root = require_dir(os.fspath(root), "Pascal3D+ root")
        if split not in SPLITS:
            raise ValueError(f"Pascal3DCar: argument 'split' must be one of {list(SPLITS)}, got {split!r}")
        anno_dir = os.fspath(annotations) if annotations is not None else \
            os.path.join(self.root, "ucmr_anno", "data")
        super().__init__(os.path.join(self.root, "Images"), os.path.join(anno_dir, f"car_{split}.mat"), split,
                         image_size, padding, jitter, jitter_fraction, random_flip, fill, keypoints=False,
                         generator=generator)
