"""Voxel ops: rotation_matrix, rotate_voxels, project_voxels.

Each op is checked against closed forms, the pure-PyTorch reference (invrender.reference) and an
independent oracle (scipy), with float64 gradcheck, opcheck, torch.compile and bad-input errors.
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation
from torch.autograd import gradcheck

import invrender
from invrender import reference as ref

from .helpers import near_tie, oracle_project, oracle_rotate, random_rotation, sample_coordinates

MODES = ["trilinear", "nearest"]
HYP = settings(max_examples=25, deadline=None)


# ------------------------------------------------------------------------------------------------
# rotation_matrix


def test_rotation_design_examples():
    # design.md: azimuth 90 deg puts object (1,0,0) nearest the camera (view +z); elevation 90 deg
    # does the same for (0,1,0).
    R = invrender.rotation_matrix(torch.tensor([math.pi / 2], dtype=torch.float64))
    assert torch.allclose(R[0] @ torch.tensor([1.0, 0, 0], dtype=torch.float64), torch.tensor([0, 0, 1.0], dtype=torch.float64), atol=1e-12)
    R = invrender.rotation_matrix(0.0, torch.tensor(math.pi / 2, dtype=torch.float64))
    assert torch.allclose(R[0] @ torch.tensor([0, 1.0, 0], dtype=torch.float64), torch.tensor([0, 0, 1.0], dtype=torch.float64), atol=1e-12)
    # Identity at zero angles; the camera's up axis stays +y for azimuth-only orbits.
    assert torch.equal(invrender.rotation_matrix(0.0), torch.eye(3).unsqueeze(0))
    R = invrender.rotation_matrix(torch.tensor([0.7]))
    assert torch.allclose(R[0, 1], torch.tensor([0.0, 1.0, 0.0]))


def test_rotation_roll_turns_image_counter_clockwise():
    R = invrender.rotation_matrix(0.0, 0.0, torch.tensor(math.pi / 2, dtype=torch.float64))
    # The object's +x axis appears along the image's +y after a quarter turn of roll.
    assert torch.allclose(R[0] @ torch.tensor([1.0, 0, 0], dtype=torch.float64), torch.tensor([0, 1.0, 0], dtype=torch.float64), atol=1e-12)


@HYP
@given(st.lists(st.floats(-10, 10), min_size=3, max_size=3))
def test_rotation_matches_scipy_and_reference(angles):
    a, e, r = (torch.tensor([x], dtype=torch.float64) for x in angles)
    R = invrender.rotation_matrix(a, e, r)[0].numpy()
    # Independent oracle: R = Rz(roll) Rx(elevation) Ry(-azimuth), intrinsic Z-X-Y.
    expected = Rotation.from_euler("ZXY", [angles[2], angles[1], -angles[0]]).as_matrix()
    np.testing.assert_allclose(R, expected, atol=1e-12)
    np.testing.assert_allclose(R, ref.rotation_matrix(a, e, r)[0].numpy(), atol=1e-14)
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    assert abs(np.linalg.det(R) - 1) < 1e-12


def test_rotation_broadcasting_and_dtypes():
    az = torch.rand(4, 5)
    R = invrender.rotation_matrix(az, 0.3, torch.rand(5))
    assert R.shape == (4, 5, 3, 3) and R.dtype == torch.float32
    R = invrender.rotation_matrix(az, 0.3, torch.full((5,), 0.2))
    assert torch.allclose(R, ref.rotation_matrix(az, 0.3, torch.full((5,), 0.2)), atol=1e-6)
    R64 = invrender.rotation_matrix(az.double(), 0.3, torch.zeros(5, dtype=torch.float64))
    R32 = invrender.rotation_matrix(az, 0.3, torch.zeros(5))
    assert torch.allclose(R64.float(), R32, atol=1e-6)
    assert invrender.rotation_matrix(0.1, 0.2).shape == (1, 3, 3)
    assert invrender.rotation_matrix(torch.zeros(0)).shape == (0, 3, 3)


def test_rotation_gradcheck():
    angles = [torch.rand(6, dtype=torch.float64, requires_grad=True) * 7 for _ in range(3)]
    angles = [a.detach().requires_grad_() for a in angles]
    assert gradcheck(invrender.rotation_matrix, angles)
    # Agrees with autograd through the reference.
    g = torch.randn(6, 3, 3, dtype=torch.float64)
    ours = torch.autograd.grad((invrender.rotation_matrix(*angles) * g).sum(), angles)
    theirs = torch.autograd.grad((ref.rotation_matrix(*angles) * g).sum(), angles)
    for o, t in zip(ours, theirs):
        assert torch.allclose(o, t, atol=1e-12)


def test_rotation_bad_inputs():
    with pytest.raises(TypeError, match="azimuth"):
        invrender.rotation_matrix(torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="elevation"):
        invrender.rotation_matrix(0.0, "up")
    with pytest.raises(ValueError, match="broadcast"):
        invrender.rotation_matrix(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="azimuth.*NaN"):
        invrender.rotation_matrix(torch.tensor([float("nan")]))
    with pytest.raises(TypeError, match="roll"):
        invrender.rotation_matrix(torch.zeros(2), torch.zeros(2), torch.zeros(2, dtype=torch.float64))


# ------------------------------------------------------------------------------------------------
# rotate_voxels


@pytest.mark.parametrize("mode", MODES)
def test_rotate_identity_is_exact(mode):
    v = torch.rand(2, 3, 5, 6, 7, dtype=torch.float64)
    out = invrender.rotate_voxels(v, torch.eye(3, dtype=torch.float64), mode=mode)
    assert torch.equal(out, v)


@pytest.mark.parametrize("mode", MODES)
def test_rotate_azimuth_quarter_turn_is_a_permutation(mode):
    # Closed form: with azimuth 90 deg, view (x, y, z) reads object (z, y, -x), i.e.
    # out[d, h, w] = in[w, h, N-1-d].
    N = 6
    v = torch.rand(1, 2, N, N, N, dtype=torch.float64)
    R = invrender.rotation_matrix(torch.tensor([math.pi / 2], dtype=torch.float64))
    out = invrender.rotate_voxels(v, R, mode=mode)
    expected = v.permute(0, 1, 4, 3, 2).flip(2)
    assert torch.allclose(out, expected, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_rotate_embeds_in_larger_grid(mode):
    # The output keeps the input spacing: an identity rotation into a grid twice as large puts the
    # object in the middle, unchanged, with zeros around it.
    v = torch.rand(2, 1, 4, 6, 8, dtype=torch.float64)
    out = invrender.rotate_voxels(v, torch.eye(3, dtype=torch.float64), size=(8, 12, 16), mode=mode)
    assert out.shape == (2, 1, 8, 12, 16)
    assert torch.equal(out[:, :, 2:6, 3:9, 4:12], v)
    out[:, :, 2:6, 3:9, 4:12] = 0
    assert out.abs().max() == 0


def test_rotate_embedding_is_never_clipped():
    # A full cube rotated into a grid of twice the extent keeps its mass (trilinear resampling of
    # the zero-padded grid conserves it up to sampling error, measured < 0.1% here); a grid of the
    # input's extent cuts off the cube's corners and loses 15-25% of it.
    N = 16
    cube = torch.ones(3, 1, N, N, N, dtype=torch.float64)
    R = random_rotation(3)
    embedded = invrender.rotate_voxels(cube, R, size=2 * N)
    assert torch.allclose(embedded.sum(dim=(1, 2, 3, 4)), torch.full((3,), float(N**3), dtype=torch.float64), rtol=2e-3)
    assert embedded[:, :, :, :, 0].abs().max() == 0 and embedded[:, :, 0].abs().max() == 0
    clipped = invrender.rotate_voxels(cube, R, size=N)
    assert (clipped.sum(dim=(1, 2, 3, 4)) < 0.9 * N**3).all()


# Channel counts around the projection's chunks of four and grid sizes of both parities (issue 13).
shapes = st.tuples(st.integers(1, 2), st.sampled_from([1, 2, 4, 5, 9]), st.integers(1, 7), st.integers(1, 7),
                   st.integers(1, 7))
sizes = st.one_of(st.none(), st.tuples(st.integers(1, 9), st.integers(1, 9), st.integers(1, 9)))


def random_case(shape, seed):
    """Voxels in [0, 1) with about a quarter exactly 0 or 1 (occupancy boundaries), and rotations."""
    gen = torch.Generator().manual_seed(seed)
    v = torch.rand(shape, dtype=torch.float64, generator=gen)
    pick = torch.randint(0, 8, shape, generator=gen)
    v = torch.where(pick == 0, 0.0, torch.where(pick == 1, 1.0, v))
    return v, random_rotation(shape[0], generator=gen)


@HYP
@given(shape=shapes, size=sizes, seed=st.integers(0, 2**31 - 1))
def test_rotate_matches_reference_and_scipy_trilinear(shape, size, seed):
    v, R = random_case(shape, seed)
    out = invrender.rotate_voxels(v, R, size=size)
    np.testing.assert_allclose(out.numpy(), ref.rotate_voxels(v, R, size=size).numpy(), atol=1e-12)
    np.testing.assert_allclose(out.numpy(), oracle_rotate(v, R, size), atol=1e-12)


@HYP
@given(shape=shapes, size=sizes, seed=st.integers(0, 2**31 - 1))
def test_rotate_matches_reference_and_scipy_nearest(shape, size, seed):
    v, R = random_case(shape, seed)
    out = invrender.rotate_voxels(v, R, size=size, mode="nearest").numpy()
    expected_ref = ref.rotate_voxels(v, R, size=size, mode="nearest").numpy()
    expected_scipy = oracle_rotate(v, R, size, order=0)
    out_size = shape[2:] if size is None else size
    for b in range(shape[0]):
        # Samples exactly between two cells may round either way (ties): allowed to differ.
        ties = near_tie(sample_coordinates(shape[2:], out_size, R[b].numpy()))
        for c in range(shape[1]):
            np.testing.assert_array_equal(out[b, c][~ties], expected_ref[b, c][~ties])
            np.testing.assert_array_equal(out[b, c][~ties], expected_scipy[b, c][~ties])
        # The output's centre maps to the input's centre, a tie when an input side is even: only
        # larger outputs must be mostly tie-free.
        if ties.size >= 8:
            assert ties.mean() < 0.5


def test_rotate_float32_matches_float64():
    v = torch.rand(2, 2, 8, 8, 8, dtype=torch.float64)
    R = random_rotation(2)
    out64 = invrender.rotate_voxels(v, R)
    out32 = invrender.rotate_voxels(v.float(), R.float())
    assert out32.dtype == torch.float32
    assert torch.allclose(out32.double(), out64, atol=1e-5)


def test_rotate_gradcheck_trilinear():
    v = torch.rand(2, 2, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    R = random_rotation(2).requires_grad_()
    assert gradcheck(lambda v, R: invrender.rotate_voxels(v, R, size=(5, 4, 6)), (v, R))
    # Shared rotation (3, 3): the gradient sums over the batch.
    R1 = random_rotation(1)[0].requires_grad_()
    assert gradcheck(lambda v, R: invrender.rotate_voxels(v, R), (v, R1))


def test_rotate_gradcheck_nearest():
    v = torch.rand(2, 2, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    R = random_rotation(2)
    assert gradcheck(lambda v: invrender.rotate_voxels(v, R, size=(6, 5, 4), mode="nearest"), (v,))
    # Not differentiable in the rotation: documented zero gradient.
    R = R.clone().requires_grad_()
    invrender.rotate_voxels(v, R, mode="nearest").sum().backward()
    assert torch.equal(R.grad, torch.zeros_like(R))


def test_rotate_gradients_match_reference():
    v = torch.rand(3, 2, 6, 5, 4, dtype=torch.float64, requires_grad=True)
    R = random_rotation(3).requires_grad_()
    g = torch.randn(3, 2, 7, 7, 7, dtype=torch.float64)
    ours = torch.autograd.grad((invrender.rotate_voxels(v, R, size=7) * g).sum(), (v, R))
    theirs = torch.autograd.grad((ref.rotate_voxels(v, R, size=7) * g).sum(), (v, R))
    for o, t in zip(ours, theirs):
        assert torch.allclose(o, t, atol=1e-10)


def test_rotate_noncontiguous_and_empty():
    base = torch.rand(2, 5, 4, 3, 6, dtype=torch.float64)
    v = base.permute(0, 1, 4, 3, 2)  # non-contiguous (2, 5, 6, 3, 4)
    R = random_rotation(2).transpose(1, 2)  # non-contiguous rotation
    assert torch.allclose(invrender.rotate_voxels(v, R), invrender.rotate_voxels(v.contiguous(), R.contiguous()))
    empty = torch.rand(0, 2, 4, 4, 4, requires_grad=True)
    out = invrender.rotate_voxels(empty, torch.eye(3), size=5)
    assert out.shape == (0, 2, 5, 5, 5)
    out.sum().backward()
    assert empty.grad.shape == empty.shape
    assert invrender.rotate_voxels(torch.rand(2, 1, 4, 4, 4), torch.eye(3), size=(0, 3, 3)).shape == (2, 1, 0, 3, 3)


@pytest.mark.parametrize("op", ["rotate", "project"])
def test_backward_is_deterministic_on_cpu(op):
    v = torch.rand(3, 2, 8, 8, 8, requires_grad=True)
    R = random_rotation(3, dtype=torch.float32).requires_grad_()
    fn = invrender.rotate_voxels if op == "rotate" else invrender.project_voxels
    grads = []
    threads_before = torch.get_num_threads()
    for threads in (1, 2, 1):
        torch.set_num_threads(threads)
        grads.append(torch.autograd.grad(fn(v, R).pow(2).sum(), (v, R)))
    torch.set_num_threads(threads_before)
    for g in grads[1:]:
        assert torch.equal(g[0], grads[0][0]) and torch.equal(g[1], grads[0][1])


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: invrender.rotate_voxels(torch.rand(2, 4, 4, 4), torch.eye(3)), ValueError, "voxels.*5-D"),
        (lambda: invrender.rotate_voxels(torch.rand(2, 1, 4, 4, 4), torch.eye(4)), ValueError, "rotation.*shape"),
        (lambda: invrender.rotate_voxels(torch.rand(2, 1, 4, 4, 4), torch.rand(3, 3, 3)), ValueError, "rotation.*shape"),
        (lambda: invrender.rotate_voxels(torch.ones(2, 1, 4, 4, 4, dtype=torch.int64), torch.eye(3)), TypeError, "voxels.*float"),
        (lambda: invrender.rotate_voxels(torch.rand(2, 1, 4, 4, 4), torch.eye(3, dtype=torch.int32)), TypeError, "rotation"),
        (lambda: invrender.rotate_voxels(torch.rand(2, 1, 4, 4, 4), torch.eye(3, dtype=torch.float64)), TypeError, "rotation.*dtype"),
        (lambda: invrender.rotate_voxels(torch.rand(2, 1, 4, 4, 4), torch.full((3, 3), float("nan"))), ValueError, "rotation.*NaN"),
        (lambda: invrender.rotate_voxels(torch.rand(2, 1, 4, 4, 4), torch.eye(3), mode="cubic"), ValueError, "mode"),
        (lambda: invrender.rotate_voxels(torch.rand(2, 1, 4, 4, 4), torch.eye(3), size=(4, 4)), ValueError, "size"),
        (lambda: invrender.rotate_voxels(torch.rand(2, 1, 4, 4, 4), torch.eye(3), size=-2), ValueError, "size"),
        # 1291^3 > 2^31 - 1 voxels per channel (an expanded view: no memory is allocated).
        (lambda: invrender.project_voxels(torch.zeros(1).expand(1, 1, 1291, 1291, 1291)), ValueError, "voxels.*2\\^31"),
        (lambda: invrender.rotate_voxels(torch.rand(2, 1, 4, 4, 4), torch.eye(3), size="big"), TypeError, "size"),
        (lambda: invrender.rotate_voxels([[1.0]], torch.eye(3)), TypeError, "voxels"),
        (lambda: invrender.rotate_voxels(torch.rand(2, 1, 4, 4, 4), None), TypeError, "rotation"),
    ],
)
def test_rotate_bad_inputs(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_mixed_devices_rejected():
    # The meta device stands in for a second device on a CPU-only machine.
    with pytest.raises(ValueError, match="rotation.*device"):
        invrender.rotate_voxels(torch.rand(1, 1, 2, 2, 2), torch.eye(3, device="meta"))
    with pytest.raises(ValueError, match="rotation.*device"):
        invrender.project_voxels(torch.rand(1, 1, 2, 2, 2, device="meta"), torch.eye(3))


def test_huge_rotation_entries_are_safe():
    # Finite but enormous matrices send every sample far outside: zeros, no overflow.
    v = torch.rand(1, 1, 4, 4, 4)
    R = torch.full((3, 3), 1e30)
    assert invrender.rotate_voxels(v, R).abs().max() == 0
    assert invrender.project_voxels(v, R).abs().max() == 0


# ------------------------------------------------------------------------------------------------
# project_voxels


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_project_identity_closed_form(mode, tau):
    v = torch.rand(2, 3, 5, 6, 7, dtype=torch.float64)
    expected = 1 - torch.exp(-tau * v.sum(dim=2))
    assert torch.allclose(invrender.project_voxels(v, mode=mode, tau=tau), expected, atol=1e-14)
    assert torch.allclose(invrender.project_voxels(v, torch.eye(3, dtype=torch.float64), mode=mode, tau=tau), expected, atol=1e-14)


def test_project_azimuth_quarter_turn_closed_form():
    # With azimuth 90 deg, the ray through pixel (h, w) runs along the object's x axis at
    # object depth index w: img[h, w] = 1 - exp(-sum_k vox[w, h, k]).
    v = torch.rand(2, 1, 6, 6, 6, dtype=torch.float64)
    R = invrender.rotation_matrix(torch.full((2,), math.pi / 2, dtype=torch.float64))
    expected = (1 - torch.exp(-v.sum(dim=-1))).transpose(-1, -2)
    assert torch.allclose(invrender.project_voxels(v, R), expected, atol=1e-12)


@HYP
@given(shape=shapes, tau=st.floats(0.05, 3.0), mode=st.sampled_from(MODES), seed=st.integers(0, 2**31 - 1))
def test_project_matches_reference_and_scipy(shape, tau, mode, seed):
    v, R = random_case(shape, seed)
    out = invrender.project_voxels(v, R, mode=mode, tau=tau).numpy()
    expected_ref = ref.project_voxels(v, R, mode=mode, tau=tau).numpy()
    expected_scipy = oracle_project(v, R, tau, order=1 if mode == "trilinear" else 0)
    if mode == "trilinear":
        np.testing.assert_allclose(out, expected_ref, atol=1e-12)
        np.testing.assert_allclose(out, expected_scipy, atol=1e-12)
        return
    for b in range(shape[0]):
        # A pixel may differ only if one of its samples is a tie between two cells.
        ties = near_tie(sample_coordinates(shape[2:], shape[2:], R[b].numpy())).any(axis=0)
        np.testing.assert_allclose(out[b][:, ~ties], expected_ref[b][:, ~ties], atol=1e-12)
        np.testing.assert_allclose(out[b][:, ~ties], expected_scipy[b][:, ~ties], atol=1e-12)


def test_project_gradcheck():
    v = torch.rand(2, 3, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    R = random_rotation(2).requires_grad_()
    assert gradcheck(lambda v, R: invrender.project_voxels(v, R, tau=0.7), (v, R))
    assert gradcheck(lambda v: invrender.project_voxels(v, R.detach(), mode="nearest", tau=1.3), (v,))
    assert gradcheck(lambda v: invrender.project_voxels(v), (v,))
    v5 = torch.rand(1, 5, 3, 4, 4, dtype=torch.float64, requires_grad=True)  # > one channel chunk
    assert gradcheck(lambda v, R: invrender.project_voxels(v, R), (v5, random_rotation(1).requires_grad_()))


def test_project_gradients_match_reference():
    v = torch.rand(3, 2, 8, 7, 6, dtype=torch.float64, requires_grad=True)
    R = random_rotation(3).requires_grad_()
    g = torch.randn(3, 2, 7, 6, dtype=torch.float64)
    ours = torch.autograd.grad((invrender.project_voxels(v, R, tau=0.4) * g).sum(), (v, R))
    theirs = torch.autograd.grad((ref.project_voxels(v, R, tau=0.4) * g).sum(), (v, R))
    for o, t in zip(ours, theirs):
        assert torch.allclose(o, t, atol=1e-10)


def test_project_float32_and_saturation():
    v = torch.rand(2, 1, 16, 16, 16)
    R = random_rotation(2, dtype=torch.float32)
    img = invrender.project_voxels(v, R)
    assert torch.allclose(img.double(), invrender.project_voxels(v.double(), R.double()), atol=1e-5)
    # Saturated pixels (image exactly 1 in float32) give finite, zero gradients.
    v = torch.full((1, 1, 8, 8, 8), 50.0, requires_grad=True)
    img = invrender.project_voxels(v)
    assert torch.all(img == 1)
    img.sum().backward()
    assert torch.isfinite(v.grad).all()


def test_project_empty_and_bad_inputs():
    assert invrender.project_voxels(torch.rand(0, 1, 4, 4, 4)).shape == (0, 1, 4, 4)
    assert invrender.project_voxels(torch.rand(2, 1, 0, 4, 4)).abs().max() == 0
    v = torch.rand(2, 1, 4, 4, 4)
    with pytest.raises(ValueError, match="tau"):
        invrender.project_voxels(v, tau=0.0)
    with pytest.raises(ValueError, match="tau"):
        invrender.project_voxels(v, tau=float("nan"))
    with pytest.raises(TypeError, match="tau"):
        invrender.project_voxels(v, tau=torch.tensor(1.0))
    with pytest.raises(ValueError, match="rotation.*NaN"):
        invrender.project_voxels(v, torch.full((2, 3, 3), float("inf")))
    with pytest.raises(ValueError, match="voxels"):
        invrender.project_voxels(torch.rand(4, 4, 4))
    with pytest.raises(ValueError, match="mode"):
        invrender.project_voxels(v, mode="linear")


# ------------------------------------------------------------------------------------------------
# Registration: opcheck, torch.compile


def _opcheck_cases():
    v = torch.rand(2, 2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    R = random_rotation(2).requires_grad_()
    a, e, r = (torch.rand(3, dtype=torch.float64, requires_grad=True) for _ in range(3))
    ops = torch.ops.invrender
    img = ops.project_voxels_forward(v, R, "trilinear", 0.5).detach()
    return [
        (ops.rotation_matrix_forward.default, (a, e, r)),
        (ops.rotation_matrix_backward.default, (torch.rand(3, 3, 3, dtype=torch.float64), a.detach(), e.detach(), r.detach())),
        (ops.rotate_voxels_forward.default, (v, R, [4, 3, 6], "trilinear")),
        (ops.rotate_voxels_forward.default, (v, R, [3, 4, 5], "nearest")),
        (ops.rotate_voxels_backward.default, (torch.rand(2, 2, 4, 3, 6, dtype=torch.float64), v.detach(), R.detach(), [4, 3, 6], "trilinear")),
        (ops.project_voxels_forward.default, (v, R, "trilinear", 0.5)),
        (ops.project_voxels_backward.default, (torch.rand_like(img), img, v.detach(), R.detach(), "trilinear", 0.5)),
    ]


@pytest.mark.parametrize("case", range(7))
def test_opcheck(case):
    op, args = _opcheck_cases()[case]
    torch.library.opcheck(op, args)


def test_double_backward_raises():
    v = torch.rand(1, 1, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(invrender.project_voxels(v).sum(), v, create_graph=True)
    with pytest.raises(NotImplementedError, match="double backward"):
        g.sum().backward()


def test_torch_compile_fullgraph():
    torch._dynamo.reset()

    def render(v, az):
        R = invrender.rotation_matrix(az, 0.3)
        big = invrender.rotate_voxels(v, R, size=12)
        return invrender.project_voxels(big, tau=0.5).mean() + invrender.project_voxels(v, R).mean()

    v = torch.rand(2, 1, 6, 6, 6, requires_grad=True)
    az = torch.rand(2, requires_grad=True)
    compiled = torch.compile(render, fullgraph=True, backend="aot_eager")
    out = compiled(v, az)
    assert torch.allclose(out, render(v, az))
    g_c = torch.autograd.grad(out, (v, az))
    g_e = torch.autograd.grad(render(v, az), (v, az))
    for a, b in zip(g_c, g_e):
        assert torch.allclose(a, b, atol=1e-6)


def test_build_info():
    info = invrender.build_info()
    assert info["cpu"] is True
    assert isinstance(info["cuda"], bool)
    assert info["torch_version"] == torch.__version__.split("+")[0]
    assert hasattr(torch.ops.invrender, "project_voxels_backward")


# ------------------------------------------------------------------------------------------------
# CUDA (skipped without a GPU; never counted as passed)


@pytest.mark.cuda
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(mode, dtype):
    v = torch.rand(3, 2, 9, 10, 11, dtype=dtype)
    R = random_rotation(3, dtype=dtype)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    for fn in (lambda v, R: invrender.rotate_voxels(v, R, size=(12, 8, 10), mode=mode), lambda v, R: invrender.project_voxels(v, R, mode=mode, tau=0.3)):
        vc, Rc = v.clone().requires_grad_(), R.clone().requires_grad_()
        vg, Rg = v.cuda().requires_grad_(), R.cuda().requires_grad_()
        out_c, out_g = fn(vc, Rc), fn(vg, Rg)
        assert torch.allclose(out_g.cpu(), out_c, atol=tol)
        g = torch.randn_like(out_c)
        gc = torch.autograd.grad((out_c * g).sum(), (vc, Rc))
        gg = torch.autograd.grad((out_g * g.cuda()).sum(), (vg, Rg))
        for a, b in zip(gc, gg):
            assert torch.allclose(b.cpu(), a, atol=tol * 10, rtol=1e-3)
    az = torch.rand(5, dtype=dtype)
    assert torch.allclose(invrender.rotation_matrix(az.cuda(), 0.2).cpu(), invrender.rotation_matrix(az, 0.2), atol=tol)


@pytest.mark.cuda
def test_cuda_gradcheck():
    v = torch.rand(2, 2, 4, 5, 6, dtype=torch.float64, device="cuda", requires_grad=True)
    R = random_rotation(2, device="cuda").requires_grad_()
    assert gradcheck(lambda v, R: invrender.rotate_voxels(v, R, size=(5, 4, 6)), (v, R), nondet_tol=1e-12)
    assert gradcheck(lambda v, R: invrender.project_voxels(v, R, tau=0.7), (v, R), nondet_tol=1e-12)
    a = torch.rand(4, dtype=torch.float64, device="cuda", requires_grad=True)
    assert gradcheck(lambda a: invrender.rotation_matrix(a, a * 0.5, a * 2), (a,))


@pytest.mark.cuda
def test_cuda_deterministic_mode_raises():
    v = torch.rand(1, 1, 4, 4, 4, device="cuda", requires_grad=True)
    torch.use_deterministic_algorithms(True)
    try:
        with pytest.raises(RuntimeError, match="deterministic"):
            invrender.project_voxels(v).sum().backward()
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.mark.cuda
def test_cuda_mixed_devices_rejected():
    with pytest.raises(ValueError, match="rotation.*device"):
        invrender.rotate_voxels(torch.rand(1, 1, 4, 4, 4, device="cuda"), torch.eye(3))
