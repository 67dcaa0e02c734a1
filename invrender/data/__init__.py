"""Dataset loaders for the data the seed papers train and evaluate on.

Every loader is a ``torch.utils.data.Dataset`` returning dicts of tensors and strings (the default
``DataLoader`` collate works); they read files already on disk and never download. See each class'
docstring for the on-disk layout, the item format and the preprocessing.

- :class:`ShapeNetNMR`: ShapeNet-NMR renders in the DVR / UNICORN layout (images, masks, cameras,
  point clouds, voxels; the synthetic data's part maps and part centres for UMR).
- :class:`KatoShapeNet`: Kato et al.'s / SoftRas' per-class ``.npz`` renders and voxels.
- :class:`MNIST`: MNIST / Fashion-MNIST IDX files (Ucar 2019).
- :class:`ImageFolder`: any folder tree of images (IG-GAN's CelebA, UNICORN's CompCars and LSUN exports),
  optionally with masks in a mirrored tree.
- :class:`CUB200`: CUB-200-2011 birds in CMR's ``.mat`` annotations (UNICORN, UMR, CMR), square crops
  around the box with masks and keypoints (and SCOPS part maps in UMR's layout for UMR).
- :class:`Pascal3DCar`: Pascal3D+ cars in UCMR's ``.mat`` annotations (UNICORN), square crops with masks.
- :class:`GrayscaleViews`: single grayscale views (object on black) for the voxel models.
- :class:`ShadedViews`: IG-GAN's grey shaded renders of the synthetic categories in the paper's regimes.
- :class:`PartNoise`: an unsupervised part segmenter's errors (parts grown / shrunk, labels swapped) reproduced on
  ground-truth part maps, deterministically per item; :func:`one_hot_parts` turns label maps into part
  probabilities.
"""

from ._cmr import read_cmr_annotations
from .cub import CUB200, read_scops_parts
from .image_folder import ImageFolder
from .kato import KatoShapeNet
from .mnist import MNIST, read_idx
from .parts import PartNoise, one_hot_parts
from .pascal3d import Pascal3DCar
from .shapenet import ShapeNetNMR, project_to_ndc, read_metadata, read_split_list
from .shaded import ShadedViews
from .views import GrayscaleViews

__all__ = ["CUB200", "GrayscaleViews", "ImageFolder", "KatoShapeNet", "MNIST", "PartNoise", "Pascal3DCar",
           "ShadedViews", "ShapeNetNMR", "one_hot_parts", "project_to_ndc", "read_cmr_annotations", "read_idx",
           "read_metadata", "read_scops_parts", "read_split_list"]
