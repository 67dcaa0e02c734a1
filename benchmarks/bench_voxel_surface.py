"""Benchmark of IG-GAN's "off-the-shelf" renderer: voxel_surface and render_voxel_surface (not differentiable:
forward only), against rendering each sample's surface with render_shaded in a loop.

    python benchmarks/bench_voxel_surface.py --device cpu --threads 1
    python benchmarks/bench_voxel_surface.py --quick          # smoke run

Grids: "blobby" (smoothed noise, what a generator outputs after a little training) and "random" (uniform
noise, the worst case: about half the cell faces are surface); thresholds uniform in [0, 1] as in training.
Issue 16: time per call at B = 8 for 32^3 -> 64^2 and 64^3 -> 128^2 (IG-GAN's sizes).
"""

import datetime
import os
import sys

import torch
import torch.nn.functional as Fn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import invrender  # noqa: E402
from benchmarks.harness import (device_name, git_commit, parse_args, record_rows,  # noqa: E402
                                print_row, time_fn)
from invrender.mesh import voxel_surface  # noqa: E402
from invrender.renderers import render_shaded, render_voxel_surface, sample_thresholds  # noqa: E402


def make_grids(kind, B, N, device):
    g = torch.Generator().manual_seed(0)
    vox = torch.rand(B, 1, N, N, N, generator=g)
    if kind == "blobby":
        k = N // 8 * 2 + 1
        vox = Fn.avg_pool3d(Fn.avg_pool3d(vox, k, 1, k // 2), k, 1, k // 2)
        lo, hi = vox.amin((2, 3, 4), keepdim=True), vox.amax((2, 3, 4), keepdim=True)
        vox = (vox - lo) / (hi - lo)
    thresholds = sample_thresholds(B, generator=g)
    rotation = invrender.rotation_matrix(torch.rand(B, generator=g) * 6.28, torch.rand(B, generator=g) - 0.3)
    return vox.to(device), rotation.to(device), thresholds.to(device)


def per_mesh(vox, rotation, thresholds, S):
    """The unbatched way: one surface and one render_shaded call per sample."""
    out = []
    for b in range(vox.shape[0]):
        verts, faces = voxel_surface(vox[b, 0] > thresholds[b])
        out.append(render_shaded(verts, faces, rotation[b:b + 1], S, supersample=1,
                                 background=torch.zeros(1, 3, S, S, device=vox.device), orthographic=2.0)[0][:, :1])
    return torch.cat(out)


def main():
    args, devices = parse_args(__doc__.splitlines()[0])
    sizes = [(2, 16, 32)] if args.quick else [(8, 32, 64), (8, 64, 128)]
    kinds = ["blobby"] if args.quick else ["blobby", "random"]
    wanted = [item.partition("=")[::2] for item in args.only.split(",")] if args.only else []
    for device in devices:
        repeats = args.repeats or (2 if args.quick else (5 if device.type == "cpu" else 20))
        meta = {"commit": git_commit(), "device": device_name(device), "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        rows = []
        for kind in kinds:
            for B, N, S in sizes:
                params = dict(grids=kind, B=B, N=N, S=S)
                if not all(str(params.get(k)) == v for k, v in wanted):
                    continue
                vox, rotation, thresholds = make_grids(kind, B, N, device)
                occ = vox[:, 0] > thresholds.reshape(-1, 1, 1, 1)
                params["triangles"] = round(sum(f.shape[0] for _, f in voxel_surface(occ)) / B)
                impls = {
                    "invrender": lambda: render_voxel_surface(vox, rotation, thresholds, image_size=S),
                    "per-mesh": lambda: per_mesh(vox, rotation, thresholds, S),
                    "surface": lambda: voxel_surface(occ),  # voxel_surface alone, the whole batch
                }
                results = {name: {"forward_ms": time_fn(fn, device, args.warmup, repeats), "forward_backward_ms": None,
                                  "saved_bytes": None, "peak_bytes": None} for name, fn in impls.items()}
                row = dict(meta, op="render_voxel_surface", params=params, results=results)
                rows.append(row)
                print_row(row)
                print(f"{'':38s} batched vs per-mesh: {results['per-mesh']['forward_ms'] / results['invrender']['forward_ms']:.2f}x")
        if rows and not args.no_record:
            record_rows(rows, device)


if __name__ == "__main__":
    main()
