"""Benchmark of the voxel ops (rotate_voxels, project_voxels) against invrender.reference.

    python benchmarks/bench_voxels.py                 # every device present, full sizes
    python benchmarks/bench_voxels.py --quick         # smoke run

Targets (issue 2): project_voxels forward+backward at least 3x the reference on CPU (2 threads) at
B=8, 64^3, and 10x on CUDA at B=32, 64^3, with extra memory O(B*H*W) instead of O(B*D^3).
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
        # Low occupancies keep the projection unsaturated, so every sample carries a gradient.
        vox = (torch.rand(B, C, N, N, N, generator=g) * 0.05).to(device).requires_grad_()
        az = torch.rand(B, generator=g) * 6.28
        el = torch.rand(B, generator=g) * 1.0 - 0.5
        rot = invrender.rotation_matrix(az, el).to(device).requires_grad_()
        return [vox, rot]

    return make


def cases(quick):
    batches, channels, sizes = ([2], [1], [16]) if quick else ([8, 32], [1, 3], [32, 64])
    out = []
    for B in batches:
        for C in channels:
            for N in sizes:
                p = dict(B=B, C=C, N=N)
                out.append(Case("project_voxels", p, make_inputs(B, C, N),
                                lambda v, R: invrender.project_voxels(v, R, tau=1.0),
                                lambda v, R: invrender.reference.project_voxels(v, R, tau=1.0)))
                out.append(Case("rotate_voxels", dict(p, size=N), make_inputs(B, C, N),
                                lambda v, R: invrender.rotate_voxels(v, R),
                                lambda v, R: invrender.reference.rotate_voxels(v, R)))
    big = [(2, 1, 16)] if quick else [(8, 1, 64), (32, 1, 64)]
    for B, C, N in big:  # IG-GAN: embed a 64^3 object in a 128^3 grid
        out.append(Case("rotate_voxels", dict(B=B, C=C, N=N, size=2 * N), make_inputs(B, C, N),
                        lambda v, R, n=2 * N: invrender.rotate_voxels(v, R, size=n),
                        lambda v, R, n=2 * N: invrender.reference.rotate_voxels(v, R, size=n)))
    return out


if __name__ == "__main__":
    # B=32 at 64^3 on a 2-core CPU takes minutes for the reference alone.
    main(__doc__.splitlines()[0], cases, keep_on_cpu=lambda p: not (p["B"] == 32 and p["N"] == 64))
