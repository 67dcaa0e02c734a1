"""UNICORN's building blocks (invrender.models.unicorn): networks' shapes, the template at
initialisation, progressive conditioning, pose candidates, texture averaging, the swap memory bank, and
rendering through invrender.LayeredRenderer."""

import math

import pytest
import torch
from torch import nn

import invrender
from invrender.errors import ConfigError
from invrender.mesh import ellipsoid, spherical_uvs
from invrender.models import unicorn as U


class TinyEncoder(nn.Module):
    """Stand-in for ResNet-18: (B, 3, H, W) -> (B, dim)."""

    def __init__(self, dim=512):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 8, stride=8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(8, dim))

    def forward(self, x):
        return self.net(x)


def small_config(**kw):
    """Paper defaults with smaller networks, so the tests stay fast."""
    values = dict(field_hidden=32, head_hidden=16, generator_features=16, generator_min_features=4,
                  texture_size=16, image_size=32, render_layers=8, memory_size=16)
    values.update(kw)
    return U.UnicornConfig(**values)


def make_model(config=None):
    torch.manual_seed(0)
    config = small_config() if config is None else config
    return U.UnicornModel(config, TinyEncoder(config.feature_dim))


# ------------------------------------------------------------------------------------------------
# Config


def test_config_defaults_are_the_papers():
    c = U.UnicornConfig()
    assert (c.template_level, c.template_radii, c.template_scale) == (3, (1.0, 0.7, 0.7), 0.4)
    assert c.shape_code_sizes == (0, 2, 8, 32) and c.texture_code_sizes == (2, 8, 32, 128)
    assert c.background_code_sizes == (4, 16, 64, 128) and c.stage_milestones == (14, 84, 154)
    assert (c.num_poses, c.memory_size, c.render_layers, c.sigma) == (6, 1024, 50, 1e-4)
    assert math.degrees(2 * math.atan(1 / c.focal_length)) == pytest.approx(30.0, abs=1e-6)
    r = U.real_image_config()
    assert r.template_scale == 0.6 and r.background and r.elevation_range == (-10.0, 30.0)
    assert math.degrees(2 * math.atan(1 / r.focal_length)) == pytest.approx(30.0)


@pytest.mark.parametrize("field, value", [
    ("image_size", 0), ("feature_dim", -1), ("field_hidden", 2.5), ("num_poses", True), ("template_level", 9),
    ("template_scale", 0.0), ("template_radii", (1.0, 0.7)), ("scale_range", (0.5, 1.0, 0.5)),
    ("translation_range", (0.1, -0.1, 0.0)), ("stage_milestones", (14, 14, 154)),
    ("shape_code_sizes", (0, 2, 8)), ("texture_code_sizes", (8, 2, 32, 128)), ("mean_texture_prob", 1.5),
    ("min_swap_angle", 180.0), ("elevation_range", (30.0, -10.0)), ("azimuth_range", (0.0, 400.0)),
    ("texture_size", 48), ("background", "yes"), ("mean_texture_until", -1), ("sigma", float("nan")),
])
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ConfigError, match=rf"UnicornConfig\.{field} "):
        U.UnicornConfig(**{field: value})


# ------------------------------------------------------------------------------------------------
# Progressive conditioning


def test_code_sizes_follow_the_stage_schedule():
    m = (14, 84, 154)
    shape = [U.code_size(e, m, (0, 2, 8, 32)) for e in (0, 13, 14, 83, 84, 153, 154, 1000)]
    assert shape == [0, 0, 2, 2, 8, 8, 32, 32]
    texture = [U.code_size(e, m, (2, 8, 32, 128)) for e in (0, 13, 14, 84, 154)]
    assert texture == [2, 2, 8, 32, 128]
    assert [U.training_stage(e, m) for e in (0, 14, 100, 154)] == [0, 1, 2, 3]


def test_code_mask_keeps_exactly_the_first_live_values():
    mask = U.code_mask(20, (14, 84, 154), (0, 2, 8, 32))
    assert mask.shape == (32,) and mask[:2].tolist() == [1, 1] and mask[2:].abs().sum() == 0
    assert U.code_mask(0, (14, 84, 154), (0, 2, 8, 32)).sum() == 0
    assert U.code_mask(200, (14, 84, 154), (0, 2, 8, 32)).sum() == 32
    with pytest.raises(ValueError, match="one size per stage"):
        U.code_size(0, (14, 84), (0, 2, 8, 32))


