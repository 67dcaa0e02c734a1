"""Mesh cameras (invrender.cameras), the icosphere and spherical UVs (invrender.mesh), UNICORN's
layered renderer and UMR's face centroids (invrender.renderers): closed forms, scipy / trimesh /
numpy-loop oracles, UNICORN compositing semantics, float64 gradcheck, torch.compile, bad inputs.
"""

import math

import numpy as np
import pytest
import torch
from torch.autograd import gradcheck

import invrender
from invrender import mesh
from invrender.cameras import PerspectiveCamera, WeakPerspectiveCamera, quaternion_to_matrix

from .helpers import random_rotation

D64 = dict(dtype=torch.float64)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _unit_quaternions(B, seed=0):
    q = torch.randn(B, 4, generator=_gen(seed), **D64)
    return q / q.norm(dim=-1, keepdim=True)


def _sphere(level=3, radius=0.5):
    v, f = mesh.icosphere(level, radius=radius, dtype=torch.float64)
    return v, f, mesh.spherical_uvs(v, f)


def _ramp_texture(Ht=16, Wt=32):
    """Channel 0 = u at texel centres (left to right), channel 1 = v (top to bottom), channel 2 = 1:
    bilinear sampling reproduces (u, v) exactly between texel centres."""
    tex = torch.ones(1, 3, Ht, Wt, **D64)
    tex[:, 0] = ((torch.arange(Wt, **D64) + 0.5) / Wt)[None, :]
    tex[:, 1] = ((torch.arange(Ht, **D64) + 0.5) / Ht)[:, None]
    return tex


# ------------------------------------------------------------------------------------------------
# Cameras


def test_perspective_optical_axis():
    cam = PerspectiveCamera()
    z = torch.tensor([-0.9, -0.3, 0.0, 0.4, 1.0], **D64)
    pts = torch.stack([torch.zeros_like(z), torch.zeros_like(z), z], -1)
    out = cam.project(pts)
    assert out.shape == (1, 5, 3)
    assert torch.equal(out[0, :, :2], torch.zeros(5, 2, **D64))
    assert torch.allclose(out[0, :, 2], 2.732 - z, rtol=0, atol=1e-15)
    # A translation along z moves the depth; one along x, y moves the image by f t / depth.
    t = torch.tensor([0.1, -0.2, 0.5], **D64)
    out = cam.project(pts, translation=t)[0]
    depth = 2.732 - z - 0.5
    assert torch.allclose(out[:, 2], depth, rtol=0, atol=1e-15)
    assert torch.allclose(out[:, 0], cam.focal_length * 0.1 / depth, rtol=1e-14)
    assert torch.allclose(out[:, 1], cam.focal_length * -0.2 / depth, rtol=1e-14)


def test_perspective_fov90_closed_form():
    cam = PerspectiveCamera(fov=90.0, distance=3.0)
    assert cam.focal_length == pytest.approx(1.0, rel=1e-15)
    p = torch.rand(2, 7, 3, generator=_gen(1), **D64) * 2 - 1
    out = cam.project(p)
    depth = 3.0 - p[..., 2]
    torch.testing.assert_close(out[..., 2], depth, rtol=0, atol=1e-15)
    torch.testing.assert_close(out[..., 0], p[..., 0] / depth, rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(out[..., 1], p[..., 1] / depth, rtol=1e-14, atol=1e-15)


def test_perspective_rotation_translation_against_numpy():
    cam = PerspectiveCamera()
    B, V = 3, 11
    p = torch.rand(B, V, 3, generator=_gen(2), **D64) * 2 - 1
    R = random_rotation(B, generator=_gen(3))
    t = torch.rand(B, 3, generator=_gen(4), **D64) - 0.5
    out = cam.project(p, R, t).numpy()
    pv = np.einsum("bij,bvj->bvi", R.numpy(), p.numpy()) + t.numpy()[:, None]
    depth = 2.732 - pv[..., 2]
    f = 1 / math.tan(math.radians(15))
    expected = np.stack([f * pv[..., 0] / depth, f * pv[..., 1] / depth, depth], -1)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-13)


def test_perspective_rotation_convention():
    # azimuth 90 degrees brings the object point (1, 0, 0) to view (0, 0, 1), nearest the camera.
    R = invrender.rotation_matrix(torch.tensor([math.pi / 2], **D64))
    out = PerspectiveCamera().project(torch.tensor([[1.0, 0.0, 0.0]], **D64), rotation=R)
    torch.testing.assert_close(out, torch.tensor([[[0.0, 0.0, 1.732]]], **D64), rtol=0, atol=1e-12)


def test_projection_batch_broadcasting():
    cam = PerspectiveCamera()
    p = torch.rand(5, 3, generator=_gen(5), **D64)
    R = random_rotation(4, generator=_gen(6))
    out = cam.project(p, R)
    assert out.shape == (4, 5, 3)
    for b in range(4):
        torch.testing.assert_close(out[b], cam.project(p[None], R[b])[0], rtol=0, atol=0)
    assert cam.project(p).shape == (1, 5, 3)
    assert cam.project(p, translation=torch.zeros(2, 3, **D64)).shape == (2, 5, 3)
    w = WeakPerspectiveCamera()
    assert w.project(p, scale=torch.ones(3, **D64)).shape == (3, 5, 3)
    assert w.project(p, scale=torch.ones(3, 1, **D64), rotation=_unit_quaternions(3)).shape == (3, 5, 3)


