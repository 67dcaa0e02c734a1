"""Input/output: meshes from voxel grids (marching cubes), mesh export, images, GIFs, turntables.

Conventions are invrender's (see the README): object space +x right, +y up, +z toward the
canonical camera; voxel grids indexed ``(d, h, w)`` with ``w`` along +x, ``h`` along -y (``h = 0``
at the top) and ``d`` along -z (``d = 0`` at the front, +z); faces int64 ``(F, 3)``
counter-clockwise seen from outside; images ``(C, H, W)`` floats in [0, 1], row 0 at the top;
texture coordinates ``u`` to the right and ``v`` down the texture (``v = 0`` is the top row).

Export goes through trimesh (OBJ, PLY, GLB), images through Pillow and GIFs through imageio.
These functions are for inspection and evaluation: nothing here is differentiable.
"""

import math
import os
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

__all__ = ["image_grid", "marching_cubes", "save_gif", "save_image", "save_mesh", "turntable"]

_MESH_FORMATS = (".obj", ".ply", ".glb")


def _numpy(value, name: str, op: str) -> np.ndarray:
    if isinstance(value, Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value
    raise TypeError(f"{op}: argument '{name}' must be a tensor or a numpy array, got {type(value).__name__}")


def _makedirs(path) -> str:
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    return path


# ------------------------------------------------------------------------------------------------
# marching cubes


def marching_cubes(voxels: Tensor, level: float = 0.5, bounds: float = 1.0) -> List[Tuple[Tensor, Tensor]]:
    """Triangle meshes of the ``level`` iso-surface of each grid of a batch (scikit-image).

    The grids use invrender's layout: index ``(d, h, w)`` over ``[-bounds, bounds]^3`` with voxel
    centres at ``-bounds + (2i + 1) bounds / N``, ``w`` along +x, ``h`` along -y (``h = 0`` at the
    top) and ``d`` along -z (``d = 0`` at the front, at +z). The inside is where values exceed
    ``level`` (occupancies, densities; negate a signed distance that is negative inside). Each grid
    is padded by one empty voxel (value 0, or ``level - 1`` when ``level <= 0``) so that shapes
    touching the border are closed; their surface then lies between the last voxel centre and the
    cube's face. Faces are counter-clockwise seen from outside (outward normals, positive volume).

    Args:
        voxels: ``(B, D, H, W)`` or ``(B, 1, D, H, W)`` float (or bool) grids; ``R^3`` in the usual case.
        level: iso-value (0.5 for occupancies in [0, 1]).
        bounds: half-extent of the cube the grid spans.

    Returns:
        A list of ``B`` pairs ``(verts (V, 3), faces (F, 3) int64)`` on the device of ``voxels``,
        vertices in the dtype of ``voxels`` (float32 for non-float grids). A grid with no value
        above ``level`` gives ``V = F = 0``.
    """
    from skimage import measure

    op = "marching_cubes"
    if not isinstance(voxels, Tensor):
        raise TypeError(f"{op}: argument 'voxels' must be a tensor (B, R, R, R), got {type(voxels).__name__}")
    if voxels.dim() == 5 and voxels.shape[1] == 1:
        voxels = voxels[:, 0]
    if voxels.dim() != 4:
        raise ValueError(f"{op}: argument 'voxels' must be (B, R, R, R) or (B, 1, R, R, R), got shape {tuple(voxels.shape)}")
    if min(voxels.shape[1:]) < 1:
        raise ValueError(f"{op}: argument 'voxels' must have a non-empty grid, got shape {tuple(voxels.shape)}")
    if not isinstance(level, (int, float)) or isinstance(level, bool) or not math.isfinite(level):
        raise ValueError(f"{op}: argument 'level' must be a finite number, got {level!r}")
    if not isinstance(bounds, (int, float)) or isinstance(bounds, bool) or not bounds > 0:
        raise ValueError(f"{op}: argument 'bounds' must be a positive number, got {bounds!r}")
    dtype = voxels.dtype if voxels.is_floating_point() else torch.float32
    device = voxels.device
    grids = voxels.detach().to(torch.float64).cpu().numpy()
    D, H, W = grids.shape[1:]
    pad_value = 0.0 if level > 0 else level - 1.0
    out = []
    for grid in grids:
        if not np.isfinite(grid).all():
            raise ValueError(f"{op}: argument 'voxels' contains NaN or infinite values")
        if not (grid > level).any():
            out.append((torch.zeros(0, 3, dtype=dtype, device=device), torch.zeros(0, 3, dtype=torch.int64, device=device)))
            continue
        padded = np.pad(grid, 1, mode="constant", constant_values=pad_value)
        v, f, _, _ = measure.marching_cubes(padded, level=level, gradient_direction="descent")
        # Padded index i_p sits at -bounds + (2 i_p - 1) bounds / N (one voxel before index 0).
        dp, hp, wp = v[:, 0], v[:, 1], v[:, 2]
        x = -bounds + (2 * wp - 1) * bounds / W
        y = bounds - (2 * hp - 1) * bounds / H
        z = bounds - (2 * dp - 1) * bounds / D
        verts = np.stack([x, y, z], axis=1)
        faces = f.astype(np.int64)
        if _signed_volume(verts, faces) < 0:
            faces = faces[:, [0, 2, 1]]
        out.append((torch.from_numpy(verts).to(device=device, dtype=dtype),
                    torch.from_numpy(np.ascontiguousarray(faces)).to(device)))
    return out


def _signed_volume(verts: np.ndarray, faces: np.ndarray) -> float:
    a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


# ------------------------------------------------------------------------------------------------
# mesh export


def _texture_image(texture, op: str):
    from PIL import Image

    tex = _numpy(texture, "texture", op)
    if tex.ndim == 2:
        tex = tex[None]
    if tex.ndim != 3 or tex.shape[0] not in (1, 3, 4):
        raise ValueError(f"{op}: argument 'texture' must be (C, H, W) with C in (1, 3, 4), got shape {tex.shape}")
    return Image.fromarray(_to_uint8(tex.transpose(1, 2, 0)).squeeze(-1) if tex.shape[0] == 1
                           else _to_uint8(tex.transpose(1, 2, 0)))


def save_mesh(path, verts, faces, uvs=None, texture=None) -> None:
    """Write a triangle mesh as OBJ, PLY or GLB (chosen by the extension) with trimesh.

    Args:
        path: output file; its extension (``.obj``, ``.ply``, ``.glb``, any case) picks the format.
            Parent directories are created. An OBJ with UVs also writes ``<stem>.mtl`` (and with a
            texture, the texture image ``<stem>.png``) next to it.
        verts: ``(V, 3)`` float vertices (tensor or numpy), or ``(1, V, 3)``.
        faces: ``(F, 3)`` integer faces, counter-clockwise seen from outside, or ``(1, F, 3)``.
        uvs: optional texture coordinates in invrender's convention (``u`` right, ``v`` down, as
            :func:`invrender.mesh.spherical_uvs` gives): per vertex ``(V, 2)`` or per face corner
            ``(F, 3, 2)``. Per-corner UVs split the vertices (``3 F`` vertices, one per corner).
            Files get the usual ``v`` up (``1 - v``); ``u`` is kept (``u >= 1`` repeats the
            texture, which glTF and OBJ viewers do by default).
        texture: optional ``(C, H, W)`` float image in [0, 1] (C = 1, 3 or 4), row 0 at the top;
            requires ``uvs``. PLY has no texture images: there the texture is sampled at the
            vertices' UVs into vertex colours.

    Raises:
        ValueError: for an unknown extension, bad shapes, or a texture without ``uvs``.
    """
    import trimesh

    op = "save_mesh"
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in _MESH_FORMATS:
        raise ValueError(f"{op}: argument 'path' must end with one of {', '.join(_MESH_FORMATS)}, got {path!r}")
    v = _numpy(verts, "verts", op)
    f = _numpy(faces, "faces", op)
    if v.ndim == 3 and v.shape[0] == 1:
        v = v[0]
    if f.ndim == 3 and f.shape[0] == 1:
        f = f[0]
    if v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f"{op}: argument 'verts' must be (V, 3), got shape {v.shape}")
    if f.ndim != 2 or f.shape[1] != 3 or np.issubdtype(f.dtype, np.floating):
        raise ValueError(f"{op}: argument 'faces' must be an integer (F, 3) array, got shape {f.shape} {f.dtype}")
    f = f.astype(np.int64)
    if f.size and (f.min() < 0 or f.max() >= len(v)):
        raise ValueError(f"{op}: argument 'faces' has indices outside [0, {len(v)})")
    v = v.astype(np.float64)
    if texture is not None and uvs is None:
        raise ValueError(f"{op}: argument 'texture' needs 'uvs' (texture coordinates)")

    visual = None
    if uvs is not None:
        uv = _numpy(uvs, "uvs", op).astype(np.float64)
        if uv.shape == (len(f), 3, 2):
            v = v[f].reshape(-1, 3)
            f = np.arange(3 * len(f), dtype=np.int64).reshape(-1, 3)
            uv = uv.reshape(-1, 2)
        elif uv.shape != (len(v), 2):
            raise ValueError(f"{op}: argument 'uvs' must be (V, 2) = ({len(v)}, 2) per vertex or (F, 3, 2) = "
                             f"({len(f)}, 3, 2) per corner, got shape {uv.shape}")
        uv = np.stack([uv[:, 0], 1.0 - uv[:, 1]], axis=1)
        image = _texture_image(texture, op) if texture is not None else None
        # Material (and texture file) named after the file, so meshes saved side by side keep theirs.
        name = os.path.splitext(os.path.basename(path))[0] or "material"
        material = trimesh.visual.material.SimpleMaterial(image=image, name=name)
        visual = trimesh.visual.TextureVisuals(uv=uv, material=material)

    mesh = trimesh.Trimesh(vertices=v, faces=f, visual=visual, process=False)
    if ext == ".ply" and texture is not None:
        mesh.visual = mesh.visual.to_color()  # PLY: texture baked into vertex colours
    _makedirs(path)
    if ext == ".obj":
        # trimesh writes the material (<stem>.mtl) and the texture next to the OBJ.
        mesh.export(path, file_type="obj", include_texture=uvs is not None,
                    mtl_name=os.path.splitext(os.path.basename(path))[0] + ".mtl")
    else:
        mesh.export(path, file_type=ext[1:])


