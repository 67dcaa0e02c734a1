"""invrender.training: configs, task registry, Trainer (logging, atomic checkpoints, exact resume,
DDP on CPU with gloo) and the ``invrender train`` / ``invrender eval`` commands, on a toy task."""

import json
import os
import socket
import time

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn
from torch.utils.data import TensorDataset

from invrender import training
from invrender.cli import main as cli_main

# ------------------------------------------------------------------------------------------------
# toy task: a tiny MLP (with dropout, optional) regressing a fixed linear map with noise


def _toy_data(n=24, d=4, seed=123):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.randn(d, 1, generator=g, dtype=torch.float64)
    y = x @ w + 0.01 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    return x, y


class ToyTask(training.Task):
    """``model.kind``: ``mlp`` (dropout, Adam, numpy + python randomness in the step) or ``linear``
    (deterministic SGD, for the DDP comparison)."""

    def default_config(self):
        return {"model": {"kind": "mlp", "hidden": 16, "dropout": 0.3}, "lr": 0.01, "data": {"n": 24}}

    def build(self, config, device):
        m = config["model"]
        if m["kind"] == "linear":
            model = nn.Linear(4, 1).double()
            opt = torch.optim.SGD(model.parameters(), lr=config["lr"])
        else:
            model = nn.Sequential(nn.Linear(4, m["hidden"]), nn.ReLU(), nn.Dropout(m["dropout"]),
                                  nn.Linear(m["hidden"], 1)).double()
            opt = torch.optim.Adam(model.parameters(), lr=config["lr"])
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.9)
        return model.to(device), {"main": opt}, {"main": sched}

    def dataset(self, config, split):
        x, y = _toy_data(config["data"]["n"])
        return TensorDataset(x, y)

    def train_step(self, model, batch, optimizers, step):
        x, y = batch
        opt = optimizers["main"]
        opt.zero_grad()
        pred = model(x)
        loss = ((pred - y) ** 2).mean()
        if not isinstance(training.unwrap(model), nn.Linear):
            # randomness from numpy and python too, so their states must be restored on resume
            loss = loss * (1.0 + 1e-3 * float(np.random.rand()) + 1e-3 * __import__("random").random())
        loss.backward()
        opt.step()
        return {"loss": loss, "half": 0.5}

    def visualize(self, model, batch, out_dir, step):
        torch.rand(3)  # consumes RNG: must not change training
        x, y = batch
        pred = model(x)
        img = torch.sigmoid(torch.cat([pred, y], 1)).float()[None].expand(3, -1, -1)
        with open(os.path.join(out_dir, "mesh.obj"), "w") as f:
            f.write("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
        return {"pred_vs_true": img, "batch": img[None].repeat(2, 1, 1, 1)}

    def evaluate(self, model, config, out_dir):
        x, y = _toy_data(config["data"]["n"])
        with torch.no_grad():
            mse = float(((model(x) - y) ** 2).mean())
        return {"mse": mse}


training.register_task("toy", ToyTask)


def _config(**kw):
    cfg = training.resolve_config(ToyTask(), None, [])
    cfg.update({"steps": 20, "batch_size": 4, "log_every": 5, "ckpt_every": 10, "vis_every": 0})
    cfg.update(kw)
    return cfg


def _params(run_dir):
    state = training.load_checkpoint(training.latest_checkpoint(run_dir))
    return state["model"]


# ------------------------------------------------------------------------------------------------
# configs


def test_overrides_parse_types_and_nested_keys():
    cfg = {"lr": 0.1, "model": {"dims": [1], "act": "relu"}, "name": "a"}
    out = training.apply_overrides(cfg, ["steps=5", "lr=1e-3", "model.dims=[32, 64]", "model.act=elu",
                                          "opt.betas=[0.5, 0.9]", "flag=true", "none=null", "s='7'",
                                          "a.b.c=2.5"])
    assert out["steps"] == 5 and isinstance(out["steps"], int)
    assert out["lr"] == 1e-3 and isinstance(out["lr"], float)
    assert out["model"] == {"dims": [32, 64], "act": "elu"}
    assert out["opt"] == {"betas": [0.5, 0.9]}
    assert out["flag"] is True and out["none"] is None and out["s"] == "7"
    assert out["a"] == {"b": {"c": 2.5}}
    assert cfg["lr"] == 0.1 and cfg["model"]["dims"] == [1]  # input untouched
    with pytest.raises(ValueError, match="key=value"):
        training.apply_overrides(cfg, ["steps"])
    with pytest.raises(ValueError, match="not a mapping"):
        training.apply_overrides(cfg, ["lr.x=1"])


def test_config_file_and_precedence(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("steps: 7\nmodel:\n  hidden: 8\n")
    cfg = training.resolve_config(ToyTask(), path, ["model.dropout=0.0"])
    assert cfg["steps"] == 7 and cfg["batch_size"] == training.TRAIN_DEFAULTS["batch_size"]
    assert cfg["model"] == {"kind": "mlp", "hidden": 8, "dropout": 0.0}
    training.save_config(cfg, tmp_path / "out" / "config.yaml")
    assert training.load_config(tmp_path / "out" / "config.yaml") == cfg


def test_config_keys_and_types_are_checked(tmp_path):
    """A misspelt key, in the file or the overrides, at any depth, is an error naming the closest known key;
    so is a value of the wrong type (keys and types from TRAIN_DEFAULTS and the task's default_config)."""
    task = ToyTask()
    cases = [(["lr_rate=0.1"], "unknown config key 'lr_rate' in the overrides; did you mean 'lr'?"),
             (["model.hiden=8"], "unknown config key 'model.hiden' in the overrides; did you mean 'model.hidden'?"),
             (["hidden=8"], "did you mean 'model.hidden'?"),  # the right name at the wrong level
             (["model.hidden=abc"], "config key 'model.hidden' in the overrides must be an integer, got 'abc'"),
             (["lr=[1]"], "config key 'lr' in the overrides must be a number, got [1]"),
             (["steps=true"], "config key 'steps' in the overrides must be an integer, got True"),
             (["model=3"], "config key 'model' in the overrides must be a mapping")]
    for overrides, message in cases:
        with pytest.raises(training.ConfigError) as info:
            training.resolve_config(task, None, overrides)
        assert message in str(info.value), (overrides, str(info.value))
    path = tmp_path / "c.yaml"
    path.write_text("steps: 7\nmodel:\n  hidden: 8\n  dropuot: 0.1\n")
    with pytest.raises(ValueError, match=f"unknown config key 'model.dropuot' in {path}; did you mean 'model.dropout'"):
        training.resolve_config(task, path)
    path.write_text("zzz: 1\n")
    with pytest.raises(training.ConfigError, match="valid keys: batch_size, .*, model, "):
        training.resolve_config(task, path)
    # right keys and types pass, ints where numbers are expected and null where "off" is meant included
    cfg = training.resolve_config(task, None, ["lr=1", "log_every=null", "keep_checkpoints=null", "run_dir=x"])
    assert cfg["lr"] == 1 and cfg["log_every"] is None
    assert training.apply_overrides({}, ["free.form=1"]) == {"free": {"form": 1}}  # no schema: no check


def test_trainer_counts_must_be_in_range(tmp_path):
    for key, value in (("steps", -3), ("steps", 0), ("batch_size", 0), ("ckpt_every", -1), ("steps", 2.5)):
        with pytest.raises(training.ConfigError, match=f"config key '{key}' must be a (positive|non-negative) "
                                                        f"integer, got {value}"):
            training.Trainer("toy", _config(**{key: value}), tmp_path, device="cpu", progress=False)
    training.Trainer("toy", _config(ckpt_every=None, keep_checkpoints=0), tmp_path, device="cpu", progress=False)


def test_registry():
    assert isinstance(training.get_task("toy"), ToyTask)
    assert "toy" in training.available_tasks()
    with pytest.raises(KeyError, match="unknown task"):
        training.get_task("no_such_task_xyz")


# ------------------------------------------------------------------------------------------------
# trainer


def test_short_run_lowers_loss_and_writes_logs(tmp_path):
    cfg = _config(steps=60, log_every=10, vis_every=30, ckpt_every=30, keep_checkpoints=1,
                  model={"kind": "mlp", "hidden": 16, "dropout": 0.0}, lr=0.03)
    history = training.Trainer("toy", cfg, tmp_path, device="cpu", progress=True).fit()
    losses = [h["loss"] for h in history]
    assert len(history) == 6 and history[-1]["step"] == 60
    assert losses[-1] < 0.5 * losses[0]
    assert history[0]["half"] == 0.5 and "time/step_s" in history[0]
    assert history[0]["lr/main"] == pytest.approx(0.03 * 0.9) and history[-1]["lr/main"] == pytest.approx(0.03 * 0.9 ** 8)
    assert list(tmp_path.glob("tb/events.out.tfevents.*"))
    assert [s for s, _ in training.list_checkpoints(tmp_path)] == [60]  # keep_checkpoints=1
    for step in (30, 60):
        d = tmp_path / "samples" / f"step_{step:08d}"
        assert (d / "pred_vs_true.png").exists() and (d / "batch.png").exists() and (d / "mesh.obj").exists()
    saved = training.load_config(tmp_path / "config.yaml")
    assert saved["task"] == "toy" and saved["steps"] == 60
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 6
    # TensorBoard holds the scalars and images
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert "train/loss" in acc.Tags()["scalars"] and len(acc.Scalars("train/loss")) == 6
    assert "samples/pred_vs_true" in acc.Tags()["images"]


def test_resume_is_bit_identical(tmp_path):
    # 24 samples, batch 4: 6 steps per epoch, so step 10 stops mid-epoch; dropout, shuffling, numpy
    # and python randomness, Adam state, LR scheduler all have to continue exactly.
    straight = tmp_path / "straight"
    training.Trainer("toy", _config(steps=20, vis_every=3), straight, device="cpu", progress=False).fit()
    split = tmp_path / "split"
    training.Trainer("toy", _config(steps=10, vis_every=4), split, device="cpu", progress=False).fit()
    assert [s for s, _ in training.list_checkpoints(split)] == [10]
    torch.manual_seed(999)  # a resumed process starts from other RNG states
    np.random.seed(999)
    trainer = training.Trainer("toy", _config(steps=20), split, device="cpu", resume=True, progress=False)
    trainer.fit()
    assert trainer.step == 20 and trainer.epoch == 3
    a, b = _params(straight), _params(split)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    sa = training.load_checkpoint(training.latest_checkpoint(straight))
    sb = training.load_checkpoint(training.latest_checkpoint(split))
    assert sa["optimizers"]["main"]["state"][0]["exp_avg"].equal(sb["optimizers"]["main"]["state"][0]["exp_avg"])
    assert sa["schedulers"] == sb["schedulers"]
    assert torch.equal(sa["rng"][0]["torch"], sb["rng"][0]["torch"])
    # and a run without dropout differs (the comparison is not vacuous)
    other = tmp_path / "other"
    training.Trainer("toy", _config(steps=20, seed=1), other, device="cpu", progress=False).fit()
    assert not torch.equal(_params(other)["0.weight"], a["0.weight"])


def test_resume_without_checkpoint_starts_fresh_and_past_end_is_noop(tmp_path):
    t = training.Trainer("toy", _config(steps=5, ckpt_every=0), tmp_path, device="cpu", resume=True, progress=False)
    t.fit()
    assert t.step == 5 and [s for s, _ in training.list_checkpoints(tmp_path)] == [5]
    t = training.Trainer("toy", _config(steps=3), tmp_path, device="cpu", resume=True, progress=False)
    assert t.fit() == [] and t.step == 5


def test_checkpoint_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "step_00000001.pt"
    training.save_checkpoint({"x": torch.ones(3)}, path)
    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)  # the temporary file is fully written ...
        f.write(b"partial")
        raise OSError("disk full")  # ... and then the write fails

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        training.save_checkpoint({"x": torch.zeros(3)}, path)
    with pytest.raises(OSError, match="disk full"):
        training.save_checkpoint({"x": torch.zeros(3)}, tmp_path / "checkpoints" / "step_00000002.pt")
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["step_00000001.pt"]  # no temp, no partial
    assert torch.equal(training.load_checkpoint(path)["x"], torch.ones(3))  # old file intact
    # and a failure inside the trainer leaves the earlier checkpoints loadable
    run = tmp_path / "run"
    monkeypatch.setattr(torch, "save", real_save)
    training.Trainer("toy", _config(steps=10, ckpt_every=5), run, device="cpu", progress=False).fit()
    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError):
        training.Trainer("toy", _config(steps=15, ckpt_every=5), run, device="cpu", resume=True, progress=False).fit()
    assert sorted(os.listdir(run / "checkpoints")) == ["step_00000005.pt", "step_00000010.pt"]
    assert training.load_checkpoint(training.latest_checkpoint(run))["step"] == 10


