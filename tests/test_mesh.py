"""Tests of invrender.mesh beyond the icosphere: ellipsoid template, normals and areas, mesh
regularisers, surface point sampling and voxelization. Oracles: trimesh (normals, areas, adjacency,
Laplacian matrix, proximity, volume), closed forms worked out by hand, numpy loops, gradcheck."""

import math

import numpy as np
import pytest
import torch

from invrender import mesh as M

from .optional import optional_import

trimesh = optional_import("trimesh")

LOSSES = {
    "laplacian_uniform": lambda v, f: M.laplacian_loss(v, f, "uniform"),
    "laplacian_cotangent": lambda v, f: M.laplacian_loss(v, f, "cotangent"),
    "normal_consistency": M.normal_consistency_loss,
    "flatten": M.flatten_loss,
    "edge_length": lambda v, f: M.edge_length_loss(v, f, target=0.3),
}


def _tm(v, f):
    return trimesh.Trimesh(np.asarray(v, dtype=np.float64), np.asarray(f), process=False)


def _bumpy_sphere(level=1, seed=0, B=None):
    v, f = M.icosphere(level, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    shape = (v.shape[0], 1) if B is None else (B, v.shape[0], 1)
    return v * (1 + 0.15 * torch.rand(shape, generator=g, dtype=torch.float64)), f


def _hexagon_fan(h=0.0):
    ang = torch.arange(6, dtype=torch.float64) * math.pi / 3
    ring = torch.stack([ang.cos(), ang.sin(), torch.zeros(6, dtype=torch.float64)], 1)
    v = torch.cat([torch.tensor([[0.0, 0.0, h]], dtype=torch.float64), ring])
    f = torch.tensor([[0, 1 + i, 1 + (i + 1) % 6] for i in range(6)])
    return v, f


def _hinge(phi):
    """Two triangles sharing the edge A-B along +y; the second folded by phi about it."""
    v = torch.tensor([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.5, 0.0],
                      [-math.cos(phi), 0.5, math.sin(phi)]], dtype=torch.float64)
    f = torch.tensor([[0, 2, 1], [0, 1, 3]])
    return v, f


# ------------------------------------------------------------------------------------------------
# Templates, normals, areas


def test_ellipsoid_radii_and_topology():
    v, f = M.ellipsoid()
    assert v.shape == (642, 3) and f.shape == (1280, 3) and f.dtype == torch.int64
    assert torch.allclose(v.abs().amax(0), torch.tensor([0.4, 0.28, 0.28]), atol=1e-6)
    a, b, c = 0.4, 0.28, 0.28
    q = (v[:, 0] / a) ** 2 + (v[:, 1] / b) ** 2 + (v[:, 2] / c) ** 2
    assert torch.allclose(q, torch.ones_like(q), atol=1e-5)
    v2, f2 = M.ellipsoid(2, radii=(1, 2, 3), scale=0.5, dtype=torch.float64)
    s, fs = M.icosphere(2, dtype=torch.float64)
    assert torch.equal(f2, fs)
    assert torch.allclose(v2, s * torch.tensor([0.5, 1.0, 1.5], dtype=torch.float64))
    assert _tm(v2, f2).is_winding_consistent and _tm(v2, f2).volume > 0  # still outward
    with pytest.raises(ValueError, match="radii"):
        M.ellipsoid(radii=(1, 0, 1))
    with pytest.raises(ValueError, match="radii"):
        M.ellipsoid(radii=(1, 1))
    with pytest.raises(ValueError, match="scale"):
        M.ellipsoid(scale=-1.0)
    with pytest.raises(ValueError, match="level"):
        M.ellipsoid(level=-1)


