"""Benchmark of UMR's training step per stage (issue 17): the first E-step (no canonical map: mask, texture,
texture cycle, regularisers, GAN), the later E-steps (plus the part probability and vertex losses of eqs. 2-3),
and the M-step (template and canonical semantic UV map from ``--m-samples`` images), at the CPU config's size or
the paper's.

    python benchmarks/bench_umr.py                 # 64^2, 4 cameras, B=8 (configs/umr/airplane_cpu.yaml), 1 thread
    python benchmarks/bench_umr.py --paper         # 256^2, 8 cameras, B=16, UV 128 x 256 (configs/umr/cub.yaml)
    python benchmarks/bench_umr.py --quick         # smoke run

Inputs are synthetic (an ellipse silhouette with 4 horizontal part bands, random colours). Results are appended
as JSON lines (op ``umr_train_step``) to ``benchmarks/results/<device>.jsonl``.
"""

import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.harness import model_step_parser, record_rows, run_meta, time_samples  # noqa: E402
from invrender.models import umr as U  # noqa: E402

CPU_SIZE = dict(image_size=64, num_cameras=4, uv_size=(32, 64), sigma=1.6e-4, layers=16, num_parts=4)
PAPER_SIZE = dict(image_size=256, num_cameras=8, uv_size=(128, 256), sigma=1e-5, layers=25, num_parts=4)
QUICK_SIZE = dict(image_size=32, num_cameras=2, uv_size=(8, 16), sigma=1e-4, layers=4, num_parts=4, feature_dim=16,
                  template_level=1, flow_channels=16)


def inputs(B, S, parts, device):
    g = torch.Generator().manual_seed(0)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, S), torch.linspace(-1, 1, S), indexing="ij")
    mask = ((xs / 0.7) ** 2 + (ys / 0.4) ** 2 <= 1).float()[None, None].expand(B, 1, S, S).contiguous()
    band = ((ys + 0.4) / 0.8 * parts).floor().clamp(0, parts - 1).long()
    p = torch.nn.functional.one_hot(band, parts).permute(2, 0, 1).float()[None] * mask
    return {"image": (torch.rand(B, 3, 1, 1, generator=g) * mask).to(device), "mask": mask.to(device),
            "parts": p.to(device)}


def main():
    p = model_step_parser(__doc__.splitlines()[0])
    p.add_argument("--m-samples", type=int, default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    size = QUICK_SIZE if args.quick else PAPER_SIZE if args.paper else CPU_SIZE
    B = args.batch or (2 if args.quick else 16 if args.paper else 8)
    m_samples = args.m_samples or (4 if args.quick else 128)
    repeats = args.repeats or (1 if args.quick else 3)
    meta = run_meta(device)
    params = dict(size, batch=B, m_step_samples=m_samples)
    params["uv_size"] = list(params["uv_size"])
    print(f"umr_train_step ({meta['device']}, {meta['threads']} threads, load {meta['load_average_start']:.2f}) {params}")
    torch.manual_seed(0)
    model = U.UmrModel(U.UmrConfig(**size)).to(device)
    opts = model.configure_optimizers()
    batch = inputs(B, size["image_size"], size["num_parts"], device)
    step = {"first E-step (no semantic losses)": time_samples(lambda: model.train_step(batch, opts), device, 1, repeats)}
    m_batches = [inputs(min(B, m_samples - i), size["image_size"], size["num_parts"], device)
                 for i in range(0, m_samples, B)]
    step["M-step"] = time_samples(lambda: model.m_step(m_batches), device, 0, 1)
    step["later E-step (with eqs. 2-3)"] = time_samples(lambda: model.train_step(batch, opts), device, 1, repeats)
    rows = []
    for stage, samples in step.items():
        rows.append(dict(meta, op="umr_train_step", params=dict(params, stage=stage), step_s=statistics.median(samples),
                         samples=samples))
        print(f"  {stage:36s} {statistics.median(samples):.3f} s", flush=True)
    if not args.no_record:
        record_rows(rows, device)


if __name__ == "__main__":
    main()
