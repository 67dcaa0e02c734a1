"""Ucar et al. 2019 voxel autoencoders (invrender.models.ucar).

Shapes for every objective and azimuth mode, the losses on hand-computed cases, the projection against
invrender.project_voxels, the azimuth gradient per projection mode, parameter groups, config validation,
and short training runs that must lower the loss.
"""

import math

import pytest
import torch

import invrender
from invrender.models import ucar
from invrender.models.ucar import (AzimuthLatent, Decoder, Encoder, Texturizer, UcarConfig, UcarModel, aae_losses,
                                   kl_divergence, mu_vae_latent_loss, reconstruction_loss)

# Small widths keep the tests fast; the architecture (layer count, strides, sizes) is the paper's.
SMALL = dict(channels=16, texturizer_hidden=64, discriminator_hidden=32, dataset_size=16)


def small_config(**kw):
    return UcarConfig(**{**SMALL, **kw})


# ------------------------------------------------------------------------------------------------
# Config


def test_config_defaults_are_the_papers():
    cfg = UcarConfig()
    assert (cfg.image_size, cfg.latent_dim, cfg.objective, cfg.beta) == (28, 19, "mu_vae", 30.0)
    assert (cfg.azimuth, cfg.projection, cfg.tau, cfg.texturizer) == ("latent", "trilinear", 0.5, True)
    assert (cfg.lr, cfg.betas, cfg.grad_clip, cfg.batch_size) == (1e-3, (0.9, 0.999), 1.0, 64)
    assert cfg.mu_clip == pytest.approx(6 * math.sqrt(20)) and cfg.logvar_clip == pytest.approx(math.sqrt(20))


@pytest.mark.parametrize("field,value", [
    ("objective", "gan"), ("azimuth", "learned"), ("projection", "bilinear"), ("tau", 0.0), ("tau", -1.0),
    ("beta", -1.0), ("latent_dim", 0), ("image_size", 30), ("image_size", 3), ("dataset_size", 0),
    ("lr", 0.0), ("grad_clip", float("nan")), ("betas", (0.9,)), ("betas", (1.5, 0.9)), ("texturizer", "yes"),
    ("occupancy_bias", float("inf")),
    ("batch_size", 2.5),
])
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        UcarConfig(**{field: value})


def test_forward_rejects_bad_inputs():
    model = UcarModel(small_config())
    with pytest.raises(ValueError, match="images"):
        model(torch.rand(2, 1, 32, 32), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="index"):
        model(torch.rand(2, 1, 28, 28))
    with pytest.raises(ValueError, match="dataset_size"):
        model(torch.rand(2, 1, 28, 28), torch.tensor([0, 16]))


# ------------------------------------------------------------------------------------------------
# Architecture


