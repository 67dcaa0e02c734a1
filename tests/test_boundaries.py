"""Boundaries the op tests could not see (issue 13): exact ties and boundaries (nearest sampling on
a cell face, coverage at exactly the blur radius, equal depths of slanted faces), exact zeros
(density, absorption, opacity and occupancy 0, where clamps and skips sit), channel counts around
the kernels' chunks of four (C in {1, 4, 5, 9}) and every documented default. Every expectation is
a closed form, an exact (rational) oracle or invrender.reference, never a recorded output.
"""

import math
from collections import namedtuple

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial import cKDTree
from torch.autograd import gradcheck

import invrender
from invrender import reference as ref

from .helpers import exact_coverage, exact_dist2_to_segment, oracle_raymarch, random_rotation, separable_resample

HYP = settings(max_examples=25, deadline=None)
D64 = dict(dtype=torch.float64)
DTYPES = [torch.float32, torch.float64]
MODES = ["trilinear", "nearest"]
# Around the kernels' chunks of four channels: one, a full chunk, a chunk and one, two and one.
CHANNELS = [1, 4, 5, 9]
SoftFragments = namedtuple("SoftFragments", "face_idx dist depth")


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _with_exact_values(x, g, values=(0.0, 1.0), p=0.25):
    """x with a fraction p of its entries replaced by each of `values` (exact boundaries)."""
    x = x.clone()
    for v in values:
        x = torch.where(torch.rand(x.shape, generator=g, dtype=x.dtype) < p, torch.full_like(x, v), x)
    return x


def _weights_like(outputs, seed=1):
    g = _gen(seed)
    return [torch.randn(o.shape, generator=g, dtype=o.dtype) for o in outputs]


def _grads(fn, inputs, seed=1):
    """(outputs, d(sum_k w_k * out_k)/d inputs) of fn(*inputs) for fixed random weights w_k."""
    inputs = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*inputs)
    out = (out,) if isinstance(out, torch.Tensor) else tuple(out)
    loss = sum((o * w).sum() for o, w in zip(out, _weights_like(out, seed)))
    return [o.detach() for o in out], torch.autograd.grad(loss, inputs)


def _assert_close_lists(xs, ys, rtol=1e-10, atol=1e-12):
    for x, y in zip(xs, ys):
        assert x.shape == y.shape
        assert torch.isfinite(x).all()
        assert torch.allclose(x, y, rtol=rtol, atol=atol), (x - y).abs().max()


def _diag(scales, dtype=torch.float64):
    return torch.diag(torch.tensor([float(s) for s in scales], dtype=dtype))


# ================================================================================================
# 1. Exact ties and boundaries
# ------------------------------------------------------------------------------------------------
# Voxel resampling: an identity rotation between grids of different parity puts every sample of an
# axis exactly half way between two input voxels (a tie of nearest sampling; on the first, on the
# face of the grid). Nearest sampling takes the cell containing the point, floor(u + 1/2): a point on
# a cell face belongs to the upper cell, and one on the grid's lower face is inside.

# (input (D, H, W), output size): every axis of different parity somewhere, both directions.
EMBEDDINGS = [((3, 5, 4), (4, 4, 5)), ((4, 3, 2), (3, 4, 3)), ((5, 2, 3), (6, 1, 2)), ((2, 3, 1), (1, 2, 2))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shapes", EMBEDDINGS)
def test_rotate_identity_between_parities_matches_closed_form(shapes, mode, dtype):
    in_shape, size = shapes
    g = _gen(0)
    v = _with_exact_values(torch.rand(2, 3, *in_shape, generator=g, **D64), g).to(dtype).double()
    eye = torch.eye(3, dtype=dtype)
    out, (gv,) = _grads(lambda x: invrender.rotate_voxels(x, eye, size=size, mode=mode), [v.to(dtype)])
    expected = separable_resample(v, (1, 1, 1), size, mode)
    weight = _weights_like(out)[0].double()
    expected_grad = separable_resample(weight, (1, 1, 1), in_shape, mode, adjoint=True)
    if mode == "nearest":  # one input value per output voxel: exact
        np.testing.assert_array_equal(out[0].double().numpy(), expected)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    np.testing.assert_allclose(out[0].double().numpy(), expected, rtol=0, atol=tol)
    np.testing.assert_allclose(gv.double().numpy(), expected_grad, rtol=0, atol=tol)


# Diagonal "rotations" (used as given) with dyadic entries: exact arithmetic in the kernels, and
# samples on cell faces, on the grid's faces and beyond it (scale 1.5 on 3 cells: u = -1/2, 1, 5/2;
# scale 2 on 2 cells: u = -1/2, 3/2).
DIAGONALS = [((3, 2, 3), (1.5, 2.0, -1.5)), ((4, 3, 2), (-2.0, 1.5, 0.5)), ((2, 4, 5), (1.0, -0.5, 2.0)),
             ((3, 3, 3), (-1.0, 1.0, 1.5))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", DIAGONALS)
def test_project_on_cell_faces_matches_closed_form(case, mode, dtype):
    shape, diag = case
    g = _gen(1)
    tau = 0.75
    v = _with_exact_values(torch.rand(2, 5, *shape, generator=g, **D64), g).to(dtype).double()
    R = _diag(diag, dtype)
    out, (gv,) = _grads(lambda x: invrender.project_voxels(x, R, mode=mode, tau=tau), [v.to(dtype)])
    summed = separable_resample(v, diag, None, mode).sum(axis=2)
    expected = 1 - np.exp(-tau * summed)
    w = _weights_like(out)[0].double().numpy()
    upstream = np.repeat((w * tau * (1 - expected))[:, :, None], shape[0], axis=2)
    expected_grad = separable_resample(upstream, diag, shape, mode, adjoint=True)
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    np.testing.assert_allclose(out[0].double().numpy(), expected, rtol=0, atol=tol)
    np.testing.assert_allclose(gv.double().numpy(), expected_grad, rtol=0, atol=10 * tol)
    # rotate_voxels samples the same points.
    rot = invrender.rotate_voxels(v.to(dtype), R, mode=mode)
    np.testing.assert_allclose(rot.double().numpy(), separable_resample(v, diag, None, mode), rtol=0, atol=tol)


dyadic = st.sampled_from([1.0, -1.0, 0.5, -0.5, 1.5, -1.5, 2.0, -2.0, 0.75])


@HYP
@given(shape=st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6)),
       size=st.tuples(st.integers(1, 7), st.integers(1, 7), st.integers(1, 7)),
       diag=st.tuples(dyadic, dyadic, dyadic), C=st.sampled_from(CHANNELS), mode=st.sampled_from(MODES),
       seed=st.integers(0, 2**31 - 1))
