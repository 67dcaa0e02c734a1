"""UNICORN's ablations (paper Table 3) on the synthetic data, under one budget, with the references beside them.

Trains each variant on each category with the demo's config (``invrender.demo.UNICORN_DEMO_CONFIG``: the
paper's model and losses, a schedule of minutes) and the same number of steps, evaluates it with the ShapeNet
protocol (``invrender eval``), and writes a Markdown table::

    python tools/unicorn_ablations.py --categories car chair --steps 450 \\
        --out runs/ablations --results benchmarks/results/unicorn-ablations.md

Variants: ``full``; ``no_swap`` (swap loss weight 0, section 3.3); ``no_progressive`` (every code at its full
size from the first step instead of the 0/2/8/32 shape and 2/8/32/128 texture stages, section 3.2). The paper's
direction on ShapeNet: full < no swap < no progressive in Chamfer-L1. Runs go ``--parallel`` at a time, each
with ``OMP_NUM_THREADS=--threads``; every run's log is ``<out>/<category>_<variant>.log``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

VARIANTS = {
    "full": [],
    "no_swap": ["model.swap_weight=0"],
    "no_progressive": ["model.shape_code_sizes=[32,32,32,32]", "model.texture_code_sizes=[128,128,128,128]"],
}

COLUMNS = [("chamfer_l1_icp", "CD-L1 x10 (ICP)"), ("chamfer_l1", "CD-L1 x10 (posed)"), ("mask_iou", "mask IoU"),
           ("pose_azimuth_median_deg", "azimuth err. (deg)"), ("pose_accuracy_30deg", "pose acc. 30deg")]
REFERENCES = [("template_chamfer_l1_icp", "template"), ("medoid_chamfer_l1_icp", "medoid"),
              ("spread_chamfer_l1_icp", "spread")]


def _run(job):
    category, variant, args = job
    import yaml

    from invrender import training
    from invrender.demo import UNICORN_DEMO_CONFIG
    from invrender.models.unicorn import UnicornTask

    run_dir = os.path.join(args.out, f"{category}_{variant}")
    log = os.path.join(args.out, f"{category}_{variant}.log")
    config = training.merge_config(UnicornTask().default_config(), UNICORN_DEMO_CONFIG)
    config.update(task="unicorn", steps=args.steps, seed=args.seed, vis_every=0, ckpt_every=args.steps)
    config["data"]["categories"] = [category]
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"{category}_{variant}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    start = time.time()
    with open(log, "w") as out:
        for cmd in ([sys.executable, "-m", "invrender", "train", "unicorn", "--config", path, "--run-dir", run_dir,
                     "--no-progress", "--device", "cpu"] + VARIANTS[variant],
                    [sys.executable, "-m", "invrender", "eval", run_dir, "--device", "cpu"]):
            if subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env).returncode != 0:
                return category, variant, None, time.time() - start
    with open(os.path.join(run_dir, "eval", "metrics.json")) as f:
        return category, variant, json.load(f), time.time() - start


def _table(results, args) -> str:
    lines = ["# UNICORN ablations on the synthetic data (paper Table 3)", "",
             f"Command: `python tools/unicorn_ablations.py --categories {' '.join(args.categories)} --steps "
             f"{args.steps} --threads {args.threads} --parallel {args.parallel}` (demo config: "
             f"`invrender.demo.UNICORN_DEMO_CONFIG`; {args.steps} steps of batch 16 per run, CPU, "
             f"{args.threads} thread(s) each, {args.parallel} at a time). Test split: one seeded view per object.", "",
             "| category | variant | " + " | ".join(name for _, name in COLUMNS) + " | minutes |",
             "|---|---|" + "---|" * (len(COLUMNS) + 1)]
    refs = {}
    for category, variant, metrics, seconds in results:
        if metrics is None:
            lines.append(f"| {category} | {variant} | " + " | ".join("failed" for _ in COLUMNS) + f" | {seconds / 60:.1f} |")
            continue
        lines.append(f"| {category} | {variant} | " + " | ".join(f"{metrics[k]:.3f}" for k, _ in COLUMNS)
                     + f" | {seconds / 60:.1f} |")
        refs[category] = {name: metrics.get(key) for key, name in REFERENCES}
    lines += ["", "Learning-free references under the same protocol (Chamfer-L1 x10 with ICP):", "",
              "| category | " + " | ".join(name for _, name in REFERENCES) + " |", "|---|" + "---|" * len(REFERENCES)]
    for category, r in refs.items():
        lines.append(f"| {category} | " + " | ".join("-" if v is None else f"{v:.3f}" for v in r.values()) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--categories", nargs="+", default=["car", "chair"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=450)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--out", default="runs/ablations")
    parser.add_argument("--results", default=None, help="Markdown file for the table (default: print only)")
    args = parser.parse_args(argv)
    jobs = [(c, v, args) for c in args.categories for v in args.variants]
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        results = list(pool.map(_run, jobs))
    table = _table(results, args)
    print(table)
    if args.results:
        os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
        with open(args.results, "w") as f:
            f.write(table)
    return 0 if all(m is not None for _, _, m, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
