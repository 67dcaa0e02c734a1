"""The Ucar task around the model: data kinds (synthetic / MNIST / image folder), the evaluation's voxel
frame and best-azimuth IoU, data-parallel training (two gloo processes) and ``invrender demo``."""

import json
import math
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

import invrender
from invrender import training
from invrender.data import GrayscaleViews, ShapeNetNMR
from invrender.models import ucar
from invrender.models.ucar import UcarTask

from .optional import requires
from .test_data import make_mnist
from .test_training import _free_ports, _spawn


def task_config(root, **kw):
    task = UcarTask()
    cfg = training.merge_config(task.default_config(), {"data": {"root": root}, "batch_size": 4, "steps": 2,
                                                        "vis_every": 0, "ckpt_every": 0, "log_every": 1})
    cfg = training.merge_config(cfg, kw)
    cfg["model"].update(channels=8, texturizer_hidden=32)
    return task, cfg


# ------------------------------------------------------------------------------------------------
# data


def test_grayscale_views_without_mask_keep_the_luminance():
    class Base(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return {"image": torch.full((3, 8, 8), 0.5) * torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1), "label": i}

    item = GrayscaleViews(Base(), image_size=4)[1]
    assert set(item) == {"image", "index", "label"}
    assert torch.allclose(item["image"], torch.full((1, 4, 4), 0.5 * 0.299)) and item["index"] == 1
    with pytest.raises(ValueError, match="image"):
        GrayscaleViews([{"image": torch.zeros(2, 4, 4)}], image_size=4)[0]


def test_grayscale_views_floor_lifts_the_object_only():
    mask = torch.zeros(1, 4, 4)
    mask[:, 1:3, 1:3] = 1
    base = [{"image": torch.full((3, 4, 4), 0.2), "mask": mask}]
    plain, lifted, silhouette = (GrayscaleViews(base, image_size=4, floor=f)[0]["image"] for f in (0.0, 0.5, 1.0))
    assert torch.allclose(plain, 0.2 * mask) and torch.allclose(lifted, 0.6 * mask)
    assert torch.equal(silhouette, mask)
    for bad in (-0.1, 1.5, True):
        with pytest.raises(ValueError, match="floor"):
            GrayscaleViews(base, image_size=4, floor=bad)
    with pytest.raises(ValueError, match="mask"):
        GrayscaleViews([{"image": torch.zeros(1, 4, 4)}], image_size=4, floor=0.5)[0]


@pytest.mark.parametrize("kind", ["mnist", "fashion_mnist"])
def test_mnist_data_for_the_task(tmp_path, kind):
    imgs, _ = make_mnist(tmp_path, n=6)
    make_mnist(tmp_path, n=3, prefix="t10k")
    task, cfg = task_config(str(tmp_path), data={"kind": kind})
    train, test = task.dataset(cfg, "train"), task.dataset(cfg, "test")
    assert len(train) == 6 and len(test) == 3
    item = train[2]
    assert item["image"].shape == (1, 28, 28) and int(item["index"]) == 2
    assert torch.allclose(item["image"][0], torch.from_numpy(imgs[2]).float() / 255)  # white digit on black, as is
    model, opts = task.build(cfg, torch.device("cpu"))
    assert model.config.dataset_size == 6 and model.config.elevation_deg == 0.0  # digits are seen head-on
    batch = torch.utils.data.default_collate([train[i] for i in range(4)])
    terms = task.train_step(model, batch, opts, 0)
    assert torch.isfinite(terms["total"])
    metrics = task.evaluate(model.eval(), cfg, str(tmp_path))
    assert metrics["test_views"] == 3 and "test_voxel_iou_best_azimuth" not in metrics
    assert 0 < metrics["test_projection_mse_best_azimuth"] <= metrics["test_projection_mse"]


def test_folder_data_for_the_task(tmp_path):
    rs = np.random.RandomState(0)
    for k in range(5):
        Image.fromarray(rs.randint(0, 256, (40, 30, 3), dtype=np.uint8)).save(tmp_path / f"face{k}.png")
    task, cfg = task_config(str(tmp_path), data={"kind": "folder"})
    views = task.dataset(cfg, "train")
    assert len(views) == 5 and views[0]["image"].shape == (1, 28, 28)
    assert len(task.dataset(cfg, "test")) == 5  # no held-out folder: the folder itself
    with pytest.raises(ValueError, match="data.root is required"):
        task.dataset(task_config(None, data={"kind": "mnist"})[1], "train")
    with pytest.raises(ValueError, match="data.kind"):
        task.dataset(task_config(str(tmp_path), data={"kind": "celeba"})[1], "train")


# ------------------------------------------------------------------------------------------------
# evaluation


