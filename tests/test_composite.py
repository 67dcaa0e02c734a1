"""Layered compositing (invrender.composite_layers, layer_alpha) and SoftRas aggregation
(invrender.softras_blend): closed forms, the pure-PyTorch reference, numpy loops over pixels,
float64 gradcheck, exact 0/1 opacities, empty layers, determinism, opcheck, torch.compile, bad inputs.
"""

from collections import namedtuple

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.autograd import gradcheck

import invrender
from invrender import reference as ref

HYP = settings(max_examples=25, deadline=None)
# Channel counts around the kernels' chunks of four (issue 13): one, three, a full chunk, one over, two and one.
CHANNELS = [1, 3, 4, 5, 9]
D64 = dict(dtype=torch.float64)
Fragments = namedtuple("Fragments", "face_idx dist depth")
ops = torch.ops.invrender


def _layers(B, H, W, L, C, seed=0, lo=0.05, hi=0.95, exact=False):
    """alpha (B, H, W, L) in [lo, hi] (with exact 0s and 1s when `exact`), colors, background."""
    g = torch.Generator().manual_seed(seed)
    alpha = lo + (hi - lo) * torch.rand(B, H, W, L, generator=g, **D64)
    if exact:
        pick = torch.randint(0, 4, (B, H, W, L), generator=g)
        alpha = torch.where(pick == 0, 0.0, torch.where(pick == 1, 1.0, alpha))
    colors = torch.rand(B, H, W, L, C, generator=g, **D64)
    bg = torch.rand(B, C, H, W, generator=g, **D64)
    return alpha, colors, bg


def _fragments(B, H, W, L, seed=0, empty=0.3, sigma=1e-2, depth_spread=0.05):
    """Random fragments: face_idx (-1 with probability `empty`), dist of the order of sigma, depth
    in [1, 1 + depth_spread]."""
    g = torch.Generator().manual_seed(seed)
    face_idx = torch.randint(0, 50, (B, H, W, L), generator=g)
    face_idx = torch.where(torch.rand(B, H, W, L, generator=g) < empty, -1, face_idx)
    dist = torch.randn(B, H, W, L, generator=g, **D64) * 2 * sigma
    depth = 1 + depth_spread * torch.rand(B, H, W, L, generator=g, **D64)
    return Fragments(face_idx, dist, depth)


def _weights(outputs, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(o.shape, generator=g, dtype=o.dtype) for o in outputs]


def _loss(outputs, weights):
    return sum((o * w).sum() for o, w in zip(outputs, weights))


# ------------------------------------------------------------------------------------------------
# Independent numpy oracles (loops over pixels, the formulas as written)


def oracle_composite(alpha, colors, bg):
    """Values and gradients (for upstream weights wi (B, C, H, W), wm (B, 1, H, W) passed later)
    of front-to-back compositing, with explicit products (no division, no recurrence)."""
    a, c, b = (t.detach().numpy() for t in (alpha, colors, bg))
    B, H, W, L = a.shape
    C = c.shape[-1]
    image, mask = np.zeros((B, C, H, W)), np.zeros((B, 1, H, W))
    for n in range(B):
        for i in range(H):
            for j in range(W):
                T, acc = 1.0, np.zeros(C)
                for l in range(L):
                    acc += T * a[n, i, j, l] * c[n, i, j, l]
                    T *= 1 - a[n, i, j, l]
                image[n, :, i, j] = acc + T * b[n, :, i, j]
                mask[n, 0, i, j] = 1 - T
    return image, mask


def oracle_composite_grads(alpha, colors, bg, wi, wm):
    """Gradients of sum(wi * image) + sum(wm * mask), from the products of the definition:
    d image / d alpha_l = T_l c_l - sum_{k>l} prod_{j<k, j!=l}(1-a_j) a_k c_k - prod_{j!=l}(1-a_j) bg."""
    a, c, b = (t.detach().numpy() for t in (alpha, colors, bg))
    wi, wm = wi.numpy(), wm.numpy()
    B, H, W, L = a.shape
    ga, gc, gb = np.zeros_like(a), np.zeros_like(c), np.zeros_like(b)
    for n in range(B):
        for i in range(H):
            for j in range(W):
                av, g = a[n, i, j], wi[n, :, i, j]
                T = [np.prod(1 - av[:k]) for k in range(L + 1)]
                for l in range(L):
                    skip = lambda k: np.prod([1 - av[m] for m in range(k) if m != l])  # noqa: E731
                    d = T[l] * c[n, i, j, l]
                    for k in range(l + 1, L):
                        d = d - skip(k) * av[k] * c[n, i, j, k]
                    d = d - skip(L) * b[n, :, i, j]
                    ga[n, i, j, l] = g @ d + wm[n, 0, i, j] * skip(L)
                    gc[n, i, j, l] = g * T[l] * av[l]
                gb[n, :, i, j] = g * T[L]
    return ga, gc, gb