def test_atomic_writes_honour_the_umask(tmp_path):
    """Files written atomically get the mode a plain open() gives (mkstemp's 0600 must not leak through)."""
    old = os.umask(0o022)
    try:
        training.save_config({"a": 1}, tmp_path / "config.yaml")
        training.save_checkpoint({"x": 1}, tmp_path / "ckpt.pt")
        with open(tmp_path / "plain.txt", "w"):
            pass
        for name in ("config.yaml", "ckpt.pt", "plain.txt"):
            assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name
        os.umask(0o077)
        training.save_config({"a": 1}, tmp_path / "private.yaml")
        assert (tmp_path / "private.yaml").stat().st_mode & 0o777 == 0o600
        os.chmod(tmp_path / "config.yaml", 0o640)  # rewriting a file keeps its mode, as open() does
        training.save_config({"a": 2}, tmp_path / "config.yaml")
        assert (tmp_path / "config.yaml").stat().st_mode & 0o777 == 0o640
        os.umask(0o022)
        training.Trainer("toy", _config(steps=2), tmp_path / "run", device="cpu", progress=False).fit()
        for path in ("config.yaml", "checkpoints/step_00000002.pt"):
            assert (tmp_path / "run" / path).stat().st_mode & 0o777 == 0o644, path
    finally:
        os.umask(old)


