"""Mesh rasterization (invrender.rasterize, invrender.interpolate): the dense pure-PyTorch
reference, ray casting by trimesh, closed forms (an axis-aligned square), float64 gradcheck, edge
cases, opcheck, torch.compile, bad inputs.
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.autograd import gradcheck

import invrender
from invrender import reference as ref

from .helpers import random_rotation

HYP = settings(max_examples=25, deadline=None)
D64 = dict(dtype=torch.float64)


def _random_mesh(B, V, F, seed=0, depth=(1.5, 3.0)):
    g = torch.Generator().manual_seed(seed)
    v = torch.rand(B, V, 3, generator=g, **D64) * 2.4 - 1.2
    v[..., 2] = depth[0] + (depth[1] - depth[0]) * torch.rand(B, V, generator=g, **D64)
    f = torch.stack([torch.randperm(V, generator=g)[:3] for _ in range(F)]) if F else torch.zeros(0, 3, dtype=torch.long)
    return v, f


def _square(depth=2.0, half=0.5):
    """Axis-aligned square [-half, half]^2 at a constant depth, two counter-clockwise triangles."""
    v = torch.tensor([[-half, -half, depth], [half, -half, depth], [half, half, depth], [-half, half, depth]], **D64)
    f = torch.tensor([[0, 1, 2], [0, 2, 3]])
    return v[None], f


def _pixel_centres(H, W):
    x = (2 * torch.arange(W, **D64) + 1 - W) / W
    y = (H - 2 * torch.arange(H, **D64) - 1) / H
    return torch.meshgrid(y, x, indexing="ij")  # py, px (H, W)


def _assert_same_fragments(a, b, atol=1e-12, tie=1e-9):
    """Equal fragments, except that two faces at equal depth (within `tie`) may swap: the kernel and
    the reference round depth differently in the last bits."""
    same = a.face_idx == b.face_idx
    swapped = ~same
    assert torch.equal(a.face_idx >= 0, b.face_idx >= 0)
    assert torch.allclose(a.depth[swapped], b.depth[swapped], rtol=0, atol=tie)
    for x, y in ((a.dist, b.dist), (a.depth, b.depth)):
        assert torch.allclose(x[same], y[same], rtol=0, atol=atol)
    assert torch.allclose(a.bary[same], b.bary[same], rtol=0, atol=atol)


# ------------------------------------------------------------------------------------------------
# Closed forms


def test_square_covers_exactly_the_expected_pixels_with_exact_barycentrics():
    v, f = _square()
    frag = invrender.rasterize(v, f, 8, layers=1, sigma=0.0)
    py, px = _pixel_centres(8, 8)
    inside = (px.abs() < 0.5) & (py.abs() < 0.5)
    assert torch.equal(frag.face_idx[0, ..., 0] >= 0, inside)
    assert inside.sum() == 16
    # Pixels below the diagonal y = x belong to face 0, above it to face 1; the four on it are in
    # both at equal depth, and the tie goes to the smaller index.
    assert (inside & (py == px)).sum() == 4
    expect = torch.where(py <= px, 0, 1)
    assert torch.equal(frag.face_idx[0, ..., 0][inside], expect[inside])
    # The barycentrics reproduce the pixel centre; depth is the plane's.
    fi = frag.face_idx[0, ..., 0].clamp(min=0)
    corners = v[0][f[fi]]  # (H, W, 3, 3)
    p = (frag.bary[0, ..., 0, :, None] * corners).sum(-2)
    assert torch.allclose(p[..., 0][inside], px[inside], atol=1e-15)
    assert torch.allclose(p[..., 1][inside], py[inside], atol=1e-15)
    assert torch.all(frag.depth[0, ..., 0][inside] == 2.0)
    # Signed squared distance to the nearest edge of the face, negative inside.
    d_outer = (0.5 - torch.maximum(px.abs(), py.abs())) ** 2
    d_diag = (px - py) ** 2 / 2
    expect_dist = -torch.minimum(d_outer, d_diag)
    assert torch.allclose(frag.dist[0, ..., 0][inside], expect_dist[inside], atol=1e-15)


def test_soft_coverage_reaches_the_blur_radius():
    v, f = _square()
    blur = 0.05
    frag = invrender.rasterize(v, f, 16, layers=2, blur=blur)
    py, px = _pixel_centres(16, 16)
    dx = (px.abs() - 0.5).clamp(min=0)
    dy = (py.abs() - 0.5).clamp(min=0)
    d2 = dx**2 + dy**2  # squared distance to the square (outside)
    covered = frag.face_idx[0, ..., 0] >= 0
    assert torch.equal(covered, d2 <= blur)
    # Outside the square, the nearer of its two triangles is at the square's distance.
    outside = covered & (d2 > 0)
    nearest = torch.where(frag.face_idx[0] >= 0, frag.dist[0], torch.full_like(frag.dist[0], math.inf)).min(-1).values
    assert torch.allclose(nearest[outside], d2[outside], atol=1e-15)
    # Outside pixels have clamped barycentrics: non-negative, summing to 1.
    b = frag.bary[0, ..., 0, :][covered]
    assert (b >= 0).all() and torch.allclose(b.sum(-1), torch.ones((), **D64), atol=1e-15)


def test_default_blur_is_unicorns():
    assert invrender.ops.raster.default_blur(1e-4) == pytest.approx(1e-4 * math.log(1e4 - 1))
    v, f = _square(half=0.5)
    # A pixel centre just outside the square: covered with sigma = 1e-2 (radius 0.3), not with 0.
    frag = invrender.rasterize(v, f, (1, 1), layers=1, sigma=0.0)
    assert frag.face_idx.item() >= 0  # the single pixel centre (0, 0) is inside
    v2 = v.clone()
    v2[..., 0] += 0.6  # square now spans x in [0.1, 1.1]; the centre is 0.1 away
    assert invrender.rasterize(v2, f, 1, layers=1, sigma=0.0).face_idx.item() == -1
    assert invrender.rasterize(v2, f, 1, layers=1, sigma=1e-2).face_idx.item() >= 0


def test_layers_are_sorted_front_to_back_up_to_100():
    # 120 full-screen squares at distinct depths, given in shuffled order.
    n = 120
    depths = torch.randperm(n).to(torch.float64) * 0.01 + 1.0
    verts, faces = [], []
    for k, d in enumerate(depths):
        sv, sf = _square(depth=float(d), half=2.0)
        verts.append(sv[0])
        faces.append(sf + 4 * k)
    v, f = torch.cat(verts)[None], torch.cat(faces)
    frag = invrender.rasterize(v, f, (3, 5), layers=100, sigma=0.0)
    assert (frag.face_idx >= 0).all()
    got = frag.depth[0, 1, 2]  # two triangles per square: each depth twice
    assert torch.equal(got, torch.sort(depths).values.repeat_interleave(2)[:100])
    assert (frag.depth[..., 1:] >= frag.depth[..., :-1]).all()


def test_layers_larger_than_faces_and_empty_mesh():
    v, f = _random_mesh(2, 10, 4)
    frag = invrender.rasterize(v, f, 6, layers=7, sigma=1e-2)
    assert frag.face_idx.shape == (2, 6, 6, 7)
    assert (frag.face_idx[..., 4:] == -1).all()
    _assert_same_fragments(frag, ref.rasterize(v, f, 6, layers=7, sigma=1e-2))
    empty = invrender.rasterize(v, torch.zeros(0, 3, dtype=torch.long), 5, layers=3)
    assert (empty.face_idx == -1).all() and (empty.bary == 0).all() and (empty.depth == 0).all()
    none = invrender.rasterize(v[:0], f, 5, layers=3)
    assert none.face_idx.shape == (0, 5, 5, 3)


def test_ties_go_to_the_smaller_face_index():
    v, f = _square()
    f2 = torch.cat([f, f])  # the same two faces twice: equal depths everywhere
    frag = invrender.rasterize(v, f2, 8, layers=2, sigma=0.0)
    py, px = _pixel_centres(8, 8)
    inside = frag.face_idx[0, ..., 0] >= 0
    off = inside & (py != px)  # in one triangle and its copy
    assert torch.equal(frag.face_idx[0, ..., 1][off], frag.face_idx[0, ..., 0][off] + 2)
    on = inside & (py == px)  # on the diagonal: in all four, at one depth
    assert (frag.face_idx[0][on] == torch.tensor([0, 1])).all()


# ------------------------------------------------------------------------------------------------
# The dense reference and ray casting


@HYP
@given(B=st.integers(1, 3), V=st.integers(3, 12), F=st.integers(0, 12), H=st.integers(1, 9), W=st.integers(1, 9),
       L=st.integers(1, 6), sigma=st.sampled_from([0.0, 1e-3, 2e-2]), cull=st.booleans(), seed=st.integers(0, 10**6))
def test_matches_dense_reference(B, V, F, H, W, L, sigma, cull, seed):
    v, f = _random_mesh(B, V, F, seed)
    a = invrender.rasterize(v, f, (H, W), layers=L, sigma=sigma, cull_backfaces=cull)
    b = ref.rasterize(v, f, (H, W), layers=L, sigma=sigma, cull_backfaces=cull)
    _assert_same_fragments(a, b)


@pytest.mark.parametrize("sigma", [0.0, 2e-2])
def test_gradients_match_dense_reference(sigma):
    v, f = _random_mesh(2, 14, 10, seed=3)
    grads = []
    for fn in (invrender.rasterize, ref.rasterize):
        x = v.clone().requires_grad_()
        out = fn(x, f, (9, 7), layers=4, sigma=sigma)
        g = torch.Generator().manual_seed(1)
        w = [torch.rand(t.shape, generator=g, **D64) for t in out[1:]]
        loss = sum((t * wt).sum() for t, wt in zip(out[1:], w))
        grads.append(torch.autograd.grad(loss, x)[0])
    assert grads[0].abs().max() > 0
    assert torch.allclose(grads[0], grads[1], rtol=1e-10, atol=1e-10)


def test_gradients_at_pixel_centres_on_an_edge_match_reference():
    # The square's diagonal passes exactly through pixel centres (dyadic coordinates, exact
    # arithmetic): there one barycentric is exactly 0, where the clamp passes the gradient
    # (torch.clamp's convention, as the reference). Random meshes never hit w = 0 exactly.
    v, f = _square()
    v = v.clone()
    v[0, :, 2] = torch.tensor([2.0, 1.5, 2.5, 3.0], **D64)  # depth varies: depth depends on bary
    py, px = _pixel_centres(8, 8)
    grads = []
    for fn in (invrender.rasterize, ref.rasterize):
        x = v.clone().requires_grad_()
        out = fn(x, f, 8, layers=2, sigma=0.0)
        assert ((out.face_idx[0, ..., 1] >= 0) == ((py == px) & (px.abs() < 0.5))).all()
        g = torch.Generator().manual_seed(2)
        w = [torch.rand(t.shape, generator=g, **D64) for t in out[1:]]
        loss = sum((t * wt).sum() for t, wt in zip(out[1:], w))
        grads.append(torch.autograd.grad(loss, x)[0])
    assert torch.allclose(grads[0], grads[1], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hard_mode_matches_trimesh_ray_casting(seed):
    trimesh = pytest.importorskip("trimesh")
    from trimesh.ray.ray_triangle import RayMeshIntersector

    mesh = trimesh.creation.icosphere(subdivisions=2, radius=0.8)
    mesh.vertices[:, 0] *= 1.2  # not a sphere: depth varies with the pose
    R = random_rotation(1, generator=torch.Generator().manual_seed(seed))[0].numpy()
    verts = mesh.vertices @ R.T + np.array([0.05, -0.1, 2.0])  # orthographic NDC: depth = z
    mesh = trimesh.Trimesh(verts, mesh.faces, process=False)
    H, W = 40, 48
    frag = invrender.rasterize(torch.from_numpy(verts)[None], torch.from_numpy(mesh.faces).long(), (H, W),
                               layers=1, sigma=0.0)
    py, px = _pixel_centres(H, W)
    origins = np.stack([px.numpy().ravel(), py.numpy().ravel(), np.zeros(H * W)], -1)
    dirs = np.tile([0.0, 0.0, 1.0], (H * W, 1))
    loc, ray, tri = RayMeshIntersector(mesh).intersects_location(origins, dirs, multiple_hits=False)
    hit_face = np.full(H * W, -1)
    hit_depth = np.zeros(H * W)
    hit_face[ray], hit_depth[ray] = tri, loc[:, 2]
    ours_face = frag.face_idx[0, ..., 0].reshape(-1).numpy()
    ours_depth = frag.depth[0, ..., 0].reshape(-1).numpy()
    assert (hit_face >= 0).sum() > 500
    # Coverage agrees except possibly on rays through the silhouette's edges.
    assert ((ours_face >= 0) != (hit_face >= 0)).sum() <= 2
    both = (ours_face >= 0) & (hit_face >= 0)
    np.testing.assert_allclose(ours_depth[both], hit_depth[both], rtol=0, atol=1e-9)
    # The same face, except on rays through a shared edge (equal depth there, checked above).
    assert (ours_face[both] == hit_face[both]).mean() > 0.99


def test_meshes_of_different_sizes_in_one_batch():
    v1, f1 = _random_mesh(1, 9, 6, seed=1)
    v2, f2 = _random_mesh(1, 14, 11, seed=2)
    frag = invrender.rasterize([v1[0], v2[0]], [f1, f2], (7, 6), layers=3, sigma=1e-2)
    for b, (v, f) in enumerate(((v1, f1), (v2, f2))):
        single = invrender.rasterize(v, f, (7, 6), layers=3, sigma=1e-2)
        part = invrender.Fragments(*(t[b:b + 1] for t in frag))
        assert all(torch.equal(x, y) for x, y in zip(part, single))
    # Gradients flow back to each list element.
    a, c = v1[0].clone().requires_grad_(), v2[0].clone().requires_grad_()
    out = invrender.rasterize([a, c], [f1, f2], (7, 6), layers=3, sigma=1e-2)
    out.depth.sum().backward()
    assert a.grad.abs().sum() > 0 and c.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------------
# Gradients


@pytest.mark.parametrize("cull", [False, True])
def test_gradcheck_vertices(cull):
    v, f = _random_mesh(2, 10, 8, seed=5)
    x = v.clone().requires_grad_()
    fn = lambda x: tuple(invrender.rasterize(x, f, (6, 5), layers=3, sigma=3e-2, cull_backfaces=cull))[1:]  # noqa: E731
    assert gradcheck(fn, (x,))


def test_gradcheck_hard_mode_and_interpolate():
    v, f = _random_mesh(1, 8, 6, seed=7)
    x = v.clone().requires_grad_()
    attrs = torch.rand(1, 8, 2, **D64, requires_grad=True)

    def fn(x, attrs):
        frag = invrender.rasterize(x, f, (7, 7), layers=2, sigma=0.0)
        return invrender.interpolate(frag, attrs, f), frag.depth

    assert gradcheck(fn, (x, attrs))


def test_degenerate_sliver_and_behind_camera_faces_are_finite():
    v = torch.tensor([[[-0.5, -0.5, 2.0], [0.5, -0.5, 2.0], [0.0, 0.5, 2.0],   # a good face
                       [-0.9, -0.9, 1.0], [0.9, 0.9, 1.0], [0.0, 0.0, 1.0],    # zero area (collinear)
                       [-0.9, 0.1, 1.5], [0.9, 0.1, 1.5], [0.0, 0.1 + 1e-9, 1.5],  # sliver, area 1.8e-9
                       [-0.5, -0.5, -1.0], [0.5, -0.5, 1.0], [0.0, 0.5, 1.0]]], **D64)  # behind the camera
    f = torch.arange(12).reshape(4, 3)
    x = v.clone().requires_grad_()
    frag = invrender.rasterize(x, f, 16, layers=4, sigma=1e-3)
    assert not (frag.face_idx == 1).any() and not (frag.face_idx == 3).any()
    assert (frag.face_idx == 2).any()  # the sliver is thin but valid and within the blur radius
    for t in frag[1:]:
        assert torch.isfinite(t).all()
    (frag.bary.sum() + frag.dist.sum() + frag.depth.sum()).backward()
    assert torch.isfinite(x.grad).all()
    assert (x.grad[0, 3:6] == 0).all() and (x.grad[0, 9:] == 0).all()


def test_vertices_outside_the_image_and_non_square():
    v, f = _random_mesh(2, 12, 10, seed=11)
    v[..., :2] *= 3.0  # most vertices far outside [-1, 1]
    a = invrender.rasterize(v, f, (5, 11), layers=3, sigma=1e-2)
    _assert_same_fragments(a, ref.rasterize(v, f, (5, 11), layers=3, sigma=1e-2))
    assert (a.face_idx >= 0).any()


def test_backward_is_deterministic_on_cpu():
    v, f = _random_mesh(3, 30, 40, seed=2)
    v = v.float().requires_grad_()
    before = torch.get_num_threads()
    grads = []
    for threads in (1, 2, 1):
        torch.set_num_threads(threads)
        frag = invrender.rasterize(v, f, 24, layers=5, sigma=1e-2)
        rgb = invrender.interpolate(frag, v * 2, f)
        grads.append(torch.autograd.grad(frag.dist.sum() + frag.depth.sum() + rgb.sum(), v)[0])
    torch.set_num_threads(before)
    assert all(torch.equal(g, grads[0]) for g in grads[1:])


def test_float32_matches_float64():
    v, f = _random_mesh(2, 20, 16, seed=4)
    a = invrender.rasterize(v.float(), f, 12, layers=3, sigma=1e-2)
    b = invrender.rasterize(v, f, 12, layers=3, sigma=1e-2)
    same = (a.face_idx == b.face_idx).all(-1)
    assert same.float().mean() > 0.98  # depth ties and blur boundaries may flip in float32
    assert torch.allclose(a.depth[same].double(), b.depth[same], atol=1e-5)


# ------------------------------------------------------------------------------------------------
# interpolate


def test_interpolate_per_vertex_equals_per_corner_and_manual():
    v, f = _random_mesh(2, 10, 8, seed=9)
    frag = invrender.rasterize(v, f, 8, layers=3, sigma=1e-2)
    attrs = torch.rand(2, 10, 4, **D64)
    a = invrender.interpolate(frag, attrs, f)
    corner = attrs[:, f]  # (B, F, 3, C)
    assert torch.allclose(a, invrender.interpolate(frag, corner), atol=0)
    b, i, j, layer = (frag.face_idx >= 0).nonzero()[7].tolist()
    face = f[frag.face_idx[b, i, j, layer]]
    manual = (frag.bary[b, i, j, layer, :, None] * attrs[b, face]).sum(0)
    assert torch.allclose(a[b, i, j, layer], manual, atol=1e-15)
    assert (a[frag.face_idx < 0] == 0).all()
    # Interpolated positions reproduce the depth.
    assert torch.allclose(invrender.interpolate(frag, v[..., 2:], f)[..., 0], frag.depth, atol=1e-14)


@pytest.mark.parametrize("per_corner", [False, True])
def test_interpolate_matches_reference_values_and_gradients(per_corner):
    v, f = _random_mesh(2, 12, 10, seed=13)
    f = torch.cat([f, torch.full((2, 3), -1)])  # padding rows are never selected
    x = v.clone().requires_grad_()
    attrs = torch.rand(2, 12, 3, **D64)
    attrs = attrs[:, f.clamp(min=0)] if per_corner else attrs
    outs, grads = [], []
    for fn in (invrender.interpolate, ref.interpolate):
        xx, aa = x.detach().clone().requires_grad_(), attrs.clone().requires_grad_()
        frag = invrender.rasterize(xx, f, (7, 9), layers=3, sigma=2e-2)
        out = fn(frag, aa, None if per_corner else f)
        w = torch.rand(out.shape, generator=torch.Generator().manual_seed(2), **D64)
        outs.append(out)
        grads.append(torch.autograd.grad((out * w).sum(), (xx, aa)))
    assert torch.allclose(outs[0], outs[1], rtol=0, atol=1e-15)
    for a, b in zip(*grads):
        assert a.abs().max() > 0
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


def test_gradcheck_interpolate_attrs_and_bary():
    v, f = _random_mesh(1, 8, 6, seed=3)
    frag = invrender.rasterize(v, f, (5, 6), layers=2, sigma=2e-2)
    fb = f[None].contiguous()
    attrs = torch.rand(1, 8, 2, **D64, requires_grad=True)
    bary = frag.bary.clone().requires_grad_()
    op = torch.ops.invrender.interpolate_forward
    assert gradcheck(lambda a, b: op(a, fb, frag.face_idx, b), (attrs, bary))


# ------------------------------------------------------------------------------------------------
# Bad input, opcheck, compile


def _bad_cases():
    v, f = _random_mesh(2, 6, 4)
    return [
        (lambda: invrender.rasterize(v[0], f, 4), ValueError, "verts"),
        (lambda: invrender.rasterize(v[..., :2], f, 4), ValueError, "verts"),
        (lambda: invrender.rasterize(v.long(), f, 4), TypeError, "verts"),
        (lambda: invrender.rasterize(v, f.int(), 4), TypeError, "faces"),
        (lambda: invrender.rasterize(v, f + 10, 4), ValueError, "faces"),
        (lambda: invrender.rasterize(v, f[:, :2], 4), ValueError, "faces"),
        (lambda: invrender.rasterize(v, f[None].expand(3, -1, -1), 4), ValueError, "faces"),
        (lambda: invrender.rasterize(v, f, (4,)), ValueError, "image_size"),
        (lambda: invrender.rasterize(v, f, -1), ValueError, "image_size"),
        (lambda: invrender.rasterize(v, f, 4, layers=0), ValueError, "layers"),
        (lambda: invrender.rasterize(v, f, 4, layers=2.0), TypeError, "layers"),
        (lambda: invrender.rasterize(v, f, 4, sigma=-1.0), ValueError, "sigma"),
        (lambda: invrender.rasterize(v, f, 4, blur=-1.0), ValueError, "blur"),
        (lambda: invrender.rasterize(v, f, 4, blur=math.inf), ValueError, "blur"),
        (lambda: invrender.rasterize(v * math.nan, f, 4), ValueError, "verts"),
        (lambda: invrender.rasterize([v[0]], f, 4), ValueError, "faces"),
        # Issue 13: an index into the padding of a shorter mesh of the list (verts[1] has 3 vertices).
        (lambda: invrender.rasterize([v[0], v[1, :3]], [f, torch.tensor([[0, 1, 3]])], 8), ValueError,
         r"faces\[1\]' has vertex index 3 but 'verts\[1\]' has 3"),
        (lambda: invrender.rasterize([v[0], v[1, :3]], [f, torch.tensor([[0, 1, 2]], dtype=torch.int32)], 8),
         TypeError, r"faces\[1\]"),
        (lambda: invrender.rasterize([v[0], v[1].float()], [f, f], 8), ValueError, r"verts\[1\]"),
        (lambda: invrender.rasterize(v.to("meta"), f, 4), ValueError, "device"),
        (lambda: invrender.interpolate(invrender.rasterize(v, f, 4), v[..., :2]), ValueError, "faces"),
        (lambda: invrender.interpolate(invrender.rasterize(v, f, 4), v[:1], f), ValueError, "attrs"),
        (lambda: invrender.interpolate(invrender.rasterize(v, f, 4), v.float(), f), TypeError, "attrs"),
        (lambda: invrender.interpolate(invrender.rasterize(v, f, 4), v, f + 10), ValueError, "faces"),
        (lambda: torch.ops.invrender.interpolate_forward(v, f[None].expand(2, -1, -1), torch.full((2, 3, 3, 1), 7),
                                                         torch.zeros(2, 3, 3, 1, 3, **D64)), ValueError, "face_idx"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_cases())))
def test_bad_inputs(case):
    fn, exc, match = _bad_cases()[case]
    with pytest.raises(exc, match=match):
        fn()


def test_opcheck():
    v, f = _random_mesh(2, 10, 8, seed=1)
    fb = f[None].expand(2, -1, -1).contiguous()
    x = v.clone().requires_grad_()
    torch.library.opcheck(torch.ops.invrender.rasterize_forward, (x, fb, [6, 5], 3, 0.02, False))
    frag = invrender.rasterize(v, f, (6, 5), layers=3, sigma=1e-2)
    args = (torch.rand_like(frag.bary), torch.rand_like(frag.dist), torch.rand_like(frag.depth), v, fb, frag.face_idx)
    torch.library.opcheck(torch.ops.invrender.rasterize_backward, args)
    empty = (x, fb[:, :0].contiguous(), [3, 2], 2, 0.0, True)
    torch.library.opcheck(torch.ops.invrender.rasterize_forward, empty)
    attrs = torch.rand(2, 10, 4, **D64, requires_grad=True)
    bary = frag.bary.clone().requires_grad_()
    torch.library.opcheck(torch.ops.invrender.interpolate_forward, (attrs, fb, frag.face_idx, bary))
    grad = torch.rand(*frag.face_idx.shape, 4, **D64)
    torch.library.opcheck(torch.ops.invrender.interpolate_backward,
                          (grad, attrs.detach(), fb, frag.face_idx, bary.detach()))


def test_torch_compile_fullgraph():
    v, f = _random_mesh(2, 10, 8, seed=1)
    attrs = torch.rand(2, 10, 3, **D64)

    def render(v, attrs):
        frag = invrender.rasterize(v, f, 8, layers=3, sigma=1e-2)
        return invrender.interpolate(frag, attrs, f).sum(3), frag.dist

    compiled = torch.compile(render, fullgraph=True, backend="aot_eager")
    x = v.clone().requires_grad_()
    out, expect = compiled(x, attrs), render(v, attrs)
    assert all(torch.allclose(a, b) for a, b in zip(out, expect))
    out[0].sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------------
# CUDA


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(dtype):
    v, f = _random_mesh(3, 40, 60, seed=3)
    v = v.to(dtype)
    a = invrender.rasterize(v, f, (17, 23), layers=6, sigma=1e-2)
    x = v.cuda().requires_grad_()
    b = invrender.rasterize(x, f.cuda(), (17, 23), layers=6, sigma=1e-2)
    assert torch.equal(a.face_idx, b.face_idx.cpu())
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for s, t in zip(a[1:], b[1:]):
        assert torch.allclose(s, t.cpu(), atol=tol)
    xc = v.clone().requires_grad_()
    ac = invrender.rasterize(xc, f, (17, 23), layers=6, sigma=1e-2)
    (ac.bary.sum() + ac.dist.sum() + ac.depth.sum()).backward()
    (b.bary.sum() + b.dist.sum() + b.depth.sum()).backward()
    assert torch.allclose(xc.grad, x.grad.cpu(), atol=1e-3 if dtype == torch.float32 else 1e-9)


@pytest.mark.cuda
def test_cuda_gradcheck():
    v, f = _random_mesh(2, 10, 8, seed=5)
    x = v.cuda().requires_grad_()
    fc = f.cuda()
    # The vertex gradients are summed with atomicAdd: equal up to rounding run to run.
    assert gradcheck(lambda x: tuple(invrender.rasterize(x, fc, (6, 5), layers=3, sigma=3e-2))[1:], (x,),
                     nondet_tol=1e-12)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_interpolate_matches_cpu_and_gradcheck(dtype):
    v, f = _random_mesh(2, 30, 40, seed=6)
    frag = invrender.rasterize(v.to(dtype), f, (9, 11), layers=3, sigma=1e-2)
    attrs = torch.rand(2, 30, 5, generator=torch.Generator().manual_seed(1), **D64).to(dtype)
    w = torch.rand(2, 9, 11, 3, 5, generator=torch.Generator().manual_seed(2), **D64).to(dtype)
    grads = []
    for dev in ("cpu", "cuda"):
        a = attrs.to(dev).requires_grad_()
        fr = type(frag)(*[t.to(dev) for t in frag])
        out = invrender.interpolate(fr, a, f.to(dev))
        (out * w.to(dev)).sum().backward()
        grads.append((out.detach().cpu(), a.grad.cpu()))
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert torch.allclose(grads[0][0], grads[1][0], atol=tol) and torch.allclose(grads[0][1], grads[1][1], atol=tol)
    if dtype == torch.float64:
        fb = f[None].expand(2, -1, -1).contiguous().cuda()
        face_idx, bary = frag.face_idx.cuda(), frag.bary.cuda().requires_grad_()
        op = torch.ops.invrender.interpolate_forward
        # The attribute gradients are summed with atomicAdd.
        assert gradcheck(lambda a, b: op(a, fb, face_idx, b), (attrs.cuda().requires_grad_(), bary), nondet_tol=1e-12)


def _fragments_in_face_order(seed, *args, **kwargs):
    invrender._C._set_raster_face_order(seed)
    try:
        return invrender.rasterize(*args, **kwargs)
    finally:
        invrender._C._set_raster_face_order(0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layers", [1, 2])
def test_fragments_do_not_depend_on_the_order_faces_arrive_in(dtype, layers):
    # The GPU fills each tile's face list in atomic (arbitrary) order; the CPU, with a test-only
    # switch, in a shuffled one. Overlapping flat quads facing the camera at a few depths make
    # exact depth ties and depths that round an ulp below the face's zmin (issue 14: the early exit
    # on zmin then dropped a face that should have been kept, depending on the order).
    g = torch.Generator().manual_seed(0)
    n = 40
    c = torch.rand(n, 2, generator=g) * 1.6 - 0.8
    h = torch.rand(n, 1, generator=g) * 0.5 + 0.2
    z = torch.randint(1, 4, (n, 1), generator=g) * 0.37 + 1.0
    corners = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    xy = c[:, None] + h[:, None] * corners
    verts = torch.cat([xy, z[:, None].expand(n, 4, 1)], -1).reshape(1, 4 * n, 3).to(dtype)
    base = torch.arange(n)[:, None] * 4
    faces = torch.cat([base + torch.tensor([0, 1, 2]), base + torch.tensor([0, 2, 3])]).reshape(-1, 3)
    expected = _fragments_in_face_order(0, verts, faces, 32, layers=layers, sigma=1e-3)
    assert (expected.face_idx >= 0).float().mean() > 0.5
    for seed in (1, 2, 3):
        got = _fragments_in_face_order(seed, verts, faces, 32, layers=layers, sigma=1e-3)
        for x, y in zip(got, expected):
            assert torch.equal(x, y)
