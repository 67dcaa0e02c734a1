"""The UNICORN task around the model (invrender.models.unicorn.UnicornTask): config, camera conventions of the
data against the model's poses, training through the Trainer (loss decrease, bit-identical resume with the
memory bank), data-parallel training on two gloo processes, the ShapeNet evaluation protocol and its references,
and the command line end to end."""

import glob
import json
import math
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import invrender
from invrender import metrics, training
from invrender.data import ShapeNetNMR
from invrender.errors import ConfigError
from invrender.mesh import spherical_uvs
from invrender.models import unicorn as U

from .test_cli import _env
from .test_training import _free_ports, _spawn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Small networks (the encoder stays a full ResNet-18) so the tests stay fast; 32x32 views of the tiny data.
SMALL_MODEL = dict(field_hidden=32, head_hidden=16, generator_features=16, generator_min_features=4, texture_size=16,
                   render_layers=8, memory_size=16, stage_milestones=[1, 2, 3], constant_texture_epochs=1,
                   freeze_scale_epochs=0)
TINY_EVAL = {"num_points": 500, "icp_num_points": 200, "seed": 0}


def task_config(root, **kw):
    task = U.UnicornTask()
    cfg = training.merge_config(task.default_config(), {
        "data": {"root": root, "categories": ["car", "chair"], "image_size": 32}, "model": SMALL_MODEL,
        "eval": TINY_EVAL, "batch_size": 4, "steps": 2, "vis_every": 0, "ckpt_every": 0, "log_every": 1})
    return task, training.merge_config(cfg, kw)


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the perceptual term is off in these tests
        return fn(*args, **kwargs)


# ------------------------------------------------------------------------------------------------
# config


def test_config_rejects_unknown_keys_naming_the_field(tmp_path):
    task = U.UnicornTask()
    with pytest.raises(ConfigError, match=r"'model\.render_layer'.*'model\.render_layers'"):
        training.resolve_config(task, None, ["model.render_layer=3"])
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  shape_code_sizez: [0, 2, 8, 32]\n")
    with pytest.raises(ConfigError, match="shape_code_sizez"):
        training.resolve_config(task, path)
    with pytest.raises(ConfigError, match="image_size"):  # set from data.image_size, not under model
        training.resolve_config(task, None, ["model.image_size=32"])
    with pytest.raises(ConfigError, match="model.shared_encoder"):  # types too
        training.resolve_config(task, None, ["model.shared_encoder=1"])
    with pytest.raises(ConfigError, match="UnicornConfig.render_layers"):  # and values, by the model's config
        task.model_config(training.resolve_config(task, None, ["model.render_layers=0"]))


def test_every_shipped_config_resolves():
    task = U.UnicornTask()
    paths = [os.path.join(REPO, "configs", "unicorn_synthetic.yaml")] + \
        sorted(glob.glob(os.path.join(REPO, "configs", "unicorn", "*.yaml")))
    assert len(paths) >= 14  # the synthetic config and the 13 ShapeNet-NMR categories
    for path in paths:
        cfg = training.resolve_config(task, path)
        config = task.model_config(cfg)
        if "shapenet_" in path:
            assert cfg["batch_size"] == 32 and config.lr == 1e-4 and config.stage_milestones == (14, 84, 154)
            assert config.render_layers == 50 and cfg["data"]["image_size"] == 64


def test_default_encoder_is_resnet18_shared_or_per_branch():
    from invrender.models.networks import ResNet18

    config = U.UnicornConfig(**dict(SMALL_MODEL, stage_milestones=(1, 2, 3)), image_size=32)
    shared = U.UnicornModel(config)
    assert isinstance(shared.encoder, ResNet18)
    big = U.UnicornModel(U.UnicornConfig(**dict(SMALL_MODEL, stage_milestones=(1, 2, 3)), image_size=32,
                                         shared_encoder=False))
    assert set(big.encoder) == {"shape", "texture", "pose"}  # no background model on ShapeNet
    out = big.predict(torch.rand(2, 3, 32, 32))
    assert out["verts"].shape == (2, 642, 3) and out["candidates"].probabilities.shape == (2, 6)
    with pytest.raises(ConfigError, match="feature_dim"):
        U.UnicornModel(U.UnicornConfig(feature_dim=64))


