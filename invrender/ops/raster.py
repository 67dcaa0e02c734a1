"""Soft mesh rasterization into depth-sorted layers (UNICORN), and attribute interpolation.

Vertices come already projected to NDC: ``(B, V, 3)`` with x in [-1, 1] left to right, y in
[-1, 1] bottom to top and z = depth > 0 (distance in front of the camera). Pixel ``(i, j)`` of an
``(H, W)`` image has its centre at ``x = -1 + (2j + 1) / W``, ``y = 1 - (2i + 1) / H``. Faces are
int64 ``(F, 3)``, counter-clockwise seen from the front.
"""

import math
from typing import NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ._util import forbid_double_backward, fragment_field, register_fake

_ops = torch.ops.invrender

__all__ = ["Fragments", "rasterize", "interpolate", "default_blur"]

#: Twice the NDC area below which a face is dropped as degenerate (csrc/raster/raster_math.h).
MIN_AREA2 = 1e-10
#: Largest |x|, |y| or depth of a vertex whose faces are rasterized (csrc/raster/raster_math.h).
MAX_COORD = 1e8


class Fragments(NamedTuple):
    """Per pixel, the ``L`` covering faces nearest in depth, front to back.

    Attributes:
        face_idx: ``(B, H, W, L)`` int64, index of the face in its mesh's face list; -1 for empty
            layers (the other fields are 0 there).
        bary: ``(B, H, W, L, 3)`` barycentric coordinates of the pixel centre, clamped to the face
            (negative ones set to 0 and the rest renormalised) for pixels outside it.
        dist: ``(B, H, W, L)`` signed squared distance (NDC units) from the pixel centre to the
            face's boundary: negative inside, positive outside.
        depth: ``(B, H, W, L)`` depth interpolated with ``bary`` (no perspective correction).
    """

    face_idx: Tensor
    bary: Tensor
    dist: Tensor
    depth: Tensor


def default_blur(sigma: float) -> float:
    """UNICORN's coverage radius (squared NDC distance) for a blur ``sigma``: the distance at which
    ``sigmoid(-d / sigma)`` falls to 1e-4, ``sigma * log(1 / 1e-4 - 1)``; 0 for ``sigma = 0``."""
    return sigma * math.log(1.0 / 1e-4 - 1.0) if sigma > 0 else 0.0


def _image_size(image_size, op: str) -> Tuple[int, int]:
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        size = (image_size, image_size)
    elif isinstance(image_size, (tuple, list, torch.Size)) and len(image_size) == 2 and all(
            isinstance(s, int) and not isinstance(s, bool) for s in image_size):
        size = (int(image_size[0]), int(image_size[1]))
    else:
        raise ValueError(f"{op}: argument 'image_size' must be an int or a pair (H, W), got {image_size!r}")
    if size[0] < 0 or size[1] < 0:
        raise ValueError(f"{op}: argument 'image_size' must be non-negative, got {image_size!r}")
    return size


