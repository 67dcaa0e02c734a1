"""invrender: differentiable rendering kernels and single-image 3D reconstruction for PyTorch.

The ops (``invrender.rotation_matrix``, ``rotate_voxels``, ``project_voxels``, ...) are C++/CUDA
kernels registered under ``torch.ops.invrender`` with autograd and fake (meta) kernels, so they work
with ``torch.compile``. ``invrender.reference`` holds pure-PyTorch versions of the same functions.
Conventions (coordinate frames, grid layout, image layout) are in the README.
"""

import torch  # noqa: F401  (loads libtorch before the extension)

from . import _C  # noqa: F401  (registers torch.ops.invrender.*)
from . import cameras, data, io, mesh, metrics, reference, renderers, synthetic
from ._build import build_info
from .cameras import OrthographicCamera, PerspectiveCamera, WeakPerspectiveCamera
from .ops import (CompositeResult, Fragments, NearestNeighbors, RaymarchResult, SoftrasResult, chamfer_distance,
                  composite_layers, interpolate, layer_alpha, nearest_neighbors, project_voxels, rasterize, raymarch,
                  rotate_voxels, rotation_matrix, softras_blend)
from .renderers import LayeredRenderer, face_pixel_centroids

__version__ = "0.1.0"

__all__ = [
    "CompositeResult",
    "Fragments",
    "LayeredRenderer",
    "NearestNeighbors",
    "OrthographicCamera",
    "PerspectiveCamera",
    "RaymarchResult",
    "SoftrasResult",
    "WeakPerspectiveCamera",
    "build_info",
    "cameras",
    "chamfer_distance",
    "composite_layers",
    "data",
    "face_pixel_centroids",
    "interpolate",
    "io",
    "layer_alpha",
    "mesh",
    "metrics",
    "nearest_neighbors",
    "project_voxels",
    "rasterize",
    "raymarch",
    "reference",
    "renderers",
    "rotate_voxels",
    "rotation_matrix",
    "softras_blend",
    "synthetic",
]