def test_face_normals_cube_and_sphere_match_trimesh():
    box = trimesh.creation.box(extents=(1.0, 2.0, 0.5))
    for v, f in [(torch.from_numpy(box.vertices), torch.from_numpy(box.faces).long()),
                 _bumpy_sphere(2)]:
        tm = _tm(v, f)
        n = M.face_normals(v, f)
        assert n.shape == f.shape
        np.testing.assert_allclose(n.numpy(), tm.face_normals, atol=1e-12)
        centroids = v[f].mean(1)
        assert ((n * centroids).sum(-1) > 0).all()  # outward (star-shaped about the origin)
        raw = M.face_normals(v[None], f, normalize=False)[0]
        np.testing.assert_allclose(raw.norm(dim=-1).numpy() / 2, tm.area_faces, atol=1e-12)
        a = M.face_areas(v[None].expand(2, -1, -1), f)
        assert a.shape == (2, f.shape[0])
        np.testing.assert_allclose(a[1].numpy(), tm.area_faces, atol=1e-12)
        assert abs(float(a[0].sum()) - tm.area) < 1e-10


def test_vertex_normals_sphere_and_numpy_oracle():
    v, f = M.icosphere(3, dtype=torch.float64)
    n = M.vertex_normals(v, f)
    assert torch.allclose(n.norm(dim=-1), torch.ones(v.shape[0], dtype=torch.float64))
    assert (n * v).sum(-1).min() > 0.9999  # ~ position direction on a unit sphere
    vb, f = _bumpy_sphere(1, B=2)
    nb = M.vertex_normals(vb, f)
    for b in range(2):
        vv, ff = vb[b].numpy(), f.numpy()
        acc = np.zeros_like(vv)
        for a_, b_, c_ in ff:  # area-weighted sum of face normals
            cr = np.cross(vv[b_] - vv[a_], vv[c_] - vv[a_])
            for i in (a_, b_, c_):
                acc[i] += cr
        acc /= np.linalg.norm(acc, axis=1, keepdims=True)
        np.testing.assert_allclose(nb[b].numpy(), acc, atol=1e-12)
    # A vertex in no face gets the zero vector.
    v2 = torch.cat([v, torch.zeros(1, 3, dtype=torch.float64)])
    assert torch.equal(M.vertex_normals(v2, f)[-1], torch.zeros(3, dtype=torch.float64))


# ------------------------------------------------------------------------------------------------
# Losses: hand-computed values


def test_losses_on_a_flat_and_a_folded_hinge():
    v, f = _hinge(0.0)
    assert float(M.normal_consistency_loss(v, f)) == pytest.approx(0.0, abs=1e-15)
    assert float(M.flatten_loss(v, f)) == pytest.approx(0.0, abs=1e-15)
    for phi, nc in [(math.pi / 2, 1.0), (math.pi / 3, 0.5), (2 * math.pi / 3, 1.5)]:
        v, f = _hinge(phi)
        assert float(M.normal_consistency_loss(v, f)) == pytest.approx(nc, abs=1e-12)
        assert float(M.flatten_loss(v, f)) == pytest.approx(nc ** 2, abs=1e-12)
        # Independent of the winding of the faces.
        g = f.flip(1)
        assert float(M.normal_consistency_loss(v, g)) == pytest.approx(nc, abs=1e-12)
        g2 = torch.stack([f[0], f[1].flip(0)])  # inconsistent winding
        assert float(M.flatten_loss(v, g2)) == pytest.approx(nc ** 2, abs=1e-12)
    # Batched: mean over the batch.
    vb = torch.stack([_hinge(0.0)[0], _hinge(math.pi / 2)[0]])
    assert float(M.normal_consistency_loss(vb, f)) == pytest.approx(0.5, abs=1e-12)


def test_normal_consistency_and_flatten_match_trimesh_adjacency():
    v, f = _bumpy_sphere(2, seed=3)
    tm = _tm(v, f)
    adj = tm.face_adjacency
    cos = (tm.face_normals[adj[:, 0]] * tm.face_normals[adj[:, 1]]).sum(1)
    assert len(adj) == 3 * f.shape[0] // 2
    assert float(M.normal_consistency_loss(v, f)) == pytest.approx(np.mean(1 - cos), rel=1e-10)
    assert float(M.flatten_loss(v, f)) == pytest.approx(np.mean((1 - cos) ** 2), rel=1e-10)