def _batch_meshes(verts, faces, op: str) -> Tuple[Tensor, Tensor]:
    """(verts (B, V, 3), faces (B, F, 3)) from a batched tensor with shared or batched faces, or from
    lists of meshes of different sizes (padded: extra vertices at depth 1, extra faces -1)."""
    if isinstance(verts, (list, tuple)):
        if not isinstance(faces, (list, tuple)) or len(faces) != len(verts):
            raise ValueError(f"{op}: with a list of 'verts', 'faces' must be a list of the same length")
        if len(verts) == 0:
            raise ValueError(f"{op}: argument 'verts' is an empty list")
        for name, items, width in (("verts", verts, 3), ("faces", faces, 3)):
            for k, t in enumerate(items):
                if not isinstance(t, Tensor) or t.dim() != 2 or t.shape[1] != width:
                    raise ValueError(f"{op}: argument '{name}[{k}]' must be a ({'V' if name == 'verts' else 'F'}, 3) "
                                     f"tensor, got {getattr(t, 'shape', type(t).__name__)}")
        ref = verts[0]
        for k, (v, f) in enumerate(zip(verts, faces)):
            if v.device != ref.device or v.dtype != ref.dtype:
                raise ValueError(f"{op}: argument 'verts[{k}]' is {v.dtype} on {v.device} but 'verts[0]' is "
                                 f"{ref.dtype} on {ref.device}; all meshes must share one dtype and device")
            if f.device != ref.device:
                raise ValueError(f"{op}: argument 'faces[{k}]' is on {f.device} but 'verts[0]' is on {ref.device}; "
                                 "they must be on one device")
            if f.dtype != torch.int64:
                raise TypeError(f"{op}: argument 'faces[{k}]' must be int64, got {f.dtype}")
            # Padding makes every mesh as long as the longest: an index past this mesh's own
            # vertices would silently reach the padding vertices.
            if f.numel() and int(f.max()) >= v.shape[0]:
                raise ValueError(f"{op}: argument 'faces[{k}]' has vertex index {int(f.max())} but 'verts[{k}]' "
                                 f"has {v.shape[0]} vertices")
        V = max(v.shape[0] for v in verts)
        F = max(f.shape[0] for f in faces)
        vs = [torch.cat([v, v.new_ones(V - v.shape[0], 3)]) for v in verts]
        fs = [torch.cat([f, f.new_full((F - f.shape[0], 3), -1)]) for f in faces]
        return torch.stack(vs), torch.stack(fs)
    if not isinstance(verts, Tensor):
        raise TypeError(f"{op}: argument 'verts' must be a tensor (B, V, 3) or a list of (V, 3) tensors, "
                        f"got {type(verts).__name__}")
    if not isinstance(faces, Tensor):
        raise TypeError(f"{op}: argument 'faces' must be a tensor (F, 3) or (B, F, 3), got {type(faces).__name__}")
    if verts.dim() != 3:
        raise ValueError(f"{op}: argument 'verts' must be a 3-D tensor (B, V, 3), got shape {tuple(verts.shape)}")
    if faces.dim() == 2:
        faces = faces.unsqueeze(0).expand(verts.shape[0], *faces.shape)
    return verts, faces


def _check_faces(faces: Tensor, op: str) -> None:
    if faces.dtype != torch.int64:
        raise TypeError(f"{op}: argument 'faces' must be int64, got {faces.dtype}")
    if faces.dim() != 3 or faces.shape[-1] != 3:
        raise ValueError(f"{op}: argument 'faces' must have shape (F, 3) or (B, F, 3), got {tuple(faces.shape)}")


