"""Time training steps of each model on a device (for tools/gpu_check.sh; works on the CPU too).

    python tools/time_train_step.py --device cuda [--steps 10] [--out results.jsonl]

For each model task (configs/<task>_synthetic.yaml with its paper defaults) it generates a small
synthetic dataset (ShapeNet-NMR layout, 64x64 views), builds the model with the config's batch
size, runs two warm-up steps, then times ``--steps`` steps of ``task.train_step`` with the device
synchronised, and prints one line per model: ``train step <task>: <ms> ms/step (batch B, device)``.
A JSON line per model is appended to ``--out`` when given.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from invrender import synthetic, training  # noqa: E402

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def model_tasks():
    """Tasks that have a synthetic-data config (``configs/<task>_synthetic.yaml``)."""
    return sorted(f[: -len("_synthetic.yaml")] for f in os.listdir(CONFIGS) if f.endswith("_synthetic.yaml"))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_task(name: str, root: str, device: torch.device, steps: int) -> dict:
    task = training.get_task(name)
    cfg = training.resolve_config(task, os.path.join(CONFIGS, f"{name}_synthetic.yaml"), [f"data.root={root}"])
    model, optimizers = task.build(cfg, device)[:2]
    data = task.dataset(cfg, "train")
    if len(data) < cfg["batch_size"]:
        raise SystemExit(f"{name}: {len(data)} training views, fewer than the batch size {cfg['batch_size']}")
    loader = torch.utils.data.DataLoader(data, batch_size=cfg["batch_size"], shuffle=True, drop_last=True,
                                         collate_fn=getattr(task, "collate_fn", None))
    batches = []
    while len(batches) < steps + 2:
        batches += [training.move_to_device(b, device) for b in loader]
    model.train()
    for step in range(2):  # warm-up: kernels' first launch, allocator
        task.train_step(model, batches[step], optimizers, step)
    _sync(device)
    start = time.perf_counter()
    for step in range(2, steps + 2):
        task.train_step(model, batches[step], optimizers, step)
    _sync(device)
    ms = (time.perf_counter() - start) / steps * 1e3
    return {"task": name, "device": str(device), "batch_size": cfg["batch_size"], "steps": steps, "ms_per_step": ms,
            "torch": torch.__version__}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--out", default=None, help="append one JSON line per model here")
    args = p.parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as root:
        synthetic.generate_dataset(root, objects_per_category=12, categories=("car",), views=12, image_size=64,
                                   points=0, voxel_resolution=32, progress=False)
        for name in model_tasks():
            row = time_task(name, root, device, args.steps)
            print(f"train step {name}: {row['ms_per_step']:.1f} ms/step (batch {row['batch_size']}, {device})")
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