def test_rotate_dyadic_diagonal_matches_closed_form(shape, size, diag, C, mode, seed):
    # Grid sizes of both parities and dyadic scales: many samples exactly on cell faces; values
    # include exact 0 and 1.
    g = _gen(seed)
    v = _with_exact_values(torch.rand(1, C, *shape, generator=g, **D64), g)
    out, (gv,) = _grads(lambda x: invrender.rotate_voxels(x, _diag(diag), size=size, mode=mode), [v])
    np.testing.assert_allclose(out[0].numpy(), separable_resample(v, diag, size, mode), rtol=0, atol=1e-12)
    w = _weights_like(out)[0]
    np.testing.assert_allclose(gv.numpy(), separable_resample(w, diag, shape, mode, adjoint=True), rtol=0,
                               atol=1e-12)


# ------------------------------------------------------------------------------------------------
# Rasterization: a face covers a pixel when the signed squared distance is at most the blur radius
# (inclusive). Axis-aligned edges and vertices at dyadic positions give exactly representable
# squared distances; blur equal to one of them must cover the pixel, the next float below must not.

def _pixel_centres(H, W):
    return [(i, j, (2 * j + 1 - W) / W, (H - 2 * i - 1) / H) for i in range(H) for j in range(W)]


def _check_blur_boundary(tri, size, blur, dtype, depth=2.0):
    """Rasterizes the counter-clockwise triangle `tri` with `blur` and checks coverage against the
    exact rule at every pixel: exactly where the pixel's distance is decided exactly (the nearest
    point on an axis-aligned edge or a vertex), elsewhere away from the boundary. Returns the number
    of pixels exactly on the blur radius."""
    H, W = size
    v = torch.tensor([[x, y, depth] for x, y in tri], dtype=dtype)[None]
    f = torch.tensor([[0, 1, 2]])
    frag = invrender.rasterize(v, f, (H, W), layers=1, blur=blur)
    covered = frag.face_idx[0, ..., 0] >= 0
    blur_exact = float(torch.tensor(blur, dtype=dtype))  # the comparison happens in the dtype
    on_radius = 0
    for i, j, px, py in _pixel_centres(H, W):
        inside, d2 = exact_coverage(tri, (px, py))
        expect = inside or d2 <= blur_exact
        exact = inside or _nearest_is_exact(tri, (px, py), d2)
        if exact or abs(float(d2) - blur_exact) > 1e-6:
            assert bool(covered[i, j]) == expect, (i, j, px, py, float(d2), blur_exact)
        if exact and not inside and d2 == blur_exact:
            on_radius += 1
            assert frag.dist[0, i, j, 0].item() == blur_exact  # the distance itself is exact
    ref_frag = ref.rasterize(v, f, (H, W), layers=1, blur=blur)
    assert torch.equal(ref_frag.face_idx, frag.face_idx)
    return on_radius


def _nearest_is_exact(tri, p, d2):
    """Whether the squared distance d2 is attained on an axis-aligned edge or at a vertex (then the
    kernel computes it without rounding for dyadic inputs)."""
    for k in range(3):
        a, b = tri[(k + 1) % 3], tri[(k + 2) % 3]
        axis = a[0] == b[0] or a[1] == b[1]
        vertex = min(exact_dist2_to_segment(a, a, p), exact_dist2_to_segment(b, b, p))
        if (axis and exact_dist2_to_segment(a, b, p) == d2) or vertex == d2:
            return True
    return False


