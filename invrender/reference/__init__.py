"""Pure-PyTorch implementations of the invrender ops, with the same signatures.

Clear before fast: they are the oracle of the tests, the baseline of the benchmarks, and the place
to read what an op computes.
"""

from .chamfer import chamfer_distance, nearest_neighbors
from .composite import composite_layers, layer_alpha, softras_blend
from .raster import interpolate, rasterize
from .raymarch import raymarch
from .voxel import project_voxels, rotate_voxels, rotation_matrix

__all__ = ["chamfer_distance", "nearest_neighbors", "composite_layers", "interpolate", "layer_alpha", "rasterize", "raymarch", "project_voxels", "rotate_voxels",
           "rotation_matrix", "softras_blend"]
