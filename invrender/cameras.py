"""Cameras: the volume renderer's (in view space) and the mesh projections to NDC.

The camera looks down the view axis -z. Pixel ``(i, j)`` of an ``(H, W)`` image has its centre at
NDC ``x = -1 + (2j + 1) / W``, ``y = 1 - (2i + 1) / H`` (row 0 at the top), as in the README.

Mesh cameras (:meth:`PerspectiveCamera.project`, :meth:`WeakPerspectiveCamera.project`) map
object-space vertices ``(B, V, 3)`` to the NDC vertices ``(B, V, 3)`` = (x right, y up,
depth > 0) that :func:`invrender.rasterize` takes. A rotation ``R`` maps object to view
coordinates, ``p_view = R @ p_obj`` (see :func:`invrender.rotation_matrix`). They are plain torch
code: differentiable in every tensor argument, traceable by ``torch.compile``. A vertex may land
at depth <= 0 (behind the camera); no error is raised, and :func:`invrender.rasterize` drops every
face that has such a vertex (its NDC x, y are meaningless: perspective flips or divides by ~0).
"""

import math
from dataclasses import dataclass
from numbers import Real
from typing import ClassVar, Optional, Tuple, Union

import torch
from torch import Tensor

__all__ = ["OrthographicCamera", "PerspectiveCamera", "WeakPerspectiveCamera", "quaternion_to_matrix"]

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
    rasterizer. :meth:`project` maps mesh vertices to NDC for :func:`invrender.rasterize`;
    :meth:`from_focal_length` builds the camera from a focal length instead of a field of view.
    """

    #: Floor of a positive depth in :meth:`project`'s division (keeps x and y finite).
    MIN_DEPTH: ClassVar[float] = 1e-12

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

    @classmethod
    def from_focal_length(cls, focal_length: float, distance: float = 2.732, near: Optional[float] = None,
                          far: Optional[float] = None) -> "PerspectiveCamera":
        """The camera of NDC focal length ``focal_length`` (> 0): ``fov = 2 atan(1 / f)`` in degrees.

        ``PerspectiveCamera.from_focal_length(3.732)`` is ShapeNet-NMR's 30 degree camera.
        """
        if isinstance(focal_length, bool) or not isinstance(focal_length, Real):
            raise TypeError(f"PerspectiveCamera.from_focal_length: argument 'focal_length' must be a number, "
                            f"got {type(focal_length).__name__}")
        if not (math.isfinite(focal_length) and focal_length > 0):
            raise ValueError(f"PerspectiveCamera.from_focal_length: argument 'focal_length' must be finite and "
                             f"positive, got {focal_length!r}")
        fov = math.degrees(2.0 * math.atan(1.0 / float(focal_length)))
        return cls(fov=fov, distance=distance, near=near, far=far)

    def project(self, verts: Tensor, rotation: Optional[Tensor] = None,
                translation: Optional[Tensor] = None) -> Tensor:
        """Perspective projection of object-space vertices to NDC.

        ``p_view = R p + t``; ``depth = distance - p_view.z`` (the camera sits at
        ``(0, 0, distance)`` looking along -z); ``x_ndc = f p_view.x / depth``,
        ``y_ndc = f p_view.y / depth`` with ``f =`` :attr:`focal_length`. Vertices at depth <= 0 are
        not an error: they get x = y = 0 and their depth, and the rasterizer drops their faces; positive
        depths are floored at :attr:`MIN_DEPTH` (1e-12) in the division, so the output and its
        gradients are always finite.

        Args:
            verts: ``(B, V, 3)`` or ``(V, 3)`` float32/float64 object-space vertices.
            rotation: ``(B, 3, 3)`` or ``(3, 3)`` object-to-view rotation ``R``, same dtype and
                device as ``verts``; default identity.
            translation: ``(B, 3)`` or ``(3,)`` view-space translation ``t``; default 0. (UNICORN
                puts the camera distance in ``t``; here it is the camera's ``distance``.)

        Returns:
            ``(B, V, 3)`` NDC vertices (x right, y up, depth), ``B`` the batch size shared by the
            batched arguments (1 when none is batched). Differentiable in every tensor argument.
        """
        op = "PerspectiveCamera.project"
        verts, B = _check_verts(verts, op)
        rotation, B = _check_batched(rotation, "rotation", (3, 3), "(B, 3, 3) or (3, 3)", verts, B, op)
        translation, B = _check_batched(translation, "translation", (3,), "(B, 3) or (3,)", verts, B, op)
        p = _rotate(verts, rotation)
        if translation is not None:
            p = p + translation.reshape(-1, 1, 3)
        depth = self.distance - p[..., 2]
        f = self.focal_length
        # A vertex at depth <= 0 gets x = y = 0 (finite, zero gradient) and keeps its depth, so the
        # rasterizer drops its faces instead of meeting 0/0; a positive depth is floored at
        # MIN_DEPTH so that x and y stay finite (such faces lie beyond the rasterizer's MAX_COORD).
        front = depth > 0
        safe = torch.where(front, depth, torch.ones_like(depth)).clamp(min=self.MIN_DEPTH)
        xy = torch.where(front.unsqueeze(-1), f * p[..., :2] / safe.unsqueeze(-1), torch.zeros_like(p[..., :2]))
        return torch.cat([xy, depth.unsqueeze(-1)], dim=-1)  # (B, V, 3), (1, V, 3) when nothing is batched


@dataclass(frozen=True)
class WeakPerspectiveCamera:
    """Weak-perspective (scaled orthographic) camera of CMR / UMR (Kanazawa 2018; Li 2020).

    ``q = R p``; ``x_ndc = s q.x + tx``, ``y_ndc = s q.y + ty``, ``depth = depth_offset - q.z``
    (depth only orders the faces; the projection does not depend on it).

    Args:
        depth_offset: view depth of the object origin; 2.0 keeps the [-1, 1]^3 cube in front of
            the camera (depth in [1, 3]) at any rotation. A vertex at depth <= 0 is allowed; the
            rasterizer drops its faces.
    """

    depth_offset: float = 2.0

    def __post_init__(self):
        if isinstance(self.depth_offset, bool) or not isinstance(self.depth_offset, Real) or \
                not math.isfinite(self.depth_offset):
            raise ValueError(f"WeakPerspectiveCamera: 'depth_offset' must be a finite number, "
                             f"got {self.depth_offset!r}")

    def project(self, verts: Tensor, scale: Union[Tensor, float, None] = None, translation: Optional[Tensor] = None,
                rotation: Optional[Tensor] = None) -> Tensor:
        """Weak-perspective projection of object-space vertices to NDC.

        Args:
            verts: ``(B, V, 3)`` or ``(V, 3)`` float32/float64 object-space vertices.
            scale: ``(B,)``, ``(B, 1)``, a 0-d tensor or a number ``s``; default 1.
            translation: ``(B, 2)`` or ``(2,)`` NDC translation ``(tx, ty)``; default 0.
            rotation: object-to-view rotation, a matrix ``(B, 3, 3)`` / ``(3, 3)`` or a quaternion
                ``(B, 4)`` / ``(4,)`` ``(w, x, y, z)``, normalised here (see
                :func:`quaternion_to_matrix`); default identity.

        Tensors share the dtype and device of ``verts``.

        Returns:
            ``(B, V, 3)`` NDC vertices (x right, y up, depth). Differentiable in every tensor argument.
        """
        op = "WeakPerspectiveCamera.project"
        verts, B = _check_verts(verts, op)
        if isinstance(scale, Real) and not isinstance(scale, bool):
            scale = torch.as_tensor(float(scale), dtype=verts.dtype, device=verts.device)
        if scale is not None:
            _check_tensor(scale, "scale", verts, op)
            if scale.dim() == 2 and scale.shape[1] == 1:
                scale = scale[:, 0]
            if scale.dim() > 1:
                raise ValueError(f"{op}: argument 'scale' must have shape (B,), (B, 1) or () or be a number, "
                                 f"got {tuple(scale.shape)}")
            scale, B = _batch_of(scale.reshape(1) if scale.dim() == 0 else scale, "scale", B, op,
                                 batched=scale.dim() == 1)
        translation, B = _check_batched(translation, "translation", (2,), "(B, 2) or (2,)", verts, B, op)
        if rotation is not None:
            _check_tensor(rotation, "rotation", verts, op)
            if rotation.shape[-1:] == (4,) and rotation.dim() in (1, 2):
                rotation = quaternion_to_matrix(rotation)
            elif not (rotation.shape[-2:] == (3, 3) and rotation.dim() in (2, 3)):
                raise ValueError(f"{op}: argument 'rotation' must be a matrix (B, 3, 3) / (3, 3) or a quaternion "
                                 f"(B, 4) / (4,), got {tuple(rotation.shape)}")
            rotation, B = _check_batched(rotation, "rotation", (3, 3), "(B, 3, 3) or (3, 3)", verts, B, op)
        q = _rotate(verts, rotation)
        xy = q[..., :2]
        if scale is not None:
            xy = xy * scale.reshape(-1, 1, 1)
        if translation is not None:
            xy = xy + translation.reshape(-1, 1, 2)
        depth = (self.depth_offset - q[..., 2:]).expand(xy.shape[0], -1, -1)  # xy's batch includes q's
        return torch.cat([xy, depth], dim=-1)  # broadcasting gives (B, V, 3), (1, V, 3) when nothing is batched


def quaternion_to_matrix(quaternion: Tensor, eps: float = 1e-12) -> Tensor:
    """Rotation matrices of unit quaternions ``(w, x, y, z)`` (Hamilton convention, real part first).

    The quaternion is normalised first (its norm clamped at ``eps``, so the zero quaternion gives a
    finite, meaningless matrix instead of NaN). The result rotates vectors actively,
    ``R v = q v q*``: ``(cos(a/2), sin(a/2) n)`` turns by ``a`` counter-clockwise about the axis
    ``n`` (right-hand rule). Used as an object-to-view rotation, ``p_view = R p_obj``; then
    :func:`invrender.rotation_matrix` ``(azimuth=a)`` equals the quaternion
    ``(cos(a/2), 0, -sin(a/2), 0)``: the camera turning by ``a`` about +y is the object turning by
    ``-a``.

    Args:
        quaternion: ``(..., 4)`` float32/float64, ``(w, x, y, z)``.

    Returns:
        ``(..., 3, 3)`` orthonormal matrices with determinant 1, differentiable in ``quaternion``.
    """
    op = "quaternion_to_matrix"
    if not isinstance(quaternion, Tensor):
        raise TypeError(f"{op}: argument 'quaternion' must be a tensor (..., 4), got {type(quaternion).__name__}")
    if not quaternion.is_floating_point():
        raise TypeError(f"{op}: argument 'quaternion' must be float32 or float64, got {quaternion.dtype}")
    if quaternion.dim() == 0 or quaternion.shape[-1] != 4:
        raise ValueError(f"{op}: argument 'quaternion' must have shape (..., 4) (w, x, y, z), "
                         f"got {tuple(quaternion.shape)}")
    q = quaternion / torch.linalg.vector_norm(quaternion, dim=-1, keepdim=True).clamp(min=eps)
    w, x, y, z = q.unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]
    return torch.stack(rows, dim=-1).reshape(*q.shape[:-1], 3, 3)


# ------------------------------------------------------------------------------------------------
# Argument checks of the mesh cameras


def _check_tensor(value, name: str, verts: Tensor, op: str) -> None:
    if not isinstance(value, Tensor):
        raise TypeError(f"{op}: argument '{name}' must be a tensor, got {type(value).__name__}")
    if value.dtype != verts.dtype:
        raise TypeError(f"{op}: argument '{name}' has dtype {value.dtype} but 'verts' has {verts.dtype}; "
                        "they must match")
    if value.device != verts.device:
        raise ValueError(f"{op}: argument '{name}' is on {value.device} but 'verts' is on {verts.device}")


def _check_verts(verts, op: str) -> Tuple[Tensor, Optional[int]]:
    if not isinstance(verts, Tensor):
        raise TypeError(f"{op}: argument 'verts' must be a tensor (B, V, 3) or (V, 3), got {type(verts).__name__}")
    if verts.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{op}: argument 'verts' must be float32 or float64, got {verts.dtype}")
    if verts.dim() not in (2, 3) or verts.shape[-1] != 3:
        raise ValueError(f"{op}: argument 'verts' must have shape (B, V, 3) or (V, 3), got {tuple(verts.shape)}")
    if verts.dim() == 2:
        return verts.unsqueeze(0), None
    return verts, verts.shape[0]


def _batch_of(value: Tensor, name: str, B: Optional[int], op: str, batched: bool) -> Tuple[Tensor, Optional[int]]:
    """Checks the batch size of ``value`` (leading dimension) against ``B`` (None: not fixed yet)."""
    if not batched:
        return value, B
    n = value.shape[0]
    if B is not None and n != B:
        raise ValueError(f"{op}: argument '{name}' has batch size {n} but the other arguments have {B}")
    return value, n


def _check_batched(value, name: str, inner: Tuple[int, ...], expected: str, verts: Tensor, B: Optional[int],
                   op: str) -> Tuple[Optional[Tensor], Optional[int]]:
    """None, or ``value`` of shape ``(B, *inner)`` / ``inner`` returned as ``(B or 1, *inner)``."""
    if value is None:
        return None, B
    _check_tensor(value, name, verts, op)
    shape = tuple(value.shape)
    if shape == inner:
        return value.unsqueeze(0), B
    if len(shape) != len(inner) + 1 or shape[1:] != inner:
        raise ValueError(f"{op}: argument '{name}' must have shape {expected}, got {shape}")
    return _batch_of(value, name, B, op, batched=True)


def _rotate(verts: Tensor, rotation: Optional[Tensor]) -> Tensor:
    """``R p`` for verts (b, V, 3) and rotation (b', 3, 3) or None, broadcast over b, b' in {1, B}."""
    if rotation is None:
        return verts
    return torch.matmul(verts, rotation.transpose(-1, -2))