def test_log_truncated_on_resume_and_workers_keep_order(tmp_path):
    run = tmp_path / "run"
    training.Trainer("toy", _config(steps=10, ckpt_every=5, log_every=1), run, device="cpu", progress=False).fit()
    os.remove(run / "checkpoints" / "step_00000010.pt")  # as if the run died after step 9
    training.Trainer("toy", _config(steps=7, log_every=1), run, device="cpu", resume=True, progress=False).fit()
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6, 7]
    # DataLoader worker processes do not change the data order (or the RNG of the main process)
    lin = {"model": {"kind": "linear"}, "lr": 0.1, "steps": 8, "batch_size": 8}
    training.Trainer("toy", _config(**lin), tmp_path / "w0", device="cpu", progress=False).fit()
    training.Trainer("toy", _config(num_workers=2, **lin), tmp_path / "w2", device="cpu", progress=False).fit()
    assert torch.equal(_params(tmp_path / "w0")["weight"], _params(tmp_path / "w2")["weight"])


def test_nonfinite_loss_stops(tmp_path):
    with pytest.raises(FloatingPointError, match="non-finite loss at step 2"):
        training.Trainer("toy", _config(lr=1e300, log_every=1, model={"kind": "linear"}), tmp_path,
                         device="cpu", progress=False).fit()


