"""Shared helpers of the dataset loaders: image decoding, resizing and checked file access."""

from __future__ import annotations

import os
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

from ..errors import MissingInputError

SizeLike = Union[int, Sequence[int], None]


def as_size(size: SizeLike, name: str = "image_size") -> Optional[Tuple[int, int]]:
    """``None`` -> ``None``; ``S`` -> ``(S, S)``; ``(H, W)`` -> ``(H, W)`` (positive ints)."""
    if size is None:
        return None
    if isinstance(size, int):
        size = (size, size)
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"{name} must be a positive int or a (height, width) pair, got {size!r}")
    return size


def require_file(path: str, what: str) -> str:
    """``path`` if it is a file, else :class:`~invrender.errors.MissingInputError` (a ``FileNotFoundError``)."""
    if not os.path.isfile(path):
        raise MissingInputError(f"{what} not found: expected a file at {path!r}")
    return path


def require_dir(path: str, what: str) -> str:
    """``path`` if it is a directory, else :class:`~invrender.errors.MissingInputError` (a ``FileNotFoundError``)."""
    if not os.path.isdir(path):
        raise MissingInputError(f"{what} not found: expected a directory at {path!r}")
    return path


def open_image(path: str) -> Image.Image:
    """Open and fully decode an image; decoding errors become ``ValueError`` naming the file."""
    require_file(path, "image")
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except Exception as exc:  # PIL raises UnidentifiedImageError, OSError, SyntaxError ...
        raise ValueError(f"cannot decode image {path!r}: {exc}") from exc


def resize(im: Image.Image, size: Optional[Tuple[int, int]], resample) -> Image.Image:
    """Resize a PIL image to ``size = (H, W)`` (no-op when ``None`` or already that size)."""
    if size is None or (im.height, im.width) == tuple(size):
        return im
    return im.resize((size[1], size[0]), resample=resample)


def rgb_tensor(im: Image.Image) -> torch.Tensor:
    """PIL image (any mode) -> (3, H, W) float32 in [0, 1]; palette / grey / RGBA converted to RGB.

    The alpha channel of an RGBA image is dropped (no compositing onto a background).
    """
    if im.mode != "RGB":
        im = im.convert("RGB")
    arr = np.asarray(im, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def binary_mask_tensor(arr: np.ndarray) -> torch.Tensor:
    """uint8 (H, W) array -> (1, H, W) float32 in {0, 1} (value > 127 is foreground)."""
    return torch.from_numpy((arr > 127).astype(np.float32))[None]


def has_alpha(im: Image.Image) -> bool:
    return im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)


def alpha_array(im: Image.Image) -> np.ndarray:
    return np.asarray(im.convert("RGBA"), dtype=np.uint8)[..., 3]


def load_npz(path: str, what: str):
    """``np.load`` of an ``.npz`` file with errors naming the file (``allow_pickle=False``)."""
    require_file(path, what)
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:
        raise ValueError(f"cannot read {what} {path!r} as a NumPy .npz archive: {exc}") from exc


def npz_array(npz, key: str, path: str, what: str) -> np.ndarray:
    if key not in npz.files:
        raise ValueError(f"{what} {path!r} has no array {key!r} (arrays present: {sorted(npz.files)})")
    try:
        return npz[key]
    except Exception as exc:
        raise ValueError(f"cannot read array {key!r} of {what} {path!r}: {exc}") from exc
