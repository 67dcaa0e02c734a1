"""Ray marching (invrender.raymarch): closed forms, the pure-PyTorch reference, a numpy loop over
rays (scipy sampling), float64 gradcheck, exact 0/1 absorption, opcheck, torch.compile, bad inputs.
"""


import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.autograd import gradcheck

import invrender
from invrender import PerspectiveCamera
from invrender import reference as ref

from .helpers import oracle_raymarch, random_rotation

HYP = settings(max_examples=20, deadline=None)
D64 = dict(dtype=torch.float64)
CAMERAS = {"ortho": None, "persp": PerspectiveCamera(fov=40.0, distance=3.0)}


def _volume(B, C, D, H, W, seed=0, lo=0.05, hi=0.6):
    g = torch.Generator().manual_seed(seed)
    a = lo + (hi - lo) * torch.rand(B, 1, D, H, W, generator=g, **D64)
    e = torch.rand(B, C, D, H, W, generator=g, **D64) if C else None
    return a, e


# ------------------------------------------------------------------------------------------------
# Closed forms and consistency


def test_absorption_only_identity_is_product_along_depth():
    a, _ = _volume(2, 0, 5, 4, 3)
    a[0, 0, 2, 1] = 1.0  # exact 0 and 1 entries
    a[1, 0, :, 0, 0] = 0.0
    image, alpha, depth = invrender.raymarch(a)
    expected = 1 - torch.prod(1 - a[:, :, :, :, :], dim=2)
    assert torch.allclose(alpha, expected, rtol=0, atol=1e-14)
    assert torch.equal(image, alpha)
    assert alpha[1, 0, 0, 0] == 0 and depth[1, 0, 0, 0] == 0
    # Expected depth by hand: samples at depth (2k + 1) / D from the front face.
    z = (2 * torch.arange(5, **D64) + 1) / 5
    T = torch.cumprod(torch.cat([torch.ones_like(a[:, :, :1]), 1 - a[:, :, :-1]], 2), 2)
    w = T * a
    assert torch.allclose(depth, (w * z[:, None, None]).sum(2) / (expected + 1e-6), atol=1e-12)


@pytest.mark.parametrize("k", [0, 3, 5])
def test_single_opaque_slice_shows_its_emission(k):
    a = torch.zeros(2, 1, 6, 5, 4, **D64)
    a[:, :, k] = 1.0
    e = torch.rand(2, 3, 6, 5, 4, **D64)
    bg = torch.tensor([0.3, 0.6, 0.9], **D64)
    for normalize in (False, True):
        image, alpha, depth = invrender.raymarch(a, e, background=bg, normalize=normalize, eps=1e-12)
        assert torch.allclose(image, e[:, :, k], rtol=0, atol=1e-11)
        assert torch.equal(alpha, torch.ones_like(alpha))
        assert torch.allclose(depth, torch.full_like(depth, (2 * k + 1) / 6), atol=1e-11)


def test_empty_volume_shows_background():
    a = torch.zeros(1, 1, 4, 4, 4, **D64)
    e = torch.rand(1, 2, 4, 4, 4, **D64)
    bg = torch.rand(1, 2, 7, 5, **D64)
    image, alpha, depth = invrender.raymarch(a, e, camera="perspective", image_size=(7, 5), background=bg)
    assert torch.equal(image, bg) and torch.equal(alpha, torch.zeros_like(alpha)) and torch.equal(depth, torch.zeros_like(depth))


@HYP
@given(seed=st.integers(0, 2**31 - 1), density=st.booleans(), cam=st.sampled_from(sorted(CAMERAS)))
def test_alpha_in_unit_interval(seed, density, cam):
    g = torch.Generator().manual_seed(seed)
    # Values well outside [0, 1] too: absorption is clamped, density clamped at 0.
    a = torch.randn(2, 1, 5, 6, 4, generator=g, **D64) * 3
    _, alpha, depth = invrender.raymarch(a, rotation=random_rotation(2, generator=g), camera=CAMERAS[cam], density=density)
    assert alpha.min() >= 0 and alpha.max() <= 1 and torch.isfinite(depth).all()