def test_model_masks_its_codes_by_epoch():
    model = make_model()
    with torch.no_grad():  # make the code heads output non-zero codes
        model.shape_head[-1].weight.normal_()
        model.shape_head[-1].bias.fill_(1.0)
    features = torch.randn(3, 512)
    for epoch, live in ((0, 0), (14, 2), (84, 8), (154, 32)):
        model.set_epoch(epoch)
        z = model.shape_code(features)
        assert z.shape == (3, 32)
        assert (z[:, :live] != 0).all() and (z[:, live:] == 0).all()
    model.set_epoch(5)
    assert model.state_dict()["epoch"].item() == 5


# ------------------------------------------------------------------------------------------------
# Shape


def test_mlp_and_field_shapes():
    head = U.mlp(512, 7, 128, 3)
    assert [m.out_features for m in head if isinstance(m, nn.Linear)] == [128, 128, 128, 7]
    field = U.DeformationField(32, hidden=512, layers=3)
    linears = [field.linear_x, field.linear_z] + [m for m in field.mlp if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(3, 512), (32, 512), (512, 512), (512, 512),
                                                                   (512, 3)]
    out = field(torch.randn(642, 3), torch.randn(4, 32))
    assert out.shape == (4, 642, 3)
    with pytest.raises(ValueError, match="'code'"):
        field(torch.randn(642, 3), torch.randn(4, 31))


def test_initial_shape_is_the_template_exactly():
    model = make_model()
    verts, faces = ellipsoid(3, (1.0, 0.7, 0.7), 0.4, dtype=torch.float32)
    assert torch.equal(model.template_verts, verts) and torch.equal(model.faces, faces)
    assert torch.equal(model.uvs, spherical_uvs(verts, faces))
    model.set_epoch(200)  # all shape dims live: the code is still zero-initialised ...
    features = model.encoder(torch.rand(2, 3, 32, 32))
    with torch.no_grad():  # ... and even with a non-zero code the zeroed last layer gives no displacement
        model.shape_head[-1].bias.fill_(1.0)
    code = model.shape_code(features)
    assert (code[:, :32] != 0).all()
    out = model.shape(code)
    assert out.shape == (2, 642, 3) and torch.equal(out, verts.expand(2, -1, -1))
    with torch.no_grad():  # a non-zero last layer moves it: the test can fail
        model.deformation.mlp[-1].bias.fill_(0.01)
    assert not torch.equal(model.shape(code), verts.expand(2, -1, -1))


def test_scale_is_bounded_and_frozen_first():
    model = make_model()
    with torch.no_grad():
        model.scale_head[-1].bias.copy_(torch.tensor([100.0, -100.0, 0.0]))
    features = torch.randn(2, 512)
    model.set_epoch(0)  # frozen for the first 3 epochs (code)
    assert torch.equal(model.scale(features), torch.ones(2, 3))
    model.set_epoch(3)
    s = model.scale(features)
    assert torch.allclose(s[:, 0], torch.full((2,), 1.5)) and torch.allclose(s[:, 1], torch.full((2,), 0.5))
    assert ((s >= 0.5) & (s <= 1.5)).all()


# ------------------------------------------------------------------------------------------------
# Texture


def test_texture_generator_is_giraffes_at_64():
    gen = U.TextureGenerator(code_dim=128, size=64, min_features=16)
    convs = [(m.in_channels, m.out_channels) for m in gen.convs]
    assert convs == [(128, 64), (64, 32), (32, 16), (16, 16), (16, 16), (16, 16)]  # log2(64) = 6 blocks
    assert [m.in_channels for m in gen.to_rgb] == [128, 64, 32, 16, 16, 16, 16]
    out = gen(torch.randn(2, 128))
    assert out.shape == (2, 3, 64, 64) and ((out > 0) & (out < 1)).all()
    assert not torch.allclose(out[0], out[1])  # different codes, different textures
    with pytest.raises(ValueError, match="'size'"):
        U.TextureGenerator(size=48)
    with pytest.raises(ValueError, match="'code'"):
        gen(torch.randn(2, 64))


def test_blur_is_the_binomial_filter():
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 2, 2] = 16.0
    y = U.Blur()(x)[0, 0]
    assert torch.equal(y[1:4, 1:4], torch.tensor([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]]))
    assert y.sum() == 16.0


def test_model_texture_and_background_shapes():
    model = make_model(small_config(background=True))
    f = torch.randn(2, 512)
    model.set_epoch(0)
    tx = model.texture(model.texture_code(f))
    assert tx.shape == (2, 3, 16, 16)
    z_bg = model.background_code(f)
    assert z_bg.shape == (2, 128) and model.background(z_bg).shape == (2, 3, 32, 32)
    plain = make_model()
    assert plain.background_code(f) is None and plain.background(None) is None
    assert not any(n.startswith("background_") for n, _ in plain.named_parameters())


