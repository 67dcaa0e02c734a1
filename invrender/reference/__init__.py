"""Pure-PyTorch implementations of the invrender ops, with the same signatures.

Clear before fast: they are the oracle of the tests, the baseline of the benchmarks, and the place
to read what an op computes.
"""

from .raster import rasterize
from .raymarch import raymarch
from .voxel import project_voxels, rotate_voxels, rotation_matrix

__all__ = ["rasterize", "raymarch", "project_voxels", "rotate_voxels", "rotation_matrix"]
