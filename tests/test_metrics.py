"""invrender.metrics: Chamfer-L1 (scipy oracle), ICP, IoU, PSNR, SSIM (skimage oracle)."""

import math

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from invrender import metrics as M

from .optional import optional_import

trimesh = optional_import("trimesh")

DT = torch.float64


def oracle_chamfer_l1(x, y):
    """0.5 (mean ||x -> y|| + mean ||y -> x||) with scipy k-d trees (numpy (N, 3), (M, 3))."""
    dx = cKDTree(y).query(x)[0].mean() if len(x) and len(y) else 0.0
    dy = cKDTree(x).query(y)[0].mean() if len(x) and len(y) else 0.0
    return 0.5 * (dx + dy)


def local_sample_points(verts, faces, num_points, return_normals=False, generator=None):
    """Area-weighted uniform surface samples (test stand-in for invrender.mesh.sample_points)."""
    out = []
    for v in verts:
        tri = v[faces]  # (F, 3, 3)
        area = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]).norm(dim=1)
        face = torch.multinomial(area, num_points, replacement=True, generator=generator)
        u, w = torch.rand(2, num_points, 1, dtype=v.dtype, generator=generator)
        flip = (u + w) > 1
        u, w = torch.where(flip, 1 - u, u), torch.where(flip, 1 - w, w)
        t = tri[face]
        out.append(t[:, 0] + u * (t[:, 1] - t[:, 0]) + w * (t[:, 2] - t[:, 0]))
    return torch.stack(out)


def axis_angle(axis, degrees):
    axis = torch.tensor(axis, dtype=DT)
    axis = axis / axis.norm()
    K = torch.tensor([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]], dtype=DT)
    a = math.radians(degrees)
    return torch.eye(3, dtype=DT) + math.sin(a) * K + (1 - math.cos(a)) * K @ K


def asymmetric_blob(n, generator):
    """An anisotropic Gaussian blob with an off-axis lobe: no rotational or mirror symmetry."""
    a = torch.randn(n, 3, generator=generator, dtype=DT) * torch.tensor([0.3, 0.15, 0.08], dtype=DT)
    b = torch.randn(n // 2, 3, generator=generator, dtype=DT) * 0.05 + torch.tensor([0.25, 0.12, 0.0], dtype=DT)
    return torch.cat([a, b])


# ------------------------------------------------------------------------------------------------
# Chamfer-L1


def test_chamfer_l1_matches_ckdtree():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 500, 3, generator=g, dtype=DT)
    y = torch.rand(3, 700, 3, generator=g, dtype=DT) * 1.5 - 0.2
    got = M.chamfer_l1(x, y)
    assert got.shape == (3,) and got.dtype == DT
    want = [oracle_chamfer_l1(x[b].numpy(), y[b].numpy()) for b in range(3)]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)


def test_chamfer_l1_ragged_lengths_match_ckdtree():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 400, 3, generator=g)
    y = torch.randn(3, 300, 3, generator=g)
    xl = torch.tensor([400, 123, 7])
    yl = torch.tensor([55, 300, 1])
    got = M.chamfer_l1(x, y, xl, yl)
    want = [oracle_chamfer_l1(x[b, :xl[b]].double().numpy(), y[b, :yl[b]].double().numpy()) for b in range(3)]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    # Padding values do not matter.
    x2, y2 = x.clone(), y.clone()
    x2[1, 123:] = 1e3
    y2[0, 55:] = -1e3
    torch.testing.assert_close(M.chamfer_l1(x2, y2, xl, yl), got)


def test_chamfer_l1_identical_clouds_is_zero_and_differentiable():
    x = torch.rand(2, 100, 3, dtype=DT)
    assert torch.equal(M.chamfer_l1(x, x.clone()), torch.zeros(2, dtype=DT))
    y = (x + 0.01).requires_grad_()
    M.chamfer_l1(x, y).sum().backward()
    assert torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0


