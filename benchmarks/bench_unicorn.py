"""Benchmark of UNICORN's training step (issue 15): the pose step and the 3D step timed separately, and where
the time goes.

    python benchmarks/bench_unicorn.py                  # B=32, 64^2, K=50 (ShapeNet chairs), 2 threads
    python benchmarks/bench_unicorn.py --quick          # smoke run (B=2, 32^2)

Setting: :class:`UnicornModel` at its ShapeNet defaults (template level 3: 642 vertices, 1280 faces; 6 pose
candidates; 64x64 texture), ResNet-18 encoder, perceptual loss on (``PerceptualLoss(weights="random")``: VGG16 to
relu3_3, the same cost as ImageNet weights), epoch past the last stage milestone so that every code is live and
the swap loss is on, a full memory bank (M = 1024 random entries, so every instance finds swap neighbours),
B = 32 images of 64x64, K = 50 faces per pixel, sigma 1e-4.

A step is ``UnicornModel.train_step``: forward, backward and the Adam step. One iteration of the alternating
optimisation is one step, a pose step or a 3D step in turn, so ``iteration_s`` is the mean of the two (the
issue's 68 s for the official code is (99.7 + 36.6) / 2).

The breakdown times each component forward+backward on its own, with the inputs the step gives it: the encoder,
the heads and generators, the renderer (6 x B candidates with gradients to the pose in the pose step; B with
gradients to mesh and texture in the 3D step), the perceptual loss on the pairs each step feeds it, the swap
loss (two neighbour predictions without gradient, two renders, two perceptual calls), the regularisers and
Adam; and ``torch.profiler``'s top operators by self CPU time for one step of each kind.

The two savings that ``--proposed`` once measured by monkeypatching are now the code's own (commits after
e46104d): the targets' VGG features computed once per step and without gradient (``PerceptualLoss.features``,
``target_features``), and the renderer sampling the texture only where a face covers a (pixel, layer) entry.
Rows before them carry ``variant`` "current" / "perceptual" / "perceptual+sparse-texture"; rows since, "current".

Results are appended as JSON lines (op ``unicorn_train_step``) to ``benchmarks/results/<device>.jsonl``.
"""

import argparse
import datetime
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import invrender  # noqa: E402
from benchmarks.harness import _sync, device_name, git_commit, record_rows, time_samples  # noqa: E402
from invrender.models import unicorn as U  # noqa: E402
from invrender.allocator import retain_freed_memory  # noqa: E402
from invrender.models.networks import PerceptualLoss, ResNet18  # noqa: E402

# The official implementation (monniert/unicorn on a CPU build of PyTorch3D, ShapeNet chair config, every code
# live) on the 2-core machine of issue 15, and the issue's goal (10x faster per iteration).
OFFICIAL = {"pose_step_s": 99.7, "step3d_s": 36.6, "iteration_s": 68.0}
GOAL_ITERATION_S = 6.8
# The issue's yardstick of that machine's speed: VGG16 to relu3_3, forward+backward of 192 images of 64x64.
ISSUE_VGG_S = 5.4


def calibrate(device, repeats=3):
    """This machine's time for the issue's yardstick (VGG16 to relu3_3 forward+backward, 192 x 64^2, random
    weights), so that the official figures, measured elsewhere, can be scaled to this machine."""
    perceptual = PerceptualLoss(weights="random").to(device)
    x = torch.rand(192, 3, 64, 64, device=device, requires_grad=True)
    seconds, _ = timed(lambda: perceptual.features(x, grad=True).sum().backward(), device, 1, repeats)
    return seconds


def timed(fn, device, warmup, repeats):
    """Median wall time of fn() in seconds, and every sample."""
    times = time_samples(fn, device, warmup, repeats)
    return statistics.median(times), times


# ------------------------------------------------------------------------------------------------
# Setting


def settings(quick):
    if quick:
        return dict(B=2, image=32, layers=10, memory=64, texture=32)
    return dict(B=32, image=64, layers=50, memory=1024, texture=64)


