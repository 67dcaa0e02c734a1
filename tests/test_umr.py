"""UMR (Li et al. 2020): template symmetry, the reconstruction network, eqs. 1-3 and 5-6 on hand-computed and
dense cases, the EM template update, the camera multiplex, keypoint transfer and pose alignment."""

import json
import math
import os

import pytest
import torch
import yaml

import invrender
from invrender.errors import ConfigError
from invrender.models import umr as U

DT = torch.float64


def tiny_model(**kw):
    cfg = dict(image_size=32, num_parts=3, feature_dim=16, template_level=1, num_cameras=4, uv_size=(8, 16),
               flow_channels=16, layers=8, sigma=1e-4, gan_weight=0.0, part_pixels=16)
    cfg.update(kw)
    torch.manual_seed(0)
    return U.UmrModel(U.UmrConfig(**cfg))


# ------------------------------------------------------------------------------------------------
# template and network


def test_symmetric_template_pairs_every_vertex_with_its_mirror_image():
    verts, faces, mirror = U.symmetric_template(3)
    assert verts.shape == (642, 3) and faces.shape == (1280, 3)
    assert torch.equal(mirror[mirror], torch.arange(642))               # an involution
    torch.testing.assert_close(verts[mirror], verts * torch.tensor([-1.0, 1.0, 1.0]), atol=1e-6, rtol=0)
    on_plane = verts[:, 0].abs() < 1e-6
    assert torch.equal(mirror[on_plane], torch.arange(642)[on_plane]) and on_plane.sum() > 0


def test_predictions_have_their_shapes_and_are_mirror_symmetric():
    model = tiny_model()
    out = model.predict(torch.rand(3, 3, 32, 32))
    V = model.template.shape[0]
    assert out["verts"].shape == (3, V, 3) and out["features"].shape == (3, 16)
    assert out["scale"].shape == (3, 4) and out["translation"].shape == (3, 4, 2)
    assert out["quaternion"].shape == (3, 4, 4) and out["flow"].shape == (3, 8, 16, 2)
    torch.testing.assert_close(out["prob"].sum(1), torch.ones(3))
    assert out["flow"].abs().max() <= 1
    # Large random offsets, mirrored: the mesh is symmetric in x exactly.
    with torch.no_grad():
        model.shape_head.weight.normal_(std=0.3)
    v = model.predict(torch.rand(2, 3, 32, 32))["verts"]
    torch.testing.assert_close(v[:, model.mirror], v * torch.tensor([-1.0, 1.0, 1.0]), atol=1e-6, rtol=0)
    assert v[:, model.template[:, 0].abs() < 1e-6, 0].abs().max() < 1e-6


def test_texel_faces_put_every_texel_on_the_template_where_phi_says():
    verts, faces, _ = U.symmetric_template(2, 1.0)
    face, bary = U.texel_faces((16, 32), verts, faces)
    assert face.shape == (512,) and bary.shape == (512, 3) and torch.all(bary >= 0)
    torch.testing.assert_close(bary.sum(-1), torch.ones(512))
    points = (bary[:, :, None] * verts[faces[face]]).sum(1)
    u = (torch.arange(32) + 0.5) / 32
    v = (torch.arange(16) + 0.5) / 16
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    torch.testing.assert_close(U._vertex_uvs(points), torch.stack([uu, vv], -1).reshape(-1, 2), atol=1e-5, rtol=0)


def test_projected_flow_is_the_spheres_view_and_sees_the_front_half():
    model = tiny_model(template_level=2)
    B, hu, wu = 2, 8, 16
    verts = model.template.expand(B, -1, -1)
    one, q = torch.ones(B), torch.tensor([1.0, 0, 0, 0]).expand(B, 4)
    _, _, fragments = model.render(verts, one, torch.zeros(B, 2), q, torch.zeros(B, 1, hu, wu))
    flow, seen = model.projected_flow(verts, one, torch.zeros(B, 2), q, fragments)
    # flat faces sit inside the sphere: within the chord's sagitta of the sphere's own view
    torch.testing.assert_close(flow[0], U.sphere_view_flow((hu, wu), model.config.template_radius), atol=0.03, rtol=0)
    u = (torch.arange(wu) + 0.5) / wu * 2 * math.pi - math.pi
    v = (torch.arange(hu) + 0.5) / hu * math.pi
    th, ph = torch.meshgrid(v, u, indexing="ij")
    z = torch.sin(th) * torch.cos(ph)                 # toward the camera (depth 2 - z)
    assert seen[0, 0][z > 0.2].min() == 1 and seen[0, 0][z < -0.2].max() == 0
    shifted, _ = model.projected_flow(verts, one, torch.tensor([[0.25, 0.0]] * B), q)
    torch.testing.assert_close(shifted[..., 0] - flow[..., 0], torch.full((B, hu, wu), 0.25), atol=1e-5, rtol=0)


def test_the_texture_flow_starts_as_the_spheres_own_view():
    # Each texel's sphere point, projected by the identity camera (x right, y up; grid y down), is where the
    # untrained flow reads the image: the texel of the front-facing point (u = 0.5, v = 0.5) reads the centre.
    model = tiny_model()
    flow = model.eval().predict(torch.rand(1, 3, 32, 32))["flow"][0]
    torch.testing.assert_close(flow, U.sphere_view_flow((8, 16), model.config.template_radius), atol=1e-5, rtol=0)
    verts = U.symmetric_template(2, 0.75)[0]
    uv = U._vertex_uvs(verts)
    i = (uv[:, 1] * 8).floor().long().clamp(0, 7)
    j = (uv[:, 0] * 16).floor().long().clamp(0, 15)
    near = (flow[i, j] - verts[:, :2] * torch.tensor([1.0, -1.0])).norm(dim=-1)
    assert near.median() < 0.15  # within the texel's extent on the sphere


def test_camera_hypotheses_start_spread_over_azimuths():
    model = tiny_model()
    q = model.eval().predict(torch.rand(1, 3, 32, 32))["quaternion"][0]
    R = invrender.cameras.quaternion_to_matrix(q)
    from invrender.models.unicorn import view_angles

    az, el = view_angles(R.double())
    spread = torch.remainder(az + 1.0, 360).sort().values - 1.0   # the four quarter turns, in some order
    torch.testing.assert_close(spread, torch.tensor([0.0, 90.0, 180.0, 270.0], dtype=DT), atol=1.0, rtol=0)
    assert el.abs().max() < 1.0


def _turn(degrees, axis):
    """The right-handed rotation matrix of ``degrees`` about coordinate ``axis`` (closed form)."""
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    m = torch.eye(3, dtype=DT)
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    return m


def test_bounded_cameras_stay_within_their_azimuth_elevation_and_roll_ranges():
    model = tiny_model(camera_bounds=(45.0, 10.0, 5.0), camera_elevation=30.0)
    with torch.no_grad():                                    # drive every offset to its bound
        model.camera_head.bias.view(4, 8)[:, 3:6] = torch.tensor([50.0, -50.0, 50.0])
    out = model.predict(torch.rand(2, 3, 32, 32))
    R = invrender.cameras.quaternion_to_matrix(out["quaternion"].double())
    for k in range(4):
        want = _turn(5.0, 2) @ _turn(20.0, 0) @ _turn(90.0 * k + 45.0, 1)
        torch.testing.assert_close(R[:, k], want.expand(2, 3, 3), atol=1e-5, rtol=0)
    start = tiny_model(camera_bounds=(45.0, 10.0, 5.0), camera_elevation=30.0).predict(torch.rand(2, 3, 32, 32))
    torch.testing.assert_close(start["quaternion"], U.base_quaternions(4, 30.0).expand(2, 4, 4), atol=1e-3, rtol=0)