def test_ground_truth_frame_matches_the_rendered_masks(tiny_root):
    """The GT grid resampled into the model's frame and projected reproduces the views' masks (the data is
    rendered with a perspective camera, the model projects orthographically: close, not exact)."""
    base = ShapeNetNMR(tiny_root, split="test", load_voxels=True)
    views = GrayscaleViews(base, image_size=28)
    azimuths = torch.linspace(-math.pi, math.pi, 73)[:-1]
    for i in (0, 3, 8):
        item = views[i]
        gt = ucar.ground_truth_in_model_frame(item["voxels"][None].float(), 28)
        assert gt.shape == (1, 1, 28, 28, 28) and set(gt.unique().tolist()) <= {0.0, 1.0}
        rotations = invrender.rotation_matrix(azimuths, torch.full_like(azimuths, math.radians(30)))
        hull = invrender.project_voxels(gt.expand(len(azimuths), -1, -1, -1, -1), rotations) > 0.5
        mask = item["mask"] > 0.5
        inter = (hull & mask).flatten(1).sum(1).float()
        union = (hull | mask).flatten(1).sum(1).float()
        assert float((inter / union).max()) > 0.7  # observed 0.76-0.80; without the 3.732 / 2.732 scale 0.39-0.51


def test_best_azimuth_voxel_iou_finds_the_turn():
    g = torch.Generator().manual_seed(0)
    gt = (torch.rand(2, 1, 12, 12, 12, generator=g) > 0.7).float()
    gt[:, :, :, :, :3] = 0  # not symmetric under a half turn
    azimuths = torch.linspace(-math.pi, math.pi, 9)[:-1]
    # pred is gt turned back by azimuths[k]: turning it by azimuths[k] recovers gt (up to resampling)
    k = torch.tensor([6, 2])
    pred = invrender.rotate_voxels(gt, invrender.rotation_matrix(-azimuths[k]))
    iou, arg = ucar.best_azimuth_voxel_iou(pred, gt, azimuths, thresholds=(0.5,))
    assert arg.shape == (1, 2) and arg[0].tolist() == k.tolist()
    assert iou.shape == (1, 2) and bool((iou > 0.6).all())
    empty, _ = ucar.best_azimuth_voxel_iou(torch.zeros_like(gt), gt, azimuths, thresholds=(0.5,))
    assert torch.equal(empty, torch.zeros(1, 2))


def test_evaluate_covers_the_whole_test_split_per_category(tiny_root):
    task, cfg = task_config(tiny_root, data={"categories": ["car", "chair"]})
    model, _ = task.build(cfg, torch.device("cpu"))
    assert model.config.elevation_deg == 30.0  # the synthetic data's camera
    metrics = task.evaluate(model.eval(), cfg, tiny_root)
    assert metrics["test_views"] == len(task.dataset(cfg, "test")) == 2 * 6
    assert metrics["voxel_iou_threshold"] in ucar.VOXEL_IOU_THRESHOLDS
    per = [metrics["test_voxel_iou_best_azimuth/car"], metrics["test_voxel_iou_best_azimuth/chair"]]
    assert all(0 <= v <= 1 for v in per)
    assert math.isclose(metrics["test_voxel_iou_best_azimuth"], sum(per) / 2, rel_tol=1e-5)
    base = [metrics["test_voxel_iou_mean_shape/car"], metrics["test_voxel_iou_mean_shape/chair"]]
    assert all(0 < v <= 1 for v in base)  # the mean training shape overlaps every test object
    assert math.isclose(metrics["test_voxel_iou_mean_shape"], sum(base) / 2, rel_tol=1e-5)
    assert task.evaluate(model, cfg, tiny_root, max_views=5)["test_views"] == 5


# ------------------------------------------------------------------------------------------------
# data parallel


def _ddp_worker(rank, world_size, port, root, out):
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    # 1. average_gradients: rank-dependent gradients become their mean on every rank
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2, 2))
    a.grad = torch.full((3,), float(rank + 1))
    b.grad = None if rank == 0 else torch.ones(2, 2) * 4  # missing on rank 0: zeros
    training.average_gradients([a, b])
    assert torch.equal(a.grad, torch.full((3,), 1.5)) and torch.equal(b.grad, torch.full((2, 2), 2.0))
    torch.distributed.destroy_process_group()
    # 2. the Ucar task under the trainer (it creates its own group)
    task, cfg = task_config(root, steps=3, seed=0)
    cfg["task"] = "ucar"
    trainer = training.Trainer(task, cfg, os.path.join(out, "ddp"), device="cpu", progress=False)
    trainer.fit()
    assert trainer.local_batch == 2
    model = training.unwrap(trainer.model)
    assert not isinstance(trainer.ddp_model, torch.nn.parallel.DistributedDataParallel)
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, os.path.join(out, f"rank{rank}.pt"))


def test_ucar_trains_data_parallel_with_two_processes(tiny_root, tmp_path):
    _spawn(_ddp_worker, (2, _free_ports(1)[0], tiny_root, str(tmp_path)), nprocs=2, timeout=300)
    s0, s1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert s0.keys() == s1.keys()
    for k in s0:  # every process holds the same parameters and batchnorm statistics
        assert torch.equal(s0[k], s1[k]), k
    # the per-example azimuth latents of examples only the other rank saw were updated on rank 0 too
    task, cfg = task_config(tiny_root, seed=0)
    init, _ = task.build(cfg, torch.device("cpu"))
    moved = (s0["azimuth_latent.mean"] != init.azimuth_latent.mean.detach()).any(1)
    assert int(moved.sum()) >= 8  # 3 steps x 2 ranks x 2 examples (Adam moves rows with zero gradient too)
    ckpt = training.load_checkpoint(training.latest_checkpoint(tmp_path / "ddp"))
    assert ckpt["world_size"] == 2
    for k in s0:
        assert torch.equal(ckpt["model"][k], s0[k]), k


