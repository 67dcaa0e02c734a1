"""The FID table of IG-GAN runs (issue 16): every ``<runs>/*/eval/metrics.json`` of an IG-GAN task as one markdown
row, with the run's steps and wall time, beside the learning-free references its evaluation measured; then the
3D set metrics (MMD, coverage, 1-NNA of ``1 - IoU`` against held-out shapes) of the runs that have them.

    python tools/iggan_table.py runs/iggan > benchmarks/results/iggan-fid.md
"""

import argparse
import glob
import json
import os

import yaml


def rows(root):
    out = []
    for path in sorted(glob.glob(os.path.join(root, "*", "eval", "metrics.json"))):
        run = os.path.dirname(os.path.dirname(path))
        m = json.load(open(path))
        if "fid" not in m:
            continue
        cfg = yaml.safe_load(open(os.path.join(run, "config.yaml")))
        log = [json.loads(line) for line in open(os.path.join(run, "log.jsonl"))]
        seconds = sum(h.get("time/step_s", 0.0) * cfg.get("log_every", 1) for h in log)
        out.append({"run": os.path.basename(run), "task": cfg["task"], "category": m["category"], "steps": m["step"],
                    # runs from before model.l2_reduction existed used the per-pixel mean
                    "dom": (f"{(cfg.get('model') or {}).get('dom_weight', 100.0):g} "
                            f"({(cfg.get('model') or {}).get('l2_reduction', 'mean')} L2)") if cfg["task"] == "iggan" else "",
                    "minutes": seconds / 60, "best": m.get("fid_best_threshold"),
                    "mean_best": m.get("reference_fid_mean_shape_best_threshold"),
                    **{k: m[k] for k in ("fid", "reference_fid_data", "reference_fid_mean_shape",
                                         "reference_fid_boxes")},
                    **{k: m.get(k) for k in ("shape_best", "reference_shape_data", "reference_shape_mean_shape",
                                             "reference_shape_boxes", "num_shapes")}})
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", nargs="?", default="runs/iggan")
    args = p.parse_args()
    table = rows(args.root)
    print("| run | task | category | steps | DOM weight (over L2) | train min (approx.) | FID (t=0.5) | FID (best t) | "
          "data (floor) | mean shape (t=0.5) | mean shape (best t) | random boxes |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")

    def f(x):
        return "-" if x is None else f"{x:.1f}"
    for r in sorted(table, key=lambda r: (r["category"], r["steps"], r["task"])):
        print(f"| {r['run']} | {r['task']} | {r['category']} | {r['steps']} | {r['dom']} | {r['minutes']:.0f} | "
              f"{f(r['fid'])} | {f(r['best'])} | {f(r['reference_fid_data'])} | {f(r['reference_fid_mean_shape'])} | "
              f"{f(r['mean_best'])} | {f(r['reference_fid_boxes'])} |")
    shaped = [r for r in table if r["reference_shape_data"]]
    if not shaped:
        return

    def s(m):
        return "-" if not m else f"{m['mmd']:.3f} / {100 * m['coverage']:.0f}% / {100 * m['nna']:.0f}%"
    print()
    print("3D set metrics, MMD / coverage / 1-NNA (1 - IoU of 32^3 grids against held-out objects; lower MMD, higher "
          "coverage, 1-NNA nearer 50% are better):")
    print()
    print("| run | task | category | steps | DOM weight (over L2) | model (t, azimuth) | data (floor) | mean shape | random boxes |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in sorted(shaped, key=lambda r: (r["category"], r["steps"], r["task"])):
        b = r["shape_best"]
        where = f" (t={b['threshold']:g}, {b['azimuth']:.0f} deg)" if b else ""
        print(f"| {r['run']} | {r['task']} | {r['category']} | {r['steps']} | {r['dom']} | {s(b)}{where} | "
              f"{s(r['reference_shape_data'])} | {s(r['reference_shape_mean_shape'])} | "
              f"{s(r['reference_shape_boxes'])} |")


if __name__ == "__main__":
    main()