def test_shared_offsets_make_the_hypotheses_turned_copies_and_the_m_step_can_reset_them():
    model = tiny_model(camera_bounds=(45.0, 10.0, 5.0), camera_shared_offsets=True, reset_multiplex=True)
    with torch.no_grad():
        model.camera_head.weight.normal_(std=0.1)
    batch = _batch(model, B=2, parts=False)
    out = model.predict(batch["image"])
    R = invrender.cameras.quaternion_to_matrix(out["quaternion"].double())
    for k in range(4):
        torch.testing.assert_close(R[:, k], R[:, 0] @ _turn(90.0 * k, 1), atol=1e-5, rtol=0)
    assert out["prob"].max() > 0.3                                             # not uniform before
    model.m_step([batch])
    torch.testing.assert_close(model.predict(batch["image"])["prob"], torch.full((2, 4), 0.25))


def test_bad_configs_raise_naming_the_field():
    for field, value in (("uv_size", (10, 16)), ("num_cameras", 0), ("sigma", -1.0), ("mask_weight", -1.0),
                         ("select_fraction", 0.0), ("template_level", 9), ("rigid_steps", -1),
                         ("shape_from_best", 1), ("deform_start_round", 1.5), ("camera_usage_weight", -0.1),
                         ("camera_bounds", (10.0, 10.0)), ("camera_elevation", 100.0),
                         ("semantic_trains_probability", "yes"), ("camera_shared_offsets", True),
                         ("semantic_uv_source", "pixels"), ("regularizer_reduction", "max"),
                         ("camera_selection", "best"), ("camera_selection_round", -1),
                         ("camera_choice_weight", -1.0), ("m_step_align_hypotheses", True),
                         ("mask_trains_camera", 0)):
        with pytest.raises(ConfigError, match=field):
            U.UmrConfig(**{field: value})
    with pytest.raises(ValueError, match="images"):
        tiny_model().predict(torch.rand(2, 3, 16, 16))


# ------------------------------------------------------------------------------------------------
# semantic consistency (eqs. 1-3)


def _identity_flow(hu, wu):
    """A texture flow that maps texel (i, j) to pixel (i, j) of an image of the UV map's size."""
    x = (2 * torch.arange(wu, dtype=DT) + 1) / wu - 1
    y = (2 * torch.arange(hu, dtype=DT) + 1) / hu - 1
    return torch.stack(torch.meshgrid(y, x, indexing="ij")[::-1], -1)[None]


def test_semantic_uv_maps_and_the_canonical_map_of_a_constructed_case():
    # Three instances whose part maps are already in UV layout (identity flow): the canonical map is the mean of
    # the selected ones.
    parts = torch.zeros(3, 2, 4, 6, dtype=DT)
    parts[0, 0, :, :3] = 1
    parts[1, 0, :, :2] = 1
    parts[2, 1] = 1                       # an outlier: everything is part 1
    uv = U.semantic_uv_maps(parts, _identity_flow(4, 6).expand(3, -1, -1, -1))
    torch.testing.assert_close(uv, parts)
    canonical = U.canonical_uv_map(uv, torch.tensor([True, True, False]))
    want = torch.zeros(2, 4, 6, dtype=DT)
    want[0, :, :2] = 1
    want[0, :, 2] = 0.5
    torch.testing.assert_close(canonical, want)
    torch.testing.assert_close(U.canonical_uv_map(uv), uv.mean(0))
    with pytest.raises(ValueError, match="selected"):
        U.canonical_uv_map(uv, torch.zeros(3, dtype=torch.bool))


def test_eq2_renders_the_canonical_maps_most_probable_part_per_texel():
    model = tiny_model(num_parts=3)
    canonical = torch.zeros(3, 8, 16)
    canonical[0, :, :8] = 0.55
    canonical[1, :, :8] = 0.39
    canonical[2, :, 8:] = 0.1           # too faint: no part
    model.canonical_parts.copy_(canonical)
    hot = model.canonical_texture()
    assert torch.equal(hot[0, :, :8], torch.ones(8, 8)) and hot[1:, :, :8].sum() == 0 and hot[:, :, 8:].sum() == 0


def test_part_probability_loss_by_hand():
    p = torch.zeros(1, 2, 2, 2, dtype=DT)
    r = torch.zeros(1, 2, 2, 2, dtype=DT)
    p[0, 0, 0, 0] = 1.0
    r[0, 0, 0, 0] = 0.5
    r[0, 1, 1, 1] = 0.2
    torch.testing.assert_close(U.part_probability_loss(r, p), torch.tensor([(0.25 + 0.04) / 8], dtype=DT))


def test_vertex_part_loss_by_hand():
    # 4x4 image; part 1 (label 2) covers the single pixel (row 0, col 3), centred at NDC (0.75, 0.75). Two template
    # vertices of part 1 at (0.75, 0.75) and (0.75, 0.25): vertex -> pixel mean (0 + 0.25) / 2, pixel -> vertex 0.
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    labels[0, 0, 3] = 2
    points = torch.tensor([[[0.75, 0.75], [0.75, 0.25], [-0.9, -0.9]]], dtype=DT)
    vertex_part = torch.tensor([1, 1, 0])
    got = U.vertex_part_loss(points, vertex_part, labels, num_parts=2)
    torch.testing.assert_close(got, torch.tensor([0.25 / 2], dtype=DT))  # part 0 has no pixels: adds 0
    # Part 0 gets pixel (row 3, col 0) at (-0.75, -0.75): its vertex is 0.15 away in x and y.
    labels[0, 3, 0] = 1
    got = U.vertex_part_loss(points, vertex_part, labels, num_parts=2)
    torch.testing.assert_close(got, torch.tensor([0.25 / 2 + 2 * 0.045], dtype=DT))
    # Gradient pulls the far vertex toward the part.
    pts = points.clone().requires_grad_()
    U.vertex_part_loss(pts, vertex_part, labels, num_parts=2).sum().backward()
    assert pts.grad[0, 1, 1] < 0 and pts.grad[0, 2, 0] < 0


# ------------------------------------------------------------------------------------------------
# texture cycle (eqs. 5-6) against a dense face-by-pixel computation


