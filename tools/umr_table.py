"""The UMR ablation table (issue 17; the paper's Table 2 on synthetic data): every ``<runs>/*/eval/metrics.json`` of a
``umr`` run as one markdown row (mask IoU, keypoint transfer PCK via camera and via texture flow, pose error, and
Chamfer-L1 with ICP), then the learning-free references the evaluation measured under the same protocol.

    python tools/umr_table.py runs/umr > benchmarks/results/umr-ablation.md
"""

import argparse
import glob
import json
import os

import yaml


def ablation(cfg) -> str:
    m = cfg.get("model") or {}
    off = [name for name, keys in (("semantic", ("part_probability_weight", "part_vertex_weight")),
                                   ("texture cycle", ("texture_cycle_weight",))) if all(m.get(k) == 0 for k in keys)]
    return "full" if not off else "without " + " and ".join(off)


def stage_options(cfg) -> str:
    """The options of ours a run trained with (UmrConfig's stage-1 switches), "code" for none; "texture moves
    geometry" for ``model.texture_detach: false`` and "mean regularizers" for ``model.regularizer_reduction: mean``
    (the runs trained before these existed carry them in their config)."""
    m = cfg.get("model") or {}
    out = []
    if m.get("camera_bounds"):
        out.append("bounded cameras" + (" (shared)" if m.get("camera_shared_offsets") else ""))
    if m.get("rigid_steps"):
        out.append(f"rigid {m['rigid_steps']} steps")
    for key, name in (("shape_from_best", "shape from best"),
                      ("reset_multiplex", "reset"), ("semantic_trains_probability", "parts pick camera"),
                      ("texture_dt_flat_inside", "flat DT")):
        if m.get(key):
            out.append(name)
    if m.get("camera_usage_weight"):
        out.append(f"usage {m['camera_usage_weight']:g}")
    if m.get("semantic_uv_source") == "projection":
        out.append("parts by projection")
    if m.get("camera_selection") == "min_loss":
        out.append(f"lowest-loss hypothesis (from round {m.get('camera_selection_round', 0)})")
    if m.get("m_step_align_hypotheses"):
        out.append("aligned M-step")
    if m.get("mask_trains_camera") is False:
        out.append("cameras from the parts")
    if m.get("template_update") == "fit":
        out.append("fitted template")
    if m.get("camera_balance_weight"):
        out.append(f"balanced choice {m['camera_balance_weight']:g}")
    for key, name, default in (("laplacian_weight", "Laplacian", 0.15), ("flatten_weight", "flatten", 5e-4),
                               ("deform_weight", "deformation", 1.0), ("texture_cycle_weight", "cycle", 1.0)):
        if key in m and m[key] != default:
            out.append(f"{name} {m[key]:g}")
    if m.get("regularizer_reduction", "sum") == "mean":
        out.append("mean regularizers")
    if not m.get("texture_detach", True):
        out.append("texture moves geometry")
    return ", ".join(out) or "code"


def fmt(value, spec=".1f"):
    return "-" if value is None else format(value, spec)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", nargs="?", default="runs/umr")
    args = p.parse_args()
    rows = []
    for path in sorted(glob.glob(os.path.join(args.root, "*", "eval", "metrics.json"))):
        run = os.path.dirname(os.path.dirname(path))
        cfg = yaml.safe_load(open(os.path.join(run, "config.yaml")))
        if cfg.get("task") != "umr":
            continue
        m = json.load(open(path))
        log = [json.loads(line) for line in open(os.path.join(run, "log.jsonl"))]
        minutes = sum(h.get("time/step_s", 0.0) * cfg.get("log_every", 1) for h in log) / 60
        rows.append((run, cfg, m, minutes))
    print("| run | model | options (ours) | steps (EM round length) | train min | mask IoU | PCK camera | PCK texture flow "
          "| pose median deg | pose < 30 deg | up to a half turn | up to a quarter turn | Chamfer-L1 x10 (ICP) "
          "| its learned template's |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for run, cfg, m, minutes in rows:
        print(f"| {os.path.basename(run)} | {ablation(cfg)} | {stage_options(cfg)} | {m['step']} "
              f"({cfg['em']['steps_per_round']}) | "
              f"{minutes:.0f} | {m['mask_iou']:.3f} | {m.get('pck_camera', float('nan')):.1f} | "
              f"{m.get('pck_texture_flow', float('nan')):.1f} | {m.get('pose_rotation_median_deg', float('nan')):.1f} | "
              f"{100 * m.get('pose_accuracy_30deg', float('nan')):.0f}% | {fmt(m.get('pose_half_turn_median_deg'))} | "
              f"{fmt(m.get('pose_quarter_turn_median_deg'))} | {m.get('chamfer_l1_icp', float('nan')):.3f} | "
              f"{m.get('template_chamfer_l1_icp', float('nan')):.3f} |")
    if rows:
        m = rows[0][2]
        print()
        print(f"References under the same protocol ({m['test_images']} test views, {m.get('pck_pairs')} pairs with "
              f"{m.get('pck_keypoints')} keypoints visible in both, Chamfer on {m.get('chamfer_objects')} objects):")
        print()
        ref = max((r[2] for r in rows), key=lambda x: "constant_pose_quarter_turn_median_deg" in x)
        print("| reference | mask IoU | PCK | pose median deg | pose < 30 deg | up to a half turn | up to a quarter turn "
              "| Chamfer-L1 x10 (ICP) |")
        print("|---|---|---|---|---|---|---|---|")
        print(f"| starting sphere | {m['sphere_mask_iou']:.3f} | | | | | | {m.get('sphere_chamfer_l1_icp', float('nan')):.3f} |")
        print(f"| copy the source keypoint | | {m.get('pck_identity', float('nan')):.1f} | | | | | |")
        print(f"| one constant pose | | | {m.get('constant_pose_rotation_median_deg', float('nan')):.1f} | "
              f"{100 * m.get('constant_pose_accuracy_30deg', float('nan')):.0f}% | "
              f"{fmt(ref.get('constant_pose_half_turn_median_deg'))} | "
              f"{fmt(ref.get('constant_pose_quarter_turn_median_deg'))} | |")
        for name, key in (("medoid training shape", "medoid_chamfer_l1_icp"),
                          ("category spread (another test object)", "spread_chamfer_l1_icp")):
            if key in m:
                print(f"| {name} | | | | | | | {m[key]:.3f} |")


if __name__ == "__main__":
    main()