def test_from_focal_length_round_trip():
    cam = PerspectiveCamera.from_focal_length(3.732)
    assert cam.focal_length == pytest.approx(3.732, rel=1e-14)
    assert cam.fov == pytest.approx(30.0, abs=1e-3)  # ShapeNet-NMR: f = 3.732 is fov 30
    assert cam.distance == 2.732
    for fov in (10.0, 30.0, 60.0, 90.0, 150.0):
        back = PerspectiveCamera.from_focal_length(PerspectiveCamera(fov=fov).focal_length, distance=4.0)
        assert back.fov == pytest.approx(fov, rel=1e-13) and back.distance == 4.0
    assert PerspectiveCamera.from_focal_length(1.0).fov == pytest.approx(90.0, rel=1e-14)
    with pytest.raises(ValueError, match="focal_length"):
        PerspectiveCamera.from_focal_length(0.0)
    with pytest.raises(TypeError, match="focal_length"):
        PerspectiveCamera.from_focal_length("3")


def test_weak_perspective_closed_form():
    cam = WeakPerspectiveCamera(depth_offset=2.5)
    B, V = 3, 9
    p = torch.rand(B, V, 3, generator=_gen(7), **D64) * 2 - 1
    s = torch.rand(B, generator=_gen(8), **D64) + 0.5
    t = torch.rand(B, 2, generator=_gen(9), **D64) - 0.5
    R = random_rotation(B, generator=_gen(10))
    out = cam.project(p, s, t, R).numpy()
    q = np.einsum("bij,bvj->bvi", R.numpy(), p.numpy())
    expected = np.concatenate([s.numpy()[:, None, None] * q[..., :2] + t.numpy()[:, None], 2.5 - q[..., 2:]], -1)
    np.testing.assert_allclose(out, expected, rtol=1e-13, atol=1e-14)
    # Defaults: identity rotation, scale 1, no translation: orthographic with depth 2.5 - z.
    out = cam.project(p)
    torch.testing.assert_close(out[..., :2], p[..., :2], rtol=0, atol=0)
    torch.testing.assert_close(out[..., 2], 2.5 - p[..., 2], rtol=0, atol=0)
    # (B, 1) scale, a number, and a quaternion rotation agree with (B,) and the matrix.
    qt = _unit_quaternions(B, seed=11)
    a = cam.project(p, s, t, quaternion_to_matrix(qt))
    torch.testing.assert_close(cam.project(p, s[:, None], t, 3.0 * qt), a, rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(cam.project(p, 2.0)[..., :2], 2 * p[..., :2], rtol=0, atol=0)


def test_quaternion_to_matrix():
    eye = quaternion_to_matrix(torch.tensor([1.0, 0.0, 0.0, 0.0], **D64))
    assert torch.equal(eye, torch.eye(3, **D64))
    # 90 degrees about +y (right-hand rule): x -> -z, z -> x.
    c = math.sqrt(0.5)
    Ry = quaternion_to_matrix(torch.tensor([c, 0.0, c, 0.0], **D64))
    torch.testing.assert_close(Ry, torch.tensor([[0.0, 0, 1], [0, 1, 0], [-1, 0, 0]], **D64), rtol=0, atol=1e-15)
    # Relation to invrender.rotation_matrix: azimuth a is the quaternion (cos(a/2), 0, -sin(a/2), 0).
    a = torch.rand(5, generator=_gen(12), **D64) * 6 - 3
    q = torch.stack([torch.cos(a / 2), 0 * a, -torch.sin(a / 2), 0 * a], -1)
    torch.testing.assert_close(quaternion_to_matrix(q), invrender.rotation_matrix(a), rtol=0, atol=1e-12)
    # Random (unnormalised) quaternions: orthonormal, det 1, scale invariant, and scipy agrees.
    from scipy.spatial.transform import Rotation
    q = torch.randn(50, 4, generator=_gen(13), **D64)
    R = quaternion_to_matrix(q)
    torch.testing.assert_close(R @ R.transpose(-1, -2), torch.eye(3, **D64).expand(50, 3, 3), rtol=0, atol=1e-13)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(50, **D64), rtol=0, atol=1e-13)
    torch.testing.assert_close(quaternion_to_matrix(-2.5 * q), R, rtol=0, atol=1e-13)
    scipy_R = Rotation.from_quat(q[:, [1, 2, 3, 0]].numpy()).as_matrix()  # scipy: scalar last
    np.testing.assert_allclose(R.numpy(), scipy_R, rtol=0, atol=1e-12)
    assert quaternion_to_matrix(q.reshape(5, 10, 4)).shape == (5, 10, 3, 3)
    assert torch.isfinite(quaternion_to_matrix(torch.zeros(4, **D64))).all()


def test_camera_gradcheck():
    p = (torch.rand(2, 4, 3, generator=_gen(14), **D64) - 0.5).requires_grad_()
    R = random_rotation(2, generator=_gen(15)).requires_grad_()
    t = (0.1 * torch.rand(2, 3, generator=_gen(16), **D64)).requires_grad_()
    cam = PerspectiveCamera()
    assert gradcheck(lambda p, R, t: cam.project(p, R, t), (p, R, t))
    s = (torch.rand(2, generator=_gen(17), **D64) + 0.5).requires_grad_()
    t2 = torch.rand(2, 2, generator=_gen(18), **D64).requires_grad_()
    q = _unit_quaternions(2, seed=19).requires_grad_()
    w = WeakPerspectiveCamera()
    assert gradcheck(lambda p, s, t, R: w.project(p, s, t, R), (p, s, t2, R))
    assert gradcheck(lambda p, s, t, q: w.project(p, s, t, q), (p, s, t2, q))
    assert gradcheck(quaternion_to_matrix, (q,))