def test_laplacian_hand_computed_fan():
    h = 0.5
    v, f = _hexagon_fan(h)
    # Centre: neighbours' mean is the origin -> (0, 0, h); ring: v_i - (c + v_i)/3 (v_{i-1} + v_{i+1} = v_i).
    expected = (h ** 2 + 6 * (4 / 9 + h ** 2 / 9)) / 7
    assert float(M.laplacian_loss(v, f)) == pytest.approx(expected, rel=1e-12)
    v0, f = _hexagon_fan(0.0)
    assert float(M.laplacian_loss(v0, f)) == pytest.approx(8 / 21, rel=1e-12)
    # Cotangent (equilateral): ring vertex weights 1/2 to the centre, 1/4 to each ring neighbour.
    assert float(M.laplacian_loss(v0, f, method="cotangent")) == pytest.approx(27 / 56, rel=1e-12)
    # Translation invariant, and 0 on a flat regular interior: the centre's Lv is 0.
    assert float(M.laplacian_loss(v0 + 3.0, f)) == pytest.approx(8 / 21, rel=1e-12)


def test_uniform_laplacian_matches_trimesh_matrix():
    laplacian_calculation = trimesh.smoothing.laplacian_calculation
    v, f = _bumpy_sphere(2, seed=5)
    A = laplacian_calculation(_tm(v, f), equal_weight=True)  # row-normalised adjacency
    lap = v.numpy() - A @ v.numpy()
    assert float(M.laplacian_loss(v, f)) == pytest.approx(np.mean((lap ** 2).sum(1)), rel=1e-10)


def test_cotangent_laplacian_numpy_oracle():
    v, f = _bumpy_sphere(1, seed=7)
    vv, ff = v.numpy(), f.numpy()
    W = np.zeros((len(vv), len(vv)))
    for tri in ff:
        for k in range(3):
            o, p, q = tri[k], tri[(k + 1) % 3], tri[(k + 2) % 3]
            a, b = vv[p] - vv[o], vv[q] - vv[o]
            cot = a @ b / np.linalg.norm(np.cross(a, b))
            W[p, q] += cot / 2
            W[q, p] += cot / 2
    lap = vv - (W @ vv) / W.sum(1, keepdims=True)
    assert float(M.laplacian_loss(v, f, "cotangent")) == pytest.approx(np.mean((lap ** 2).sum(1)), rel=1e-10)


def test_edge_length_loss_exact():
    v = torch.tensor([[0.0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], dtype=torch.float64)
    f = torch.tensor([[0, 1, 2], [0, 2, 3]])
    assert float(M.edge_length_loss(v, f)) == pytest.approx(6 / 5, rel=1e-12)  # 4 unit edges + sqrt(2)
    assert float(M.edge_length_loss(v, f, target=1.0)) == pytest.approx((math.sqrt(2) - 1) ** 2 / 5, rel=1e-12)
    vb = torch.stack([v, 2 * v])
    assert float(M.edge_length_loss(vb, f)) == pytest.approx((6 / 5 + 24 / 5) / 2, rel=1e-12)


def test_losses_of_a_sphere_are_small_and_zero_without_faces():
    v, f = M.icosphere(3, dtype=torch.float64)
    assert float(M.normal_consistency_loss(v, f)) < 0.01
    assert float(M.flatten_loss(v, f)) < 1e-4
    empty = torch.zeros(0, 3, dtype=torch.int64)
    for name, fn in LOSSES.items():
        out = fn(v.clone().requires_grad_(), empty)
        assert out.shape == () and float(out.detach()) == 0.0, name
        out.backward()


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_gradcheck(name):
    v, f = _bumpy_sphere(0, seed=1, B=2)
    v.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: LOSSES[name](x, f), (v,))