def test_encoder_and_decoder_match_the_paper_at_full_width():
    cfg = UcarConfig(dataset_size=4)
    enc, dec = Encoder(cfg), Decoder(cfg)
    convs = [m for m in enc.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 4 and all(c.kernel_size == (3, 3) and c.stride == (2, 2) and c.out_channels == 128
                                   for c in convs)
    assert enc.mu.out_features == 19 and enc.logvar.out_features == 19 and enc.mu.in_features == 128 * 2 * 2
    assert dec.linear.out_features == 7 ** 3 * 128
    deconvs = [m for m in dec.modules() if isinstance(m, torch.nn.ConvTranspose3d)]
    assert [(d.in_channels, d.out_channels) for d in deconvs] == [(128, 64), (64, 1)]
    assert all(d.kernel_size == (3, 3, 3) and d.stride == (2, 2, 2) for d in deconvs)
    tex = Texturizer(cfg)
    assert (tex.hidden.in_features, tex.hidden.out_features, tex.out.out_features) == (784, 1000, 784)
    az = AzimuthLatent(cfg)
    assert az.mean.shape == (4, 1) and az.logvar.shape == (4, 1)
    assert (az.hidden.in_features, az.hidden.out_features, az.out.out_features) == (1, 10, 1)


@pytest.mark.parametrize("size,base,stages", [(28, 7, 2), (32, 4, 3), (64, 4, 4)])
def test_decoder_sizes(size, base, stages):
    assert ucar.decoder_plan(size) == (base, stages)
    dec = Decoder(small_config(image_size=size)).eval()
    v = dec(torch.randn(2, 19))
    assert v.shape == (2, 1, size, size, size)


def test_encoder_outputs_are_norm_clipped():
    cfg = small_config(mu_clip=0.5, logvar_clip=0.25)
    enc = Encoder(cfg).eval()
    with torch.no_grad():
        enc.mu.bias.fill_(10.0)
        enc.logvar.bias.fill_(-10.0)
        mu, logvar = enc(torch.rand(3, 1, 28, 28))
    assert torch.allclose(mu.norm(dim=1), torch.full((3,), 0.5), atol=1e-5)
    assert torch.allclose(logvar.norm(dim=1), torch.full((3,), 0.25), atol=1e-5)


FORWARD_CASES = [(o, a) for o in ("vae", "beta_vae", "aae", "mu_vae") for a in ("constant", "random", "latent")]


@pytest.mark.parametrize("objective,azimuth", FORWARD_CASES + [("aae", "encoder")])
def test_forward_shapes_and_ranges(objective, azimuth):
    cfg = small_config(objective=objective, azimuth=azimuth, texturizer=objective != "vae")
    model = UcarModel(cfg)
    images = torch.rand(3, 1, 28, 28)
    out = model(images, torch.tensor([0, 5, 15]))
    assert out["voxels"].shape == (3, 1, 28, 28, 28)
    assert out["projection"].shape == out["texture"].shape == (3, 1, 28, 28)
    assert out["mu"].shape == out["logvar"].shape == out["z"].shape == (3, 19)
    assert out["azimuth"].shape == (3,)
    assert out["voxels"].min() >= 0 and out["voxels"].max() <= 1
    assert out["projection"].min() >= 0 and out["projection"].max() <= 1
    assert out["azimuth"].abs().max() <= math.pi
    if azimuth == "constant":
        assert torch.equal(out["azimuth"], torch.zeros(3))
    if azimuth == "latent":
        assert out["azimuth_mu"].shape == out["azimuth_logvar"].shape == (3, 1)
    else:
        assert "azimuth_mu" not in out
    if azimuth == "encoder":  # section 4.2: theta = pi * s, s the encoder's azimuth code in (-1, 1)
        assert out["azimuth_code"].shape == (3, 1) and out["azimuth_code"].abs().max() < 1
        assert torch.allclose(out["azimuth"], math.pi * out["azimuth_code"][:, 0])
    else:
        assert "azimuth_code" not in out
    if not cfg.texturizer:
        assert out["texture"] is out["projection"]
    terms = model.losses(out, images)
    assert torch.isfinite(terms["total"])
    expected = {"vae": "kl_divergence", "beta_vae": "kl_divergence", "aae": "generator", "mu_vae": "mu_vae_latent"}
    assert expected[objective] in terms
    assert ("texture_loss" in terms) == cfg.texturizer
    assert ("azimuth_latent" in terms) == (azimuth == "latent")


def test_random_azimuth_covers_minus_pi_to_pi():
    model = UcarModel(small_config(azimuth="random"))
    theta = model.azimuth(4000, None, torch.zeros(1))["azimuth"]
    assert theta.min() >= -math.pi and theta.max() <= math.pi
    assert theta.min() < -3.0 and theta.max() > 3.0 and abs(float(theta.mean())) < 0.15


def test_azimuth_latent_maps_tanh_output_to_pi_times_s():
    az = AzimuthLatent(small_config())
    with torch.no_grad():
        az.mean[2] = 0.7
    idx = torch.tensor([2, 3])
    theta, mean, logvar = az(idx, sample=False)
    s = torch.tanh(az.out(torch.tanh(az.hidden(az.mean[idx])))).squeeze(1)
    assert torch.allclose(theta, math.pi * s)
    assert torch.equal(mean, az.mean[idx]) and torch.equal(logvar, az.logvar[idx])


# ------------------------------------------------------------------------------------------------
# Projection through invrender


def test_constant_azimuth_projection_is_invrender_projection_with_identity():
    cfg = small_config(azimuth="constant", texturizer=False)
    model = UcarModel(cfg).eval()
    out = model(torch.rand(2, 1, 28, 28))
    eye = torch.eye(3).expand(2, 3, 3)
    expected = invrender.project_voxels(out["voxels"] / cfg.tau, eye, mode="trilinear", tau=cfg.tau)
    assert torch.allclose(out["projection"], expected, atol=1e-6)
    # tau cancels: eq. 2 on the occupancy, 1 - exp(-sum_k V), summed along depth (dim 2).
    eq2 = 1 - torch.exp(-out["voxels"].sum(2))
    assert torch.allclose(out["projection"], eq2, atol=1e-5)


def test_fixed_camera_elevation_turns_every_view():
    cfg = small_config(azimuth="random", texturizer=False, elevation_deg=30.0)
    model = UcarModel(cfg).eval()
    out = model(torch.rand(3, 1, 28, 28))
    rotation = invrender.rotation_matrix(out["azimuth"], torch.full((3,), math.pi / 6))
    expected = invrender.project_voxels(out["voxels"] / cfg.tau, rotation, mode="trilinear", tau=cfg.tau)
    assert torch.allclose(out["projection"], expected, atol=1e-6)
    level = invrender.project_voxels(out["voxels"] / cfg.tau, invrender.rotation_matrix(out["azimuth"]), tau=cfg.tau)
    assert not torch.allclose(out["projection"], level, atol=1e-3)
    for bad in (91.0, "30", True):
        with pytest.raises(ValueError, match="elevation_deg"):
            UcarConfig(elevation_deg=bad)


def test_latent_azimuth_projection_uses_its_rotation():
    cfg = small_config(azimuth="latent", texturizer=False)
    model = UcarModel(cfg).eval()
    with torch.no_grad():
        model.azimuth_latent.mean[:] = torch.linspace(-2, 2, 16)[:, None]
        model.decoder.deconvs[-1].bias.fill_(-4.0)  # unsaturated projection (sum of ~0.02 x 28)
    idx = torch.tensor([1, 14])
    out = model(torch.rand(2, 1, 28, 28), idx)
    assert out["azimuth"].abs().min() > 0.05
    rot = invrender.rotation_matrix(out["azimuth"])
    expected = invrender.project_voxels(out["voxels"] / cfg.tau, rot, mode="trilinear", tau=cfg.tau)
    assert torch.allclose(out["projection"], expected, atol=1e-6)
    unrotated = invrender.project_voxels(out["voxels"] / cfg.tau, None, tau=cfg.tau)
    assert not torch.allclose(out["projection"], unrotated, atol=1e-3)


@pytest.mark.parametrize("projection,nonzero", [("trilinear", True), ("nearest", False)])
def test_azimuth_latent_gradient_depends_on_projection_mode(projection, nonzero):
    cfg = small_config(azimuth="latent", projection=projection, texturizer=False)
    model = UcarModel(cfg)
    with torch.no_grad():
        model.azimuth_latent.mean[:] = 0.4
    images = torch.rand(4, 1, 28, 28)
    out = model(images, torch.arange(4))
    loss = reconstruction_loss(out["projection"], images)  # image term only
    g_mean, g_logvar = torch.autograd.grad(loss, model.azimuth_latent.latent_parameters())
    if nonzero:
        assert g_mean[:4].abs().sum() > 1e-6
    else:
        assert g_mean.abs().sum() == 0 and g_logvar.abs().sum() == 0
    assert g_mean[4:].abs().sum() == 0  # examples outside the batch get no gradient


# ------------------------------------------------------------------------------------------------
# Losses on hand-computed cases


def test_reconstruction_loss_is_per_image_sum_then_batch_mean():
    pred = torch.tensor([[[[0.0, 1.0], [0.5, 0.5]]], [[[1.0, 1.0], [1.0, 1.0]]]])
    target = torch.tensor([[[[1.0, 1.0], [0.0, 0.5]]], [[[0.0, 0.0], [1.0, 1.0]]]])
    # image 0: 1 + 0 + 0.25 + 0 = 1.25; image 1: 1 + 1 = 2; mean 1.625
    assert reconstruction_loss(pred, target).item() == pytest.approx(1.625)
    with pytest.raises(ValueError):
        reconstruction_loss(pred, target[:, :, :1])


def test_kl_divergence_closed_form():
    assert kl_divergence(torch.zeros(3, 19), torch.zeros(3, 19)).item() == 0.0
    mu = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    logvar = torch.tensor([[0.0, math.log(4.0)], [math.log(0.25), 0.0]])
    # KL = 0.5 * sum(var + mu^2 - 1 - log var) per row
    row0 = 0.5 * ((1 + 1 - 1 - 0) + (4 + 4 - 1 - math.log(4)))
    row1 = 0.5 * ((0.25 + 0 - 1 - math.log(0.25)) + (1 + 1 - 1 - 0))
    assert kl_divergence(mu, logvar).item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_mu_vae_latent_loss_on_2x2():
    mu = torch.tensor([[1.0, 2.0], [-4.0, 0.5]])      # row sums 3, -3.5 -> mean -0.25 -> 0.25
    logvar = torch.tensor([[0.5, -1.0], [2.0, 1.5]])  # row sums -0.5, 3.5 -> mean 1.5 -> 1.5
    assert mu_vae_latent_loss(mu, logvar).item() == pytest.approx(1.75)
    # zero at a spread-out batch whose moments match the prior's
    assert mu_vae_latent_loss(torch.tensor([[5.0, 1.0], [-5.0, -1.0]]), torch.zeros(2, 2)).item() == 0.0


def test_aae_losses_with_a_fixed_discriminator():
    class Const(torch.nn.Module):
        def forward(self, z):  # logit = first coordinate
            return z[:, 0]

    z = torch.tensor([[0.0, 9.0], [2.0, 9.0]], requires_grad=True)
    prior = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    gen, disc = aae_losses(Const(), z, prior)
    softplus = torch.nn.functional.softplus
    # generator: BCE(logit, 1) = softplus(-logit); discriminator: real softplus(-l), fake softplus(l)
    assert gen.item() == pytest.approx(float((softplus(torch.tensor(0.0)) + softplus(torch.tensor(-2.0))) / 2))
    real = float((softplus(torch.tensor(-1.0)) + softplus(torch.tensor(1.0))) / 2)
    fake = float((softplus(torch.tensor(0.0)) + softplus(torch.tensor(2.0))) / 2)
    assert disc.item() == pytest.approx(real + fake)
    assert gen.requires_grad and not disc.requires_grad  # the discriminator term sees z detached


def test_losses_combine_per_objective():
    images = torch.rand(2, 1, 28, 28)
    for objective in ["vae", "beta_vae", "mu_vae", "aae"]:
        model = UcarModel(small_config(objective=objective, azimuth="latent"))
        out = model(images, torch.tensor([0, 1]))
        t = model.losses(out, images)
        recon = reconstruction_loss(out["projection"], images) + reconstruction_loss(out["texture"], images)
        assert torch.allclose(t["reconstruction"], recon)
        reg = {"vae": t["kl_divergence"], "beta_vae": 30.0 * t["kl_divergence"],
               "mu_vae": mu_vae_latent_loss(out["mu"], out["logvar"]), "aae": t.get("generator")}[objective]
        az = (mu_vae_latent_loss if objective == "mu_vae" else kl_divergence)(out["azimuth_mu"], out["azimuth_logvar"])
        assert torch.allclose(t["total"], recon + reg + az, rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# Optimisation


def test_parameter_groups_partition_the_parameters():
    for objective, azimuth in [("mu_vae", "latent"), ("aae", "latent"), ("vae", "constant")]:
        model = UcarModel(small_config(objective=objective, azimuth=azimuth))
        groups = model.parameter_groups()
        ids = [id(p) for g in groups.values() for p in g]
        assert len(ids) == len(set(ids)) == len(list(model.parameters()))
        if azimuth == "latent":
            latent = model.azimuth_latent
            assert [id(p) for p in groups["azimuth"]] == [id(latent.mean), id(latent.logvar)]
            assert id(model.azimuth_latent.hidden.weight) in {id(p) for p in groups["main"]}
        else:
            assert groups["azimuth"] == []
        assert bool(groups["discriminator"]) == (objective == "aae")
        assert set(model.configure_optimizers()) == {k for k, v in groups.items() if v}


def test_clip_gradients_clips_each_tensor():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    a.grad, b.grad = torch.tensor([3.0, 4.0]), torch.tensor([0.1, 0.0, 0.0])
    ucar.clip_gradients([a, b], 1.0)
    assert torch.allclose(a.grad, torch.tensor([0.6, 0.8])) and torch.allclose(b.grad, torch.tensor([0.1, 0.0, 0.0]))


def synthetic_images(n=8, size=28):
    """Projections of random small voxel blobs at random azimuths, made with invrender."""
    g = torch.Generator().manual_seed(1)
    c = (torch.arange(size) + 0.5) / size * 2 - 1
    zz, yy, xx = torch.meshgrid(c, c, c, indexing="ij")
    vox = torch.zeros(n, 1, size, size, size)
    for i in range(n):
        centre = (torch.rand(3, generator=g) - 0.5) * 0.6
        radii = 0.25 + 0.25 * torch.rand(3, generator=g)
        d = ((xx - centre[0]) / radii[0]) ** 2 + ((yy - centre[1]) / radii[1]) ** 2 + ((zz - centre[2]) / radii[2]) ** 2
        vox[i, 0] = (d <= 1).float()
    theta = (torch.rand(n, generator=g) * 2 - 1) * math.pi
    return invrender.project_voxels(vox, invrender.rotation_matrix(theta), tau=0.5).detach()


def mean(xs):
    return sum(xs) / len(xs)


@pytest.mark.parametrize("objective,azimuth", [("mu_vae", "latent"), ("aae", "random"), ("beta_vae", "constant"),
                                               ("aae", "encoder")])
def test_short_training_lowers_the_loss(objective, azimuth):
    """30 Adam steps on 8 blob projections; occupancy_bias -4 starts the projection unsaturated."""
    images = synthetic_images()
    assert images.max() > 0.5 and images.min() == 0.0
    model = UcarModel(small_config(objective=objective, azimuth=azimuth, dataset_size=8, occupancy_bias=-4.0))
    optimizers = model.configure_optimizers()
    index = torch.arange(8)
    before = model.azimuth_latent.mean.detach().clone() if azimuth == "latent" else None
    history = [model.train_step(images, index, optimizers) for _ in range(30)]
    total = [h["total"].item() for h in history]
    projection = [h["projection_loss"].item() for h in history]
    assert all(math.isfinite(t) for t in total)
    assert mean(total[-5:]) < 0.8 * mean(total[:3]), total
    # the 3D pipeline itself learns, not only the texturizer (observed: -25 to -35 %)
    assert mean(projection[-5:]) < 0.9 * mean(projection[:3]), projection
    if before is not None:  # the azimuth latent's own optimizer moved it
        assert not torch.equal(model.azimuth_latent.mean, before)


def test_short_training_from_the_codes_initialisation():
    """Default init (occupancy 0.5, saturated projection): the loss falls, first through the texturizer."""
    images = synthetic_images()
    model = UcarModel(small_config(dataset_size=8))
    optimizers = model.configure_optimizers()
    total = [model.train_step(images, torch.arange(8), optimizers)["total"].item() for _ in range(30)]
    # observed: about 890 -> 735 (-18 %)
    assert mean(total[-5:]) < 0.9 * mean(total[:3]), total


def test_train_step_gives_each_optimizer_its_own_group():
    images = synthetic_images(4)
    index = torch.arange(4)

    def snapshot(model):
        groups = model.parameter_groups()
        return {k: [p.detach().clone() for p in v] for k, v in groups.items()}

    def changed(a, b):
        return any(not torch.equal(x, y) for x, y in zip(a, b))

    # One optimizer frozen (lr 0) at a time: only the other one's parameters move (with the main optimizer
    # frozen the free azimuth parameters move; the main step must not touch them).
    for frozen, moving in (("main", "azimuth"), ("azimuth", "main")):
        model = UcarModel(small_config(dataset_size=4))
        opts = model.configure_optimizers()
        opts[frozen].param_groups[0]["lr"] = 0.0
        before = snapshot(model)
        model.train_step(images, index, opts)
        after = snapshot(model)
        assert changed(before[moving], after[moving]) and not changed(before[frozen], after[frozen]), frozen


def test_eval_mode_uses_the_means():
    model = UcarModel(small_config()).eval()
    images, index = torch.rand(2, 1, 28, 28), torch.tensor([3, 7])
    with torch.no_grad():
        model.azimuth_latent.logvar.fill_(2.0)
        a, b = model(images, index), model(images, index)
    assert torch.equal(a["z"], a["mu"]) and torch.equal(a["projection"], b["projection"])
    assert torch.equal(a["azimuth"], b["azimuth"])
    model.train()
    with torch.no_grad():
        c, d = model(images, index), model(images, index)
    assert not torch.equal(c["z"], d["z"]) and not torch.equal(c["azimuth"], d["azimuth"])


def test_train_and_eval_cli_end_to_end(tmp_path, monkeypatch):
    import json

    from invrender import synthetic
    from invrender.cli import main

    root = tmp_path / "data"
    synthetic.generate_dataset(root, objects_per_category=5, categories=("car",), views=4, image_size=32,
                               points=100, voxel_resolution=16, progress=False)
    run = tmp_path / "run"
    args = ["train", "ucar", "--config", "configs/ucar_synthetic.yaml", "--run-dir", str(run), "--no-progress",
            f"data.root={root}", "steps=3", "batch_size=4", "vis_every=3", "ckpt_every=3", "log_every=1"]
    assert main(args) == 0
    assert list((run / "checkpoints").glob("*.pt"))
    assert list((run / "samples").rglob("turntable*.png"))
    assert main(["eval", str(run)]) == 0
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["test_views"] > 0 and 0 <= metrics["test_voxel_iou_best_azimuth"] <= 1


# ------------------------------------------------------------------------------------------------
# Encoder azimuth (AAE, section 4.2), azimuth learning rate, one decode per step


def test_encoder_azimuth_needs_aae_and_joins_the_discriminator():
    with pytest.raises(ValueError, match="azimuth='encoder' needs objective='aae'"):
        UcarConfig(objective="mu_vae", azimuth="encoder")
    model = UcarModel(small_config(objective="aae", azimuth="encoder"))
    assert model.discriminator.net[0].in_features == 19 + 1 and model.azimuth_latent is None
    seen = []
    model.discriminator.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach()))
    torch.manual_seed(0)
    out = model(torch.rand(64, 1, 28, 28))
    model.losses(out, torch.rand(64, 1, 28, 28))
    code, prior = seen[0], seen[1]  # generator term on (z, s); discriminator's prior sample
    assert torch.equal(code[:, :19], out["z"].detach()) and torch.equal(code[:, 19], out["azimuth_code"][:, 0].detach())
    # the prior of the azimuth code is U(-1, 1), of z N(0, I)
    assert prior[:, 19].abs().max() <= 1 and prior[:, 19].min() < -0.5 and prior[:, 19].max() > 0.5
    assert prior[:, :19].abs().max() > 1.5