def test_vertex_behind_camera_is_allowed_and_dropped_by_rasterize():
    cam = PerspectiveCamera()
    # A triangle with one vertex behind the camera (z > distance) and one in front of it.
    tri = torch.tensor([[[-0.5, -0.5, 0.0], [0.5, -0.5, 0.0], [0.0, 0.5, 3.5]]], **D64)
    ndc = cam.project(tri)
    assert ndc[0, 2, 2] < 0 and torch.isfinite(ndc).all()
    frags = invrender.rasterize(ndc, torch.tensor([[0, 1, 2]]), 8, layers=1)
    assert (frags.face_idx == -1).all()
    ok = cam.project(tri * torch.tensor([1.0, 1.0, 0.0], **D64))
    assert (invrender.rasterize(ok, torch.tensor([[0, 1, 2]]), 8, layers=1).face_idx == 0).any()


# ------------------------------------------------------------------------------------------------
# Icosphere and spherical UVs


@pytest.mark.parametrize("level,V,F", [(0, 12, 20), (1, 42, 80), (2, 162, 320), (3, 642, 1280), (4, 2562, 5120)])
def test_icosphere_topology(level, V, F):
    v, f = mesh.icosphere(level, radius=0.7, dtype=torch.float64)
    assert v.shape == (V, 3) and f.shape == (F, 3) and f.dtype == torch.int64 and v.dtype == torch.float64
    torch.testing.assert_close(v.norm(dim=1), torch.full((V,), 0.7, **D64), rtol=1e-14, atol=0)
    assert f.min() == 0 and f.max() == V - 1
    # Outward, counter-clockwise seen from outside.
    n = torch.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]], dim=1)
    assert ((n * v[f].mean(1)).sum(1) > 0).all()
    # Watertight and consistently oriented: every directed edge once, its reverse once.
    directed = torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]).tolist()
    assert len(set(map(tuple, directed))) == 3 * F
    assert set(map(tuple, directed)) == {(b, a) for a, b in directed}
    undirected = {tuple(sorted(e)) for e in directed}
    assert len(undirected) == 3 * F // 2 and V - len(undirected) + F == 2  # Euler characteristic
    # No duplicated vertices (the midpoint cache shares every edge midpoint).
    d = torch.cdist(v, v) + torch.eye(V, **D64)
    assert d.min() > 0.1 * 0.7 / 2 ** level
    if level <= 3:
        trimesh = pytest.importorskip("trimesh")
        tm = trimesh.Trimesh(v.numpy(), f.numpy(), process=False)
        assert tm.is_watertight and tm.is_winding_consistent and tm.volume > 0


def test_icosphere_dtype_device_and_bad_arguments():
    v, f = mesh.icosphere(1, dtype=torch.float32)
    assert v.dtype == torch.float32 and f.dtype == torch.int64
    v2, _ = mesh.icosphere(1)
    assert v2.dtype == torch.get_default_dtype()
    with pytest.raises(ValueError, match="level"):
        mesh.icosphere(-1)
    with pytest.raises(TypeError, match="level"):
        mesh.icosphere(1.0)
    with pytest.raises(ValueError, match="radius"):
        mesh.icosphere(1, radius=0.0)


@pytest.mark.parametrize("level", [0, 1, 3, 4])
def test_spherical_uvs(level):
    v, f = mesh.icosphere(level, dtype=torch.float64)
    uv = mesh.spherical_uvs(v, f)
    assert uv.shape == (f.shape[0], 3, 2) and uv.dtype == torch.float64
    u, vv = uv[..., 0], uv[..., 1]
    assert (vv >= 0).all() and (vv <= 1).all() and (u >= 0).all() and (u < 1.5).all()
    # No face spans more than half the texture horizontally (a seam face would span ~1).
    assert (u.amax(1) - u.amin(1)).max() <= 0.5 + 1e-12
    # Up to the seam shift, every corner off the polar axis has the closed-form UV of its vertex.
    x, y, z = v.unbind(1)
    u_ref = (torch.atan2(x, z) + math.pi) / (2 * math.pi)
    v_ref = torch.acos(y) / math.pi
    torch.testing.assert_close(vv, v_ref[f], rtol=0, atol=1e-15)
    off_axis = (x * x + z * z > 1e-12)[f]
    wrapped = torch.remainder(u - u_ref[f], 1.0)
    assert (torch.minimum(wrapped, 1 - wrapped)[off_axis] < 1e-12).all()
    if level > 0:
        assert ((u - u_ref[f]).abs() < 1e-12).sum() > 0.9 * u.numel()  # only seam corners move
    # Batched vertices give the per-mesh result.
    uvb = mesh.spherical_uvs(torch.stack([v, 2 * v]), f)
    assert uvb.shape == (2,) + uv.shape
    torch.testing.assert_close(uvb[0], uv, rtol=0, atol=0)
    torch.testing.assert_close(uvb[1], uv, rtol=0, atol=1e-14)


def test_spherical_uvs_closed_form_points():
    v = torch.tensor([[0.0, 0.0, 2.0], [2.0, 0.0, 0.0], [0.0, 0.0, -2.0], [0.0, 2.0, 0.0], [0.0, -2.0, 0.0]], **D64)
    uv = mesh.spherical_uvs(v, torch.tensor([[0, 1, 3], [0, 1, 4]]))
    # +z: u = 0.5, v = 0.5; +x: u = 0.75; the poles take the middle of their face's arc.
    torch.testing.assert_close(uv[0], torch.tensor([[0.5, 0.5], [0.75, 0.5], [0.625, 0.0]], **D64))
    torch.testing.assert_close(uv[1, 2], torch.tensor([0.625, 1.0], **D64))
    # A face across the seam (-z, between u ~ 0 and u ~ 1) is shifted to one side of it.
    s = torch.tensor([[0.1, 0.0, -1.0], [-0.1, 0.0, -1.0], [0.0, 0.1, -1.0]], **D64)
    u = mesh.spherical_uvs(s, torch.tensor([[0, 1, 2]]))[0, :, 0]
    assert u.max() - u.min() < 0.05 and (u > 0.9).all()