def test_average_texture_is_each_images_mean_colour():
    torch.manual_seed(1)
    tx = torch.rand(3, 3, 8, 8)
    avg = U.average_texture(tx)
    assert avg.shape == tx.shape
    for b in range(3):
        for c in range(3):
            assert torch.allclose(avg[b, c], tx[b, c].mean().expand(8, 8))
    assert not torch.allclose(avg[0], avg[1])  # per image, not a batch mean
    model = make_model()
    model.set_epoch(30)
    code = torch.randn(2, 128)
    assert torch.allclose(model.texture(code, averaged=True), U.average_texture(model.texture(code)))


def test_texture_averaging_schedule():
    model = make_model()  # constant texture until epoch 14, then p = 0.2 per iteration (appendix A.2)
    model.train()
    g = torch.Generator().manual_seed(0)
    model.set_epoch(13)
    assert all(model.draw_texture_averaging(g) for _ in range(50))
    model.set_epoch(14)
    draws = [model.draw_texture_averaging(g) for _ in range(4000)]
    assert abs(sum(draws) / len(draws) - 0.2) < 0.03
    model.eval()  # stage 1's constant texture holds in eval mode too (code); the random averaging does not
    model.set_epoch(0)
    assert model.draw_texture_averaging(g)
    model.set_epoch(14)
    assert not any(model.draw_texture_averaging(g) for _ in range(50))
    real = make_model(U.real_image_config(field_hidden=32, head_hidden=16, generator_features=16,
                                          generator_min_features=4, texture_size=16, image_size=32))
    real.train()
    real.set_epoch(525)  # real images: no averaging in the last stage (code)
    assert not any(real.draw_texture_averaging(g) for _ in range(200))


# ------------------------------------------------------------------------------------------------
# Pose


def camera_rotation(azimuth_deg, elevation_deg):
    """Closed form of an orbit camera's object-to-view rotation: rows right, up, backward (README)."""
    a, e = math.radians(azimuth_deg), math.radians(elevation_deg)
    return torch.tensor([[math.cos(a), 0.0, -math.sin(a)],
                         [-math.sin(a) * math.sin(e), math.cos(e), -math.cos(a) * math.sin(e)],
                         [math.sin(a) * math.cos(e), math.sin(e), math.cos(a) * math.cos(e)]])


def test_candidate_angles_closed_form():
    refs, rng = U.candidate_angles(6, (0, 360), (30, 30), (0, 0))
    assert refs[:, 0].tolist() == [0, 60, 120, 180, 240, 300]
    assert refs[:, 1].tolist() == [30] * 6 and refs[:, 2].tolist() == [0] * 6
    assert torch.allclose(rng, torch.tensor([31.2, 0.0, 0.0], dtype=torch.float64))
    refs, rng = U.candidate_angles(2, (0, 180), (-10, 30), (-30, 30))  # not a full circle: bin centres
    assert refs.tolist() == [[45, 10, 0], [135, 10, 0]]
    assert torch.allclose(rng, 0.52 * torch.tensor([90.0, 40.0, 60.0], dtype=torch.float64))


def test_initial_candidates_are_the_reference_viewpoints_and_cover_the_circle():
    model = make_model()
    cand = model.poses(torch.randn(2, 512))
    assert cand.rotation.shape == (2, 6, 3, 3) and cand.translation.shape == (2, 6, 3)
    assert cand.angles.shape == (2, 6, 3) and cand.probabilities.shape == (2, 6)
    for k in range(6):
        expected = camera_rotation(60 * k, 30)
        assert torch.allclose(cand.rotation[0, k], expected, atol=1e-6), k
    assert torch.equal(cand.translation, torch.zeros(2, 6, 3))
    assert torch.allclose(cand.probabilities.sum(1), torch.ones(2))
    # Every azimuth is reachable by some candidate's tanh-bounded offset (31.2 >= 30 degrees each side).
    ref, rng = model.pose_heads.reference_angles[:, 0], model.pose_heads.angle_range[0]
    for azimuth in torch.linspace(0, 359, 360):
        gap = torch.remainder(azimuth - ref + 180, 360) - 180
        assert (gap.abs() <= rng).any()


def test_pose_offsets_are_tanh_bounded():
    model = make_model()
    with torch.no_grad():
        for k, head in enumerate(model.pose_heads.rotation_heads):
            head[-1].bias.fill_(100.0 if k % 2 == 0 else -100.0)  # saturate tanh at +-1
        for head in model.pose_heads.translation_heads:
            head[-1].bias.copy_(torch.tensor([100.0, -100.0, 100.0]))
    cand = model.poses(torch.randn(3, 512))
    sign = torch.tensor([1.0, -1.0] * 3)
    assert torch.allclose(cand.angles[0, :, 0], torch.arange(6) * 60.0 + sign * 31.2)
    assert torch.allclose(cand.angles[..., 1], torch.full((3, 6), 30.0))  # no elevation range on ShapeNet
    assert torch.allclose(cand.translation, torch.tensor([0.2, -0.2, 0.0]).expand(3, 6, 3))
    with torch.no_grad():  # an unbounded head would leave the range
        model.pose_heads.rotation_heads[0][-1].bias.fill_(1e3)
    assert (model.poses(torch.randn(3, 512)).angles[:, 0, 0] <= 31.2 + 1e-4).all()


