"""Benchmark of IG-GAN's training step (issue 16): one 1:1:1 iteration of each variant (IG-GAN, visual hull,
absorption-only, 2D DCGAN) under the same generator, discriminator and batch, and the parts of IG-GAN's step
(the off-the-shelf renderer alone, the neural renderer's update, the generator's update through it).

    python benchmarks/bench_iggan.py                   # the CPU size (32^3 in 64^3, 64^2 images), B=16, 1 thread
    python benchmarks/bench_iggan.py --paper           # the paper's size (64^3 in 128^3, 128^2 images), B=8
    python benchmarks/bench_iggan.py --quick           # smoke run

Results are appended as JSON lines (op ``iggan_train_step``) to ``benchmarks/results/<device>.jsonl``.
"""

import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.harness import model_step_parser, record_rows, run_meta, time_samples  # noqa: E402
from invrender.models import iggan as G  # noqa: E402

CPU_SIZE = dict(grid_size=32, generator_channels=128, renderer_channels=8, discriminator_channels=32)
PAPER_SIZE = dict(grid_size=64, generator_channels=512, renderer_channels=32, discriminator_channels=64)
QUICK_SIZE = dict(grid_size=8, generator_channels=8, renderer_channels=4, discriminator_channels=8)


def main():
    p = model_step_parser(__doc__.splitlines()[0])
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    size = QUICK_SIZE if args.quick else PAPER_SIZE if args.paper else CPU_SIZE
    B = args.batch or (2 if args.quick else 8 if args.paper else 16)
    repeats = args.repeats or (1 if args.quick else 3)
    meta = run_meta(device)
    params = dict(size, batch=B)
    print(f"iggan_train_step ({meta['device']}, {meta['threads']} threads, load {meta['load_average_start']:.2f}) "
          f"{params}")
    rows = []
    for variant in G.VARIANTS:
        torch.manual_seed(0)
        model = G.IgganModel(G.IgganConfig(variant=variant, **size)).to(device)
        opts = model.configure_optimizers()
        real = torch.rand(B, 1, 2 * size["grid_size"], 2 * size["grid_size"], device=device)
        step = time_samples(lambda: model.train_step(real, opts), device, 1, repeats)
        row = dict(meta, op="iggan_train_step", params=dict(params, variant=variant),
                   step_s=statistics.median(step), samples=step)
        if variant == "iggan":
            z = model.sample_latents(B)
            with torch.no_grad():
                voxels = model.generator(z)
            R, t = model.sample_rotations(B), model.sample_thresholds(B)
            target = model.render_offtheshelf(voxels, R, t)
            parts = {
                "offtheshelf_render": lambda: model.render_offtheshelf(voxels, R, t),
                "renderer_update (L2 + DOM)": lambda: model.renderer_step(voxels, R, t, target, opts),
                "generator_update (through RenderNet)": lambda: model._update(
                    "generator", G.generator_loss(model.discriminator(model.render(model.generator(z), R))), opts),
                "discriminator_update": lambda: model._update(
                    "discriminator", G.discriminator_losses(model.discriminator(real), model.discriminator(target)),
                    opts),
            }
            row["breakdown_s"] = {k: statistics.median(time_samples(fn, device, 1, repeats)) for k, fn in parts.items()}
            row["occupancy_mean_of_samples"] = float(voxels.mean())
        rows.append(row)
        print(f"  {variant:12s} step {row['step_s']:.3f} s" + "".join(
            f"\n      {k:40s} {v:.3f} s" for k, v in row.get("breakdown_s", {}).items()), flush=True)
    if not args.no_record:
        record_rows(rows, device)


if __name__ == "__main__":
    main()