def oracle_softras(prob, depth, face_idx, colors, bg, gamma, znear, zfar, eps):
    """SoftRas over the valid layers, weights in log space (a different stabiliser than the op's)."""
    p, d, f, c, b = (t.detach().numpy() for t in (prob, depth, face_idx, colors, bg))
    B, H, W, L = p.shape
    C = c.shape[-1]
    image, sil = np.zeros((B, C, H, W)), np.zeros((B, 1, H, W))
    for n in range(B):
        for i in range(H):
            for j in range(W):
                logw, cols, keep = [eps / gamma], [b[n, :, i, j]], 1.0
                for l in range(L):
                    if f[n, i, j, l] < 0:
                        continue
                    keep *= 1 - p[n, i, j, l]
                    if p[n, i, j, l] > 0:
                        z = (zfar - d[n, i, j, l]) / (zfar - znear)
                        logw.append(np.log(p[n, i, j, l]) + z / gamma)
                        cols.append(c[n, i, j, l])
                w = np.exp(np.array(logw) - max(logw))
                image[n, :, i, j] = (w[:, None] * np.array(cols)).sum(0) / w.sum()
                sil[n, 0, i, j] = 1 - keep
    return image, sil


# ------------------------------------------------------------------------------------------------
# composite_layers: closed forms


def test_first_layer_opaque_shows_its_colour_exactly():
    alpha, colors, bg = _layers(2, 3, 4, 5, 3)
    alpha[:, :, :, 0] = 1.0
    image, mask = invrender.composite_layers(alpha, colors, bg)
    assert torch.equal(image, colors[:, :, :, 0].permute(0, 3, 1, 2))
    assert torch.equal(mask, torch.ones_like(mask))


def test_all_zero_alpha_shows_background():
    _, colors, bg = _layers(2, 3, 4, 5, 3)
    alpha = torch.zeros(2, 3, 4, 5, **D64)
    image, mask = invrender.composite_layers(alpha, colors, bg)
    assert torch.equal(image, bg) and torch.equal(mask, torch.zeros_like(mask))


def test_background_forms():
    alpha, colors, bg = _layers(2, 3, 4, 5, 3)
    full = invrender.composite_layers(alpha, colors, torch.full((2, 3, 3, 4), 0.25, **D64))
    for b in (0.25, [0.25, 0.25, 0.25], torch.tensor([0.25] * 3, **D64), torch.tensor(0.25, **D64),
              torch.full((1, 3, 1, 1), 0.25, **D64), torch.full((3, 1, 4), 0.25, **D64)):
        out = invrender.composite_layers(alpha, colors, b)
        assert torch.allclose(out.image, full.image, rtol=0, atol=1e-15) and torch.equal(out.mask, full.mask)
    black = invrender.composite_layers(alpha, colors)
    assert torch.allclose(black.image, invrender.composite_layers(alpha, colors, 0.0).image, rtol=0, atol=0)
    # The gradient of a colour background is the reduced gradient of the expanded one.
    colour = torch.tensor([0.1, 0.5, 0.9], **D64, requires_grad=True)
    (g,) = torch.autograd.grad(invrender.composite_layers(alpha, colors, colour).image.sum(), colour)
    T_L = torch.prod(1 - alpha, dim=-1)
    assert torch.allclose(g, T_L.sum().expand(3), rtol=1e-13)


def test_two_layers_by_hand():
    alpha = torch.tensor([0.25, 0.5], **D64).reshape(1, 1, 1, 2)
    colors = torch.tensor([[1.0, 0.0], [0.0, 1.0]], **D64).reshape(1, 1, 1, 2, 2)
    image, mask = invrender.composite_layers(alpha, colors, torch.tensor([0.5, 0.5], **D64))
    # 0.25 c0 + 0.75 * 0.5 c1 + 0.75 * 0.5 * bg
    assert torch.allclose(image.flatten(), torch.tensor([0.25 + 0.1875, 0.375 + 0.1875], **D64), rtol=0, atol=1e-15)
    assert torch.allclose(mask.flatten(), torch.tensor([1 - 0.375], **D64), rtol=0, atol=1e-15)


# ------------------------------------------------------------------------------------------------
# composite_layers: reference, numpy oracle, gradients


