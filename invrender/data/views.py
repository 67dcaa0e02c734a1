"""Single grayscale views for the voxel models (Ucar 2019: 28x28 images, object bright on black)."""

from typing import Dict

import torch
from torch.utils.data import Dataset

__all__ = ["GrayscaleViews"]

# ITU-R BT.601 luma weights.
_LUMA = torch.tensor([0.299, 0.587, 0.114])


class GrayscaleViews(Dataset):
    """Wraps a dataset whose items hold ``image (3, H, W)`` and ``mask (1, H, W)`` (e.g.
    :class:`ShapeNetNMR` on the synthetic data) into single-channel views for the voxel models.

    Item: ``image (1, S, S)`` float in [0, 1], the luminance times the mask (the object bright on a
    black background, the visual-hull convention of :func:`invrender.project_voxels`), resized to
    ``image_size`` (area averaging); ``mask (1, S, S)``; ``index`` int64 (the item's position, which
    the per-example azimuth latents of Ucar et al. use); the base item's ``view`` / ``object`` /
    ``category`` when present.
    """

    def __init__(self, base: Dataset, image_size: int = 28):
        if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 1:
            raise ValueError(f"GrayscaleViews: argument 'image_size' must be a positive int, got {image_size!r}")
        self.base = base
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> Dict[str, object]:
        item = self.base[index]
        if "image" not in item or "mask" not in item:
            raise KeyError("GrayscaleViews: the base dataset's items need 'image' and 'mask'")
        image, mask = item["image"].float(), item["mask"].float()
        gray = (image * _LUMA.view(3, 1, 1)).sum(0, keepdim=True) if image.shape[0] == 3 else image[:1]
        both = torch.cat([gray * mask, mask])[None]
        both = torch.nn.functional.interpolate(both, size=(self.image_size, self.image_size), mode="area")[0]
        out = {"image": both[:1].clamp(0, 1), "mask": both[1:].clamp(0, 1), "index": torch.tensor(index)}
        for key in ("view", "object", "category"):
            if key in item:
                out[key] = item[key]
        return out
