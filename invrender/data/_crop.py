"""Square crops around boxes, filled outside the image and resized: the preprocessing CMR and UNICORN apply to
real images (CUB-200, Pascal3D+, CompCars, LSUN), written once for every loader.

Coordinates are continuous pixel coordinates, 0-indexed: pixel (row i, column j) covers
``[j, j + 1) x [i, i + 1)`` and has its centre at ``(j + 0.5, i + 0.5)``. A box is given by its edges
``(left, top, right, bottom)`` in these coordinates; a square crop by ``(x0, y0, side)``, integers, covering
columns ``x0 .. x0 + side - 1`` and rows ``y0 .. y0 + side - 1`` (which may leave the image).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

from ._io import binary_mask_tensor, resize, rgb_tensor

Fill = Union[str, float]


def check_fill(fill: Fill, name: str = "fill") -> Fill:
    """``"edge"`` (replicate the border pixels, UNICORN's ``padding_mode='edge'``) or a grey level in [0, 1]
    (CMR fills with 1, white)."""
    if fill == "edge":
        return fill
    if isinstance(fill, bool) or not isinstance(fill, (int, float)) or not 0.0 <= float(fill) <= 1.0:
        raise ValueError(f"argument '{name}' must be 'edge' or a grey level in [0, 1], got {fill!r}")
    return float(fill)


def check_fraction(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0 \
            or not math.isfinite(float(value)):
        raise ValueError(f"argument '{name}' must be a number in [0, 1), got {value!r}")
    return float(value)


def jittered_box(box: Sequence[float], padding: float = 0.0, jitter: float = 0.0,
                 generator: Optional[torch.Generator] = None) -> Tuple[float, float, float, float]:
    """Grows ``box = (left, top, right, bottom)`` by ``padding`` times its width (left, right) or height (top,
    bottom) on each side, then moves each of the four edges independently by ``U(-1, 1) * jitter`` times the
    width or height (CMR's ``peturb_bbox``; UNICORN's scale-and-translation jitter). ``jitter = 0`` draws
    nothing from ``generator`` (torch's global generator when None)."""
    left, top, right, bottom = (float(v) for v in box)
    w, h = right - left, bottom - top
    left, right = left - padding * w, right + padding * w
    top, bottom = top - padding * h, bottom + padding * h
    if jitter > 0:
        u = (1.0 - 2.0 * torch.rand(4, generator=generator, dtype=torch.float64)).tolist()
        left, top = left + u[0] * jitter * w, top + u[1] * jitter * h
        right, bottom = right + u[2] * jitter * w, bottom + u[3] * jitter * h
    return left, top, right, bottom


def square_about(box: Sequence[float], side: Optional[float] = None) -> Tuple[int, int, int]:
    """The integer square ``(x0, y0, side)`` centred on ``box = (left, top, right, bottom)`` whose side is
    ``side`` (default: the box's larger dimension, CMR's ``square_bbox``) rounded to an int >= 1; its corner
    is the centre minus half the side, rounded half down (a centred crop of an odd margin trims the extra pixel
    on the right / bottom)."""
    left, top, right, bottom = (float(v) for v in box)
    if side is None:
        side = max(right - left, bottom - top)
    side = max(1, int(math.floor(side + 0.5)))
    x0 = int(math.ceil((left + right) / 2 - side / 2 - 0.5))
    y0 = int(math.ceil((top + bottom) / 2 - side / 2 - 0.5))
    return x0, y0, side


def crop_square(array: np.ndarray, x0: int, y0: int, side: int, fill: Fill) -> np.ndarray:
    """``array[y0:y0 + side, x0:x0 + side]`` ((H, W) or (H, W, C), uint8) with the part outside the image filled:
    ``"edge"`` repeats the nearest border pixel, a number ``v`` in [0, 1] is the value ``round(255 v)``."""
    h, w = array.shape[:2]
    rows = np.arange(y0, y0 + side)
    cols = np.arange(x0, x0 + side)
    out = array[np.clip(rows, 0, h - 1)[:, None], np.clip(cols, 0, w - 1)[None, :]]
    if fill != "edge":
        value = int(round(255 * float(fill)))
        out[(rows < 0) | (rows >= h)] = value
        out[:, (cols < 0) | (cols >= w)] = value
    return out


def crop_resize(image: Image.Image, mask: Optional[np.ndarray], square: Optional[Tuple[int, int, int]],
                size: Optional[Tuple[int, int]], fill: Fill = "edge", flip: bool = False
                ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Crops the square ``(x0, y0, side)`` out of ``image`` (any PIL mode; converted to RGB) and ``mask`` ((H, W)
    uint8, foreground > 127, or None), resizes to ``size = (H, W)`` (image: bilinear; mask: nearest; None keeps
    the crop's size), and mirrors both left-right when ``flip``. Outside the image the image is filled with
    ``fill`` and the mask with 0. ``square = None`` takes the whole image (no crop).

    Returns ``image`` float32 (3, H, W) in [0, 1] and ``mask`` float32 (1, H, W) in {0, 1} (None without a
    mask)."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    if square is not None:
        image = Image.fromarray(crop_square(np.asarray(image, dtype=np.uint8), *square, fill))
    image = resize(image, size, Image.BILINEAR)
    out_mask = None
    if mask is not None:
        mask = np.ascontiguousarray(mask, dtype=np.uint8)
        m = Image.fromarray(crop_square(mask, *square, 0.0) if square is not None else mask)
        out_mask = binary_mask_tensor(np.asarray(resize(m, size, Image.NEAREST), dtype=np.uint8))
    out_image = rgb_tensor(image)
    if flip:
        out_image = out_image.flip(-1)
        out_mask = out_mask.flip(-1) if out_mask is not None else None
    return out_image, out_mask


def points_to_ndc(points: np.ndarray, square: Tuple[int, int, int], flip: bool = False) -> np.ndarray:
    """Pixel positions ``(K, 2)`` (x, y; 0-indexed, a pixel's centre at its index) to the normalised device
    coordinates of the crop ``(x0, y0, side)`` (at any resolution): x in [-1, 1] left to right, y in [-1, 1]
    bottom to top, the crop's pixel (i, j) centred at ``(-1 + (2j + 1) / side, 1 - (2i + 1) / side)``: the
    renderer's convention (design.md). ``flip`` mirrors x (the caller permutes left / right names)."""
    x0, y0, side = square
    points = np.asarray(points, dtype=np.float64)
    x = -1.0 + (2.0 * (points[:, 0] - x0) + 1.0) / side
    y = 1.0 - (2.0 * (points[:, 1] - y0) + 1.0) / side
    return np.stack([-x if flip else x, y], 1)


def crop_map(values: np.ndarray, source: Tuple[int, int, int], square: Tuple[int, int, int],
             size: Tuple[int, int], flip: bool = False) -> np.ndarray:
    """Resamples a map ``values (h, w, C)`` that covers the square ``source = (x0, y0, side)`` of an image (its pixel
    (i, j) spans ``source``'s columns ``x0 + [j, j + 1) side / w`` and rows ``y0 + [i, i + 1) side / h``) onto the
    crop ``square`` at ``size = (H, W)``, nearest-neighbour: each output pixel takes the map pixel under its centre,
    zero where that falls outside ``source``; mirrored left-right when ``flip``. With ``source == square`` this is
    the nearest resize :func:`crop_resize` applies to masks. Returns ``(C, H, W)`` in ``values``' dtype."""
    h, w = values.shape[:2]
    sx0, sy0, sside = source
    x0, y0, side = square
    H, W = size
    x = x0 + (np.arange(W) + 0.5) * side / W  # output pixel centres in image pixels
    y = y0 + (np.arange(H) + 0.5) * side / H
    col = np.floor((x - sx0) * w / sside).astype(np.int64)
    row = np.floor((y - sy0) * h / sside).astype(np.int64)
    inside = ((row >= 0) & (row < h))[:, None] & ((col >= 0) & (col < w))[None, :]
    out = values[np.clip(row, 0, h - 1)[:, None], np.clip(col, 0, w - 1)[None, :]]  # (H, W, C)
    out = np.where(inside[..., None], out, np.zeros((), values.dtype))
    if flip:
        out = out[:, ::-1]
    return np.ascontiguousarray(out.transpose(2, 0, 1))