def test_out_of_range_absorption_is_clamped():
    a, e = _volume(2, 2, 5, 5, 5)
    a[0, 0, 1:3] = 1.7
    a[1, 0, 2] = -0.4
    # The clamp acts on each trilinear sample: with samples on voxel centres (identity) that is
    # the clamped volume; under a rotation it is what the reference computes.
    out = invrender.raymarch(a, e)
    clamped = invrender.raymarch(a.clamp(0, 1), e)
    for x, y in zip(out, clamped):
        assert torch.allclose(x, y, atol=1e-14)
    R = random_rotation(2)
    for x, y in zip(invrender.raymarch(a, e, R), ref.raymarch(a, e, R)):
        assert torch.allclose(x, y, atol=1e-13)
    # Identity: samples sit on voxel centres, so a voxel outside [0, 1] gets no gradient.
    a_req = a.clone().requires_grad_()
    image, _, _ = invrender.raymarch(a_req, e)
    (g,) = torch.autograd.grad(image.sum(), a_req)
    assert torch.all(g[0, 0, 1:3] == 0) and torch.all(g[1, 0, 2] == 0)
    assert g[0, 0, 0].abs().sum() > 0


def test_density_matches_absorption_form():
    # a = 1 - exp(-sigma * delta) with delta = 2 / S for the orthographic camera.
    sigma, _ = _volume(1, 0, 6, 3, 3, lo=0.0, hi=5.0)
    S = 6
    a = 1 - torch.exp(-sigma * 2 / S)
    x = invrender.raymarch(sigma, density=True)
    y = invrender.raymarch(a)
    assert torch.allclose(x.alpha, y.alpha, atol=1e-14) and torch.allclose(x.depth, y.depth, atol=1e-13)


def test_perspective_camera_sees_a_centred_ball_symmetrically():
    N = 16
    c = (torch.arange(N, **D64) + 0.5) / N * 2 - 1
    zz, yy, xx = torch.meshgrid(-c, -c, c, indexing="ij")
    ball = ((xx**2 + yy**2 + zz**2) < 0.5).to(torch.float64)[None, None] * 0.5
    image, alpha, depth = invrender.raymarch(ball, camera=PerspectiveCamera(), image_size=12)
    assert torch.allclose(alpha, alpha.flip(-1), atol=1e-12) and torch.allclose(alpha, alpha.flip(-2), atol=1e-12)
    # Hit near the ball's front (view depth ~ distance - 0.7), nothing in the corners.
    centre = depth[0, 0, 5:7, 5:7].mean()
    assert 2.732 - 0.8 < centre < 2.732 - 0.5
    assert alpha[0, 0, 0, 0] == 0


# ------------------------------------------------------------------------------------------------
# Reference and numpy oracle

# Emission channels around the forward's chunks of four (0: absorption only; issue 13).
shapes = st.tuples(st.integers(1, 2), st.sampled_from([0, 1, 2, 4, 5, 9]), st.integers(2, 6), st.integers(2, 6),
                   st.integers(2, 6))