# ------------------------------------------------------------------------------------------------
# images


def _to_uint8(array: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.nan_to_num(array.astype(np.float64)) * 255.0), 0, 255).astype(np.uint8)


def _chw(image, name: str, op: str) -> np.ndarray:
    """(C, H, W) or (H, W) float image -> (H, W) or (H, W, C) uint8."""
    a = _numpy(image, name, op)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 2:
        return _to_uint8(a)
    if a.ndim != 3 or a.shape[0] not in (1, 3, 4):
        raise ValueError(f"{op}: argument '{name}' must be (C, H, W) with C in (1, 3, 4) or (H, W), got shape {a.shape}")
    a = a.transpose(1, 2, 0)
    return _to_uint8(a[..., 0] if a.shape[2] == 1 else a)


def save_image(path, image) -> None:
    """Save a float image in [0, 1] (clamped, rounded to 8 bits) with Pillow, PNG by default.

    Args:
        path: output file (the extension picks the format; ``.png`` keeps the 8-bit values
            exactly). Parent directories are created.
        image: ``(C, H, W)`` with C = 1 (grey), 3 (RGB) or 4 (RGBA), ``(1, C, H, W)`` or ``(H, W)``;
            tensor or numpy.
    """
    from PIL import Image

    array = _chw(image, "image", "save_image")
    path = _makedirs(path)
    Image.fromarray(array).save(path)