def test_translation_frozen_first_on_real_images():
    config = U.real_image_config(field_hidden=32, head_hidden=16, generator_features=16, generator_min_features=4,
                                 texture_size=16, image_size=32)
    model = make_model(config)
    with torch.no_grad():
        for head in model.pose_heads.translation_heads:
            head[-1].bias.fill_(100.0)
    f = torch.randn(2, 512)
    model.set_epoch(1)
    assert torch.equal(model.poses(f).translation, torch.zeros(2, 6, 3))
    model.set_epoch(2)
    assert torch.allclose(model.poses(f).translation, torch.full((2, 6, 3), 0.3))


def test_select_pose_takes_the_most_likely_candidate():
    model = make_model()
    with torch.no_grad():
        model.pose_heads.probability_head[-1].weight.zero_()
        model.pose_heads.probability_head[-1].bias.copy_(torch.tensor([0.0, 0, 0, 5, 0, 0]))
    cand = model.poses(torch.randn(2, 512))
    pose, index = U.select_pose(cand)
    assert index.tolist() == [3, 3]
    assert torch.allclose(pose.rotation, camera_rotation(180, 30).expand(2, 3, 3), atol=1e-6)
    assert pose.translation.shape == (2, 3)


def test_azimuth_sign_matches_the_camera():
    """A candidate at azimuth 90 degrees puts the object's +x side nearest the camera (README convention)."""
    verts = torch.tensor([[1.0, 0, 0], [-1.0, 0, 0], [0, 0, 1.0]])
    R = invrender.rotation_matrix(torch.tensor(math.pi / 2), 0.0)
    camera = invrender.PerspectiveCamera.from_focal_length(3.732, distance=2.732)
    depth = camera.project(verts, rotation=R[0])[0, :, 2]
    assert depth.argmin() == 0 and depth[0] == pytest.approx(1.732, abs=1e-5)


# ------------------------------------------------------------------------------------------------
# Swap reconstruction: memory bank


def azimuth_rotations(azimuths_deg, elevation_deg=0.0):
    return torch.stack([camera_rotation(float(a), elevation_deg) for a in azimuths_deg])


def test_rotation_angle_and_bin_edges():
    R = azimuth_rotations([0, 30, 90, 180, 250])
    assert torch.allclose(U.rotation_angle(R[0], R), torch.tensor([0.0, 30, 90, 180, 110]), atol=1e-3)
    assert U.viewpoint_bin_edges(4, 20).tolist() == [20, 60, 100, 140, 180]
    assert U.viewpoint_bin_edges(5, 20).tolist() == [20, 52, 84, 116, 148, 180]


def test_swap_neighbour_lies_in_the_drawn_bin_constructed():
    # Bank: azimuths 15, 45, ..., 345 at elevation 0, entry k with code k (a line), so the nearest code
    # overall to the query's (0, at azimuth 0) is entry 0, only 15 degrees away: excluded by every bin.
    azimuths = torch.arange(15, 360, 30)
    bank_R = azimuth_rotations(azimuths)
    bank_codes = torch.arange(12.0)[:, None]
    query_R = azimuth_rotations([0, 0, 0, 0])
    query_codes = torch.zeros(4, 1)
    bins = torch.tensor([0, 1, 2, 3])  # [20, 60), [60, 100), [100, 140), [140, 180]
    index, found = U.swap_neighbours(query_codes, query_R, bank_codes, bank_R, bins, 4, 20.0)
    assert found.all()
    # bin 0: azimuths 45 (code 1) or 315 (10); bin 1: 75 (2) or 285 (9); bin 2: 105, 135 (3, 4) or 225, 255;
    # bin 3: 165 (5) or 195 (6).
    assert azimuths[index].tolist() == [45, 75, 105, 165]
    assert torch.cdist(query_codes, bank_codes).argmin() == 0  # without bins: the same viewpoint
    # The back view (exactly 180 degrees) belongs to the last bin.
    back = torch.diag(torch.tensor([-1.0, 1.0, -1.0]))
    assert U.rotation_angle(torch.eye(3), back).item() == 180.0
    index, found = U.swap_neighbours(torch.zeros(1, 1), torch.eye(3)[None], torch.zeros(2, 1),
                                     torch.stack([torch.eye(3), back]), torch.tensor([3]), 4, 20.0)
    assert found.item() and index.item() == 1
    # A bin with no valid entry is reported as not found.
    valid = torch.zeros(12, dtype=torch.bool)
    valid[[0, 1, 11]] = True  # azimuths 15, 45, 345: only bin 0 has a valid entry
    _, found = U.swap_neighbours(query_codes[:2], query_R[:2], bank_codes, bank_R, torch.tensor([0, 2]), 4, 20.0,
                                 valid)
    assert found.tolist() == [True, False]