def build(s, device, seed=0):
    """Model (train mode, last stage, full memory bank), perceptual loss, optimisers and a batch of images."""
    torch.manual_seed(seed)
    config = U.UnicornConfig(image_size=s["image"], render_layers=s["layers"], sigma=1e-4, batch_size=s["B"],
                             memory_size=s["memory"], texture_size=s["texture"])
    model = U.UnicornModel(config, ResNet18()).to(device).train()
    model.set_epoch(config.stage_milestones[-1] + 1)  # every code live, swap on, no freeze, no constant texture
    g = torch.Generator().manual_seed(seed)
    M, S = config.memory_size, config.image_size
    azimuth = torch.rand(M, generator=g) * 2 * torch.pi
    elevation = torch.full((M,), torch.pi / 6)
    model.memory.push(shape_code=torch.randn(M, config.shape_code_sizes[-1], generator=g).to(device),
                      texture_code=torch.randn(M, config.texture_code_sizes[-1], generator=g).to(device),
                      background_code=torch.zeros(M, 0, device=device),
                      scale=torch.ones(M, 3, device=device),
                      rotation=invrender.rotation_matrix(azimuth, elevation).to(device),
                      translation=torch.zeros(M, 3, device=device),
                      image=torch.rand(M, 3, S, S, generator=g).to(device))
    perceptual = PerceptualLoss(weights="random").to(device)
    optimizers = model.configure_optimizers()
    images = torch.rand(s["B"], 3, S, S, generator=g).to(device)
    return model, perceptual, optimizers, images


def step_fn(model, images, optimizers, perceptual, kind, seed=0):
    """One ``train_step`` of the given kind (the iteration counter is set so that it is that step)."""
    g = torch.Generator().manual_seed(seed)

    def run():
        model.iteration.fill_(0 if kind == "pose" else 1)
        return model.train_step(images, optimizers, perceptual, generator=g)

    return run


# ------------------------------------------------------------------------------------------------
# Breakdown: each component forward+backward on its own


def _leaf(t):
    return t.detach().clone().requires_grad_()


def _backward(*outs):
    torch.autograd.backward([o.sum() for o in outs])


def components(model, perceptual, optimizers, images):
    """name -> (step, callable): each callable runs one component forward+backward as the step runs it."""
    c = model.config
    with torch.no_grad():
        pred = model.predict(images)
    B, K = pred["candidates"].probabilities.shape
    features = _leaf(pred["features"])
    shape_code, texture_code = _leaf(pred["shape_code"]), _leaf(pred["texture_code"])
    verts, texture, scale = _leaf(pred["verts"]), _leaf(pred["texture"]), _leaf(pred["scale"])
    cand = pred["candidates"]
    rot_k, trans_k = _leaf(cand.rotation.reshape(B * K, 3, 3)), _leaf(cand.translation.reshape(B * K, 3))
    pose, _ = U.select_pose(cand)
    verts_k = pred["verts"].unsqueeze(1).expand(B, K, *verts.shape[1:]).reshape(B * K, *verts.shape[1:])
    texture_k = pred["texture"].unsqueeze(1).expand(B, K, *texture.shape[1:]).reshape(B * K, *texture.shape[1:])
    with torch.no_grad():
        rendered_k = model.render(verts_k, texture_k, U.Pose(rot_k, trans_k)).image
        rendered = model.render(pred["verts"], pred["texture"], pose).image
    rendered_k, rendered = _leaf(rendered_k), _leaf(rendered)
    targets_k = images.unsqueeze(1).expand(B, K, *images.shape[1:]).reshape(B * K, *images.shape[1:])
    swap_pred = dict(pred, shape_code=shape_code, texture_code=texture_code, verts=verts, texture=texture,
                     scale=scale)
    w = c.perceptual_weight

    def optimizer_step(params):
        grads = [torch.randn_like(p) for p in params]
        opt = optimizers["main"]

        def run():
            opt.zero_grad(set_to_none=True)
            for p, gr in zip(params, grads):
                p.grad = gr
            opt.step()
            opt.zero_grad(set_to_none=True)

        return run

    def neighbour_predicts():
        with torch.no_grad():
            model.predict(images)
            model.predict(images)

    branches = model.branch_parameters()
    g = torch.Generator().manual_seed(1)
    return {
        "encoder (ResNet18, B)": ("both", lambda: _backward(model.encoder(images))),
        "pose heads (B x 6 candidates)": ("both", lambda: _backward(
            *(t for t in model.poses(features)[1:] if t.requires_grad))),
        "shape head + deformation field (B x 642 verts)": ("3d", lambda: _backward(
            model.shape(model.shape_code(features)))),
        "texture head + generator (B x 64^2)": ("3d", lambda: _backward(model.texture(model.texture_code(features)))),
        "scale head": ("3d", lambda: _backward(model.scale(features))),
        "render K x B candidates (grad to pose)": ("pose", lambda: _backward(
            model.render(verts_k, texture_k, U.Pose(rot_k, trans_k)).image)),
        "perceptual K x B pairs (VGG on K B + B images)": ("pose", lambda: _backward(
            perceptual(rendered_k, target_features=perceptual.features(images)))),
        "mse K x B": ("pose", lambda: _backward((rendered_k - targets_k).pow(2).flatten(1).mean(1))),
        "render B (grad to mesh, texture)": ("3d", lambda: _backward(
            model.render(verts, texture, pose).image)),
        "perceptual B pairs (VGG on 2 B images, B with grad)": ("3d", lambda: _backward(
            w * perceptual(rendered, images))),
        "regularisers (laplacian + normal)": ("3d", lambda: _backward(
            U.regularization_loss(verts, model.faces, c.laplacian_weight, c.normal_weight))),
        "swap loss (total)": ("3d", lambda: _backward(*model.swap_losses(swap_pred, images, pose, perceptual,
                                                                         generator=g).values())),
        "  of which: 2 neighbour predicts, no grad (2 x B)": ("3d", neighbour_predicts),
        "adam (encoder + pose)": ("pose", optimizer_step(branches["encoder"] + branches["pose"])),
        "adam (encoder + 3d)": ("3d", optimizer_step(branches["encoder"] + branches["3d"])),
    }


