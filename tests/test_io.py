"""invrender.io: marching cubes conventions, mesh export round trips, images, GIFs, turntables."""

import math

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image

import invrender
from invrender import io as IO

from .optional import optional_import, requires

trimesh = optional_import("trimesh")
needs_trimesh = requires("trimesh")  # invrender.io.save_mesh writes through trimesh


def grid_coordinates(R, dtype=torch.float64):
    """(x, y, z) of the voxel centres of an (R, R, R) grid in the library layout, each (R, R, R)."""
    c = -1 + (2 * torch.arange(R, dtype=dtype) + 1) / R
    d, h, w = torch.meshgrid(torch.arange(R), torch.arange(R), torch.arange(R), indexing="ij")
    return c[w], -c[h], -c[d]  # w along +x, h along -y, d along -z


def ball(R, center, radius):
    x, y, z = grid_coordinates(R)
    return (((x - center[0]) ** 2 + (y - center[1]) ** 2 + (z - center[2]) ** 2) <= radius ** 2).double()


def as_trimesh(verts, faces):
    return trimesh.Trimesh(verts.numpy(), faces.numpy(), process=False)


# ------------------------------------------------------------------------------------------------
# marching cubes


def test_marching_cubes_sphere_is_closed_outward_and_has_the_right_volume():
    occ = torch.stack([ball(32, (0, 0, 0), 0.7), ball(32, (0.1, -0.2, 0.05), 0.5)])
    meshes = IO.marching_cubes(occ)
    assert len(meshes) == 2
    for (verts, faces), r, c in zip(meshes, (0.7, 0.5), ((0, 0, 0), (0.1, -0.2, 0.05))):
        assert verts.dtype == torch.float64 and faces.dtype == torch.int64
        m = as_trimesh(verts, faces)
        assert m.is_watertight
        analytic = 4 / 3 * math.pi * r ** 3
        assert m.volume > 0  # outward normals: positive signed volume
        assert abs(m.volume - analytic) < 0.03 * analytic, (m.volume, analytic)
        dist = (verts - torch.tensor(c, dtype=torch.float64)).norm(dim=1)
        assert (dist - r).abs().max() < 2 * 2 / 32  # within a voxel or two of the sphere
        # Face normals point away from the centre.
        centroid = m.triangles_center - np.asarray(c)
        assert (np.einsum("ij,ij->i", m.face_normals, centroid) > 0).mean() > 0.99


def test_marching_cubes_orientation_conventions():
    R = 16
    occ = torch.zeros(1, R, R, R)
    occ[0, 2:5, 3:6, 11:14] = 1  # d < R/2 (front, +z), h < R/2 (top, +y), w > R/2 (right, +x)
    (verts, faces), = IO.marching_cubes(occ)
    assert (verts[:, 0] > 0).all() and (verts[:, 1] > 0).all() and (verts[:, 2] > 0).all()
    # Exact extents: the surface lies half way between the last occupied centre and the next one,
    # i.e. on the faces of the occupied voxels: index i spans [-1 + i 2/R, -1 + (i + 1) 2/R] along
    # +x for w, and the mirrored ranges along y (h) and z (d).
    torch.testing.assert_close(verts.amin(0), torch.tensor([-1 + 11 * 2 / R, 1 - 6 * 2 / R, 1 - 5 * 2 / R]))
    torch.testing.assert_close(verts.amax(0), torch.tensor([-1 + 14 * 2 / R, 1 - 3 * 2 / R, 1 - 2 * 2 / R]))
    assert as_trimesh(verts.double(), faces).volume > 0


def test_marching_cubes_border_is_closed_and_bounds_scale():
    full = torch.ones(1, 1, 6, 6, 6)  # (B, 1, D, H, W) accepted
    (verts, faces), = IO.marching_cubes(full, bounds=2.0)
    m = as_trimesh(verts.double(), faces)
    assert m.is_watertight and m.volume > 0
    torch.testing.assert_close(verts.amin(0), torch.full((3,), -2.0))
    torch.testing.assert_close(verts.amax(0), torch.full((3,), 2.0))


def test_marching_cubes_empty_grid_and_bad_inputs():
    (verts, faces), = IO.marching_cubes(torch.zeros(1, 4, 4, 4))
    assert verts.shape == (0, 3) and faces.shape == (0, 3) and faces.dtype == torch.int64
    with pytest.raises(ValueError, match="voxels"):
        IO.marching_cubes(torch.zeros(4, 4, 4))
    with pytest.raises(TypeError, match="voxels"):
        IO.marching_cubes(np.zeros((1, 4, 4, 4)))
    with pytest.raises(ValueError, match="bounds"):
        IO.marching_cubes(torch.zeros(1, 4, 4, 4), bounds=0)


