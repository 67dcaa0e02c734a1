"""Part segmentations as model input (UMR, Li et al. 2020): label maps to one-hot part probabilities, and
:class:`PartNoise`, the errors of an unsupervised part segmenter (SCOPS) reproduced on ground-truth maps."""

from __future__ import annotations

import numbers
from typing import Optional, Tuple

import numpy as np
import torch

__all__ = ["PartNoise", "one_hot_parts"]


def one_hot_parts(labels: np.ndarray, num_parts: int) -> torch.Tensor:
    """Hard part labels ``(H, W)`` (0 background, ``1 .. num_parts`` the parts) to one-hot part probabilities
    ``(num_parts, H, W)`` float32 (all zero on the background)."""
    labels = np.asarray(labels)
    k = np.arange(1, num_parts + 1, dtype=labels.dtype if labels.dtype.kind in "iu" else np.int64)
    return torch.from_numpy((labels[None] == k[:, None, None]).astype(np.float32))


def _count(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"PartNoise: argument '{name}' must be a non-negative int (pixels), got {value!r}")
    return int(value)


class PartNoise:
    """Corrupts hard part label maps as a fixed unsupervised segmenter (SCOPS) errs, deterministically per item.

    For item ``index`` a generator seeded by ``(seed, index)`` draws, for every part ``k = 1 .. Np``, an integer
    offset ``r_k`` uniform in ``[-shrink, grow]``, then (with probability ``swap_fraction``) two labels to swap.
    The same ``(seed, index)`` always gives the same corruption, as a segmenter run once over the data would.

    - Growth / shrinkage: every foreground pixel ``p`` goes to the part ``k`` minimising ``d_k(p) - 2 r_k``,
      where ``d_k`` is the signed Euclidean distance (pixels) from ``p`` to the boundary of part ``k`` in the
      clean map: outside it, the distance to its nearest pixel less half a pixel; inside, minus the distance to
      the nearest pixel of another part less half a pixel. Two parts' scores meet half way between their
      boundaries shifted by their offsets, so the boundary between parts ``k`` and ``j`` moves by ``r_k - r_j``
      pixels into ``j`` (exactly, along rows and columns): a part grows into its
      neighbours when its offset exceeds theirs, and shrinks (its pixels going to the neighbours) when it is
      below. Pixels are only relabelled, never added or removed: the foreground (the silhouette) is unchanged and
      fully labelled, so nothing is painted outside the mask. The part with the largest offset never loses
      pixels and the one with the smallest never gains; all offsets equal (``grow = shrink = 0``) is the
      identity. Ties keep the clean label.
    - Label swap: two distinct labels among the parts present in the map (or, when only one is, that one and
      another of the ``Np``) exchange their pixels: the left / right or semantic confusions of a segmenter whose
      part order is not consistent across images. ``swap_fraction = 1`` swaps in every image with a part.

    Args:
        grow: the largest growth of a part, pixels (>= 0) at the resolution the map is corrupted at.
        shrink: the largest shrinkage, pixels (>= 0).
        swap_fraction: probability in [0, 1] that an image has two part labels swapped.
        seed: an int; different seeds give different (fixed) corruptions.

    ``noise(labels, index, num_parts)`` returns the corrupted copy of ``labels`` ((H, W) ints, 0 background,
    ``1 .. num_parts`` the parts); :meth:`draw` gives the offsets and the swap it applies.
    """

    def __init__(self, grow: int = 0, shrink: int = 0, swap_fraction: float = 0.0, seed: int = 0):
        self.grow = _count(grow, "grow")
        self.shrink = _count(shrink, "shrink")
        if isinstance(swap_fraction, bool) or not isinstance(swap_fraction, numbers.Real) \
                or not 0.0 <= float(swap_fraction) <= 1.0:
            raise ValueError(f"PartNoise: argument 'swap_fraction' must be a number in [0, 1], got {swap_fraction!r}")
        self.swap_fraction = float(swap_fraction)
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise ValueError(f"PartNoise: argument 'seed' must be a non-negative int, got {seed!r}")
        self.seed = int(seed)

    def __repr__(self) -> str:
        return (f"PartNoise(grow={self.grow}, shrink={self.shrink}, swap_fraction={self.swap_fraction}, "
                f"seed={self.seed})")

    @property
    def is_identity(self) -> bool:
        return self.grow == 0 and self.shrink == 0 and self.swap_fraction == 0.0

    def draw(self, index: int, num_parts: int, present: Optional[np.ndarray] = None
             ) -> Tuple[np.ndarray, Optional[Tuple[int, int]]]:
        """The corruption of item ``index``: offsets ``(num_parts,)`` int64 (``r_k`` of part ``k + 1``, pixels,
        positive = growth) and the two labels swapped (or None). ``present``: the labels present in the map (the
        swap picks among them); None = all."""
        if isinstance(index, bool) or not isinstance(index, numbers.Integral) or index < 0:
            raise ValueError(f"PartNoise: argument 'index' must be a non-negative int, got {index!r}")
        if isinstance(num_parts, bool) or not isinstance(num_parts, numbers.Integral) or num_parts < 1:
            raise ValueError(f"PartNoise: argument 'num_parts' must be a positive int, got {num_parts!r}")
        rng = np.random.default_rng((self.seed, int(index)))
        # A fixed number of draws whatever the settings' values, so each draw's meaning never shifts.
        offsets = rng.integers(-self.shrink, self.grow + 1, size=num_parts)
        u_swap, u_a, u_b = rng.random(3)
        if not u_swap < self.swap_fraction:
            return offsets, None
        present = np.arange(1, num_parts + 1) if present is None else np.unique(np.asarray(present))
        present = present[(present >= 1) & (present <= num_parts)]
        if len(present) == 0 or num_parts < 2:
            return offsets, None
        if len(present) >= 2:
            a = present[int(u_a * len(present))]
            rest = present[present != a]
        else:
            a = present[0]
            rest = np.array([k for k in range(1, num_parts + 1) if k != a])
        b = rest[int(u_b * len(rest))]
        return offsets, (int(min(a, b)), int(max(a, b)))

    def __call__(self, labels: np.ndarray, index: int, num_parts: int) -> np.ndarray:
        labels = np.asarray(labels)
        if labels.ndim != 2:
            raise ValueError(f"PartNoise: argument 'labels' must be an (H, W) label map, got shape {labels.shape}")
        if labels.size and (labels.min() < 0 or labels.max() > num_parts):
            raise ValueError(f"PartNoise: argument 'labels' has values in [{labels.min()}, {labels.max()}], "
                             f"expected 0 .. num_parts = {num_parts}")
        present = np.unique(labels[labels > 0])
        offsets, swap = self.draw(index, num_parts, present)
        out = labels.copy()
        if len(present) >= 2 and np.any(offsets[present - 1] != offsets[present[0] - 1]):
            out = self._move_boundaries(labels, present, offsets)
        if swap is not None:
            a, b = swap
            out = np.where(out == a, b, np.where(out == b, a, out)).astype(labels.dtype)
        return out

    @staticmethod
    def _move_boundaries(labels: np.ndarray, present: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        from scipy.ndimage import distance_transform_edt

        fg = labels > 0
        scores = []
        for k in present:
            inside = labels == k
            others = fg & ~inside
            outside_dist = distance_transform_edt(~inside)          # to the nearest pixel of part k
            inside_dist = distance_transform_edt(~others)           # to the nearest pixel of another part
            signed = np.where(inside, 0.5 - inside_dist, outside_dist - 0.5)
            scores.append(signed - 2.0 * offsets[k - 1])
        scores = np.stack(scores)                                    # (P, H, W)
        best = scores.min(0)
        clean_index = np.searchsorted(present, np.where(fg, labels, present[0]))
        clean_score = np.take_along_axis(scores, clean_index[None], 0)[0]
        choice = np.where(clean_score <= best, clean_index, scores.argmin(0))  # ties keep the clean label
        return np.where(fg, present[choice], 0).astype(labels.dtype)
