"""Benchmark of raymarch against invrender.reference.raymarch.

    python benchmarks/bench_raymarch.py              # every device present, full sizes
    python benchmarks/bench_raymarch.py --quick      # smoke run

Cases: B in {8, 32}, 64^3 volumes, 64^2 and 128^2 images, C in {1, 3} emission channels (plus the
absorption-only form), orthographic and perspective cameras. Targets (issue 3) for forward+backward:
CPU (2 threads) at least 3x the reference at B=8, 64^3 -> 64^2; CUDA at least 5x at B=32, with
O(B H W) saved memory where the reference keeps O(B H W samples).
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import invrender  # noqa: E402
from benchmarks.harness import Case, main  # noqa: E402


def make_inputs(B, C, N):
    def make(device):
        g = torch.Generator().manual_seed(0)
        # A soft blob in the middle: most rays hit it and no ray saturates, so every sample
        # carries a gradient.
        c = torch.linspace(-1, 1, N)
        zz, yy, xx = torch.meshgrid(c, c, c, indexing="ij")
        blob = torch.exp(-4 * (xx**2 + yy**2 + zz**2))
        a = (0.08 * blob * (0.5 + torch.rand(B, 1, N, N, N, generator=g))).to(device).requires_grad_()
        az = torch.rand(B, generator=g) * 6.28
        el = torch.rand(B, generator=g) * 1.0 - 0.5
        R = invrender.rotation_matrix(az, el).to(device).requires_grad_()
        if C == 0:
            return [a, R]
        e = torch.rand(B, C, N, N, N, generator=g).to(device).requires_grad_()
        return [a, e, R]

    return make


def render(lib, camera, size):
    def fn(*args):
        a, R = args[0], args[-1]
        e = args[1] if len(args) == 3 else None
        out = lib.raymarch(a, e, R, camera=camera, image_size=size, background=1.0 if e is not None else None)
        return out.image + out.depth

    return fn


def cases(quick):
    if quick:
        grid = [(2, C, 16, 16, cam) for C in (0, 3) for cam in ("orthographic", "perspective")]
    else:
        grid = [(B, C, 64, S, cam) for B in (8, 32) for C in (0, 1, 3) for S in (64, 128)
                for cam in ("orthographic", "perspective")]
    out = []
    for B, C, N, S, cam in grid:
        p = dict(B=B, C=C, N=N, image=S, camera=cam)
        out.append(Case("raymarch", p, make_inputs(B, C, N), render(invrender, cam, S), render(invrender.reference, cam, S)))
    return out


if __name__ == "__main__":
    # The reference at B=32 takes minutes per call on a 2-core CPU.
    main(__doc__.splitlines()[0], cases, keep_on_cpu=lambda p: p["B"] == 8, cpu_repeats=3)
