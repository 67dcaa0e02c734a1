"""IG-GAN (Lunz et al. 2020) and its baselines: networks, losses, updates, training, resume, DDP, CLI."""

import math
import os

import pytest
import torch

import invrender
from invrender import training
from invrender.errors import ConfigError
from invrender.models import iggan as G
from invrender.models.networks import DCGANDiscriminator

from .test_training import _free_ports, _spawn
from .test_unicorn_task import _quiet

TINY_MODEL = {"grid_size": 8, "generator_channels": 8, "renderer_channels": 4, "discriminator_channels": 8,
              "latent_dim": 6}


def tiny_config(variant="iggan", **kw):
    task = G.IgganTask(variant)
    cfg = training.resolve_config(task)
    cfg = training.merge_config(cfg, {"model": dict(TINY_MODEL), "data": {"objects": 4, "categories": ["chair"]},
                                      "pretrain": {"steps": 0}, "batch_size": 4, "steps": 4, "log_every": 1,
                                      "vis_every": 0, "ckpt_every": 0, "eval": {"num_samples": 8}})
    cfg = training.merge_config(cfg, kw)
    cfg["task"] = {"iggan": "iggan", "visual_hull": "visual_hull_gan", "absorption": "absorption_gan",
                   "dcgan2d": "dcgan2d"}[variant]
    return task, cfg


# ------------------------------------------------------------------------------------------------
# networks


@pytest.mark.parametrize("grid", [8, 16, 32])
def test_network_shapes(grid):
    g3 = G.Generator3D(grid, latent_dim=5, channels=16)
    x = g3(torch.randn(3, 5))
    assert x.shape == (3, 1, grid, grid, grid) and 0 <= float(x.min()) and float(x.max()) <= 1
    g2 = G.Generator2D(2 * grid, latent_dim=5, channels=8)
    assert g2(torch.randn(3, 5)).shape == (3, 1, 2 * grid, 2 * grid)
    rn = G.RenderNet(2 * grid, channels=4)
    image = rn(torch.rand(3, 1, 2 * grid, 2 * grid, 2 * grid))
    assert image.shape == (3, 1, 2 * grid, 2 * grid)
    d = DCGANDiscriminator(2 * grid, 1, 8)
    assert d(image).shape == (3,)


def test_paper_sized_networks_follow_the_cited_architectures():
    g = G.Generator3D(64, 200, 512)
    convs = [m for m in g.modules() if isinstance(m, torch.nn.ConvTranspose3d)]
    assert [c.out_channels for c in convs] == [512, 256, 128, 64, 1]  # Wu et al. 2016
    d = DCGANDiscriminator(128, 1, 64)
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 512, 1]
    assert all(hasattr(c, "weight_orig") for c in convs)  # spectral normalisation everywhere
    rn = G.RenderNet(128, 32, blocks_3d=2, blocks_2d=4)
    assert sum(isinstance(m, G._Residual) for m in rn.encode) == 2
    assert sum(isinstance(m, G._Residual) for m in rn.decode) == 4


def test_discriminator_rejects_the_wrong_size():
    with pytest.raises(ValueError, match="image_size"):
        DCGANDiscriminator(48)
    with pytest.raises(ValueError, match="images"):
        DCGANDiscriminator(16)(torch.rand(2, 1, 32, 32))


def test_render_net_projection_unit_sees_depth():
    # Two grids with the same silhouette but the mass at different depths must be told apart: the projection
    # unit folds depth into channels, so the network is not a function of the depth sum only.
    torch.manual_seed(0)
    rn = G.RenderNet(16, channels=4).eval()
    front, back = torch.zeros(1, 1, 16, 16, 16), torch.zeros(1, 1, 16, 16, 16)
    front[:, :, :4, 4:12, 4:12] = 1
    back[:, :, 12:, 4:12, 4:12] = 1
    assert not torch.allclose(rn(front), rn(back))


# ------------------------------------------------------------------------------------------------
# rendering of samples


