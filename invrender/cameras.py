"""Cameras of the volume renderer, in view space (after the object-to-view rotation).

The camera looks down the view axis -z. Pixel ``(i, j)`` of an ``(H, W)`` image has its centre at
NDC ``x = -1 + (2j + 1) / W``, ``y = 1 - (2i + 1) / H`` (row 0 at the top), as in the README.
"""

import math
from dataclasses import dataclass
from typing import Optional, Tuple

__all__ = ["OrthographicCamera", "PerspectiveCamera"]

#: Half-diagonal of the [-1, 1]^3 cube: no rotation moves the object farther from the origin.
CUBE_RADIUS = math.sqrt(3.0)


@dataclass(frozen=True)
class OrthographicCamera:
    """Parallel rays along -z, one per pixel through ``(x, y)``, sampled over ``z in [-1, 1]``.

    The visual-hull convention of :func:`invrender.project_voxels`: with the identity rotation, an
    image of the grid's size and one sample per voxel, pixel ``(h, w)`` sees ``volume[..., :, h, w]``
    front (``d = 0``) to back. Depth is measured from the volume's front face ``z = 1``.
    """


@dataclass(frozen=True)
class PerspectiveCamera:
    """Pinhole camera at ``(0, 0, distance)`` in view space, looking at the origin.

    Args:
        fov: full field of view in degrees (both axes; NDC x and y both span [-1, 1]).
        distance: distance from the camera to the origin. The defaults are ShapeNet-NMR's
            (Kato et al. 2018; DVR, UNICORN): 30 degrees, 2.732, i.e. focal length 3.732.
        near, far: distances along each ray between which it is sampled. Default
            ``distance -/+ sqrt(3)``, the sphere that holds the [-1, 1]^3 cube at any rotation
            (``near`` clamped at 0).

    Depth is the view depth (distance in front of the camera along its axis), as in the mesh
    rasterizer.
    """

    fov: float = 30.0
    distance: float = 2.732
    near: Optional[float] = None
    far: Optional[float] = None

    def __post_init__(self):
        if not (isinstance(self.fov, (int, float)) and 0.0 < self.fov < 180.0):
            raise ValueError(f"PerspectiveCamera: 'fov' must be in (0, 180) degrees, got {self.fov!r}")
        if not (isinstance(self.distance, (int, float)) and math.isfinite(self.distance)):
            raise ValueError(f"PerspectiveCamera: 'distance' must be a finite number, got {self.distance!r}")
        near, far = self.depth_range
        if not (math.isfinite(near) and math.isfinite(far) and 0.0 <= near < far):
            raise ValueError(f"PerspectiveCamera: need 0 <= near < far, got near={near!r}, far={far!r}")

    @property
    def focal_length(self) -> float:
        """``1 / tan(fov / 2)`` in NDC units (3.732 for 30 degrees)."""
        return 1.0 / math.tan(math.radians(self.fov) / 2.0)

    @property
    def depth_range(self) -> Tuple[float, float]:
        near = max(self.distance - CUBE_RADIUS, 0.0) if self.near is None else float(self.near)
        far = self.distance + CUBE_RADIUS if self.far is None else float(self.far)
        return near, far
