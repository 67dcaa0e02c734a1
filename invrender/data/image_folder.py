"""Any folder tree of images (CelebA, CompCars, LSUN exports, ...), optionally with masks in a mirrored tree."""

from __future__ import annotations

import os
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from ._crop import check_fraction, crop_resize, jittered_box, square_about
from ._io import as_size, open_image, require_dir, require_file

RESIZE_MODES = ("crop", "pad", "stretch")


class ImageFolder(Dataset):
    """Unlabelled images found recursively under ``root`` (e.g. IG-GAN's 128x128 CelebA / CompCars / LSUN, or
    UNICORN's CompCars and filtered LSUN exported to files), with optional masks.

    On-disk layout: any tree; every file whose extension (case-insensitive) is in ``extensions`` is an
    item, ordered by its path relative to ``root`` (sorted, so the order is the same on every machine).
    Hidden files and folders (names starting with ".") are ignored. With ``mask_root``, every image
    ``root/<dir>/<name>.<ext>`` has its mask at ``mask_root/<dir>/<name>.png`` (the same relative path, a PNG;
    e.g. the output of an off-the-shelf segmenter), a grey or RGB(A) image of the same size, foreground > 127.

    Items: ``image`` float32 (3, H, W) in [0, 1]; with ``mask_root`` ``mask`` float32 (1, H, W) in {0, 1};
    ``path`` str (the image file's full path).

    Preprocessing: conversion to RGB (grey, palette and RGBA images; alpha is dropped), then by ``resize_mode``:

    - ``"crop"`` (default): the largest centred square (the larger side trimmed, odd extra pixel on the
      right / bottom; IG-GAN, and UNICORN's ``resize_mode: crop``);
    - ``"pad"``: the whole image centred on a square of its larger side, the margins repeating the border
      pixels (UNICORN's default ``resize_mode: pad`` with ``padding_mode: edge``; the mask's margins are 0);
    - ``"stretch"``: no square (``center_crop=False`` is this mode, for compatibility);

    then a resize to ``image_size`` (int or (H, W); image bilinear, mask nearest; None keeps the size, which
    the default collate only accepts when all images share it). ``jitter`` (crop and pad modes) first grows
    the image's box by ``jitter_fraction`` of its width / height on each side and moves each edge by up to
    ``jitter_fraction`` of it (UNICORN's LSUN training jitter, 0.1); ``random_flip`` mirrors half of the
    items left-right (image and mask). Both draw from ``generator`` (None: torch's global generator); a
    training-only augmentation is the caller's choice (the folder has no splits).

    An empty tree raises ``FileNotFoundError``; a missing mask file ``FileNotFoundError`` naming it (when
    the dataset is built); an undecodable file or a mask of another size ``ValueError`` naming it.
    """

    def __init__(self, root: str, image_size: Union[int, Tuple[int, int], None] = 64,
                 extensions: Sequence[str] = (".png", ".jpg", ".jpeg"), center_crop: bool = True,
                 mask_root: Optional[str] = None, resize_mode: Optional[str] = None, jitter: bool = False,
                 jitter_fraction: float = 0.1, random_flip: bool = False,
                 generator: Optional[torch.Generator] = None):
        self.root = os.fspath(root)
        require_dir(self.root, "image folder root")
        self.image_size = as_size(image_size)
        if resize_mode is None:
            resize_mode = "crop" if center_crop else "stretch"
        if resize_mode not in RESIZE_MODES:
            raise ValueError(f"ImageFolder: argument 'resize_mode' must be one of {list(RESIZE_MODES)}, "
                             f"got {resize_mode!r}")
        self.resize_mode = resize_mode
        self.center_crop = resize_mode == "crop"
        self.jitter = bool(jitter)
        if self.jitter and resize_mode == "stretch":
            raise ValueError("ImageFolder: argument 'jitter' needs resize_mode 'crop' or 'pad'")
        self.jitter_fraction = check_fraction(jitter_fraction, "jitter_fraction")
        self.random_flip = bool(random_flip)
        self.generator = generator
        exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
        if not exts:
            raise ValueError("extensions must not be empty")
        self.extensions = exts
        files = []
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=True):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for fn in filenames:
                if not fn.startswith(".") and fn.lower().endswith(exts):
                    files.append(os.path.relpath(os.path.join(dirpath, fn), self.root))
        if not files:
            raise FileNotFoundError(f"no images with extensions {list(exts)} found under {self.root!r}")
        files = sorted(files)
        self.files = [os.path.join(self.root, f) for f in files]
        self.mask_root = None if mask_root is None else require_dir(os.fspath(mask_root), "mask folder root")
        self.mask_files = None
        if self.mask_root is not None:
            self.mask_files = [os.path.join(self.mask_root, os.path.splitext(f)[0] + ".png") for f in files]
            for image, mask in zip(self.files, self.mask_files):
                require_file(mask, f"mask of {image!r}")

    def __len__(self) -> int:
        return len(self.files)

    def _square(self, width: int, height: int) -> Optional[Tuple[int, int, int]]:
        if self.resize_mode == "stretch":
            return None
        if not self.jitter:  # an odd margin: one more pixel trimmed (crop) or padded (pad) right / bottom
            side = min(width, height) if self.resize_mode == "crop" else max(width, height)
            sign = 1 if self.resize_mode == "crop" else -1
            return sign * (sign * (width - side) // 2), sign * (sign * (height - side) // 2), side
        box = jittered_box((0.0, 0.0, float(width), float(height)), self.jitter_fraction, self.jitter_fraction,
                           self.generator)
        w, h = box[2] - box[0], box[3] - box[1]
        return square_about(box, min(w, h) if self.resize_mode == "crop" else max(w, h))

    def __getitem__(self, idx: int) -> dict:
        path = self.files[idx]
        im = open_image(path)
        mask = None
        if self.mask_files is not None:
            mask_path = self.mask_files[idx]
            mask_im = open_image(mask_path)
            if mask_im.size != im.size:
                raise ValueError(f"mask {mask_path!r} is {mask_im.width}x{mask_im.height} but image {path!r} is "
                                 f"{im.width}x{im.height}")
            mask = np.where(np.asarray(mask_im.convert("L"), dtype=np.uint8) > 127, 255, 0).astype(np.uint8)
        flip = self.random_flip and bool(torch.rand((), generator=self.generator) < 0.5)
        image, mask = crop_resize(im, mask, self._square(im.width, im.height), self.image_size, "edge", flip)
        item = {"image": image, "path": path}
        if mask is not None:
            item["mask"] = mask
        return item
