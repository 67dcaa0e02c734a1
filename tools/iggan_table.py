"""The FID table of IG-GAN runs (issue 16): every ``<runs>/*/eval/metrics.json`` of an IG-GAN task as one markdown
row, with the run's steps and wall time, beside the learning-free references its evaluation measured.

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
                    "dom": (cfg.get("model") or {}).get("dom_weight", 100.0) if cfg["task"] == "iggan" else "",
                    "minutes": seconds / 60, **{k: m[k] for k in ("fid", "reference_fid_data",
                                                                   "reference_fid_mean_shape", "reference_fid_boxes")}})
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", nargs="?", default="runs/iggan")
    args = p.parse_args()
    table = rows(args.root)
    print("| run | task | category | steps | DOM weight | train min (approx.) | FID | data (floor) | mean shape | random boxes |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in sorted(table, key=lambda r: (r["category"], r["steps"], r["task"])):
        print(f"| {r['run']} | {r['task']} | {r['category']} | {r['steps']} | {r['dom']} | {r['minutes']:.0f} | "
              f"{r['fid']:.1f} | {r['reference_fid_data']:.1f} | {r['reference_fid_mean_shape']:.1f} | "
              f"{r['reference_fid_boxes']:.1f} |")


if __name__ == "__main__":
    main()
