"""Reconstruction models of the seed papers (installed as ``invrender.models``).

Each model composes the renderers of ``invrender``; none re-implements rendering.

- :mod:`invrender.models.ucar`: probabilistic 3D voxel autoencoders of Ucar et al. 2019 (VAE, beta-VAE,
  AAE, mu-VAE; constant, random or latent azimuth; texturizer).
- :mod:`invrender.models.unicorn`: UNICORN of Monnier et al. 2022 (building blocks: deformation field,
  texture generator, pose candidates, progressive conditioning, swap memory bank, alternating steps).
- :mod:`invrender.models.iggan`: IG-GAN of Lunz et al. 2020 (voxel GAN through an off-the-shelf renderer and
  a neural renderer trained on it) and its visual-hull, absorption-only and 2D DCGAN baselines.
- :mod:`invrender.models.umr`: UMR of Li et al. 2020 (CMR's reconstruction network with a camera multiplex and
  texture flow, semantic part consistency with a canonical semantic UV map, EM template learning, texture cycle).
- :mod:`invrender.models.networks`: the networks several models share (ResNet-18, VGG16 features,
  UNICORN's perceptual loss), with torchvision's parameter names.
"""

from . import iggan, networks, ucar, umr, unicorn
from .iggan import IgganConfig, IgganModel
from .ucar import UcarConfig, UcarModel
from .umr import UmrConfig, UmrModel
from .unicorn import UnicornConfig, UnicornModel

__all__ = ["IgganConfig", "IgganModel", "UcarConfig", "UcarModel", "UmrConfig", "UmrModel", "UnicornConfig", "UnicornModel", "iggan", "networks", "ucar", "umr", "unicorn"]