def test_normals_areas_gradcheck():
    v, f = _bumpy_sphere(0, seed=2)
    v.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: M.face_normals(x, f), (v,))
    assert torch.autograd.gradcheck(lambda x: M.face_areas(x, f), (v,))
    assert torch.autograd.gradcheck(lambda x: M.vertex_normals(x, f), (v,))


def test_degenerate_faces_finite_values_and_gradients():
    v = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [2, 0, 0], [0.5, 0.5, 1], [1, 0, 0]],
                     dtype=torch.float64)
    # A good face, a collinear face (0, 1, 3), a face with a repeated vertex and one with coincident
    # vertices (1 and 5), sharing edges with each other.
    f = torch.tensor([[0, 1, 2], [0, 3, 1], [1, 1, 4], [1, 5, 4], [0, 1, 4], [2, 1, 4]])
    fns = dict(LOSSES)
    fns.update({"face_normals": lambda x, g: M.face_normals(x, g).sum(),
                "vertex_normals": lambda x, g: M.vertex_normals(x, g).sum(),
                "face_areas": lambda x, g: M.face_areas(x, g).sum(),
                "sample_points": lambda x, g: M.sample_points(x, g, 50, return_normals=True,
                                                              generator=torch.Generator().manual_seed(0))[1].sum()
                + M.sample_points(x, g, 50, generator=torch.Generator().manual_seed(0)).sum()})
    n = M.face_normals(v, f)
    assert torch.equal(n[1], torch.zeros(3, dtype=torch.float64)) and torch.equal(n[2], n[1])
    for name, fn in fns.items():
        x = v.clone().requires_grad_()
        out = fn(x, f)
        out.backward()
        assert torch.isfinite(out), name
        assert torch.isfinite(x.grad).all(), name
    # All-degenerate mesh (every vertex at the same point).
    z = torch.zeros(4, 3, dtype=torch.float64, requires_grad=True)
    g = torch.tensor([[0, 1, 2], [0, 2, 3], [0, 3, 1], [1, 3, 2]])
    for name, fn in LOSSES.items():
        out = fn(z, g)
        (gr,) = torch.autograd.grad(out, z)
        assert torch.isfinite(out) and torch.isfinite(gr).all(), name


# ------------------------------------------------------------------------------------------------
# Point sampling


def test_sample_points_lie_on_surface_with_normals():
    v, f = M.ellipsoid(3, dtype=torch.float64)
    pts, nrm = M.sample_points(v, f, 2000, return_normals=True, generator=torch.Generator().manual_seed(1))
    assert pts.shape == (2000, 3) and nrm.shape == (2000, 3) and pts.dtype == torch.float64
    tm = _tm(v, f)
    closest, dist, tri = trimesh.proximity.closest_point(tm, pts.numpy())
    assert dist.max() < 1e-9
    # The normal is that of the face the point lies on (its closest face, up to coplanar ties).
    assert (np.abs((nrm.numpy() * tm.face_normals[tri]).sum(1)) > 0.99).all()
    # Uniform over the surface: the sample mean approaches the area-weighted centroid.
    tc = (tm.triangles_center * tm.area_faces[:, None]).sum(0) / tm.area
    assert np.abs(pts.numpy().mean(0) - tc).max() < 0.02


def test_sample_points_density_proportional_to_area():
    # Triangle 0: area 1 at z = 0; triangle 1: area 3 at z = 1.
    v = torch.tensor([[0.0, 0, 0], [2, 0, 0], [0, 1, 0], [0, 0, 1], [3, 0, 1], [0, 2, 1]])
    f = torch.tensor([[0, 1, 2], [3, 4, 5]])
    N = 20000
    pts = M.sample_points(v[None].expand(2, -1, -1), f, N, generator=torch.Generator().manual_seed(0))
    assert pts.shape == (2, N, 3)
    frac = (pts[..., 2] > 0.5).double().mean(-1)
    sd = math.sqrt(0.25 * 0.75 / N)
    assert ((frac - 0.75).abs() < 5 * sd).all()
    # Uniform inside triangle 1: its centroid is the sample mean.
    sel = pts[0][pts[0, :, 2] > 0.5]
    assert torch.allclose(sel.mean(0), torch.tensor([1.0, 2 / 3, 1.0]), atol=0.03)