def test_rigid_embedding_keeps_the_object_inside_the_larger_grid():
    model = G.IgganModel(G.IgganConfig(**TINY_MODEL))
    cube = torch.ones(5, 1, 8, 8, 8)  # the generator's whole cube, corners included
    R = model.sample_rotations(5, torch.Generator().manual_seed(0))
    embedded = model.embed(cube, R)
    assert embedded.shape == (5, 1, 16, 16, 16)
    # Mass is conserved (no clipping): trilinear resampling of a rotated solid keeps its volume approximately.
    assert torch.allclose(embedded.sum((1, 2, 3, 4)), cube.sum((1, 2, 3, 4)), rtol=0.1)
    border = torch.cat([embedded[..., 0, :, :], embedded[..., -1, :, :], embedded[..., :, 0, :],
                        embedded[..., :, -1, :], embedded[..., 0], embedded[..., -1]])
    assert float(border.abs().max()) == 0.0  # nothing reaches the larger grid's faces


@pytest.mark.parametrize("variant", ["visual_hull", "absorption"])
def test_baseline_renders_match_their_ops_in_the_embedding_frame(variant):
    model = G.IgganModel(G.IgganConfig(variant=variant, **TINY_MODEL))
    voxels = torch.rand(2, 1, 8, 8, 8, dtype=torch.float64)
    R = invrender.rotation_matrix(torch.tensor([0.3, 1.2], dtype=torch.float64))
    image = model.render(voxels, R)
    embedded = invrender.rotate_voxels(voxels, R, size=16)
    if variant == "visual_hull":
        expected = invrender.project_voxels(embedded)
    else:
        expected = invrender.raymarch(embedded).image
    assert image.shape == (2, 1, 16, 16)
    torch.testing.assert_close(image, expected, atol=2e-2, rtol=0)


def test_offtheshelf_render_matches_the_voxel_surface_renderer():
    model = G.IgganModel(G.IgganConfig(**TINY_MODEL))
    voxels = torch.rand(3, 1, 8, 8, 8)
    R = model.sample_rotations(3, torch.Generator().manual_seed(1))
    t = torch.tensor([0.2, 0.5, 0.9])
    expected, _ = invrender.renderers.render_voxel_surface(voxels, R, t, image_size=16, extent=2.0)
    assert torch.equal(model.render_offtheshelf(voxels, R, t), expected)
    assert not model.render_offtheshelf(voxels.requires_grad_(), R, t).requires_grad  # not differentiable


def test_views_follow_the_configured_distribution():
    model = G.IgganModel(G.IgganConfig(azimuth_range=(-60, 60), elevation_range=(15, 60), **TINY_MODEL))
    R = model.sample_rotations(400, torch.Generator().manual_seed(0)).double()
    # The camera direction in object coordinates is R^T e_z: its elevation is asin(y), azimuth atan2(x, z).
    cam = R.transpose(1, 2) @ torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    elevation = torch.rad2deg(torch.asin(cam[:, 1]))
    azimuth = torch.rad2deg(torch.atan2(cam[:, 0], cam[:, 2]))
    assert 15 - 1e-4 <= float(elevation.min()) and float(elevation.max()) <= 60 + 1e-4
    assert -60 - 1e-4 <= float(azimuth.min()) and float(azimuth.max()) <= 60 + 1e-4
    assert float(azimuth.std()) > 25  # spread over the range, not constant


# ------------------------------------------------------------------------------------------------
# losses


def test_losses_on_hand_computed_cases():
    real, fake = torch.tensor([2.0, 0.0]), torch.tensor([-1.0, 0.0])
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731  softplus
    expected_d = (sp(-2.0) + sp(0.0)) / 2 + (sp(-1.0) + sp(0.0)) / 2
    assert math.isclose(float(G.discriminator_losses(real, fake)), expected_d, rel_tol=1e-6)
    assert math.isclose(float(G.generator_loss(fake)), (sp(1.0) + sp(0.0)) / 2, rel_tol=1e-6)
    neural = torch.tensor([1.0, 3.0], requires_grad=True)
    target = torch.tensor([0.5, 1.0], requires_grad=True)
    loss = G.dom_loss(neural, target)
    assert math.isclose(float(loss), (0.25 + 4.0) / 2)
    loss.backward()
    assert torch.allclose(neural.grad, torch.tensor([0.5, 2.0]))  # d/dn mean (n - t)^2 = (n - t)
    assert target.grad is None or not target.grad.any()  # the off-the-shelf side is a target


