"""Differentiable ops backed by the compiled kernels (``torch.ops.invrender``).

Each public function validates and broadcasts its arguments, then calls a registered op whose
autograd formula and fake (meta) kernel are registered here, so the ops trace under
``torch.compile(fullgraph=True)``.
"""

from .chamfer import NearestNeighbors, chamfer_distance, nearest_neighbors
from .composite import CompositeResult, SoftrasResult, composite_layers, layer_alpha, softras_blend
from .raster import Fragments, interpolate, rasterize
from .raymarch import RaymarchResult, raymarch
from .voxel import project_voxels, rotate_voxels, rotation_matrix

__all__ = [
    "NearestNeighbors", "chamfer_distance", "nearest_neighbors", "CompositeResult", "Fragments", "RaymarchResult", "SoftrasResult", "composite_layers", "interpolate",
    "layer_alpha", "project_voxels", "rasterize", "raymarch", "rotate_voxels", "rotation_matrix", "softras_blend",
]
