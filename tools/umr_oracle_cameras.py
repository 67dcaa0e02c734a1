"""UMR's E-step with the true cameras (a diagnostic: does the reconstruction network learn the shapes at a budget
when pose is not the question, and what does a good first template do for the cameras?).

Trains :class:`invrender.models.umr.UmrModel` on the synthetic airplanes as ``invrender train umr`` does (the
config's losses, the GAN, the M-steps every ``em.steps_per_round`` steps), except that the predictions' cameras
are the data's own: the view's rotation, the weak-perspective scale of the data's perspective camera (focal length
over distance) at the template's size, no translation, every hypothesis alike. By default in every round with one
hypothesis (the camera head is never read); ``--oracle-rounds N``: the first ``N`` EM rounds only, then the
model's own multiplex (the config's ``num_cameras``, learned from there); ``--oracle-from R``: the model's own
cameras before round ``R``, the true ones from it on. Reports the Chamfer-L1 x10 (ICP, the evaluation's protocol)
of the predicted meshes on one view per test object, the learned template's and the medoid training shape's, and
on all test views the mask IoU and the median pose error of the most probable camera (the frame aligned on the
same views)::

    python tools/umr_oracle_cameras.py [--config configs/umr/airplane_cpu.yaml] [--steps 800]
        [--oracle-rounds N | --oracle-from R] [--out result.json] [key=value ...]

The overrides are the config's (``model.deform_weight=0``, ``em.steps_per_round=200``, ...). The weak-perspective
camera is an approximation of the data's perspective one: the ground-truth meshes drawn by it match the data's
masks to a mean IoU of 0.82 at 64^2 (:func:`ground_truth_iou`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from invrender import metrics, training  # noqa: E402
from invrender.cameras import quaternion_to_matrix  # noqa: E402
from invrender.models import umr as U  # noqa: E402
from invrender.models.unicorn import ground_truth_mesh, medoid_object, one_view_per_object  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOCAL, DISTANCE = 3.732, 2.732          # the ShapeNet-NMR camera of the synthetic data (invrender.synthetic)


def matrix_quaternion(rotation: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``(N, 3, 3)`` -> unit quaternions ``(N, 4)`` ``(w, x, y, z)`` (scipy)."""
    from scipy.spatial.transform import Rotation

    xyzw = Rotation.from_matrix(rotation.double().numpy()).as_quat()
    return torch.from_numpy(xyzw[:, [3, 0, 1, 2]]).to(rotation.dtype)


def load(base, index):
    """The views ``index`` of a dataset as stacked tensors: image, mask, parts, quaternion."""
    items = [base[i] for i in index]
    out = {k: torch.stack([it[k] for it in items]) for k in ("image", "mask", "parts")}
    out["quaternion"] = matrix_quaternion(torch.stack([it["camera"]["rotation"] for it in items]))
    return out


def ground_truth_iou(base, index, scale: float, image_size: int) -> float:
    """Mean silhouette IoU of the ground-truth meshes drawn by the oracle's weak-perspective camera (``scale`` at
    the data's size, the view's rotation) against the data's masks, over the views ``index`` of ``base``: how well
    that camera stands in for the data's perspective one."""
    import invrender

    camera = invrender.cameras.WeakPerspectiveCamera(depth_offset=2.0)
    ious = []
    for i in index:
        item = base[i]
        v, f = ground_truth_mesh(base, base._index[i][0])
        ndc = camera.project(v[None], torch.tensor([scale]), torch.zeros(1, 2), item["camera"]["rotation"][None])
        sil = (invrender.rasterize(ndc, f, image_size, 8, 1e-7).face_idx[..., 0] >= 0).float()[:, None]
        ious.append(float(metrics.mask_iou(sil, item["mask"][None], soft=False)))
    return sum(ious) / len(ious)


