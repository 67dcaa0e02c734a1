"""``invrender demo``: the main job. Learns 3D shape from single 2D views on a CPU in minutes.

``invrender demo --model unicorn`` trains UNICORN (``invrender.models.unicorn``: textured meshes and poses from
single 64x64 RGB views) and writes the same kind of folder (:func:`run_demo`; its pictures are described in
:meth:`invrender.models.unicorn.UnicornTask.write_pictures`). ``--model ucar`` (below):

Trains Ucar et al.'s final model (mu-VAE, azimuth latent, texturizer; ``invrender.models.ucar``) on
28x28 grayscale views of the embedded synthetic data (generated into the cache on first use, about
20 s), evaluates it on the test split, and writes a results folder a person can open::

    <out>/index.html            the page: metrics, loss curve, reconstructions, turntables, meshes
    <out>/metrics.json          the evaluation (voxel IoU after the best azimuth, image errors)
    <out>/reconstructions.png   test inputs / projection of the decoded grid / texturizer output
    <out>/turntable_elev30.gif  ground truth (top) and the learned shape (bottom) of test objects, azimuth
    <out>/turntable_elev0.gif   sweeping [-pi, pi) at elevation 30 degrees (the data's camera: the
                                elevation the model trained on) and 0 degrees (a view it never saw)
    <out>/meshes/*.obj          marching-cubes meshes of the learned shapes and of the ground truth
    <out>/run/                  the training run (config.yaml, checkpoint, TensorBoard, log.jsonl)

Everything runs through the public API and the training framework (``invrender.training``); the
numbers are the ones ``invrender eval <out>/run`` prints.
"""

from __future__ import annotations

import html
import json
import math
import os
import shutil
import time
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from . import io

__all__ = ["DEMO_CONFIG", "DEMO_MODELS", "UNICORN_DEMO_CONFIG", "run_demo"]

#: The demo's training config (the Ucar task's defaults underneath). Paper settings except where noted.
DEMO_CONFIG: Dict[str, Any] = {
    "model": {
        "objective": "mu_vae",        # the final model (section 4.4)
        "azimuth": "latent",          # section 3.2: own latent, own optimizer
        "projection": "trilinear",    # the only sampling whose gradient reaches the azimuth
        "texturizer": True,           # eq. 3
        "occupancy_bias": -4.0,       # ours: the projection starts unsaturated
        "channels": 64,               # ours: half the code's width (128), 2.5x faster on a CPU
    },
    # floor 1: the views as white silhouettes on black (the visual hull of a dim pixel is a faint cloud)
    "data": {"kind": "shapenet", "root": None, "categories": ["car"], "image_size": 28, "floor": 1.0},
    "batch_size": 64,                 # section 3.4
    "steps": 1000,
    "log_every": 10,
    "vis_every": 0,
    "ckpt_every": 0,                  # one checkpoint, at the end
}

#: UNICORN's demo config (the task's defaults and the paper's settings underneath): configs/unicorn_synthetic.yaml's
#: data and model, with a schedule for about 7 minutes of training on a 2-core CPU.
UNICORN_DEMO_CONFIG: Dict[str, Any] = {
    "model": {
        "stage_milestones": [3, 8, 14],  # epochs of 21 steps (paper: 14 / 84 / 154 of 238)
        "constant_texture_epochs": 3,    # paper: the whole of stage 1
        "freeze_scale_epochs": 1,        # paper (code): 3 of 14
        "render_layers": 10,             # paper: 50 (a deformed ellipsoid rarely stacks more within 1e-4)
        "memory_size": 256,              # paper: 1024, over 336 training views here
        "lr": 5e-4,                      # paper: 1e-4 over 3 days; 5x for a run of minutes
    },
    "data": {"root": None, "categories": ["car"], "image_size": 64},
    "eval": {"num_points": 100_000, "icp_num_points": 10_000},
    "batch_size": 16,                    # paper: 32
    "steps": 450,
    "log_every": 10,
    "vis_every": 0,
    "ckpt_every": 0,
}