# ------------------------------------------------------------------------------------------------
# camera conventions


def test_ground_truth_camera_matches_the_models_pose_convention(tiny_root):
    """The data's world_mat rotation, given to the model's renderer as a pose (no translation), renders the
    ground-truth mesh onto the data's mask; view_angles recovers the stored azimuth and elevation."""
    base = ShapeNetNMR(tiny_root, categories=["car"], split="train")
    config = U.UnicornConfig(**dict(SMALL_MODEL, stage_milestones=(1, 2, 3)), image_size=32)
    model = U.UnicornModel(config)
    for i in (0, 4, 9):
        item = base[i]
        k, view = base._index[i]
        verts, faces = U.ground_truth_mesh(base, k)
        rotation = item["camera"]["world_mat"][:, :3][None]
        _, mask = model.renderer(verts[None], faces, spherical_uvs(verts, faces), torch.ones(1, 3, 4, 4),
                                 rotation=rotation, translation=torch.zeros(1, 3))
        iou = float(metrics.mask_iou(mask, item["mask"][None]))
        assert iou > 0.9, (i, iou)
        turned = invrender.rotation_matrix(torch.tensor([math.pi]), torch.tensor([math.radians(30.0)])) @ rotation
        _, wrong = model.renderer(verts[None], faces, spherical_uvs(verts, faces), torch.ones(1, 3, 4, 4),
                                  rotation=turned, translation=torch.zeros(1, 3))
        assert float(metrics.mask_iou(wrong, item["mask"][None])) < iou
        with np.load(os.path.join(base.root, base.objects[k][1], base.objects[k][2], "cameras.npz")) as npz:
            az, el = math.degrees(float(npz["azimuth"][view])), math.degrees(float(npz["elevation"][view]))
        got_az, got_el = U.view_angles(rotation.double())
        assert float(U.wrap_degrees(got_az - az).abs()) < 1e-3 and float(got_el) == pytest.approx(el, abs=1e-3)


def test_view_angles_invert_rotation_matrix_with_any_roll():
    az = torch.tensor([-170.0, -30.0, 0.0, 45.0, 179.0], dtype=torch.float64)
    el = torch.tensor([-20.0, 0.0, 30.0, 60.0, 10.0], dtype=torch.float64)
    roll = torch.tensor([0.0, 20.0, -30.0, 5.0, 90.0], dtype=torch.float64)
    R = invrender.rotation_matrix(torch.deg2rad(az), torch.deg2rad(el), torch.deg2rad(roll))
    got_az, got_el = U.view_angles(R)
    assert torch.allclose(got_az, az, atol=1e-9) and torch.allclose(got_el, el, atol=1e-9)


def test_pose_errors_are_measured_up_to_one_azimuth_offset():
    gt_az = torch.tensor([0.0, 60.0, 120.0, 200.0, 300.0], dtype=torch.float64)
    el = torch.full_like(gt_az, 30.0)
    pred_az = gt_az + 90.0 + torch.tensor([0.0, 2.0, -2.0, 40.0, 1.0], dtype=torch.float64)
    rot = lambda a: invrender.rotation_matrix(torch.deg2rad(a), torch.deg2rad(el))  # noqa: E731
    out = U.pose_errors(rot(pred_az), rot(gt_az))
    assert out["pose_azimuth_offset_deg"] in (89.0, 90.0, 91.0)
    assert out["pose_azimuth_median_deg"] <= 1.0 and out["pose_elevation_median_deg"] < 1e-9
    assert out["pose_accuracy_15deg"] == out["pose_accuracy_30deg"] == 0.8  # the 40-degree miss


# ------------------------------------------------------------------------------------------------
# training


class _TwoImages(U.UnicornTask):
    def dataset(self, config, split):
        return torch.utils.data.Subset(super().dataset(config, split), [0, 7])