class Oracle:
    """Replaces :meth:`UmrModel.predict`'s cameras by the ones set in :attr:`quaternion` (one hypothesis)."""

    def __init__(self, model: U.UmrModel, scale: float):
        self.model, self.scale, self.quaternion, self.active = model, scale, None, True
        self.predict = model.predict
        model.predict = self

    def __call__(self, images, rigid=False):
        out = self.predict(images, rigid)
        if not self.active:
            return out
        q = self.quaternion.to(images.device, images.dtype)
        B, K = images.shape[0], self.model.config.num_cameras
        if q.shape[0] != B:
            raise RuntimeError(f"oracle: {q.shape[0]} cameras set for a batch of {B}")
        out.update(scale=torch.full((B, K), self.scale, dtype=images.dtype, device=images.device),
                   translation=images.new_zeros(B, K, 2), quaternion=q[:, None].expand(B, K, 4).contiguous(),
                   prob=images.new_full((B, K), 1.0 / K))
        return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=os.path.join(ROOT, "configs/umr/airplane_cpu.yaml"))
    ap.add_argument("--steps", type=int, default=None, help="E-step iterations (default: the config's)")
    ap.add_argument("--out", default=None, help="write the result as JSON here")
    ap.add_argument("--oracle-rounds", type=int, default=None,
                    help="the true cameras for this many EM rounds only, then the model's own multiplex (the "
                         "config's num_cameras); default: every round, one hypothesis")
    ap.add_argument("--oracle-from", type=int, default=0,
                    help="the model's own multiplex before this EM round, the true cameras from it on")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    task = U.UmrTask()
    cfg = training.resolve_config(task, args.config, list(args.overrides)
                                  + (["model.num_cameras=1"] if args.oracle_rounds is None and not args.oracle_from
                                     else []))
    steps = int(args.steps if args.steps is not None else cfg["steps"])
    torch.manual_seed(int(cfg.get("seed", 0)))
    model, optimizers = task.build(cfg, "cpu")
    c = model.config
    oracle = Oracle(model, FOCAL / DISTANCE * 0.5 / c.template_radius)  # the data's objects reach |x| = 0.5
    until = args.oracle_rounds if args.oracle_rounds is not None else float("inf")

    def set_active():
        oracle.active = args.oracle_from <= int(model.em_round) < until

    set_active()
    train = task._base(cfg, "train")
    data = load(train, range(len(train)))
    n, bs, per_round = len(train), int(cfg["batch_size"]), int(cfg["em"]["steps_per_round"])
    m_index = torch.linspace(0, n - 1, min(int(cfg["em"]["m_step_samples"]), n)).round().long().unique()
    g = torch.Generator().manual_seed(int(cfg.get("seed", 0)))

    def m_batches():
        for s in range(0, len(m_index), bs):
            idx = m_index[s:s + bs]
            oracle.quaternion = data["quaternion"][idx]
            yield {k: data[k][idx] for k in ("image", "mask", "parts")}

    model.train()
    log = []
    order = torch.randperm(n, generator=g)
    pos = 0
    for step in tqdm(range(steps), desc="umr oracle cameras"):
        while int(model.em_round) < step // per_round:
            model.m_step(m_batches())
            set_active()
        if pos + bs > n:
            order, pos = torch.randperm(n, generator=g), 0
        idx = order[pos:pos + bs]
        pos += bs
        oracle.quaternion = data["quaternion"][idx]
        logs = model.train_step({k: data[k][idx] for k in ("image", "mask", "parts")}, optimizers, step,
                                generator=torch.Generator().manual_seed(step))
        if step % 50 == 0:
            log.append({"step": step, **{k: float(v) for k, v in logs.items() if k in ("mask", "deformation", "total")}})

    model.eval()
    test = task._base(cfg, "test", noise=False)
    chosen = one_view_per_object(test, torch.Generator().manual_seed(0))
    batch = load(test, range(len(test)))
    outs, sils = [], []
    with torch.no_grad():
        for s in range(0, len(test), 32):
            oracle.quaternion = batch["quaternion"][s:s + 32]
            out = model.predict(batch["image"][s:s + 32])
            texture = model.texture_map(batch["image"][s:s + 32], out["flow"])
            camera = model.best_camera(out)
            sils.append(model.render(out["verts"], *camera, texture)[1])
            outs.append({"verts": out["verts"], "quaternion": camera[2]})
    verts = torch.cat([o["verts"] for o in outs])
    rotation = quaternion_to_matrix(torch.cat([o["quaternion"] for o in outs]))
    gt_rotation = quaternion_to_matrix(batch["quaternion"])
    pose = U.rotation_errors(rotation, gt_rotation, U.fit_rotation_offset(rotation, gt_rotation))
    objects = [test._index[i][0] for i in chosen]
    gt = [ground_truth_mesh(test, k) for k in objects]
    gt_v, gt_f = [v for v, _ in gt], [f for _, f in gt]

    def chamfer(verts, faces):
        return 10 * float(metrics.chamfer_l1_meshes(verts, faces, gt_v, gt_f, 10_000, align=True,
                                                    generator=torch.Generator().manual_seed(2),
                                                    icp_num_points=2000).mean())

    k = len(objects)
    mv, mf = ground_truth_mesh(train, medoid_object(train, 16, generator=torch.Generator().manual_seed(4)))
    result = {"steps": steps, "overrides": list(args.overrides),
              "oracle_rounds": args.oracle_rounds, "oracle_from": args.oracle_from, "pose_median_deg": pose["pose_rotation_median_deg"],
              "mask_iou": float(metrics.mask_iou(torch.cat(sils), batch["mask"]).mean()),
              "chamfer_l1_icp": chamfer(verts[chosen], model.faces.expand(k, -1, -1)),
              "template_chamfer_l1_icp": chamfer(model.template.expand(k, -1, -1), model.faces.expand(k, -1, -1)),
              "medoid_chamfer_l1_icp": chamfer([mv] * k, [mf] * k),
              "height_width": float(((verts[..., 1].amax(1) - verts[..., 1].amin(1))
                                     / (verts[..., 0].amax(1) - verts[..., 0].amin(1))).mean()),
              "log": log}
    print(json.dumps({k: v for k, v in result.items() if k != "log"}, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
