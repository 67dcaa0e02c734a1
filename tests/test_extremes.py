"""Parameters at the edge of what the dtype holds, arguments that mean nothing, and vertices on the
camera plane (issue 13, items 5-7).

A finite parameter is either usable (then outputs and gradients are finite) or rejected with an
error that names it and gives the usable range; never a NaN.
"""

import math

import pytest
import torch

import invrender
from invrender import LayeredRenderer, PerspectiveCamera
from invrender import reference as ref

F32 = torch.finfo(torch.float32)


def _finite(*tensors):
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def _triangle(dtype=torch.float32, requires_grad=True):
    v = torch.tensor([[[-0.8, -0.8, 1.0], [0.8, -0.8, 1.5], [0.0, 0.8, 2.0]]], dtype=dtype)
    return v.requires_grad_(requires_grad), torch.tensor([[0, 1, 2]])


# ------------------------------------------------------------------------------------------------
# 5. Parameters that overflow or underflow the dtype


@pytest.mark.parametrize("call,name", [
    (lambda: invrender.project_voxels(torch.zeros(1, 1, 2, 2, 2), tau=1e300), "tau"),
    (lambda: invrender.project_voxels(torch.zeros(1, 1, 2, 2, 2), tau=1e-50), "tau"),
    (lambda: invrender.layer_alpha(invrender.rasterize(*_triangle(), 4), 1e-50), "sigma"),
    (lambda: LayeredRenderer(sigma=1e-50, image_size=8)(
        torch.rand(1, 3, 3), torch.tensor([[0, 1, 2]]), torch.rand(1, 3, 2), torch.rand(1, 3, 4, 4)), "sigma"),
    (lambda: invrender.softras_blend(invrender.rasterize(*_triangle(), 4), torch.rand(1, 4, 4, 25, 3),
                                     gamma=1e-50), "gamma"),
    (lambda: invrender.softras_blend(invrender.rasterize(*_triangle(), 4), torch.rand(1, 4, 4, 25, 3),
                                     sigma=1e-50), "sigma"),
    (lambda: invrender.softras_blend(invrender.rasterize(*_triangle(), 4), torch.rand(1, 4, 4, 25, 3),
                                     eps=1e300), "eps"),
    (lambda: invrender.softras_blend(invrender.rasterize(*_triangle(), 4), torch.rand(1, 4, 4, 25, 3),
                                     znear=-1e300, zfar=1e300), "znear"),
    # Representable apart, equal in float32: zfar - znear would be 0 there.
    (lambda: invrender.softras_blend(invrender.rasterize(*_triangle(), 4), torch.rand(1, 4, 4, 25, 3),
                                     znear=1.0, zfar=1.0 + 1e-10), "zfar"),
    (lambda: invrender.softras_blend(invrender.rasterize(*_triangle(), 4), torch.rand(1, 4, 4, 25, 3),
                                     znear=-3e38, zfar=3e38), "zfar"),
])
def test_parameters_outside_the_dtype_are_rejected_with_the_range(call, name):
    with pytest.raises(ValueError, match=f"'{name}'") as info:
        call()
    assert "range" in str(info.value) or "finite" in str(info.value)


def test_the_same_parameters_are_usable_in_float64():
    out = invrender.project_voxels(torch.zeros(1, 1, 2, 2, 2, dtype=torch.float64), tau=1e300)
    assert torch.equal(out, torch.zeros_like(out))
    v, f = _triangle(torch.float64)
    frag = invrender.rasterize(v, f, 4, layers=2)
    assert _finite(invrender.layer_alpha(frag, 1e-50))
    assert _finite(*invrender.softras_blend(frag, torch.rand(1, 4, 4, 2, 3, dtype=torch.float64), gamma=1e-50))


@pytest.mark.parametrize("tau", [F32.tiny, 1e-30, 1e30, F32.max])
def test_project_voxels_at_the_ends_of_the_usable_range(tau):
    for vox in (torch.rand(2, 1, 3, 3, 3), torch.zeros(2, 1, 3, 3, 3)):
        vox = vox.requires_grad_()
        out = invrender.project_voxels(vox, tau=tau)
        (g,) = torch.autograd.grad(out.sum(), vox)
        assert _finite(out, g) and (out >= 0).all() and (out <= 1).all()


@pytest.mark.parametrize("kw", [dict(gamma=F32.tiny), dict(gamma=1e-10), dict(gamma=F32.max), dict(sigma=F32.tiny),
                                dict(sigma=F32.max), dict(eps=F32.max), dict(eps=-F32.max),
                                dict(znear=-1.5e38, zfar=1.5e38), dict(znear=1.0, zfar=1.0 + 1e-6)])
