"""How well UMR's mesh and losses can fit an airplane when the cameras are known (a diagnostic: an upper bound
on what the E-step's shape can reach at a resolution and regularizer weights, separate from pose and budget).

Renders one ground-truth synthetic airplane's silhouettes at ``--views`` azimuths (elevation 30, UMR's
weak-perspective camera), then optimises per-vertex offsets of UMR's 642-vertex sphere (mirror symmetric, as the
model's) with UMR's mask negative IoU and its summed Laplacian and flatten losses, and reports Chamfer-L1 x10
(ICP, the evaluation's protocol) beside the sphere's and the medoid reference::

    python tools/umr_shape_capacity.py [--size 64] [--laplacian 0.15] [--flatten 5e-4] [--steps 400]
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import invrender  # noqa: E402
from invrender import metrics  # noqa: E402
from invrender.models import umr as U  # noqa: E402
from invrender.models.unicorn import ground_truth_mesh  # noqa: E402


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=None, help="synthetic data root (default: the embedded data's cache)")
    ap.add_argument("--object", type=int, default=0, help="training object index")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--views", type=int, default=24)
    ap.add_argument("--laplacian", type=float, default=0.15)
    ap.add_argument("--flatten", type=float, default=5e-4)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--lr", type=float, default=1e-2)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    task = U.UmrTask()
    from invrender import training

    config = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs/umr/airplane_cpu.yaml")
    cfg = training.resolve_config(task, config,
                                  [f"data.image_size={args.size}"] + ([f"data.root={args.root}"] if args.root else []))
    train = task._base(cfg, "train", noise=False)
    gt_v, gt_f = ground_truth_mesh(train, args.object)
    gt_eval = gt_v                                            # as the evaluation reads it (max |v| about 0.5)
    gt_v = gt_v / gt_v.abs().max() * 0.75                     # rendered at the sphere's size
    model = U.UmrModel(U.UmrConfig(image_size=args.size, num_cameras=1, uv_size=(32, 64),
                                   sigma=1e-5 * (256 / args.size) ** 2, layers=16, gan_weight=0.0,
                                   laplacian_weight=args.laplacian, flatten_weight=args.flatten, template_fit_lr=args.lr))
    K = args.views
    az = torch.arange(K) * (2 * math.pi / K)
    el = torch.full((K,), math.radians(30.0))
    quat = U._quaternion_multiply(U.axis_angle_quaternion(el, 0), U.axis_angle_quaternion(az, 1))
    scale, trans = torch.ones(K), torch.zeros(K, 2)
    with torch.no_grad():
        ndc = model.project(gt_v[None].expand(K, -1, -1), scale, trans, quat)
        frags = invrender.rasterize(ndc, gt_f, args.size, 8, 1e-7)
        target = (frags.face_idx[..., 0] >= 0).float()[:, None]
    # the M-step's template fit (UmrModel.fit_template): mirror-symmetric offsets of the sphere, UMR's mask loss
    # and its summed Laplacian and flatten losses
    verts, iou = model.fit_template(scale, trans, quat, target, steps=args.steps)
    print(f"mask IoU {iou:.3f}")

    def chamfer(v, f):
        return 10 * float(metrics.chamfer_l1_meshes([v], [f], [gt_eval], [gt_f], 5000, align=True,
                                                    generator=torch.Generator().manual_seed(0), icp_num_points=2000)[0])

    def height_width(v):
        return float(v[:, 1].max() - v[:, 1].min()) / float(v[:, 0].max() - v[:, 0].min())

    out = {"mask_iou": iou, "chamfer_fitted": chamfer(verts, model.faces),
           "chamfer_sphere": chamfer(model.template, model.faces), "height_width_fitted": height_width(verts),
           "height_width_true": height_width(gt_v)}
    print(f"Chamfer-L1 x10 (ICP): fitted {out['chamfer_fitted']:.3f}, sphere {out['chamfer_sphere']:.3f}; "
          f"height / width fitted {out['height_width_fitted']:.2f}, true {out['height_width_true']:.2f}")
    return out


if __name__ == "__main__":
    main()