def test_bad_batch_size(tmp_path):
    with pytest.raises(ValueError, match="smaller than one global batch"):
        training.Trainer("toy", _config(batch_size=64), tmp_path, device="cpu", progress=False).fit()


# ------------------------------------------------------------------------------------------------
# DDP on CPU (gloo)


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return tuple(s.getsockname()[1] for s in socks)
    finally:
        for s in socks:
            s.close()


def _spawn(fn, args, nprocs, timeout=120):
    """mp.spawn with a deadline: a hung collective fails the test instead of blocking the run."""
    ctx = mp.spawn(fn, args=args, nprocs=nprocs, join=False)
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"DDP workers did not finish in {timeout} s")


def _ddp_worker(rank, world_size, ports, cfg, root):
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(ports[0])})
    torch.set_num_threads(1)
    training.register_task("toy", ToyTask)
    # 1. deterministic SGD, compared with one process by the test (the trainer creates the group)
    trainer = training.Trainer("toy", cfg, os.path.join(root, "ddp"), device="cpu", progress=False)
    trainer.fit()
    assert trainer.distributed and trainer.world_size == world_size and trainer.local_batch == cfg["batch_size"] // 2
    assert not torch.distributed.is_initialized()  # destroyed by the trainer that created it
    # 2. exact resume under DDP with per-rank dropout (a process group that already exists is used)
    # (another port: rank 1 could otherwise reach rank 0's old store before it is torn down)
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{ports[1]}", rank=rank,
                                         world_size=world_size)
    mlp = dict(cfg, model={"kind": "mlp", "hidden": 8, "dropout": 0.3}, lr=0.01)
    training.Trainer("toy", mlp, os.path.join(root, "straight"), device="cpu", progress=False).fit()
    training.Trainer("toy", dict(mlp, steps=4), os.path.join(root, "split"), device="cpu", progress=False).fit()
    torch.manual_seed(1000 + rank)
    training.Trainer("toy", mlp, os.path.join(root, "split"), device="cpu", resume=True, progress=False).fit()
    assert torch.distributed.is_initialized()
    torch.distributed.destroy_process_group()