def test_softras_at_the_ends_of_the_usable_range(kw):
    # gamma = 1e-10 gave NaN in float32 before: z' - zmax of the front layer came out a few ulp
    # off 0 (rounded differently where zmax was found), and exp((z' - zmax) / gamma) underflowed.
    torch.manual_seed(0)
    v, f = _triangle()
    v2 = torch.cat([v.detach(), v.detach() + torch.tensor([0.1, 0.0, 0.3])], 1).requires_grad_()
    f2 = torch.tensor([[0, 1, 2], [3, 4, 5]])
    frag = invrender.rasterize(v2, f2, 8, layers=2, sigma=1e-3)
    colors = torch.rand(1, 8, 8, 2, 3).requires_grad_()
    bg = torch.tensor([0.2, 0.4, 0.6])
    out = invrender.softras_blend(frag, colors, background=bg, **kw)
    gv, gc = torch.autograd.grad(out.image.sum() + out.silhouette.sum(), (v2, colors))
    assert _finite(out.image, out.silhouette, gv, gc)
    # The image is a convex combination of the layer colours and the background.
    lo = torch.minimum(colors.amin((3, 4)), bg.min())
    hi = torch.maximum(colors.amax((3, 4)), bg.max())
    img = out.image.amin(1)
    assert (img >= lo - 1e-6).all() and (out.image.amax(1) <= hi + 1e-6).all()


def test_softras_small_gamma_picks_the_front_layer():
    # With gamma -> 0 the softmax over depth keeps only the front-most covering face.
    v = torch.tensor([[[-0.9, -0.9, 1.0], [0.9, -0.9, 1.0], [0.0, 0.9, 1.0],
                       [-0.9, -0.9, 2.0], [0.9, -0.9, 2.0], [0.0, 0.9, 2.0]]])
    f = torch.tensor([[3, 4, 5], [0, 1, 2]])  # the far face first
    frag = invrender.rasterize(v, f, 8, layers=2, sigma=1e-6)
    colors = torch.where(frag.face_idx[..., None] == 1, 1.0, 0.0).expand(1, 8, 8, 2, 3).contiguous()
    for gamma in (1e-6, 1e-10, 1e-30):
        out = invrender.softras_blend(frag, colors, sigma=1e-6, gamma=gamma)
        inside = (frag.dist[..., 0] < -1e-3) & (frag.face_idx[..., 1] >= 0)
        assert inside.any() and torch.allclose(out.image[:, 0][inside], torch.ones(()), atol=1e-5)


@pytest.mark.parametrize("sigma", [F32.tiny, F32.max])
def test_layer_alpha_at_the_ends_of_the_usable_range(sigma):
    v, f = _triangle()
    for kind in ("exp", "sigmoid"):
        a = invrender.layer_alpha(invrender.rasterize(v, f, 8, layers=1, sigma=1e-2), sigma, kind)
        (g,) = torch.autograd.grad(a.sum(), v)
        assert _finite(a, g)


@pytest.mark.parametrize("scale", [1e9, 1e19, 1e30])
def test_rasterize_drops_faces_with_huge_coordinates(scale):
    # Products of four coordinates overflow float32 near 1e19; faces beyond MAX_COORD are dropped
    # like faces behind the camera, in the op and its reference alike.
    far = torch.tensor([[[-scale, -scale, 1.0], [scale, -scale, 1.0], [0.0, scale, 1.0]]])
    v, f = _triangle(requires_grad=False)
    verts = torch.cat([far, v], 1).requires_grad_()
    faces = torch.tensor([[0, 1, 2], [3, 4, 5], [0, 4, 5]])
    frag = invrender.rasterize(verts, faces, 8, layers=3)
    assert _finite(frag.bary, frag.dist, frag.depth)
    assert set(frag.face_idx.unique().tolist()) == {-1, 1}
    expected = ref.rasterize(verts, faces, 8, layers=3)
    assert torch.equal(frag.face_idx, expected.face_idx)
    (g,) = torch.autograd.grad(frag.depth.sum() + frag.dist.sum() + frag.bary.sum(), verts)
    assert _finite(g) and torch.equal(g[0, :3], torch.zeros(3, 3))


def test_rasterize_keeps_faces_just_inside_max_coord():
    from invrender.ops.raster import MAX_COORD
    x = MAX_COORD / 2
    v = torch.tensor([[[-x, -1.0, 1.0], [x, -1.0, 1.0], [0.0, 1.0, 1.0]]], dtype=torch.float64)
    frag = invrender.rasterize(v, torch.tensor([[0, 1, 2]]), 4, layers=1)
    assert (frag.face_idx >= 0).sum() > 0 and _finite(frag.bary, frag.dist, frag.depth)


# ------------------------------------------------------------------------------------------------
# 6. Arguments that mean nothing


@pytest.mark.parametrize("eps", [0.0, -1e-6, math.nan, math.inf, 1e-30])
def test_raymarch_eps_must_be_positive_and_usable(eps):
    with pytest.raises(ValueError, match="'eps'"):
        invrender.raymarch(torch.zeros(1, 1, 3, 3, 3), eps=eps)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_raymarch_smallest_usable_eps_gives_finite_depth_and_gradient(dtype):
    eps = 2 * math.sqrt(torch.finfo(dtype).tiny)
    a = torch.zeros(1, 1, 3, 3, 3, dtype=dtype)
    a[0, 0, 1, 1, 1] = 0.5
    a.requires_grad_()
    e = torch.rand(1, 2, 3, 3, 3, dtype=dtype)
    out = invrender.raymarch(a, e, eps=eps, normalize=True)
    (g,) = torch.autograd.grad(out.depth.sum() + out.image.sum(), a)
    assert _finite(out.image, out.depth, g)
    assert out.depth[0, 0, 0, 0] == 0  # an empty ray has depth 0