def test_swap_neighbours_match_brute_force():
    g = torch.Generator().manual_seed(3)
    M, B, V = 40, 8, 5
    bank_R = azimuth_rotations(torch.rand(M, generator=g) * 360, 30.0)
    bank_codes = torch.randn(M, 4, generator=g)
    query_R = azimuth_rotations(torch.rand(B, generator=g) * 360, 30.0)
    codes = torch.randn(B, 4, generator=g)
    bins = U.draw_viewpoint_bins(B, V, generator=g)
    index, found = U.swap_neighbours(codes, query_R, bank_codes, bank_R, bins, V, 20.0)
    edges = U.viewpoint_bin_edges(V, 20.0).tolist()
    for b in range(B):
        best, best_m = math.inf, None
        for m in range(M):
            angle = U.rotation_angle(query_R[b], bank_R[m]).item()
            lo, hi = edges[bins[b]], edges[bins[b] + 1]
            if lo <= angle < hi or (bins[b] == V - 1 and angle <= hi):
                d = (codes[b] - bank_codes[m]).norm().item()
                if d < best:
                    best, best_m = d, m
        assert found[b].item() == (best_m is not None)
        if best_m is not None:
            assert index[b].item() == best_m
            angle = U.rotation_angle(query_R[b], bank_R[index[b]]).item()
            assert edges[bins[b]] <= angle <= edges[bins[b] + 1]


def random_entries(n, g, image=(3, 4, 4)):
    return dict(shape_code=torch.randn(n, 5, generator=g), texture_code=torch.randn(n, 6, generator=g),
                background_code=torch.randn(n, 0), scale=torch.rand(n, 3, generator=g),
                rotation=azimuth_rotations(torch.rand(n, generator=g) * 360), translation=torch.randn(n, 3, generator=g),
                image=torch.rand(n, *image, generator=g))


def test_memory_bank_ring_and_state_dict_round_trip(tmp_path):
    g = torch.Generator().manual_seed(5)
    bank = U.MemoryBank(8, 5, 6, 0, (3, 4, 4))
    first, second = random_entries(5, g), random_entries(6, g)
    bank.push(**first)
    assert len(bank) == 5 and bank.valid.tolist() == [True] * 5 + [False] * 3
    bank.push(**second)  # 11 pushed into 8 slots: the oldest 3 are overwritten
    assert len(bank) == 8 and bank.position.item() == 3
    stored = bank.image
    for k in range(6):
        assert torch.equal(stored[(5 + k) % 8], second["image"][k])
    for k in range(3, 5):
        assert torch.equal(stored[k], first["image"][k])
    torch.save(bank.state_dict(), tmp_path / "bank.pt")
    other = U.MemoryBank(8, 5, 6, 0, (3, 4, 4))
    other.load_state_dict(torch.load(tmp_path / "bank.pt"))
    for name, value in bank.state_dict().items():
        assert torch.equal(other.state_dict()[name], value), name
    codes, R = torch.randn(3, 5, generator=g), azimuth_rotations([0, 90, 200])
    bins = torch.tensor([0, 2, 4])
    assert all(torch.equal(a, b) for a, b in zip(bank.neighbours("shape", codes, R, bins, 5),
                                                  other.neighbours("shape", codes, R, bins, 5)))
    with pytest.raises(ValueError, match="'image'"):
        bank.push(**dict(random_entries(2, g), image=torch.rand(2, 3, 5, 5)))


def test_model_bank_is_in_the_state_dict():
    model = make_model()
    keys = model.state_dict().keys()
    assert {f"memory.{n}" for n in U.MemoryBank.FIELDS} | {"memory.count", "memory.position", "epoch"} <= set(keys)
    assert model.memory.image.shape == (16, 3, 32, 32) and model.memory.shape_code.shape == (16, 32)


# ------------------------------------------------------------------------------------------------
# Prediction and rendering


