"""Reconstruction models of the seed papers (installed as ``invrender.models``).

Each model composes the renderers of ``invrender``; none re-implements rendering.

- :mod:`invrender.models.ucar`: probabilistic 3D voxel autoencoders of Ucar et al. 2019 (VAE, beta-VAE,
  AAE, mu-VAE; constant, random or latent azimuth; texturizer).
- :mod:`invrender.models.unicorn`: UNICORN of Monnier et al. 2022 (building blocks: deformation field,
  texture generator, pose candidates, progressive conditioning, swap memory bank, alternating steps).
- :mod:`invrender.models.networks`: the networks several models share (ResNet-18, VGG16 features,
  UNICORN's perceptual loss), with torchvision's parameter names.
"""

from . import networks, ucar, unicorn
from .ucar import UcarConfig, UcarModel
from .unicorn import UnicornConfig, UnicornModel

__all__ = ["UcarConfig", "UcarModel", "UnicornConfig", "UnicornModel", "networks", "ucar", "unicorn"]