# Counter-clockwise triangles with dyadic vertices, and squared distances attained at pixel centres
# of an 8 x 8 image (centres at odd multiples of 1/8): a vertical edge, a horizontal edge, a vertex.
BLUR_CASES = [
    ([(0.0, -1.0), (1.0, 1.0), (0.0, 1.0)], 1 / 64),    # x = 0 edge, pixel column x = -1/8
    ([(0.0, -1.0), (1.0, 1.0), (0.0, 1.0)], 9 / 64),    # ... and x = -3/8
    ([(-1.0, 0.0), (1.0, 0.0), (0.0, 1.0)], 25 / 64),   # y = 0 edge, row y = -5/8
    ([(0.25, 0.25), (1.0, 0.25), (0.25, 1.0)], 1 / 32),  # vertex (1/4, 1/4), pixel (1/8, 1/8)
    ([(0.25, 0.25), (1.0, 0.25), (0.25, 1.0)], 5 / 32),  # ... pixel (-1/8, 1/8)
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", range(len(BLUR_CASES)))
def test_rasterize_covers_pixels_exactly_on_the_blur_radius(case, dtype):
    tri, blur = BLUR_CASES[case]
    assert _check_blur_boundary(tri, (8, 8), blur, dtype) > 0  # inclusive: covered
    below = float(np.nextafter(np.array(blur, dtype=str(dtype)[6:]), 0))
    assert _check_blur_boundary(tri, (8, 8), below, dtype) == 0  # the next float below: not covered


grid8 = st.integers(-12, 12).map(lambda k: k / 8)


@HYP
@given(x0=grid8, y0=grid8, w=st.integers(1, 12), h=st.integers(1, 12), flip=st.booleans(),
       size=st.sampled_from([(8, 8), (4, 8), (16, 4)]), pick=st.integers(0, 10**6),
       dtype=st.sampled_from(DTYPES))
def test_rasterize_blur_boundary_on_random_dyadic_triangles(x0, y0, w, h, flip, size, pick, dtype):
    # A right triangle with axis-aligned legs on the 1/8 grid; blur set to the squared distance of
    # one of the pixel centres outside it (exactly on the radius, or the next float below).
    tri = [(x0, y0), (x0 + w / 8, y0), (x0, y0 + h / 8)]
    if flip:  # the mirrored triangle, still counter-clockwise
        tri = [(-x, y) for x, y in tri][::-1]
    outside = []
    for _, _, px, py in _pixel_centres(*size):
        inside, d2 = exact_coverage(tri, (px, py))
        if not inside and _nearest_is_exact(tri, (px, py), d2):
            outside.append(float(d2))
    if not outside:
        return
    blur = outside[pick % len(outside)]
    assert _check_blur_boundary(tri, size, blur, dtype) > 0
    below = float(np.nextafter(np.array(blur, dtype=str(dtype)[6:]), 0))
    _check_blur_boundary(tri, size, below, dtype)


# ------------------------------------------------------------------------------------------------
# Depth ties: equal depths go to the smaller face index. Copies of a slanted face have bitwise equal
# interpolated depths at every pixel (flat faces would hit the zmin early exit instead).

def _rasterize_in_face_order(seed, *args, **kwargs):
    invrender._C._set_raster_face_order(seed)
    try:
        return invrender.rasterize(*args, **kwargs)
    finally:
        invrender._C._set_raster_face_order(0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layers", [1, 2, 3, 5])
@pytest.mark.parametrize("order", [0, 1, 2])
def test_depth_ties_of_slanted_faces_go_to_the_smaller_index(layers, order, dtype):
    # No edge passes within 4e-4 of a pixel centre (so coverage is not a matter of rounding).
    verts = torch.tensor([[[-0.91, -0.93, 1.0], [0.93, -0.81, 2.5], [0.07, 0.91, 4.0],     # slanted
                           [-3.0, -3.0, 6.0], [3.0, -3.0, 6.0], [0.0, 3.0, 6.0],         # flat, behind
                           [0.013, -0.51, 1.2], [0.79, 0.31, 1.1], [-0.41, 0.61, 1.3]]],  # slanted, in front
                         dtype=dtype)
    # The slanted face three times (1, 3, 4), the background (0, 5) and the front face (2) twice.
    faces = torch.tensor([[3, 4, 5], [0, 1, 2], [6, 7, 8], [0, 1, 2], [0, 1, 2], [3, 4, 5]])
    frag = _rasterize_in_face_order(order, verts, faces, 12, layers=layers, sigma=0.0)
    expected = ref.rasterize(verts, faces, 12, layers=layers, sigma=0.0)
    assert torch.equal(frag.face_idx, expected.face_idx)
    # Closed form of the order: the front face where it covers the pixel, the three copies of the
    # slanted face (ties: by index) where it does, then the two copies of the background.
    tri = lambda k: [tuple(verts[0, k, :2].tolist()) for k in range(3 * k, 3 * k + 3)]  # noqa: E731
    ties = 0
    for i, j, px, py in _pixel_centres(12, 12):
        want = ([2] if exact_coverage(tri(2), (px, py))[0] else []) + \
               ([1, 3, 4] if exact_coverage(tri(0), (px, py))[0] else []) + [0, 5]
        want = (want + [-1] * layers)[:layers]
        assert frag.face_idx[0, i, j].tolist() == want, (i, j)
        ties += want[0] == 1
    assert ties > 10
    only_slanted = frag.face_idx[0, ..., 0] == 1
    d = frag.depth[0][only_slanted]
    assert (d[:, 1:min(layers, 3)] == d[:, :1]).all()  # equal depths, equal fragments


# ================================================================================================
# 2. Exact zeros: density, absorption, occupancy and opacity exactly 0 (zero-initialised or ReLU
# grids) still get their gradient; the clamps are closed intervals as torch.clamp's gradient.

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D", [1, 3, 4])
def test_raymarch_gradient_at_exactly_zero_density_closed_form(D, dtype):
    # Orthographic, identity, image = grid: one sample per voxel, on its centre. All densities 0:
    # alpha = 1 - exp(-delta sum_k sigma_k), so d alpha / d sigma = delta = 2 / D everywhere, and
    # d image_c / d sigma = delta e_c (nothing in front of or behind any sample).
    C, H, W = 5, 3, 2
    g = _gen(2)
    sigma = torch.zeros(2, 1, D, H, W, dtype=dtype)
    e = torch.rand(2, C, D, H, W, generator=g, dtype=dtype)
    out, (gs, ge) = _grads(lambda s, em: invrender.raymarch(s, em, density=True)[:2], [sigma, e])
    w_img, w_alpha = _weights_like(out)
    delta = 2.0 / D
    expected = delta * ((w_img[:, :, None] * e).sum(1, keepdim=True) + w_alpha[:, :, None])
    tol = dict(rtol=1e-6, atol=1e-7) if dtype == torch.float32 else dict(rtol=1e-13, atol=1e-15)
    assert torch.allclose(gs, expected, **tol)
    assert (out[0] == 0).all() and (out[1] == 0).all()
    # Absorption-only too: d alpha / d sigma = delta.
    (ga,) = torch.autograd.grad(invrender.raymarch(sigma.requires_grad_(), density=True).alpha.sum(), sigma)
    assert torch.allclose(ga, torch.full_like(ga, delta), **tol)


@pytest.mark.parametrize("cam", ["orthographic", "perspective"])
@pytest.mark.parametrize("density", [True, False])
def test_raymarch_relu_grid_gradients_match_reference(cam, density):
    # ReLU-like grids: exact zeros beside positive values (and exact ones in absorption mode).
    g = _gen(3)
    a = torch.relu(torch.randn(2, 1, 5, 4, 4, generator=g, **D64))
    if not density:
        a = _with_exact_values(a.clamp(max=1), g, values=(1.0,), p=0.2)
    e = torch.rand(2, 4, 5, 4, 4, generator=g, **D64)
    R = torch.eye(3, **D64).expand(2, 3, 3)
    fns = [lambda a_, e_, fn=fn: fn(a_, e_, R, camera=cam, density=density) for fn in (invrender.raymarch, ref.raymarch)]
    out, grads = _grads(fns[0], [a, e])
    out_ref, grads_ref = _grads(fns[1], [a, e])
    _assert_close_lists(out, out_ref, rtol=0, atol=1e-12)
    _assert_close_lists(grads, grads_ref, rtol=1e-10, atol=1e-10)
    assert (grads[0][a == 0] != 0).any()


@pytest.mark.parametrize("value", [0.0, 1.0])
def test_raymarch_absorption_clamp_is_closed_at_zero_and_one(value):
    # One slice (D = 1): alpha = a, image = a e. At a = 0 and a = 1 (both ends of the clamp) the
    # gradient is torch.clamp's: d alpha / d a = 1, d image / d a = e.
    g = _gen(4)
    a = torch.full((1, 1, 1, 2, 3), value, **D64)
    e = torch.rand(1, 5, 1, 2, 3, generator=g, **D64)
    out, (ga, _) = _grads(lambda a_, e_: invrender.raymarch(a_, e_)[:2], [a, e])
    w_img, w_alpha = _weights_like(out)
    expected = (w_img[:, :, None] * e).sum(1, keepdim=True) + w_alpha[:, :, None]
    assert torch.allclose(ga, expected, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("mode", MODES)
def test_project_gradient_at_exactly_zero_occupancy(mode):
    # All voxels 0: image 0, d image / d voxel = tau for the sample that reads it (identity: each
    # voxel once, on its centre).
    tau = 0.5
    v = torch.zeros(2, 5, 3, 4, 2, **D64)
    out, (gv,) = _grads(lambda x: invrender.project_voxels(x, mode=mode, tau=tau), [v])
    (w,) = _weights_like(out)
    assert (out[0] == 0).all()
    assert torch.allclose(gv, tau * w[:, :, None].expand_as(v), rtol=1e-15, atol=0)


def test_composite_gradient_at_exactly_zero_alpha():
    # Every layer transparent: T_l = 1, so d image_c / d alpha_l = colour_lc - background_c and
    # d mask / d alpha_l = 1.
    g = _gen(5)
    C = 5
    alpha = torch.zeros(2, 2, 3, 4, **D64)
    colors = torch.rand(2, 2, 3, 4, C, generator=g, **D64)
    bg = torch.rand(2, C, 2, 3, generator=g, **D64)
    out, (ga, gc, gb) = _grads(invrender.composite_layers, [alpha, colors, bg])
    wi, wm = _weights_like(out)
    wi_l = wi.permute(0, 2, 3, 1)[:, :, :, None, :]  # (B, H, W, 1, C)
    expected = (wi_l * (colors - bg.permute(0, 2, 3, 1)[:, :, :, None, :])).sum(-1) + wm[:, 0, :, :, None]
    assert torch.allclose(ga, expected, rtol=1e-14, atol=1e-15)
    assert (gc == 0).all() and torch.allclose(gb, wi)


def test_softras_gradient_at_exactly_zero_probability():
    # prob_l = 0 on every valid layer: image = background, W = w_bg, and
    # d image_c / d prob_l = exp((z'_l - eps) / gamma) (colour_lc - background_c) (zmax cancels).
    g = _gen(6)
    B, H, W, L, C = 1, 2, 2, 3, 5
    gamma, znear, zfar, eps = 0.5, 0.5, 3.0, 1e-3
    prob = torch.zeros(B, H, W, L, **D64)
    depth = 0.6 + 2 * torch.rand(B, H, W, L, generator=g, **D64)
    face_idx = torch.zeros(B, H, W, L, dtype=torch.long)
    colors = torch.rand(B, H, W, L, C, generator=g, **D64)
    bg = torch.rand(B, C, H, W, generator=g, **D64)
    op = torch.ops.invrender.softras_blend_forward
    out, (gp,) = _grads(lambda p: op(p, depth, face_idx, colors, bg, gamma, znear, zfar, eps), [prob])
    wi, ws = _weights_like(out)
    assert torch.allclose(out[0], bg, rtol=1e-15, atol=0)
    zp = (zfar - depth) / (zfar - znear)
    diff = colors - bg.permute(0, 2, 3, 1)[:, :, :, None, :]
    expected = torch.exp((zp - eps) / gamma) * (wi.permute(0, 2, 3, 1)[:, :, :, None, :] * diff).sum(-1)
    expected = expected + ws[:, 0, :, :, None]  # d silhouette / d prob_l = prod_{k != l} (1 - 0)
    assert torch.allclose(gp, expected, rtol=1e-12, atol=1e-14)


# ================================================================================================
# 3. Channel counts around the chunks of four: C in {1, 4, 5, 9}, forward and backward, for every op
# with a channel dimension (and chamfer's point dimension).

def _check_against_reference(fn, fn_ref, inputs, rtol=1e-10, atol=1e-12):
    out, grads = _grads(fn, inputs)
    out_ref, grads_ref = _grads(fn_ref, inputs)
    _assert_close_lists(out, out_ref, rtol=0, atol=atol)
    _assert_close_lists(grads, grads_ref, rtol=rtol, atol=atol)


@pytest.mark.parametrize("C", CHANNELS)
def test_composite_channels(C):
    g = _gen(10 + C)
    alpha = _with_exact_values(torch.rand(2, 2, 3, 5, generator=g, **D64), g)
    colors = torch.rand(2, 2, 3, 5, C, generator=g, **D64)
    bg = torch.rand(2, C, 2, 3, generator=g, **D64)
    _check_against_reference(invrender.composite_layers, ref.composite_layers, [alpha, colors, bg])
    out32 = invrender.composite_layers(alpha.float(), colors.float(), bg.float())
    for x, y in zip(out32, ref.composite_layers(alpha, colors, bg)):
        assert torch.allclose(x.double(), y, atol=1e-6)
    small = [t[:1, :1, :2].clone().requires_grad_() for t in (alpha.clamp(0.1, 0.9), colors)]
    assert gradcheck(lambda a, c, b: invrender.composite_layers(a, c, b), small + [bg[:1, :, :1, :2].clone().requires_grad_()])


@pytest.mark.parametrize("C", CHANNELS)
def test_softras_channels(C):
    g = _gen(20 + C)
    B, H, W, L = 2, 2, 3, 4
    face_idx = torch.where(torch.rand(B, H, W, L, generator=g) < 0.25, -1, torch.randint(0, 9, (B, H, W, L), generator=g))
    dist = 4e-2 * torch.randn(B, H, W, L, generator=g, **D64)
    depth = 0.6 + 2 * torch.rand(B, H, W, L, generator=g, **D64)
    colors = torch.rand(B, H, W, L, C, generator=g, **D64)
    bg = torch.rand(B, C, H, W, generator=g, **D64)
    kw = dict(sigma=2e-2, gamma=0.3, znear=0.5, zfar=3.0)

    def run(fn):
        return lambda d, z, c, b: fn(SoftFragments(face_idx, d, z), c, background=b, **kw)

    _check_against_reference(run(invrender.softras_blend), run(ref.softras_blend), [dist, depth, colors, bg])
    small = [t[:1, :1, :2].clone().requires_grad_() for t in (dist, depth, colors)]
    face_small = face_idx[:1, :1, :2]
    assert gradcheck(lambda d, z, c, b: invrender.softras_blend(SoftFragments(face_small, d, z), c, background=b, **kw),
                     small + [bg[:1, :, :1, :2].clone().requires_grad_()])


def _mesh(seed=0, B=2, V=8, F=6):
    g = _gen(seed)
    v = torch.rand(B, V, 3, generator=g, **D64) * 2.2 - 1.1
    v[..., 2] = 1.5 + torch.rand(B, V, generator=g, **D64)
    # Distinct vertex triples: no two faces share a plane (equal depths up to rounding).
    triples = torch.combinations(torch.arange(V), 3)
    f = triples[torch.randperm(len(triples), generator=g)[:F]]
    return v, f


@pytest.mark.parametrize("per_corner", [False, True])
@pytest.mark.parametrize("C", CHANNELS)
def test_interpolate_channels(C, per_corner):
    v, f = _mesh(30 + C)
    g = _gen(31 + C)
    attrs = torch.rand(2, f.shape[0], 3, C, generator=g, **D64) if per_corner else torch.rand(2, 8, C, generator=g, **D64)
    faces = None if per_corner else f

    def run(interp, rast):
        def fn(verts, a):
            frag = rast(verts, f, (5, 6), layers=3, sigma=1e-2)
            return interp(frag, a, faces)
        return fn

    _check_against_reference(run(invrender.interpolate, invrender.rasterize), run(ref.interpolate, ref.rasterize),
                             [v, attrs], atol=1e-11)
    frag = invrender.rasterize(v, f, (3, 3), layers=2, sigma=1e-2)
    bary = frag.bary.clone().requires_grad_()
    assert gradcheck(lambda b, a: invrender.interpolate(frag._replace(bary=b), a, faces),
                     [bary, attrs.clone().requires_grad_()])


@pytest.mark.parametrize("cam", ["orthographic", "perspective"])
@pytest.mark.parametrize("C", CHANNELS)
def test_raymarch_channels(C, cam):
    g = _gen(40 + C)
    a = _with_exact_values(0.6 * torch.rand(2, 1, 4, 5, 3, generator=g, **D64), g)
    e = torch.rand(2, C, 4, 5, 3, generator=g, **D64)
    R = random_rotation(2, generator=g)
    bg = torch.rand(C, generator=g, **D64)

    def run(fn, normalize):
        return lambda a_, e_, r_, b_: fn(a_, e_, r_, camera=cam, image_size=(4, 3), background=b_, normalize=normalize)

    for normalize in (False, True):
        _check_against_reference(run(invrender.raymarch, normalize), run(ref.raymarch, normalize), [a, e, R, bg],
                                 atol=1e-11)
    out32 = invrender.raymarch(a.float(), e.float(), R.float(), camera=cam)
    for x, y in zip(out32, ref.raymarch(a, e, R, camera=cam)):
        assert torch.allclose(x.double(), y, atol=2e-5)
    if cam == "orthographic":
        small = [t.clone().requires_grad_() for t in (0.1 + 0.8 * torch.rand(1, 1, 2, 2, 3, generator=g, **D64),
                                                      torch.rand(1, C, 2, 2, 3, generator=g, **D64), R[:1])]
        assert gradcheck(lambda a_, e_, r_: invrender.raymarch(a_, e_, r_, image_size=(2, 2)), small)


@pytest.mark.parametrize("C", CHANNELS)
def test_rotate_channels(C):
    g = _gen(50 + C)
    v = _with_exact_values(torch.rand(2, C, 4, 3, 5, generator=g, **D64), g)
    R = random_rotation(2, generator=g)
    for size in (None, (5, 4, 3)):
        _check_against_reference(lambda x, r: invrender.rotate_voxels(x, r, size=size),
                                 lambda x, r: ref.rotate_voxels(x, r, size=size), [v, R])
    # Nearest (with exact ties) against the closed form of a dyadic diagonal matrix.
    diag = (1.5, -1.0, 0.5)
    out, (gv,) = _grads(lambda x: invrender.rotate_voxels(x, _diag(diag), size=(3, 4, 6), mode="nearest"), [v])
    np.testing.assert_array_equal(out[0].numpy(), separable_resample(v, diag, (3, 4, 6), "nearest"))
    w = _weights_like(out)[0]
    np.testing.assert_allclose(gv.numpy(), separable_resample(w, diag, v.shape[2:], "nearest", adjoint=True), atol=1e-14)
    small = [t.clone().requires_grad_() for t in (torch.rand(1, C, 2, 3, 2, generator=g, **D64), R[:1])]
    assert gradcheck(lambda x, r: invrender.rotate_voxels(x, r, size=(3, 2, 2)), small)


@pytest.mark.parametrize("C", CHANNELS)
def test_project_channels(C):
    g = _gen(60 + C)
    v = _with_exact_values(torch.rand(2, C, 4, 3, 5, generator=g, **D64), g)
    R = random_rotation(2, generator=g)
    _check_against_reference(lambda x, r: invrender.project_voxels(x, r, tau=0.7),
                             lambda x, r: ref.project_voxels(x, r, tau=0.7), [v, R])
    diag = (1.5, -2.0, 0.5)
    out, (gv,) = _grads(lambda x: invrender.project_voxels(x, _diag(diag), mode="nearest", tau=0.7), [v])
    expected = 1 - np.exp(-0.7 * separable_resample(v, diag, None, "nearest").sum(2))
    np.testing.assert_allclose(out[0].numpy(), expected, rtol=0, atol=1e-14)
    w = _weights_like(out)[0].numpy()
    up = np.repeat((w * 0.7 * (1 - expected))[:, :, None], v.shape[2], axis=2)
    np.testing.assert_allclose(gv.numpy(), separable_resample(up, diag, v.shape[2:], "nearest", adjoint=True), atol=1e-14)
    small = [t.clone().requires_grad_() for t in (torch.rand(1, C, 2, 3, 2, generator=g, **D64), R[:1])]
    assert gradcheck(lambda x, r: invrender.project_voxels(x, r), small)


@pytest.mark.parametrize("D", [1, 4, 5, 8])
def test_chamfer_point_dimensions(D):
    g = _gen(70 + D)
    x, y = torch.randn(2, 13, D, generator=g, **D64), torch.randn(2, 9, D, generator=g, **D64)
    _check_against_reference(lambda a, b: invrender.chamfer_distance(a, b, batch_reduction=None),
                             lambda a, b: ref.chamfer_distance(a, b, batch_reduction=None), [x, y])
    nn = invrender.nearest_neighbors(x, y)
    for b in range(2):
        d, i = cKDTree(y[b].numpy()).query(x[b].numpy())
        np.testing.assert_allclose(nn.dist[b].numpy(), d**2, rtol=1e-12)
        np.testing.assert_array_equal(nn.idx[b].numpy(), i)


# ================================================================================================
# 4. Documented defaults: omitting an argument equals passing the documented value, and that value
# has its documented effect (checked against an independent computation).

def test_rotation_matrix_defaults():
    a = torch.tensor([0.3, -1.2, 2.0], **D64)
    R = invrender.rotation_matrix(a)
    assert torch.equal(R, invrender.rotation_matrix(a, 0.0, 0.0))
    # elevation = roll = 0: a turn about +y, so (1, 0, 0) goes to (cos a, 0, sin a).
    c, s, z, o = a.cos(), a.sin(), torch.zeros_like(a), torch.ones_like(a)
    expected = torch.stack([torch.stack([c, z, -s], -1), torch.stack([z, o, z], -1), torch.stack([s, z, c], -1)], -2)
    assert torch.allclose(R, expected, atol=1e-15)


def test_rotate_voxels_defaults():
    g = _gen(80)
    v = torch.rand(2, 3, 4, 3, 5, generator=g, **D64)
    R = _diag((0.5, 0.75, -0.5))  # samples between voxel centres: trilinear differs from nearest
    out = invrender.rotate_voxels(v, R)
    assert torch.equal(out, invrender.rotate_voxels(v, R, size=(4, 3, 5), mode="trilinear"))
    assert out.shape == v.shape  # size: the input's (D, H, W)
    np.testing.assert_allclose(out.numpy(), separable_resample(v, (0.5, 0.75, -0.5), None, "trilinear"), atol=1e-14)
    assert not torch.allclose(out, invrender.rotate_voxels(v, R, mode="nearest"))


def test_project_voxels_defaults():
    g = _gen(81)
    v = torch.rand(2, 3, 4, 3, 5, generator=g, **D64)
    out = invrender.project_voxels(v)
    assert torch.equal(out, invrender.project_voxels(v, None, mode="trilinear", tau=1.0))
    # rotation None: the identity, pixel (h, w) sums voxels[:, :, :, h, w]; tau = 1.
    assert torch.allclose(out, 1 - torch.exp(-v.sum(2)), rtol=0, atol=1e-15)
    R = _diag((0.5, 0.75, -0.5))
    np.testing.assert_allclose(invrender.project_voxels(v, R).numpy(),
                               1 - np.exp(-separable_resample(v, (0.5, 0.75, -0.5), None, "trilinear").sum(2)),
                               atol=1e-14)


def test_raymarch_defaults():
    g = _gen(82)
    # Small absorptions so that eps (1e-6) shows in the expected depth.
    a = 1e-6 * torch.rand(2, 1, 4, 3, 5, generator=g, **D64)
    e = torch.rand(2, 2, 4, 3, 5, generator=g, **D64)
    out = invrender.raymarch(a)
    explicit = invrender.raymarch(a, None, None, camera=None, image_size=None, samples=None, background=None,
                                  normalize=False, density=False, eps=1e-6)
    for x, y in zip(out, explicit):
        assert torch.equal(x, y)
    assert out.image.shape == (2, 1, 3, 5)  # image_size: the grid's (H, W); without emission C = 1
    o_image, o_alpha, o_depth = oracle_raymarch(a, eps=1e-6)  # orthographic, identity, D samples
    assert np.allclose(out.alpha.numpy(), o_alpha, rtol=1e-12, atol=0)
    assert np.allclose(out.depth.numpy(), o_depth, rtol=1e-10, atol=0)
    assert not np.allclose(out.depth.numpy(), oracle_raymarch(a, eps=1e-5)[2], rtol=1e-3)
    # normalize = False: at such small alpha the normalised form would halve the image.
    plain, _, _ = oracle_raymarch(a, e)
    assert np.allclose(invrender.raymarch(a, e).image.numpy(), plain, rtol=1e-12, atol=0)
    assert not np.allclose(invrender.raymarch(a, e, normalize=True).image.numpy(), plain, rtol=1e-2)
    # With emission: black background, plain (not normalised) sum, absorption (not density).
    a = torch.rand(2, 1, 4, 3, 5, generator=g, **D64) * 0.8
    with_e = invrender.raymarch(a, e)
    o_image, o_alpha, o_depth = oracle_raymarch(a, e)
    assert np.allclose(with_e.image.numpy(), o_image, atol=1e-13)
    assert not torch.allclose(with_e.alpha, invrender.raymarch(a, e, density=True).alpha)
    # Perspective: one sample per voxel length along [near, far].
    cam = invrender.PerspectiveCamera()
    near, far = cam.depth_range
    S = max(math.ceil((far - near) * 4 / 2 - 1e-9), 1)
    p = invrender.raymarch(a, e, camera="perspective")
    for x, y in zip(p, invrender.raymarch(a, e, camera=cam, samples=S)):
        assert torch.equal(x, y)
    for x, y in zip(p, oracle_raymarch(a, e, camera=cam, samples=S)):
        assert np.allclose(x.numpy(), y, atol=1e-12)


def test_rasterize_defaults():
    # layers = 25, sigma = 1e-4, blur = sigma * log(1 / 1e-4 - 1), cull_backfaces = False.
    v, f = _mesh(83, B=1, V=9, F=30)
    frag = invrender.rasterize(v, f, 6)
    explicit = invrender.rasterize(v, f, 6, layers=25, sigma=1e-4, blur=1e-4 * math.log(1e4 - 1),
                                   cull_backfaces=False)
    for x, y in zip(frag, explicit):
        assert torch.equal(x, y)
    assert frag.face_idx.shape == (1, 6, 6, 25)
    # The coverage radius, measured: a vertical edge at distance d left of the one pixel centre.
    radius = math.sqrt(1e-4 * math.log(1 / 1e-4 - 1))  # 0.0303...
    for d, covered in ((radius * (1 - 1e-6), True), (radius * (1 + 1e-6), False)):
        tri = torch.tensor([[[d, -1.0, 2.0], [1.0, 0.0, 2.0], [d, 1.0, 2.0]]], **D64)
        for faces in ([[0, 1, 2]], [[0, 2, 1]]):  # counter-clockwise and clockwise (not culled)
            got = invrender.rasterize(tri, torch.tensor(faces), 1).face_idx[0, 0, 0, 0].item() >= 0
            assert got == covered, (d, faces)


def test_layer_alpha_and_composite_defaults():
    g = _gen(84)
    frag = SoftFragments(torch.randint(-1, 3, (1, 2, 2, 3), generator=g),
                         0.02 * torch.randn(1, 2, 2, 3, generator=g, **D64), None)
    alpha = invrender.layer_alpha(frag, 0.01)
    assert torch.equal(alpha, invrender.layer_alpha(frag, 0.01, kind="exp"))
    valid = frag.face_idx >= 0
    assert torch.allclose(alpha, torch.where(valid, torch.exp(-frag.dist.clamp(min=0) / 0.01), 0.0), atol=1e-15)
    colors = torch.rand(1, 2, 2, 3, 5, generator=g, **D64)
    out = invrender.composite_layers(alpha, colors)
    for x, y in zip(out, invrender.composite_layers(alpha, colors, None)):
        assert torch.equal(x, y)
    # background None: black, the image is the layers' sum alone.
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[..., :1]), 1 - alpha[..., :-1]], -1), -1)
    assert torch.allclose(out.image, (trans[..., None] * alpha[..., None] * colors).sum(-2).permute(0, 3, 1, 2), atol=1e-15)