# ------------------------------------------------------------------------------------------------
# LayeredRenderer: UNICORN semantics


def _pixel_centre(H, W, i, j):
    return -1 + (2 * j + 1) / W, 1 - (2 * i + 1) / H


def test_renderer_constant_colour_and_background():
    v, f, uv = _sphere()
    colour = torch.tensor([0.25, 0.5, 0.75], **D64)
    tex = colour.reshape(1, 3, 1, 1).expand(2, 3, 8, 8).contiguous()
    verts = torch.stack([v, v])
    r = invrender.LayeredRenderer(image_size=32, background=0.125)
    image, mask = r(verts, f, uv, tex)
    assert image.shape == (2, 3, 32, 32) and mask.shape == (2, 1, 32, 32)
    # Centre pixels: alpha exactly 1 inside the front face (kind="exp").
    assert torch.equal(mask[:, :, 15:17, 15:17], torch.ones(2, 1, 2, 2, **D64))
    assert torch.equal(image[:, :, 15:17, 15:17], colour.reshape(1, 3, 1, 1).expand(2, 3, 2, 2))
    # Far from the mesh (the sphere spans about |x| < 0.7): the background, mask 0, exactly.
    for i, j in [(0, 0), (0, 31), (31, 0), (31, 31), (16, 0), (0, 16)]:
        assert torch.equal(mask[:, :, i, j], torch.zeros(2, 1, **D64))
        assert torch.equal(image[:, :, i, j], torch.full((2, 3), 0.125, **D64))
    # The silhouette is the projected sphere: pixels well inside the disc are covered, well outside not.
    f_len = PerspectiveCamera().focal_length
    radius = f_len * 0.5 / math.sqrt(2.732 ** 2 - 0.25)  # tangent cone of the sphere
    for i in range(32):
        for j in range(32):
            x, y = _pixel_centre(32, 32, i, j)
            rho = math.hypot(x, y)
            if rho < radius - 0.05:
                assert mask[0, 0, i, j] == 1
            elif rho > radius + 0.15:
                assert mask[0, 0, i, j] == 0
    # Forward background overrides the module's; a colour (C,) too.
    bg = torch.tensor([1.0, 0.0, 0.5], **D64)
    image2, mask2 = r(verts, f, uv, tex, background=bg)
    assert torch.equal(mask2, mask)
    assert torch.equal(image2[:, :, 0, 0], bg.expand(2, 3))


def test_renderer_background_image_vs_colour():
    v, f, uv = _sphere(level=2)
    tex = torch.rand(1, 3, 8, 16, generator=_gen(20), **D64)
    bg_img = torch.rand(1, 3, 24, 24, generator=_gen(21), **D64)
    r = invrender.LayeredRenderer(image_size=24, sigma=1e-3)
    black, mask = r(v[None], f, uv, tex)
    with_img, mask_img = r(v[None], f, uv, tex, background=bg_img)
    assert torch.equal(mask, mask_img)
    assert ((mask > 0) & (mask < 1)).any()  # soft edges exist
    # C = sum_l T_l alpha_l c_l + (1 - mask) bg, for a background image as for a colour.
    torch.testing.assert_close(with_img - black, (1 - mask) * bg_img, rtol=0, atol=1e-14)
    colour = torch.tensor([0.2, 0.4, 0.6], **D64)
    with_col, _ = r(v[None], f, uv, tex, background=colour)
    torch.testing.assert_close(with_col - black, (1 - mask) * colour.reshape(1, 3, 1, 1), rtol=0, atol=1e-14)
    out = mask == 0
    assert out.any() and torch.equal(with_img[out.expand_as(with_img)], bg_img[out.expand_as(bg_img)])
    # A module default image background is a buffer, cast to the rendering dtype.
    rm = invrender.LayeredRenderer(image_size=24, sigma=1e-3, background=bg_img.float())
    assert "background" in dict(rm.named_buffers())
    torch.testing.assert_close(rm(v[None], f, uv, tex).image, with_img, rtol=0, atol=1e-6)


def test_renderer_sigmoid_mask_inside_is_below_one():
    v, f, uv = _sphere()
    tex = torch.ones(1, 3, 4, 4, **D64)
    exp_mask = invrender.LayeredRenderer(image_size=32, sigma=1e-2, layers=50)(v[None], f, uv, tex).mask
    sig_mask = invrender.LayeredRenderer(image_size=32, sigma=1e-2, layers=50, kind="sigmoid")(v[None], f, uv, tex).mask
    inside = exp_mask[0, 0, 10:22, 10:22]
    assert torch.equal(inside, torch.ones_like(inside))
    s = sig_mask[0, 0, 10:22, 10:22]
    assert (s < 1).all() and (s > 0.99).all()
    assert (sig_mask <= exp_mask + 1e-15).all()


@pytest.mark.parametrize("azimuth,u_centre", [(0.0, 0.5), (math.pi / 2, 0.75), (-math.pi / 2, 0.25)])
def test_renderer_texture_coordinates(azimuth, u_centre):
    v, f, uv = _sphere()
    Ht, Wt = 16, 32
    tex = _ramp_texture(Ht, Wt)
    R = invrender.rotation_matrix(torch.tensor([azimuth], **D64)) if azimuth else None
    image = invrender.LayeredRenderer(image_size=32)(v[None], f, uv, tex, rotation=R).image
    # The sphere point nearest the camera (azimuth a brings atan2(x, z) = a to the front):
    # u = (a + pi) / 2pi, v = 0.5; within a texel of bilinear sampling.
    centre = image[0, :, 15:17, 15:17]
    assert (centre[0] - u_centre).abs().max() < 1 / Wt
    assert (centre[1] - 0.5).abs().max() < 1 / Ht
    assert torch.equal(centre[2], torch.ones(2, 2, **D64))
    # u grows to the right and v downward across the front of the sphere.
    assert image[0, 0, 16, 20] > image[0, 0, 16, 11] and image[0, 1, 20, 16] > image[0, 1, 11, 16]