def test_ddp_two_processes_match_single_process_and_resume(tmp_path):
    cfg = _config(steps=8, batch_size=8, ckpt_every=4, log_every=4,
                  model={"kind": "linear"}, lr=0.1)  # 3 steps per epoch: crosses epochs
    single = tmp_path / "single"
    training.Trainer("toy", cfg, single, device="cpu", progress=False).fit()
    _spawn(_ddp_worker, (2, _free_ports(2), cfg, str(tmp_path)), nprocs=2)
    ddp = tmp_path / "ddp"
    a, b = _params(single), _params(ddp)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), k
    assert not torch.allclose(a["weight"], training.load_checkpoint(
        training.list_checkpoints(ddp)[0][1])["model"]["weight"])  # parameters moved
    state = training.load_checkpoint(training.latest_checkpoint(ddp))
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # per-rank streams
    assert (ddp / "log.jsonl").exists() and list(ddp.glob("tb/events.*"))
    a, b = _params(tmp_path / "straight"), _params(tmp_path / "split")
    assert [s for s, _ in training.list_checkpoints(tmp_path / "split")] == [4, 8]
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ------------------------------------------------------------------------------------------------
# CLI


def test_cli_train_and_eval(tmp_path, capsys):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("batch_size: 4\nlog_every: 1\nckpt_every: 2\nvis_every: 0\nmodel:\n  hidden: 8\n")
    run = tmp_path / "run"
    assert cli_main(["train", "toy", "--config", str(cfg), "--run-dir", str(run), "--device", "auto",
                     "steps=5", "model.dropout=0.1"]) == 0
    saved = training.load_config(run / "config.yaml")
    assert saved["steps"] == 5 and saved["model"] == {"kind": "mlp", "hidden": 8, "dropout": 0.1}
    assert [s for s, _ in training.list_checkpoints(run)] == [2, 4, 5]
    # resume with more steps, config taken from the run directory
    assert cli_main(["train", "toy", "--run-dir", str(run), "--resume", "--no-progress", "steps=6"]) == 0
    assert training.load_checkpoint(training.latest_checkpoint(run))["step"] == 6
    capsys.readouterr()
    assert cli_main(["eval", str(run)]) == 0
    printed = json.loads(capsys.readouterr().out)
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics == printed and metrics["step"] == 6 and metrics["mse"] >= 0
    with pytest.raises(SystemExit):
        cli_main(["train", "toy", "--bogus"])
    assert cli_main(["train", "no_such_task_xyz"]) == 2
    assert "unknown task 'no_such_task_xyz'" in capsys.readouterr().err