# ------------------------------------------------------------------------------------------------
# updates


def _changed(before, module):
    return {n for n, p in module.named_parameters() if not torch.equal(before[n], p.detach())}


def test_each_update_touches_only_its_network():
    torch.manual_seed(0)
    model = G.IgganModel(G.IgganConfig(**TINY_MODEL))
    opts = model.configure_optimizers()
    snapshot = {k: {n: p.detach().clone() for n, p in m.named_parameters()}
                for k, m in (("g", model.generator), ("d", model.discriminator), ("r", model.renderer))}
    voxels = model.generator(model.sample_latents(4))
    R = model.sample_rotations(4)
    t = model.sample_thresholds(4)
    target = model.render_offtheshelf(voxels, R, t)
    model.renderer_step(voxels, R, t, target, opts)
    assert _changed(snapshot["r"], model.renderer) and not _changed(snapshot["d"], model.discriminator)
    assert not _changed(snapshot["g"], model.generator)
    assert all(p.grad is None for p in model.parameters())
    # A full step moves all three, each by its own optimizer.
    model.train_step(torch.rand(4, 1, 16, 16), opts)
    assert _changed(snapshot["g"], model.generator) and _changed(snapshot["d"], model.discriminator)
    # The generator's gradient reaches it through the neural renderer (IG-GAN).
    g_loss = G.generator_loss(model.discriminator(model.render(model.generator(model.sample_latents(2)),
                                                               model.sample_rotations(2))))
    grads = torch.autograd.grad(g_loss, list(model.generator.parameters()))
    assert all(torch.isfinite(gr).all() for gr in grads) and any(gr.abs().sum() > 0 for gr in grads)


def test_dom_weight_zero_is_the_ablation():
    torch.manual_seed(0)
    model = G.IgganModel(G.IgganConfig(dom_weight=0.0, **TINY_MODEL))
    out = model.train_step(torch.rand(4, 1, 16, 16), model.configure_optimizers())
    assert "renderer_dom" not in out and math.isclose(float(out["renderer_loss"]), float(out["renderer_l2"]))
    model = G.IgganModel(G.IgganConfig(**TINY_MODEL))
    out = model.train_step(torch.rand(4, 1, 16, 16), model.configure_optimizers())
    assert math.isclose(float(out["renderer_loss"]), float(out["renderer_l2"]) + 100 * float(out["renderer_dom"]),
                        rel_tol=1e-5)


def test_summed_l2_is_the_per_pixel_l2_times_the_pixels():
    outs = []
    for reduction in ("mean", "sum"):
        torch.manual_seed(0)
        model = G.IgganModel(G.IgganConfig(dom_weight=0.0, l2_reduction=reduction, **TINY_MODEL))
        outs.append(model.train_step(torch.rand(4, 1, 16, 16), model.configure_optimizers()))
    assert math.isclose(float(outs[1]["renderer_l2"]), 16 * 16 * float(outs[0]["renderer_l2"]), rel_tol=1e-5)
    with pytest.raises(ConfigError, match="l2_reduction"):
        G.IgganConfig(l2_reduction="max")


def test_pretraining_teaches_the_neural_renderer_more_than_a_black_image():
    # After pre-training on a few boxes, the neural renderer's images of new views of them are closer to the
    # off-the-shelf renders than a black image (the trivial guess on mostly-background renders) is.
    torch.manual_seed(0)
    model = G.IgganModel(G.IgganConfig(**dict(TINY_MODEL, renderer_channels=8)))
    opts = model.configure_optimizers()
    shapes = G.random_boxes(8, 8, generator=torch.Generator().manual_seed(1))
    model.pretrain_renderer(80, 8, opts, shape_fn=lambda b: shapes[:b], lr=3e-3,
                            generator=torch.Generator().manual_seed(0))
    assert opts["renderer"].param_groups[0]["lr"] == model.config.lr_renderer  # the GAN phase's rate is back
    g = torch.Generator().manual_seed(9)
    R, t = model.sample_rotations(8, g), model.sample_thresholds(8, g)
    target = model.render_offtheshelf(shapes, R, t)
    with torch.no_grad():
        error = float((model.eval().renderer(model.embed(shapes, R)) - target).pow(2).mean())
    assert error < 0.8 * float(target.pow(2).mean())