def test_predict_shapes_and_initial_mesh():
    model = make_model(small_config(background=True))
    model.set_epoch(0)
    out = model.predict(torch.rand(2, 3, 32, 32))
    assert out["features"].shape == (2, 512)
    assert out["shape_code"].shape == (2, 32) and out["texture_code"].shape == (2, 128)
    assert out["background_code"].shape == (2, 128) and out["background"].shape == (2, 3, 32, 32)
    assert out["texture"].shape == (2, 3, 16, 16) and out["scale"].shape == (2, 3)
    assert out["candidates"].rotation.shape == (2, 6, 3, 3)
    # At initialisation (scale frozen, zero displacement) the mesh is the template.
    assert torch.equal(out["verts"], model.template_verts.expand(2, -1, -1))


def centroid(mask):
    H, W = mask.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(H, dtype=mask.dtype), torch.arange(W, dtype=mask.dtype), indexing="ij")
    total = mask.sum()
    return (mask * ys).sum() / total, (mask * xs).sum() / total


def test_render_template_matches_the_layered_renderer_and_is_centred():
    model = make_model()
    verts = model.template_verts.expand(1, -1, -1)
    texture = torch.zeros(1, 3, 16, 16)
    texture[:, 0, :, 8:] = 1.0  # red where u > 0.5: the object's +x side (seen on the right at azimuth 0)
    R = invrender.rotation_matrix(torch.tensor([0.0]), torch.tensor([math.radians(30.0)]))
    pose = U.Pose(R, torch.zeros(1, 3))
    image, mask = model.render(verts, texture, pose)
    assert image.shape == (1, 3, 32, 32) and mask.shape == (1, 1, 32, 32)
    camera = invrender.PerspectiveCamera.from_focal_length(3.732050895690918, distance=2.732)
    direct = invrender.LayeredRenderer(camera, 32, layers=8, sigma=1e-4, background=1.0)
    ref_image, ref_mask = direct(verts, model.faces, spherical_uvs(model.template_verts, model.faces), texture,
                                 rotation=R, translation=torch.zeros(1, 3))
    assert torch.equal(image, ref_image) and torch.equal(mask, ref_mask)
    m = mask[0, 0]
    assert 0.05 < m.mean() < 0.5  # an object, not an empty or full frame
    cy, cx = centroid(m)
    assert abs(cx - 15.5) < 0.25 and abs(cy - 15.5) < 0.5
    # White background outside; inside, the right half is red and the left half black.
    assert torch.equal(image[0, :, 0, 0], torch.ones(3))
    inside = m > 0.999
    left, right = inside.clone(), inside.clone()
    left[:, 14:], right[:, :18] = False, False
    assert image[0, 0][right].mean() > 0.95 and image[0, 0][left].mean() < 0.05
    # A translation along +x moves the silhouette right by about f * t / distance * W / 2 pixels.
    _, moved = model.render(verts, texture, U.Pose(R, torch.tensor([[0.2, 0.0, 0.0]])))
    shift = centroid(moved[0, 0])[1] - cx
    assert shift == pytest.approx(3.732 * 0.2 / 2.732 * 16, rel=0.1)


# ------------------------------------------------------------------------------------------------
# Alternating optimisation (section 3.3)


def test_alternating_steps_and_simple_losses():
    assert [U.alternating_step(i) for i in range(4)] == ["pose", "3d", "pose", "3d"]
    assert U.uniform_loss(torch.full((4, 6), 1 / 6)).item() == pytest.approx(0.0)
    collapsed = torch.zeros(4, 6)
    collapsed[:, 0] = 1
    assert U.uniform_loss(collapsed).item() == pytest.approx((5 / 6 + 5 / 6) / 6)
    a, b = torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)
    assert U.reconstruction_loss(a, b).tolist() == [1.0, 1.0]
    assert U.reconstruction_loss(a, b, perceptual=lambda x, y: torch.full((2,), 0.5)).tolist() == [6.0, 6.0]
    v, f = ellipsoid(2)
    assert U.regularization_loss(v[None], f).item() > 0


def grads(params):
    return [p.grad is not None and p.grad.abs().sum().item() > 0 for p in params]


@pytest.mark.parametrize("step", ["pose", "3d"])
def test_each_step_updates_only_its_branches(step):
    model = make_model(small_config(background=True))
    model.set_epoch(200)  # every code live, nothing frozen
    with torch.no_grad():  # give the zero-initialised code heads an output, so gradients can reach all layers
        for head in (model.shape_head, model.texture_head, model.background_head):
            head[-1].weight.normal_(0, 0.1)
    images = torch.rand(2, 3, 32, 32)
    prediction = model.predict(images)
    losses = model.pose_step_losses(prediction, images) if step == "pose" else \
        model.step_3d_losses(prediction, images)
    assert torch.isfinite(losses["total"])
    losses["total"].backward()
    groups = model.branch_parameters()
    assert len(groups["encoder"]) + len(groups["pose"]) + len(groups["3d"]) == len(list(model.parameters()))
    assert all(grads(groups["encoder"][-1:]))
    if step == "pose":
        assert any(grads(groups["pose"])) and not any(grads(groups["3d"]))
        assert any(grads(list(model.pose_heads.probability_head.parameters())))
    else:
        assert not any(grads(groups["pose"]))
        for module in (model.deformation, model.texture_generator, model.background_generator, model.scale_head):
            assert any(grads(list(module.parameters()))), type(module).__name__


