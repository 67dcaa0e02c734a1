"""Adds IG-GAN's 3D set metrics (MMD, coverage, 1-NNA; :meth:`IgganTask.shape_metrics`) to runs evaluated before
they existed, merging them into each ``<run>/eval/metrics.json`` (the FID numbers there are kept). The samples and
references are those ``invrender eval`` draws.

    python tools/iggan_shape_metrics.py runs/iggan/*/
"""

import argparse
import json
import os

import torch

from invrender import training


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run directories with eval/metrics.json")
    args = p.parse_args()
    for run in args.runs:
        path = os.path.join(run, "eval", "metrics.json")
        if not os.path.isfile(path):
            print(f"{run}: no eval/metrics.json, skipped (run invrender eval first)")
            continue
        config = training.load_config(os.path.join(run, "config.yaml"))
        task = training.get_task(config["task"])
        config = training.apply_overrides(config, [], training.config_schema(task))
        if not hasattr(task, "shape_metrics"):
            print(f"{run}: task {config['task']!r} has no shape metrics, skipped")
            continue
        model, _ = task.build(config, torch.device("cpu"))
        model.load_state_dict(training.load_checkpoint(training.latest_checkpoint(run))["model"])
        model.eval()
        metrics = json.load(open(path))
        metrics.update(task.shape_metrics(model, config))
        with open(path, "w") as f:
            f.write(json.dumps(metrics, indent=2, default=float) + "\n")
        best = metrics.get("shape_best")
        print(f"{run}: " + (f"MMD {best['mmd']:.3f} coverage {best['coverage']:.2f} 1-NNA {best['nna']:.2f}"
                            if best else "2D samples only (references added)"))


if __name__ == "__main__":
    main()