#: The demo's models: ``invrender demo --model NAME``.
DEMO_MODELS = ("ucar", "unicorn")

_SHOW = 6          # test objects in the turntables and meshes
_FRAMES = 24       # turntable frames
_ZOOM = 4          # 28x28 -> 112x112 in the pictures


def _zoom(images: torch.Tensor, factor: int = _ZOOM) -> torch.Tensor:
    return F.interpolate(images.float().clamp(0, 1), scale_factor=factor, mode="nearest")


def _loss_svg(history: List[Dict[str, float]], keys: Sequence[str] = ("total", "projection_loss", "texture_loss"),
              width: int = 520, height: int = 220) -> str:
    """An inline SVG of the logged losses (log scale), no plotting library needed."""
    colors = {"total": "#1f77b4", "projection_loss": "#d62728", "texture_loss": "#2ca02c",
              "reconstruction": "#d62728", "swap": "#2ca02c"}
    rows = [h for h in history if all(k in h for k in keys)]
    if len(rows) < 2:
        return "<p>(too few logged steps for a curve)</p>"
    steps = [r["step"] for r in rows]
    vals = [math.log10(max(r[k], 1e-8)) for r in rows for k in keys]
    lo, hi = min(vals), max(vals)
    hi = hi if hi > lo else lo + 1
    pad = 40

    def xy(step, v):
        x = pad + (step - steps[0]) / max(steps[-1] - steps[0], 1) * (width - 2 * pad)
        y = height - pad - (math.log10(max(v, 1e-8)) - lo) / (hi - lo) * (height - 2 * pad)
        return f"{x:.1f},{y:.1f}"

    parts = [f'<svg width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg" '
             f'style="background:#fff;border:1px solid #ccc">']
    for i, k in enumerate(keys):
        pts = " ".join(xy(r["step"], r[k]) for r in rows)
        parts.append(f'<polyline fill="none" stroke="{colors.get(k, "#000")}" stroke-width="1.5" points="{pts}"/>')
        parts.append(f'<text x="{pad + 150 * i}" y="16" font-size="12" fill="{colors.get(k, "#000")}">{k}</text>')
    parts.append(f'<text x="{pad}" y="{height - 10}" font-size="11">step {steps[0]}</text>')
    parts.append(f'<text x="{width - pad - 60}" y="{height - 10}" font-size="11">step {steps[-1]}</text>')
    parts.append(f'<text x="2" y="{pad}" font-size="11">{10 ** hi:.3g}</text>')
    parts.append(f'<text x="2" y="{height - pad}" font-size="11">{10 ** lo:.3g}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


@torch.no_grad()
def _pictures(model, task, config, out_dir: str, threshold: float) -> Dict[str, Any]:
    """Reconstructions, turntables (elevations 0 and 30 degrees) and meshes of a few test objects."""
    import invrender
    from invrender.models.ucar import best_azimuth_voxel_iou, ground_truth_in_model_frame

    views = task.dataset(config, "test", load_voxels=True)
    device = next(model.parameters()).device
    # one view of each of 2 * _SHOW test objects spread over the split, at varied azimuths
    by_object: Dict[Any, List[int]] = {}
    plain = task.dataset(config, "test")
    for i in range(len(plain)):
        by_object.setdefault(plain[i].get("object", i), []).append(i)
    objects = list(by_object.values())
    stride = max(len(objects) // (2 * _SHOW), 1)
    picks = [obj[(7 * j) % len(obj)] for j, obj in enumerate(objects[::stride][:2 * _SHOW])]
    items = [views[i] for i in picks]
    images = torch.stack([it["image"] for it in items]).to(device)
    n = len(items)
    voxels = model.decode(images)
    azimuths = torch.linspace(-math.pi, math.pi, 25, device=device)[:-1]

    # image reconstruction at each input's best azimuth
    errors = torch.stack([((model.project(voxels, model.view_rotation(a.expand(n))) - images) ** 2)
                          .mean(dim=(1, 2, 3)) for a in azimuths])
    best_view = azimuths[errors.argmin(0)]
    projection = model.project(voxels, model.view_rotation(best_view))
    texture = model.texturizer(projection) if model.texturizer is not None else projection
    grid = io.image_grid(_zoom(torch.cat([images, projection, texture])), nrow=n, padding=4, pad_value=1.0)
    io.save_image(os.path.join(out_dir, "reconstructions.png"), grid)

    # turntables: ground truth and the learned shape turned by its best alignment azimuth
    shown = slice(0, _SHOW)
    gt = ground_truth_in_model_frame(torch.stack([it["voxels"] for it in items[shown]]).to(device).float(),
                                     model.config.image_size)
    pred = voxels[shown]
    _, arg = best_azimuth_voxel_iou(pred, gt, azimuths, (threshold,))
    aligned = invrender.rotate_voxels(pred, invrender.rotation_matrix(azimuths[arg[0]]))
    files = {}
    for elevation in (0, 30):
        frames = []
        for k in range(_FRAMES):
            a = torch.tensor(-math.pi + 2 * math.pi * k / _FRAMES, device=device)
            rot = invrender.rotation_matrix(a.expand(len(gt)), torch.tensor(math.radians(elevation), device=device))
            row = torch.cat([model.project(gt, rot), model.project(aligned, rot)])
            frames.append(io.image_grid(_zoom(row), nrow=len(gt), padding=4, pad_value=1.0))
        name = f"turntable_elev{elevation}.gif"
        io.save_gif(os.path.join(out_dir, name), torch.stack(frames), fps=8)
        files[f"elev{elevation}"] = name

    # meshes of the learned shapes (at the evaluation's threshold) and of the ground truth
    os.makedirs(os.path.join(out_dir, "meshes"), exist_ok=True)
    meshes = []
    pred_meshes = io.marching_cubes(aligned[:, 0].float().cpu(), level=threshold)
    gt_meshes = io.marching_cubes(gt[:, 0].float().cpu(), level=0.5)
    for k, (p, g) in enumerate(zip(pred_meshes, gt_meshes)):
        entry = {}
        for kind, (verts, faces) in (("learned", p), ("ground_truth", g)):
            if faces.shape[0] > 0:
                name = f"meshes/test{k}_{kind}.obj"
                io.save_mesh(os.path.join(out_dir, name), verts, faces)
                entry[kind] = name
        meshes.append(entry)
    files["meshes"] = meshes
    files["reconstructions"] = "reconstructions.png"
    return files


_STYLE = """<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}
img{image-rendering:pixelated;max-width:100%} td{padding:2px 10px} pre{background:#f4f4f4;padding:8px}</style>"""


def _metric_rows(metrics: Dict[str, Any]) -> str:
    esc = html.escape
    return "".join(f"<tr><td>{esc(k)}</td><td>{v:.4g}</td></tr>" if isinstance(v, float) else
                   f"<tr><td>{esc(k)}</td><td>{esc(str(v))}</td></tr>" for k, v in metrics.items())


def _mesh_items(files: Dict[str, Any]) -> str:
    esc = html.escape
    return "".join(
        "<li>test object {}: {}</li>".format(
            k, ", ".join(f'<a href="{esc(v)}">{esc(kind.replace("_", " "))}</a>' for kind, v in m.items()))
        for k, m in enumerate(files["meshes"]))


def _html(metrics: Dict[str, Any], files: Dict[str, Any], history, config, info: Dict[str, Any]) -> str:
    esc = html.escape
    rows, meshes = _metric_rows(metrics), _mesh_items(files)
    cfg = esc(json.dumps(config.get("model", {}), indent=1))
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>invrender demo</title>
{_STYLE}
</head><body>
<h1>invrender demo: 3D shape from single 2D views</h1>
<p>Ucar et al. 2019's final model (mu-VAE, azimuth latent, texturizer) trained on {info['train_views']}
28x28 {esc(info['views'])} of the synthetic {esc(', '.join(info['categories']))} objects
(single images, no 3D supervision, no camera poses) for {info['steps']} steps in
{info['train_s']:.0f} s on {esc(info['device'])}. Evaluated on {metrics.get('test_views')} views of unseen test objects.</p>
<h2>Metrics</h2>
<table>{rows}</table>
<p>Voxel IoU: the decoded grid turned by the best of 24 azimuths (the model's canonical frame is its own)
against the ground-truth grid, at one global occupancy threshold for the run. <i>mean_shape</i>: the same
protocol for the average of the training objects' true grids, a reference that needs no learning (objects of
one category are alike, so it is high there). Projection MSE: per pixel, images in [0, 1].</p>
<h2>Training</h2>
{_loss_svg(history)}
<h2>Reconstructions</h2>
<p>Top: test inputs. Middle: projection (eq. 2) of the decoded 3D grid at the azimuth that best explains
the input. Bottom: the texturizer's image of that projection.</p>
<img src="{files['reconstructions']}">
<h2>Turntables</h2>
<p>Top row: ground truth. Bottom row: the learned 3D shape of each test input (aligned by the best azimuth),
projected while the camera turns through [-pi, pi). The model saw each object from one side only.</p>
<h3>Elevation 30&deg; (the training views' camera elevation)</h3><img src="{files['elev30']}">
<h3>Elevation 0&deg; (a view the model never saw)</h3><img src="{files['elev0']}">
<h2>Meshes</h2>
<p>Marching cubes of the learned occupancy (at the run's threshold) and of the ground truth, OBJ:</p>
<ul>{meshes}</ul>
<h2>Model config</h2><pre>{cfg}</pre>
<p>Re-evaluate with <code>invrender eval {esc(info['run_dir'])}</code>.</p>
</body></html>
"""


def _unicorn_html(metrics: Dict[str, Any], files: Dict[str, Any], history, config, info: Dict[str, Any]) -> str:
    esc = html.escape
    rows, meshes = _metric_rows(metrics), _mesh_items(files)
    refs = [("UNICORN (this run)", "chamfer_l1"), ("template: the initial ellipsoid", "template_chamfer_l1"),
            ("medoid: the most typical training shape", "medoid_chamfer_l1"),
            ("spread: another test object of the category", "spread_chamfer_l1")]
    table = "".join(f"<tr><td>{esc(name)}</td><td>{metrics[key]:.3f}</td><td>{metrics[key + '_icp']:.3f}</td></tr>"
                    for name, key in refs if key in metrics)
    cfg = esc(json.dumps(config.get("model", {}), indent=1))
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>invrender demo: UNICORN</title>
{_STYLE}
</head><body>
<h1>invrender demo: textured 3D meshes and poses from single images (UNICORN)</h1>
<p>Monnier et al. 2022's UNICORN (ResNet-18 encoder, deformed ellipsoid, UV texture, 6 pose candidates,
alternating pose / 3D steps, swap loss over a memory bank) trained on {info['train_views']} single 64x64 views of
the synthetic {esc(', '.join(info['categories']))} objects (no 3D, no poses, no multi-view) for {info['steps']}
steps in {info['train_s']:.0f} s on {esc(info['device'])}, rendering through invrender's layered renderer.
Evaluated on one view of each of {metrics.get('test_objects')} unseen test objects.</p>
<h2>Shape: Chamfer-L1 x10 (lower is better)</h2>
<table><tr><th></th><th>posed</th><th>with ICP</th></tr>{table}</table>
<p><i>Posed</i>: the mesh placed by its predicted pose against the true object seen by the true camera.
<i>With ICP</i>: UNICORN's protocol (prediction normalised, then aligned by gradient ICP over rotation,
translation and anisotropic scale). The three references need no learning: the template the model starts from,
the category's medoid training shape seen by the true camera (what one good shape for all plus the right poses
would score), and the mean distance between two different ground-truth objects.</p>
<h2>All metrics</h2>
<table>{rows}</table>
<p>Pose errors are measured after one azimuth offset fitted on the validation views (the model's canonical frame
is its own); <code>mask_iou</code> is the soft IoU of the rendered and true silhouettes.</p>
<h2>Training</h2>
{_loss_svg(history, keys=("total", "reconstruction", "swap"))}
<h2>Reconstructions</h2>
<p>Each row: the input; its reconstruction; the textured mesh turned by +90, +180 and +270 degrees; the UV
texture map.</p>
<img src="{files['reconstructions']}">
<h2>Turntables</h2>
<p>Per test object (columns): the ground truth shaded (top), the learned mesh shaded (middle), the learned
textured mesh (bottom), turned into the true object frame by the predicted pose (a wrong pose shows as a turned
object). The model saw each object from one side only.</p>
<h3>Elevation 30&deg; (the training views' camera elevation)</h3><img src="{files['elev30']}">
<h3>Elevation 0&deg; (a view the model never saw)</h3><img src="{files['elev0']}">
<h2>Meshes</h2>
<p>OBJ (with .mtl and the UV texture .png) and GLB of the learned meshes in the true object frame; OBJ of the
ground truth:</p>
<ul>{meshes}</ul>
<h2>Model config</h2><pre>{cfg}</pre>
<p>Re-evaluate with <code>invrender eval {esc(info['run_dir'])}</code>.</p>
</body></html>
"""


def _check_categories(categories) -> None:
    """Categories of the embedded synthetic data (synthetic.CATEGORIES), checked before that data is
    generated (minutes on a first run), naming the closest valid one. Raises ConfigError."""
    import difflib

    from .errors import ConfigError
    from .synthetic import CATEGORIES

    for c in [categories] if isinstance(categories, str) else categories:
        if c not in CATEGORIES:
            near = difflib.get_close_matches(str(c), CATEGORIES, n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise ConfigError(f"unknown category {c!r} for the demo's synthetic data; {hint}"
                              f"valid: {', '.join(CATEGORIES)}")


def run_demo(out_dir: str = "invrender-demo", steps: Optional[int] = None, device: str = "auto",
             categories: Optional[Sequence[str]] = None, overrides: Sequence[str] = (), progress: bool = True,
             verbose: bool = True, model: str = "ucar") -> Dict[str, Any]:
    """Train, evaluate and write the results folder; returns the metrics (plus timings).

    Args:
        out_dir: results folder (its ``run/`` subfolder is replaced if it holds an earlier demo run).
        steps: training steps (default: the model's demo config, :data:`DEMO_CONFIG` or
            :data:`UNICORN_DEMO_CONFIG`).
        device: "auto" (CUDA when present), "cpu" or "cuda".
        categories: synthetic categories to train on (default: car).
        overrides: further ``key=value`` config overrides (as ``invrender train``).
        progress: show the training progress bar.
        model: one of :data:`DEMO_MODELS`: "ucar" (Ucar et al.'s voxel autoencoder) or "unicorn".
    """
    from . import training
    from .errors import ConfigError

    if model not in DEMO_MODELS:
        raise ConfigError(f"unknown demo model {model!r}; valid: {', '.join(DEMO_MODELS)}")
    start = time.perf_counter()
    if model == "unicorn":
        from .models.unicorn import UnicornTask

        task, demo_config = UnicornTask(), UNICORN_DEMO_CONFIG
    else:
        from .models.ucar import UcarTask

        task, demo_config = UcarTask(), DEMO_CONFIG
    config = training.merge_config(task.default_config(), demo_config)
    if steps is not None:
        config["steps"] = steps
    if categories:
        config["data"]["categories"] = list(categories)
    config = training.apply_overrides(config, overrides, training.config_schema(task))
    config["task"] = model
    if not config["data"].get("root"):  # the embedded default data
        _check_categories(config["data"]["categories"])
    out_dir = os.path.abspath(out_dir)
    run_dir = os.path.join(out_dir, "run")
    # A bad device or count fails here, before any data is generated or an earlier run removed.
    trainer = training.Trainer(task, config, run_dir, device=training.resolve_device(device), progress=progress)
    if os.path.exists(os.path.join(run_dir, "config.yaml")):
        shutil.rmtree(run_dir)
    os.makedirs(out_dir, exist_ok=True)

    t = time.perf_counter()
    train_views = len(task.dataset(config, "train"))  # generates the default data on first use (timed apart)
    data_s = time.perf_counter() - t
    t = time.perf_counter()
    history = trainer.fit()
    train_s = time.perf_counter() - t

    net = training.unwrap(trainer.model).eval()
    t = time.perf_counter()
    metrics = task.evaluate(net, config, out_dir)
    if model == "unicorn":
        files = metrics.pop("files")  # UnicornTask.evaluate wrote them (write_pictures)
    else:
        files = _pictures(net, task, config, out_dir, metrics.get("voxel_iou_threshold", 0.5))
    eval_s = time.perf_counter() - t
    info = {"train_views": train_views, "categories": config["data"]["categories"],
            "steps": trainer.step, "train_s": train_s, "device": str(trainer.device), "run_dir": run_dir}
    if model == "ucar":
        floor = float(config["data"].get("floor", 0.0))
        info["views"] = ("white silhouettes" if floor == 1.0 else
                         f"grayscale views (object pixels lifted to {floor} + {1 - floor:g} x luminance)" if floor
                         else "grayscale views")
    metrics = dict(metrics, model=model, data_s=round(data_s, 1), train_s=round(train_s, 1),
                   eval_s=round(eval_s, 1), steps=trainer.step,
                   train_steps_per_s=round(trainer.step / max(train_s, 1e-9), 3))
    metrics["total_s"] = round(time.perf_counter() - start, 1)
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    page = os.path.join(out_dir, "index.html")
    with open(page, "w") as f:
        f.write((_unicorn_html if model == "unicorn" else _html)(metrics, files, history, config, info))
    if verbose:
        if model == "unicorn":
            print(f"invrender demo: trained UNICORN on {train_views} synthetic {'/'.join(info['categories'])} views, "
                  f"{trainer.step} steps in {train_s:.0f} s ({metrics['train_steps_per_s']:.2f} steps/s on "
                  f"{trainer.device}); total {metrics['total_s']:.0f} s")
            print(f"  test Chamfer-L1 x10 with ICP: model {metrics['chamfer_l1_icp']:.3f}, template "
                  f"{metrics['template_chamfer_l1_icp']:.3f}" +
                  (f", medoid training shape {metrics['medoid_chamfer_l1_icp']:.3f}"
                   if "medoid_chamfer_l1_icp" in metrics else ""))
            print(f"  test mask IoU {metrics['mask_iou']:.3f}; pose azimuth median error "
                  f"{metrics['pose_azimuth_median_deg']:.1f} deg")
        else:
            iou = metrics.get("test_voxel_iou_best_azimuth")
            print(f"invrender demo: trained the mu-VAE with azimuth latent and texturizer on {info['train_views']} "
                  f"synthetic {'/'.join(info['categories'])} views, {trainer.step} steps in {train_s:.0f} s "
                  f"({metrics['train_steps_per_s']:.2f} steps/s on {trainer.device}); total {metrics['total_s']:.0f} s")
            if iou is not None:
                print(f"  test voxel IoU (best azimuth, threshold {metrics['voxel_iou_threshold']}): {iou:.3f}")
            print(f"  test projection MSE (best azimuth): {metrics['test_projection_mse_best_azimuth']:.4f}")
        print(f"  results: {page}")
    return metrics