def test_marching_cubes_matches_the_voxel_projection_layout():
    # The identity projection of the grid is the image: the mesh's silhouette seen from +z (x right,
    # y up) must cover the projected mask's pixels at the same places.
    R = 16
    occ = torch.zeros(1, R, R, R)
    occ[0, 4:12, 1:5, 9:15] = 1
    (verts, _), = IO.marching_cubes(occ)
    img = invrender.project_voxels(occ[:, None].double(), torch.eye(3, dtype=torch.float64)[None])[0, 0]
    rows, cols = torch.nonzero(img > 0.5, as_tuple=True)
    x_px = -1 + (2 * cols.double() + 1) / R
    y_px = 1 - (2 * rows.double() + 1) / R
    assert x_px.min() > verts[:, 0].min() and x_px.max() < verts[:, 0].max()
    assert y_px.min() > verts[:, 1].min() and y_px.max() < verts[:, 1].max()


# ------------------------------------------------------------------------------------------------
# save_mesh


@pytest.fixture(scope="module")
def sphere_mesh():
    verts, faces = invrender.mesh.icosphere(2)
    return verts.double(), faces


@needs_trimesh
@pytest.mark.parametrize("ext", ["obj", "ply", "glb"])
def test_save_mesh_round_trip(tmp_path, sphere_mesh, ext):
    verts, faces = sphere_mesh
    path = tmp_path / "deep" / "dir" / f"mesh.{ext}"
    IO.save_mesh(path, verts, faces)
    m = trimesh.load(path, process=False, force="mesh")
    assert m.vertices.shape == tuple(verts.shape) and m.faces.shape == tuple(faces.shape)
    np.testing.assert_allclose(m.vertices, verts.numpy(), atol=1e-6)
    np.testing.assert_array_equal(m.faces, faces.numpy())
    assert m.volume > 0  # counter-clockwise faces kept