def test_random_boxes_are_soft_boxes_inside_the_grid():
    boxes = G.random_boxes(6, 16, generator=torch.Generator().manual_seed(0))
    assert boxes.shape == (6, 1, 16, 16, 16)
    assert float(boxes.min()) == 0.0 and float(boxes.max()) <= 1.0
    assert all(float(b.max()) >= 0.3 for b in boxes)  # every grid holds a box
    values = boxes[boxes > 0].unique()
    assert 1 < len(values) and float(values.min()) >= 0.3  # soft values, so the thresholds matter


# ------------------------------------------------------------------------------------------------
# config, training, resume, DDP, CLI


def test_bad_configs_raise_naming_the_field():
    with pytest.raises(ConfigError, match="grid_size"):
        G.IgganConfig(grid_size=24)
    with pytest.raises(ConfigError, match="dom_weight"):
        G.IgganConfig(dom_weight=-1.0)
    with pytest.raises(ConfigError, match="variant"):
        G.IgganConfig(variant="nerf")
    with pytest.raises(ConfigError, match="elevation_range"):
        G.IgganConfig(elevation_range=(60, 15))
    task, cfg = tiny_config()
    cfg["data"]["viewpoints"] = "everywhere"
    with pytest.raises(ConfigError, match="viewpoints"):
        task.dataset(cfg, "train")
    with pytest.raises(training.ConfigError, match="dom_wieght|dom_weight"):
        training.resolve_config(task, overrides=["model.dom_wieght=3"])


def test_every_shipped_config_resolves():
    import glob

    here = os.path.join(os.path.dirname(__file__), "..", "configs")
    files = sorted(glob.glob(os.path.join(here, "iggan", "*.yaml"))) + [os.path.join(here, "iggan_synthetic.yaml")]
    assert len(files) >= 7
    for path in files:
        for name in G.TASKS:
            task = training.get_task(name)
            cfg = training.resolve_config(task, path)
            task.model_config(cfg)


@pytest.mark.parametrize("variant", G.VARIANTS)
def test_short_training_runs_and_logs_finite_losses(variant, tmp_path):
    task, cfg = tiny_config(variant, steps=3)
    history = _quiet(training.Trainer(task, cfg, tmp_path / "run", device="cpu", progress=False).fit)
    assert len(history) == 3 and all(math.isfinite(h["total"]) for h in history)
    if variant == "iggan":
        assert "renderer_dom" in history[0]


def test_discriminator_learns_to_separate_when_the_generator_is_frozen():
    # The discriminator update lowers its loss on a fixed real/fake pair (a 2D GAN with lr_generator ~ 0).
    torch.manual_seed(0)
    model = G.IgganModel(G.IgganConfig(variant="dcgan2d", lr_generator=1e-12, lr_discriminator=2e-3, **TINY_MODEL))
    opts = model.configure_optimizers()
    real = torch.zeros(8, 1, 16, 16)
    real[:, :, 4:12, 4:12] = 1
    losses = [float(model.train_step(real, opts, generator=torch.Generator().manual_seed(0))["discriminator_loss"])
              for _ in range(25)]
    assert losses[-1] < 0.5 * losses[0], losses


def test_resume_is_bit_identical(tmp_path):
    task, cfg = tiny_config(steps=4, ckpt_every=2, seed=2)
    _quiet(training.Trainer(task, cfg, tmp_path / "straight", device="cpu", progress=False).fit)
    _quiet(training.Trainer(task, dict(cfg, steps=2), tmp_path / "split", device="cpu", progress=False).fit)
    torch.manual_seed(999)
    _quiet(training.Trainer(task, cfg, tmp_path / "split", device="cpu", resume=True, progress=False).fit)
    a = training.load_checkpoint(training.latest_checkpoint(tmp_path / "straight"))
    b = training.load_checkpoint(training.latest_checkpoint(tmp_path / "split"))
    assert a["step"] == b["step"] == 4 and a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["optimizers"].keys() == {"generator", "discriminator", "renderer"}
    for name in a["optimizers"]:
        for k, state in a["optimizers"][name]["state"].items():
            assert torch.equal(state["exp_avg"], b["optimizers"][name]["state"][k]["exp_avg"])


