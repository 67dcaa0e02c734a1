"""CUB-200-2011 birds in CMR's annotation format (Kanazawa et al. 2018), as UNICORN and UMR train on them."""

from __future__ import annotations

import os
from typing import Optional

import torch

from ._cmr import SPLITS, BoxCropDataset
from ._io import require_dir

#: CMR's 15 CUB keypoints, in the order of the ``parts`` columns.
KEYPOINT_NAMES = ("Back", "Beak", "Belly", "Breast", "Crown", "FHead", "LEye", "LLeg", "LWing", "Nape", "REye",
                  "RLeg", "RWing", "Tail", "Throat")
#: The keypoint each one becomes in a left-right mirrored image (CMR ``kp_perm``, 0-indexed).
KEYPOINT_FLIP = (0, 1, 2, 3, 4, 5, 10, 11, 12, 9, 6, 7, 8, 13, 14)


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
    - ``path`` str: the image file.

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

    A missing root, image folder or ``.mat`` raises ``FileNotFoundError`` naming it; an unknown split or a bad
    ``image_size`` ``ValueError`` naming the argument; a malformed ``.mat`` ``ValueError`` naming the file.
    """

    def __init__(self, root: str, split: str = "train", image_size: int = 64, jitter: bool = False,
                 random_flip: bool = False, annotations: Optional[str] = None, padding: float = 0.05,
                 jitter_fraction: float = 0.05, fill="edge", generator: Optional[torch.Generator] = None):
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