def breakdown(model, perceptual, optimizers, images, device, warmup, repeats):
    out = {}
    for name, (step, fn) in components(model, perceptual, optimizers, images).items():
        seconds, _ = timed(fn, device, warmup, repeats)
        out[name] = {"step": step, "seconds": seconds}
        print(f"  {name:52s} {step:5s} {seconds:8.3f} s", flush=True)
    model.zero_grad(set_to_none=True)
    return out


def profile_steps(model, perceptual, optimizers, images, top):
    """torch.profiler's top operators by self CPU time, one step of each kind."""
    from torch.profiler import ProfilerActivity, profile

    out = {}
    for kind in ("pose", "3d"):
        run = step_fn(model, images, optimizers, perceptual, kind)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run()
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in events) / 1e6
        print(f"\n{kind} step: top {top} operators by self CPU time (profiled total {total:.2f} s)")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top))
        out[kind] = {"self_cpu_total_s": total,
                     "top_ops": [{"op": e.key, "self_cpu_s": e.self_cpu_time_total / 1e6, "calls": e.count}
                                 for e in events[:top]]}
    return out


# ------------------------------------------------------------------------------------------------


def run(args, device):
    s = settings(args.quick)
    warmup = args.warmup if args.warmup is not None else 1
    repeats = args.repeats or (1 if args.quick else 3)
    meta = {"commit": git_commit(), "device": device_name(device), "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    load_start = os.getloadavg()
    model, perceptual, optimizers, images = build(s, device)
    params = dict(B=s["B"], image=s["image"], layers=s["layers"], faces=int(model.faces.shape[0]),
                  poses=model.config.num_poses, sigma=model.config.sigma, texture=s["texture"],
                  memory=s["memory"], epoch=model.current_epoch, encoder="resnet18",
                  perceptual="vgg16-relu3_3 (random weights)", swap=True)
    print(f"unicorn_train_step  ({meta['device']}, torch {meta['torch']}, {meta['threads']} threads, "
          f"load average {load_start[0]:.2f})  {params}", flush=True)

    # Two allocator settings, one after the other in this process (the setting is process-wide and the
    # freed-memory one cannot be measured first): glibc's defaults, then invrender.allocator.retain_freed_memory
    # as `invrender train` runs. Within each, the steps alternate (pose, 3d per round).
    vgg_s = calibrate(device, 1 if args.quick else 3) if device.type == "cpu" else None
    # The official code's times scaled to this machine by the yardstick (a CPU-only comparison).
    scale = vgg_s / ISSUE_VGG_S if vgg_s else None
    if scale:
        print(f"  yardstick: VGG16 relu3_3 fwd+bwd of 192 x 64^2 takes {vgg_s:.2f} s here, {ISSUE_VGG_S} s on the "
              f"issue's machine: the official figures scale by {scale:.2f}", flush=True)
    m, p, o, im = build(s, device)
    variants = [("glibc-malloc-defaults", False), ("current", True)]
    if args.allocator != "both":
        variants = [v for v in variants if v[1] == (args.allocator == "retain")]
    samples = {}
    for name, retain in variants:
        if retain:
            retained = retain_freed_memory(True)
            if not retained:
                print("  (this C library is not glibc: freed memory is not retained)")
        samples[name] = {"pose": [], "3d": []}
        pose, step3d = step_fn(m, im, o, p, "pose"), step_fn(m, im, o, p, "3d")
        for r in range(warmup + repeats):
            for kind, fn in (("pose", pose), ("3d", step3d)):
                _sync(device)
                start = time.perf_counter()
                fn()
                _sync(device)
                if r >= warmup:
                    samples[name][kind].append(time.perf_counter() - start)
            print(f"  {name} round {r + 1}/{warmup + repeats}" + (" (warm-up)" if r < warmup else
                  f": pose {samples[name]['pose'][-1]:.2f} s 3d {samples[name]['3d'][-1]:.2f} s"), flush=True)

    rows = []
    for name in samples:
        pose_s, step3d_s = statistics.median(samples[name]["pose"]), statistics.median(samples[name]["3d"])
        iteration_s = (pose_s + step3d_s) / 2
        rows.append(dict(meta, op="unicorn_train_step", params=dict(params, variant=name),
                         pose_step_s=pose_s, step3d_s=step3d_s, iteration_s=iteration_s,
                         samples=samples[name], official=OFFICIAL,
                         speedup_vs_official=OFFICIAL["iteration_s"] / iteration_s,
                         yardstick_vgg_s=vgg_s, official_scale=scale,
                         speedup_vs_official_scaled=(OFFICIAL["iteration_s"] * scale / iteration_s
                                                     if scale else None),
                         goal_iteration_s=GOAL_ITERATION_S, goal_ratio=iteration_s / GOAL_ITERATION_S))

    print(f"\n{'variant':26s} {'pose step s':>12s} {'3d step s':>10s} {'iteration s':>12s} {'x official':>11s} "
          f"{'/ goal 6.8 s':>13s} {'x official (scaled)':>20s}")
    print(f"{'official':26s} {OFFICIAL['pose_step_s']:12.2f} {OFFICIAL['step3d_s']:10.2f} "
          f"{OFFICIAL['iteration_s']:12.2f}")
    for row in rows:
        print(f"{row['params']['variant']:26s} {row['pose_step_s']:12.2f} {row['step3d_s']:10.2f} "
              f"{row['iteration_s']:12.2f} {row['speedup_vs_official']:11.1f} {row['goal_ratio']:13.2f} "
              + (f"{row['speedup_vs_official_scaled']:20.1f}" if row["speedup_vs_official_scaled"] else ""))

    if not args.no_breakdown:
        print("\nbreakdown (each component forward+backward alone, median):")
        rows[-1]["breakdown"] = breakdown(model, perceptual, optimizers, images, device, warmup,
                                         max(1, repeats - 1) if not args.quick else 1)
    if not args.no_profile:
        rows[-1]["profile"] = profile_steps(model, perceptual, optimizers, images, args.top)
    load_end = os.getloadavg()
    for row in rows:
        row["load_average"] = {"start": load_start, "end": load_end}
    print(f"load average: start {load_start[0]:.2f}, end {load_end[0]:.2f} (1 min)")

    if not args.no_record:
        record_rows(rows, device)
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu, cuda or all (every device present)")
    p.add_argument("--quick", action="store_true", help="small sizes, one repeat (smoke run)")
    p.add_argument("--repeats", type=int, default=None, help="timed steps of each kind (default 3, quick 1)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps of each kind first (default 1)")
    p.add_argument("--no-record", action="store_true", help="do not append to benchmarks/results")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default 2, the issue's machine)")
    p.add_argument("--no-breakdown", action="store_true", help="skip the per-component timings")
    p.add_argument("--no-profile", action="store_true", help="skip torch.profiler's operator tables")
    p.add_argument("--allocator", choices=("both", "default", "retain"), default="both",
                   help="glibc's malloc defaults, freed memory retained (as the CLI runs), or both in turn")
    p.add_argument("--top", type=int, default=15, help="operators in each profile table")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.device == "all":
        devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    else:
        devices = [torch.device(args.device)]
    for device in devices:
        run(args, device)


if __name__ == "__main__":
    main()