def test_chamfer_l1_is_half_the_euclidean_chamfer_of_a_shift():
    # A shifted copy far from its neighbours: each point's nearest neighbour is its shifted twin.
    x = torch.tensor([[[0.0, 0.0, 0.0], [5.0, 0.0, 0.0], [0.0, 5.0, 0.0]]], dtype=DT)
    y = x + torch.tensor([0.0, 0.0, 0.3], dtype=DT)
    torch.testing.assert_close(M.chamfer_l1(x, y), torch.tensor([0.3], dtype=DT))


@pytest.mark.cuda
def test_chamfer_l1_cuda_matches_cpu():
    x, y = torch.rand(2, 300, 3, dtype=DT), torch.rand(2, 200, 3, dtype=DT)
    torch.testing.assert_close(M.chamfer_l1(x.cuda(), y.cuda()).cpu(), M.chamfer_l1(x, y))


def test_chamfer_l1_bad_inputs_name_the_argument():
    x = torch.rand(2, 10, 3)
    with pytest.raises(ValueError, match="pred_points"):
        M.chamfer_l1(torch.rand(10, 3), x)
    with pytest.raises(ValueError, match="gt_points"):
        M.chamfer_l1(x, torch.rand(2, 10, 2))
    with pytest.raises(TypeError, match="gt_points"):
        M.chamfer_l1(x, [[0.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="gt_points"):
        M.chamfer_l1(x, torch.rand(3, 10, 3))
    with pytest.raises(TypeError, match="gt_points"):
        M.chamfer_l1(x, torch.rand(2, 10, 3, dtype=DT))
    with pytest.raises(ValueError, match="pred_lengths"):
        M.chamfer_l1(x, x, pred_lengths=torch.tensor([3, 11]))
    with pytest.raises(TypeError, match="gt_lengths"):
        M.chamfer_l1(x, x, gt_lengths=torch.tensor([3.0, 1.0]))


# ------------------------------------------------------------------------------------------------
# normalisation and ICP


def test_normalize_points_centres_the_box_and_scales_to_half():
    g = torch.Generator().manual_seed(3)
    p = torch.rand(2, 50, 3, generator=g, dtype=DT) * torch.tensor([4.0, 1.0, 2.0], dtype=DT) + 7.0
    n = M.normalize_points(p)
    lo, hi = n.amin(1), n.amax(1)
    torch.testing.assert_close(lo + hi, torch.zeros(2, 3, dtype=DT))
    torch.testing.assert_close(n.abs().amax((1, 2)), torch.full((2,), 0.5, dtype=DT))
    # Uniform scale: ratios of extents kept.
    torch.testing.assert_close((hi - lo) / (hi - lo)[:, :1], (p.amax(1) - p.amin(1)) / (p.amax(1) - p.amin(1))[:, :1])
    # Padding points do not enter the box.
    q = p.clone()
    q[1, 40:] = 100.0
    torch.testing.assert_close(M.normalize_points(q, torch.tensor([50, 40]))[1, :40], M.normalize_points(p[1:, :40])[0])


def test_rotation_6d_identity_and_orthonormal():
    eye = M.rotation_6d_to_matrix(torch.tensor([1.0, 0, 0, 0, 1, 0], dtype=DT))
    torch.testing.assert_close(eye, torch.eye(3, dtype=DT))
    R = M.rotation_6d_to_matrix(torch.randn(5, 6, dtype=DT))
    torch.testing.assert_close(R @ R.transpose(1, 2), torch.eye(3, dtype=DT).expand(5, 3, 3))
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(5, dtype=DT))


def test_icp_recovers_rotation_translation_and_anisotropic_scale():
    g = torch.Generator().manual_seed(0)
    target = torch.stack([asymmetric_blob(1000, g), asymmetric_blob(1000, g)])  # (2, 1500, 3)
    # The transform ICP should find, x' = R (s * x) + t, one per batch item.
    R = torch.stack([axis_angle([1.0, 2.0, 3.0], 25.0), axis_angle([0.0, 1.0, -1.0], -20.0)])
    s = torch.tensor([[1.2, 0.85, 1.1], [0.9, 1.15, 1.0]], dtype=DT)
    t = torch.tensor([[0.1, -0.05, 0.08], [-0.06, 0.04, 0.1]], dtype=DT)
    # Source = inverse transform applied to the target: x = s^-1 R^T (x' - t).
    source = ((target - t[:, None]) @ R) / s[:, None]
    before = M.chamfer_l1(source, target)
    aligned, tr = M.icp_align(source, target, iterations=100, lr=0.01)
    after = M.chamfer_l1(aligned, target)
    # Exact correspondences exist, so the optimum is 0. The bound: 1/20 of the mean nearest-
    # neighbour spacing inside the target (so no wrong point matching can reach it) and < 2% of
    # the initial misalignment. 100 Adam steps at lr 0.01 leave ~2e-4 here.
    spacing = torch.tensor([cKDTree(c.numpy()).query(c.numpy(), k=2)[0][:, 1].mean() for c in target], dtype=DT)
    assert (after < spacing / 20).all(), (after, spacing)
    assert (after < 0.02 * before).all(), (after, before)
    torch.testing.assert_close(tr.rotation, R, atol=3e-3, rtol=0)
    torch.testing.assert_close(tr.scale, s, atol=5e-3, rtol=0)
    torch.testing.assert_close(tr.translation, t, atol=3e-3, rtol=0)
    torch.testing.assert_close(tr.apply(source), aligned)
    assert tr.loss.shape == (2,) and (tr.loss >= 0).all()


def test_icp_ragged_and_subsampled():
    g = torch.Generator().manual_seed(8)
    target = asymmetric_blob(600, g)[None].repeat(2, 1, 1)  # (2, 900, 3)
    R = axis_angle([0.0, 0.0, 1.0], 15.0)
    source = (target - 0.05) @ R  # x = R^T (x' - t): ICP finds R and t = 0.05
    tl = torch.tensor([900, 900])
    sl = torch.tensor([900, 700])
    source[1, 700:] = 50.0  # padding must be ignored
    aligned, tr = M.icp_align(source, target, source_lengths=sl, target_lengths=tl, num_points=400,
                              generator=torch.Generator().manual_seed(0))
    assert aligned.shape == source.shape
    # Different random subsets of 400 points of source and target have no exact correspondences:
    # the fit is good to the subsets' point spacing, not exactly.
    torch.testing.assert_close(tr.rotation, R.expand(2, 3, 3), atol=5e-2, rtol=0)
    torch.testing.assert_close(tr.translation, torch.full((2, 3), 0.05, dtype=DT), atol=2e-2, rtol=0)
    # Point-to-point errors (source point i is target point i moved): from ~0.1 before to the
    # subsets' sampling noise after.
    for b, n in enumerate(sl.tolist()):
        before = (source[b, :n] - target[b, :n]).norm(dim=1).mean()
        err = (aligned[b, :n] - target[b, :n]).norm(dim=1)
        assert err.mean() < 0.15 * before and err.max() < 0.08, (err.mean(), err.max(), before)


def test_icp_keeps_the_best_iterate():
    g = torch.Generator().manual_seed(4)
    target = asymmetric_blob(200, g)[None]
    # Already aligned: the identity (iterate 0) is the optimum; a huge lr only makes it worse.
    aligned, tr = M.icp_align(target.clone(), target, iterations=5, lr=1.0)
    torch.testing.assert_close(aligned, target)
    torch.testing.assert_close(tr.rotation[0], torch.eye(3, dtype=DT))
    assert tr.loss.item() == 0.0


def test_icp_bad_inputs():
    x = torch.rand(1, 10, 3)
    with pytest.raises(ValueError, match="source"):
        M.icp_align(torch.rand(10, 3), x)
    with pytest.raises(ValueError, match="iterations"):
        M.icp_align(x, x, iterations=-1)
    with pytest.raises(ValueError, match="lr"):
        M.icp_align(x, x, lr=0.0)


def _box(extent, offset=(0.0, 0.0, 0.0)):
    m = trimesh.creation.box(extents=extent)
    v = torch.tensor(m.vertices, dtype=DT) + torch.tensor(offset, dtype=DT)
    return v, torch.tensor(m.faces, dtype=torch.int64)


def sampling_floor(verts, faces, n):
    """Expected Chamfer-L1 between two independent n-point samplings of one surface: the mean
    nearest-neighbour distance of a planar Poisson process of density n / area, 0.5 / sqrt(density)."""
    area = trimesh.Trimesh(verts.numpy(), faces.numpy(), process=False).area
    return 0.5 * math.sqrt(area / n)


def test_chamfer_l1_meshes_samples_both_surfaces():
    v, f = _box([0.6, 0.4, 0.2])
    v2 = v + torch.tensor([0.0, 0.0, 0.05], dtype=DT)
    g = torch.Generator().manual_seed(5)
    got = M.chamfer_l1_meshes(torch.stack([v, v]), f, torch.stack([v, v2]), f, num_points=2000,
                              generator=g, sample_fn=local_sample_points)
    # Same seed, same sampler: the function is chamfer_l1 of the samples.
    g = torch.Generator().manual_seed(5)
    p = torch.cat([local_sample_points(x[None], f, 2000, generator=g) for x in (v, v)])
    q = torch.cat([local_sample_points(x[None], f, 2000, generator=g) for x in (v, v2)])
    torch.testing.assert_close(got, M.chamfer_l1(p, q))
    floor = sampling_floor(v, f, 2000)
    assert 0.8 * floor < got[0] < 1.25 * floor and got[1] > 2 * floor
    # Lists of meshes of different sizes work too.
    v3, f3 = _box([0.5, 0.5, 0.5])
    out = M.chamfer_l1_meshes([v, v3], [f, f3], [v, v3], [f, f3], num_points=500, sample_fn=local_sample_points)
    assert out.shape == (2,)
    assert out[0] < 1.25 * sampling_floor(v, f, 500) and out[1] < 1.25 * sampling_floor(v3, f3, 500)


def test_chamfer_l1_meshes_with_icp_alignment():
    gt_v, f = _box([0.8, 0.5, 0.3], offset=(0.05, -0.02, 0.03))
    gt_v = M.normalize_points(gt_v[None])[0]
    R = axis_angle([0.3, 1.0, 0.2], 20.0)
    pred_v = 3.0 * gt_v @ R.T + torch.tensor([1.0, 2.0, -1.0], dtype=DT)
    g = torch.Generator().manual_seed(6)
    raw = M.chamfer_l1_meshes(pred_v, f, gt_v, f, num_points=1500, generator=g, sample_fn=local_sample_points)
    g = torch.Generator().manual_seed(6)
    aligned = M.chamfer_l1_meshes(pred_v, f, gt_v, f, num_points=1500, align=True, generator=g,
                                  sample_fn=local_sample_points)
    floor = sampling_floor(gt_v, f, 1500)  # ~0.02
    assert raw.item() > 50 * floor
    # Aligned down to the sampling noise of 1500 points on each surface.
    assert aligned.item() < 1.2 * floor, (aligned, floor)


def test_chamfer_l1_meshes_bad_inputs():
    v, f = _box([1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="num_points"):
        M.chamfer_l1_meshes(v, f, v, f, num_points=0, sample_fn=local_sample_points)
    with pytest.raises(ValueError, match="pred_faces"):
        M.chamfer_l1_meshes(v, f + 100, v, f, sample_fn=local_sample_points)
    with pytest.raises(ValueError, match="gt_verts"):
        M.chamfer_l1_meshes(v, f, v[None].expand(2, -1, -1), f, sample_fn=local_sample_points)


# ------------------------------------------------------------------------------------------------
# IoU


def test_voxel_iou_half_overlapping_boxes():
    a = torch.zeros(1, 8, 8, 8)
    b = torch.zeros(1, 8, 8, 8)
    a[0, 2:6, 2:6, 0:4] = 1  # 64 voxels
    b[0, 2:6, 2:6, 2:6] = 1  # 64 voxels, 32 shared
    torch.testing.assert_close(M.voxel_iou(a, b), torch.tensor([32 / 96]))
    torch.testing.assert_close(M.voxel_iou(a, a), torch.tensor([1.0]))
    # Threshold: 0.4 occupancy is empty at 0.5, full at 0.3.
    c = a * 0.4
    torch.testing.assert_close(M.voxel_iou(torch.cat([c, c]), torch.cat([a, a]), threshold=0.5)[0], torch.tensor(0.0))
    torch.testing.assert_close(M.voxel_iou(c, a, threshold=0.3), torch.tensor([1.0]))
    # Empty union -> 1; booleans work; batch of 5-D grids.
    torch.testing.assert_close(M.voxel_iou(torch.zeros(1, 4, 4, 4), torch.zeros(1, 4, 4, 4)), torch.tensor([1.0]))
    got = M.voxel_iou(torch.stack([a, b]).bool(), torch.stack([b, b]).bool())
    torch.testing.assert_close(got, torch.tensor([32 / 96, 1.0]))


def test_mask_iou_soft_and_hard():
    a = torch.zeros(1, 4, 4)
    b = torch.zeros(1, 4, 4)
    a[0, :, :2] = 1  # left half
    b[0, :2, :] = 1  # top half: 4 shared of 12
    torch.testing.assert_close(M.mask_iou(a, b), torch.tensor([4 / 12]))
    torch.testing.assert_close(M.mask_iou(a, b, soft=False), torch.tensor([4 / 12]))
    # Soft: p = 0.6 on a's half and 0 elsewhere vs g = a: sum(pg) = 4.8, sum(p + g - pg) = 8.
    p = a * 0.6
    torch.testing.assert_close(M.mask_iou(p, a), torch.tensor([4.8 / 8]))
    torch.testing.assert_close(M.mask_iou(p, a, soft=False), torch.tensor([1.0]))
    torch.testing.assert_close(M.mask_iou(a * 0.4, a, soft=False), torch.tensor([0.0]))
    torch.testing.assert_close(M.mask_iou(torch.zeros(2, 1, 3, 3), torch.zeros(2, 1, 3, 3)), torch.ones(2))
    q = p.clone().requires_grad_()
    M.mask_iou(q, a).sum().backward()
    assert torch.isfinite(q.grad).all()


def test_iou_bad_inputs():
    with pytest.raises(ValueError, match="gt"):
        M.voxel_iou(torch.zeros(1, 4, 4, 4), torch.zeros(1, 4, 4, 5))
    with pytest.raises(TypeError, match="pred"):
        M.mask_iou(np.zeros((1, 4, 4)), torch.zeros(1, 4, 4))


# ------------------------------------------------------------------------------------------------
# Shape-generation metrics (MMD, coverage, 1-NNA)


def test_pairwise_voxel_iou_distance_matches_scipy_jaccard():
    from scipy.spatial.distance import cdist

    g = torch.Generator().manual_seed(0)
    a = torch.rand(7, 1, 5, 5, 5, generator=g)
    b = torch.rand(5, 1, 5, 5, 5, generator=g) * 0.9
    a[3] = 0  # an empty grid
    b[1] = 0
    for threshold in (0.5, 0.7):
        xa = (a > threshold).flatten(1).numpy()
        xb = (b > threshold).flatten(1).numpy()
        want = np.nan_to_num(cdist(xa, xb, "jaccard"))  # scipy: empty vs empty -> 0 (nan in old versions)
        got = M.pairwise_voxel_iou_distance(a, b, threshold=threshold, chunk=3)
        assert got.shape == (7, 5) and got.dtype == torch.float64
        np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-12)
    assert M.pairwise_voxel_iou_distance(a[3:4], b[1:2]).item() == 0.0  # empty vs empty
    assert M.pairwise_voxel_iou_distance(a[3:4], a[:1]).item() == 1.0   # empty vs not
    torch.testing.assert_close(M.pairwise_voxel_iou_distance(a, a).diagonal(), torch.zeros(7, dtype=DT))


def oracle_generation_metrics(xy, xx, yy):
    """MMD, coverage and 1-NNA by explicit loops over shapes (numpy distance matrices)."""
    G, R = xy.shape
    mmd = np.mean([min(xy[g, r] for g in range(G)) for r in range(R)])
    matched = {min(range(R), key=lambda r: xy[g, r]) for g in range(G)}
    score = 0.0
    for i in range(G + R):
        if i < G:
            same = min(xx[i, j] for j in range(G) if j != i)
            other = min(xy[i, r] for r in range(R))
        else:
            same = min(yy[i - G, j] for j in range(R) if j != i - G)
            other = min(xy[g, i - G] for g in range(G))
        score += 1.0 if same < other else 0.5 if same == other else 0.0
    return {"mmd": mmd, "coverage": len(matched) / R, "nna": score / (G + R)}


def test_generation_metrics_match_loops_on_point_sets():
    from scipy.spatial.distance import cdist

    rng = np.random.default_rng(0)
    for G, R, shift in ((6, 9, 0.0), (10, 4, 0.5), (8, 8, 3.0)):
        x = rng.normal(size=(G, 2)) + shift
        y = rng.normal(size=(R, 2))
        got = M.generation_metrics(cdist(x, y), cdist(x, x), torch.from_numpy(cdist(y, y)))
        want = oracle_generation_metrics(cdist(x, y), cdist(x, x), cdist(y, y))
        assert got.keys() == want.keys()
        for k in want:
            assert got[k] == pytest.approx(want[k], abs=1e-12), k


def test_generation_metrics_closed_cases():
    from scipy.spatial.distance import cdist

    y = np.arange(10.0)[:, None]
    # A generator of one shape (ten copies of the reference's middle): it covers 1 of 10.
    x = np.full((10, 1), 4.0)
    m = M.generation_metrics(cdist(x, y), cdist(x, x), cdist(y, y))
    assert m["coverage"] == pytest.approx(0.1)
    assert m["mmd"] == pytest.approx(np.abs(y[:, 0] - 4.0).mean())
    # Memorised reference set: every shape's nearest neighbour is its twin in the other set -> 1-NNA 0,
    # coverage 1, MMD 0. Far-away samples: the classifier separates the sets perfectly -> 1-NNA 1.
    m = M.generation_metrics(cdist(y, y), cdist(y, y), cdist(y, y))
    assert (m["mmd"], m["coverage"], m["nna"]) == (0.0, 1.0, 0.0)
    far = y + 100.0
    m = M.generation_metrics(cdist(far, y), cdist(far, far), cdist(y, y))
    assert m["nna"] == 1.0 and m["coverage"] == pytest.approx(0.1) and m["mmd"] == pytest.approx(100.0 - 4.5)  # all matched to 100


def test_generation_metrics_bad_inputs():
    d = np.zeros((3, 4))
    with pytest.raises(ValueError, match="d_gen_gen"):
        M.generation_metrics(d, np.zeros((4, 4)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="d_ref_ref"):
        M.generation_metrics(d, np.zeros((3, 3)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="d_gen_ref"):
        M.generation_metrics(np.zeros((1, 4)), np.zeros((1, 1)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="non-finite"):
        M.generation_metrics(np.full((3, 4), np.nan), np.zeros((3, 3)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="same shape"):
        M.pairwise_voxel_iou_distance(torch.zeros(2, 4, 4, 4), torch.zeros(2, 4, 4, 5))
    with pytest.raises(TypeError, match="'b'"):
        M.pairwise_voxel_iou_distance(torch.zeros(2, 4, 4, 4), np.zeros((2, 4, 4, 4)))
    with pytest.raises(ValueError, match="chunk"):
        M.pairwise_voxel_iou_distance(torch.zeros(2, 4), torch.zeros(2, 4), chunk=0)


# ------------------------------------------------------------------------------------------------
# PSNR and SSIM


def test_psnr_of_known_mse():
    target = torch.zeros(2, 3, 4, 4, dtype=DT)
    pred = target.clone()
    pred[0] += 0.1  # MSE 0.01 -> 20 dB
    pred[1, 0, 0, 0] = 0.48  # MSE 0.48^2 / 48 = 0.0048
    want = torch.tensor([20.0, 10 * math.log10(1 / 0.0048)], dtype=DT)
    torch.testing.assert_close(M.psnr(pred, target), want)
    torch.testing.assert_close(M.psnr(pred * 255, target * 255, max_val=255), want)
    assert M.psnr(target, target).isinf().all()


def test_ssim_identical_is_one():
    x = torch.rand(2, 3, 20, 24, dtype=DT)
    torch.testing.assert_close(M.ssim(x, x.clone()), torch.ones(2, dtype=DT))


def test_ssim_matches_skimage():
    from skimage.metrics import structural_similarity
    g = torch.Generator().manual_seed(7)
    x = torch.rand(3, 3, 32, 40, generator=g, dtype=DT)
    y = (x + 0.2 * torch.randn(3, 3, 32, 40, generator=g, dtype=DT)).clamp(0, 1)
    y[2] = torch.rand(3, 32, 40, generator=g, dtype=DT)  # unrelated image
    got = M.ssim(x, y)
    want = [structural_similarity(x[b].numpy(), y[b].numpy(), gaussian_weights=True, sigma=1.5,
                                  use_sample_covariance=False, data_range=1.0, channel_axis=0) for b in range(3)]
    np.testing.assert_allclose(got.numpy(), want, atol=1e-3)
    # float32, single channel.
    got1 = M.ssim(x[:, :1].float(), y[:, :1].float())
    want1 = [structural_similarity(x[b, 0].numpy(), y[b, 0].numpy(), gaussian_weights=True, sigma=1.5,
                                   use_sample_covariance=False, data_range=1.0) for b in range(3)]
    np.testing.assert_allclose(got1.numpy(), want1, atol=1e-3)


def test_ssim_is_differentiable():
    x = torch.rand(1, 1, 16, 16, dtype=DT)
    y = torch.rand(1, 1, 16, 16, dtype=DT, requires_grad=True)
    M.ssim(x, y).sum().backward()
    assert torch.isfinite(y.grad).all()


def test_image_metric_bad_inputs():
    x = torch.rand(1, 3, 16, 16)
    with pytest.raises(ValueError, match="target"):
        M.psnr(x, torch.rand(1, 3, 16, 15))
    with pytest.raises(ValueError, match="max_val"):
        M.psnr(x, x, max_val=0)
    with pytest.raises(ValueError, match="pred"):
        M.ssim(torch.rand(3, 16, 16), torch.rand(3, 16, 16))
    with pytest.raises(ValueError, match="pred"):
        M.ssim(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="window"):
        M.ssim(x, x, window=4)


@pytest.mark.cuda
def test_image_and_iou_metrics_on_cuda():
    x, y = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(M.ssim(x.cuda(), y.cuda()).cpu(), M.ssim(x, y))
    torch.testing.assert_close(M.psnr(x.cuda(), y.cuda()).cpu(), M.psnr(x, y))
    torch.testing.assert_close(M.mask_iou(x.cuda(), y.cuda()).cpu(), M.mask_iou(x, y))


def test_chamfer_l1_meshes_takes_ground_truth_point_clouds():
    # gt_faces=None: gt_verts are surface samples, used as given when there are num_points of them.
    from invrender.mesh import icosphere, sample_points

    v, f = icosphere(2)
    v = v.float() * 0.4
    gt = torch.rand(2, 700, 3) - 0.5
    direct = M.chamfer_l1(sample_points(v[None], f, 700, generator=torch.Generator().manual_seed(3)), gt[:1])
    got = M.chamfer_l1_meshes(v, f, gt[:1], None, 700, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(got, direct)
    # more points than num_points: a subset, without repeats; fewer: drawn with replacement
    big = M.chamfer_l1_meshes([v, v], f, [gt[0], gt[1]], None, 300, generator=torch.Generator().manual_seed(0))
    small = M.chamfer_l1_meshes(v, f, [gt[0, :50]], None, 300, generator=torch.Generator().manual_seed(0))
    assert big.shape == (2,) and torch.isfinite(big).all() and torch.isfinite(small).all()
    cloud = gt[0]
    assert M._draw_points(cloud, 700, None) is cloud
    assert len(set(map(tuple, M._draw_points(gt[0], 300, torch.Generator().manual_seed(0)).tolist()))) == 300
    with pytest.raises(ValueError, match="empty point cloud"):
        M.chamfer_l1_meshes(v, f, [gt[0, :0]], None, 10)