@pytest.mark.parametrize("size", [(2.5, 4, 4), (4.0, 4, 4), ("4", 4, 4), (True, 4, 4), 2.5])
def test_rotate_voxels_size_must_be_integers(size):
    with pytest.raises(TypeError, match="'size'"):
        invrender.rotate_voxels(torch.rand(1, 1, 4, 4, 4), torch.eye(3), size=size)


def test_rotate_voxels_size_accepts_integer_types():
    import numpy as np
    out = invrender.rotate_voxels(torch.rand(1, 1, 4, 4, 4), torch.eye(3), size=(np.int64(2), 3, torch.Size([4])[0]))
    assert out.shape == (1, 1, 2, 3, 4)


def test_interpolate_names_fragments_that_are_not_fragments():
    with pytest.raises(TypeError, match="'fragments'"):
        invrender.interpolate((1, 2), torch.rand(1, 3, 2), torch.tensor([[0, 1, 2]]))


# ------------------------------------------------------------------------------------------------
# 7. Vertices on or behind the camera plane


def _mesh_through_camera_plane(cam):
    # A fan of four faces around the centre; vertex 4 sits exactly on the camera plane
    # (view z = distance, depth 0) and vertex 5 behind the camera.
    verts = torch.tensor([[[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, 0.5, 0.0], [-0.5, 0.0, 0.0],
                           [0.3, 0.3, cam.distance], [0.2, -0.3, cam.distance + 1.0]]], dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2], [0, 2, 3], [0, 4, 2], [0, 1, 5]])
    return verts, faces


def test_camera_projects_vertices_on_and_behind_the_plane_to_finite_values():
    cam = PerspectiveCamera()
    verts, _ = _mesh_through_camera_plane(cam)
    verts.requires_grad_()
    ndc = cam.project(verts)
    (g,) = torch.autograd.grad(ndc.sum(), verts)
    assert _finite(ndc, g)
    assert ndc[0, 4, 2] == 0 and ndc[0, 5, 2] < 0  # depths kept, so the rasterizer drops the faces
    assert torch.equal(ndc[0, 4:, :2], torch.zeros(2, 2, dtype=torch.float64))


def test_layered_renderer_drops_faces_through_the_camera_plane():
    cam = PerspectiveCamera()
    verts, faces = _mesh_through_camera_plane(cam)
    verts.requires_grad_()
    uvs = torch.rand(faces.shape[0], 3, 2, dtype=torch.float64)
    texture = torch.rand(1, 3, 4, 4, dtype=torch.float64).requires_grad_()
    renderer = LayeredRenderer(cam, image_size=16, layers=4)
    out = renderer(verts, faces, uvs, texture)
    gv, gt = torch.autograd.grad(out.image.sum() + out.mask.sum(), (verts, texture))
    assert _finite(out.image, out.mask, gv, gt)
    # The same as rendering the two faces in front of the camera alone.
    expected = renderer(verts.detach(), faces[:2], uvs[:2], texture.detach())
    assert torch.allclose(out.image, expected.image) and torch.allclose(out.mask, expected.mask)
    assert out.mask.sum() > 0


def test_value_checks_are_read_together_and_name_the_first_failure():
    # The checks of tensor values (finite entries, indices in range) are gathered and read back in one
    # copy per op call (one device-to-host sync on the GPU); the first failing one is reported.
    x = torch.rand(2, 5, 3, dtype=torch.float64)
    bad_x = x.clone()
    bad_x[1, 2, 0] = float("nan")
    too_long = torch.tensor([5, 6])
    with pytest.raises(ValueError, match="nearest_neighbors: argument 'x_lengths' must hold lengths in \\[0, 5\\]"):
        invrender.nearest_neighbors(bad_x, x, x_lengths=too_long)
    with pytest.raises(ValueError, match="nearest_neighbors: argument 'x' contains NaN or Inf"):
        invrender.nearest_neighbors(bad_x, x)
    with pytest.raises(ValueError, match="argument 'y' contains NaN or Inf"):
        invrender.nearest_neighbors(x, bad_x)
    # The benchmark-only switch skips them (that is what the benchmarks' --unchecked measures) ...
    invrender._C._set_value_checks(False)
    try:
        nn = invrender.nearest_neighbors(bad_x, x)
    finally:
        invrender._C._set_value_checks(True)
    assert nn.idx[0].ge(0).all()
    # ... and they are back on after it.
    with pytest.raises(ValueError, match="contains NaN or Inf"):
        invrender.nearest_neighbors(bad_x, x)