def test_pretraining_runs_once_at_step_zero(tmp_path, monkeypatch):
    calls = []
    original = G.IgganModel.pretrain_renderer

    def spy(self, steps, *args, **kwargs):
        calls.append(steps)
        return original(self, steps, *args, **dict(kwargs, progress=False))

    monkeypatch.setattr(G.IgganModel, "pretrain_renderer", spy)
    task, cfg = tiny_config(steps=2, pretrain={"steps": 3, "batch_size": 2})
    history = _quiet(training.Trainer(task, cfg, tmp_path / "run", device="cpu", progress=False).fit)
    assert calls == [3] and "pretrain_renderer_loss" in history[0]


def _ddp_worker(rank, world_size, port, out):
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    task, cfg = tiny_config(steps=2, shuffle=False, pretrain={"steps": 2, "batch_size": 2})  # pre-training too
    trainer = training.Trainer(task, cfg, os.path.join(out, "ddp"), device="cpu", progress=False)
    _quiet(trainer.fit)
    model = training.unwrap(trainer.model)
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, os.path.join(out, f"rank{rank}.pt"))


def test_trains_data_parallel_with_two_processes(tmp_path):
    """Two gloo processes: every optimizer's gradients (the neural renderer's pre-training included) are averaged
    before its step, batchnorm statistics are copied from rank 0, so both processes end with the same parameters
    and buffers."""
    _spawn(_ddp_worker, (2, _free_ports(1)[0], str(tmp_path)), nprocs=2, timeout=300)
    s0, s1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert s0.keys() == s1.keys()
    for k in s0:
        assert torch.equal(s0[k], s1[k]), k


def test_visualize_writes_samples_normals_and_a_mesh(tmp_path):
    task, cfg = tiny_config()
    model, _ = task.build(cfg, torch.device("cpu"))
    batch = {"image": torch.stack([task.dataset(cfg, "train")[i]["image"] for i in range(2)])}
    with torch.no_grad():
        out = task.visualize(model.eval(), batch, str(tmp_path), 0)
    assert {"data", "samples", "samples_normals", "samples_neural_render"} <= set(out)
    assert out["samples"].shape == (2, 1, 16, 16) and out["samples_normals"].shape == (2, 3, 16, 16)


def test_image_folder_data_for_natural_images(tmp_path):
    # The Chanterelle setting: a folder of photographs, turned grey and resized to the model's image size.
    from PIL import Image

    for i in range(3):
        Image.fromarray((torch.rand(40, 30, 3) * 255).byte().numpy()).save(tmp_path / f"im{i}.png")
    task, cfg = tiny_config(data={"kind": "folder", "root": str(tmp_path)})
    data = task.dataset(cfg, "train")
    assert len(data) == 3 and data[0]["image"].shape == (1, 16, 16)
    task, cfg = tiny_config(data={"kind": "folder"})
    with pytest.raises(ConfigError, match="data.root"):
        task.dataset(cfg, "train")


def test_cli_exports_shaded_views_and_trains_then_evaluates_through_the_cli(tmp_path, capsys, monkeypatch):
    import json

    from PIL import Image

    from invrender.cli import main

    assert main(["data", "shaded", "--root", str(tmp_path / "png"), "--objects", "2", "--views", "2", "--size", "16",
                 "--categories", "sofa", "--quiet"]) == 0
    index = json.load(open(tmp_path / "png" / "views.json"))
    assert len(index) == 4 and {v["category"] for v in index} == {"sofa"}
    image = torch.tensor(list(Image.open(tmp_path / "png" / index[3]["file"]).getdata()), dtype=torch.float32)
    expected = invrender.data.ShadedViews("sofa", 2, views_per_object=2, image_size=16)[3]["image"].reshape(-1)
    assert torch.allclose(image.reshape(expected.shape[0], -1)[:, 0] / 255, expected, atol=1 / 255)
    assert main(["data", "shaded", "--root", str(tmp_path / "x"), "--categories", "spoon", "--quiet"]) == 2
    assert "categories" in capsys.readouterr().err
    run = tmp_path / "run"
    overrides = [f"model.{k}={v}" for k, v in TINY_MODEL.items()] + ["data.objects=4", "pretrain.steps=1",
                                                                     "steps=2", "vis_every=2", "batch_size=2"]
    assert main(["train", "visual_hull_gan", "--config", os.path.join(os.path.dirname(__file__), "..", "configs",
                                                                      "iggan", "sofa_cpu.yaml"),
                 "--run-dir", str(run), "--no-progress", *overrides]) == 0
    assert (run / "samples" / "step_00000002" / "samples_visual_hull.png").exists()