def test_texture_cycle_matches_a_dense_probability_map_on_a_tiny_case():
    model = tiny_model(image_size=32, template_level=1).double()
    out = model.predict(torch.rand(2, 3, 32, 32, dtype=DT))
    cams = (out["scale"][:, 0], out["translation"][:, 0], out["quaternion"][:, 0])
    _, _, fr = model.render(out["verts"], *cams, torch.zeros(2, 1, 8, 16, dtype=DT))
    F_ = model.faces.shape[0]
    alpha = invrender.layer_alpha(fr, model.config.sigma, kind="sigmoid")
    centroids, total = invrender.face_pixel_centroids(fr, alpha, F_)
    # Dense W (B, F, H W): each face's probability at each pixel.
    B, H, W, L = fr.face_idx.shape
    dense = torch.zeros(B, F_, H * W, dtype=DT)
    for b in range(B):
        for i in range(H):
            for j in range(W):
                for layer in range(L):
                    f = int(fr.face_idx[b, i, j, layer])
                    if f >= 0:
                        dense[b, f, i * W + j] += alpha[b, i, j, layer]
    xs = (2 * torch.arange(W, dtype=DT) + 1 - W) / W
    ys = (H - 2 * torch.arange(H, dtype=DT) - 1) / H
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], -1).reshape(-1, 2)
    dense_total = dense.sum(-1)
    dense_c = (dense @ grid) / dense_total.clamp_min(1e-300)[..., None]
    seen = dense_total > 1e-6
    assert seen.any(1).all()
    torch.testing.assert_close(centroids[seen], dense_c[seen])
    flow_at = model.sample_flow(out["flow"], model.cycle_uvs.expand(2, -1, -1, -1))
    want = ((flow_at.mean(2) - dense_c).pow(2).sum(-1) * seen).sum(1) / seen.sum(1)
    torch.testing.assert_close(U.texture_cycle_loss(flow_at, centroids, total), want)


def test_texture_dt_barrier_is_low_inside_and_high_outside():
    from scipy import ndimage

    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1
    dist = U.mask_distance(mask)
    m = mask[0, 0].bool().numpy()
    signed = ndimage.distance_transform_edt(~m) - ndimage.distance_transform_edt(m)
    torch.testing.assert_close(dist[0, 0], torch.sigmoid(torch.from_numpy(50 * signed / 8)).float())
    assert dist[0, 0, 3, 3] < 1e-3 and dist[0, 0, 0, 0] > 0.999
    inside = torch.zeros(1, 2, 2, 2)              # the image centre
    outside = torch.full((1, 2, 2, 2), -0.95)     # the top-left corner
    assert U.texture_dt_loss(inside, dist) < 1e-3 and U.texture_dt_loss(outside, dist) > 0.99
    assert torch.equal(U.mask_distance(torch.zeros(1, 1, 4, 4)), torch.zeros(1, 1, 4, 4))
    # flat inside: exactly 0 on the silhouette, the same outside growth, no pull toward the centre
    flat = U.mask_distance(mask, flat_inside=True)[0, 0]
    assert torch.equal(flat[mask[0, 0].bool()], torch.zeros(16))
    want = 2 * torch.sigmoid(torch.from_numpy(50 * ndimage.distance_transform_edt(~m) / 8)).float() - 1
    torch.testing.assert_close(flat, want)
    assert flat[0, 0] > 0.99 and dist[0, 0, 2, 2] > dist[0, 0, 3, 3]          # the signed one falls inward


def test_camera_entropy():
    torch.testing.assert_close(U.camera_entropy(torch.full((1, 4), 0.25)), torch.tensor([math.log(4)]))
    torch.testing.assert_close(U.camera_entropy(torch.tensor([[1.0, 0.0]])), torch.tensor([0.0]))


# ------------------------------------------------------------------------------------------------
# training step, EM, multiplex