@HYP
@given(B=st.integers(1, 2), H=st.integers(1, 3), W=st.integers(1, 3), L=st.integers(0, 6),
       C=st.sampled_from(CHANNELS), exact=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_composite_matches_reference_and_numpy_oracle(B, H, W, L, C, exact, seed):
    alpha, colors, bg = _layers(B, H, W, L, C, seed=seed, lo=0.0, hi=1.0, exact=exact)
    grads = []
    for fn in (invrender.composite_layers, ref.composite_layers):
        inputs = [t.clone().requires_grad_() for t in (alpha, colors, bg)]
        out = fn(*inputs)
        weights = _weights(out, seed)
        grads.append((out, torch.autograd.grad(_loss(out, weights), inputs)))
    (out, g), (expected, g_ref) = grads
    for x, y in zip(out, expected):
        assert x.shape == y.shape and torch.allclose(x, y, rtol=0, atol=1e-13)
    for x, y in zip(g, g_ref):
        assert torch.isfinite(x).all() and torch.allclose(x, y, rtol=1e-10, atol=1e-13)
    o_image, o_mask = oracle_composite(alpha, colors, bg)
    assert np.allclose(out.image.detach().numpy(), o_image, rtol=0, atol=1e-13)
    assert np.allclose(out.mask.detach().numpy(), o_mask, rtol=0, atol=1e-13)
    for x, y in zip(g, oracle_composite_grads(alpha, colors, bg, *weights)):
        assert np.allclose(x.numpy(), y, rtol=1e-10, atol=1e-13)


def test_composite_hundred_layers_matches_reference():
    alpha, colors, bg = _layers(2, 3, 4, 100, 3, seed=7, lo=0.0, hi=0.06)
    alpha[0, 0, 0, 60] = 1.0  # opaque deep in the stack
    alpha[1, 1, 1, 30:50] = 0.0
    grads = []
    for fn in (invrender.composite_layers, ref.composite_layers):
        inputs = [t.clone().requires_grad_() for t in (alpha, colors, bg)]
        out = fn(*inputs)
        grads.append((out, torch.autograd.grad(_loss(out, _weights(out)), inputs)))
    (out, g), (expected, g_ref) = grads
    assert out.mask.min() > 0.5  # the back layers matter
    for x, y in zip(out, expected):
        assert torch.allclose(x, y, rtol=0, atol=1e-13)
    for x, y in zip(g, g_ref):
        assert x.abs().max() > 0 and torch.allclose(x, y, rtol=1e-10, atol=1e-13)


def test_composite_gradcheck():
    alpha, colors, bg = _layers(2, 3, 2, 4, 2)
    inputs = [t.clone().requires_grad_() for t in (alpha, colors, bg)]
    assert gradcheck(lambda a, c, b: tuple(invrender.composite_layers(a, c, b)), inputs)
    colour = torch.rand(2, **D64, requires_grad=True)
    assert gradcheck(lambda a, c, b: tuple(invrender.composite_layers(a, c, b)), inputs[:2] + [colour])


def test_composite_backward_op_gradcheck_inputs_and_unused_outputs():
    alpha, colors, bg = _layers(1, 2, 2, 3, 2)
    a = alpha.clone().requires_grad_()
    (g_mask_only,) = torch.autograd.grad(invrender.composite_layers(a, colors, bg).mask.sum(), a)
    (g_ref,) = torch.autograd.grad(ref.composite_layers(a, colors, bg).mask.sum(), a)
    assert torch.allclose(g_mask_only, g_ref, rtol=1e-12, atol=1e-14)
    (g_image_only,) = torch.autograd.grad(invrender.composite_layers(a, colors, bg).image.sum(), a)
    (g_ref,) = torch.autograd.grad(ref.composite_layers(a, colors, bg).image.sum(), a)
    assert torch.allclose(g_image_only, g_ref, rtol=1e-12, atol=1e-14)


def test_exact_zero_and_one_alpha_give_reference_gradients():
    alpha, colors, bg = _layers(2, 4, 4, 6, 3, seed=3)
    pick = torch.randint(0, 3, alpha.shape, generator=torch.Generator().manual_seed(3))
    alpha = torch.where(pick == 0, 0.0, torch.where(pick == 1, 1.0, alpha))
    alpha[0, 0, 0] = 1.0  # every layer opaque
    alpha[0, 0, 1] = 0.0  # every layer transparent
    alpha[0, 0, 2, -1] = 1.0  # opaque last layer
    grads = []
    for fn in (invrender.composite_layers, ref.composite_layers):
        inputs = [t.clone().requires_grad_() for t in (alpha, colors, bg)]
        out = fn(*inputs)
        grads.append(torch.autograd.grad(_loss(out, _weights(out)), inputs))
    for x, y in zip(*grads):
        assert torch.isfinite(x).all()
        assert torch.allclose(x, y, rtol=1e-12, atol=1e-14)
    # Behind an opaque layer: no colour gradient; the opaque layer's alpha still sees what is behind.
    assert torch.all(grads[0][1][0, 0, 0, 1:] == 0)
    assert grads[0][0][0, 0, 0, 0] != 0


def test_composite_float32_matches_float64():
    alpha, colors, bg = _layers(2, 5, 6, 9, 3)
    x = invrender.composite_layers(alpha.float(), colors.float(), bg.float())
    y = invrender.composite_layers(alpha, colors, bg)
    for p, q in zip(x, y):
        assert p.dtype == torch.float32 and torch.allclose(p.double(), q, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# layer_alpha and UNICORN semantics


def test_unicorn_layer_alpha_and_compositing():
    sigma = 1e-2
    frag = _fragments(2, 3, 4, 5, seed=4, sigma=sigma)
    frag.dist[0, 0, 0, 2] = -0.5  # fully covered pixel (inside a face)
    frag.face_idx[0, 0, 0, 2] = 7
    _, colors, bg = _layers(2, 3, 4, 5, 3, seed=4)
    alpha = invrender.layer_alpha(frag, sigma)
    expected_alpha = torch.exp(-frag.dist.clamp(min=0) / sigma) * (frag.face_idx >= 0)
    assert torch.allclose(alpha, expected_alpha, rtol=0, atol=1e-15)
    assert torch.all(alpha[frag.dist < 0][(frag.face_idx >= 0)[frag.dist < 0]] == 1)
    image, mask = invrender.composite_layers(alpha, colors, bg)
    o_image, o_mask = oracle_composite(expected_alpha, colors, bg)
    assert np.allclose(image.numpy(), o_image, rtol=0, atol=1e-13)
    assert np.allclose(mask.numpy(), o_mask, rtol=0, atol=1e-13)
    assert mask[0, 0, 0, 0] == 1


def test_layer_alpha_sigmoid_and_empty_layers():
    sigma = 1e-2
    frag = _fragments(1, 3, 3, 4, seed=5, sigma=sigma)
    dist = frag.dist.clone()
    dist[frag.face_idx < 0] = float("nan")  # garbage in empty layers must not leak
    dist[0, 0, 0, :] = torch.tensor([float("inf"), -float("inf"), 0.0, 1.0], **D64)
    frag.face_idx[0, 0, 0, :2] = -1
    frag.face_idx[0, 0, 0, 2:] = 3
    dist.requires_grad_()
    for kind in ("exp", "sigmoid"):
        alpha = invrender.layer_alpha(Fragments(frag.face_idx, dist, frag.depth), sigma, kind=kind)
        valid = frag.face_idx >= 0
        d = torch.where(valid, dist.detach(), 0.0)
        expected = torch.sigmoid(-d / sigma) if kind == "sigmoid" else torch.exp(-d.clamp(min=0) / sigma)
        assert torch.equal(alpha[~valid], torch.zeros_like(alpha[~valid]))
        assert torch.allclose(alpha[valid], expected[valid], rtol=0, atol=1e-15)
        (g,) = torch.autograd.grad(alpha.sum(), dist)
        assert torch.isfinite(g).all() and torch.all(g[~valid] == 0)
    assert ref.layer_alpha is invrender.layer_alpha


# ------------------------------------------------------------------------------------------------
# softras_blend


def _softras_inputs(B, H, W, L, C, seed=0, gamma=1e-2, depth_spread=0.05, empty=0.3):
    frag = _fragments(B, H, W, L, seed=seed, empty=empty, depth_spread=depth_spread)
    g = torch.Generator().manual_seed(seed + 1)
    prob = torch.where(frag.face_idx >= 0, 0.05 + 0.9 * torch.rand(B, H, W, L, generator=g, **D64), 0.0)
    colors = torch.rand(B, H, W, L, C, generator=g, **D64)
    bg = torch.rand(B, C, H, W, generator=g, **D64)
    return frag, prob, colors, bg


def _softras_op(prob, depth, face_idx, colors, bg, gamma=1e-2, znear=1.0, zfar=100.0, eps=1e-3):
    return tuple(ops.softras_blend_forward(prob, depth, face_idx, colors, bg, gamma, znear, zfar, eps))


def _softras_ref(prob, depth, face_idx, colors, bg, gamma=1e-2, znear=1.0, zfar=100.0, eps=1e-3):
    from invrender.reference.composite import _softras_from_prob
    return tuple(_softras_from_prob(prob, depth, face_idx, colors, bg, gamma, znear, zfar, eps))


def test_softras_gradcheck():
    frag, prob, colors, bg = _softras_inputs(2, 3, 2, 4, 2, gamma=1e-2)
    inputs = [t.clone().requires_grad_() for t in (prob, frag.depth, colors, bg)]
    f = lambda p, d, c, b: _softras_op(p, d, frag.face_idx, c, b, gamma=0.5, znear=0.5, zfar=3.0)  # noqa: E731
    assert gradcheck(f, inputs)
    # Through the fragments (dist -> prob by the sigmoid) with a colour background.
    dist, depth = frag.dist.clone().requires_grad_(), frag.depth.clone().requires_grad_()
    colour = torch.rand(2, **D64, requires_grad=True)

    def g(dist, depth, c, b):
        return tuple(invrender.softras_blend(Fragments(frag.face_idx, dist, depth), c, sigma=2e-2, gamma=0.3,
                                             znear=0.5, zfar=3.0, background=b))

    assert gradcheck(g, [dist, depth, inputs[2], colour])


@HYP
@given(B=st.integers(1, 2), H=st.integers(1, 3), W=st.integers(1, 3), L=st.integers(0, 6),
       C=st.sampled_from(CHANNELS), gamma=st.sampled_from([1e-4, 1e-3, 1e-2, 0.3]),
       spread=st.sampled_from([1e-3, 0.05, 2.0]), zero_prob=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_softras_matches_reference_and_numpy_oracle(B, H, W, L, C, gamma, spread, zero_prob, seed):
    frag, prob, colors, bg = _softras_inputs(B, H, W, L, C, seed=seed, depth_spread=spread)
    if zero_prob and L:
        # A valid layer with prob exactly 0 (behind the others, or alone): no weight in the values;
        # with a single layer and gamma = 1e-4 every weight underflows under PyTorch3D's stabiliser.
        prob[..., -1] = 0.0
        frag.depth[..., -1] = 50.0
    args = (prob, frag.depth, frag.face_idx, colors, bg)
    kw = dict(gamma=gamma, znear=1.0, zfar=100.0, eps=1e-3)
    grads = []
    for fn in (_softras_op, _softras_ref):
        inputs = [t.clone().requires_grad_() if t.is_floating_point() else t for t in args]
        out = fn(*inputs, **kw)
        diff = [inputs[i] for i in (0, 1, 3, 4)]
        grads.append((out, torch.autograd.grad(_loss(out, _weights(out, seed)), diff)))
    (out, g), (expected, g_ref) = grads
    for x, y in zip(out, expected):
        assert torch.isfinite(x).all() and torch.allclose(x, y, rtol=1e-12, atol=1e-13)
    for x, y in zip(g, g_ref):
        assert torch.isfinite(x).all()
        scale = max(1.0, y.abs().max().item() if y.numel() else 0.0)
        assert torch.allclose(x, y, rtol=1e-10, atol=1e-12 * scale)
    o_image, o_sil = oracle_softras(*args, **kw)
    assert np.allclose(out[0].detach().numpy(), o_image, rtol=0, atol=1e-12)
    assert np.allclose(out[1].detach().numpy(), o_sil, rtol=0, atol=1e-13)


def test_softras_silhouette_closed_form():
    frag, prob, colors, bg = _softras_inputs(2, 3, 4, 5, 3, seed=2)
    _, sil = _softras_op(prob, frag.depth, frag.face_idx, colors, bg)
    valid = frag.face_idx >= 0
    expected = np.ones((2, 1, 3, 4))
    for n, i, j in np.ndindex(2, 3, 4):
        for l in range(5):
            if valid[n, i, j, l]:
                expected[n, 0, i, j] *= 1 - prob[n, i, j, l].item()
    assert np.allclose(sil.numpy(), 1 - expected, rtol=0, atol=1e-15)
    # d sil / d prob_l = prod_{k != l} (1 - prob_k), also with a prob exactly 1.
    prob[0, 0, 0] = torch.tensor([1.0, 0.3, 0.6, 0.2, 0.5], **D64)
    frag.face_idx[0, 0, 0] = torch.arange(5)
    p = prob.clone().requires_grad_()
    (g,) = torch.autograd.grad(_softras_op(p, frag.depth, frag.face_idx, colors, bg)[1].sum(), p)
    q = prob[0, 0, 0]
    by_hand = torch.stack([torch.prod(1 - torch.cat([q[:l], q[l + 1:]])) for l in range(5)])
    assert torch.allclose(g[0, 0, 0], by_hand, rtol=0, atol=1e-15) and by_hand[1:].abs().max() == 0


@pytest.mark.parametrize("gamma", [1e-4, 1e-2])
def test_softras_single_opaque_layer_closed_form(gamma):
    znear, zfar, eps = 1.0, 100.0, 1e-3
    face_idx = torch.tensor([-1, 4, -1], dtype=torch.int64).reshape(1, 1, 1, 3)
    dist = torch.tensor([0.0, -1.0, 0.0], **D64).reshape(1, 1, 1, 3)  # sigmoid(1e4) == 1 exactly
    depth = torch.tensor([1.0, 99.0, 1.0], **D64).reshape(1, 1, 1, 3)  # z' = 1/99 (the empty ones in front)
    colors = torch.tensor([[9.0, 9.0], [0.2, 0.7], [9.0, 9.0]], **D64).reshape(1, 1, 1, 3, 2)
    bg = torch.tensor([1.0, 0.0], **D64)
    image, sil = invrender.softras_blend(Fragments(face_idx, dist, depth), colors, gamma=gamma, znear=znear,
                                         zfar=zfar, background=bg, eps=eps)
    z = (zfar - 99.0) / (zfar - znear)
    r = np.exp((eps - z) / gamma)  # w_bg / w_face
    expected = (np.array([0.2, 0.7]) + r * np.array([1.0, 0.0])) / (1 + r)
    assert np.allclose(image.flatten().numpy(), expected, rtol=0, atol=1e-14)
    assert sil.item() == 1.0
    if gamma == 1e-4:
        assert torch.allclose(image.flatten(), torch.tensor([0.2, 0.7], **D64), rtol=0, atol=1e-15)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_softras_underflowing_front_layer_stays_finite(dtype):
    # Layer 0: in front (depth 1) but far outside its face, so its occupancy underflows to exactly 0.
    # Layer 1: covers the pixel, 30 units behind. Relative to the front layer every weight
    # underflows; the image must still be layer 1's colour, with finite gradients everywhere.
    face_idx = torch.tensor([3, 5]).reshape(1, 1, 1, 2)
    dist = torch.tensor([0.5, -0.5], dtype=dtype).reshape(1, 1, 1, 2).requires_grad_()
    depth = torch.tensor([1.0, 31.0], dtype=dtype).reshape(1, 1, 1, 2).requires_grad_()
    colors = torch.tensor([[0.9, 0.1], [0.3, 0.6]], dtype=dtype).reshape(1, 1, 1, 2, 2).requires_grad_()
    bg = torch.tensor([1.0, 1.0], dtype=dtype, requires_grad=True)
    frag = Fragments(face_idx, dist, depth)
    for fn in (invrender.softras_blend, ref.softras_blend):
        image, sil = fn(frag, colors, background=bg)
        assert torch.equal(image.flatten(), torch.tensor([0.3, 0.6], dtype=dtype)) and sil.item() == 1
        grads = torch.autograd.grad(image.sum() + sil.sum(), (dist, depth, colors, bg))
        assert all(torch.isfinite(g).all() for g in grads)
        assert torch.equal(grads[2][0, 0, 0, 1], torch.ones(2, dtype=dtype))


def test_softras_ignores_empty_layers():
    frag, prob, colors, bg = _softras_inputs(2, 3, 3, 5, 3, seed=6, empty=0.4)
    empty = frag.face_idx < 0
    assert empty.any()
    depth2, colors2, dist2 = frag.depth.clone(), colors.clone(), frag.dist.clone()
    depth2[empty] = -5.0  # in front of the camera's near plane: would dominate if used
    colors2[empty] = 100.0
    dist2[empty] = -1.0  # "inside"
    outs, grads = [], []
    for d, c, dist in ((frag.depth, colors, frag.dist), (depth2, colors2, dist2)):
        inputs = [t.clone().requires_grad_() for t in (dist, d, c, bg)]
        out = invrender.softras_blend(Fragments(frag.face_idx, inputs[0], inputs[1]), inputs[2], sigma=1e-2,
                                      gamma=1e-2, background=inputs[3])
        outs.append(out)
        grads.append(torch.autograd.grad(_loss(out, _weights(out)), inputs))
    for x, y in zip(*outs):
        assert torch.equal(x, y)
    for x, y in zip(*grads):
        assert torch.equal(x, y)
    g_dist, g_depth, g_colors, _ = grads[0]
    assert torch.all(g_dist[empty] == 0) and torch.all(g_depth[empty] == 0) and torch.all(g_colors[empty] == 0)
    assert g_depth[~empty].abs().max() > 0
    # The backward op itself writes zeros for the empty layers of the occupancy too.
    gp = ops.softras_blend_backward(torch.ones(2, 3, 3, 3, **D64), torch.ones(2, 1, 3, 3, **D64), prob,
                                    frag.depth, frag.face_idx, colors, bg, 1e-2, 1.0, 100.0, 1e-3)[0]
    assert torch.all(gp[empty] == 0)


def test_softras_default_parameters_and_all_empty_pixel():
    frag, _, colors, bg = _softras_inputs(1, 2, 2, 3, 3, seed=8, depth_spread=5.0)
    frag.face_idx[0, 0, 0] = -1
    image, sil = invrender.softras_blend(frag, colors, background=bg)
    expected = ref.softras_blend(frag, colors, background=bg)
    assert torch.allclose(image, expected.image, rtol=0, atol=1e-13) and torch.allclose(sil, expected.silhouette)
    assert torch.equal(image[0, :, 0, 0], bg[0, :, 0, 0]) and sil[0, 0, 0, 0] == 0


# ------------------------------------------------------------------------------------------------
# Determinism, empty and non-contiguous inputs, double backward


def test_backward_is_deterministic_on_cpu():
    alpha, colors, bg = _layers(3, 16, 16, 12, 3)
    frag, prob, _, _ = _softras_inputs(3, 16, 16, 12, 3)
    before = torch.get_num_threads()
    grads = []
    try:
        for threads in (1, 2, 1):
            torch.set_num_threads(threads)
            inputs = [t.float().requires_grad_() for t in (alpha, colors, bg, prob, frag.depth)]
            out = invrender.composite_layers(*inputs[:3])
            s = _softras_op(inputs[3], inputs[4], frag.face_idx, inputs[1], inputs[2])
            grads.append(torch.autograd.grad(_loss(out + s, _weights(out + s)), inputs))
    finally:
        torch.set_num_threads(before)
    for gr in grads[1:]:
        assert all(torch.equal(x, y) for x, y in zip(gr, grads[0]))


@pytest.mark.parametrize("shape", [(0, 3, 4, 5, 3), (2, 0, 4, 5, 3), (2, 3, 0, 5, 3), (2, 3, 4, 0, 3),
                                   (2, 3, 4, 5, 0), (2, 3, 4, 0, 0)])
def test_empty_inputs(shape):
    B, H, W, L, C = shape
    alpha, colors, bg = (t.clone().requires_grad_() for t in _layers(B, H, W, L, C))
    image, mask = invrender.composite_layers(alpha, colors, bg)
    assert image.shape == (B, C, H, W) and mask.shape == (B, 1, H, W)
    if L == 0:
        assert torch.equal(image, bg) and torch.all(mask == 0)
    g = torch.autograd.grad(image.sum() + mask.sum(), (alpha, colors, bg))
    assert [x.shape for x in g] == [alpha.shape, colors.shape, bg.shape]
    if L == 0:
        assert torch.all(g[2] == 1)
    frag = _fragments(B, H, W, L)
    dist = frag.dist.clone().requires_grad_()
    out = invrender.softras_blend(Fragments(frag.face_idx, dist, frag.depth), colors, background=bg)
    assert out.image.shape == (B, C, H, W) and out.silhouette.shape == (B, 1, H, W)
    if L == 0:
        assert torch.allclose(out.image, bg, rtol=0, atol=0) and torch.all(out.silhouette == 0)
    g = torch.autograd.grad(out.image.sum() + out.silhouette.sum(), (dist, colors, bg))
    assert [x.shape for x in g] == [dist.shape, colors.shape, bg.shape]


def test_noncontiguous_inputs():
    alpha, colors, bg = _layers(2, 4, 3, 5, 3)
    a_t = alpha.transpose(1, 2).contiguous().transpose(1, 2)
    c_t = colors.permute(4, 0, 1, 2, 3).contiguous().permute(1, 2, 3, 4, 0)
    assert not a_t.is_contiguous() and not c_t.is_contiguous()
    for x, y in zip(invrender.composite_layers(a_t, c_t, bg.transpose(2, 3).contiguous().transpose(2, 3)),
                    invrender.composite_layers(alpha, colors, bg)):
        assert torch.equal(x, y)
    frag, prob, _, _ = _softras_inputs(2, 4, 3, 5, 3)
    p_t = prob.transpose(1, 2).contiguous().transpose(1, 2)
    for x, y in zip(_softras_op(p_t, frag.depth, frag.face_idx, c_t, bg), _softras_op(prob, frag.depth, frag.face_idx,
                                                                                        colors, bg)):
        assert torch.equal(x, y)


def test_double_backward_raises():
    alpha, colors, bg = _layers(1, 2, 2, 3, 2)
    a = alpha.requires_grad_()
    (g,) = torch.autograd.grad(invrender.composite_layers(a, colors, bg).image.sum(), a, create_graph=True)
    with pytest.raises(NotImplementedError, match="double backward"):
        g.sum().backward()
    frag = _fragments(1, 2, 2, 3)
    dist = frag.dist.clone().requires_grad_()
    (g,) = torch.autograd.grad(invrender.softras_blend(Fragments(frag.face_idx, dist, frag.depth), colors).image.sum(),
                               dist, create_graph=True)
    with pytest.raises(NotImplementedError, match="double backward"):
        g.sum().backward()


# ------------------------------------------------------------------------------------------------
# Bad input


def _bad_cases():
    alpha, colors, bg = _layers(2, 3, 4, 5, 3)
    frag = _fragments(2, 3, 4, 5)
    NoDepth = namedtuple("NoDepth", "face_idx dist")
    cl, sb, la = invrender.composite_layers, invrender.softras_blend, invrender.layer_alpha
    return [
        (lambda: cl(alpha[0], colors), ValueError, "alpha.*4-D"),
        (lambda: cl(alpha, colors[..., 0]), ValueError, "colors.*5-D"),
        (lambda: cl(alpha, colors[:, :, :, :4]), ValueError, "colors.*layers"),
        (lambda: cl(alpha, colors[:, :2]), ValueError, "colors"),
        (lambda: cl(alpha.int(), colors), TypeError, "alpha.*float"),
        (lambda: cl(alpha, colors.int()), TypeError, "colors"),
        (lambda: cl(alpha, colors.float()), TypeError, "colors.*dtype"),
        (lambda: cl(alpha.float(), colors.float(), bg), TypeError, "background.*dtype"),
        (lambda: cl(alpha, colors, torch.rand(2, **D64)), ValueError, "background"),
        (lambda: cl(alpha, colors, torch.rand(2, 3, 4, 3, **D64)), ValueError, "background"),
        (lambda: cl(alpha, colors, "white"), TypeError, "background"),
        (lambda: cl(alpha, colors, bg.to("meta")), ValueError, "background.*device"),
        (lambda: cl(alpha.numpy(), colors), TypeError, "alpha.*Tensor"),
        (lambda: ops.composite_layers_forward(alpha, colors, bg[:, :2]), ValueError, "background.*shape"),
        (lambda: ops.composite_layers_forward(alpha, colors[..., :4, :], bg), ValueError, "colors"),
        (lambda: ops.composite_layers_backward(bg[:, :2], bg[:, :1], alpha, colors, bg), ValueError, "grad_image"),
        (lambda: ops.composite_layers_backward(bg, bg, alpha, colors, bg), ValueError, "grad_mask"),
        (lambda: la(frag, 0.0), ValueError, "sigma"),
        (lambda: la(frag, -1e-4), ValueError, "sigma"),
        (lambda: la(frag, "x"), TypeError, "sigma"),
        (lambda: la(frag, 1e-4, kind="gauss"), ValueError, "kind"),
        (lambda: la(frag._replace(face_idx=frag.face_idx.int()), 1e-4), TypeError, "face_idx"),
        (lambda: la(frag._replace(dist=frag.dist[..., :3]), 1e-4), ValueError, "dist"),
        (lambda: la(object(), 1e-4), TypeError, "fragments"),
        (lambda: sb(NoDepth(frag.face_idx, frag.dist), colors), TypeError, "fragments.*depth"),
        (lambda: sb(frag, colors, sigma=0.0), ValueError, "sigma"),
        (lambda: sb(frag, colors, gamma=0.0), ValueError, "gamma"),
        (lambda: sb(frag, colors, gamma=-1.0), ValueError, "gamma"),
        (lambda: sb(frag, colors, znear=5.0, zfar=5.0), ValueError, "znear"),
        (lambda: sb(frag, colors, znear=float("nan")), ValueError, "znear"),
        (lambda: sb(frag, colors[:, :, :, :2]), ValueError, "colors"),
        (lambda: sb(frag, colors.float()), TypeError, "colors.*dtype"),
        (lambda: sb(frag._replace(depth=frag.depth.float()), colors), TypeError, "depth.*dtype"),
        (lambda: sb(frag._replace(depth=frag.depth[..., :2]), colors), ValueError, "depth.*shape"),
        (lambda: sb(frag, colors, background=torch.rand(4, **D64)), ValueError, "background"),
        (lambda: ops.softras_blend_forward(alpha, frag.depth, frag.face_idx.int(), colors, bg, 1e-4, 1.0, 100.0, 1e-3),
         TypeError, "face_idx"),
        (lambda: ops.softras_blend_forward(alpha, frag.depth, frag.face_idx[..., :2], colors, bg, 1e-4, 1.0, 100.0,
                                           1e-3), ValueError, "face_idx"),
        (lambda: ops.softras_blend_forward(alpha, frag.depth, frag.face_idx, colors, bg, 0.0, 1.0, 100.0, 1e-3),
         ValueError, "gamma"),
        (lambda: ops.softras_blend_forward(alpha, frag.depth, frag.face_idx, colors, bg, 1e-4, 2.0, 1.0, 1e-3),
         ValueError, "znear"),
        (lambda: ops.softras_blend_backward(bg, bg, alpha, frag.depth, frag.face_idx, colors, bg, 1e-4, 1.0, 100.0,
                                            1e-3), ValueError, "grad_silhouette"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_cases())))
def test_bad_inputs(case):
    call, exc, match = _bad_cases()[case]
    with pytest.raises(exc, match=match):
        call()


# ------------------------------------------------------------------------------------------------
# Registration


def _opcheck_cases():
    alpha, colors, bg = (t.requires_grad_() for t in _layers(2, 3, 4, 5, 3))
    frag, prob, colors2, bg2 = _softras_inputs(2, 3, 4, 5, 2)
    prob.requires_grad_()
    depth = frag.depth.requires_grad_()
    gi, gm = torch.rand(2, 3, 3, 4, **D64), torch.rand(2, 1, 3, 4, **D64)
    params = (1e-2, 1.0, 100.0, 1e-3)
    return [
        (ops.composite_layers_forward.default, (alpha, colors, bg)),
        (ops.composite_layers_forward.default, (alpha[:, :, :, :0], colors[:, :, :, :0], bg)),
        (ops.composite_layers_backward.default, (gi, gm, alpha.detach(), colors.detach(), bg.detach())),
        (ops.softras_blend_forward.default, (prob, depth, frag.face_idx, colors2, bg2, *params)),
        (ops.softras_blend_backward.default, (gi[:, :2], gm, prob.detach(), depth.detach(), frag.face_idx,
                                              colors2, bg2, *params)),
    ]


@pytest.mark.parametrize("case", range(5))
def test_opcheck(case):
    op, args = _opcheck_cases()[case]
    torch.library.opcheck(op, args)


def test_torch_compile_fullgraph():
    torch._dynamo.reset()

    def render(dist, depth, face_idx, colors, bg):
        frag = Fragments(face_idx, dist, depth)
        image, mask = invrender.composite_layers(invrender.layer_alpha(frag, 1e-2), colors, bg)
        soft, sil = invrender.softras_blend(frag, colors, sigma=1e-2, gamma=1e-2, background=bg)
        return image.mean() + mask.mean() + soft.mean() + sil.mean()

    frag = _fragments(2, 5, 6, 4)
    _, colors, _ = _layers(2, 5, 6, 4, 3)
    inputs = [frag.dist.clone().requires_grad_(), frag.depth.clone().requires_grad_(), frag.face_idx,
              colors.requires_grad_(), torch.rand(3, **D64, requires_grad=True)]
    compiled = torch.compile(render, fullgraph=True, backend="aot_eager")
    out = compiled(*inputs)
    expected = render(*inputs)
    assert torch.allclose(out, expected, rtol=1e-12)
    diff = [inputs[i] for i in (0, 1, 3, 4)]
    for x, y in zip(torch.autograd.grad(out, diff), torch.autograd.grad(expected, diff)):
        assert torch.allclose(x, y, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# CUDA (skipped without a GPU; never counted as passed)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(dtype):
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    alpha, colors, bg = _layers(3, 17, 13, 40, 3, exact=True)
    frag, prob, _, _ = _softras_inputs(3, 17, 13, 40, 3)
    args = [t.to(dtype) for t in (alpha, colors, bg, prob, frag.depth)]
    outs, grads = [], []
    for device in ("cpu", "cuda"):
        inputs = [t.to(device).requires_grad_() for t in args]
        out = tuple(invrender.composite_layers(*inputs[:3])) + _softras_op(inputs[3], inputs[4],
                                                                              frag.face_idx.to(device), *inputs[1:3])
        outs.append([o.cpu() for o in out])
        w = [x.to(device) for x in _weights(out)]
        grads.append([x.cpu() for x in torch.autograd.grad(_loss(out, w), inputs)])
    for x, y in zip(*outs):
        assert torch.allclose(y, x, rtol=tol, atol=tol)
    for x, y in zip(*grads):
        assert torch.allclose(y, x, rtol=10 * tol, atol=10 * tol)


@pytest.mark.cuda
def test_cuda_gradcheck_and_determinism():
    alpha, colors, bg = _layers(2, 3, 2, 4, 2)
    inputs = [t.cuda().requires_grad_() for t in (alpha, colors, bg)]
    assert gradcheck(lambda a, c, b: tuple(invrender.composite_layers(a, c, b)), inputs)
    frag, prob, colors, bg = _softras_inputs(2, 3, 2, 4, 2)
    inputs = [t.cuda().requires_grad_() for t in (prob, frag.depth, colors, bg)]
    face_idx = frag.face_idx.cuda()
    f = lambda p, d, c, b: _softras_op(p, d, face_idx, c, b, gamma=0.5, znear=0.5, zfar=3.0)  # noqa: E731
    assert gradcheck(f, inputs)
    # One thread per pixel, no atomics: bit-identical gradients run to run.
    out = f(*inputs)
    w = [x.cuda() for x in _weights(out)]
    g1 = torch.autograd.grad(_loss(f(*inputs), w), inputs)
    g2 = torch.autograd.grad(_loss(f(*inputs), w), inputs)
    assert all(torch.equal(x, y) for x, y in zip(g1, g2))