def test_training_lowers_the_loss_when_overfitting_two_images(tiny_root, tmp_path):
    _, cfg = task_config(tiny_root, batch_size=2, steps=24, shuffle=False,
                         model={"lr": 1e-3, "stage_milestones": [100, 200, 300], "constant_texture_epochs": 100})
    task = _TwoImages()
    history = _quiet(training.Trainer(task, dict(cfg, task="unicorn"), tmp_path / "run", device="cpu",
                                      progress=False).fit)
    assert [h["share_3d_steps"] for h in history[:4]] == [0.0, 1.0, 0.0, 1.0]  # P-step, 3D-step, ...
    assert {"uniform", "regularization", "swap", "epoch"} <= set().union(*history)
    rec_3d = [h["reconstruction"] for h in history if h["share_3d_steps"] == 1.0]
    assert all(math.isfinite(h["total"]) for h in history)
    assert np.mean(rec_3d[-3:]) < 0.7 * rec_3d[0], rec_3d


def test_epoch_follows_the_step_count(tiny_root):
    task, cfg = task_config(tiny_root, batch_size=4)
    model, opts = task.build(cfg, torch.device("cpu"))
    assert task.train_size == 2 * 4 * 6  # two categories, 4 training objects, 6 views
    assert [task.epoch_of(s) for s in (0, 11, 12, 24)] == [0, 0, 1, 2]
    batch = torch.utils.data.default_collate([task.dataset(cfg, "train")[i] for i in range(4)])
    _quiet(task.train_step, model, batch, opts, 12)
    assert model.current_epoch == 1