def _bilinear_numpy(tex, u, v, wrap):
    """Bilinear sample of tex (C, Ht, Wt) at texture coordinates (u, v) (texel centres at
    (j + 0.5) / Wt, (i + 0.5) / Ht); u periodic when `wrap`, else clamped like v."""
    C, Ht, Wt = tex.shape
    x, y = (u % 1.0) * Wt - 0.5, v * Ht - 0.5
    x0, y0 = int(np.floor(x)), int(np.floor(y))
    out = np.zeros(C)
    for dy in (0, 1):
        for dx in (0, 1):
            wgt = (1 - abs(x - x0 - dx)) * (1 - abs(y - y0 - dy))
            j = (x0 + dx) % Wt if wrap else min(max(x0 + dx, 0), Wt - 1)
            i = min(max(y0 + dy, 0), Ht - 1)
            out += wgt * tex[:, i, j]
    return out


@pytest.mark.parametrize("wrap", ["circular", "border"])
def test_sample_texture_against_numpy(wrap):
    tex = torch.rand(2, 3, 5, 7, generator=_gen(30), **D64)
    uv = torch.rand(2, 4, 6, 2, generator=_gen(31), **D64) * torch.tensor([3.0, 1.4], **D64)
    uv = uv - torch.tensor([1.0, 0.2], **D64)  # u in [-1, 2), v in [-0.2, 1.2)
    uv[0, 0, :3, 0] = torch.tensor([0.0, 1.0, 1.0 - 1e-9], **D64)  # the seam
    uv[0, 0, :3, 1] = 0.3
    out = invrender.LayeredRenderer(texture_wrap=wrap).sample_texture(tex, uv)
    assert out.shape == (2, 4, 6, 3)
    expected = np.array([[[_bilinear_numpy(tex[b].numpy(), *uv[b, i, j].tolist(), wrap == "circular")
                           for j in range(6)] for i in range(4)] for b in range(2)])
    np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=1e-12)
    seam = out[0, 0, :3]
    if wrap == "circular":  # continuous: the mean of the first and last columns at u = 0 ~ 1
        torch.testing.assert_close(seam[0], seam[2], rtol=0, atol=1e-7)
    else:  # the colour jumps
        assert (seam[0] - seam[2]).abs().max() > 1e-3


def test_renderer_seam_is_continuous():
    # The seam (u = 0 ~ 1, at -z) faces the camera for azimuth pi: with a texture whose first and
    # last columns differ, the circular wrap shows a smooth blend, the border clamp a jump.
    v, f, uv = _sphere()
    tex = torch.zeros(1, 1, 4, 8, **D64)
    tex[..., 0] = 1.0
    R = invrender.rotation_matrix(torch.tensor([math.pi], **D64))
    row = {w: invrender.LayeredRenderer(image_size=32, texture_wrap=w)(v[None], f, uv, tex, rotation=R).image[0, 0, 16]
           for w in ("circular", "border")}
    centre = row["circular"][14:18]
    assert (centre > 0.2).all() and (centre < 0.8).all()  # a blend around 0.5
    assert (row["circular"][12:20].diff().abs() < 0.35).all()
    assert (row["border"][14:18] - torch.tensor([0.0, 0.0, 1.0, 1.0], **D64)).abs().max() < 1e-12 or \
        (row["border"][14:18] - torch.tensor([1.0, 1.0, 0.0, 0.0], **D64)).abs().max() < 1e-12


def test_renderer_float32_matches_float64():
    v, f, uv = _sphere()
    tex = torch.rand(1, 3, 16, 32, generator=_gen(27), **D64)
    r = invrender.LayeredRenderer(image_size=32)
    a = r(v[None], f, uv, tex)
    b = r(v[None].float(), f, uv.float(), tex.float())
    assert b.image.dtype == torch.float32 and b.mask.dtype == torch.float32
    torch.testing.assert_close(b.image.double(), a.image, rtol=0, atol=1e-4)
    torch.testing.assert_close(b.mask.double(), a.mask, rtol=0, atol=1e-4)


def test_renderer_weak_perspective():
    v, f, uv = _sphere(level=2)
    tex = _ramp_texture()
    r = invrender.LayeredRenderer(camera=WeakPerspectiveCamera(), image_size=16)
    s = torch.tensor([1.5], **D64)
    t = torch.tensor([[0.25, 0.0]], **D64)
    out = r(v[None], f, uv, tex, scale=s, translation=t, rotation=torch.tensor([[1.0, 0, 0, 0]], **D64))
    same = r(v[None], f, uv, tex, scale=s, translation=t)
    assert torch.equal(out.image, same.image)
    # Silhouette: the disc of radius 0.75 centred at (0.25, 0).
    for i in range(16):
        for j in range(16):
            x, y = _pixel_centre(16, 16, i, j)
            rho = math.hypot(x - 0.25, y)
            if rho < 0.65:
                assert out.mask[0, 0, i, j] == 1
            elif rho > 0.85:
                assert out.mask[0, 0, i, j] == 0
    with pytest.raises(ValueError, match="scale"):
        invrender.LayeredRenderer(image_size=16)(v[None], f, uv, tex, scale=s)