def test_render_candidates_uses_each_candidates_pose():
    model = make_model()
    prediction = model.predict(torch.rand(2, 3, 32, 32))
    images, masks = model.render_candidates(prediction)
    assert images.shape == (2, 6, 3, 32, 32) and masks.shape == (2, 6, 1, 32, 32)
    cand = prediction["candidates"]
    single, _ = model.render(prediction["verts"][1:], prediction["texture"][1:],
                             U.Pose(cand.rotation[1:, 4], cand.translation[1:, 4]))
    assert torch.allclose(images[1, 4], single[0])
    assert not torch.allclose(images[1, 0], images[1, 1])  # azimuths 0 and 60 look different


# ------------------------------------------------------------------------------------------------
# Swap reconstruction loss


def swap_ready_model():
    model = make_model(small_config(background=True))
    model.set_epoch(200)
    with torch.no_grad():
        for head in (model.shape_head, model.texture_head, model.background_head):
            head[-1].weight.normal_(0, 0.1)
        model.deformation.mlp[-1].weight.normal_(0, 0.01)
    return model


def plant_neighbours(model, prediction, images, pose):
    """Fills the bank with, for each image, one copy of itself per viewpoint bin (at the bin's centre angle
    from the image's own pose), storing its own codes: each image's swap neighbour is then itself."""
    c = model.config
    edges = U.viewpoint_bin_edges(c.viewpoint_bins, c.min_swap_angle)
    for b in range(images.shape[0]):
        for v in range(c.viewpoint_bins):
            angle = torch.deg2rad(((edges[v] + edges[v + 1]) / 2).float())
            R = pose.rotation[b:b + 1] @ invrender.rotation_matrix(angle.reshape(1), 0.0)
            bg = prediction["background_code"][b:b + 1]
            model.memory.push(shape_code=prediction["shape_code"][b:b + 1],
                              texture_code=prediction["texture_code"][b:b + 1], background_code=bg,
                              scale=prediction["scale"][b:b + 1], rotation=R,
                              translation=pose.translation[b:b + 1], image=images[b:b + 1])


def test_swap_with_oneself_reproduces_the_reconstruction():
    model = swap_ready_model()
    torch.manual_seed(2)
    images = torch.rand(2, 3, 32, 32)
    prediction = model.predict(images)
    pose, _ = U.select_pose(prediction["candidates"])
    plant_neighbours(model, prediction, images, pose)
    assert len(model.memory) == 10
    terms = model.swap_losses(prediction, images, pose, generator=torch.Generator().manual_seed(0))
    assert len(model.memory) == 12  # the batch was pushed too
    image, _ = model.render(prediction["verts"], prediction["texture"], pose, prediction["background"])
    plain = U.reconstruction_loss(image, images).mean()
    assert plain > 0.01
    assert terms["swap_shape"].item() == pytest.approx(plain.item(), rel=1e-4)
    assert terms["swap_texture"].item() == pytest.approx(plain.item(), rel=1e-4)


def test_swap_terms_train_their_own_branch():
    model = swap_ready_model()
    torch.manual_seed(3)
    images = torch.rand(2, 3, 32, 32)
    for term, trained, untouched in (("swap_shape", model.deformation, model.texture_generator),
                                     ("swap_texture", model.texture_generator, model.deformation)):
        model.zero_grad(set_to_none=True)
        model.memory.count.zero_()
        model.memory.position.zero_()
        # A different image in the bank: the neighbour is someone else.
        other = torch.rand(2, 3, 32, 32)
        other_pred = model.predict(other)
        prediction = model.predict(images)
        pose, _ = U.select_pose(prediction["candidates"])
        with torch.no_grad():
            plant_neighbours(model, other_pred, other, pose)
        terms = model.swap_losses(prediction, images, pose, generator=torch.Generator().manual_seed(0))
        assert terms[term] > 0
        terms[term].backward()
        assert any(grads(list(trained.parameters()))), term
        assert not any(grads(list(untouched.parameters()))), term
        assert not any(grads(list(model.pose_heads.parameters()))), term