def rasterize(
    verts: Union[Tensor, Sequence[Tensor]],
    faces: Union[Tensor, Sequence[Tensor]],
    image_size: Union[int, Tuple[int, int]],
    layers: int = 25,
    sigma: float = 1e-4,
    blur: Optional[float] = None,
    cull_backfaces: bool = False,
) -> Fragments:
    """Rasterizes meshes into the ``layers`` faces nearest in depth at each pixel.

    A face covers a pixel when the signed squared distance from the pixel centre to the face is at
    most the blur radius (inside the face the distance is negative, so every pixel inside is
    covered). Among covering faces each pixel keeps the ``layers`` of smallest interpolated depth,
    ties broken by the smaller face index, front to back; there is no other cap. ``layers=1,
    sigma=0`` is an exact z-buffer (hard rasterization).

    Faces with a vertex at depth <= 0 (behind the camera) are dropped, and so are faces with a
    vertex coordinate beyond 1e8 in absolute value (``MAX_COORD``: a vertex all but on the camera
    plane, where float32 products would overflow) and degenerate faces (twice the NDC area below
    1e-10, far below a pixel), so that no NaN or Inf can arise. With
    ``cull_backfaces`` faces seen clockwise (from the back) are dropped too.

    Args:
        verts: ``(B, V, 3)`` float32/float64 vertices in NDC (x right, y up, z = depth > 0), or a
            list of ``(V_b, 3)`` tensors (meshes of different sizes).
        faces: ``(F, 3)`` int64 shared by the batch, ``(B, F, 3)``, or a list of ``(F_b, 3)``
            (with list verts). Rows with a negative index are padding and are skipped.
        image_size: ``H`` (square) or ``(H, W)``.
        layers: ``L >= 1``, faces kept per pixel (UNICORN: 25; 50 in its ShapeNet configs).
        sigma: the blur of the soft renderer that will use the fragments (UNICORN: 1e-4); it sets
            the default ``blur``.
        blur: coverage radius in squared NDC distance; default ``sigma * log(1 / 1e-4 - 1)``
            (where the sigmoid occupancy falls to 1e-4), 0 when ``sigma = 0``.
        cull_backfaces: drop faces seen from the back.

    Returns:
        :class:`Fragments` ``(face_idx, bary, dist, depth)``, each ``(B, H, W, L[, 3])``. ``bary``,
        ``dist`` and ``depth`` are differentiable in ``verts`` (the face selection is not).
    """
    op = "rasterize"
    verts, faces = _batch_meshes(verts, faces, op)
    _check_faces(faces, op)
    size = _image_size(image_size, op)
    if isinstance(layers, bool) or not isinstance(layers, int):
        raise TypeError(f"{op}: argument 'layers' must be an int, got {type(layers).__name__}")
    if not isinstance(sigma, (int, float)) or isinstance(sigma, bool) or not (sigma >= 0 and math.isfinite(sigma)):
        raise ValueError(f"{op}: argument 'sigma' must be a finite number >= 0, got {sigma!r}")
    if blur is None:
        blur = default_blur(float(sigma))
    elif not isinstance(blur, (int, float)) or isinstance(blur, bool):
        raise TypeError(f"{op}: argument 'blur' must be a number, got {type(blur).__name__}")
    if faces.device != verts.device:
        raise ValueError(f"{op}: argument 'faces' is on {faces.device} but 'verts' is on {verts.device}; "
                         "they must be on one device")
    bary, dist, depth, face_idx = _ops.rasterize_forward(verts, faces, list(size), layers, float(blur),
                                                         bool(cull_backfaces))
    return Fragments(face_idx, bary, dist, depth)


def _rasterize_setup(ctx, inputs, output):
    verts, faces = inputs[:2]
    ctx.save_for_backward(verts, faces, output[3])


def _rasterize_backward(ctx, grad_bary, grad_dist, grad_depth, grad_face_idx):
    verts, faces, face_idx = ctx.saved_tensors
    shape = face_idx.shape
    zeros = lambda *s: verts.new_zeros(s)  # noqa: E731
    grad_bary = zeros(*shape, 3) if grad_bary is None else grad_bary
    grad_dist = zeros(*shape) if grad_dist is None else grad_dist
    grad_depth = zeros(*shape) if grad_depth is None else grad_depth
    gverts = _ops.rasterize_backward(grad_bary, grad_dist, grad_depth, verts, faces, face_idx)
    return gverts, None, None, None, None, None


torch.library.register_autograd("invrender::rasterize_forward", _rasterize_backward,
                                setup_context=_rasterize_setup)


forbid_double_backward("rasterize_backward", "rasterize")


@register_fake("invrender::rasterize_forward")
def _(verts, faces, image_size, layers, blur, cull_backfaces):
    torch._check(verts.dim() == 3 and verts.shape[2] == 3,
                 lambda: "rasterize: argument 'verts' must have shape (B, V, 3)")
    torch._check(faces.dim() == 3 and faces.shape[0] == verts.shape[0],
                 lambda: "rasterize: argument 'faces' must have shape (B, F, 3)")
    B, (H, W) = verts.shape[0], image_size
    shape = (B, H, W, layers)
    return (verts.new_empty(shape + (3,)), verts.new_empty(shape), verts.new_empty(shape),
            verts.new_empty(shape, dtype=torch.int64))