def test_renderer_gradcheck_verts_and_texture():
    torch.manual_seed(0)
    v, f, uv = _sphere(level=1, radius=0.6)
    verts = (v + 0.02 * torch.randn(v.shape, **D64)).unsqueeze(0).repeat(2, 1, 1)
    R = invrender.rotation_matrix(torch.tensor([0.3, 2.0], **D64), torch.tensor([0.2, -0.4], **D64))
    tex = torch.rand(2, 2, 4, 6, **D64)
    r = invrender.LayeredRenderer(image_size=8, sigma=1e-2, layers=80, background=0.3)

    def render(verts, tex):
        image, mask = r(verts, f, uv, tex, rotation=R)
        return image, mask

    assert gradcheck(render, (verts.requires_grad_(), tex.clone().requires_grad_()), atol=1e-7)
    # Gradients reach the pose too.
    Rg = R.clone().requires_grad_()
    tg = torch.zeros(3, **D64, requires_grad=True)
    r(verts.detach(), f, uv, tex, rotation=Rg, translation=tg).image.sum().backward()
    assert Rg.grad.abs().sum() > 0 and tg.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_renderer_samples_texture_only_on_covered_layers(dtype):
    # The renderer samples the texture only where a face covers a (pixel, layer) entry. Against dense
    # sampling at every entry (the previous formula: texture sampled at uv = 0 on empty layers, then
    # multiplied by alpha = 0 there), on meshes leaving most entries empty (50 layers, two spheres of
    # different sizes so the images' covered counts differ, and a pixel ring outside both), the image,
    # the mask (bit for bit) and the gradients to texture, vertices, uvs and pose are the same.
    v, f, uv = _sphere(level=2)
    v, uv = v.to(dtype), uv.to(dtype)
    r = invrender.LayeredRenderer(image_size=16, sigma=1e-3, layers=50, background=0.25)
    verts = torch.stack([v, 0.6 * v + 0.1]).requires_grad_()
    tex = torch.rand(2, 3, 8, 16, generator=_gen(41), dtype=dtype).requires_grad_()
    uvs = uv.expand(2, *uv.shape).clone().requires_grad_()
    rot = invrender.rotation_matrix(torch.tensor([0.3, -1.1], dtype=dtype), torch.tensor([0.2, 0.5], dtype=dtype))
    rot.requires_grad_()
    weights = torch.rand(2, 3, 16, 16, generator=_gen(42), dtype=dtype)
    tol = dict(rtol=1e-13, atol=1e-13) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)

    def dense():
        ndc = r.project(verts, rotation=rot)
        fragments = invrender.rasterize(ndc, f, r.image_size, r.layers, r.sigma)
        colors = r.sample_texture(tex, invrender.interpolate(fragments, uvs))
        alpha = invrender.layer_alpha(fragments, r.sigma, r.kind)
        covered = (fragments.face_idx >= 0).double().mean().item()
        return invrender.composite_layers(alpha, colors, 0.25), covered

    (image0, mask0), covered = dense()
    assert 0 < covered < 0.2  # most entries empty
    image, mask = r(verts, f, uvs, tex, rotation=rot)
    assert torch.equal(image, image0) and torch.equal(mask, mask0)
    inputs = (tex, verts, uvs, rot)
    grads = torch.autograd.grad((weights * image).sum() + mask.sum(), inputs)
    grads0 = torch.autograd.grad((weights * image0).sum() + mask0.sum(), inputs)
    for g, g0 in zip(grads, grads0):
        assert g.abs().sum() > 0
        # The same terms: grid_sample's vectorised backward groups the sample points differently when they
        # are packed, so a texel's sum can round differently in the last bit.
        torch.testing.assert_close(g, g0, **tol)
    # Nothing covered: a zero gradient to the texture, still attached.
    away = verts.detach() + torch.tensor([0.0, 0.0, 10.0], dtype=dtype)
    image, _ = r(away, f, uvs, tex, rotation=rot)
    assert torch.equal(image, torch.full_like(image, 0.25))
    grad, = torch.autograd.grad(image.sum(), tex)
    assert torch.equal(grad, torch.zeros_like(tex))