def _softras_numpy(dist, depth, face_idx, colors, bg, sigma, gamma, znear, zfar, eps):
    """SoftRas aggregation per pixel, from the formulas (log-sum-exp with the numpy max)."""
    dist, depth, colors, bg = (t.numpy() for t in (dist, depth, colors, bg))
    B, H, W, L = dist.shape
    image = np.zeros((B, colors.shape[-1], H, W))
    sil = np.zeros((B, 1, H, W))
    for b in range(B):
        for i in range(H):
            for j in range(W):
                valid = face_idx[b, i, j].numpy() >= 0
                prob = 1 / (1 + np.exp(dist[b, i, j] / sigma))
                z = (zfar - depth[b, i, j]) / (zfar - znear)
                logits = np.concatenate([z[valid] / gamma, [eps / gamma]])
                m = logits.max()
                w = np.concatenate([prob[valid], [1.0]]) * np.exp(logits - m)
                cols = np.concatenate([colors[b, i, j][valid], bg[b, :, i, j][None]])
                image[b, :, i, j] = (w[:, None] * cols).sum(0) / w.sum()
                sil[b, 0, i, j] = 1 - np.prod(1 - prob[valid])
    return image, sil


def test_softras_defaults():
    # sigma = gamma = 1e-4, znear = 1, zfar = 100, eps = 1e-3, black background. Distances of the
    # order of sigma and depths whose z' differ by about gamma, so each value matters.
    g = _gen(85)
    B, H, W, L, C = 1, 2, 3, 4, 5
    face_idx = torch.where(torch.rand(B, H, W, L, generator=g) < 0.2, -1, torch.randint(0, 9, (B, H, W, L), generator=g))
    dist = 2e-4 * torch.randn(B, H, W, L, generator=g, **D64)
    depth = 99.85 + 0.02 * torch.rand(B, H, W, L, generator=g, **D64)  # z' ~ 1.5e-3, spread ~ 2e-4
    frag = SoftFragments(face_idx, dist, depth)
    colors = torch.rand(B, H, W, L, C, generator=g, **D64)
    out = invrender.softras_blend(frag, colors)
    explicit = invrender.softras_blend(frag, colors, sigma=1e-4, gamma=1e-4, znear=1.0, zfar=100.0, background=None,
                                       eps=1e-3)
    for x, y in zip(out, explicit):
        assert torch.equal(x, y)
    image, sil = _softras_numpy(dist, depth, face_idx, colors, torch.zeros(B, C, H, W, **D64), 1e-4, 1e-4, 1.0, 100.0, 1e-3)
    assert np.allclose(out.image.numpy(), image, rtol=1e-10, atol=1e-12)
    assert np.allclose(out.silhouette.numpy(), sil, rtol=1e-12, atol=1e-14)
    for kw in (dict(sigma=2e-4), dict(gamma=2e-4), dict(eps=2e-3), dict(zfar=101.0), dict(znear=0.5)):
        assert not torch.allclose(out.image, invrender.softras_blend(frag, colors, **kw).image, rtol=1e-4), kw