@register_fake("invrender::rasterize_backward")
def _(grad_bary, grad_dist, grad_depth, verts, faces, face_idx):
    return torch.empty_like(verts, memory_format=torch.contiguous_format)


def interpolate(fragments: Fragments, attrs: Tensor, faces: Optional[Tensor] = None) -> Tensor:
    """Interpolates attributes at every pixel and layer with the fragments' barycentrics.

    Args:
        fragments: output of :func:`rasterize` for ``B`` meshes.
        attrs: per-vertex ``(B, V, C)`` (then ``faces`` is required: ``(F, 3)`` or ``(B, F, 3)``
            int64, the same as given to :func:`rasterize`) or per-face-corner ``(B, F, 3, C)``.
        faces: see ``attrs``.

    Returns:
        ``(B, H, W, L, C)``: ``sum_k bary_k attr_k`` of each layer's face, 0 on empty layers.
        Differentiable in ``attrs`` and, through ``bary``, in the vertices. A fused kernel: nothing
        of size ``(B, H, W, L, 3, C)`` is formed, forward or backward.
    """
    op = "interpolate"
    if not isinstance(attrs, Tensor):
        raise TypeError(f"{op}: argument 'attrs' must be a tensor, got {type(attrs).__name__}")
    face_idx, bary = fragment_field(fragments, "face_idx", op), fragment_field(fragments, "bary", op)
    B = face_idx.shape[0]
    if attrs.dim() == 3:
        if faces is None:
            raise ValueError(f"{op}: per-vertex 'attrs' (B, V, C) need 'faces'")
        if not isinstance(faces, Tensor):
            raise TypeError(f"{op}: argument 'faces' must be a tensor, got {type(faces).__name__}")
        if faces.dim() == 2:
            faces = faces.unsqueeze(0).expand(B, *faces.shape)
        _check_faces(faces, op)
        if attrs.shape[0] != B or faces.shape[0] != B:
            raise ValueError(f"{op}: argument 'attrs' must have shape (B, V, C) with B = {B}, got {tuple(attrs.shape)}")
    elif attrs.dim() == 4 and attrs.shape[2] == 3 and attrs.shape[0] == B:
        # Per-face-corner attributes: the vertices of face f are 3f, 3f + 1, 3f + 2.
        F = attrs.shape[1]
        faces = torch.arange(3 * F, device=attrs.device).reshape(1, F, 3).expand(B, F, 3)
        attrs = attrs.reshape(B, 3 * F, attrs.shape[3])
    else:
        raise ValueError(f"{op}: argument 'attrs' must be (B, V, C) or (B, F, 3, C) with B = {B}, "
                         f"got {tuple(attrs.shape)}")
    if attrs.dtype != bary.dtype:
        raise TypeError(f"{op}: argument 'attrs' has dtype {attrs.dtype} but the fragments have {bary.dtype}")
    return _ops.interpolate_forward(attrs, faces, face_idx, bary)


def _interpolate_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _interpolate_backward(ctx, grad):
    attrs, faces, face_idx, bary = ctx.saved_tensors
    grad_attrs, grad_bary = _ops.interpolate_backward(grad.contiguous(), attrs, faces, face_idx, bary)
    return grad_attrs, None, None, grad_bary


torch.library.register_autograd("invrender::interpolate_forward", _interpolate_backward,
                                setup_context=_interpolate_setup)


forbid_double_backward("interpolate_backward", "interpolate")


@register_fake("invrender::interpolate_forward")
def _(attrs, faces, face_idx, bary):
    torch._check(attrs.dim() == 3, lambda: "interpolate: argument 'attrs' must be (B, V, C)")
    return bary.new_empty(tuple(face_idx.shape) + (attrs.shape[2],))


@register_fake("invrender::interpolate_backward")
def _(grad, attrs, faces, face_idx, bary):
    return torch.empty_like(attrs, memory_format=torch.contiguous_format), torch.empty_like(bary)