@HYP
@given(shape=shapes, cam=st.sampled_from(sorted(CAMERAS)), image=st.tuples(st.integers(1, 6), st.integers(1, 6)),
       samples=st.one_of(st.none(), st.integers(1, 9)), density=st.booleans(), with_bg=st.booleans(),
       exact=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_matches_reference_and_numpy_oracle(shape, cam, image, samples, density, with_bg, exact, seed):
    B, C, D, H, W = shape
    a, e = _volume(B, C, D, H, W, seed=seed, lo=0.0, hi=1.0 if not density else 4.0)
    g = torch.Generator().manual_seed(seed)
    if exact:  # exact zeros (empty space, zero density) and ones (opaque absorption)
        pick = torch.randint(0, 4, a.shape, generator=g)
        a = torch.where(pick == 0, 0.0, torch.where(pick == 1, 0.0 if density else 1.0, a))
    R = random_rotation(B, generator=g)
    bg = torch.rand(C, **D64, generator=g) if (C and with_bg) else None
    kw = dict(rotation=R, camera=CAMERAS[cam], image_size=image, samples=samples, density=density)
    out = invrender.raymarch(a, e, background=bg, **kw)
    expected = ref.raymarch(a, e, background=bg, **kw)
    for x, y in zip(out, expected):
        assert x.shape == y.shape
        assert torch.allclose(x, y, rtol=0, atol=1e-12)
    o_image, o_alpha, o_depth = oracle_raymarch(a, e, background=None if bg is None else bg.numpy(), **kw)
    assert np.allclose(out.image.numpy(), o_image, atol=1e-12)
    assert np.allclose(out.alpha.numpy(), o_alpha, atol=1e-12)
    assert np.allclose(out.depth.numpy(), o_depth, atol=1e-10)
    if C:
        norm = invrender.raymarch(a, e, background=bg, normalize=True, **kw)
        assert torch.allclose(norm.image, ref.raymarch(a, e, background=bg, normalize=True, **kw).image, atol=1e-12)


def test_float32_matches_float64():
    a, e = _volume(2, 3, 8, 8, 8)
    R = random_rotation(2)
    for cam in CAMERAS.values():
        x = invrender.raymarch(a.float(), e.float(), R.float(), camera=cam, image_size=(9, 7))
        y = invrender.raymarch(a, e, R, camera=cam, image_size=(9, 7))
        for p, q in zip(x, y):
            assert p.dtype == torch.float32 and torch.allclose(p.double(), q, atol=2e-5)


# ------------------------------------------------------------------------------------------------
# Gradients


@pytest.mark.parametrize("cam", sorted(CAMERAS))
def test_gradcheck_emission_absorption(cam):
    a, e = _volume(2, 2, 4, 5, 3)
    R = random_rotation(2)
    bg = torch.rand(2, 2, 4, 3, **D64)
    inputs = [t.clone().requires_grad_() for t in (a, e, R, bg)]

    def f(a, e, R, bg):
        out = invrender.raymarch(a, e, R, camera=CAMERAS[cam], image_size=(4, 3), samples=6, background=bg)
        return out.image, out.alpha, out.depth

    assert gradcheck(f, inputs)
    g = lambda a, e, R: invrender.raymarch(a, e, R, camera=CAMERAS[cam], image_size=(3, 4), normalize=True).image  # noqa: E731
    assert gradcheck(g, inputs[:3])


@pytest.mark.parametrize("cam", sorted(CAMERAS))
def test_gradcheck_absorption_only_and_density(cam):
    a, _ = _volume(2, 0, 5, 4, 4, lo=0.1, hi=0.9)
    R = random_rotation(2)
    inputs = [a.clone().requires_grad_(), R.clone().requires_grad_()]
    for density in (False, True):
        f = lambda a, R: tuple(invrender.raymarch(a, None, R, camera=CAMERAS[cam], image_size=(3, 5), density=density))[1:]  # noqa: E731
        assert gradcheck(f, inputs)


def _opaque_volume(kind, g):
    """Volumes whose samples reach absorption exactly 1 (and 0): under the identity orthographic
    view the samples sit on voxel centres; under any view a thick opaque slab samples exactly 1."""
    if kind == "centres":
        return (torch.randint(0, 3, (2, 1, 5, 5, 5), generator=g) / 2).to(torch.float64)  # 0, 0.5, 1
    a = 0.6 * torch.rand(2, 1, 7, 7, 7, generator=g, **D64)
    a[:, :, 2:5] = 1.0
    a[1, :, :, :, :3] = 0.0
    return a


@pytest.mark.parametrize("cam,rotation,kind", [("ortho", "identity", "centres"), ("ortho", "random", "centres"),
                                               ("ortho", "random", "slab"), ("persp", "random", "slab"),
                                               ("persp", "identity", "slab")])
def test_exact_zero_and_one_give_reference_gradients(cam, rotation, kind):
    # Rays stop at the first opaque sample in the forward; the gradient of that sample still
    # depends on what lies behind it (issue 13).
    g = torch.Generator().manual_seed(3)
    a = _opaque_volume(kind, g)
    e = torch.rand(2, 2, *a.shape[2:], generator=g, **D64)
    R = random_rotation(2, generator=g) if rotation == "random" else torch.eye(3, **D64).expand(2, 3, 3)
    bg = torch.rand(2, **D64, generator=g)
    grads = []
    for fn in (invrender.raymarch, ref.raymarch):
        inputs = [t.clone().requires_grad_() for t in (a, e, R, bg)]
        out = fn(inputs[0], inputs[1], inputs[2], camera=CAMERAS[cam], background=inputs[3])
        weights = [torch.rand(o.shape, generator=torch.Generator().manual_seed(i), **D64) for i, o in enumerate(out)]
        loss = sum((o * w).sum() for o, w in zip(out, weights))
        grads.append(torch.autograd.grad(loss, inputs))
    assert (grads[1][0][a == 1] != 0).any()  # opaque voxels do get gradient
    if rotation == "identity":
        # Samples on voxel centres sit on the kinks of trilinear interpolation, where the derivative
        # in the sample position (the rotation gradient) is one-sided and either side is right.
        grads = [(ga, ge, gb) for ga, ge, _, gb in grads]
    for x, y in zip(*grads):
        assert torch.isfinite(x).all()
        assert torch.allclose(x, y, rtol=1e-9, atol=1e-12)


def _ray_polynomial(a, e, bg):
    """Emission-absorption of one ray as the multilinear polynomial it is, without clamping:
    (image, alpha) = (sum_i T_i a_i e_i + T_S bg, 1 - T_S), T_i = prod_{j<i} (1 - a_j)."""
    t, image = 1.0, 0.0
    for ai, ei in zip(a, e):
        image += t * ai * ei
        t *= 1.0 - ai
    return image + t * bg, 1.0 - t


@pytest.mark.parametrize("seed", range(4))
def test_gradient_at_full_opacity_matches_closed_form(seed):
    # Each output is affine in every a_k, so d out / d a_k = out(a_k = 1) - out(a_k = 0) exactly.
    # Issue 13's case: a = [1, .5, .3, 0], e = [.2, .9, .4, .7]: d alpha/d a_0 = .35, d image/d a_0 = -.31.
    rng = np.random.default_rng(seed)
    D = 6
    if seed == 0:
        a, e, bg = np.array([1, .5, .3, 0, 0, 0]), np.array([.2, .9, .4, .7, .1, .3]), 0.0
    else:
        a = rng.choice([0.0, 1.0, 0.25, 0.5, rng.uniform()], size=D)
        e, bg = rng.uniform(size=D), rng.uniform()
    ta = torch.tensor(a, **D64).view(1, 1, D, 1, 1).requires_grad_()
    te = torch.tensor(e, **D64).view(1, 1, D, 1, 1).requires_grad_()
    out = invrender.raymarch(ta, te, background=bg)
    ga, ge = torch.autograd.grad(out.image.sum(), (ta, te))
    (gal,) = torch.autograd.grad(invrender.raymarch(ta).alpha.sum(), ta)
    for k in range(D):
        hi, lo = a.copy(), a.copy()
        hi[k], lo[k] = 1.0, 0.0
        (i1, al1), (i0, al0) = _ray_polynomial(hi, e, bg), _ray_polynomial(lo, e, bg)
        assert ga.flatten()[k].item() == pytest.approx(i1 - i0, abs=1e-14)
        assert gal.flatten()[k].item() == pytest.approx(al1 - al0, abs=1e-14)
        assert ge.flatten()[k].item() == pytest.approx(np.prod(1 - a[:k]) * a[k], abs=1e-14)
    if seed == 0:
        assert gal.flatten()[0].item() == pytest.approx(0.35) and ga.flatten()[0].item() == pytest.approx(-0.31)


@pytest.mark.parametrize("cam", sorted(CAMERAS))
@pytest.mark.parametrize("opaque", [False, True])
def test_many_samples_span_several_backward_chunks(cam, opaque):
    # The backward works in chunks of 128 samples: 300 samples give three chunks, the last one
    # partial. With an opaque voxel the rays stop inside the first or second chunk.
    a, e = _volume(2, 2, 6, 5, 4, lo=0.0, hi=0.02)
    if opaque:
        a[:, :, 2] = 1.0
    R = random_rotation(2, generator=torch.Generator().manual_seed(5))
    grads = []
    for fn in (invrender.raymarch, ref.raymarch):
        inputs = [t.clone().requires_grad_() for t in (a, e, R)]
        out = fn(*inputs, camera=CAMERAS[cam], image_size=(3, 4), samples=300, background=0.5)
        loss = out.image.sum() + 2 * out.alpha.sum() + 3 * out.depth.sum()
        grads.append(torch.autograd.grad(loss, inputs))
    for x, y in zip(*grads):
        assert x.abs().max() > 0
        assert torch.allclose(x, y, rtol=1e-9, atol=1e-12)


def test_backward_is_deterministic_on_cpu():
    a, e = _volume(3, 2, 8, 8, 8)
    a, e = a.float().requires_grad_(), e.float().requires_grad_()
    R = random_rotation(3, dtype=torch.float32).requires_grad_()
    grads = []
    before = torch.get_num_threads()
    for threads in (1, 2, 1):
        torch.set_num_threads(threads)
        out = invrender.raymarch(a, e, R, camera="perspective")
        grads.append(torch.autograd.grad(out.image.sum() + out.depth.sum(), (a, e, R)))
    torch.set_num_threads(before)
    for gr in grads[1:]:
        assert all(torch.equal(x, y) for x, y in zip(gr, grads[0]))


def test_unused_outputs_and_double_backward():
    a, e = _volume(1, 1, 3, 3, 3)
    a.requires_grad_()
    (g,) = torch.autograd.grad(invrender.raymarch(a, e).depth.sum(), a, create_graph=True)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    with pytest.raises(NotImplementedError, match="double backward"):
        g.sum().backward()


def test_empty_and_noncontiguous():
    a = torch.rand(0, 1, 4, 4, 4)
    out = invrender.raymarch(a, torch.rand(0, 3, 4, 4, 4))
    assert out.image.shape == (0, 3, 4, 4)
    perm = torch.rand(2, 4, 5, 6, 1, **D64).permute(0, 4, 3, 2, 1)
    assert not perm.is_contiguous()
    assert torch.equal(invrender.raymarch(perm).alpha, invrender.raymarch(perm.contiguous()).alpha)
    assert invrender.raymarch(perm, image_size=(0, 3)).alpha.shape == (2, 1, 0, 3)


# ------------------------------------------------------------------------------------------------
# Bad input


def _bad_cases():
    a = torch.rand(2, 1, 4, 4, 4)
    e = torch.rand(2, 3, 4, 4, 4)
    return [
        (lambda: invrender.raymarch(torch.rand(2, 4, 4, 4)), ValueError, "absorption.*5-D"),
        (lambda: invrender.raymarch(torch.rand(2, 2, 4, 4, 4)), ValueError, "absorption.*one channel"),
        (lambda: invrender.raymarch(a.int()), TypeError, "absorption.*float"),
        (lambda: invrender.raymarch(a, torch.rand(2, 3, 4, 4, 5)), ValueError, "emission.*shape"),
        (lambda: invrender.raymarch(a, e.double()), TypeError, "emission.*dtype"),
        (lambda: invrender.raymarch(a, rotation=torch.eye(4)), ValueError, "rotation.*shape"),
        (lambda: invrender.raymarch(a, rotation=torch.full((3, 3), float("nan"))), ValueError, "rotation.*NaN"),
        (lambda: invrender.raymarch(a, samples=0), ValueError, "samples"),
        (lambda: invrender.raymarch(a, samples=20000), ValueError, "samples"),
        (lambda: invrender.raymarch(a, samples=2.5), TypeError, "samples"),
        (lambda: invrender.raymarch(a, image_size=(3, 4, 5)), ValueError, "image_size"),
        (lambda: invrender.raymarch(a, image_size=(-1, 4)), ValueError, "image_size"),
        (lambda: invrender.raymarch(a, camera="fisheye"), TypeError, "camera"),
        (lambda: invrender.raymarch(a, background=0.5), ValueError, "background.*emission"),
        (lambda: invrender.raymarch(a, e, background=torch.rand(2)), ValueError, "background"),
        (lambda: invrender.raymarch(a, e, background="white"), TypeError, "background"),
        (lambda: PerspectiveCamera(fov=0.0), ValueError, "fov"),
        (lambda: PerspectiveCamera(near=3.0, far=2.0), ValueError, "near"),
        (lambda: invrender.raymarch(a.to("meta"), rotation=torch.eye(3)), ValueError, "rotation.*device"),
        # 1291^3 > 2^31 - 1 voxels per channel (an expanded view: no memory is allocated).
        (lambda: invrender.raymarch(torch.zeros(1).expand(1, 1, 1291, 1291, 1291), samples=1), ValueError, "absorption.*2\\^31"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_cases())))