@needs_trimesh
@pytest.mark.parametrize("ext", ["obj", "ply", "glb"])
def test_save_mesh_with_texture(tmp_path, sphere_mesh, ext):
    verts, faces = sphere_mesh
    uvs = torch.rand(len(verts), 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    texture = torch.zeros(3, 8, 16)
    texture[0] = 1.0  # red
    texture[2, 4:] = 1.0  # bottom half magenta
    path = tmp_path / f"tex.{ext}"
    IO.save_mesh(path, verts, faces, uvs=uvs, texture=texture)
    m = trimesh.load(path, process=False, force="mesh")
    assert m.vertices.shape == tuple(verts.shape) and m.faces.shape == tuple(faces.shape)
    if ext == "ply":  # texture baked into vertex colours: red top half (v < 0.5), magenta bottom
        colors = np.asarray(m.visual.vertex_colors)[:, :3]
        far = (uvs[:, 1] - 0.5).abs().numpy() > 0.1
        want = np.where((uvs[:, 1].numpy() < 0.5)[:, None], [255, 0, 0], [255, 0, 255])
        np.testing.assert_array_equal(colors[far], want[far])
    else:
        assert isinstance(m.visual, trimesh.visual.TextureVisuals)
        np.testing.assert_allclose(m.visual.uv[:, 0], uvs[:, 0].numpy(), atol=1e-6)
        np.testing.assert_allclose(m.visual.uv[:, 1], 1 - uvs[:, 1].numpy(), atol=1e-6)  # files: v up
        image = m.visual.material.image if ext == "obj" else m.visual.material.baseColorTexture
        pixels = np.asarray(image.convert("RGB"))
        assert pixels.shape == (8, 16, 3)
        np.testing.assert_array_equal(pixels[0, 0], [255, 0, 0])
        np.testing.assert_array_equal(pixels[7, 0], [255, 0, 255])


@needs_trimesh
def test_save_mesh_per_corner_uvs_split_vertices(tmp_path, sphere_mesh):
    verts, faces = sphere_mesh
    uvs = invrender.mesh.spherical_uvs(verts, faces)  # (F, 3, 2)
    for ext in ("obj", "glb"):
        path = tmp_path / f"corners.{ext}"
        IO.save_mesh(path, verts, faces, uvs=uvs, texture=torch.rand(3, 4, 4))
        m = trimesh.load(path, process=False, force="mesh")
        assert m.vertices.shape == (3 * len(faces), 3) and m.faces.shape == tuple(faces.shape)
        np.testing.assert_allclose(m.vertices[m.faces], verts[faces].numpy(), atol=1e-6)
    # Two OBJs in one folder keep their own materials.
    IO.save_mesh(tmp_path / "other.obj", verts, faces, uvs=uvs, texture=torch.zeros(3, 4, 4))
    assert (tmp_path / "corners.mtl").exists() and (tmp_path / "other.mtl").exists()


@needs_trimesh
def test_save_mesh_bad_inputs(tmp_path, sphere_mesh):
    verts, faces = sphere_mesh
    with pytest.raises(ValueError, match="path.*\\.obj"):
        IO.save_mesh(tmp_path / "mesh.stl", verts, faces)
    with pytest.raises(ValueError, match="uvs"):
        IO.save_mesh(tmp_path / "m.obj", verts, faces, texture=torch.rand(3, 4, 4))
    with pytest.raises(ValueError, match="uvs"):
        IO.save_mesh(tmp_path / "m.obj", verts, faces, uvs=torch.rand(5, 2))
    with pytest.raises(ValueError, match="faces"):
        IO.save_mesh(tmp_path / "m.obj", verts, faces + len(verts))
    with pytest.raises(ValueError, match="texture"):
        IO.save_mesh(tmp_path / "m.obj", verts, faces, uvs=torch.rand(len(verts), 2), texture=torch.rand(2, 4, 4))


# ------------------------------------------------------------------------------------------------
# images and GIFs


def test_save_image_round_trip(tmp_path):
    rgb = torch.rand(3, 5, 7)
    IO.save_image(tmp_path / "a" / "rgb.png", rgb)
    back = np.asarray(Image.open(tmp_path / "a" / "rgb.png"))
    assert back.shape == (5, 7, 3) and back.dtype == np.uint8
    np.testing.assert_array_equal(back, np.rint(rgb.permute(1, 2, 0).numpy() * 255).astype(np.uint8))
    grey = torch.linspace(-0.5, 1.5, 12).reshape(3, 4)  # clamped
    IO.save_image(tmp_path / "grey.png", grey)
    back = iio.imread(tmp_path / "grey.png")
    assert back.shape == (3, 4)
    np.testing.assert_array_equal(back, np.rint(grey.clamp(0, 1).numpy() * 255).astype(np.uint8))
    IO.save_image(tmp_path / "rgba.png", torch.rand(4, 3, 2))
    assert iio.imread(tmp_path / "rgba.png").shape == (3, 2, 4)
    IO.save_image(tmp_path / "one.png", torch.rand(1, 3, 2))
    assert iio.imread(tmp_path / "one.png").shape == (3, 2)
    with pytest.raises(ValueError, match="image"):
        IO.save_image(tmp_path / "bad.png", torch.rand(2, 3, 4))


def test_image_grid_layout_is_exact():
    images = torch.arange(1, 6, dtype=torch.float32)[:, None, None, None].expand(5, 1, 2, 3)
    grid = IO.image_grid(images, nrow=3, padding=1)
    # 3 columns, 2 rows: height 2 (2 + 1) + 1 = 7, width 3 (3 + 1) + 1 = 13.
    assert grid.shape == (1, 7, 13)
    want = torch.zeros(7, 13)
    for k in range(5):
        r, c = divmod(k, 3)
        want[1 + 3 * r:3 + 3 * r, 1 + 4 * c:4 + 4 * c] = k + 1
    torch.testing.assert_close(grid[0], want)
    # Fewer images than nrow: one row of N; a list works; padding 0 concatenates.
    g2 = IO.image_grid([torch.zeros(3, 2, 2), torch.ones(3, 2, 2)], nrow=8, padding=0)
    torch.testing.assert_close(g2, torch.cat([torch.zeros(3, 2, 2), torch.ones(3, 2, 2)], dim=2))
    with pytest.raises(ValueError, match="nrow"):
        IO.image_grid(images, nrow=0)


def test_save_gif_round_trip(tmp_path):
    colors = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    frames = colors[:, :, None, None].expand(4, 3, 6, 5).clone()
    frames[:, :, 0, 0] = 0.0  # a black pixel in each frame
    path = tmp_path / "g" / "anim.gif"
    IO.save_gif(path, frames, fps=10)
    back = iio.imread(path, index=None)
    assert back.shape[:3] == (4, 6, 5)
    np.testing.assert_array_equal(back[..., :3], (frames.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8))
    with Image.open(path) as im:
        assert im.n_frames == 4 and im.info.get("duration") == 100 and im.info.get("loop") == 0
    IO.save_gif(tmp_path / "list.gif", list(frames[:2, :1]), fps=12)  # grey frames as a list
    assert iio.imread(tmp_path / "list.gif", index=None).shape[:3] == (2, 6, 5)
    with pytest.raises(ValueError, match="fps"):
        IO.save_gif(tmp_path / "x.gif", frames, fps=0)


def test_turntable_calls_render_fn_with_the_orbit_rotations():
    calls = []

    def render(rotation):
        calls.append(rotation.clone())
        return torch.full((1, 3, 4, 5), float(len(calls)))

    frames = IO.turntable(render, num_frames=6, elevation=0.3)
    assert frames.shape == (6, 3, 4, 5)
    torch.testing.assert_close(frames[:, 0, 0, 0], torch.arange(1.0, 7.0))
    assert len(calls) == 6 and all(c.shape == (1, 3, 3) for c in calls)
    for k, rot in enumerate(calls):
        azimuth = 2 * math.pi * k / 6
        torch.testing.assert_close(rot, invrender.rotation_matrix(azimuth, 0.3))
        # Independent check of the azimuth: the camera's backward axis (row 2 of R) in object
        # coordinates is (sin az cos el, sin el, cos az cos el).
        back = torch.tensor([math.sin(azimuth) * math.cos(0.3), math.sin(0.3), math.cos(azimuth) * math.cos(0.3)])
        torch.testing.assert_close(rot[0, 2], back, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="num_frames"):
        IO.turntable(render, num_frames=0)
