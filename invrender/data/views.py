"""Single grayscale views for the voxel models (Ucar 2019: 28x28 images, object bright on black)."""

from typing import Dict

import torch
from torch.utils.data import Dataset

__all__ = ["GrayscaleViews"]

# ITU-R BT.601 luma weights.
_LUMA = torch.tensor([0.299, 0.587, 0.114])


class GrayscaleViews(Dataset):
    """Wraps a dataset whose items hold ``image (3, H, W)`` or ``(1, H, W)`` and optionally
    ``mask (1, H, W)`` (e.g. :class:`ShapeNetNMR` on the synthetic data, :class:`MNIST`,
    :class:`ImageFolder`) into single-channel views for the voxel models.

    Item: ``image (1, S, S)`` float in [0, 1], the luminance times the mask (the object bright on a
    black background, the visual-hull convention of :func:`invrender.project_voxels`; without a mask,
    the luminance itself, as MNIST's white digits on black are), resized to ``image_size`` (area
    averaging); ``mask (1, S, S)`` when the base has one; ``index`` int64 (the item's position, which
    the per-example azimuth latents of Ucar et al. use); the base item's ``view`` / ``object`` /
    ``category`` / ``label`` / ``voxels`` when present.

    ``floor`` lifts the luminance to ``floor + (1 - floor) * luminance`` before the mask is applied:
    the visual hull ``1 - exp(-sum V)`` of a dim pixel is a faint, thin cloud of voxels (a pixel of 0.37
    needs a depth sum of 0.46), so voxel models learn solid shapes from bright objects (MNIST's digits
    are near 1). ``floor = 1`` gives the silhouette itself. It needs items with a mask.
    """

    def __init__(self, base: Dataset, image_size: int = 28, floor: float = 0.0):
        if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 1:
            raise ValueError(f"GrayscaleViews: argument 'image_size' must be a positive int, got {image_size!r}")
        if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0.0 <= floor <= 1.0:
            raise ValueError(f"GrayscaleViews: argument 'floor' must be a number in [0, 1], got {floor!r}")
        self.base = base
        self.image_size = image_size
        self.floor = float(floor)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> Dict[str, object]:
        item = self.base[index]
        if "image" not in item:
            raise KeyError("GrayscaleViews: the base dataset's items need 'image'")
        image = item["image"].float()
        if image.dim() != 3 or image.shape[0] not in (1, 3):
            raise ValueError(f"GrayscaleViews: item 'image' must be (1, H, W) or (3, H, W), got {tuple(image.shape)}")
        gray = (image * _LUMA.view(3, 1, 1)).sum(0, keepdim=True) if image.shape[0] == 3 else image
        mask = item["mask"].float() if "mask" in item else None
        if self.floor:
            if mask is None:
                raise ValueError("GrayscaleViews: floor > 0 needs items with a 'mask' (it lifts the object's pixels)")
            gray = self.floor + (1.0 - self.floor) * gray
        both = torch.cat([gray * mask, mask]) if mask is not None else gray
        if tuple(both.shape[-2:]) != (self.image_size, self.image_size):
            both = torch.nn.functional.interpolate(both[None], size=(self.image_size, self.image_size), mode="area")[0]
        out = {"image": both[:1].clamp(0, 1), "index": torch.tensor(index)}
        if mask is not None:
            out["mask"] = both[1:].clamp(0, 1)
        for key in ("view", "object", "category", "label", "voxels"):
            if key in item:
                out[key] = item[key]
        return out