# ------------------------------------------------------------------------------------------------
# the main job


@requires("trimesh")  # the demo writes its meshes through trimesh
def test_demo_writes_a_results_folder(tiny_root, tmp_path, capsys):
    from invrender.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "2", "--no-progress", f"data.root={tiny_root}",
                 "batch_size=4", "model.channels=8", "model.texturizer_hidden=32"]) == 0
    printed = capsys.readouterr().out
    assert "test voxel IoU" in printed and str(out / "index.html") in printed
    page = (out / "index.html").read_text()
    for src in ("reconstructions.png", "turntable_elev0.gif", "turntable_elev30.gif"):
        assert f'src="{src}"' in page and (out / src).stat().st_size > 0
    for href in [h.split('"')[0] for h in page.split('href="')[1:]]:
        assert (out / href).exists(), href
    assert "meshes/test0_ground_truth.obj" in page
    # each turntable under its own elevation: 30 degrees is the data's camera (trained on), 0 degrees unseen
    labels = {src: label for label, src in re.findall(r'<h3>([^<]*)</h3>\s*<img src="(turntable_elev\d+\.gif)">', page)}
    assert set(labels) == {"turntable_elev0.gif", "turntable_elev30.gif"}
    for src, label in labels.items():
        elevation = int(re.fullmatch(r"turntable_elev(\d+)\.gif", src).group(1))
        assert label.startswith(f"Elevation {elevation}&deg;"), (src, label)
        assert ("never saw" in label) == (elevation == 0) and ("training" in label) == (elevation == 30), label
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["test_views"] == 6 and 0 <= metrics["test_voxel_iou_best_azimuth"] <= 1
    gif = Image.open(out / "turntable_elev30.gif")
    assert gif.n_frames == 24
    frames = []
    for k in (0, 6):
        gif.seek(k)
        frames.append(np.asarray(gif.convert("L"), dtype=np.float32))
    assert np.abs(frames[0] - frames[1]).max() > 0  # the camera turns
    assert training.latest_checkpoint(out / "run") is not None
    # running it again replaces the earlier run
    assert main(["demo", "--out", str(out), "--steps", "1", "--no-progress", f"data.root={tiny_root}",
                 "batch_size=4", "model.channels=8", "model.texturizer_hidden=32"]) == 0
    assert [s for s, _ in training.list_checkpoints(out / "run")] == [1]


@pytest.mark.parametrize("name", ["ucar_synthetic", "ucar_mnist", "ucar_celeba"])
def test_repo_configs_build(name, tmp_path, tiny_root):
    """Every config in configs/ resolves and builds a model (data roots pointed at small files)."""
    import pathlib

    path = pathlib.Path(__file__).resolve().parent.parent / "configs" / f"{name}.yaml"
    task = UcarTask()
    cfg = training.resolve_config(task, str(path), ["model.channels=8", "model.texturizer_hidden=32"])
    kind = cfg["data"].get("kind", "shapenet")
    if kind == "mnist":
        make_mnist(tmp_path, n=3)
        cfg["data"]["root"] = str(tmp_path)
    elif kind == "folder":
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
        cfg["data"]["root"] = str(tmp_path)
    else:
        cfg["data"]["root"] = tiny_root
    model, opts = task.build(cfg, torch.device("cpu"))
    assert model.config.objective == {"mnist": "mu_vae", "folder": "aae", "shapenet": "mu_vae"}[kind]
    assert set(opts) >= {"main"}


def test_ucar_resume_is_bit_identical(tiny_root, tmp_path):
    """4 steps straight equal 2 steps, a stop, and 2 resumed steps (z and azimuth noise, data order, the
    three optimizers' states)."""
    task, cfg = task_config(tiny_root, steps=4, ckpt_every=2, seed=3, model={"objective": "aae", "azimuth": "latent"})
    cfg["task"] = "ucar"
    training.Trainer(task, cfg, tmp_path / "straight", device="cpu", progress=False).fit()
    training.Trainer(task, dict(cfg, steps=2), tmp_path / "split", device="cpu", progress=False).fit()
    torch.manual_seed(12345)  # the resumed run must not depend on the process's RNG
    training.Trainer(task, cfg, tmp_path / "split", device="cpu", resume=True, progress=False).fit()
    a = training.load_checkpoint(training.latest_checkpoint(tmp_path / "straight"))
    b = training.load_checkpoint(training.latest_checkpoint(tmp_path / "split"))
    assert a["step"] == b["step"] == 4
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert set(a["optimizers"]) == {"main", "azimuth", "discriminator"}
    init, _ = task.build(cfg, torch.device("cpu"))
    assert not torch.equal(a["model"]["decoder.linear.weight"], init.decoder.linear.weight)
