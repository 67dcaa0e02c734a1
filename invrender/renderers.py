"""Renderers as ``torch.nn.Module``s over the differentiable ops, and rendering helpers.

- :class:`LayeredRenderer`: UNICORN's (Monnier et al. 2022) textured mesh renderer: project,
  rasterize into depth-sorted layers, sample a UV texture, alpha-composite front to back over a
  background. No lighting.
- :func:`render_shaded`: a hard z-buffer render with Lambertian shading (two directional lights plus
  ambient) for pictures a person looks at: the synthetic data's renders, turntables of learned meshes.
- :func:`render_voxel_surface`: IG-GAN's "off-the-shelf" (non-differentiable) voxel renderer (Lunz et al. 2020,
  supplement B.1): the surface of the voxels above a threshold, shaded as :func:`render_shaded` shades meshes;
  :func:`sample_thresholds` draws the paper's thresholds.
- :func:`face_pixel_centroids`: per face, the weighted NDC centroid of the pixels it covers (UMR's
  texture-cycle loss, Li et al. 2020).

Conventions (README): images ``(B, C, H, W)`` with row 0 at the top; NDC x right, y up; pixel
``(i, j)`` centred at ``x = -1 + (2j + 1) / W``, ``y = 1 - (2i + 1) / H``; faces int64 ``(F, 3)``
counter-clockwise seen from the front; ``p_view = R @ p_obj``.
"""

import math
from numbers import Real
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as Fn
from torch import Tensor

from .cameras import PerspectiveCamera, WeakPerspectiveCamera
from .mesh import _QUAD_NORMALS, _surface_faces, _surface_mesh
from .ops.composite import CompositeResult, composite_layers, layer_alpha
from .ops.raster import Fragments, _image_size, interpolate, rasterize

__all__ = ["LayeredRenderer", "face_pixel_centroids", "render_shaded", "render_voxel_surface", "sample_thresholds"]


#: Lights of :func:`render_shaded`: (direction in view space x, y, z, intensity), and the ambient term.
LIGHTS = ((0.4, 0.8, 0.6, 0.6), (-0.7, 0.3, 0.4, 0.35))
AMBIENT = 0.3
#: Grey albedo of :func:`render_shaded` (default) and :func:`render_voxel_surface`.
GREY = 0.7


@torch.no_grad()
def render_shaded(verts: Tensor, faces: Tensor, rotation: Tensor, image_size: int = 64,
                  translation: Optional[Tensor] = None, albedo=(GREY, GREY, GREY), supersample: int = 2,
                  background: Optional[Tensor] = None, distance: float = 2.732,
                  focal_length: float = 3.732, orthographic: Optional[float] = None) -> Tuple[Tensor, Tensor]:
    """Shaded pictures of meshes (not differentiable): hard z-buffer (:func:`rasterize`, one layer, no
    blur), Lambertian shading with the face normal (two-sided) under :data:`LIGHTS` plus :data:`AMBIENT`,
    rendered at ``supersample`` times the size and averaged (antialiasing).

    The camera is ShapeNet-NMR's (and the synthetic data's): a pinhole at ``distance`` on the view +z
    axis looking at the origin, ``focal_length`` in NDC units; ``p_view = R p + t``. With
    ``orthographic = e`` it is an orthographic camera along -z instead, the image spanning view
    ``[-e, e]^2`` (the voxel renderers' camera: ``e = 1`` is a grid's own extent).

    Args:
        verts: ``(V, 3)`` or ``(B, V, 3)`` object-space vertices; faces: ``(F, 3)`` int64.
        rotation: ``(B, 3, 3)`` object-to-view rotations (``B`` views; verts broadcast when unbatched).
        translation: optional ``(B, 3)`` view-space offsets.
        albedo: an RGB triple, or a callable ``albedo(face_idx (N,), p_obj (N, 3)) -> (N, 3)`` evaluated at
            the covered (supersampled) pixels' object-space surface points.
        background: None (white) or ``(B, 3, H, W)`` images in [0, 1].

    Returns:
        ``image (B, 3, S, S)`` and ``mask (B, 1, S, S)`` (coverage fraction) in [0, 1], float32.
    """
    op = "render_shaded"
    if not isinstance(rotation, Tensor) or rotation.dim() != 3 or rotation.shape[1:] != (3, 3):
        raise ValueError(f"{op}: argument 'rotation' must be a (B, 3, 3) tensor, got "
                         f"{tuple(rotation.shape) if isinstance(rotation, Tensor) else type(rotation).__name__}")
    if not isinstance(verts, Tensor) or verts.dim() not in (2, 3) or verts.shape[-1] != 3:
        raise ValueError(f"{op}: argument 'verts' must be a (V, 3) or (B, V, 3) tensor")
    if isinstance(supersample, bool) or not isinstance(supersample, int) or supersample < 1:
        raise ValueError(f"{op}: argument 'supersample' must be a positive int, got {supersample!r}")
    B, S = rotation.shape[0], int(image_size) * supersample
    v = verts.double().expand(B, -1, -1) if verts.dim() == 2 else verts.double()
    if v.shape[0] != B:
        raise ValueError(f"{op}: argument 'verts' has batch {v.shape[0]}, 'rotation' has {B}")
    pv = v @ rotation.double().transpose(1, 2)  # view space (B, V, 3)
    if translation is not None:
        pv = pv + translation.double().reshape(B, 1, 3)
    if orthographic is not None and not (isinstance(orthographic, Real) and orthographic > 0):
        raise ValueError(f"{op}: argument 'orthographic' must be None or a positive half-extent, got {orthographic!r}")
    frag, covered, normals = _zbuffer(pv, faces, S, distance, focal_length, orthographic)
    f_idx = frag.face_idx[..., 0][covered]
    if callable(albedo):
        p_obj = interpolate(frag, v.float(), faces)[..., 0, :][covered]  # (N, 3)
        color = albedo(f_idx, p_obj)
    else:
        color = torch.tensor([float(c) for c in albedo], device=covered.device).expand(len(f_idx), 3)
    rgb = torch.zeros(B, S, S, 3, device=covered.device)
    rgb[covered] = _lambert(color.float(), normals)
    mask = covered.float()[:, None]
    bg = torch.ones(B, 3, S, S, device=covered.device) if background is None else Fn.interpolate(
        background.float(), size=(S, S), mode="bilinear", align_corners=False)
    image = rgb.permute(0, 3, 1, 2) * mask + bg * (1 - mask)
    return Fn.avg_pool2d(image, supersample), Fn.avg_pool2d(mask, supersample)


