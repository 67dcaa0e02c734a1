"""How well a UMR run's cameras follow the true poses, at each of its checkpoints (synthetic data; a quick probe
while a run trains, without the full evaluation's keypoints and Chamfer).

    python tools/umr_pose_probe.py runs/umr/<run> [--views 96]

For each checkpoint: the median geodesic pose error on test views after one rotation aligning the learned object
frame to the true one (fitted on the val split, as ``invrender eval``), the same allowing each image a half turn
about the true vertical axis (the front-back confusion of silhouettes), the same up to quarter turns (the cross a rigid stage learns first is ambiguous by them), the share of images each camera hypothesis
wins, the mean scale, the mean silhouette IoU and the texture flow's spread (1: it reads the whole object, 0:
a spot) and the share of faces folded over; beside them the constant pose's error.
"""

import argparse
import os

import torch

from invrender import metrics, training
from invrender.models import umr as U
from invrender.models.unicorn import one_view_per_object


def flipped_faces(verts, model):
    """The share of the meshes' faces whose normal turned against the sphere's (the mesh folded over)."""
    faces = model.faces

    def normals(v):
        return torch.cross(v[..., faces[:, 1], :] - v[..., faces[:, 0], :], v[..., faces[:, 2], :] - v[..., faces[:, 0], :],
                           dim=-1)
    return float(((normals(verts) * normals(model.vertex_sphere)).sum(-1) < 0).double().mean())


def flow_spread(flow, masks):
    """The texture flow's spread over the image (the std of its sample points) over the silhouette's: 1 when the
    UV map fetches colours from the whole object, near 0 when it collapsed onto a spot."""
    S = masks.shape[-1]
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, S), torch.linspace(-1, 1, S), indexing="ij")
    grid = torch.stack([xs, ys], -1).reshape(-1, 2)
    m = masks.flatten(1)
    mean = (m[..., None] * grid).sum(1) / m.sum(1, keepdim=True)
    sil = ((m[..., None] * (grid - mean[:, None]) ** 2).sum(1) / m.sum(1, keepdim=True)).sum(-1).sqrt()
    fl = flow.flatten(1, 2)
    return float((fl.var(1).sum(-1).sqrt() / sil).mean())


def report(rot, gt, vrot, vgt):
    parts = []
    for name, turns in (("exact", (0,)), ("half turn", (0, 2)), ("quarter turn", (0, 1, 2, 3))):
        err = U.turn_tolerant_errors(rot, gt, U.fit_rotation_offset_robust(vrot, vgt, turns), turns)
        parts.append(f"{name} {float(err.median()):5.1f}")
    return ", ".join(parts)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--views", type=int, default=96, help="test views (spread over the split)")
    args = parser.parse_args(argv)
    config = training.load_config(os.path.join(args.run_dir, "config.yaml"))
    task = training.get_task("umr")
    test = task._base(config, "test", noise=False)
    val = task._base(config, "val", noise=False)
    idx = torch.linspace(0, len(test) - 1, min(args.views, len(test))).round().long().unique().tolist()
    items = [test[i] for i in idx]
    images = torch.stack([it["image"] for it in items])
    masks = torch.stack([it["mask"] for it in items])
    gt = torch.stack([it["camera"]["rotation"] for it in items]).double()
    vitems = [val[i] for i in one_view_per_object(val, torch.Generator().manual_seed(0))]
    vimages = torch.stack([it["image"] for it in vitems])
    vgt = torch.stack([it["camera"]["rotation"] for it in vitems]).double()
    constant = torch.eye(3, dtype=torch.float64)
    print("median pose error (deg), frames aligned robustly on val, up to:")
    print(f"  constant pose:  {report(constant.expand(len(gt), 3, 3), gt, constant.expand(len(vgt), 3, 3), vgt)}")
    model, _ = task.build(config, torch.device("cpu"))
    for step, path in training.list_checkpoints(args.run_dir):
        model.load_state_dict(training.load_checkpoint(path)["model"])
        model.eval()
        with torch.no_grad():
            rec = task.reconstruct(model, images)
            vrec = task.reconstruct(model, vimages)
            pred = model.predict(images)
            prob = pred["prob"]
        spread = flow_spread(pred["flow"], masks)
        flipped = flipped_faces(pred["verts"], model)
        pose = report(rec["rotation"].double(), gt, vrec["rotation"].double(), vgt)
        wins = torch.bincount(prob.argmax(1), minlength=prob.shape[1]).tolist()
        iou = float(metrics.mask_iou(rec["mask"], masks).mean())
        print(f"  step {step:5d}: {pose}; hypotheses won {wins}; scale {float(rec['scale'].mean()):.2f};"
              f" mask IoU {iou:.3f}; flow spread {spread:.2f}; faces flipped {flipped:.0%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