def test_sample_points_determinism_batch_and_gradcheck():
    v, f = _bumpy_sphere(1, B=2)
    a = M.sample_points(v, f, 100, generator=torch.Generator().manual_seed(3))
    b = M.sample_points(v, f, 100, generator=torch.Generator().manual_seed(3))
    c = M.sample_points(v, f, 100, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert M.sample_points(v, f, 0).shape == (2, 0, 3)
    x = v[:1].clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda y: M.sample_points(y, f, 20, return_normals=True, generator=torch.Generator().manual_seed(0)), (x,))


def test_sample_points_zero_area_and_bad_arguments():
    z = torch.zeros(3, 3)
    f = torch.tensor([[0, 1, 2]])
    with pytest.raises(ValueError, match="verts"):
        M.sample_points(z, f, 10)
    with pytest.raises(ValueError, match="verts"):  # one good and one empty mesh in a batch
        M.sample_points(torch.stack([torch.eye(3), z]), f, 10)
    with pytest.raises(ValueError, match="verts"):
        M.sample_points(torch.eye(3), torch.zeros(0, 3, dtype=torch.int64), 10)
    with pytest.raises(ValueError, match="num_points"):
        M.sample_points(torch.eye(3), f, -1)
    with pytest.raises(TypeError, match="num_points"):
        M.sample_points(torch.eye(3), f, 2.0)
    with pytest.raises(TypeError, match="generator"):
        M.sample_points(torch.eye(3), f, 2, generator=0)


# ------------------------------------------------------------------------------------------------
# Voxelization


def _centres(R, bounds=1.0):
    c = -bounds + (2 * np.arange(R) + 1) * bounds / R
    d, h, w = np.meshgrid(np.arange(R), np.arange(R), np.arange(R), indexing="ij")
    return c[w], c[::-1][h], c[::-1][d]  # x, y, z of every (d, h, w)


def test_voxelize_sphere_volume_and_inside_points():
    r, R = 0.7, 32
    v, f = M.icosphere(3, radius=r, dtype=torch.float64)
    vox = M.voxelize(v, f, R)
    assert vox.shape == (R, R, R) and vox.dtype == torch.float64
    assert set(vox.unique().tolist()) <= {0.0, 1.0}
    vol = float(vox.sum()) * (2.0 / R) ** 3
    assert vol == pytest.approx(4 / 3 * math.pi * r ** 3, rel=0.04)
    assert vol == pytest.approx(_tm(v, f).volume, rel=0.02)
    # Voxel centres clearly inside / outside agree with the sphere.
    x, y, z = _centres(R)
    rho = np.sqrt(x ** 2 + y ** 2 + z ** 2)
    occ = vox.numpy()
    assert (occ[rho < r - 0.02] == 1).all() and (occ[rho > r + 0.001] == 0).all()
    # Points sampled inside fall in occupied voxels.
    g = np.random.default_rng(0)
    p = g.uniform(-r, r, size=(4000, 3))
    p = p[np.linalg.norm(p, axis=1) < r - 0.05]
    w = np.floor((p[:, 0] + 1) * R / 2).astype(int)
    h = np.floor((1 - p[:, 1]) * R / 2).astype(int)
    d = np.floor((1 - p[:, 2]) * R / 2).astype(int)
    assert occ[d, h, w].all()


def _box(lo, hi):
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    b = trimesh.creation.box(extents=hi - lo)
    b.apply_translation((lo + hi) / 2)
    return torch.from_numpy(np.asarray(b.vertices)), torch.from_numpy(np.asarray(b.faces)).long()


