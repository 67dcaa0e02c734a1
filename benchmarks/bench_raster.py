"""Benchmark of the layered mesh renderer (rasterize -> layer_alpha -> interpolate -> composite_layers)
against the dense reference (every face against every pixel, torch compositing) and, when importable,
PyTorch3D's rasterize_meshes with UNICORN's torch compositing.

    python benchmarks/bench_raster.py              # every device present, full sizes
    python benchmarks/bench_raster.py --quick      # smoke run

Cases: B=4, 64^2, icosphere level 3 (1280 faces), L=10 (the CPU comparison point of issue 4);
UNICORN's working point B=32, 64^2 with level 3 / L=25 and level 4 (5120 faces) / L=50; UMR's
B=16, 256^2, 1280 faces; and B=2, 512^2, level 5 (20480 faces). Targets (issue 4): CUDA
forward+backward at least 2x PyTorch3D + compositing at the UNICORN point with no more memory; CPU at
least 5x the dense reference and 2x PyTorch3D's CPU rasterizer + compositing.
"""

import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import invrender  # noqa: E402
from benchmarks.harness import Case, main  # noqa: E402
from invrender.mesh import icosphere  # noqa: E402

SIGMA = 1e-4
FOCAL, DISTANCE = 3.732, 2.732  # ShapeNet-NMR camera (UNICORN)


def make_inputs(B, level):
    def make(device):
        g = torch.Generator().manual_seed(0)
        verts, faces = icosphere(level)
        verts = verts * torch.tensor([1.0, 0.7, 0.7]) * 0.8  # UNICORN's ellipsoid template, larger
        R = invrender.rotation_matrix(torch.rand(B, generator=g) * 6.28, 0.5)
        p = verts @ R.transpose(1, 2)
        depth = DISTANCE - p[..., 2]
        ndc = torch.stack([FOCAL * p[..., 0] / depth, FOCAL * p[..., 1] / depth, depth], -1)
        colors = torch.rand(B, verts.shape[0], 3, generator=g)
        make.faces = faces.to(device)
        return [ndc.to(device).requires_grad_(), colors.to(device).requires_grad_()]

    return make


def renderer(make, size, layers, rasterize, composite, layer_alpha):
    def fn(ndc, colors):
        faces = make.faces
        frag = rasterize(ndc, faces, size, layers=layers, sigma=SIGMA)
        alpha = layer_alpha(frag, SIGMA)
        rgb = invrender.interpolate(frag, colors, faces)
        image, mask = composite(alpha, rgb, 1.0)
        return image + mask

    return fn


def pytorch3d_renderer(make, size, layers):
    """PyTorch3D's rasterizer with UNICORN's compositing (torch), or None when not importable."""
    try:
        from pytorch3d.renderer.mesh.rasterize_meshes import rasterize_meshes
        from pytorch3d.structures import Meshes
    except ImportError:
        return None

    def fn(ndc, colors):
        faces = make.faces
        B = ndc.shape[0]
        flipped = ndc * torch.tensor([-1.0, 1.0, 1.0], device=ndc.device, dtype=ndc.dtype)  # +X left in PyTorch3D
        meshes = Meshes(verts=list(flipped), faces=[faces] * B)
        blur = SIGMA * math.log(1.0 / 1e-4 - 1.0)
        pix_to_face, zbuf, bary, dists = rasterize_meshes(meshes, image_size=size, blur_radius=blur,
                                                          faces_per_pixel=layers, perspective_correct=False)
        valid = pix_to_face >= 0
        alpha = torch.exp(-dists.clamp(min=0) / SIGMA) * valid
        packed = (pix_to_face % faces.shape[0]).clamp(min=0)
        corner = colors[torch.arange(B, device=ndc.device)[:, None, None, None], faces[packed]]  # (B,H,W,L,3,C)
        rgb = (bary.unsqueeze(-1) * corner).sum(-2) * valid.unsqueeze(-1)
        image, mask = invrender.reference.composite_layers(alpha, rgb, 1.0)
        return image + mask

    return fn


def cases(quick):
    if quick:
        grid = [(2, 32, 2, 4, True)]
    else:
        grid = [(4, 64, 3, 10, True), (32, 64, 3, 25, False), (32, 64, 4, 50, False), (16, 256, 3, 25, False),
                (2, 512, 5, 25, False)]
    out = []
    for B, size, level, layers, with_reference in grid:
        make = make_inputs(B, level)
        faces = 20 * 4**level
        p = dict(B=B, image=size, faces=faces, layers=layers)
        ours = renderer(make, size, layers, invrender.rasterize, invrender.composite_layers, invrender.layer_alpha)
        ref = None
        if with_reference:
            r = invrender.reference
            ref = renderer(make, size, layers, r.rasterize, r.composite_layers, r.layer_alpha)
        extra = {}
        p3d = pytorch3d_renderer(make, size, layers)
        if p3d is not None:
            extra["pytorch3d"] = p3d
        out.append(Case("layered_render", p, make, ours, ref, extra))
    return out


if __name__ == "__main__":
    main(__doc__.splitlines()[0], cases, cpu_repeats=3)