def test_chamfer_defaults():
    g = _gen(86)
    x, y = torch.randn(2, 7, 3, generator=g, **D64), torch.randn(2, 5, 3, generator=g, **D64)
    out = invrender.chamfer_distance(x, y)
    explicit = invrender.chamfer_distance(x, y, None, None, squared=True, point_reduction="mean",
                                          batch_reduction="mean", single_directional=False, return_nn=False)
    assert isinstance(out, torch.Tensor) and torch.equal(out, explicit)
    # Squared distances, mean over points, both directions, mean over the batch.
    d = ((x[:, :, None] - y[:, None]) ** 2).sum(-1)
    expected = (d.min(2).values.mean(1) + d.min(1).values.mean(1)).mean()
    assert torch.allclose(out, expected, rtol=1e-14)
    nn = invrender.nearest_neighbors(x, y)
    nn_explicit = invrender.nearest_neighbors(x, y, torch.full((2,), 7), torch.full((2,), 5))
    assert torch.equal(nn.idx, nn_explicit.idx) and torch.equal(nn.dist, nn_explicit.dist)
    assert torch.equal(nn.idx, d.argmin(2))


# ================================================================================================
# 5. The same boundaries on CUDA (skipped without a GPU; never counted as passed): the kernels share
# the *_math.h headers, but the launchers chunk channels and order faces on their own.

