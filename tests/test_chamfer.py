"""Nearest neighbours and Chamfer distance: scipy's cKDTree as the independent oracle, the cdist
reference, float64 gradcheck with ragged lengths, ties and duplicates, empty clouds, 100k x 100k,
opcheck, torch.compile, bad inputs.
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial import cKDTree
from torch.autograd import gradcheck

import invrender
from invrender import reference as ref

HYP = settings(max_examples=30, deadline=None)
D64 = dict(dtype=torch.float64)


def _clouds(B, N, M, D, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, N, D, generator=g, dtype=dtype), torch.randn(B, M, D, generator=g, dtype=dtype)


def _assert_nn_equal(a, b, atol=1e-12):
    """Equal distances; equal indices except between points at the same distance (ties)."""
    assert torch.allclose(a.dist, b.dist, rtol=0, atol=atol)
    assert torch.equal(a.idx < 0, b.idx < 0)


# ------------------------------------------------------------------------------------------------
# Oracles


@HYP
@given(B=st.integers(1, 3), N=st.integers(0, 120), M=st.integers(0, 200), D=st.integers(1, 8),
       ragged=st.booleans(), seed=st.integers(0, 10**6))
def test_matches_ckdtree_and_reference(B, N, M, D, ragged, seed):
    x, y = _clouds(B, N, M, D, seed)
    g = torch.Generator().manual_seed(seed + 1)
    xl = torch.randint(0, N + 1, (B,), generator=g) if ragged else torch.full((B,), N)
    yl = torch.randint(0, M + 1, (B,), generator=g) if ragged else torch.full((B,), M)
    nn = invrender.nearest_neighbors(x, y, xl, yl)
    _assert_nn_equal(nn, ref.nearest_neighbors(x, y, xl, yl))
    for b in range(B):
        n, m = int(xl[b]), int(yl[b])
        assert (nn.idx[b, n:] == -1).all() and (nn.dist[b, n:] == 0).all()
        if m == 0:
            assert (nn.idx[b] == -1).all() and (nn.dist[b] == 0).all()
            continue
        if n == 0:
            continue
        d, i = cKDTree(y[b, :m].numpy()).query(x[b, :n].numpy())
        np.testing.assert_allclose(nn.dist[b, :n].numpy(), d**2, rtol=1e-12, atol=1e-12)
        got = nn.idx[b, :n].numpy()
        assert (got >= 0).all() and (got < m).all()
        # The index found is at the nearest distance (cKDTree may pick another among ties).
        np.testing.assert_allclose(((x[b, :n].numpy() - y[b, got].numpy()) ** 2).sum(-1), d**2, rtol=1e-12, atol=1e-12)
        assert (got == i).mean() > 0.99 or n < 100


def test_ties_and_duplicates_pick_the_smallest_index():
    y = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [-1.0, 0.0], [1.0, 0.0]]], **D64)
    x = torch.tensor([[[0.0, 0.0], [0.0, 0.5], [2.0, 0.0], [0.0, 0.0], [-0.5, 0.0]]], **D64)
    nn = invrender.nearest_neighbors(x, y)
    # (0, 0): points 0 and 2 coincide; (0, .5): 0 and 2 at 0.25; (2, 0): 1 and 4; (-.5, 0): 0, 2, 3.
    assert nn.idx.tolist() == [[0, 0, 1, 0, 0]]
    assert nn.dist.tolist() == [[0.0, 0.25, 1.0, 0.0, 0.25]]
    # Large clouds with many duplicates go through the k-d tree: the same rule.
    g = torch.Generator().manual_seed(0)
    base = torch.randint(0, 5, (1, 3000, 3), generator=g).to(torch.float64)  # a 5^3 lattice, many repeats
    q = torch.randint(0, 5, (1, 500, 3), generator=g).to(torch.float64) + 0.25
    # Queries half way between lattice points: equidistant neighbours on both sides of splitting
    # planes, at exactly the plane's distance (the search must not prune those).
    q2 = torch.randint(0, 4, (1, 500, 3), generator=g).to(torch.float64) + torch.tensor([0.5, 0.0, 0.0], **D64)
    for query in (q, q2):
        nn = invrender.nearest_neighbors(query, base)
        expect = ref.nearest_neighbors(query, base)
        assert torch.equal(nn.idx, expect.idx) and torch.allclose(nn.dist, expect.dist, rtol=0, atol=1e-14)



def _duplicate_clouds(n, dtype):
    """(name, x, y) pairs where ties are everywhere: one repeated point, zero padding, a lattice."""
    g = torch.Generator().manual_seed(3)
    zeros = torch.zeros(1, n, 3, dtype=dtype)
    rand = torch.rand(1, n, 3, generator=g, dtype=dtype)
    padded = zeros.clone()
    padded[:, : n // 10] = rand[:, : n // 10]  # a tenth real points, the rest zero padding
    lattice = torch.randint(0, 3, (1, n, 3), generator=g).to(dtype)  # 27 points, each ~n/27 times
    return [("all duplicates", zeros, zeros), ("random vs duplicates", rand, zeros),
            ("zero-padded", padded, padded), ("random vs zero-padded", rand, padded),
            ("lattice", lattice, lattice)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_duplicates_are_searched_in_logarithmic_work(dtype):
    # Ties made the k-d tree visit every leaf (quadratic: 100k zeros took 53 s). The tree reports
    # the leaves it scanned (test-only counter): a few per query, not n / 16 = 250.
    n = 4000
    for name, x, y in _duplicate_clouds(n, dtype):
        invrender._C._nn_leaf_visits()
        nn = invrender.nearest_neighbors(x, y)
        per_query = invrender._C._nn_leaf_visits() / n
        assert 1 <= per_query <= 8, (name, per_query)
        # Smallest index among the equally near points, as the brute-force reference and numpy.
        expect = ref.nearest_neighbors(x, y)
        assert torch.equal(nn.idx, expect.idx), name
        d = ((x[0, :, None] - y[0, None]) ** 2).sum(-1).numpy()
        first = np.argmax(d == d.min(1, keepdims=True), axis=1)  # first index at the minimum
        np.testing.assert_array_equal(nn.idx[0].numpy(), first, err_msg=name)
        eps = torch.finfo(dtype).eps  # numpy sums the squares without fused multiply-adds
        torch.testing.assert_close(nn.dist[0], torch.from_numpy(d[np.arange(n), first]), rtol=4 * eps, atol=0)


def test_duplicates_beside_lengths_and_gradients():
    # Zero padding beyond y_lengths is never chosen; duplicates share the gradient of the first.
    y = torch.zeros(2, 300, 2, **D64)
    y[:, :100] = 0.5
    x = torch.full((2, 200, 2), 0.4, **D64)
    nn = invrender.nearest_neighbors(x, y, torch.tensor([200, 200]), torch.tensor([100, 300]))
    assert (nn.idx[0] == 0).all() and (nn.dist[0] - 0.02).abs().max() < 1e-15
    assert (nn.idx[1] == 0).all()  # (0.5, 0.5) at 0.02 beats the zeros at 0.32
    yr = y.clone().requires_grad_()
    invrender.nearest_neighbors(x, yr).dist.sum().backward()
    assert yr.grad[:, 1:].abs().max() == 0 and torch.allclose(yr.grad[:, 0], torch.full((2, 2), 200 * 0.2, **D64))

def test_chamfer_forms_and_reductions_match_closed_form():
    x, y = _clouds(3, 40, 30, 3, seed=2)
    xl, yl = torch.tensor([40, 17, 0]), torch.tensor([30, 0, 9])
    dx = ref.nearest_neighbors(x, y, xl, yl).dist
    dy = ref.nearest_neighbors(y, x, yl, xl).dist
    ex = [dx[b, :xl[b]] for b in range(3)]
    ey = [dy[b, :yl[b]] for b in range(3)]
    mean = lambda t: t.mean() if t.numel() else torch.zeros((), **D64)  # noqa: E731
    per_cloud = torch.stack([mean(ex[b]) + mean(ey[b]) for b in range(3)])
    got = invrender.chamfer_distance(x, y, xl, yl, batch_reduction=None)
    assert torch.allclose(got, per_cloud, atol=1e-14)
    assert torch.allclose(invrender.chamfer_distance(x, y, xl, yl), per_cloud.mean(), atol=1e-14)
    sums = torch.stack([ex[b].sum() + ey[b].sum() for b in range(3)])
    assert torch.allclose(invrender.chamfer_distance(x, y, xl, yl, point_reduction="sum", batch_reduction="sum"),
                          sums.sum(), atol=1e-13)
    # Euclidean ("Chamfer-L1" is half of it), single direction, per point, return_nn.
    l1 = invrender.chamfer_distance(x, y, xl, yl, squared=False, batch_reduction=None)
    expect = torch.stack([mean(ex[b].sqrt()) + mean(ey[b].sqrt()) for b in range(3)])
    assert torch.allclose(l1, expect, atol=1e-14)
    single = invrender.chamfer_distance(x, y, xl, yl, single_directional=True, batch_reduction=None)
    assert torch.allclose(single, torch.stack([mean(e) for e in ex]), atol=1e-14)
    px, py = invrender.chamfer_distance(x, y, xl, yl, point_reduction=None, batch_reduction=None)
    assert torch.allclose(px, dx, rtol=0, atol=1e-14) and torch.allclose(py, dy, rtol=0, atol=1e-14)
    _, (nx, ny) = invrender.chamfer_distance(x, y, xl, yl, return_nn=True)
    assert torch.equal(nx.idx, ref.nearest_neighbors(x, y, xl, yl).idx)
    for fn in (invrender.chamfer_distance, ref.chamfer_distance):
        assert torch.isfinite(fn(x, y, xl, yl, squared=False)).all()


def test_hundred_thousand_points_match_ckdtree():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 100_000, 3, generator=g, **D64)
    y = torch.rand(1, 100_000, 3, generator=g, **D64)
    cd = invrender.chamfer_distance(x, y, squared=False, point_reduction="mean")
    dx, _ = cKDTree(y[0].numpy()).query(x[0].numpy())
    dy, _ = cKDTree(x[0].numpy()).query(y[0].numpy())
    assert cd.item() == pytest.approx(dx.mean() + dy.mean(), rel=1e-12)


# ------------------------------------------------------------------------------------------------
# Gradients


@pytest.mark.parametrize("squared", [True, False])
def test_gradcheck_ragged(squared):
    x, y = _clouds(2, 9, 7, 3, seed=4)
    x, y = x.requires_grad_(), y.requires_grad_()
    xl, yl = torch.tensor([9, 4]), torch.tensor([5, 7])
    fn = lambda x, y: invrender.chamfer_distance(x, y, xl, yl, squared=squared, batch_reduction=None)  # noqa: E731
    assert gradcheck(fn, (x, y))
    assert gradcheck(lambda x, y: invrender.nearest_neighbors(x, y, xl, yl).dist, (x, y))


def test_gradients_match_reference_and_are_zero_beyond_lengths():
    x, y = _clouds(2, 60, 80, 2, seed=6)
    xl, yl = torch.tensor([60, 31]), torch.tensor([80, 12])
    grads = []
    for fn in (invrender.chamfer_distance, ref.chamfer_distance):
        a, b = x.clone().requires_grad_(), y.clone().requires_grad_()
        grads.append(torch.autograd.grad(fn(a, b, xl, yl, squared=False), (a, b)))
    for g, h in zip(*grads):
        assert torch.allclose(g, h, rtol=1e-12, atol=1e-14)
    gx, gy = grads[0]
    assert (gx[1, 31:] == 0).all() and (gy[1, 12:] == 0).all() and gx[1, :31].abs().sum() > 0


def test_coincident_points_and_empty_clouds_are_finite():
    x = torch.zeros(2, 4, 3, **D64, requires_grad=True)
    y = torch.zeros(2, 5, 3, **D64, requires_grad=True)
    xl, yl = torch.tensor([4, 0]), torch.tensor([5, 0])
    for squared in (True, False):
        loss = invrender.chamfer_distance(x, y, xl, yl, squared=squared)
        gx, gy = torch.autograd.grad(loss, (x, y))
        assert loss.item() == 0 and torch.isfinite(gx).all() and torch.isfinite(gy).all()
    empty = invrender.nearest_neighbors(x[:, :0], y)
    assert empty.dist.shape == (2, 0)


def test_backward_is_deterministic_on_cpu():
    x, y = _clouds(3, 2000, 1500, 3, seed=1, dtype=torch.float32)
    x, y = x.requires_grad_(), y.requires_grad_()
    before = torch.get_num_threads()
    grads = []
    for threads in (1, 2, 1):
        torch.set_num_threads(threads)
        grads.append(torch.autograd.grad(invrender.chamfer_distance(x, y), (x, y)))
    torch.set_num_threads(before)
    assert all(torch.equal(a, b) for g in grads[1:] for a, b in zip(g, grads[0]))


def test_float32():
    x, y = _clouds(2, 500, 400, 3, seed=3)
    a = invrender.chamfer_distance(x.float(), y.float())
    assert a.dtype == torch.float32
    assert a.item() == pytest.approx(invrender.chamfer_distance(x, y).item(), rel=1e-5)


# ------------------------------------------------------------------------------------------------
# Bad input, opcheck, compile


def _bad_cases():
    x, y = _clouds(2, 5, 6, 3)
    return [
        (lambda: invrender.nearest_neighbors(x, y[..., :2]), ValueError, "dimension"),
        (lambda: invrender.nearest_neighbors(x[0], y), ValueError, "'x'"),
        (lambda: invrender.nearest_neighbors(x, y[:1]), ValueError, "batch"),
        (lambda: invrender.nearest_neighbors(x.long(), y.long()), TypeError, "'x'"),
        (lambda: invrender.nearest_neighbors(x, y.float()), TypeError, "'y'"),
        (lambda: invrender.nearest_neighbors(x, y, x_lengths=torch.tensor([6, 1])), ValueError, "x_lengths"),
        (lambda: invrender.nearest_neighbors(x, y, y_lengths=torch.tensor([-1, 1])), ValueError, "y_lengths"),
        (lambda: invrender.nearest_neighbors(x, y, y_lengths=torch.tensor([1, 1, 1])), ValueError, "y_lengths"),
        (lambda: invrender.nearest_neighbors(x, y, x_lengths=torch.tensor([1.0, 1.0])), TypeError, "x_lengths"),
        (lambda: invrender.nearest_neighbors(x, y, x_lengths=[1, 1]), TypeError, "x_lengths"),
        (lambda: invrender.nearest_neighbors(x.to("meta"), y), ValueError, "device"),
        (lambda: invrender.nearest_neighbors(torch.zeros(1, 2, 9), torch.zeros(1, 2, 9)), ValueError, "D"),
        (lambda: invrender.nearest_neighbors(x * math.nan, y), ValueError, "'x'"),
        (lambda: invrender.chamfer_distance(x, y, point_reduction="max"), ValueError, "point_reduction"),
        (lambda: invrender.chamfer_distance(x, y, batch_reduction="max"), ValueError, "batch_reduction"),
        (lambda: invrender.chamfer_distance(x, y, point_reduction=None), ValueError, "batch_reduction"),
        (lambda: invrender.chamfer_distance(x.numpy(), y), TypeError, "'x'"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_cases())))
def test_bad_inputs(case):
    fn, exc, match = _bad_cases()[case]
    with pytest.raises(exc, match=match):
        fn()


def test_opcheck():
    x, y = _clouds(2, 80, 90, 3, seed=5)
    xl, yl = torch.tensor([80, 33]), torch.tensor([90, 70])
    args = (x.requires_grad_(), y.requires_grad_(), xl, yl)
    torch.library.opcheck(torch.ops.invrender.nearest_neighbors_forward, args)
    nn = invrender.nearest_neighbors(x, y, xl, yl)
    grad = torch.rand(2, 80, **D64)
    for need_y in (True, False):
        torch.library.opcheck(torch.ops.invrender.nearest_neighbors_backward,
                              (grad, x.detach(), y.detach(), nn.idx, need_y))


def test_torch_compile_fullgraph():
    x, y = _clouds(2, 100, 70, 3, seed=7)
    xl = torch.tensor([100, 40])
    fn = lambda x, y: invrender.chamfer_distance(x, y, x_lengths=xl, squared=False)  # noqa: E731
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    a, b = x.clone().requires_grad_(), y.clone().requires_grad_()
    out = compiled(a, b)
    assert torch.allclose(out, fn(x, y))
    out.backward()
    assert torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------------
# CUDA


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(dtype):
    x, y = _clouds(3, 1000, 1300, 3, seed=8, dtype=dtype)
    xl, yl = torch.tensor([1000, 10, 0]), torch.tensor([1300, 700, 5])
    a = invrender.nearest_neighbors(x, y, xl, yl)
    b = invrender.nearest_neighbors(x.cuda(), y.cuda(), xl.cuda(), yl.cuda())
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert torch.allclose(a.dist, b.dist.cpu(), atol=tol)
    assert (a.idx == b.idx.cpu()).float().mean() > 0.999
    xc, yc = x.cuda().requires_grad_(), y.cuda().requires_grad_()
    gc = torch.autograd.grad(invrender.chamfer_distance(xc, yc, xl.cuda(), yl.cuda()), (xc, yc))
    xr, yr = x.clone().requires_grad_(), y.clone().requires_grad_()
    gr = torch.autograd.grad(invrender.chamfer_distance(xr, yr, xl, yl), (xr, yr))
    for u, v in zip(gc, gr):
        assert torch.allclose(u.cpu(), v, atol=1e-4 if dtype == torch.float32 else 1e-10)


@pytest.mark.cuda
def test_cuda_gradcheck():
    x, y = _clouds(2, 9, 7, 3, seed=4)
    x, y = x.cuda().requires_grad_(), y.cuda().requires_grad_()
    xl, yl = torch.tensor([9, 4]).cuda(), torch.tensor([5, 7]).cuda()
    # The y gradients are summed with atomicAdd: equal up to rounding run to run.
    assert gradcheck(lambda x, y: invrender.chamfer_distance(x, y, xl, yl, squared=False, batch_reduction=None), (x, y),
                     nondet_tol=1e-12)