@pytest.mark.parametrize("weak", [False, True])
def test_renderer_torch_compile_fullgraph(weak):
    torch._dynamo.reset()
    v, f, uv = _sphere(level=1)
    tex = torch.rand(1, 3, 4, 8, generator=_gen(22), **D64)
    if weak:
        r = invrender.LayeredRenderer(camera=WeakPerspectiveCamera(), image_size=8, sigma=1e-2, layers=8)
        pose = dict(rotation=_unit_quaternions(1, seed=26), scale=torch.tensor([1.2], **D64),
                    translation=torch.tensor([[0.1, -0.1]], **D64))
    else:
        r = invrender.LayeredRenderer(image_size=8, sigma=1e-2, layers=8)
        pose = dict(rotation=invrender.rotation_matrix(torch.tensor([0.4], **D64)))
    verts = v[None].clone().requires_grad_()
    texture = tex.clone().requires_grad_()

    def loss(verts, texture):
        image, mask = r(verts, f, uv, texture, background=0.5, **pose)
        return image, mask

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    image_c, mask_c = compiled(verts, texture)
    image, mask = loss(verts, texture)
    torch.testing.assert_close(image_c, image, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(mask_c, mask, rtol=1e-12, atol=1e-14)
    gc = torch.autograd.grad((image_c ** 2).sum() + mask_c.sum(), (verts, texture))
    ge = torch.autograd.grad((image ** 2).sum() + mask.sum(), (verts, texture))
    for a, b in zip(gc, ge):
        assert a.abs().sum() > 0
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# face_pixel_centroids


def _centroids_numpy(face_idx, weights, F):
    face_idx, weights = face_idx.numpy(), weights.detach().numpy()
    B, H, W, L = face_idx.shape
    acc = np.zeros((B, F, 3))
    for b in range(B):
        for i in range(H):
            for j in range(W):
                x, y = _pixel_centre(H, W, i, j)
                for layer in range(L):
                    k = face_idx[b, i, j, layer]
                    if k >= 0:
                        acc[b, k] += weights[b, i, j, layer] * np.array([x, y, 1.0])
    total = acc[..., 2]
    cent = np.zeros((B, F, 2))
    pos = total > 0
    cent[pos] = acc[..., :2][pos] / total[pos][:, None]
    return cent, total


def _sphere_fragments(H=10, W=12, layers=3, sigma=1e-3):
    v, f, _ = _sphere(level=1)
    R = invrender.rotation_matrix(torch.tensor([0.0, 0.7], **D64))
    ndc = PerspectiveCamera().project(v, R)
    frags = invrender.rasterize(ndc, f, (H, W), layers=layers, sigma=sigma)
    return frags, f.shape[0]


def test_face_pixel_centroids_against_numpy_loop():
    frags, F = _sphere_fragments()
    w = invrender.layer_alpha(frags, 1e-3) * torch.rand(frags.dist.shape, generator=_gen(23), **D64)
    cent, total = invrender.face_pixel_centroids(frags, w, F)
    assert cent.shape == (2, F, 2) and total.shape == (2, F)
    cent_np, total_np = _centroids_numpy(frags.face_idx, w, F)
    np.testing.assert_allclose(total.numpy(), total_np, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(cent.numpy(), cent_np, rtol=1e-12, atol=1e-14)
    covered = torch.zeros(2, F, dtype=torch.bool)
    for b in range(2):
        covered[b, frags.face_idx[b][frags.face_idx[b] >= 0].unique()] = True
    assert covered.any() and (~covered).any()  # some faces (at the back) cover nothing
    assert torch.equal(total[~covered], torch.zeros_like(total[~covered]))
    assert torch.equal(cent[~covered], torch.zeros_like(cent[~covered]))


def test_face_pixel_centroids_empty_faces_and_gradients():
    frags, F = _sphere_fragments(H=6, W=5, layers=2)
    w = torch.rand(frags.dist.shape, generator=_gen(24), **D64).requires_grad_()
    cent, total = invrender.face_pixel_centroids(frags, w, F + 3)  # three faces never appear
    assert torch.equal(cent[:, F:], torch.zeros(2, 3, 2, **D64)) and torch.equal(total[:, F:], torch.zeros(2, 3, **D64))
    (g,) = torch.autograd.grad(cent.sum() + total.sum(), w)
    assert torch.isfinite(g).all()
    assert torch.equal(g[frags.face_idx < 0], torch.zeros_like(g[frags.face_idx < 0]))
    # Weights all zero: every face empty, no NaN in values or gradients.
    z = torch.zeros_like(w, requires_grad=True)
    cz, tz = invrender.face_pixel_centroids(frags, z, F)
    assert torch.equal(cz, torch.zeros_like(cz)) and torch.equal(tz, torch.zeros_like(tz))
    (gz,) = torch.autograd.grad(cz.sum() + tz.sum(), z)
    assert torch.isfinite(gz).all()
    # gradcheck with positive weights (the centroid is smooth where total > 0).
    wp = (0.1 + torch.rand(frags.dist.shape, generator=_gen(25), **D64)).requires_grad_()
    assert gradcheck(lambda w: invrender.face_pixel_centroids(frags, w, F), (wp,))
    empty = invrender.face_pixel_centroids(frags._replace(face_idx=torch.full_like(frags.face_idx, -1)), wp, 0)
    assert empty[0].shape == (2, 0, 2) and empty[1].shape == (2, 0)


# ------------------------------------------------------------------------------------------------
# Bad inputs


def _bad_render_cases():
    v, f, uv = _sphere(level=0)
    verts = v[None]
    tex = torch.rand(1, 3, 4, 4, **D64)
    r = invrender.LayeredRenderer(image_size=4)
    rw = invrender.LayeredRenderer(camera=WeakPerspectiveCamera(), image_size=4)
    return [
        (lambda: r(v, f, uv, tex), ValueError, "verts"),
        (lambda: r(verts.numpy(), f, uv, tex), TypeError, "verts"),
        (lambda: r(verts, f[:, :2], uv, tex), ValueError, "faces"),
        (lambda: r(verts, f, uv[:, :, :1], tex), ValueError, "uvs"),
        (lambda: r(verts, f, uv[:-1], tex), ValueError, "uvs"),
        (lambda: r(verts, f, uv.float(), tex), TypeError, "uvs"),
        (lambda: r(verts, f, uv.tolist(), tex), TypeError, "uvs"),
        (lambda: r(verts, f, uv, tex[0]), ValueError, "texture"),
        (lambda: r(verts, f, uv, tex.expand(2, 3, 4, 4)), ValueError, "texture"),
        (lambda: r(verts, f, uv, tex.float()), TypeError, "texture"),
        (lambda: r(verts, f, uv, "tex"), TypeError, "texture"),
        (lambda: r(verts, f, uv, tex, rotation=torch.eye(4, **D64)), ValueError, "rotation"),
        (lambda: r(verts, f, uv, tex, rotation=torch.eye(3, **D64).expand(2, 3, 3)), ValueError, "rotation"),
        (lambda: r(verts, f, uv, tex, rotation=np.eye(3)), TypeError, "rotation"),
        (lambda: r(verts, f, uv, tex, translation=torch.zeros(1, 2, **D64)), ValueError, "translation"),
        (lambda: r(verts, f, uv, tex, translation=[0.0, 0.0, 1.0]), TypeError, "translation"),
        (lambda: r(verts, f, uv, tex, background="white"), TypeError, "background"),
        (lambda: r(verts, f, uv, tex, background=torch.zeros(2, **D64)), ValueError, "background"),
        (lambda: rw(verts, f, uv, tex, scale=torch.ones(1, 2, **D64)), ValueError, "scale"),
        (lambda: rw(verts, f, uv, tex, scale=torch.ones(3, **D64)), ValueError, "scale"),
        (lambda: rw(verts, f, uv, tex, scale="1"), TypeError, "scale"),
        (lambda: rw(verts, f, uv, tex, translation=torch.zeros(1, 3, **D64)), ValueError, "translation"),
        (lambda: rw(verts, f, uv, tex, rotation=torch.ones(1, 5, **D64)), ValueError, "rotation"),
        (lambda: rw(verts, f, uv, tex, rotation=torch.ones(1, 4)), TypeError, "rotation"),
        (lambda: invrender.LayeredRenderer(image_size=0.5), ValueError, "image_size"),
        (lambda: invrender.LayeredRenderer(image_size=(4, 4, 4)), ValueError, "image_size"),
        (lambda: invrender.LayeredRenderer(image_size=-2), ValueError, "image_size"),
        (lambda: invrender.LayeredRenderer(layers=0), ValueError, "layers"),
        (lambda: invrender.LayeredRenderer(sigma=0.0), ValueError, "sigma"),
        (lambda: invrender.LayeredRenderer(kind="max"), ValueError, "kind"),
        (lambda: invrender.LayeredRenderer(texture_wrap="repeat"), ValueError, "texture_wrap"),
        (lambda: invrender.LayeredRenderer(camera="perspective"), TypeError, "camera"),
        (lambda: PerspectiveCamera().project(torch.zeros(2, 5, 2, **D64)), ValueError, "verts"),
        (lambda: PerspectiveCamera().project(torch.zeros(5, 3, dtype=torch.int64)), TypeError, "verts"),
        (lambda: PerspectiveCamera().project([[0.0, 0.0, 0.0]]), TypeError, "verts"),
        (lambda: PerspectiveCamera().project(verts, translation=torch.zeros(3, 3, **D64)), ValueError, "translation"),
        (lambda: WeakPerspectiveCamera(depth_offset=float("nan")), ValueError, "depth_offset"),
        (lambda: quaternion_to_matrix(torch.zeros(3, **D64)), ValueError, "quaternion"),
        (lambda: quaternion_to_matrix([1.0, 0.0, 0.0, 0.0]), TypeError, "quaternion"),
        (lambda: mesh.spherical_uvs(v[:, :2], f), ValueError, "verts"),
        (lambda: mesh.spherical_uvs(v, f.int()), TypeError, "faces"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_render_cases())))
def test_bad_inputs(case):
    fn, exc, name = _bad_render_cases()[case]
    with pytest.raises(exc, match=name):
        fn()


def test_face_pixel_centroids_bad_inputs():
    frags, F = _sphere_fragments(H=4, W=4, layers=2)
    w = torch.rand(frags.dist.shape, **D64)
    with pytest.raises(ValueError, match="num_faces"):
        invrender.face_pixel_centroids(frags, w, 3)
    with pytest.raises(TypeError, match="num_faces"):
        invrender.face_pixel_centroids(frags, w, 3.0)
    with pytest.raises(ValueError, match="weights"):
        invrender.face_pixel_centroids(frags, w[..., :1], F)
    with pytest.raises(TypeError, match="weights"):
        invrender.face_pixel_centroids(frags, w.numpy(), F)
    with pytest.raises(TypeError, match="fragments"):
        invrender.face_pixel_centroids(w, w, F)


def test_exports():
    for name in ("LayeredRenderer", "WeakPerspectiveCamera", "face_pixel_centroids", "mesh", "renderers"):
        assert name in invrender.__all__ and hasattr(invrender, name)
    for fn in (invrender.LayeredRenderer.forward, invrender.face_pixel_centroids, mesh.icosphere, mesh.spherical_uvs,
               PerspectiveCamera.project, WeakPerspectiveCamera.project, quaternion_to_matrix):
        assert "Args:" in fn.__doc__ and "Returns:" in fn.__doc__


def test_renderer_trims_unused_layers_without_changing_anything(monkeypatch):
    # K = 50 is a cap: the renderer composites only the layers some pixel fills; image, mask and every gradient
    # must be those of all 50 layers (empty layers composite as alpha 0 with a zero gradient).
    import invrender.renderers as R

    torch.manual_seed(0)
    verts, faces = mesh.icosphere(2, dtype=torch.float64)
    verts = (verts * torch.tensor([0.4, 0.3, 0.25], dtype=torch.float64) + 0.02 * torch.randn_like(verts))[None]
    verts = verts.expand(2, -1, -1).clone().requires_grad_(True)
    texture = torch.rand(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    rotation = random_rotation(2, dtype=torch.float64).requires_grad_(True)
    translation = torch.tensor([[0.05, -0.03, 0.1], [0.0, 0.02, -0.1]], dtype=torch.float64, requires_grad=True)
    uvs = mesh.spherical_uvs(verts[0].detach(), faces)
    renderer = invrender.LayeredRenderer(PerspectiveCamera.from_focal_length(3.732), 24, layers=50, sigma=1e-3,
                                         background=1.0)
    seen = []
    trim = R._trim_layers
    monkeypatch.setattr(R, "_trim_layers", lambda f: seen.append(trim(f).face_idx.shape[-1]) or trim(f))

    def run():
        out = renderer(verts, faces, uvs, texture, rotation=rotation, translation=translation)
        weights = torch.rand(out.image.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        grads = torch.autograd.grad((out.image * weights).sum() + out.mask.sum(), (verts, texture, rotation, translation))
        return out, grads

    trimmed, trimmed_grads = run()
    assert 1 <= seen[-1] < 50  # layers were cut (a perturbed sphere fills far fewer than 50), so the check below compares two paths
    monkeypatch.setattr(R, "_trim_layers", lambda f: f)
    full, full_grads = run()
    assert torch.equal(trimmed.image, full.image) and torch.equal(trimmed.mask, full.mask)
    for a, b in zip(trimmed_grads, full_grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