def test_bad_inputs(case):
    call, exc, match = _bad_cases()[case]
    with pytest.raises(exc, match=match):
        call()


# ------------------------------------------------------------------------------------------------
# Registration


def _opcheck_cases():
    a, e = _volume(2, 2, 3, 4, 5)
    a.requires_grad_()
    e.requires_grad_()
    R = random_rotation(2).requires_grad_()
    ops = torch.ops.invrender
    persp = [[3, 4], 7, True, 3.0, 2.5, 0.8, 4.2, False]
    ortho = [[4, 5], 3, False, 1.0, 0.0, 0.0, 1.0, True]
    grads = [torch.rand(2, 2, 3, 4, **D64), torch.rand(2, 1, 3, 4, **D64), torch.rand(2, 1, 3, 4, **D64)]
    return [
        (ops.raymarch_forward.default, (a, e, R, *persp)),
        (ops.raymarch_forward.default, (a, None, R, *ortho)),
        (ops.raymarch_backward.default, (*grads, a.detach(), e.detach(), R.detach(), *persp)),
    ]


@pytest.mark.parametrize("case", range(3))
def test_opcheck(case):
    op, args = _opcheck_cases()[case]
    torch.library.opcheck(op, args)


def test_torch_compile_fullgraph():
    torch._dynamo.reset()

    def render(a, e, az):
        R = invrender.rotation_matrix(az, 0.4)
        out = invrender.raymarch(a, e, R, camera=PerspectiveCamera(), image_size=(6, 5), background=1.0)
        return out.image.mean() + out.depth.mean()

    a = torch.rand(2, 1, 6, 6, 6, requires_grad=True)
    e = torch.rand(2, 3, 6, 6, 6, requires_grad=True)
    az = torch.rand(2, requires_grad=True)
    compiled = torch.compile(render, fullgraph=True, backend="aot_eager")
    out = compiled(a, e, az)
    assert torch.allclose(out, render(a, e, az))
    for x, y in zip(torch.autograd.grad(out, (a, e, az)), torch.autograd.grad(render(a, e, az), (a, e, az))):
        assert torch.allclose(x, y, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# CUDA (skipped without a GPU; never counted as passed)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(dtype):
    a, e = _volume(3, 2, 9, 10, 11)
    a, e = a.to(dtype), e.to(dtype)
    R = random_rotation(3, dtype=dtype)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    for cam in CAMERAS.values():
        for density in (False, True):
            cpu = [t.clone().requires_grad_() for t in (a, e, R)]
            gpu = [t.cuda().requires_grad_() for t in (a, e, R)]
            oc = invrender.raymarch(*cpu, camera=cam, image_size=(7, 12), density=density, background=0.5)
            og = invrender.raymarch(*gpu, camera=cam, image_size=(7, 12), density=density, background=0.5)
            for x, y in zip(oc, og):
                assert torch.allclose(y.cpu(), x, atol=tol)
            w = [torch.randn_like(x) for x in oc]
            gc = torch.autograd.grad(sum((x * v).sum() for x, v in zip(oc, w)), cpu)
            gg = torch.autograd.grad(sum((y * v.cuda()).sum() for y, v in zip(og, w)), gpu)
            for x, y in zip(gc, gg):
                assert torch.allclose(y.cpu(), x, atol=tol * 10, rtol=1e-3)


@pytest.mark.cuda
def test_cuda_gradcheck():
    a, e = _volume(2, 2, 4, 5, 3)
    R = random_rotation(2)
    inputs = [t.cuda().requires_grad_() for t in (a, e, R)]
    for cam in CAMERAS.values():
        f = lambda a, e, R: tuple(invrender.raymarch(a, e, R, camera=cam, image_size=(4, 3), background=0.3))  # noqa: E731
        assert gradcheck(f, inputs, nondet_tol=1e-12)


@pytest.mark.parametrize("samples,opaque", [(2000, False), (2000, True), (5000, False), (700, True)])
def test_backward_with_the_gpu_layout_matches_the_reference(samples, opaque):
    # On the GPU the backward keeps 32-sample chunks and only 32 chunk checkpoints, re-marching
    # from the nearest one (more than 32 chunks: 2000 samples = 63 chunks, stride 2; 5000 = 157,
    # stride 5). A test-only switch runs that layout on the CPU.
    a, e = _volume(2, 2, 6, 5, 4, lo=0.0, hi=0.004)
    if opaque:
        a[:, :, 3:] = 1.0
    R = random_rotation(2, generator=torch.Generator().manual_seed(7))
    grads = []
    for fn, layout in ((invrender.raymarch, True), (invrender.raymarch, False), (ref.raymarch, False)):
        inputs = [t.clone().requires_grad_() for t in (a, e, R)]
        invrender._C._set_raymarch_gpu_backward_layout(layout)
        try:
            out = fn(*inputs, camera=CAMERAS["persp"], image_size=(3, 4), samples=samples, background=0.5)
            loss = out.image.sum() + 2 * out.alpha.sum() + 3 * out.depth.sum()
            grads.append(torch.autograd.grad(loss, inputs))
        finally:
            invrender._C._set_raymarch_gpu_backward_layout(False)
    for x, y, z in zip(*grads):
        assert x.abs().max() > 0
        assert torch.allclose(x, y, rtol=1e-10, atol=1e-13)
        assert torch.allclose(x, z, rtol=1e-9, atol=1e-12)
