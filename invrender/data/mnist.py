"""MNIST and Fashion-MNIST from the original IDX files."""

from __future__ import annotations

import gzip
import os
import struct
from typing import Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ._io import as_size, require_dir

IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension

_SPLIT_PREFIX = {"train": "train", "test": "t10k"}
_KIND_FOLDER = {"mnist": "MNIST", "fashion": "FashionMNIST"}


def _read_bytes(path: str) -> bytes:
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        with open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise ValueError(f"cannot read IDX file {path!r}: {exc}") from exc


def read_idx(path: str, expected_magic: int) -> np.ndarray:
    """Read an IDX file (optionally gzipped) of unsigned bytes with header validation.

    The header is a big-endian int32 magic (0x0000 08 ndim: 2051 for images (ndim 3), 2049 for
    labels (ndim 1)) followed by ``ndim`` big-endian int32 sizes, then the data. The magic must equal
    ``expected_magic`` and the file must hold exactly ``prod(sizes)`` bytes of data.
    """
    data = _read_bytes(path)
    if len(data) < 4:
        raise ValueError(f"IDX file {path!r} is truncated: {len(data)} bytes, no header")
    (magic,) = struct.unpack(">i", data[:4])
    if magic != expected_magic:
        raise ValueError(f"IDX file {path!r} has magic number {magic}, expected {expected_magic} "
                         f"({'images' if expected_magic == IDX_IMAGES_MAGIC else 'labels'}, unsigned bytes)")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"IDX file {path!r} is truncated: {len(data)} bytes, header needs {header}")
    dims = struct.unpack(">" + "i" * ndim, data[4:header])
    if any(d < 0 for d in dims):
        raise ValueError(f"IDX file {path!r} has negative sizes {dims}")
    n = int(np.prod(dims, dtype=np.int64))
    if len(data) - header != n:
        raise ValueError(f"IDX file {path!r} has {len(data) - header} data bytes but its header sizes {dims} "
                         f"need {n} ({'truncated' if len(data) - header < n else 'trailing bytes'})")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


class MNIST(Dataset):
    """MNIST / Fashion-MNIST digits (or clothes) from the original IDX files.

    On-disk layout: the four files, optionally gzipped (``name`` or ``name.gz``), directly in ``root``
    or in torchvision's ``root/MNIST/raw`` / ``root/FashionMNIST/raw``::

        train-images-idx3-ubyte   magic 2051, sizes (60000, 28, 28), uint8
        train-labels-idx1-ubyte   magic 2049, size 60000, uint8 in 0..9
        t10k-images-idx3-ubyte    magic 2051, sizes (10000, 28, 28)
        t10k-labels-idx1-ubyte    magic 2049, size 10000

    Items: ``image`` float32 (1, S, S) in [0, 1] (pixel / 255, white digit on black), ``label`` int64
    scalar. Preprocessing: none at the default ``image_size=28`` (Ucar 2019's 28x28 inputs);
    another size resizes bilinearly (antialiased when shrinking).

    Args:
        root: folder with the files.
        split: "train" or "test".
        kind: "mnist" or "fashion" (only selects torchvision's subfolder name; the format is the same).
        image_size: output size (int or (H, W)).

    A missing file raises ``FileNotFoundError``; a wrong magic number, header sizes that do not match
    the file length, a truncated gzip stream or an image / label count mismatch raise ``ValueError``.
    """

    def __init__(self, root: str, split: str = "train", kind: str = "mnist",
                 image_size: Union[int, Tuple[int, int], None] = 28):
        self.root = os.fspath(root)
        require_dir(self.root, "MNIST root")
        if split not in _SPLIT_PREFIX:
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if kind not in _KIND_FOLDER:
            raise ValueError(f"kind must be 'mnist' or 'fashion', got {kind!r}")
        self.split, self.kind = split, kind
        self.image_size = as_size(image_size)
        prefix = _SPLIT_PREFIX[split]
        self.images_path = self._find(f"{prefix}-images-idx3-ubyte")
        self.labels_path = self._find(f"{prefix}-labels-idx1-ubyte")
        self.images = read_idx(self.images_path, IDX_IMAGES_MAGIC)
        self.labels = read_idx(self.labels_path, IDX_LABELS_MAGIC)
        if self.images.shape[0] != self.labels.shape[0]:
            raise ValueError(f"{self.images_path!r} has {self.images.shape[0]} images but {self.labels_path!r} "
                             f"has {self.labels.shape[0]} labels")

    def _find(self, name: str) -> str:
        folders = [self.root, os.path.join(self.root, _KIND_FOLDER[self.kind], "raw"),
                   os.path.join(self.root, _KIND_FOLDER[self.kind])]
        tried = []
        for d in folders:
            for fn in (name, name + ".gz"):
                p = os.path.join(d, fn)
                tried.append(p)
                if os.path.isfile(p):
                    return p
        raise FileNotFoundError(f"{self.kind} {self.split} file {name}[.gz] not found; looked for: {tried}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, idx: int) -> dict:
        if idx < 0:
            idx += len(self)
        if not 0 <= idx < len(self):
            raise IndexError(f"index {idx} out of range for a dataset of {len(self)} items")
        img = torch.from_numpy(self.images[idx].copy()).float().div_(255.0)[None]
        if self.image_size is not None and tuple(img.shape[-2:]) != self.image_size:
            img = F.interpolate(img[None], size=self.image_size, mode="bilinear", align_corners=False,
                                antialias=True)[0].clamp_(0.0, 1.0)
        return {"image": img, "label": torch.tensor(int(self.labels[idx]), dtype=torch.int64)}