def test_azimuth_lr_sets_only_the_azimuth_optimizer():
    opts = UcarModel(small_config(azimuth_lr=0.05)).configure_optimizers()
    assert opts["azimuth"].param_groups[0]["lr"] == 0.05 and opts["main"].param_groups[0]["lr"] == 1e-3
    assert UcarModel(small_config()).configure_optimizers()["azimuth"].param_groups[0]["lr"] == 1e-3
    with pytest.raises(ValueError, match="azimuth_lr"):
        UcarConfig(azimuth_lr=-1.0)
    latent = UcarModel(small_config(azimuth_init_logvar=-6.0)).azimuth_latent
    assert torch.equal(latent.logvar, torch.full((16, 1), -6.0)) and torch.equal(latent.mean, torch.zeros(16, 1))
    with pytest.raises(ValueError, match="azimuth_init_logvar"):
        UcarConfig(azimuth_init_logvar=float("nan"))


def test_train_step_decodes_once_and_renders_the_updated_azimuth():
    model = UcarModel(small_config(dataset_size=4))
    calls = []
    model.decoder.register_forward_hook(lambda *a: calls.append("decode"))
    rendered = []
    render = model.render
    model.render = lambda shape, index=None: rendered.append(render(shape, index)) or rendered[-1]
    opts = model.configure_optimizers()
    model.train_step(synthetic_images(4), torch.arange(4), opts)
    assert calls == ["decode"] and len(rendered) == 2
    # the second render comes after the azimuth step: same z and voxels, a different azimuth
    assert torch.equal(rendered[0]["voxels"], rendered[1]["voxels"])
    assert not torch.equal(rendered[0]["azimuth"], rendered[1]["azimuth"])


