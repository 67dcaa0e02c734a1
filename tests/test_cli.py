"""The command line as a new user meets it: mistakes in what was asked for are one line
``invrender: error: ...`` with exit status 2 (bugs keep their traceback), counts must be positive, and
training killed by SIGKILL resumes bit-identically (real processes)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import invrender
from invrender import synthetic, training
from invrender.cli import main


def _tiny(root):
    """Overrides that make any run of the ucar task take a second or two (so a missing check fails fast)."""
    return [f"data.root={root}", "batch_size=4", "steps=1", "model.channels=8", "model.texturizer_hidden=32",
            "vis_every=0"]


def _argv(words, root, tmp):
    """``words`` with ``{root}`` and ``{tmp}`` filled in; the tiny overrides come first (a later one wins)."""
    words = [w.format(root=root, tmp=tmp) for w in words]
    if words[0] == "train":
        return words[:2] + ["--run-dir", f"{tmp}/run", "--no-progress"] + _tiny(root) + words[2:]
    if words[0] == "demo":
        return words[:1] + ["--out", f"{tmp}/demo", "--no-progress"] + _tiny(root) + words[1:]
    return words


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("invrender: error: "), err
    return err.strip()


def _env(tmp_path):
    """Environment of a child ``python -m invrender``: this process's invrender, one thread, no home cache."""
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(invrender.__file__)))
    path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                INVRENDER_CACHE=str(tmp_path / "cache"))


# ------------------------------------------------------------------------------------------------
# unknown keys


@pytest.mark.parametrize("words, message", [
    (["train", "ucar", "lr_typo=5"], "unknown config key 'lr_typo' in the overrides; did you mean 'model.lr'?"),
    (["train", "ucar", "bach_size=5"], "unknown config key 'bach_size' in the overrides; did you mean 'batch_size'?"),
    (["train", "ucar", "model.chanels=8"], "unknown config key 'model.chanels' in the overrides; "
                                           "did you mean 'model.channels'?"),
    (["demo", "foo.bar=1"], "unknown config key 'foo' in the overrides"),
    (["demo", "model.chanels=8"], "did you mean 'model.channels'?"),
    (["demo", "model.image_size=32"], "did you mean 'data.image_size'?"),  # the data sets the model's size
    (["demo", "data.synthetic.view=3"], "did you mean 'data.synthetic.views'?"),
])
def test_unknown_config_keys_are_one_line_errors(words, message, tiny_root, tmp_path, capsys):
    assert main(_argv(words, tiny_root, tmp_path)) == 2
    assert message in _error_line(capsys)
    assert not (tmp_path / "run").exists() and not (tmp_path / "demo").exists()  # nothing started


def test_unknown_keys_in_a_config_file(tiny_root, tmp_path, capsys):
    path = tmp_path / "my.yaml"
    for text, message in [("model:\n  chanels: 8\n", f"unknown config key 'model.chanels' in {path}; "
                                                      "did you mean 'model.channels'?"),
                          ("stpes: 3\n", f"unknown config key 'stpes' in {path}; did you mean 'steps'?"),
                          ("data:\n  image_size: abc\n", f"config key 'data.image_size' in {path} must be an integer, "
                                                         "got 'abc'")]:
        path.write_text(text)
        assert main(_argv(["train", "ucar", "--config", str(path)], tiny_root, tmp_path)) == 2
        assert message in _error_line(capsys)


def test_a_real_process_prints_one_line_and_exits_2(tiny_root, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "invrender"] + _argv(["train", "ucar", "model.chanels=8"], tiny_root,
                                                                      tmp_path),
                          env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == ("invrender: error: unknown config key 'model.chanels' in the overrides; "
                           "did you mean 'model.channels'?\n")


# ------------------------------------------------------------------------------------------------
# other mistakes: one line, exit status 2