def _boundary_outputs(device, dtype):
    """Outputs and gradients of the boundary cases above, computed on `device` (a list of tensors on
    the CPU). Run on both devices and compared."""
    g = _gen(90)
    kw = dict(dtype=dtype, device=device)
    to = lambda t: t.to(**kw)  # noqa: E731
    results = []

    def record(fn, inputs):
        out, grads = _grads(fn, [to(t) for t in inputs])
        results.extend(t.cpu() for t in list(out) + list(grads))

    v = _with_exact_values(torch.rand(2, 5, 3, 5, 4, generator=g, **D64), g)
    eye, R = torch.eye(3, **kw), _diag((1.5, 2.0, -1.5), dtype).to(device)
    for mode in MODES:
        record(lambda x: invrender.rotate_voxels(x, eye, size=(4, 4, 5), mode=mode), [v])
        record(lambda x: invrender.project_voxels(x, R, mode=mode, tau=0.75), [v])
    e = torch.rand(2, 9, 3, 5, 4, generator=g, **D64)
    record(lambda s_, e_: invrender.raymarch(s_, e_, density=True)[:2], [torch.zeros(2, 1, 3, 5, 4, **D64), e])
    record(lambda a_, e_: invrender.raymarch(a_, e_, camera="perspective"), [v[:, :1], e])
    alpha = _with_exact_values(torch.rand(2, 3, 4, 6, generator=g, **D64), g)
    colors = torch.rand(2, 3, 4, 6, 9, generator=g, **D64)
    bg = torch.rand(2, 9, 3, 4, generator=g, **D64)
    record(invrender.composite_layers, [alpha, colors, bg])
    face_idx = torch.randint(-1, 5, (2, 3, 4, 6), generator=g).to(device)
    record(lambda d, z, c, b: invrender.softras_blend(SoftFragments(face_idx, d, z), c, sigma=2e-2, gamma=0.3,
                                                      znear=0.5, zfar=3.0, background=b),
           [4e-2 * torch.randn(2, 3, 4, 6, generator=g, **D64), 0.6 + 2 * torch.rand(2, 3, 4, 6, generator=g, **D64),
            colors, bg])
    tri, blur = BLUR_CASES[0]
    verts = torch.tensor([[[x, y, 2.0] for x, y in tri]], **kw)
    frag = invrender.rasterize(verts, torch.tensor([[0, 1, 2]], device=device), 8, layers=1, blur=blur)
    results += [frag.face_idx.cpu(), frag.dist.cpu()]
    mesh_v, mesh_f = _mesh(91)
    record(lambda vv, a: invrender.interpolate(invrender.rasterize(vv, mesh_f.to(device), (5, 6), layers=3, sigma=1e-2),
                                               a, mesh_f.to(device)), [mesh_v, torch.rand(2, 8, 9, generator=g, **D64)])
    return results


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_boundaries_match_cpu(dtype):
    tol = 2e-5 if dtype == torch.float32 else 1e-11
    cpu, cuda = _boundary_outputs("cpu", dtype), _boundary_outputs("cuda", dtype)
    assert len(cpu) == len(cuda)
    for x, y in zip(cpu, cuda):
        assert x.shape == y.shape and x.dtype == y.dtype
        if x.is_floating_point():
            assert torch.allclose(y, x, rtol=tol, atol=tol), (x - y).abs().max()
        else:
            assert torch.equal(x, y)


@pytest.mark.cuda
@pytest.mark.parametrize("layers", [1, 2, 5])
def test_cuda_depth_ties_of_slanted_faces(layers):
    verts = torch.tensor([[[-0.91, -0.93, 1.0], [0.93, -0.81, 2.5], [0.07, 0.91, 4.0],
                           [-3.0, -3.0, 6.0], [3.0, -3.0, 6.0], [0.0, 3.0, 6.0]]], **D64)
    faces = torch.tensor([[3, 4, 5], [0, 1, 2], [0, 1, 2], [0, 1, 2], [3, 4, 5]] * 8)  # many copies
    cpu = invrender.rasterize(verts, faces, 24, layers=layers, sigma=0.0)
    for _ in range(3):  # the GPU fills tiles in atomic order
        cuda = invrender.rasterize(verts.cuda(), faces.cuda(), 24, layers=layers, sigma=0.0)
        assert torch.equal(cuda.face_idx.cpu(), cpu.face_idx)
