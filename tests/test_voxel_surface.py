"""invrender.mesh.voxel_surface and invrender.renderers.render_voxel_surface (IG-GAN's "off-the-shelf"
renderer). Oracles: closed forms for cubes, blocks and L-shapes; trimesh (watertightness, volume, and
numpy ray casting of the same surface for the renders); render_shaded / ShadedViews for the shading."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as Fn
from hypothesis import given, settings
from hypothesis import strategies as st

import invrender
from invrender.data import ShadedViews
from invrender.mesh import face_areas, face_normals, voxel_surface, voxelize
from invrender.renderers import AMBIENT, LIGHTS, render_shaded, render_voxel_surface, sample_thresholds

from .optional import optional_import

trimesh = optional_import("trimesh")


def _tm(verts, faces):
    return trimesh.Trimesh(verts.double().numpy(), faces.numpy(), process=False)


def _blobby(batch, n, seed=0, k=3):
    """Smooth random occupancies in [0, 1] (blobs at threshold 0.5), ``(B, 1, n, n, n)``."""
    g = torch.Generator().manual_seed(seed)
    r = Fn.avg_pool3d(torch.rand(batch, 1, n, n, n, generator=g), k, 1, k // 2, count_include_pad=False)
    lo, hi = r.amin((2, 3, 4), keepdim=True), r.amax((2, 3, 4), keepdim=True)
    return (r - lo) / (hi - lo)


def _rotations(batch, seed=1):
    g = torch.Generator().manual_seed(seed)
    return invrender.rotation_matrix(torch.rand(batch, generator=g, dtype=torch.float64) * 6.2,
                                     torch.rand(batch, generator=g, dtype=torch.float64) * 2.4 - 1.2,
                                     torch.rand(batch, generator=g, dtype=torch.float64) * 0.6 - 0.3)


# --------------------------------------------------------------------------------------------------
# voxel_surface


def test_single_voxel_is_a_cube_with_outward_faces():
    N = 4
    occ = torch.zeros(N, N, N, dtype=torch.bool)
    occ[1, 2, 3] = True
    verts, faces = voxel_surface(occ)
    assert verts.shape == (8, 3) and faces.shape == (12, 3) and faces.dtype == torch.int64
    assert verts.dtype == torch.float32
    s = 2 / N
    centre = torch.tensor([-1 + (2 * 3 + 1) / N, 1 - (2 * 2 + 1) / N, 1 - (2 * 1 + 1) / N])
    torch.testing.assert_close(verts.mean(0), centre)
    assert torch.allclose((verts - centre).abs(), torch.full((8, 3), s / 2))
    # Outward: each face's normal points from the cube's centre to the face.
    n = face_normals(verts, faces)
    to_face = verts[faces].mean(1) - centre
    assert bool(((n * to_face).sum(1) > 0).all())
    torch.testing.assert_close(face_areas(verts, faces).sum(), torch.tensor(6 * s * s))
    mesh = _tm(verts, faces)
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert mesh.volume == pytest.approx(s ** 3)


def test_adjacent_voxels_share_no_internal_face():
    N = 5
    occ = torch.zeros(N, N, N, dtype=torch.bool)
    occ[2, 2, 1:3] = True  # neighbours along w (x): the square between them is at x = -1 + 2 * 2 / N
    verts, faces = voxel_surface(occ)
    assert verts.shape == (12, 3) and faces.shape == (20, 3)  # 10 squares, 12 shared corners
    x_shared = -1 + 4 / N
    on_plane = ((verts[faces][..., 0] - x_shared).abs() < 1e-6).all(1)
    assert not bool(on_plane.any())
    assert _tm(verts, faces).is_watertight


@pytest.mark.parametrize("shape", [(6, 6, 6), (3, 5, 7)])
def test_solid_block_is_watertight_with_the_voxels_volume(shape):
    D, H, W = shape
    occ = torch.zeros(shape, dtype=torch.bool)
    occ[1:, 1:4, 2:] = True
    verts, faces = voxel_surface(occ)
    mesh = _tm(verts, faces)
    assert mesh.is_watertight and mesh.is_winding_consistent
    voxel_volume = (2 / D) * (2 / H) * (2 / W)
    assert mesh.volume == pytest.approx(int(occ.sum()) * voxel_volume, rel=1e-6)
    # Each cube corner is one vertex: a box's surface has 2 (ab + bc + ca) + 2 squares' worth of corners.
    a, b, c = D - 1, 3, W - 2
    assert verts.shape[0] == 2 * (a * b + b * c + c * a) + 2
    assert mesh.euler_number == 2


def test_surface_area_of_an_l_shaped_prism():
    # Cross-section in (h, w): a p x q rectangle without its r x t corner, extruded over k slices along d.
    N, p, q, r, t, k = 8, 5, 4, 2, 3, 3
    occ = torch.zeros(N, N, N, dtype=torch.bool)
    occ[2:2 + k, 1:1 + p, 0:q] = True
    occ[2:2 + k, 1:1 + r, 0:t] = False
    verts, faces = voxel_surface(occ)
    cross_area, perimeter = p * q - r * t, 2 * (p + q)
    s = 2 / N
    expected = (2 * cross_area + perimeter * k) * s * s
    torch.testing.assert_close(face_areas(verts.double(), faces).sum(), torch.tensor(expected, dtype=torch.float64))
    assert faces.shape[0] == 2 * (2 * cross_area + perimeter * k)
    mesh = _tm(verts, faces)
    assert mesh.is_watertight and mesh.volume == pytest.approx(cross_area * k * s ** 3)


def test_coordinates_follow_the_grid_convention():
    N = 8
    occ = torch.zeros(N, N, N, dtype=torch.bool)
    occ[0, 0, N - 1] = True  # front slice, top row, last column: the (+x, +y, +z) corner
    verts, _ = voxel_surface(occ)
    c = 1 - 1 / N
    torch.testing.assert_close(verts.mean(0), torch.tensor([c, c, c]))
    assert float(verts.max()) == 1.0
    occ = torch.zeros(N, N, N, dtype=torch.bool)
    occ[N - 1, N - 1, 0] = True  # back, bottom, first column: (-x, -y, -z)
    verts, _ = voxel_surface(occ)
    torch.testing.assert_close(verts.mean(0), torch.tensor([-c, -c, -c]))
    verts, _ = voxel_surface(occ, dtype=torch.float64)
    assert verts.dtype == torch.float64


def test_batches_empty_grids_and_random_grids():
    g = torch.Generator().manual_seed(3)
    occ = torch.rand(3, 7, 6, 5, generator=g) > 0.55
    occ[1] = False
    meshes = voxel_surface(occ)
    assert isinstance(meshes, list) and len(meshes) == 3
    for b, (verts, faces) in enumerate(meshes):
        v1, f1 = voxel_surface(occ[b])
        assert torch.equal(verts, v1) and torch.equal(faces, f1)
    assert meshes[1][0].shape == (0, 3) and meshes[1][1].shape == (0, 3)
    for b in (0, 2):
        verts, faces = meshes[b]
        assert int(faces.min()) == 0 and int(faces.max()) == verts.shape[0] - 1
        assert torch.unique(verts, dim=0).shape[0] == verts.shape[0]  # deduplicated
        mesh = _tm(verts, faces)
        # Closed (each edge in an even number of faces: voxels touching along an edge give 4) and outward.
        edges = np.sort(mesh.edges, axis=1)
        _, counts = np.unique(edges, axis=0, return_counts=True)
        assert (counts % 2 == 0).all()
        assert mesh.volume == pytest.approx(int(occ[b].sum()) * (2 / 7) * (2 / 6) * (2 / 5), rel=1e-5)
    verts, faces = voxel_surface(torch.zeros(0, 4, 4, dtype=torch.bool))
    assert verts.shape == (0, 3) and faces.shape == (0, 3)
    assert voxel_surface(torch.zeros(0, 4, 4, 4, dtype=torch.bool)) == []


def _oracle_squares(occ):
    """The surface's squares by loops over the voxels: a set of (outward axis-aligned normal, centre) with the
    centre in grid units (doubled, so integer) - independent of the vectorised code."""
    D, H, W = occ.shape
    squares = set()
    for d in range(D):
        for h in range(H):
            for w in range(W):
                if not occ[d, h, w]:
                    continue
                for k, (dd, dh, dw) in enumerate(((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1))):
                    n = (d + dd, h + dh, w + dw)
                    if not (0 <= n[0] < D and 0 <= n[1] < H and 0 <= n[2] < W) or not occ[n]:
                        normal = (dw, -dh, -dd)  # +w is +x, +h is -y, +d is -z
                        squares.add((normal, (2 * d + 1 + dd, 2 * h + 1 + dh, 2 * w + 1 + dw)))
    return squares


@settings(max_examples=30, deadline=None)
@given(D=st.integers(1, 5), H=st.integers(1, 5), W=st.integers(1, 5), p=st.floats(0.0, 1.0), seed=st.integers(0, 2 ** 16))
def test_faces_match_a_loop_over_the_voxels(D, H, W, p, seed):
    occ = torch.rand(D, H, W, generator=torch.Generator().manual_seed(seed)) < p
    verts, faces = voxel_surface(occ, dtype=torch.float64)
    expected = _oracle_squares(occ.numpy())
    assert faces.shape[0] == 2 * len(expected)
    if not expected:
        assert verts.shape == (0, 3)
        return
    n = face_normals(verts, faces)
    tri = verts[faces]  # (F, 3, 3)
    # Each quad's two triangles: the second shares the first's corner 0 and 2 (its corners 0 and 1).
    assert torch.equal(faces[1::2, :2], faces[0::2, [0, 2]])
    torch.testing.assert_close(n[0::2], n[1::2])
    corners = torch.cat([tri[0::2], tri[1::2, 2:]], 1)  # (Q, 4, 3)
    centre = corners.mean(1)
    # Back to doubled grid units: w2 = (x + 1) W, h2 = (1 - y) H, d2 = (1 - z) D.
    grid = torch.stack([(1 - centre[:, 2]) * D, (1 - centre[:, 1]) * H, (centre[:, 0] + 1) * W], 1)
    got = {(tuple(int(round(c)) for c in nn.tolist()), tuple(int(round(c)) for c in g.tolist()))
           for nn, g in zip(n[0::2], grid)}
    assert got == expected
    areas = face_areas(verts, faces).reshape(-1, 2).sum(1)
    side = {(1, 0, 0): 4 / (D * H), (0, 1, 0): 4 / (D * W), (0, 0, 1): 4 / (H * W)}
    expected_area = torch.tensor([side[tuple(abs(int(round(c))) for c in nn.tolist())] for nn in n[0::2]],
                                 dtype=torch.float64)
    torch.testing.assert_close(areas, expected_area)
    assert torch.unique(verts, dim=0).shape[0] == verts.shape[0]
    assert float(verts.abs().max()) <= 1
    assert _tm(verts, faces).volume == pytest.approx(int(occ.sum()) * 8 / (D * H * W))


def test_voxel_surface_rejects_bad_arguments():
    with pytest.raises(TypeError, match="'occupancy'"):
        voxel_surface(np.zeros((2, 2, 2), dtype=bool))
    with pytest.raises(TypeError, match="'occupancy'.*bool"):
        voxel_surface(torch.zeros(2, 2, 2))
    with pytest.raises(ValueError, match="'occupancy'"):
        voxel_surface(torch.zeros(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="'occupancy'"):
        voxel_surface(torch.zeros(1, 1, 2, 2, 2, dtype=torch.bool))
    with pytest.raises(TypeError, match="'dtype'"):
        voxel_surface(torch.zeros(2, 2, 2, dtype=torch.bool), dtype=torch.int64)


# --------------------------------------------------------------------------------------------------
# render_voxel_surface against numpy ray casting


def _lambert_grey(normal):
    """Grey of a view-space unit normal (turned toward the camera), written out from the lights."""
    n = normal if normal[2] >= 0 else -normal
    light = AMBIENT
    for lx, ly, lz, intensity in LIGHTS:
        d = np.array([lx, ly, lz]) / math.sqrt(lx * lx + ly * ly + lz * lz)
        light += intensity * max(float(n @ d), 0.0)
    return min(max(0.7 * light, 0.0), 1.0)


def _segment_distances(points, a, b):
    """Distance from each 2-D point ``(P, 2)`` to the nearest segment ``a -> b`` ``(E, 2)``: ``(P,)``."""
    ab = b - a
    t = ((points[:, None] - a[None]) * ab[None]).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-30)[None]
    closest = a[None] + np.clip(t, 0, 1)[..., None] * ab[None]
    return np.sqrt(((points[:, None] - closest) ** 2).sum(-1)).min(1)


def _point_segment_distance(points, a, b):
    """Distance from each 2-D point ``(P, 2)`` to its own segment ``a[p] -> b[p]``: ``(P,)``."""
    ab = b - a
    t = np.clip(((points - a) * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-30), 0, 1)
    return np.sqrt(((points - a - t[:, None] * ab) ** 2).sum(-1))


@pytest.mark.parametrize("extent, size", [(2.0, 40), (1.3, 33)])
def test_render_matches_ray_casting_of_the_voxel_surface(extent, size):
    B, N = 3, 10
    vox = _blobby(B, N, seed=5)
    R = _rotations(B, seed=7)
    image, mask = render_voxel_surface(vox, R, threshold=0.5, image_size=size, extent=extent)
    assert image.shape == (B, 1, size, size) and mask.shape == (B, 1, size, size)
    centres = extent * (-1 + (2 * np.arange(size) + 1) / size)
    px, py = np.meshgrid(centres, -centres)  # pixel (i, j): x = centres[j], y = -centres[i]
    points = np.stack([px.ravel(), py.ravel()], 1)
    for b in range(B):
        verts, faces = voxel_surface(vox[b, 0] > 0.5, dtype=torch.float64)
        view = (verts @ R[b].T).numpy()
        mesh = trimesh.Trimesh(view, faces.numpy(), process=False)
        origins = np.concatenate([points, np.full((len(points), 1), 10.0)], 1)
        directions = np.tile([0.0, 0.0, -1.0], (len(points), 1))
        hit = trimesh.ray.ray_triangle.RayMeshIntersector(mesh).intersects_first(origins, directions)
        # Silhouette edges: edges with faces on both sides of the view direction (front and back faces).
        facing = mesh.face_normals[:, 2] > 0
        edge_faces = np.repeat(np.arange(len(faces)), 3)
        key = np.sort(mesh.edges, 1)
        _, inverse = np.unique(key, axis=0, return_inverse=True)
        inverse = inverse.ravel()
        front = np.bincount(inverse, facing[edge_faces]) > 0
        back = np.bincount(inverse, ~facing[edge_faces]) > 0
        sil = np.unique(inverse[(front & back)[inverse]])
        first = np.zeros(inverse.max() + 1, dtype=np.int64)
        first[inverse] = np.arange(len(inverse))
        sil_edges = mesh.edges[first[sil]]
        near_silhouette = _segment_distances(points, view[sil_edges[:, 0], :2], view[sil_edges[:, 1], :2]) < 1e-4

        ours = mask[b, 0].numpy().ravel() > 0.5
        theirs = hit >= 0
        assert theirs.sum() > 50
        differ = ours != theirs
        assert not bool((differ & ~near_silhouette).any()), f"{int((differ & ~near_silhouette).sum())} pixels differ"
        assert differ.sum() <= 3
        # Shading: away from the edges of the hit triangle (where a neighbour at the same depth may win).
        check = ours & theirs
        tri = view[faces.numpy()[hit[check]]][..., :2]  # (P, 3, 2)
        p = points[check]
        edge_dist = np.min([_point_segment_distance(p, tri[:, k], tri[:, (k + 1) % 3]) for k in range(3)], 0)
        check[check] = edge_dist > 1e-4
        assert check.sum() >= 0.98 * (ours & theirs).sum()
        expected = np.array([_lambert_grey(mesh.face_normals[f]) if f >= 0 else 0.0 for f in hit])
        grey = image[b, 0].numpy().ravel()
        np.testing.assert_allclose(grey[check], expected[check], atol=2e-6)
        assert (grey[~ours] == 0).all()


def test_render_equals_render_shaded_of_the_surface_mesh():
    B, N, S, ss = 3, 12, 24, 2
    vox = _blobby(B, N, seed=11)
    R = _rotations(B, seed=12)
    ds = ShadedViews("chair", objects=1, image_size=S, supersample=ss)  # the training images' camera
    image, mask = render_voxel_surface(vox, R, threshold=0.5, image_size=S, extent=ds.extent, supersample=ss)
    for b in range(B):
        verts, faces = voxel_surface(vox[b, 0] > 0.5)
        ref, ref_mask = render_shaded(verts, faces, R[b:b + 1], S, supersample=ss,
                                      background=torch.zeros(1, 3, S * ss, S * ss), orthographic=ds.extent)
        assert torch.equal(image[b], ref[0, :1]) and torch.equal(ref[0, 0], ref[0, 2])
        assert torch.equal(mask[b], ref_mask[0])
        assert 0 < float(mask[b].mean()) < 0.5


def test_voxelized_training_object_renders_like_its_training_image():
    ds = ShadedViews("chair", objects=2, image_size=32)
    item = ds[1]
    verts, faces = ds.mesh(1)
    vox = voxelize(verts, faces, resolution=32)[None]
    _, mask = render_voxel_surface(vox, item["rotation"][None], image_size=32, extent=ds.extent, supersample=2)
    a, b = mask[0, 0] > 0.5, item["mask"][0] > 0.5
    assert float((a & b).sum()) / float((a | b).sum()) > 0.85  # the same object in the same frame


# --------------------------------------------------------------------------------------------------
# render_voxel_surface: conventions, thresholds, normal maps, errors


def test_single_voxel_from_the_front_covers_its_pixels():
    N, S = 8, 16
    vox = torch.zeros(1, 1, N, N, N)
    vox[0, 0, 5, 2, 6] = 1.0
    R = invrender.rotation_matrix(torch.zeros(1, dtype=torch.float64))
    image, mask = render_voxel_surface(vox, R, image_size=S, extent=1.0)
    expected = torch.zeros(S, S)
    expected[4:6, 12:14] = 1  # row h down, column w right: two pixels per voxel
    assert torch.equal(mask[0, 0], expected)
    # The front face (normal +z) under the lights: ambient + sum of intensity * l_z.
    grey = 0.7 * (AMBIENT + sum(i * lz / math.sqrt(lx * lx + ly * ly + lz * lz) for lx, ly, lz, i in LIGHTS))
    torch.testing.assert_close(image[0, 0][expected > 0], torch.full((4,), grey))
    normals, _ = render_voxel_surface(vox[:, 0], R, image_size=S, extent=1.0, normals=True)
    torch.testing.assert_close(normals[0, :, 4, 12], torch.tensor([0.5, 0.5, 1.0]))


def test_threshold_is_strict_and_per_sample():
    vox = torch.zeros(2, 1, 4, 4, 4)
    vox[:, 0, 1, 1, 1] = 0.25
    vox[:, 0, 2, 2, 2] = 0.75
    R = _rotations(2, seed=2)
    _, at = render_voxel_surface(vox[:1], R[:1], threshold=0.75, image_size=16)
    assert float(at.sum()) == 0  # equal to the threshold: empty
    _, below = render_voxel_surface(vox[:1], R[:1], threshold=0.7499, image_size=16)
    assert float(below.sum()) > 0
    thresholds = torch.tensor([0.2, 0.5])
    image, mask = render_voxel_surface(vox, R, threshold=thresholds, image_size=16)
    for b in range(2):
        ref, ref_mask = render_voxel_surface(vox[b:b + 1], R[b:b + 1], threshold=float(thresholds[b]), image_size=16)
        assert torch.equal(image[b], ref[0]) and torch.equal(mask[b], ref_mask[0])
    assert float(mask[0].sum()) > float(mask[1].sum())  # both voxels at 0.2, one at 0.5


def test_empty_grids_render_black():
    vox = _blobby(3, 8, seed=4)
    vox[1] = 0
    R = _rotations(3)
    image, mask = render_voxel_surface(vox, R, threshold=0.5, image_size=16, supersample=2)
    assert float(image[1].abs().max()) == 0 and float(mask[1].abs().max()) == 0
    assert float(mask[0].sum()) > 0 and float(mask[2].sum()) > 0
    image, mask = render_voxel_surface(vox, R, threshold=1.0, image_size=16)
    assert float(image.abs().max()) == 0 and float(mask.abs().max()) == 0
    normals, _ = render_voxel_surface(torch.zeros(2, 3, 3, 3), _rotations(2), normals=True, image_size=8)
    assert normals.shape == (2, 3, 8, 8) and float(normals.abs().max()) == 0
    image, mask = render_voxel_surface(torch.zeros(0, 1, 4, 4, 4), torch.zeros(0, 3, 3), image_size=8)
    assert image.shape == (0, 1, 8, 8) and mask.shape == (0, 1, 8, 8)


def test_normal_maps_are_unit_normals_facing_the_camera_and_give_the_shading():
    vox = _blobby(2, 10, seed=9)
    R = _rotations(2, seed=10)
    normals, mask = render_voxel_surface(vox, R, image_size=32, normals=True)
    image, mask2 = render_voxel_surface(vox, R, image_size=32)
    assert normals.shape == (2, 3, 32, 32) and torch.equal(mask, mask2)
    covered = mask[:, 0] > 0
    n = (2 * normals - 1).permute(0, 2, 3, 1)[covered].double()  # (P, 3)
    torch.testing.assert_close(n.norm(dim=1), torch.ones(len(n), dtype=torch.float64), atol=1e-6, rtol=0)
    assert float(n[:, 2].min()) >= 0
    assert float(normals.permute(0, 2, 3, 1)[~covered].abs().max()) == 0
    # The six axis directions of the grid, turned by each view: every normal is one of them.
    for b in range(2):
        nb = (2 * normals[b] - 1).permute(1, 2, 0)[covered[b]].double()
        axes = torch.cat([R[b].T, -R[b].T])  # rows: +-R e_k
        assert float((nb @ axes.T).max(1).values.min()) > 1 - 1e-6
    grey = torch.tensor([_lambert_grey(v) for v in n.numpy()], dtype=torch.float32)
    torch.testing.assert_close(image[:, 0][covered], grey, atol=2e-6, rtol=0)


def test_batched_layouts_and_supersampling():
    vox = _blobby(2, 8, seed=6)
    R = _rotations(2, seed=6)
    a = render_voxel_surface(vox, R, image_size=12, supersample=3)
    b = render_voxel_surface(vox[:, 0], R, image_size=12, supersample=3)
    c = render_voxel_surface(vox > 0.5, R, image_size=12, supersample=3)
    for x, y, z in zip(a, b, c):
        assert torch.equal(x, y) and torch.equal(x, z)
    big, big_mask = render_voxel_surface(vox, R, image_size=36)
    torch.testing.assert_close(a[0], Fn.avg_pool2d(big, 3))
    torch.testing.assert_close(a[1], Fn.avg_pool2d(big_mask, 3))
    assert not a[0].requires_grad


def test_render_voxel_surface_rejects_bad_arguments():
    vox, R = torch.rand(2, 1, 4, 4, 4), _rotations(2)
    cases = [
        (TypeError, "'voxels'", dict(voxels=vox.numpy())),
        (ValueError, "'voxels'", dict(voxels=torch.rand(2, 4, 4))),
        (ValueError, "'voxels'", dict(voxels=torch.rand(2, 2, 4, 4, 4))),
        (TypeError, "'voxels'", dict(voxels=torch.ones(2, 4, 4, 4, dtype=torch.int64))),
        (ValueError, "'rotation'", dict(rotation=R[:1])),
        (ValueError, "'rotation'", dict(rotation=torch.eye(3))),
        (ValueError, "'threshold'", dict(threshold=torch.rand(3))),
        (ValueError, "'threshold'", dict(threshold=float("nan"))),
        (ValueError, "'threshold'", dict(threshold="0.5")),
        (ValueError, "'image_size'", dict(image_size=0)),
        (ValueError, "'supersample'", dict(supersample=1.5)),
        (ValueError, "'extent'", dict(extent=-2.0)),
    ]
    for error, name, kwargs in cases:
        args = dict(voxels=vox, rotation=R)
        args.update(kwargs)
        with pytest.raises(error, match=name):
            render_voxel_surface(**args)


def test_sample_thresholds():
    t = sample_thresholds(1000, generator=torch.Generator().manual_seed(0))
    assert t.shape == (1000,) and t.dtype == torch.float32
    assert 0 <= float(t.min()) and float(t.max()) < 1 and abs(float(t.mean()) - 0.5) < 0.05
    assert torch.equal(t, sample_thresholds(1000, generator=torch.Generator().manual_seed(0)))
    assert sample_thresholds(0).shape == (0,)
    with pytest.raises(ValueError, match="'batch'"):
        sample_thresholds(-1)


def test_exports_and_docstrings():
    for module, name in ((invrender.mesh, "voxel_surface"), (invrender.renderers, "render_voxel_surface"),
                         (invrender.renderers, "sample_thresholds")):
        assert name in module.__all__
        doc = getattr(module, name).__doc__
        assert "Args:" in doc and "Returns:" in doc


@pytest.mark.cuda
def test_cuda_matches_cpu():
    vox = _blobby(3, 12, seed=8)
    R = _rotations(3, seed=8)
    t = sample_thresholds(3, generator=torch.Generator().manual_seed(1))
    cpu = render_voxel_surface(vox, R, t, image_size=32, supersample=2)
    gpu = render_voxel_surface(vox.cuda(), R.cuda(), t.cuda(), image_size=32, supersample=2)
    for a, b in zip(cpu, gpu):
        torch.testing.assert_close(b.cpu(), a, atol=1e-5, rtol=0)
    verts, faces = voxel_surface(vox[0, 0].cuda() > 0.5)
    v_cpu, f_cpu = voxel_surface(vox[0, 0] > 0.5)
    assert torch.equal(verts.cpu(), v_cpu) and torch.equal(faces.cpu(), f_cpu)