def test_no_swap_before_the_codes_are_live():
    model = swap_ready_model()
    model.set_epoch(0)  # stage 1: shape code of size 0
    images = torch.rand(2, 3, 32, 32)
    prediction = model.predict(images)
    losses = model.step_3d_losses(prediction, images)
    assert losses["swap"].item() == 0 and len(model.memory) == 2
    model.set_epoch(200)
    losses = model.step_3d_losses(model.predict(images), images)
    assert set(losses) == {"reconstruction", "regularization", "swap", "total"}
    assert torch.isfinite(losses["total"])


def test_train_step_alternates_and_moves_only_the_active_branch():
    model = swap_ready_model()
    model.train()
    optimizers = model.configure_optimizers()
    groups = model.branch_parameters()
    images = torch.rand(2, 3, 32, 32)
    g = torch.Generator().manual_seed(0)

    def snapshot(params):
        return [p.detach().clone() for p in params]

    def moved(before, params):
        return [not torch.equal(a, p) for a, p in zip(before, params)]

    for expected in ("pose", "3d", "pose", "3d"):
        pose_before, shape_before = snapshot(groups["pose"]), snapshot(groups["3d"])
        enc_before = snapshot(groups["encoder"])
        out = model.train_step(images, optimizers, generator=g)
        assert U.STEPS[int(out["step"])] == expected
        assert torch.isfinite(out["total"])
        assert any(moved(enc_before, groups["encoder"]))
        if expected == "pose":
            assert any(moved(pose_before, groups["pose"])) and not any(moved(shape_before, groups["3d"]))
        else:  # Adam's momentum from the previous P-step must not move the pose heads
            assert any(moved(shape_before, groups["3d"])) and not any(moved(pose_before, groups["pose"]))
    assert model.state_dict()["iteration"].item() == 4


def test_swap_shape_takes_the_neighbours_scale_texture_and_pose():
    """Eq. 2 with neighbours other than oneself: m_s (nearest shape code) lends its scale, texture, pose and
    background to our unscaled shape; m_t (nearest texture code) its scaled shape, pose and background to
    our texture; each compared with the neighbour's image."""
    model = swap_ready_model()
    with torch.no_grad():  # scales that differ between images
        model.scale_head[-1].weight.normal_(0, 0.5)
    torch.manual_seed(4)
    images = torch.zeros(1, 3, 32, 32)
    image_s, image_t = torch.ones(1, 3, 32, 32), torch.full((1, 3, 32, 32), 0.5)
    prediction = model.predict(images)
    pred_s, pred_t = model.predict(image_s), model.predict(image_t)
    assert not torch.allclose(prediction["scale"], pred_s["scale"], atol=1e-3)
    pose, _ = U.select_pose(prediction["candidates"])
    pose_s, _ = U.select_pose(pred_s["candidates"])
    pose_t, _ = U.select_pose(pred_t["candidates"])
    c = model.config
    edges = U.viewpoint_bin_edges(c.viewpoint_bins, c.min_swap_angle)
    far = 100.0
    with torch.no_grad():  # in every bin: image_s with our shape code, image_t with our texture code
        for v in range(c.viewpoint_bins):
            angle = torch.deg2rad(((edges[v] + edges[v + 1]) / 2).float()).reshape(1)
            R = pose.rotation @ invrender.rotation_matrix(angle, 0.0)
            for image, pred, sh, tx in ((image_s, pred_s, prediction["shape_code"], prediction["texture_code"] + far),
                                        (image_t, pred_t, prediction["shape_code"] + far, prediction["texture_code"])):
                model.memory.push(shape_code=sh, texture_code=tx, background_code=pred["background_code"],
                                  scale=pred["scale"], rotation=R, translation=pose.translation, image=image)
    terms = model.swap_losses(prediction, images, pose, generator=torch.Generator().manual_seed(0))
    shape_only = prediction["verts"] / prediction["scale"][:, None]
    image_sh, _ = model.render(shape_only * pred_s["scale"][:, None], pred_s["texture"], pose_s, pred_s["background"])
    image_tx, _ = model.render(pred_t["verts"], prediction["texture"], pose_t, pred_t["background"])
    # The same computation in the same order: equal to float rounding (a wrong variant differs by ~1e-3).
    assert terms["swap_shape"].item() == pytest.approx(U.reconstruction_loss(image_sh, image_s).item(), rel=1e-6)
    assert terms["swap_texture"].item() == pytest.approx(U.reconstruction_loss(image_tx, image_t).item(), rel=1e-6)
    image_wrong, _ = model.render(prediction["verts"], pred_s["texture"], pose_s, pred_s["background"])
    wrong = U.reconstruction_loss(image_wrong, image_s).item()  # our scale instead of the neighbour's
    assert wrong != pytest.approx(terms["swap_shape"].item(), rel=2e-4)