@pytest.mark.parametrize("words, message", [
    (["train", "ucar", "model.channels=abc"], "config key 'model.channels' in the overrides must be an integer, "
                                              "got 'abc'"),
    (["train", "ucar", "model.betas=[0.9]"], "config key 'model.betas' in the overrides must be a list of 2 numbers, "
                                             "got [0.9]"),
    (["train", "ucar", "model.azimuth_lr=fast"], "must be a number or null, got 'fast'"),
    (["train", "ucar", "model.objective=vea"], "UcarConfig.objective must be one of"),  # checked by the model
    (["train", "ucar", "steps=-3"], "config key 'steps' must be a positive integer, got -3"),
    (["train", "ucar", "--config", "{tmp}/missing.yaml"], "config file '{tmp}/missing.yaml' not found"),
    (["train", "ucar", "data.categories=[boat]"], "unknown or ambiguous category 'boat'"),
    (["train", "ucar", "data.root={tmp}/nowhere"], "ShapeNet-NMR root not found"),
    (["train", "ucar", "--device", "cuda"], "device 'cuda' requested but CUDA is not available"),
    (["train", "ucar", "--device", "gpu"], "unknown device 'gpu'"),
    (["train", "no_such_task"], "unknown task 'no_such_task'"),
    (["demo", "--device", "cuda"], "device 'cuda' requested but CUDA is not available"),
    (["demo", "--categories", "boat"], "unknown or ambiguous category 'boat'"),
    (["eval", "{tmp}/no_run"], "run directory '{tmp}/no_run' not found"),
    (["eval", "{tmp}"], "'{tmp}' is not a run directory: it has no config.yaml"),
    (["data", "synth", "--root", "{tmp}/synth", "--quiet", "--categories", "boat"], "unknown category 'boat'"),
])
def test_mistakes_are_one_line_errors(words, message, tiny_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # also on a GPU machine
    assert main(_argv(words, tiny_root, tmp_path)) == 2
    assert message.format(tmp=tmp_path) in _error_line(capsys)


def test_eval_of_a_run_without_checkpoint_or_with_a_bad_override(tiny_root, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_argv(["train", "ucar"], tiny_root, tmp_path)) == 0
    assert main(["eval", str(run), "model.chanels=8"]) == 2
    assert "did you mean 'model.channels'?" in _error_line(capsys)
    assert main(["eval", str(run), "--checkpoint", str(tmp_path / "nope.pt")]) == 2
    assert f"checkpoint '{tmp_path}/nope.pt' not found" in _error_line(capsys)
    for _, path in training.list_checkpoints(run):
        os.remove(path)
    assert main(["eval", str(run)]) == 2
    assert "no checkpoint in" in _error_line(capsys)


def test_demo_checks_categories_before_generating_its_data(tmp_path, capsys, monkeypatch):
    # Without data.root the demo uses the embedded data, generated on first use (minutes): a misspelt
    # category must fail before that, naming the closest one.
    def no_generation(*args, **kwargs):
        raise AssertionError("the default data was generated before the categories were checked")

    monkeypatch.setattr(synthetic, "generate_dataset", no_generation)
    monkeypatch.setenv("INVRENDER_CACHE", str(tmp_path / "cache"))
    assert main(["demo", "--out", str(tmp_path / "demo"), "--no-progress", "--categories", "car", "chiar"]) == 2
    assert "unknown category 'chiar' for the demo's synthetic data; did you mean 'chair'?" in _error_line(capsys)


@pytest.mark.parametrize("error", [ZeroDivisionError("a bug"), ValueError("a bug that is no usage error")])
def test_bugs_keep_their_traceback(error, tiny_root, tmp_path, monkeypatch):
    def fit(self):
        raise error

    monkeypatch.setattr(training.Trainer, "fit", fit)
    with pytest.raises(type(error), match="a bug"):
        main(_argv(["train", "ucar"], tiny_root, tmp_path))


# ------------------------------------------------------------------------------------------------
# counts


@pytest.mark.parametrize("words, message", [
    (["demo", "--steps", "-3"], "argument --steps: must be positive, got -3"),
    (["demo", "--steps", "0"], "argument --steps: must be positive, got 0"),
    (["demo", "--steps", "ten"], "argument --steps: expected an integer, got 'ten'"),
    (["data", "synth", "--objects", "0"], "argument --objects: must be positive, got 0"),
    (["data", "synth", "--views", "-1"], "argument --views: must be positive, got -1"),
    (["data", "synth", "--size", "0"], "argument --size: must be positive, got 0"),
    (["data", "synth", "--points", "-5"], "argument --points: must be at least 0, got -5"),
    (["data", "synth", "--voxels", "-5"], "argument --voxels: must be at least 0, got -5"),
])
def test_counts_must_be_positive(words, message, tiny_root, tmp_path, capsys):
    if words[0] == "data":  # a small dataset, should the check be missing
        words = words[:2] + ["--root", "{tmp}/synth", "--quiet", "--categories", "car", "--objects", "1",
                             "--views", "1", "--size", "8", "--points", "0", "--voxels", "0"] + words[2:]
    with pytest.raises(SystemExit) as info:
        main(_argv(words, tiny_root, tmp_path))
    assert info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "demo").exists() and not (tmp_path / "synth").exists()


# ------------------------------------------------------------------------------------------------
# SIGKILL and resume, from outside


def test_training_killed_by_sigkill_resumes_bit_identically(tiny_root, tmp_path):
    """A real ``invrender train`` killed (SIGKILL) after its first checkpoint and run again with the same
    command (``--resume``) ends with the weights, optimizer states, RNG states and logged losses of an
    uninterrupted run, bit for bit (mid-epoch: 36 training views, batch 4)."""
    steps = 40

    def command(run_dir):
        return [sys.executable, "-m", "invrender", "train", "ucar", "--run-dir", str(run_dir), "--resume",
                "--no-progress", "--device", "cpu", f"data.root={tiny_root}", "batch_size=4", f"steps={steps}",
                "ckpt_every=3", "log_every=1", "vis_every=0", "keep_checkpoints=0", "seed=3", "model.channels=8",
                "model.texturizer_hidden=32"]

    env = _env(tmp_path)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(command(straight), env=env, check=True, capture_output=True, timeout=300)

    proc = subprocess.Popen(command(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not training.list_checkpoints(killed):
            assert proc.poll() is None, "the run ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()  # no-op once it is dead; never leave it running
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    before = {path: os.stat(path).st_ino for _, path in training.list_checkpoints(killed)}
    assert max(s for s, _ in training.list_checkpoints(killed)) < steps, "the run finished before it was killed"
    subprocess.run(command(killed), env=env, check=True, capture_output=True, timeout=300)
    # it continued from the newest checkpoint (a run started afresh would have rewritten the older ones)
    assert {path: os.stat(path).st_ino for path in before} == before

    a = training.load_checkpoint(training.latest_checkpoint(straight))
    b = training.load_checkpoint(training.latest_checkpoint(killed))
    assert a["step"] == b["step"] == steps
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for name in a["optimizers"]:
        for i, state in a["optimizers"][name]["state"].items():
            for k, v in state.items():
                assert torch.equal(v, b["optimizers"][name]["state"][i][k]), (name, i, k)
    assert torch.equal(a["rng"][0]["torch"], b["rng"][0]["torch"])

    def losses(run_dir):
        rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
        return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in rows]

    assert losses(straight) == losses(killed) and len(losses(killed)) == steps