def image_grid(images, nrow: int = 8, padding: int = 2, pad_value: float = 0.0) -> Tensor:
    """Tile images into one grid image (as ``torchvision.utils.make_grid``).

    Image ``k`` goes to row ``k // ncol`` and column ``k % ncol`` with ``ncol = min(nrow, N)``
    columns and ``ceil(N / ncol)`` rows; ``padding`` pixels of ``pad_value`` separate the tiles and
    surround the grid.

    Args:
        images: ``(N, C, H, W)`` tensor or a sequence of ``(C, H, W)`` tensors of one shape.
        nrow: images per row.
        padding: border width in pixels.
        pad_value: value of the borders (and of empty cells of the last row).

    Returns:
        ``(C, rows (H + padding) + padding, ncol (W + padding) + padding)`` tensor of the images'
        dtype and device.
    """
    op = "image_grid"
    if isinstance(images, (list, tuple)):
        if not images or not all(isinstance(t, Tensor) for t in images):
            raise ValueError(f"{op}: argument 'images' must be a non-empty list of (C, H, W) tensors")
        if len({tuple(t.shape) for t in images}) != 1:
            raise ValueError(f"{op}: argument 'images' must hold images of one shape, got "
                             f"{sorted({tuple(t.shape) for t in images})}")
        images = torch.stack(list(images))
    if not isinstance(images, Tensor):
        raise TypeError(f"{op}: argument 'images' must be a tensor (N, C, H, W), got {type(images).__name__}")
    if images.dim() == 3:
        images = images[None]
    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"{op}: argument 'images' must be (N, C, H, W) with N >= 1, got shape {tuple(images.shape)}")
    if not isinstance(nrow, int) or nrow < 1:
        raise ValueError(f"{op}: argument 'nrow' must be a positive int, got {nrow!r}")
    if not isinstance(padding, int) or padding < 0:
        raise ValueError(f"{op}: argument 'padding' must be a non-negative int, got {padding!r}")
    N, C, H, W = images.shape
    ncol = min(nrow, N)
    rows = math.ceil(N / ncol)
    grid = images.new_full((C, rows * (H + padding) + padding, ncol * (W + padding) + padding), pad_value)
    for k in range(N):
        r, c = divmod(k, ncol)
        top, left = r * (H + padding) + padding, c * (W + padding) + padding
        grid[:, top:top + H, left:left + W] = images[k]
    return grid