@pytest.mark.parametrize("lo,hi,R", [((-0.5, -0.25, 0.0), (0.25, 0.75, 0.5), 16),
                                     ((-0.5, -0.5, -0.5), (0.5, 0.5, 0.5), 4),   # rays through diagonals
                                     ((-1.5, -0.5, -2.0), (0.5, 2.0, 0.25), 8)])  # beyond the bounds
def test_voxelize_box_exact_block(lo, hi, R):
    v, f = _box(lo, hi)
    x, y, z = _centres(R)
    expected = ((x > lo[0]) & (x < hi[0]) & (y > lo[1]) & (y < hi[1]) & (z > lo[2]) & (z < hi[2]))
    for vv, ff in [(v, f), (v * torch.tensor([-1.0, 1, 1], dtype=torch.float64), f.flip(1)),  # mirrored diagonals
                   (v, f.flip(1))]:  # inverted winding: parity does not care
        mirrored = vv[:, 0].min() < lo[0] - 1e-9 or vv[:, 0].max() > hi[0] + 1e-9
        exp = expected[..., ::-1] if mirrored else expected
        np.testing.assert_array_equal(M.voxelize(vv, ff, R).numpy(), exp.astype(float))


def test_voxelize_orientation_off_centre_cube():
    R = 16
    v, f = _box((0.3, 0.3, 0.3), (0.7, 0.7, 0.7))
    vox = M.voxelize(v.float()[None], f, R)
    assert vox.shape == (1, R, R, R) and vox.dtype == torch.float32
    d, h, w = vox[0].nonzero().unbind(1)
    assert len(d) > 0
    assert (w >= R // 2).all() and (h < R // 2).all() and (d < R // 2).all()
    # Batch of two different meshes = each alone.
    s, fs = M.icosphere(2, radius=0.5)
    both = M.voxelize(torch.stack([s, s * 0.5]), fs, 8)
    assert torch.equal(both[1], M.voxelize(s * 0.5, fs, 8)) and both[0].sum() > both[1].sum()
    # bounds rescales the grid.
    assert torch.equal(M.voxelize(v * 2, f, R, bounds=2.0), M.voxelize(v, f, R))


# ------------------------------------------------------------------------------------------------
# Bad inputs


@pytest.mark.parametrize("fn", [M.face_normals, M.face_areas, M.vertex_normals, M.laplacian_loss,
                                M.normal_consistency_loss, M.flatten_loss, M.edge_length_loss,
                                lambda v, f: M.sample_points(v, f, 3), M.voxelize])
def test_bad_mesh_arguments(fn):
    v, f = M.icosphere(0)
    with pytest.raises(TypeError, match="verts"):
        fn(v.numpy(), f)
    with pytest.raises(TypeError, match="verts"):
        fn(v.long(), f)
    with pytest.raises(ValueError, match="verts"):
        fn(v[:, :2], f)
    with pytest.raises(ValueError, match="verts"):
        fn(v[None, None], f)
    with pytest.raises(TypeError, match="faces"):
        fn(v, f.int())
    with pytest.raises(ValueError, match="faces"):
        fn(v, f.reshape(-1))
    with pytest.raises(ValueError, match="faces"):
        fn(v, f + 1)  # index 12 out of range
    with pytest.raises(ValueError, match="faces"):
        fn(v, f - 1)


def test_bad_other_arguments():
    v, f = M.icosphere(0)
    with pytest.raises(ValueError, match="method"):
        M.laplacian_loss(v, f, method="cot")
    with pytest.raises(ValueError, match="target"):
        M.edge_length_loss(v, f, target=-1.0)
    with pytest.raises(ValueError, match="resolution"):
        M.voxelize(v, f, 0)
    with pytest.raises(TypeError, match="resolution"):
        M.voxelize(v, f, 8.0)
    with pytest.raises(ValueError, match="bounds"):
        M.voxelize(v, f, 8, bounds=0.0)
    with pytest.raises(ValueError, match="verts"):
        M.voxelize(v * float("nan"), f, 8)