def _batch(model, B=4, parts=True):
    g = torch.Generator().manual_seed(1)
    S, P = model.config.image_size, model.config.num_parts
    mask = torch.zeros(B, 1, S, S)
    mask[..., S // 4:3 * S // 4, S // 4:3 * S // 4] = 1
    out = {"image": torch.rand(B, 3, S, S, generator=g) * mask, "mask": mask}
    if parts:
        p = torch.zeros(B, P, S, S)
        for k in range(P):
            p[:, k, S // 4 + k * S // (2 * P):S // 4 + (k + 1) * S // (2 * P), S // 4:3 * S // 4] = 1
        out["parts"] = p * mask
    return out


def test_semantic_losses_start_after_the_first_m_step_and_the_step_lowers_the_loss():
    model = tiny_model()
    opt = model.configure_optimizers()
    batch = _batch(model)
    first = model.train_step(batch, opt)
    assert "part_probability" not in first and "part_vertex" not in first  # first E-step: no canonical map
    stats = model.m_step([batch])
    assert int(model.em_round) == 1 and stats["canonical_selected"] == 2.0  # half of 4
    assert (model.vertex_part >= 0).any() and model.canonical_parts.abs().sum() > 0
    losses = [float(model.train_step(batch, opt, step=k)["total"]) for k in range(12)]
    logs = model.train_step(batch, opt, step=12)
    assert {"part_probability", "part_vertex", "texture_cycle", "mask"} <= set(logs)
    assert all(math.isfinite(float(v)) for v in logs.values())
    assert min(losses[-3:]) < losses[0]


def test_m_step_builds_the_canonical_map_from_projections_over_the_samples_that_see_each_texel():
    model = tiny_model(semantic_uv_source="projection")
    batch = _batch(model)
    model.m_step([batch], update_template=False)
    canonical = model.canonical_parts
    model.eval()                                       # as the M-step reads the batch
    assert float(canonical.max()) <= 1 + 1e-6 and float(canonical.sum()) > 0
    out = model.predict(batch["image"])
    camera = model.best_camera(out)
    _, _, fragments = model.render(out["verts"], *camera, torch.zeros(4, 1, 8, 16))
    flow, seen = model.projected_flow(out["verts"], *camera, fragments)
    maps = U.semantic_uv_maps(batch["parts"], flow) * seen
    never = seen.sum(0)[0] == 0
    assert never.any() and canonical[:, never].abs().max() == 0             # unseen texels stay empty
    # half of 4 samples selected: the canonical map is their seen-weighted mean, so it is one of these means
    pairs = [(i, j) for i in range(4) for j in range(i + 1, 4)]
    means = [(maps[i] + maps[j]) / (seen[i] + seen[j]).clamp_min(1) for i, j in pairs]
    assert any(torch.allclose(canonical, m, atol=1e-5) for m in means)


def test_recentered_m_step_keeps_every_prediction_in_place():
    model = tiny_model(recenter_decoder=True)
    with torch.no_grad():
        model.shape_head.weight.normal_(std=0.02)
        model.shape_head.bias.normal_(std=0.05)
    batch = _batch(model, parts=False)
    model.eval()
    before_template = model.template.clone()
    before = model.predict(batch["image"])["verts"]
    model.m_step([batch])
    after = model.predict(batch["image"])["verts"]
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)
    assert (model.template - before_template).abs().max() > 1e-3            # the template did move


def test_m_step_moves_the_template_by_the_decoded_mean_code():
    model = tiny_model()
    with torch.no_grad():
        model.shape_head.weight.zero_()
        model.shape_head.bias.copy_(torch.tensor([0.1, 0.0, 0.0] * (model.shape_head.bias.numel() // 3)))
    before = model.template.clone()
    model.m_step([_batch(model, parts=False)])
    moved = model.template - before
    # +0.1 in x on the x >= 0 side, mirrored to -0.1 on the other, 0 on the plane.
    torch.testing.assert_close(moved[:, 0], 0.1 * model.delta_sign[:, 0])
    assert moved[:, 1:].abs().max() == 0 and int(model.em_round) == 1
    assert model.canonical_parts.abs().sum() == 0  # no part maps: the canonical map is untouched


def test_fit_template_recovers_a_flattened_template_from_its_silhouettes():
    model = tiny_model(template_level=2, template_fit_lr=2e-2)
    N = 6
    target = model.template * torch.tensor([1.0, 0.4, 1.0])          # mirror symmetric, a third as tall
    az = torch.arange(N) * (2 * math.pi / N)
    quat = U._quaternion_multiply(U.axis_angle_quaternion(torch.full((N,), 0.5), 0), U.axis_angle_quaternion(az, 1))
    scale, trans = torch.ones(N), torch.zeros(N, 2)
    with torch.no_grad():
        _, masks, _ = model.render(target.expand(N, -1, -1), scale, trans, quat, torch.zeros(N, 1, 8, 16))
        masks = (masks > 0.5).float()
    start = invrender.metrics.mask_iou(model.render(model.template.expand(N, -1, -1), scale, trans, quat,
                                                    torch.zeros(N, 1, 8, 16))[1], masks).mean()
    verts, iou = model.fit_template(scale, trans, quat, masks, steps=150)
    assert float(start) < 0.75 and iou > 0.9
    def chamfer(v):                                                         # to the target's surface
        return float(invrender.metrics.chamfer_l1_meshes([v], [model.faces], [target], [model.faces], 2000,
                                                         generator=torch.Generator().manual_seed(0))[0])

    assert chamfer(verts) < 0.4 * chamfer(model.template), (chamfer(verts), chamfer(model.template))
    torch.testing.assert_close(verts[model.mirror] * torch.tensor([-1.0, 1.0, 1.0]), verts)   # still symmetric


def test_m_step_fits_the_template_to_the_best_explained_samples():
    model = tiny_model(template_update="fit", template_fit_steps=5, recenter_decoder=True)
    batch = _batch(model, B=4, parts=False)
    before, bias = model.template.clone(), model.shape_head.bias.detach().clone()
    stats = model.m_step([batch])
    assert stats["template_selected"] == 2.0 and 0 < stats["template_fit_iou"] <= 1
    assert (model.template - before).abs().max() > 1e-3
    torch.testing.assert_close(model.shape_head.bias, bias)              # the decoder is left alone
    torch.testing.assert_close(model.template[model.mirror] * torch.tensor([-1.0, 1.0, 1.0]), model.template)
    with pytest.raises(ConfigError, match="template_update"):
        U.UmrConfig(template_update="mean")


def test_the_multiplex_weights_each_hypothesis_by_its_probability():
    model = tiny_model()
    batch = _batch(model, B=2, parts=False)
    with torch.no_grad():  # hypothesis 2 certain
        model.camera_head.bias.view(4, 8)[:, 7] = torch.tensor([-20.0, -20.0, 20.0, -20.0])
    out = model.predict(batch["image"])
    assert torch.all(out["prob"][:, 2] > 0.999)
    rec = U.UmrTask().reconstruct(model, batch["image"])
    torch.testing.assert_close(rec["quaternion"], out["quaternion"][:, 2])
    # The loss equals that hypothesis' own loss.
    loss, logs, _ = model.losses(batch["image"], batch["mask"])
    _, sil, _ = model.render(out["verts"], out["scale"][:, 2], out["translation"][:, 2], out["quaternion"][:, 2],
                             model.texture_map(batch["image"], out["flow"]))
    own = 1 - invrender.metrics.mask_iou(sil, batch["mask"])
    torch.testing.assert_close(logs["mask"], own.mean(), atol=1e-4, rtol=1e-4)


def test_camera_usage_is_zero_for_even_use_and_largest_when_one_hypothesis_takes_all():
    assert float(U.camera_usage(torch.eye(4))) == 0.0                          # each image its own hypothesis
    assert float(U.camera_usage(torch.full((3, 4), 0.25))) == 0.0
    one = torch.tensor([[0.0, 1.0, 0.0, 0.0]]).expand(5, 4)
    torch.testing.assert_close(U.camera_usage(one), torch.tensor(2 * 3 / 4))
    torch.testing.assert_close(U.camera_usage(torch.tensor([[0.7, 0.3], [0.5, 0.5]])), torch.tensor(0.2))


def test_rigid_prediction_gives_every_image_the_batchs_decoded_mean_code():
    model = tiny_model()
    with torch.no_grad():
        model.shape_head.weight.normal_(std=0.05)
    images = torch.rand(3, 3, 32, 32)
    rigid = model.predict(images, rigid=True)
    free = model.predict(images)
    mean_code = free["features"].mean(0, keepdim=True)
    expected = model.template + model.mirror_offsets(model.shape_head(mean_code).view(1, -1, 3))[0]
    for b in range(3):
        torch.testing.assert_close(rigid["verts"][b], expected)
    assert not torch.allclose(free["verts"][0], free["verts"][1])              # the instance code acts otherwise
    torch.testing.assert_close(rigid["quaternion"], free["quaternion"])        # cameras and flow unchanged
    torch.testing.assert_close(rigid["flow"], free["flow"])
    model.zero_grad()
    rigid["verts"].sum().backward()                                            # the shape trains the decoder only
    assert model.shape_head.weight.grad.abs().sum() > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.encoder.parameters())


def _mask_only(**kw):
    zero = {k: 0.0 for k in ("laplacian_weight", "flatten_weight", "deform_weight", "texture_weight",
                             "texture_dt_weight", "texture_cycle_weight", "camera_entropy_weight")}
    return tiny_model(**{**zero, **kw})


def test_shape_from_best_sends_mesh_gradients_through_the_most_probable_hypothesis_only():
    model = _mask_only(shape_from_best=True)
    batch = _batch(model, B=2, parts=False)
    with torch.no_grad():                                    # hypotheses far apart, probabilities distinct
        model.camera_head.bias.view(4, 8)[:, 7] = torch.tensor([0.5, 1.5, -0.5, 0.0])
        model.shape_head.bias.normal_(std=0.05)
    loss, _, _ = model.losses(batch["image"], batch["mask"])
    got = torch.autograd.grad(loss, model.shape_head.bias)[0]
    # Oracle: the probability-weighted mask loss of hypothesis 1 alone, cameras and probabilities held fixed.
    out = model.predict(batch["image"])
    assert torch.all(out["prob"].argmax(1) == 1)
    cam = [t.detach() for t in (out["scale"][:, 1], out["translation"][:, 1], out["quaternion"][:, 1])]
    _, sil, _ = model.render(out["verts"], *cam, model.texture_map(batch["image"], out["flow"]).detach())
    own = (out["prob"][:, 1].detach() * model.config.mask_weight
           * (1 - invrender.metrics.mask_iou(sil, batch["mask"]))).mean()
    want = torch.autograd.grad(own, model.shape_head.bias)[0]
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-4)
    # Without the option every hypothesis moves the mesh.
    plain = _mask_only()
    plain.load_state_dict(model.state_dict())
    loss, _, _ = plain.losses(batch["image"], batch["mask"])
    assert not torch.allclose(torch.autograd.grad(loss, plain.shape_head.bias)[0], want, atol=1e-6, rtol=1e-3)


def test_min_loss_selection_trains_each_images_lowest_loss_hypothesis_and_teaches_the_probabilities():
    model = _mask_only(camera_selection="min_loss")
    batch = _batch(model, B=3, parts=False)
    S = model.config.image_size
    for b, half in enumerate((4, 9, 15)):                    # silhouettes of three sizes
        batch["mask"][b] = 0
        batch["mask"][b, :, S // 2 - half:S // 2 + half, S // 2 - half:S // 2 + half] = 1
    with torch.no_grad():                                    # hypotheses with distinct scales and offsets
        model.camera_head.weight.normal_(std=0.05)
        model.camera_head.bias.view(4, 8)[:, 0] = torch.tensor([0.0, -1.0, 0.5, -0.5])
    loss, logs, out = model.losses(batch["image"], batch["mask"])
    # Oracle: each hypothesis rendered on its own; the choice is the lowest mask loss.
    K = 4
    per = torch.stack([1 - invrender.metrics.mask_iou(
        model.render(out["verts"], out["scale"][:, k], out["translation"][:, k], out["quaternion"][:, k],
                     out["texture"])[1], batch["mask"]) for k in range(K)], 1).detach()
    choice = per.argmin(1)
    assert len(set(choice.tolist())) > 1                     # the images choose differently
    g_scale, g_prob = torch.autograd.grad(loss, [out["scale"], out["prob"]])
    chosen = torch.nn.functional.one_hot(choice, K).bool()
    assert torch.all(g_scale[~chosen] == 0) and torch.all(g_scale[chosen] != 0)
    want = model.config.mask_weight * per[chosen].mean() - out["prob"][chosen].log().mean()
    torch.testing.assert_close(loss.detach(), want.detach(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(g_prob, -chosen.float() / out["prob"].detach() / 3)   # d(cross-entropy)/dp
    torch.testing.assert_close(logs["camera_choice_agreement"], (out["prob"].argmax(1) == choice).float().mean())
    # Before camera_selection_round the multiplex is the probability-weighted one.
    later = _mask_only(camera_selection="min_loss", camera_selection_round=1)
    later.load_state_dict(model.state_dict())
    assert not later.selects_by_loss() and model.selects_by_loss()
    _, logs, _ = later.losses(batch["image"], batch["mask"])
    assert "camera_choice" not in logs


def test_balanced_choice_is_the_argmin_of_the_loss_plus_a_log_usage_prior():
    score = torch.tensor([[0.30, 0.35, 0.50, 0.90],
                          [0.10, 0.60, 0.20, 0.40],
                          [0.50, 0.52, 0.10, 0.11]], dtype=DT)
    even = torch.full((4,), 0.25)
    assert U.balanced_choice(score, even, 0.5).tolist() == [0, 0, 2]            # even usage: no adjustment
    skewed = torch.tensor([0.97, 0.01, 0.01, 0.01])
    assert U.balanced_choice(score, skewed, 0.0).tolist() == [0, 0, 2]          # weight 0: the argmin
    # Oracle by hand: hypothesis 0 pays 0.1 * log(3.88) = 0.136, the others gain 0.1 * log(0.04) = -0.322.
    adjusted = score + 0.1 * torch.log(skewed.double() * 4)
    assert U.balanced_choice(score, skewed, 0.1).tolist() == adjusted.argmin(1).tolist() == [1, 2, 2]
    dead = torch.tensor([0.5, 0.5, 0.0, 0.0])                                   # a share of 0 stays finite
    assert U.balanced_choice(score, dead, 0.1).tolist() == [2, 2, 2]


def test_balance_keeps_a_hypothesis_that_stopped_winning_in_use():
    model = _mask_only(camera_selection="min_loss", camera_balance_weight=0.2)
    batch = _batch(model, B=4, parts=False)
    with torch.no_grad():
        model.camera_head.weight.zero_()
        model.camera_head.bias.view(4, 8)[:, 0] = torch.tensor([0.0, -1.0, -1.0, -1.0])   # hypothesis 0 fits best
    assert "choice_usage" in model.state_dict()
    model.choice_usage.copy_(torch.tensor([0.97, 0.01, 0.01, 0.01]))
    loss, logs, out = model.losses(batch["image"], batch["mask"])
    # The others fit worse (mask loss 0.59 against 0.41) but win the images back, and the running shares move to them.
    torch.testing.assert_close(model.choice_usage[0], torch.tensor(0.97 * 0.99))
    torch.testing.assert_close(model.choice_usage[1:].sum(), torch.tensor(0.03 * 0.99 + 0.01))
    assert float(logs["mask"]) > 0.55
    plain = _mask_only(camera_selection="min_loss")
    assert "choice_usage" not in plain.state_dict()                            # old checkpoints still load
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if k != "choice_usage"})
    _, logs, _ = plain.losses(batch["image"], batch["mask"])
    assert float(logs["camera_choice_usage"]) == 1.5 and float(logs["mask"]) < 0.45   # hypothesis 0 wins all
    # Evaluation does not move the shares.
    model.eval()
    before = model.choice_usage.clone()
    with torch.no_grad():
        model.losses(batch["image"], batch["mask"])
    assert torch.equal(model.choice_usage, before)
    with pytest.raises(ConfigError, match="camera_balance_weight"):
        U.UmrConfig(camera_balance_weight=-1.0)


@pytest.mark.parametrize("mask_trains_camera", [True, False])
def test_without_mask_trains_camera_the_mask_loss_moves_the_mesh_and_not_the_cameras(mask_trains_camera):
    model = tiny_model(mask_trains_camera=mask_trains_camera)
    batch = _batch(model)
    model.m_step([batch])                                    # the semantic losses apply from here
    assert model.semantic_active(batch["parts"])
    with torch.no_grad():
        model.camera_head.weight.normal_(std=0.05)

    def grads(mask_weight):
        model.config.mask_weight = mask_weight
        loss, _, out = model.losses(batch["image"], batch["mask"], batch["parts"],
                                    generator=torch.Generator().manual_seed(0))
        return torch.autograd.grad(loss, [out["verts"], out["scale"], out["translation"], out["quaternion"]])

    with_mask, without = grads(2.5), grads(0.0)
    assert not torch.allclose(with_mask[0], without[0])     # the mask loss trains the mesh either way
    for a, b in zip(with_mask[1:], without[1:]):
        assert b.abs().sum() > 0                             # the parts train the cameras
        assert torch.allclose(a, b, atol=1e-7) != mask_trains_camera
    with pytest.raises(ConfigError, match="mask_trains_camera"):
        U.UmrConfig(mask_trains_camera=False, texture_detach=False)


def test_aligned_canonical_map_recovers_each_samples_turn_on_a_constructed_case():
    g = torch.Generator().manual_seed(0)
    N, K, Np, Hu, Wu = 10, 4, 3, 8, 16
    truth = torch.softmax(5 * torch.randn(Np, Hu, Wu, generator=g), 0)
    turn = torch.randint(0, K, (N,), generator=g)
    # sample i shows the truth under hypothesis turn[i]; under the others the truth turned by a quarter per step
    maps = torch.stack([torch.stack([truth.roll((k - int(turn[i])) * Wu // K, dims=2) for k in range(K)])
                        for i in range(N)])
    seen = (torch.rand(N, K, 1, Hu, Wu, generator=g) > 0.3).float()
    maps = maps * seen
    maps[-2:] = torch.rand(2, K, Np, Hu, Wu, generator=g) * seen[-2:]      # two samples of noise
    canonical, hypothesis, selected = U.aligned_canonical_map(maps, seen, (0, int(turn[0])), fraction=0.8)
    assert torch.equal(hypothesis[:-2], turn[:-2])
    assert sorted(selected.tolist()) == list(range(N - 2))                  # the noise is left out
    torch.testing.assert_close(canonical, truth)
    # a wrong start converges to the turned truth, every sample's turn moved alike
    canonical, hypothesis, _ = U.aligned_canonical_map(maps, seen, (0, (int(turn[0]) + 1) % K), fraction=0.8)
    assert torch.equal(hypothesis[:-2], (turn[:-2] + 1) % K)
    torch.testing.assert_close(canonical, truth.roll(Wu // K, dims=2))
    with pytest.raises(ValueError, match="'seen'"):
        U.aligned_canonical_map(maps, seen[:, :2], (0, 0), 0.5)
    with pytest.raises(ValueError, match="'exemplar'"):
        U.aligned_canonical_map(maps, seen, (0, K), 0.5)


def test_aligned_m_step_builds_the_canonical_map_from_every_hypothesis():
    model = tiny_model(semantic_uv_source="projection", m_step_align_hypotheses=True, camera_bounds=(45, 15, 15),
                       camera_shared_offsets=True)
    batch = _batch(model)
    with torch.no_grad():
        model.camera_head.weight.normal_(std=0.05)
    stats = model.m_step([batch], update_template=False)
    assert 0 <= stats["aligned_changed"] <= 1 and stats["canonical_selected"] == 2.0
    # the same map from the maps of every hypothesis, recomputed here
    model.eval()
    out = model.predict(batch["image"])
    K, B = 4, 4
    cams = model.multiplex_cameras(out)
    verts = out["verts"].repeat_interleave(K, 0)
    _, _, fragments = model.render(verts, *cams, torch.zeros(B * K, 1, 8, 16))
    flow, seen = model.projected_flow(verts, *cams, fragments)
    maps = (U.semantic_uv_maps(batch["parts"].repeat_interleave(K, 0), flow) * seen).view(B, K, 3, 8, 16)
    texture = model.texture_map(batch["image"], out["flow"])
    image, _, _ = model.render(out["verts"], *model.best_camera(out), texture)
    exemplar = int(model._texture_error(image, batch["image"], batch["mask"]).argmin())
    want, _, _ = U.aligned_canonical_map(maps, seen.view(B, K, 1, 8, 16),
                                         (exemplar, int(out["prob"][exemplar].argmax())), 0.5)
    torch.testing.assert_close(model.canonical_parts, want)


def test_semantic_losses_train_the_probabilities_only_when_asked():
    grads = []
    for trains in (False, True):
        model = _mask_only(mask_weight=0.0, semantic_trains_probability=trains)
        batch = _batch(model, B=2)
        model.m_step([batch])                                   # a canonical map: the semantic losses apply
        loss, logs, _ = model.losses(batch["image"], batch["mask"], batch["parts"],
                                     generator=torch.Generator().manual_seed(0))
        assert float(logs["part_probability"]) > 0 and float(logs["part_vertex"]) > 0
        grads.append(torch.autograd.grad(loss, model.camera_head.bias)[0].view(4, 8)[:, 7])
    assert grads[0].abs().max() == 0 and grads[1].abs().max() > 0


def test_texture_losses_train_the_flow_only_as_in_the_code():
    for detach in (True, False):
        model = _mask_only(mask_weight=0.0, texture_weight=3.0, texture_cycle_weight=1.0, texture_detach=detach)
        batch = _batch(model, B=2, parts=False)
        with torch.no_grad():
            model.camera_head.weight.normal_(std=0.01)
        loss, _, _ = model.losses(batch["image"], batch["mask"])
        geometry = [model.shape_head.weight, model.camera_head.weight]
        flow = [model.flow_decoder[-1].weight]
        g_geo = torch.autograd.grad(loss, geometry, retain_graph=True)
        g_flow = torch.autograd.grad(loss, flow)
        assert g_flow[0].abs().sum() > 0
        assert all((g.abs().sum() == 0) == detach for g in g_geo), detach


def test_mesh_regularizers_sum_over_vertices_and_edges_as_softras_does():
    model = _mask_only(mask_weight=0.0)
    batch = _batch(model, B=2, parts=False)
    with torch.no_grad():
        model.shape_head.bias.normal_(std=0.05)
    _, logs, out = model.losses(batch["image"], batch["mask"])
    verts, faces = out["verts"], model.faces
    # SoftRas LaplacianLoss: L with rows (deg_i on the diagonal, -1 per neighbour) / deg_i; sum_i |(L v)_i|^2
    V = verts.shape[1]
    lap = torch.zeros(V, V)
    for a, b in ((0, 1), (1, 2), (2, 0)):
        lap[faces[:, a], faces[:, b]] = -1
        lap[faces[:, b], faces[:, a]] = -1
    lap[range(V), range(V)] = -lap.sum(1)
    lap = lap / lap.diagonal()[:, None]
    want = (lap @ verts).pow(2).sum((1, 2)).mean()
    torch.testing.assert_close(logs["laplacian"], want, rtol=1e-4, atol=1e-6)
    edges = {tuple(sorted((int(f[a]), int(f[b])))) for f in faces for a, b in ((0, 1), (1, 2), (2, 0))}
    torch.testing.assert_close(logs["flatten"], len(edges) * invrender.mesh.flatten_loss(verts, faces))
    mean = _mask_only(mask_weight=0.0, regularizer_reduction="mean")
    mean.load_state_dict(model.state_dict())
    _, logs_mean, _ = mean.losses(batch["image"], batch["mask"])
    torch.testing.assert_close(logs_mean["laplacian"] * V, logs["laplacian"])


def test_deformation_loss_waits_for_the_first_template_update_and_rigid_steps_use_one_shape():
    model = _mask_only(mask_weight=0.0, deform_weight=1.0, rigid_steps=5)
    batch = _batch(model, B=2, parts=False)
    with torch.no_grad():
        model.shape_head.bias.normal_(std=0.05)
    loss0, logs0, _ = model.losses(batch["image"], batch["mask"], step=0)
    assert float(loss0.detach()) == 0.0 and float(logs0["deformation"]) > 0          # logged, not weighed, in round 0
    model.em_round += 1
    _, _, out = model.losses(batch["image"], batch["mask"], step=4)            # still rigid
    torch.testing.assert_close(out["verts"][0], out["verts"][1])
    loss1, logs1, out = model.losses(batch["image"], batch["mask"], step=5)
    torch.testing.assert_close(loss1, logs1["deformation"])
    assert not torch.allclose(out["verts"][0], out["verts"][1])


def test_turn_tolerant_pose_errors_and_the_robust_alignment_see_through_quarter_turns():
    g = torch.Generator().manual_seed(3)
    n = 40
    az = torch.rand(n, generator=g, dtype=DT) * 360
    gt = torch.stack([_turn(30.0, 0) @ _turn(float(a), 1) for a in az])
    offset = _turn(70.0, 2) @ _turn(20.0, 0)
    k = torch.randint(4, (n,), generator=g)
    pred = torch.stack([gt[i] @ _turn(90.0 * int(k[i]), 1) @ offset for i in range(n)])
    pred[:5] = torch.stack([_turn(float(a), 0) for a in torch.rand(5, generator=g, dtype=DT) * 180])  # outliers
    quarter = (0, 1, 2, 3)
    a = U.fit_rotation_offset_robust(pred, gt, quarter)
    err = U.turn_tolerant_errors(pred, gt, a, quarter)
    assert float(err[5:].max()) < 1e-4 and float(err[:5].min()) > 1.0          # degrees; acos near 1
    exact = U.turn_tolerant_errors(pred, gt, U.fit_rotation_offset_robust(pred, gt), (0,))
    assert float(exact.median()) > 45                                          # the turns count without tolerance
    half = U.turn_tolerant_errors(pred, gt, U.fit_rotation_offset_robust(pred, gt, (0, 2)), (0, 2))
    odd = (k[5:] % 2 == 1)
    assert float(half[5:][~odd].max()) < 1e-4 and torch.allclose(half[5:][odd], torch.full_like(half[5:][odd], 90.0))
    # Against the definition: the error up to quarter turns is the least over the four turned truths.
    one = U.turn_tolerant_errors(pred[5:6], gt[5:6], offset, quarter)
    assert float(one) < 1e-4 and float(U.turn_tolerant_errors(pred[5:6], gt[5:6], offset, (0,))) == \
        pytest.approx(90.0 * min(int(k[5]), 4 - int(k[5])), abs=1e-4)


# ------------------------------------------------------------------------------------------------
# keypoint transfer and pose alignment


def test_keypoint_transfer_of_points_the_model_can_place_exactly():
    # Keypoints at projected template vertices (in the silhouette) and at faces' flow centres: transferred from an
    # image to itself, both modes put them back exactly; to a target whose keypoints moved, no mode scores.
    model = tiny_model(template_level=2).eval()
    task = U.UmrTask()
    images = torch.rand(2, 3, 32, 32)
    rec = task.reconstruct(model, images)
    proj = model.project(model.template.expand(2, -1, -1), rec["scale"], rec["translation"], rec["quaternion"])
    S = 32
    centre = ((proj[..., :2] + 1) * S / 2).floor() + 0.5              # the vertices' pixels
    inside = rec["mask"].reshape(2, S, S)[:, (S - centre[..., 1]).long().clamp(0, S - 1),
                                          centre[..., 0].long().clamp(0, S - 1)]
    pick = [int(torch.nonzero(inside[0, 0] > 0.5)[k]) for k in (0, 5, 9)]
    kp = torch.zeros(2, 3, 3)
    kp[:, :, :2] = proj[:, pick, :2]
    kp[:, :, 2] = 1
    m = task.keypoint_transfer(model, rec, kp, torch.tensor([[0, 0], [1, 1]]))
    assert m["pck_camera"] == 100.0 and m["pck_identity"] == 100.0 and m["pck_keypoints"] == 6
    c_in = model.sample_flow(rec["flow"], model.cycle_uvs.expand(2, -1, -1, -1)).mean(2)
    kp_flow = kp.clone()
    kp_flow[:, :, :2] = c_in[:, [0, 40, 80]]
    assert task.keypoint_transfer(model, rec, kp_flow, torch.tensor([[0, 0], [1, 1]]))["pck_texture_flow"] == 100.0
    moved = kp.clone()
    moved[1, :, :2] += 0.5
    m = task.keypoint_transfer(model, rec, torch.cat([kp[:1], moved[1:]]), torch.tensor([[0, 1]]))
    assert m["pck_identity"] == 0.0


def test_pck_and_rotation_offset():
    target = torch.zeros(2, 3, 2)
    pred = torch.tensor([[[0.1, 0.0], [0.3, 0.0], [0.0, 0.0]], [[0.0, 0.19], [5.0, 5.0], [0.0, 0.0]]])
    valid = torch.tensor([[True, True, False], [True, True, False]])
    assert U.pck(pred, target, valid) == 50.0          # 0.1 and 0.19 < 0.2; 0.3 and 7.07 not
    assert math.isnan(U.pck(pred, target, torch.zeros(2, 3, dtype=torch.bool)))
    g = torch.Generator().manual_seed(0)
    gt = invrender.rotation_matrix(torch.rand(20, generator=g, dtype=DT) * 6.28, torch.rand(20, generator=g, dtype=DT))
    A = invrender.rotation_matrix(torch.tensor(1.0, dtype=DT), torch.tensor(0.3, dtype=DT), torch.tensor(0.2, dtype=DT))[0]
    torch.testing.assert_close(U.fit_rotation_offset(gt @ A, gt), A)
    errs = U.rotation_errors(gt @ A, gt, A)
    assert errs["pose_rotation_median_deg"] < 1e-3 and errs["pose_accuracy_15deg"] == 1.0


# ------------------------------------------------------------------------------------------------
# the task: training in stages, resume, DDP, CLI, evaluation (tiny synthetic data the tests write)


from invrender import training  # noqa: E402

from .test_training import _free_ports, _spawn  # noqa: E402
from .test_unicorn_task import _quiet  # noqa: E402

TINY = {"feature_dim": 16, "template_level": 1, "num_cameras": 2, "uv_size": [8, 16], "flow_channels": 16,
        "layers": 4, "sigma": 1e-4, "part_pixels": 16, "gan_weight": 1.0}


@pytest.fixture(scope="module")
def planes(tmp_path_factory):
    root = tmp_path_factory.mktemp("umr-data") / "synthetic"
    invrender.synthetic.generate_dataset(str(root), objects_per_category=10, categories=["airplane"], views=3,
                                         image_size=32, points=500, voxel_resolution=8, progress=False)
    return str(root)


def task_config(root, **kw):
    task = U.UmrTask()
    cfg = training.resolve_config(task)
    cfg = training.merge_config(cfg, {"model": dict(TINY), "data": {"root": root, "image_size": 32,
                                      "part_noise": {"grow": 1, "shrink": 1, "swap_fraction": 0.5}},
                                      "em": {"steps_per_round": 2, "m_step_samples": 6},
                                      "batch_size": 4, "steps": 5, "log_every": 1, "vis_every": 0, "ckpt_every": 0,
                                      "eval": {"pairs": 20, "num_points": 500, "icp_num_points": 200,
                                               "medoid_candidates": 3}})
    cfg = training.merge_config(cfg, kw)
    cfg["task"] = "umr"
    return task, cfg


def test_training_runs_the_stages_and_evaluates(planes, tmp_path):
    task, cfg = task_config(planes)
    history = _quiet(training.Trainer(task, cfg, tmp_path / "run", device="cpu", progress=False).fit)
    rounds = [h["em_round"] for h in history]
    assert rounds == [0.0, 0.0, 1.0, 1.0, 2.0]                      # M-steps before steps 2 and 4
    assert "part_probability" not in history[1] and "part_probability" in history[2]
    assert "m_step_mask_iou" in history[2] and "template_offset" in history[4]
    for h in history:
        assert all(math.isfinite(float(v)) for v in h.values() if isinstance(v, (int, float)))
    metrics = _quiet(training.evaluate_run, tmp_path / "run", device="cpu")
    for key in ("mask_iou", "sphere_mask_iou", "pck_camera", "pck_texture_flow", "pck_identity",
                "pose_rotation_median_deg", "constant_pose_rotation_median_deg", "chamfer_l1_icp",
                "sphere_chamfer_l1_icp", "template_chamfer_l1_icp", "medoid_chamfer_l1_icp", "spread_chamfer_l1_icp"):
        assert math.isfinite(metrics[key]), key
    assert 0 <= metrics["mask_iou"] <= 1 and metrics["pck_keypoints"] > 0
    assert metrics["pose_offset_fitted_on"] == "val"
    assert os.path.isfile(metrics["files"]["reconstructions"]) and os.path.isfile(metrics["files"]["mesh_0"])


def test_short_training_lowers_the_mask_loss(planes, tmp_path):
    task, cfg = task_config(planes, steps=30, em={"steps_per_round": 100}, model={"lr": 1e-3, "gan_weight": 0.0})
    history = _quiet(training.Trainer(task, cfg, tmp_path / "run", device="cpu", progress=False).fit)
    first = sum(h["mask"] for h in history[:5]) / 5
    last = sum(h["mask"] for h in history[-5:]) / 5
    assert last < 0.8 * first


def test_resume_is_bit_identical_across_an_m_step(planes, tmp_path):
    task, cfg = task_config(planes, steps=4, ckpt_every=3, seed=3)
    _quiet(training.Trainer(task, cfg, tmp_path / "straight", device="cpu", progress=False).fit)
    _quiet(training.Trainer(task, dict(cfg, steps=3), tmp_path / "split", device="cpu", progress=False).fit)
    torch.manual_seed(999)
    _quiet(training.Trainer(task, cfg, tmp_path / "split", device="cpu", resume=True, progress=False).fit)
    a = training.load_checkpoint(training.latest_checkpoint(tmp_path / "straight"))
    b = training.load_checkpoint(training.latest_checkpoint(tmp_path / "split"))
    assert a["step"] == b["step"] == 4 and a["model"].keys() == b["model"].keys()
    assert int(a["model"]["em_round"]) == 1
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def _ddp_worker(rank, world_size, port, root, out):
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    task, cfg = task_config(root, steps=3, shuffle=False)
    trainer = training.Trainer(task, cfg, os.path.join(out, "ddp"), device="cpu", progress=False)
    _quiet(trainer.fit)
    model = training.unwrap(trainer.model)
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, os.path.join(out, f"rank{rank}.pt"))


def test_trains_data_parallel_with_two_processes(planes, tmp_path):
    """Two gloo processes over an M-step: gradients averaged, buffers (template, canonical map, batchnorm) the
    same on both ranks."""
    _spawn(_ddp_worker, (2, _free_ports(1)[0], planes, str(tmp_path)), nprocs=2, timeout=300)
    s0, s1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert s0.keys() == s1.keys() and int(s0["em_round"]) == 1
    for k in s0:
        assert torch.equal(s0[k], s1[k]), k


def test_cli_trains_and_evaluates(planes, tmp_path, capsys):
    from invrender.cli import main

    config = os.path.join(os.path.dirname(__file__), "..", "configs", "umr", "airplane_cpu.yaml")
    overrides = [f"model.{k}={v}" for k, v in TINY.items()] + [
        f"data.root={planes}", "data.image_size=32", "steps=2", "em.steps_per_round=1", "em.m_step_samples=4",
        "batch_size=2", "vis_every=2", "eval.pairs=5", "eval.num_points=200", "eval.icp_num_points=100",
        "eval.medoid_candidates=2"]
    run = tmp_path / "run"
    assert main(["train", "umr", "--config", config, "--run-dir", str(run), "--no-progress", *overrides]) == 0
    assert (run / "samples" / "step_00000002" / "reconstructions.png").exists()
    assert (run / "samples" / "step_00000002" / "template.obj").exists()
    assert main(["eval", str(run)]) == 0
    out = capsys.readouterr().out
    assert "PCK via camera" in out and "mask IoU" in out
    with pytest.raises(ConfigError, match="data.kind"):
        U.UmrTask()._kind({"data": {"kind": "pascal"}})


def test_every_shipped_config_resolves(planes):
    import glob

    here = os.path.join(os.path.dirname(__file__), "..", "configs")
    files = sorted(glob.glob(os.path.join(here, "umr", "*.yaml"))) + [os.path.join(here, "umr_synthetic.yaml")]
    assert len(files) >= 3
    for path in files:
        task = U.UmrTask()
        cfg = training.resolve_config(task, path, [f"data.root={planes}"] if "cub" not in path else [])
        fields = dict(cfg["model"], image_size=cfg["data"]["image_size"])
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
        assert U.UmrConfig(**fields).num_cameras in (4, 8), path
        assert cfg["steps"] >= 2 * cfg["em"]["steps_per_round"], path   # at least the two EM rounds


def test_synthetic_keypoints_are_part_centres_and_ends_on_their_parts(planes):
    task, cfg = task_config(planes)
    base = task._base(cfg, "test", noise=False)
    item = base[0]
    kp = task.part_keypoints(base, 0, item)
    assert kp.shape == (9, 3)                                  # fuselage, wings, tail: centre and two ends each
    labels = U.UmrModel.part_labels(item["parts"][None])[0]
    S = labels.shape[-1]
    visible = kp[:, 2] > 0
    assert visible.sum() >= 4
    for k in torch.nonzero(visible).flatten().tolist():
        col = int(((kp[k, 0] + 1) * S / 2).floor().clamp(0, S - 1))
        row = int(((1 - kp[k, 1]) * S / 2).floor().clamp(0, S - 1))
        window = labels[max(row - 1, 0):row + 2, max(col - 1, 0):col + 2]
        assert (window == k // 3 + 1).any(), k
    # The two ends of the wings are far apart in the image (wing tips), unlike the centres.
    if visible[4] and visible[5]:
        assert (kp[4, :2] - kp[5, :2]).norm() > 0.3


def _tool(name):
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_oracle_camera_tool_draws_the_data_as_its_masks_and_trains_under_them(planes, tmp_path):
    tool = _tool("umr_oracle_cameras")
    from invrender.data import ShapeNetNMR

    base = ShapeNetNMR(planes, split="train", image_size=32)
    # the weak-perspective stand-in for the data's perspective camera: the true meshes fall on the masks
    iou = tool.ground_truth_iou(base, range(6), tool.FOCAL / tool.DISTANCE, 32)
    assert iou > 0.7
    assert tool.ground_truth_iou(base, range(6), 0.6 * tool.FOCAL / tool.DISTANCE, 32) < iou - 0.15
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"model": {k: v for k, v in TINY.items()}, "data": {"root": planes, "image_size": 32},
                                      "em": {"steps_per_round": 3, "m_step_samples": 8}, "batch_size": 4,
                                      "steps": 6}))
    out = tool.main(["--config", str(config), "--out", str(tmp_path / "out.json")])
    assert out["steps"] == 6 and out["oracle_rounds"] is None
    for key in ("mask_iou", "chamfer_l1_icp", "template_chamfer_l1_icp", "medoid_chamfer_l1_icp", "pose_median_deg"):
        assert math.isfinite(out[key]), key
    assert out["pose_median_deg"] < 1e-3          # one hypothesis, the true camera: the reading is the truth
    assert json.loads((tmp_path / "out.json").read_text())["steps"] == 6
    mixed = tool.main(["--config", str(config), "--oracle-rounds", "1"])
    assert mixed["pose_median_deg"] > 1.0          # the model's own cameras after the first round
    late = tool.main(["--config", str(config), "--oracle-from", "1"])
    assert late["pose_median_deg"] < 1e-3          # its own cameras in the first round, the true ones after


def test_shape_capacity_tool_fits_the_mesh_to_known_views(planes, capsys):
    tool = _tool("umr_shape_capacity")
    out = tool.main(["--root", str(planes), "--size", "32", "--views", "6", "--steps", "40", "--lr", "2e-2"])
    assert out["mask_iou"] > 0.5 and out["chamfer_fitted"] < 0.6 * out["chamfer_sphere"]   # start: 0.19, equal
    assert "Chamfer-L1 x10 (ICP): fitted" in capsys.readouterr().out