def test_evaluate_reports_fid_beside_the_learning_free_references(tmp_path, monkeypatch):
    import invrender.fid as fid

    original = fid.load_fid_classifier

    def small(image_size=64, **kwargs):  # a briefly trained classifier in a temporary cache (the real one: 87 s)
        return original(16, cache_dir=str(tmp_path / "fid"), progress=False, steps=30, objects=24, batch_size=32)

    monkeypatch.setattr(fid, "load_fid_classifier", small)
    task, cfg = tiny_config("iggan", eval={"num_samples": 12})
    model, _ = task.build(cfg, torch.device("cpu"))
    metrics = _quiet(task.evaluate, model.eval(), cfg, str(tmp_path / "eval"))
    for key in ("fid", "reference_fid_data", "reference_fid_mean_shape", "reference_fid_boxes"):
        assert math.isfinite(metrics[key]) and metrics[key] >= 0, key
    # The data itself is the floor: an untrained generator's samples are farther from the held-out renders.
    assert metrics["reference_fid_data"] < metrics["fid"]
    assert 0 <= metrics["classifier_test_accuracy"] <= 1
    assert set(metrics["fid_by_threshold"]) == {"0.1", "0.3", "0.5"}
    assert metrics["fid_by_threshold"]["0.5"] == metrics["fid"]  # the same samples, seen at the default threshold
    assert metrics["fid_best_threshold"] == min(metrics["fid_by_threshold"].values())
    assert metrics["reference_fid_mean_shape_best_threshold"] <= metrics["reference_fid_mean_shape"]
    assert (tmp_path / "eval" / "samples.png").exists() and (tmp_path / "eval" / "samples_normals.png").exists()
    assert torch.load(tmp_path / "eval" / "samples.pt").shape == (12, 1, 16, 16)
    # 3D set metrics beside the same references: one shape covers exactly one of the held-out objects.
    n = metrics["num_shapes"]
    assert n == 4  # data.objects: 4 held-out objects to measure against
    for key in ("shape_best", "reference_shape_data", "reference_shape_mean_shape", "reference_shape_boxes"):
        m = metrics[key]
        assert 0 <= m["mmd"] <= 1 and 0 < m["coverage"] <= 1 and 0 <= m["nna"] <= 1, key
        assert m["azimuth"] % 10 == 0 and m["threshold"] in (0.1, 0.3, 0.5), key
    assert metrics["reference_shape_mean_shape"]["coverage"] == 1 / n
    assert metrics["reference_shape_data"]["threshold"] == 0.5


def test_shape_metrics_undo_a_turn_about_the_vertical_axis():
    # Held-out objects turned by 90 degrees about the vertical axis, as a generator may hold them: the metrics
    # find the turn back and score the set as the references themselves (MMD 0, full coverage, 1-NNA 0: every
    # shape's nearest neighbour is its twin); unturned, they would be far.
    task, cfg = tiny_config("iggan", eval={"num_shapes": 4}, model={"grid_size": 16})
    refs = task._voxelized(cfg, "test", 4, 16)
    turned = invrender.rotate_voxels(refs, invrender.rotation_matrix(math.pi / 2))
    mean = refs.mean(0, keepdim=True)
    m = task._shape_metrics(cfg, 16, turned, mean, [0.5], seed=0)
    best = m["shape_best"]
    assert best["azimuth"] in (90.0, 270.0)
    assert best["mmd"] < 1e-6 and best["coverage"] == 1.0 and best["nna"] == 0.0
    from invrender.metrics import pairwise_voxel_iou_distance

    assert pairwise_voxel_iou_distance(turned, refs).diagonal().min() > 0.1  # the turn matters
    assert m["reference_shape_mean_shape"]["coverage"] == 0.25