def test_resume_is_bit_identical_including_the_memory_bank(tiny_root, tmp_path):
    """4 steps straight equal 2 steps, a stop, and 2 resumed steps: parameters, batchnorm statistics, the
    memory bank (codes, poses, images, ring position), the curriculum buffers and Adam's state."""
    task, cfg = task_config(tiny_root, steps=4, ckpt_every=2, seed=3, model={"memory_size": 6})
    cfg["task"] = "unicorn"
    _quiet(training.Trainer(task, cfg, tmp_path / "straight", device="cpu", progress=False).fit)
    _quiet(training.Trainer(task, dict(cfg, steps=2), tmp_path / "split", device="cpu", progress=False).fit)
    torch.manual_seed(12345)  # the resumed run must not depend on the process's RNG
    _quiet(training.Trainer(task, cfg, tmp_path / "split", device="cpu", resume=True, progress=False).fit)
    a = training.load_checkpoint(training.latest_checkpoint(tmp_path / "straight"))
    b = training.load_checkpoint(training.latest_checkpoint(tmp_path / "split"))
    assert a["step"] == b["step"] == 4
    assert set(a["model"]) == set(b["model"])
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    bank = {k for k in a["model"] if k.startswith("memory.")}
    assert {"memory.shape_code", "memory.image", "memory.rotation", "memory.position", "memory.count"} <= bank
    assert int(a["model"]["memory.count"]) == 6 and int(a["model"]["memory.position"]) == 2  # 2 3D-steps of 4 pushed
    assert int(a["model"]["iteration"]) == 4
    sa, sb = a["optimizers"]["main"]["state"], b["optimizers"]["main"]["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(sa[k][name], sb[k][name])


def test_visualize_rows_and_mesh(tiny_root, tmp_path):
    task, cfg = task_config(tiny_root)
    model, _ = task.build(cfg, torch.device("cpu"))
    images = torch.stack([task.dataset(cfg, "train")[i]["image"] for i in range(3)])
    grid = task.visualize(model.eval(), {"image": images}, str(tmp_path), 0)["reconstructions"]
    # 3 rows of 6 tiles (input, reconstruction, 3 other views, UV map) of 32 pixels, 2-pixel borders
    assert grid.shape == (3, 3 * 34 + 2, 6 * 34 + 2)
    assert torch.equal(grid[:, 2:34, 2:34], images[0])
    assert os.path.getsize(tmp_path / "mesh0.obj") > 0


# ------------------------------------------------------------------------------------------------
# data parallel


def _ddp_worker(rank, world_size, port, root, out):
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    # Records, at every step, each rank's own gradients and the averaged ones (the task imports
    # average_gradients from invrender.training at each step).
    averaged = training.average_gradients
    record = []

    def spy(params):
        params = list(params)
        local = torch.cat([p.grad.reshape(-1) for p in params]).clone()
        averaged(params)
        names = {id(p): n for n, p in training.unwrap(trainer.model).named_parameters()}
        record.append({"names": [names[id(p)] for p in params], "local": local,
                       "mean": torch.cat([p.grad.reshape(-1) for p in params]).clone()})

    training.average_gradients = spy
    try:
        task, cfg = _ddp_config(root)
        trainer = training.Trainer(task, cfg, os.path.join(out, "ddp"), device="cpu", progress=False)
        history = _quiet(trainer.fit)
    finally:
        training.average_gradients = averaged
    assert trainer.distributed and trainer.local_batch == 2 and trainer.ddp_model is trainer.model
    model = training.unwrap(trainer.model)
    torch.save({"state": {k: v.clone() for k, v in model.state_dict().items()}, "record": record,
                "history": history}, os.path.join(out, f"rank{rank}.pt"))


def _ddp_config(root):
    # Stage 2 from epoch 0 (live shape and texture codes: the swap loss is on from the first 3D-step); the
    # texture averaging is drawn per step (constant_texture_epochs=0); no shuffling: rank r sees r, r+2, ...
    task, cfg = task_config(root, steps=4, seed=0, shuffle=False, model={
        "constant_texture_epochs": 0, "stage_milestones": [1, 2, 3], "shape_code_sizes": [2, 8, 16, 32],
        "memory_size": 6})
    cfg["task"] = "unicorn"
    return task, cfg


def test_unicorn_trains_data_parallel_with_two_processes(tiny_root, tmp_path):
    """Two gloo processes, 2 examples each per step, P-step / 3D-step / P-step / 3D-step: each step's gradients
    are the mean of both ranks' own (different) gradients over the same parameters, and every process ends
    with the same parameters and buffers. The memory bank is rank 0's (copied to the other rank after each
    step): it holds rank 0's examples of the 3D-steps only; the checkpoint holds rank 0's state."""
    _spawn(_ddp_worker, (2, _free_ports(1)[0], tiny_root, str(tmp_path)), nprocs=2, timeout=300)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    s0, s1 = r0["state"], r1["state"]
    assert [h["share_3d_steps"] for h in r0["history"]] == [0.0, 1.0, 0.0, 1.0]
    # (rank 0 logs the terms averaged over the ranks; a rank's swap term is 0 when no bank entry lies in
    # its drawn viewpoint bins)
    swaps = [h["swap"] for h in r0["history"] if h["share_3d_steps"] == 1.0]
    assert len(swaps) == 2 and max(swaps) > 0
    assert s0.keys() == s1.keys()
    for k in s0:  # parameters, batchnorm statistics, memory bank, counters
        assert torch.equal(s0[k], s1[k]), k
    # Both ranks' data moved the parameters: the reduced gradients are the mean of two different ones.
    assert len(r0["record"]) == len(r1["record"]) == 4
    for step, (a, b) in enumerate(zip(r0["record"], r1["record"])):
        assert a["names"] == b["names"], step
        pose = {n for n in a["names"] if n.startswith("pose_heads.")}
        assert bool(pose) == (step % 2 == 0), step  # the P-step trains the pose heads, the 3D-step does not
        assert not torch.allclose(a["local"], b["local"]), step
        assert torch.equal(a["mean"], b["mean"]), step
        assert torch.allclose(a["mean"], (a["local"] + b["local"]) / 2, atol=1e-7, rtol=1e-5), step
    # The bank: rank 0's 3D-step examples (its steps 1 and 3: its views 2, 3 and 6, 7, i.e. views 4, 6, 12, 14).
    task, cfg = _ddp_config(tiny_root)
    data = task.dataset(cfg, "train")
    assert int(s0["memory.count"]) == 4 and int(s0["memory.position"]) == 4
    for slot, i in enumerate((4, 6, 12, 14)):
        assert torch.equal(s0["memory.image"][slot], data[i]["image"]), slot
    assert not s0["memory.image"][4:].any()
    assert int(s0["iteration"]) == 4
    ckpt = training.load_checkpoint(training.latest_checkpoint(tmp_path / "ddp"))
    assert ckpt["world_size"] == 2 and ckpt["step"] == 4 and ckpt["model"].keys() == s0.keys()
    for k in s0:
        assert torch.equal(ckpt["model"][k], s0[k]), k


# ------------------------------------------------------------------------------------------------
# evaluation


def test_evaluate_writes_the_named_metrics_and_references(tiny_root, tmp_path):
    task, cfg = task_config(tiny_root, steps=2, seed=1)
    cfg["task"] = "unicorn"
    run = tmp_path / "run"
    _quiet(training.Trainer(task, cfg, run, device="cpu", progress=False).fit)
    result = _quiet(training.evaluate_run, run, device="cpu")
    saved = json.loads((run / "eval" / "metrics.json").read_text())
    assert saved["step"] == 2 and (run / "eval" / "reconstructions.png").exists()
    for key in ("chamfer_l1", "chamfer_l1_icp", "template_chamfer_l1", "template_chamfer_l1_icp",
                "spread_chamfer_l1", "spread_chamfer_l1_icp", "mask_iou", "pose_azimuth_median_deg",
                "pose_elevation_median_deg", "pose_rotation_median_deg", "pose_accuracy_15deg",
                "pose_accuracy_30deg", "pose_azimuth_offset_deg"):
        assert key in saved and math.isfinite(saved[key]), key
        assert saved[key] == pytest.approx(result[key])
    for key in ("medoid_chamfer_l1", "medoid_chamfer_l1_icp"):
        assert math.isfinite(saved[key]) and saved[key] > 0, key
    train = ShapeNetNMR(tiny_root, categories=["car", "chair"], split="train", image_size=32)
    assert saved["medoid_object"] in {name for _, _, name in train.objects}
    assert saved["pose_offset_fitted_on"] == "test"  # the tiny data's val split is empty (0.1 x 5 objects)
    assert saved["test_objects"] == 2 and 0 <= saved["mask_iou"] <= 1
    assert 0 < saved["chamfer_l1_icp"] and 0 < saved["spread_chamfer_l1_icp"]

    # The template reference, computed directly: the ellipsoid seen by the true camera of the drawn views.
    base = ShapeNetNMR(tiny_root, categories=["car", "chair"], split="test", image_size=32)
    chosen = U.one_view_per_object(base, torch.Generator().manual_seed(0))
    model, _ = task.build(cfg, torch.device("cpu"))
    gt_v, gt_f, template = [], [], []
    for i in chosen:
        rotation = base[i]["camera"]["world_mat"][:, :3]
        v, f = U.ground_truth_mesh(base, base._index[i][0])
        gt_v.append(v @ rotation.T)
        gt_f.append(f)
        template.append(model.template_verts @ rotation.T)
    direct = metrics.chamfer_l1_meshes(torch.stack(template), model.faces, gt_v, gt_f, 500, align=True,
                                       generator=torch.Generator().manual_seed(2), icp_num_points=200)
    assert saved["template_chamfer_l1_icp"] == pytest.approx(10 * float(direct.mean()), rel=1e-6)


def _box(size):
    corners = torch.tensor([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=torch.float32)
    faces = torch.tensor([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1], [2, 3, 7], [2, 7, 6],
                          [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]])
    return corners * torch.tensor(size) / 2, faces


def test_medoid_object_is_the_shape_nearest_the_others(tmp_path):
    # Boxes of growing size: the middle one is nearest on average to the others.
    import types

    sizes = [(0.4, 0.2, 0.2), (0.9, 0.4, 0.4), (0.6, 0.3, 0.3), (0.5, 0.25, 0.25), (0.75, 0.35, 0.35)]
    objects = []
    for k, size in enumerate(sizes):
        v, f = _box(size)
        os.makedirs(tmp_path / "cat" / f"o{k}")
        np.savez(tmp_path / "cat" / f"o{k}" / "mesh.npz", verts=v.numpy(), faces=f.numpy())
        objects.append((0, "cat", f"o{k}"))
    data = types.SimpleNamespace(root=str(tmp_path), objects=objects)
    assert U.medoid_object(data, None, 3000, torch.Generator().manual_seed(0)) == 2
    # a subset of candidates picks among those drawn
    drawn = torch.randperm(5, generator=torch.Generator().manual_seed(1)).tolist()[:2]
    assert U.medoid_object(data, 2, 500, torch.Generator().manual_seed(1)) in drawn


def test_evaluate_on_point_clouds_matches_the_meshes(tiny_root, tmp_path):
    # DVR's ShapeNet-NMR has pointcloud.npz and no mesh: the Chamfer protocol runs on the points, and agrees
    # with the mesh-sampled number up to sampling noise; the references that need meshes are left out.
    import shutil

    root = tmp_path / "data"
    shutil.copytree(tiny_root, root)
    for path in glob.glob(str(root / "*" / "*" / "mesh.npz")):  # the tiny data has 100 points: write 3000
        with np.load(path) as npz:
            v, f = torch.from_numpy(npz["verts"]), torch.from_numpy(npz["faces"])
        points = invrender.mesh.sample_points(v[None], f, 3000, generator=torch.Generator().manual_seed(5))[0]
        np.savez(os.path.join(os.path.dirname(path), "pointcloud.npz"), points=points.float().numpy(),
                 normals=points.float().numpy())
        os.remove(path)
    task, cfg = task_config(str(root), eval=dict(TINY_EVAL, num_points=3000, icp_num_points=500))
    torch.manual_seed(0)
    model, _ = task.build(cfg, torch.device("cpu"))
    points = _quiet(task.evaluate, model.eval(), cfg, str(tmp_path / "points"))
    _, cfg_mesh = task_config(tiny_root, eval=cfg["eval"])
    meshes = _quiet(task.evaluate, model, cfg_mesh, str(tmp_path / "meshes"))
    assert points["chamfer_l1"] == pytest.approx(meshes["chamfer_l1"], rel=0.1)
    assert points["chamfer_l1_icp"] == pytest.approx(meshes["chamfer_l1_icp"], rel=0.25)
    assert points["template_chamfer_l1"] == pytest.approx(meshes["template_chamfer_l1"], rel=0.1)
    assert "spread_chamfer_l1" not in points and "medoid_chamfer_l1" not in points
    assert "spread_chamfer_l1" in meshes and "medoid_chamfer_l1" in meshes


class _StubPoses(U.UnicornTask):
    """Predicts each view's true pose turned by ``offsets[split]`` degrees of azimuth, the split told apart by
    the image (val views imply one offset, test views another)."""

    def __init__(self, root, offsets):
        super().__init__()
        self.offsets, self.views = offsets, []
        for split in ("val", "test"):
            try:
                base = ShapeNetNMR(root, categories=["car", "chair"], split=split, image_size=32)
            except ValueError:  # an empty split
                continue
            for i in range(len(base)):
                item = base[i]
                self.views.append((item["image"], item["camera"]["world_mat"][:, :3], split))
        self.calls = []

    def reconstruct(self, model, images):
        out = super().reconstruct(model, images)
        rotations, splits = [], []
        for image in images:
            (gt, split), = [(r, s) for im, r, s in self.views if torch.equal(im, image.cpu())]
            az, el = U.view_angles(gt[None])
            rotations.append(invrender.rotation_matrix(torch.deg2rad(az + self.offsets[split]), torch.deg2rad(el))[0])
            splits.append(split)
        self.calls.append(splits)
        out["pose"] = U.Pose(torch.stack(rotations).to(images), out["pose"].translation)
        return out


def _evaluate_with_stub_poses(root, out_dir, offsets):
    task = _StubPoses(root, offsets)
    _, cfg = task_config(root)
    model, _ = task.build(cfg, torch.device("cpu"))
    with torch.no_grad():
        return task, _quiet(task.evaluate, model.eval(), cfg, str(out_dir))


def test_evaluate_fits_the_pose_offset_on_val_and_applies_it_to_test(tiny_root, tmp_path):
    import shutil

    root = tmp_path / "data"  # the tiny data with its last training object of each category moved to val
    shutil.copytree(tiny_root, root)
    for train in glob.glob(str(root / "*" / "softras_train.lst")):
        names = open(train).read().split()
        open(train, "w").write("".join(n + "\n" for n in names[:-1]))
        open(os.path.join(os.path.dirname(train), "softras_val.lst"), "w").write(names[-1] + "\n")
    task, out = _evaluate_with_stub_poses(str(root), tmp_path / "eval", {"val": 90.0, "test": 120.0})
    assert ["val", "val"] in task.calls  # one seeded view per val object (1 per category)
    assert out["pose_offset_fitted_on"] == "val" and out["pose_offset_objects"] == 2
    assert out["pose_azimuth_offset_deg"] == pytest.approx(90.0)  # A, not the test views' own 120
    # The test errors are measured with A: every test view is 30 degrees off in azimuth (only).
    assert out["pose_azimuth_median_deg"] == pytest.approx(30.0, abs=1e-3)
    assert out["pose_elevation_median_deg"] == pytest.approx(0.0, abs=1e-3)
    assert out["pose_rotation_median_deg"] == pytest.approx(30.0, abs=1e-3)
    assert out["pose_accuracy_15deg"] == 0.0


def test_evaluate_falls_back_to_the_test_views_without_val(tiny_root, tmp_path):
    assert all(not open(lst).read().strip() for lst in glob.glob(os.path.join(tiny_root, "*", "softras_val.lst")))
    task, out = _evaluate_with_stub_poses(tiny_root, tmp_path, {"test": 120.0})
    assert all("val" not in c for c in task.calls)
    assert out["pose_offset_fitted_on"] == "test" and out["pose_offset_objects"] == 2
    assert out["pose_azimuth_offset_deg"] == pytest.approx(120.0)  # the test views' own offset
    assert out["pose_azimuth_median_deg"] == pytest.approx(0.0, abs=1e-3)


def test_one_view_per_object_is_seeded(tiny_root):
    base = ShapeNetNMR(tiny_root, split="test")
    a = U.one_view_per_object(base, torch.Generator().manual_seed(0))
    b = U.one_view_per_object(base, torch.Generator().manual_seed(0))
    assert a == b and len(a) == len(base.objects)
    assert [base._index[i][0] for i in a] == list(range(len(base.objects)))


# ------------------------------------------------------------------------------------------------
# command line


def test_cli_train_then_eval(tiny_root, tmp_path):
    env = _env(tmp_path)
    run = tmp_path / "run"
    small = [f"model.{k}={json.dumps(v)}" for k, v in SMALL_MODEL.items()]
    train = [sys.executable, "-m", "invrender", "train", "unicorn", "--config",
             os.path.join(REPO, "configs", "unicorn_synthetic.yaml"), "--run-dir", str(run), "--no-progress",
             "--device", "cpu", "steps=2", "batch_size=2", "vis_every=2", f"data.root={tiny_root}",
             "data.image_size=32"] + small
    proc = subprocess.run(train, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run / "samples" / "step_00000002" / "reconstructions.png").exists()
    proc = subprocess.run([sys.executable, "-m", "invrender", "eval", str(run), "--device", "cpu",
                           "eval.num_points=300", "eval.icp_num_points=100"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "template (ellipsoid)" in proc.stdout
    assert "chamfer_l1_icp" in json.loads((run / "eval" / "metrics.json").read_text())


# ------------------------------------------------------------------------------------------------
# the demo


def test_demo_unicorn_writes_a_results_folder(tiny_root, tmp_path, capsys):
    pytest.importorskip("trimesh")  # the demo writes its meshes through trimesh
    from PIL import Image

    from invrender.cli import main

    out = tmp_path / "demo"
    small = [f"model.{k}={json.dumps(v)}" for k, v in SMALL_MODEL.items()]
    args = ["demo", "--model", "unicorn", "--out", str(out), "--steps", "2", "--no-progress",
            "data.categories=[car, chair]", f"data.root={tiny_root}",
            "data.image_size=32", "batch_size=4", "eval.num_points=400", "eval.icp_num_points=100"] + small
    assert _quiet(main, args) == 0
    printed = capsys.readouterr().out
    assert "test Chamfer-L1 x10 with ICP: model" in printed and str(out / "index.html") in printed
    page = (out / "index.html").read_text()
    for src in ("reconstructions.png", "turntable_elev0.gif", "turntable_elev30.gif"):
        assert f'src="{src}"' in page and (out / src).stat().st_size > 0
    hrefs = [h.split('"')[0] for h in page.split('href="')[1:]]
    assert hrefs and all((out / h).exists() for h in hrefs)
    assert {"meshes/test0_learned.obj", "meshes/test0_learned.glb", "meshes/test0_ground_truth.obj"} <= set(hrefs)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["model"] == "unicorn" and saved["steps"] == 2 and saved["total_s"] > 0
    for key in ("chamfer_l1_icp", "template_chamfer_l1_icp", "medoid_chamfer_l1_icp", "spread_chamfer_l1_icp",
                "mask_iou"):
        assert math.isfinite(saved[key]), key
        assert f"{saved[key]:.3f}" in page or key == "mask_iou", key  # the comparison table shows the numbers

    # the textured OBJ points at its material and texture; the GLB carries the texture too
    assert "mtllib test0_learned.mtl" in (out / "meshes" / "test0_learned.obj").read_text()
    assert "test0_learned.png" in (out / "meshes" / "test0_learned.mtl").read_text()
    import trimesh

    glb = trimesh.load(out / "meshes" / "test0_learned.glb", force="mesh")
    assert glb.visual.kind == "texture" and glb.visual.material.baseColorTexture is not None

    # turntables: 24 frames, 3 rows (ground truth, learned shaded, learned textured) of 2 test objects; they turn
    gif = Image.open(out / "turntable_elev30.gif")
    assert gif.n_frames == 24
    frames = []
    for k in (0, 6):
        gif.seek(k)
        frames.append(np.asarray(gif.convert("L"), dtype=np.float32))
    zoom = 128 // 32
    assert frames[0].shape == (3 * 32 * zoom + 4 * 4, 2 * 32 * zoom + 3 * 4)
    assert np.abs(frames[0] - frames[1]).max() > 0

    # the learned mesh is saved in the true object frame: R_true^T R_pred v of the model's reading of the view
    cfg = training.load_config(out / "run" / "config.yaml")
    task = U.UnicornTask()
    model, _ = task.build(cfg, torch.device("cpu"))
    model.load_state_dict(training.load_checkpoint(training.latest_checkpoint(out / "run"))["model"])
    model.eval()
    base = ShapeNetNMR(tiny_root, categories=["car", "chair"], split="test", image_size=32)
    item = base[U.one_view_per_object(base, torch.Generator().manual_seed(0))[0]]
    with torch.no_grad():
        pred = model.predict(item["image"][None])
    pose, _ = U.select_pose(pred["candidates"])
    expected = pred["verts"][0] @ (item["camera"]["rotation"].T @ pose.rotation[0]).T
    obj = trimesh.load(out / "meshes" / "test0_learned.obj", force="mesh", process=False)
    np.testing.assert_allclose(obj.vertices, expected[model.faces].reshape(-1, 3).numpy(), atol=1e-5)


def test_demo_rejects_an_unknown_model(tmp_path):
    from invrender.demo import run_demo

    with pytest.raises(ConfigError, match="unknown demo model 'unicron'"):
        run_demo(str(tmp_path / "d"), model="unicron")
    assert not (tmp_path / "d").exists()
