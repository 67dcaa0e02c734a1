"""Any folder tree of images (CelebA, CompCars, LSUN exports, ...)."""

from __future__ import annotations

import os
from typing import Sequence, Tuple, Union

from PIL import Image
from torch.utils.data import Dataset

from ._io import as_size, open_image, require_dir, resize, rgb_tensor


class ImageFolder(Dataset):
    """Unlabelled images found recursively under ``root`` (e.g. IG-GAN's 128x128 CelebA / CompCars / LSUN).

    On-disk layout: any tree; every file whose extension (case-insensitive) is in ``extensions`` is an
    item, ordered by its path relative to ``root`` (sorted, so the order is the same on every machine).
    Hidden files and folders (names starting with ".") are ignored.

    Items: ``image`` float32 (3, S, S) in [0, 1]; ``path`` str (the file's full path).

    Preprocessing: conversion to RGB (grey, palette and RGBA images; alpha is dropped), then with
    ``center_crop`` the largest centred square (the larger side trimmed, odd extra pixel on the
    right / bottom), then a bilinear resize to ``image_size`` (int or (H, W); None keeps the size,
    which the default collate only accepts when all images share it).

    An empty tree raises ``FileNotFoundError``; an undecodable file raises ``ValueError`` naming it.
    """

    def __init__(self, root: str, image_size: Union[int, Tuple[int, int], None] = 64,
                 extensions: Sequence[str] = (".png", ".jpg", ".jpeg"), center_crop: bool = True):
        self.root = os.fspath(root)
        require_dir(self.root, "image folder root")
        self.image_size = as_size(image_size)
        self.center_crop = bool(center_crop)
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
        self.files = [os.path.join(self.root, f) for f in sorted(files)]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, idx: int) -> dict:
        path = self.files[idx]
        im = open_image(path)
        if im.mode != "RGB":
            im = im.convert("RGB")
        if self.center_crop and im.width != im.height:
            s = min(im.width, im.height)
            left, top = (im.width - s) // 2, (im.height - s) // 2
            im = im.crop((left, top, left + s, top + s))
        im = resize(im, self.image_size, Image.BILINEAR)
        return {"image": rgb_tensor(im), "path": path}