@torch.no_grad()
def render_voxel_surface(voxels: Tensor, rotation: Tensor, threshold: Union[float, Tensor] = 0.5, image_size: int = 64,
                         extent: float = 2.0, supersample: int = 1, normals: bool = False) -> Tuple[Tensor, Tensor]:
    """IG-GAN's "off-the-shelf" renderer (Lunz et al. 2020, supplement B.1; OpenGL in the paper), not
    differentiable: each grid is binarised at its threshold (``voxels > threshold``), turned into the surface of
    its occupied voxels (:func:`invrender.mesh.voxel_surface`: one cube per voxel, the faces between occupied and
    empty cells) and rendered as :func:`render_shaded` renders the training images
    (:class:`invrender.data.ShadedViews`): hard z-buffer, grey albedo :data:`GREY`, Lambertian under
    :data:`LIGHTS` plus :data:`AMBIENT`, black background, an orthographic camera along -z whose image spans view
    ``[-extent, extent]^2`` (``extent = 2``: the frame of the grid over ``[-1, 1]^3`` embedded in one twice its
    size, ``invrender.rotate_voxels(voxels, R, size=2 N)``). ``render_shaded(*voxel_surface(voxels[b, 0] >
    threshold), rotation[b:b+1], image_size, supersample=supersample, background=black, orthographic=extent)``
    gives the same image, but for pixels centred on a silhouette edge where a back face ties in depth with the front
    face (back faces of the closed surface are dropped before rasterizing). The whole batch is rasterized in one
    call (meshes padded to the largest); no loop over the batch or the pixels.

    Args:
        voxels: ``(B, 1, D, H, W)`` or ``(B, D, H, W)`` occupancies (float, or bool) in invrender's grid layout.
        rotation: ``(B, 3, 3)`` object-to-view rotations.
        threshold: a number, or ``(B,)`` per-sample thresholds (IG-GAN: uniform in [0, 1], see
            :func:`sample_thresholds`); a voxel is occupied when its value is strictly above.
        image_size: ``S``.
        extent: half-width of the view window.
        supersample: render at ``supersample * S`` and average (antialiasing); 1: one sample per pixel centre.
        normals: return normal maps instead of shaded images: view-space unit normals of the visible faces
            (toward the camera) as colours ``(n + 1) / 2``, black background (averaged when supersampled).

    Returns:
        ``image (B, 1, S, S)`` grey in [0, 1] (``(B, 3, S, S)`` normal maps with ``normals=True``) and
        ``mask (B, 1, S, S)`` (coverage fraction), float32, on the device of ``voxels``.
    """
    op = "render_voxel_surface"
    if not isinstance(voxels, Tensor):
        raise TypeError(f"{op}: argument 'voxels' must be a tensor (B, 1, D, H, W) or (B, D, H, W), "
                        f"got {type(voxels).__name__}")
    if voxels.dim() == 5 and voxels.shape[1] == 1:
        voxels = voxels[:, 0]
    if voxels.dim() != 4:
        raise ValueError(f"{op}: argument 'voxels' must have shape (B, 1, D, H, W) or (B, D, H, W), "
                         f"got {tuple(voxels.shape)}")
    if voxels.dtype == torch.bool:
        voxels = voxels.float()
    if not voxels.is_floating_point():
        raise TypeError(f"{op}: argument 'voxels' must be a float or bool tensor, got {voxels.dtype}")
    B, device = voxels.shape[0], voxels.device
    if not isinstance(rotation, Tensor) or tuple(rotation.shape) != (B, 3, 3):
        raise ValueError(f"{op}: argument 'rotation' must be a (B, 3, 3) tensor with B = {B}, got "
                         f"{tuple(rotation.shape) if isinstance(rotation, Tensor) else type(rotation).__name__}")
    if rotation.device != device:
        raise ValueError(f"{op}: argument 'rotation' is on {rotation.device} but 'voxels' is on {device}")
    if isinstance(threshold, Tensor):
        if threshold.dim() > 1 or threshold.numel() not in (1, B) or (threshold.dim() == 1 and threshold.shape[0] != B):
            raise ValueError(f"{op}: argument 'threshold' must be a number or a (B,) tensor with B = {B}, "
                             f"got shape {tuple(threshold.shape)}")
        if not bool(torch.isfinite(threshold).all()):
            raise ValueError(f"{op}: argument 'threshold' must be finite")
        threshold = threshold.to(device=device, dtype=voxels.dtype).reshape(-1, 1, 1, 1)
    elif isinstance(threshold, bool) or not isinstance(threshold, Real) or not math.isfinite(threshold):
        raise ValueError(f"{op}: argument 'threshold' must be a finite number or a (B,) tensor, got {threshold!r}")
    for name, value in (("image_size", image_size), ("supersample", supersample)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{op}: argument '{name}' must be a positive int, got {value!r}")
    if isinstance(extent, bool) or not isinstance(extent, Real) or not (math.isfinite(extent) and extent > 0):
        raise ValueError(f"{op}: argument 'extent' must be a positive number, got {extent!r}")
    S = image_size * supersample
    signs = _surface_faces(voxels > threshold)  # compared in the voxels' dtype, as ``voxels > threshold`` is
    # The surface is closed, so its back faces are never the nearest (but for depth ties on silhouette edges): drop
    # them before rasterizing, half the faces. ``facing[b, a]``: view-space normal z of the faces along axis a with
    # sign +1 (their sign -1 twins face the other way); (nearly) edge-on faces are kept.
    facing = rotation.double()[:, 2] @ torch.tensor(_QUAD_NORMALS, dtype=torch.float64, device=device).T  # (B, 3)
    lowest, highest = (facing > 1e-6).to(signs.dtype) - 1, 1 - (facing < -1e-6).to(signs.dtype)
    signs = signs.clamp(min=lowest[:, :, None, None, None], max=highest[:, :, None, None, None])
    verts, faces, vertex_counts, face_counts, vb, fb = _surface_mesh(signs, torch.float32)
    # One padded batch for one rasterize call: vertex slots past a mesh's own are unused, face rows are -1.
    V, F = int(vertex_counts.max()) if B else 0, int(face_counts.max()) if B else 0
    v = verts.new_ones(B, V, 3)
    v[vb, torch.arange(len(vb), device=device) - (vertex_counts.cumsum(0) - vertex_counts)[vb]] = verts
    f = faces.new_full((B, F, 3), -1)
    f[fb, torch.arange(len(fb), device=device) - (face_counts.cumsum(0) - face_counts)[fb]] = faces
    pv = v.double() @ rotation.double().transpose(1, 2)
    _, covered, n = _zbuffer(pv, f, S, distance=2.732, focal_length=None, orthographic=float(extent))  # render_shaded's
    mask = covered.float()[:, None]
    if normals:
        image = torch.zeros(B, S, S, 3, device=device)
        image[covered] = (n + 1) / 2
    else:
        image = torch.zeros(B, S, S, 1, device=device)
        image[covered] = _lambert(torch.full((len(n), 1), GREY, device=device), n)
    image = image.permute(0, 3, 1, 2)
    return Fn.avg_pool2d(image, supersample), Fn.avg_pool2d(mask, supersample)


def sample_thresholds(batch: int, generator: Optional[torch.Generator] = None, device=None) -> Tensor:
    """IG-GAN's binarisation thresholds for :func:`render_voxel_surface` (Lunz et al. 2020, supplement B.1).

    Args:
        batch: the number of samples.
        generator: optional ``torch.Generator`` (on ``device``) for reproducible draws.
        device: device of the result (default: torch's default device).

    Returns:
        ``(batch,)`` float32 thresholds uniform in [0, 1), one per sample.
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 0:
        raise ValueError(f"sample_thresholds: argument 'batch' must be a non-negative int, got {batch!r}")
    return torch.rand(batch, generator=generator, device=device)


def _zbuffer(pv: Tensor, faces: Tensor, size: int, distance: float, focal_length: Optional[float],
             orthographic: Optional[float]) -> Tuple[Fragments, Tensor, Tensor]:
    """The hard z-buffer of :func:`render_shaded` and :func:`render_voxel_surface`: view-space meshes ``pv (B, V, 3)``
    float64 with faces ``(F, 3)`` shared or ``(B, F, 3)`` (rows of -1 are padding), rasterized (one layer, no blur)
    at ``size``. Returns the fragments, the covered pixels ``(B, S, S)`` bool and, in their ``nonzero`` order, the
    covering faces' unit view-space normals ``(N, 3)`` float32, turned toward the camera (two-sided)."""
    depth = distance - pv[..., 2]
    if orthographic is not None:
        ndc = torch.stack([pv[..., 0] / orthographic, pv[..., 1] / orthographic, depth], -1).float()
    else:
        ndc = torch.stack([focal_length * pv[..., 0] / depth, focal_length * pv[..., 1] / depth, depth], -1).float()
    frag = rasterize(ndc, faces, size, layers=1, sigma=0.0)
    fi = frag.face_idx[..., 0]  # (B, S, S)
    covered = fi >= 0
    B = fi.shape[0]
    b_idx = torch.arange(B, device=fi.device)[:, None, None].expand(B, size, size)[covered]
    f_idx = fi[covered]
    tri = pv.float()[b_idx[:, None], faces[f_idx] if faces.dim() == 2 else faces[b_idx, f_idx]]  # (N, 3, 3)
    n = torch.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
    n = n / n.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    return frag, covered, torch.where(n[:, 2:3] < 0, -n, n)  # face the camera


def _lambert(color: Tensor, normals: Tensor) -> Tensor:
    """Lambertian shading ``(N, C)`` in [0, 1] of albedos ``color (N, C)`` with view-space unit ``normals (N, 3)``
    under :data:`LIGHTS` plus :data:`AMBIENT`."""
    light = torch.full_like(normals[:, 0], AMBIENT)
    for lx, ly, lz, intensity in LIGHTS:
        d = torch.tensor([lx, ly, lz], device=normals.device)
        light = light + intensity * (normals @ (d / d.norm())).clamp(min=0)
    return (color * light[:, None]).clamp(0, 1)


def _check_background_arg(background, op: str):
    if background is None or isinstance(background, Tensor):
        return background
    if isinstance(background, bool) or not isinstance(background, (Real, Sequence)) or isinstance(background, str):
        raise TypeError(f"{op}: argument 'background' must be None, a number, a colour (C,) or a tensor, "
                        f"got {type(background).__name__}")
    return background


class LayeredRenderer(torch.nn.Module):
    """UNICORN's textured mesh renderer: layered soft rasterization and front-to-back compositing.

    ``forward`` computes, for meshes with UV-mapped textures::

        ndc       = camera.project(verts, ...)                       (B, V, 3)
        fragments = rasterize(ndc, faces, image_size, layers, sigma) (B, H, W, L)
        uv        = interpolate(fragments, uvs)                      (B, H, W, L, 2)
        colors    = sample_texture(texture, uv): bilinear at (u mod 1, v)  (B, H, W, L, C)
        alpha     = layer_alpha(fragments, sigma, kind)              (B, H, W, L)
        image, mask = composite_layers(alpha, colors, background)

    With ``kind="exp"`` alpha is exactly 1 inside a face, so the interior of an opaque mesh shows
    exactly the front face's texture colour and ``mask`` is exactly 1 there. UVs are interpolated
    linearly in screen space (no perspective correction, as in UNICORN). No lighting.

    Args:
        camera: a :class:`~invrender.cameras.PerspectiveCamera` (default: ``PerspectiveCamera()``,
            fov 30 degrees at distance 2.732, ShapeNet-NMR's), a
            :class:`~invrender.cameras.WeakPerspectiveCamera`, or any object with a
            ``project(verts, rotation=..., translation=...)`` method returning NDC ``(B, V, 3)``.
        image_size: ``H`` (square) or ``(H, W)``; UNICORN uses 64.
        layers: faces kept per pixel, ``L >= 1`` (UNICORN: 25; 50 for ShapeNet).
        sigma: blur / opacity sharpness in squared NDC units (UNICORN: 1e-4); faces cover pixels
            up to the squared distance ``sigma * log(1e4 - 1)``.
        kind: ``"exp"`` (UNICORN: ``exp(-max(d, 0) / sigma)``) or ``"sigmoid"`` (SoftRas
            occupancy ``sigmoid(-d / sigma)``).
        background: default background: None (black), a number, a colour ``(C,)`` (a sequence or a
            tensor) or an image tensor broadcastable to ``(B, C, H, W)``. A tensor is registered
            as a buffer (moves with ``.to()``) and cast to the rendering dtype.
        cull_backfaces: drop faces seen from the back when rasterizing (default False, as UNICORN).
        texture_wrap: ``"circular"`` (default): the texture is periodic in ``u`` (the seam
            ``u = 0 ~ 1`` interpolates the last and first columns, so colours and gradients are
            continuous across it); ``"border"``: ``u`` clamps to the edge columns like ``v``
            (``grid_sample``'s ``padding_mode="border"``; the colour jumps at the seam). See
            :meth:`sample_texture`.
    """

    def __init__(self, camera=None, image_size: Union[int, Tuple[int, int]] = 64, layers: int = 25,
                 sigma: float = 1e-4, kind: str = "exp", background=None, cull_backfaces: bool = False,
                 texture_wrap: str = "circular"):
        super().__init__()
        op = "LayeredRenderer"
        camera = PerspectiveCamera() if camera is None else camera
        if not callable(getattr(camera, "project", None)):
            raise TypeError(f"{op}: argument 'camera' must have a 'project' method (e.g. a PerspectiveCamera or a "
                            f"WeakPerspectiveCamera), got {type(camera).__name__}")
        self.camera = camera
        self.image_size = _image_size(image_size, op)
        if isinstance(layers, bool) or not isinstance(layers, int):
            raise TypeError(f"{op}: argument 'layers' must be an int, got {type(layers).__name__}")
        if layers < 1:
            raise ValueError(f"{op}: argument 'layers' must be >= 1, got {layers}")
        self.layers = layers
        if isinstance(sigma, bool) or not isinstance(sigma, Real):
            raise TypeError(f"{op}: argument 'sigma' must be a number, got {type(sigma).__name__}")
        if not (math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"{op}: argument 'sigma' must be finite and positive, got {sigma}")
        self.sigma = float(sigma)
        if kind not in ("exp", "sigmoid"):
            raise ValueError(f"{op}: argument 'kind' must be \"exp\" or \"sigmoid\", got {kind!r}")
        self.kind = kind
        self.cull_backfaces = bool(cull_backfaces)
        if texture_wrap not in ("circular", "border"):
            raise ValueError(f"{op}: argument 'texture_wrap' must be \"circular\" or \"border\", got {texture_wrap!r}")
        self.texture_wrap = texture_wrap
        background = _check_background_arg(background, op)
        if isinstance(background, Tensor):
            self.register_buffer("background", background, persistent=False)
        else:
            self.background = background

    def extra_repr(self) -> str:
        return (f"camera={self.camera!r}, image_size={self.image_size}, layers={self.layers}, sigma={self.sigma}, "
                f"kind={self.kind!r}")

    def sample_texture(self, texture: Tensor, uv: Tensor) -> Tensor:
        """Bilinear texture samples at ``uv`` ``(B, ..., 2)``: ``(B, ..., C)``.

        ``u`` is wrapped into [0, 1) (``torch.remainder``) and sampled at ``grid x = 2u - 1``,
        ``v`` at ``grid y = 2v - 1`` (``grid_sample`` with ``align_corners=False``: texel
        ``(i, j)`` is centred at ``u = (j + 0.5) / Wt``, ``v = (i + 0.5) / Ht``). Out of range
        ``v`` clamps to the border row. With ``texture_wrap="circular"`` (default) the texture is
        periodic in ``u``: between the last and the first texel centres (``u`` within half a texel
        of the seam 0 ~ 1) the colour blends those two columns, so a mesh's colour is continuous
        across the seam of :func:`~invrender.mesh.spherical_uvs`. With ``"border"`` ``u`` clamps
        to the border columns too (then the colour jumps at the seam).
        """
        B = texture.shape[0]
        C, Wt = texture.shape[1], texture.shape[3]
        shape = uv.shape[:-1]
        u = torch.remainder(uv[..., 0], 1.0)
        if self.texture_wrap == "circular":
            # One column of the other side on each edge: texel j sits at padded column j + 1.
            texture = torch.cat([texture[..., -1:], texture, texture[..., :1]], dim=-1)
            u = (u * Wt + 1.0) / (Wt + 2)
        grid = torch.stack([2.0 * u - 1.0, 2.0 * uv[..., 1] - 1.0], dim=-1).reshape(B, 1, -1, 2)
        colors = Fn.grid_sample(texture, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return colors.reshape(B, C, -1).transpose(1, 2).reshape(*shape, C)

    def _sample_covered(self, texture: Tensor, uv: Tensor, face_idx: Tensor) -> Tensor:
        """:meth:`sample_texture` at the (pixel, layer) entries a face covers (``face_idx >= 0``; about 5% of
        them at K = 50 layers in UNICORN), 0 on the empty ones: each image's covered ``uv`` are packed (in
        order, padded to the largest count), sampled, and scattered back into zeros. An empty layer's colour
        is multiplied by its ``alpha = 0`` (with a zero gradient, :func:`layer_alpha`) in the compositing, so
        the image and every gradient are those of dense sampling. Dense under ``torch.compile`` (the packed
        size depends on the data) and when every entry is covered."""
        B, C = uv.shape[0], texture.shape[1]
        valid = (face_idx >= 0).reshape(B, -1)
        if torch.compiler.is_compiling() or valid.numel() == 0 or bool(valid.all()):
            return self.sample_texture(texture, uv)
        rows, cols = valid.nonzero(as_tuple=True)
        slots = (valid.cumsum(1) - 1)[rows, cols]  # position of each covered entry among its image's
        n = max(int(valid.sum(1).max()), 1)  # >= 1: the texture stays in the graph (a zero gradient)
        packed_uv = uv.new_zeros(B, n, 2).index_put((rows, slots), uv.reshape(B, -1, 2)[rows, cols])
        packed = self.sample_texture(texture, packed_uv)  # (B, n, C)
        colors = uv.new_zeros(B, valid.shape[1], C).index_put((rows, cols), packed[rows, slots])
        return colors.reshape(*uv.shape[:-1], C)

    def project(self, verts: Tensor, rotation: Optional[Tensor] = None, translation: Optional[Tensor] = None,
                scale: Optional[Tensor] = None) -> Tensor:
        """NDC vertices ``(B, V, 3)`` from the camera (see :meth:`forward` for the pose arguments)."""
        op = "LayeredRenderer"
        if isinstance(self.camera, WeakPerspectiveCamera):
            return self.camera.project(verts, scale=scale, translation=translation, rotation=rotation)
        if scale is not None:
            raise ValueError(f"{op}: argument 'scale' is only for a WeakPerspectiveCamera, the camera is "
                             f"{type(self.camera).__name__}")
        return self.camera.project(verts, rotation=rotation, translation=translation)

    def forward(self, verts: Tensor, faces: Tensor, uvs: Tensor, texture: Tensor, rotation: Optional[Tensor] = None,
                translation: Optional[Tensor] = None, background=None, scale=None) -> CompositeResult:
        """Renders textured meshes.

        Args:
            verts: ``(B, V, 3)`` float32/float64 object-space vertices.
            faces: ``(F, 3)`` int64, shared by the batch, counter-clockwise seen from outside.
            uvs: per-face-corner texture coordinates ``(F, 3, 2)`` or ``(B, F, 3, 2)`` (e.g.
                :func:`invrender.mesh.spherical_uvs`), same dtype as ``verts``: ``u`` to the right
                (wrapped into [0, 1) after interpolation, so values past 1 from a seam fix are
                fine), ``v`` down the texture, both nominally in [0, 1].
            texture: ``(B, C, Ht, Wt)`` UV texture, same dtype and device as ``verts``; sampled
                bilinearly (``align_corners=False``: texel ``(i, j)`` centred at
                ``u = (j + 0.5) / Wt``, ``v = (i + 0.5) / Ht``), clamped at the border.
            rotation: object-to-view rotation: ``(B, 3, 3)`` / ``(3, 3)``, or for a
                :class:`~invrender.cameras.WeakPerspectiveCamera` also a quaternion ``(B, 4)``
                ``(w, x, y, z)``; default identity.
            translation: perspective camera: view-space ``(B, 3)`` / ``(3,)`` added after the
                rotation; weak perspective: NDC ``(B, 2)`` / ``(2,)`` added after scaling. Default 0.
            background: overrides the module's: None (use the module's; black if it has none), a
                number, a colour ``(C,)`` or a tensor broadcastable to ``(B, C, H, W)``.
            scale: weak perspective only: ``(B,)``, ``(B, 1)`` or a number; default 1.

        Returns:
            :class:`~invrender.CompositeResult` ``(image (B, C, H, W), mask (B, 1, H, W))``,
            differentiable in ``verts``, ``uvs``, ``texture``, the pose tensors and a background
            tensor (not in which faces cover a pixel).
        """
        op = "LayeredRenderer"
        if not isinstance(verts, Tensor):
            raise TypeError(f"{op}: argument 'verts' must be a tensor (B, V, 3), got {type(verts).__name__}")
        if verts.dim() != 3 or verts.shape[-1] != 3:
            raise ValueError(f"{op}: argument 'verts' must have shape (B, V, 3), got {tuple(verts.shape)}")
        if not isinstance(faces, Tensor):
            raise TypeError(f"{op}: argument 'faces' must be a tensor (F, 3), got {type(faces).__name__}")
        if faces.dim() != 2 or faces.shape[1] != 3:
            raise ValueError(f"{op}: argument 'faces' must have shape (F, 3), got {tuple(faces.shape)}")
        B, F = verts.shape[0], faces.shape[0]
        if not isinstance(uvs, Tensor):
            raise TypeError(f"{op}: argument 'uvs' must be a tensor (F, 3, 2) or (B, F, 3, 2), "
                            f"got {type(uvs).__name__}")
        if uvs.dim() == 3:
            uvs = uvs.unsqueeze(0).expand(B, *uvs.shape)
        if uvs.dim() != 4 or tuple(uvs.shape[1:]) != (F, 3, 2) or uvs.shape[0] not in (1, B):
            raise ValueError(f"{op}: argument 'uvs' must have shape (F, 3, 2) or (B, F, 3, 2) with B = {B}, "
                             f"F = {F}, got {tuple(uvs.shape)}")
        uvs = uvs.expand(B, F, 3, 2)
        if uvs.dtype != verts.dtype:
            raise TypeError(f"{op}: argument 'uvs' has dtype {uvs.dtype} but 'verts' has {verts.dtype}; "
                            "they must match")
        if not isinstance(texture, Tensor):
            raise TypeError(f"{op}: argument 'texture' must be a tensor (B, C, Ht, Wt), got {type(texture).__name__}")
        if texture.dim() != 4 or texture.shape[0] != B or texture.shape[2] < 1 or texture.shape[3] < 1:
            raise ValueError(f"{op}: argument 'texture' must have shape (B, C, Ht, Wt) with B = {B} and Ht, Wt >= 1, "
                             f"got {tuple(texture.shape)}")
        if texture.dtype != verts.dtype:
            raise TypeError(f"{op}: argument 'texture' has dtype {texture.dtype} but 'verts' has {verts.dtype}; "
                            "they must match")
        if texture.device != verts.device or uvs.device != verts.device:
            raise ValueError(f"{op}: arguments 'texture' and 'uvs' must be on the device of 'verts' ({verts.device})")

        ndc = self.project(verts, rotation=rotation, translation=translation, scale=scale)
        fragments = _trim_layers(rasterize(ndc, faces, self.image_size, self.layers, self.sigma,
                                           cull_backfaces=self.cull_backfaces))
        uv = interpolate(fragments, uvs)  # (B, H, W, L, 2), 0 on empty layers
        colors = self._sample_covered(texture, uv, fragments.face_idx)  # (B, H, W, L, C), 0 on empty layers
        alpha = layer_alpha(fragments, self.sigma, self.kind)
        if background is None:
            background = self.background
            if isinstance(background, Tensor):
                background = background.to(dtype=verts.dtype, device=verts.device)
        else:
            background = _check_background_arg(background, op)
        return composite_layers(alpha, colors.contiguous(), background)


def _trim_layers(fragments: Fragments) -> Fragments:
    """``fragments`` cut to the most layers any pixel of the batch fills (at least 1). :func:`rasterize` fills
    each pixel's layers front to back, so the layers past that count are empty everywhere, and an empty layer
    composites as ``alpha = 0`` with a zero gradient (:func:`layer_alpha`): the image, the mask and every gradient
    are unchanged, while the per-layer work (interpolation, texture, alpha, compositing and their backward)
    shrinks with the layers in use (UNICORN's K = 50 is a cap that a deformed sphere rarely fills). Not under
    ``torch.compile`` (the count depends on the data)."""
    L = fragments.face_idx.shape[-1]
    if torch.compiler.is_compiling() or fragments.face_idx.numel() == 0 or L <= 1:
        return fragments
    used = max(int((fragments.face_idx >= 0).sum(-1).max()), 1)
    if used >= L:
        return fragments
    return Fragments(*(t[:, :, :, :used].contiguous() for t in fragments))


def face_pixel_centroids(fragments: Fragments, weights: Tensor, num_faces: int) -> Tuple[Tensor, Tensor]:
    """Per face, the weighted NDC centroid of the pixels that cover it, and the total weight.

    For each mesh ``b`` and face ``f``, over the pixels ``(i, j)`` and layers ``l`` with
    ``face_idx[b, i, j, l] == f``::

        total[b, f]     = sum w[b, i, j, l]
        centroid[b, f]  = sum w[b, i, j, l] (x_j, y_i) / total[b, f]

    with the pixel centres ``x_j = -1 + (2j + 1) / W``, ``y_i = 1 - (2i + 1) / H`` (x right, y up).
    UMR's texture-cycle loss (Li et al. 2020) compares these centroids with the faces' projected
    centres. Faces covering no pixel (or only with weight 0) get ``centroid = 0`` and ``total = 0``,
    with finite (zero) gradients. Memory is ``O(B (H W L + F))``: scatter-adds over ``(B, F)``, no
    dense face-by-pixel tensor.

    Args:
        fragments: :class:`invrender.Fragments` (only ``face_idx`` ``(B, H, W, L)`` int64 is read;
            -1 marks an empty layer, which is ignored).
        weights: ``(B, H, W, L)`` float32/float64 per-layer weights, e.g.
            :func:`invrender.layer_alpha` (occupancy) or the layer's contribution ``T_l alpha_l``.
        num_faces: ``F``, the number of faces of each mesh (every ``face_idx`` must be below it).

    Returns:
        ``centroids (B, F, 2)`` (x, y) in NDC and ``total (B, F)``, both of the dtype of
        ``weights``, differentiable in ``weights``.
    """
    op = "face_pixel_centroids"
    face_idx = getattr(fragments, "face_idx", None)
    if not isinstance(face_idx, Tensor):
        raise TypeError(f"{op}: argument 'fragments' must have a tensor attribute 'face_idx' (B, H, W, L), "
                        f"got {type(fragments).__name__}")
    if face_idx.dtype != torch.int64 or face_idx.dim() != 4:
        raise ValueError(f"{op}: argument 'fragments.face_idx' must be an int64 tensor (B, H, W, L), got "
                         f"{face_idx.dtype} {tuple(face_idx.shape)}")
    if not isinstance(weights, Tensor):
        raise TypeError(f"{op}: argument 'weights' must be a tensor (B, H, W, L), got {type(weights).__name__}")
    if not weights.is_floating_point():
        raise TypeError(f"{op}: argument 'weights' must be float32 or float64, got {weights.dtype}")
    if tuple(weights.shape) != tuple(face_idx.shape):
        raise ValueError(f"{op}: argument 'weights' must have the shape (B, H, W, L) = {tuple(face_idx.shape)} of "
                         f"'fragments.face_idx', got {tuple(weights.shape)}")
    if weights.device != face_idx.device:
        raise ValueError(f"{op}: argument 'weights' is on {weights.device} but the fragments are on {face_idx.device}")
    if isinstance(num_faces, bool) or not isinstance(num_faces, int):
        raise TypeError(f"{op}: argument 'num_faces' must be an int, got {type(num_faces).__name__}")
    if num_faces < 0:
        raise ValueError(f"{op}: argument 'num_faces' must be >= 0, got {num_faces}")
    if not torch.compiler.is_compiling() and face_idx.numel() and int(face_idx.max()) >= num_faces:
        raise ValueError(f"{op}: 'fragments.face_idx' holds face {int(face_idx.max())} but 'num_faces' is {num_faces}")
    B, H, W, L = face_idx.shape
    dtype, device = weights.dtype, weights.device
    if num_faces == 0:  # then every layer is empty
        return weights.new_zeros(B, 0, 2), weights.new_zeros(B, 0)
    x = (2 * torch.arange(W, dtype=dtype, device=device) + 1 - W) / W
    y = (H - 2 * torch.arange(H, dtype=dtype, device=device) - 1) / H
    xy = torch.stack(torch.meshgrid(y, x, indexing="ij")[::-1], dim=-1)  # (H, W, 2): (x_j, y_i)
    valid = face_idx >= 0
    w = torch.where(valid, weights, torch.zeros((), dtype=dtype, device=device))  # (B, H, W, L)
    # Row b * F + f of a flat (B F) table; empty layers add weight 0 to row b * F (harmless).
    rows = (face_idx.clamp(min=0) + torch.arange(B, device=device).reshape(B, 1, 1, 1) * num_faces).reshape(-1)
    src = torch.cat([w.unsqueeze(-1) * xy.reshape(1, H, W, 1, 2), w.unsqueeze(-1)], dim=-1).reshape(-1, 3)
    acc = torch.zeros(B * num_faces, 3, dtype=dtype, device=device).index_add(0, rows, src)
    acc = acc.reshape(B, num_faces, 3)
    total = acc[..., 2]
    positive = total > 0
    denom = torch.where(positive, total, torch.ones((), dtype=dtype, device=device))
    centroids = torch.where(positive.unsqueeze(-1), acc[..., :2] / denom.unsqueeze(-1),
                            torch.zeros((), dtype=dtype, device=device))
    return centroids, total