def test_reduce_gradients_hook_sees_every_group():
    model = UcarModel(small_config(objective="aae", azimuth="latent", dataset_size=4))
    groups = model.parameter_groups()
    seen = []

    def hook(params):
        assert all(p.grad is not None for p in params)
        seen.append(len(params))
    model.train_step(synthetic_images(4), torch.arange(4), model.configure_optimizers(), reduce_gradients=hook)
    assert seen == [len(groups["azimuth"]), len(groups["main"]), len(groups["discriminator"])]


def test_azimuth_latent_weight_scales_its_term():
    torch.manual_seed(0)
    images, index = torch.rand(4, 1, 28, 28), torch.arange(4)
    totals = {}
    for w in (0.0, 1.0, 2.5):
        model = UcarModel(small_config(azimuth_latent_weight=w, dataset_size=4)).eval()
        with torch.no_grad():
            model.azimuth_latent.mean.copy_(torch.tensor([[0.5], [1.0], [-0.2], [0.3]]))
            terms = model.losses(model(images, index), images)
        totals[w] = (terms["total"] - terms["reconstruction"] - terms["mu_vae_latent"]).item()
        assert terms["azimuth_latent"].item() == pytest.approx(1.6 / 4)  # |mean sum mu| + |mean sum logvar|
    assert totals[0.0] == pytest.approx(0.0, abs=1e-3)  # float32 rounding of a total of about 200
    assert totals[1.0] == pytest.approx(0.4, abs=1e-3) and totals[2.5] == pytest.approx(1.0, abs=1e-3)