def save_gif(path, frames, fps: float = 12) -> None:
    """Save an animated GIF (looping forever) with imageio.

    Args:
        path: output ``.gif`` file; parent directories are created.
        frames: ``(N, C, H, W)`` floats in [0, 1] (C = 1, 3 or 4), or a sequence of ``(C, H, W)``
            frames; rounded to 8 bits (GIF stores at most 256 colours per frame).
        fps: frames per second (GIF delays are whole hundredths of a second).
    """
    import imageio.v3 as iio

    op = "save_gif"
    if isinstance(frames, (list, tuple)):
        if not frames:
            raise ValueError(f"{op}: argument 'frames' must not be empty")
        arrays = [_chw(fr, "frames", op) for fr in frames]
    else:
        a = _numpy(frames, "frames", op)
        if a.ndim != 4 or a.shape[0] == 0:
            raise ValueError(f"{op}: argument 'frames' must be (N, C, H, W) with N >= 1, got shape {a.shape}")
        arrays = [_chw(fr, "frames", op) for fr in a]
    if len({x.shape for x in arrays}) != 1:
        raise ValueError(f"{op}: argument 'frames' must hold frames of one shape")
    if not isinstance(fps, (int, float)) or isinstance(fps, bool) or not fps > 0:
        raise ValueError(f"{op}: argument 'fps' must be a positive number, got {fps!r}")
    path = _makedirs(path)
    iio.imwrite(path, np.stack(arrays), extension=".gif", duration=1000.0 / fps, loop=0)


def turntable(render_fn: Callable[[Tensor], Tensor], num_frames: int = 24, elevation: float = 0.5,
              dtype: Optional[torch.dtype] = None, device=None) -> Tensor:
    """Frames of a camera orbiting the object: one full turn of azimuth at a fixed elevation.

    Frame ``k`` is ``render_fn(invrender.rotation_matrix(2 pi k / num_frames, elevation))``: the
    azimuths ``0, 2 pi / N, ..., 2 pi (N - 1) / N`` (radians; the camera turns about +y from +z
    toward +x), so the frames loop seamlessly. Rendering runs under ``torch.no_grad()``.

    Args:
        render_fn: called with a rotation ``(1, 3, 3)`` (object to view); returns an image
            ``(1, C, H, W)`` (or ``(C, H, W)``).
        num_frames: number of frames ``N``.
        elevation: camera elevation in radians (0.5 rad is about 29 degrees above the equator).
        dtype, device: of the rotations (default: the default dtype, CPU).

    Returns:
        ``(N, C, H, W)`` frames, ready for :func:`save_gif` or :func:`image_grid`.
    """
    from .ops import rotation_matrix

    op = "turntable"
    if not callable(render_fn):
        raise TypeError(f"{op}: argument 'render_fn' must be callable, got {type(render_fn).__name__}")
    if not isinstance(num_frames, int) or isinstance(num_frames, bool) or num_frames < 1:
        raise ValueError(f"{op}: argument 'num_frames' must be a positive int, got {num_frames!r}")
    dtype = dtype or torch.get_default_dtype()
    frames = []
    with torch.no_grad():
        for k in range(num_frames):
            azimuth = torch.tensor(2 * math.pi * k / num_frames, dtype=dtype, device=device)
            rotation = rotation_matrix(azimuth, torch.tensor(float(elevation), dtype=dtype, device=device))
            image = render_fn(rotation.reshape(1, 3, 3))
            if not isinstance(image, Tensor):
                raise TypeError(f"{op}: 'render_fn' must return a tensor (1, C, H, W), got {type(image).__name__}")
            if image.dim() == 3:
                image = image[None]
            if image.dim() != 4 or image.shape[0] != 1:
                raise ValueError(f"{op}: 'render_fn' must return an image (1, C, H, W), got shape {tuple(image.shape)}")
            frames.append(image)
    return torch.cat(frames)
