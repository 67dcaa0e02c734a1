"""Inverse Graphics GAN of Lunz et al. 2020 (IG-GAN) and the baselines it is compared with.

IG-GAN learns a generator of 3D voxel shapes from unannotated 2D images (supplement B.1):

* a 3D convolutional generator (Wu et al. 2016) maps ``z`` to an occupancy grid ``x`` of ``N^3`` (64 in the
  paper) in [0, 1]; a viewpoint drawn from the data's distribution embeds it by a rigid transform in a grid of
  ``(2N)^3`` (:func:`invrender.rotate_voxels` with ``size=2N``: never clipped);
* an **off-the-shelf, non-differentiable renderer** (OpenGL in the paper) renders ``x`` binarised at a global
  threshold drawn uniformly in [0, 1]: :func:`invrender.renderers.render_voxel_surface` (the surface of the
  occupied voxels, hard z-buffer, the grey Lambertian shading of the training images);
* a **neural renderer** (RenderNet, Nguyen-Phuoc et al. 2018, with 2 residual blocks in 3D and 4 in 2D)
  learns to imitate it on the generator's samples — L2 to the off-the-shelf render plus the **discriminator
  output matching** (DOM) loss weighted by 100 — so that gradients reach the generator through it;
* a DCGAN discriminator with spectral normalisation at ``(2N)^2`` sees the data and the off-the-shelf renders;
* generator, discriminator and neural renderer update 1:1:1 (learning rates 2e-4, 2e-4, 2e-5).

Baselines under the same generator, discriminator and schedule (``variant``): ``visual_hull`` (PrGAN,
:func:`invrender.project_voxels`), ``absorption`` (PlatonicGAN's absorption-only ray marching,
:func:`invrender.raymarch` without emission) and ``dcgan2d`` (a 2D DCGAN generator, no 3D at all).

The paper states the architectures by reference and little else; what the released code of the cited
papers fixes is marked "(Wu 2016)", "(DCGAN)", "(RenderNet)"; choices of this implementation "(ours)".
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import invrender
from invrender.errors import ConfigError

from .networks import DCGANDiscriminator

__all__ = [
    "VARIANTS",
    "Generator2D",
    "Generator3D",
    "IgganConfig",
    "IgganModel",
    "RenderNet",
    "discriminator_losses",
    "dom_loss",
    "generator_loss",
    "random_boxes",
]

#: ``variant`` -> how generated shapes become images: the neural renderer trained on the off-the-shelf one
#: (IG-GAN), the visual hull (PrGAN), absorption-only ray marching (PlatonicGAN), or no 3D (2D DCGAN).
VARIANTS = ("iggan", "visual_hull", "absorption", "dcgan2d")
#: Task names of ``invrender train``, one per variant.
TASKS = {"iggan": "iggan", "visual_hull_gan": "visual_hull", "absorption_gan": "absorption", "dcgan2d": "dcgan2d"}


# ------------------------------------------------------------------------------------------------
# Configuration


@dataclass
class IgganConfig:
    """Hyper-parameters (supplement B.1 unless marked). ``image_size`` is ``2 * grid_size`` (the embedding)."""

    variant: str = "iggan"
    grid_size: int = 64                   # B.1: 64^3 voxels (32 for CPUs: a config away)
    latent_dim: int = 200                 # (Wu 2016)
    generator_channels: int = 512         # (Wu 2016): 512-256-128-64 from 4^3 up
    discriminator_channels: int = 64      # (DCGAN)
    spectral_norm: bool = True            # B.1
    renderer_channels: int = 32           # (ours) RenderNet's width after the projection unit is 8x this
    renderer_blocks_3d: int = 2           # B.1
    renderer_blocks_2d: int = 4           # B.1
    lr_generator: float = 2e-4            # B.1
    lr_discriminator: float = 2e-4        # B.1
    lr_renderer: float = 2e-5             # B.1
    betas: Tuple[float, float] = (0.5, 0.999)  # (DCGAN)
    dom_weight: float = 100.0             # B.1: lambda of the DOM loss over the L2 loss
    l2_reduction: str = "sum"             # (ours) the renderer's L2 summed over each image's pixels ("sum") or per
                                          # pixel ("mean"); B.1 does not say. With "mean" lambda = 100 lets DOM
                                          # swamp the L2 (chairs FID 93.9 vs 33.0 with "sum", iggan-fid.md)
    azimuth_range: Tuple[float, float] = (0.0, 360.0)    # B.2: the data's viewpoints (degrees)
    elevation_range: Tuple[float, float] = (15.0, 60.0)  # B.2: couches and bathtubs (chairs: -30..60)
    extent: float = 2.0                   # view window [-2, 2]^2: a [-1, 1]^3 grid embedded in one twice its size
    visual_hull_tau: float = 1.0          # PrGAN: 1 - exp(-tau sum)
    threshold_range: Tuple[float, float] = (0.0, 1.0)  # B.1: global binarisation threshold ~ U[0, 1]

    def __post_init__(self):
        def fail(name, expected, value):
            raise ConfigError(f"iggan: model.{name} must be {expected}, got {value!r}")

        if self.variant not in VARIANTS:
            fail("variant", f"one of {VARIANTS}", self.variant)
        g = self.grid_size
        if isinstance(g, bool) or not isinstance(g, int) or g < 8 or g & (g - 1):
            fail("grid_size", "a power of two >= 8", g)
        for name in ("latent_dim", "generator_channels", "discriminator_channels", "renderer_channels"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                fail(name, "a positive int", v)
        if self.generator_channels < 2 ** (int(math.log2(g)) - 2):
            fail("generator_channels", f"at least {2 ** (int(math.log2(g)) - 2)} (halved at each of the "
                 f"{int(math.log2(g)) - 2} upsamplings)", self.generator_channels)
        for name in ("renderer_blocks_3d", "renderer_blocks_2d"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                fail(name, "an int >= 0", v)
        for name in ("lr_generator", "lr_discriminator", "lr_renderer", "extent", "visual_hull_tau"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
                fail(name, "a positive number", v)
        if self.l2_reduction not in ("mean", "sum"):
            fail("l2_reduction", "'mean' or 'sum'", self.l2_reduction)
        if isinstance(self.dom_weight, bool) or not isinstance(self.dom_weight, (int, float)) or \
                not (math.isfinite(self.dom_weight) and self.dom_weight >= 0):
            fail("dom_weight", "a number >= 0 (0: no DOM loss, the ablation)", self.dom_weight)
        for name, lo, hi in (("betas", 0.0, 1.0), ("azimuth_range", -720.0, 720.0), ("elevation_range", -90.0, 90.0),
                             ("threshold_range", 0.0, 1.0)):
            v = getattr(self, name)
            if (not isinstance(v, (tuple, list)) or len(v) != 2
                    or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
                    or not (lo <= v[0] <= v[1] <= hi) or (name == "betas" and v[1] >= 1.0)):
                fail(name, f"a pair (a, b) with {lo} <= a <= b <= {hi}", v)
            setattr(self, name, tuple(float(x) for x in v))

    @property
    def image_size(self) -> int:
        return 2 * self.grid_size


# ------------------------------------------------------------------------------------------------
# Networks


def _upsamplings(size: int) -> int:
    return int(math.log2(size)) - 2  # from 4 to size


def _upconv_stack(dims: int, latent_dim: int, top: int, size: int, floor: int = 1) -> nn.Sequential:
    """DCGAN-style generator body in 2D or 3D: a 4^dims transposed convolution from the latent to ``top``
    channels, then transposed convolutions (kernel 4, stride 2, padding 1) halving the channels (not below
    ``floor``) up to ``size``, BatchNorm + ReLU between, the last to one channel."""
    conv, bn = (nn.ConvTranspose3d, nn.BatchNorm3d) if dims == 3 else (nn.ConvTranspose2d, nn.BatchNorm2d)
    n = _upsamplings(size)
    layers = [conv(latent_dim, top, 4, 1, 0, bias=False), bn(top), nn.ReLU(True)]
    c = top
    for i in range(n):
        last = i == n - 1
        out = 1 if last else max(c // 2, floor)
        layers.append(conv(c, out, 4, 2, 1, bias=last))
        if not last:
            layers += [bn(out), nn.ReLU(True)]
        c = out
    return nn.Sequential(*layers)


class Generator3D(nn.Module):
    """3D-GAN generator (Wu et al. 2016): ``z (B, latent_dim)`` -> occupancy ``(B, 1, N, N, N)`` in [0, 1].

    A 4x4x4 transposed convolution from ``z`` to ``channels`` feature maps, then ``log2(N / 4)`` transposed
    convolutions (kernel 4, stride 2, padding 1) halving the channels (512-256-128-64 for N = 64) with
    BatchNorm + ReLU, the last one to one channel and a sigmoid (Wu 2016).
    """

    def __init__(self, grid_size: int = 64, latent_dim: int = 200, channels: int = 512):
        super().__init__()
        self.grid_size, self.latent_dim = grid_size, latent_dim
        self.main = _upconv_stack(3, latent_dim, channels, grid_size)

    def forward(self, z: Tensor) -> Tensor:
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"Generator3D: argument 'z' must be (B, {self.latent_dim}), got {tuple(z.shape)}")
        return torch.sigmoid(self.main(z[:, :, None, None, None]))


class Generator2D(nn.Module):
    """DCGAN's generator (Radford et al. 2016): ``z (B, latent_dim)`` -> grey images ``(B, 1, S, S)`` in [0, 1]
    (a sigmoid where DCGAN has tanh: our images are in [0, 1]). The 2D baseline of IG-GAN's Table 1."""

    def __init__(self, image_size: int = 128, latent_dim: int = 200, channels: int = 64):
        super().__init__()
        self.image_size, self.latent_dim = image_size, latent_dim
        top = channels * 2 ** min(_upsamplings(image_size) - 1, 3)
        self.main = _upconv_stack(2, latent_dim, top, image_size, floor=channels)

    def forward(self, z: Tensor) -> Tensor:
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"Generator2D: argument 'z' must be (B, {self.latent_dim}), got {tuple(z.shape)}")
        return torch.sigmoid(self.main(z[:, :, None, None]))


class _Residual(nn.Module):
    """``x + conv(relu(bn(conv(relu(bn(x))))))`` in 2D or 3D (pre-activation residual block, RenderNet)."""

    def __init__(self, channels: int, dims: int):
        super().__init__()
        conv, bn = (nn.Conv3d, nn.BatchNorm3d) if dims == 3 else (nn.Conv2d, nn.BatchNorm2d)
        self.body = nn.Sequential(bn(channels), nn.ReLU(True), conv(channels, channels, 3, 1, 1, bias=False),
                                  bn(channels), nn.ReLU(True), conv(channels, channels, 3, 1, 1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class RenderNet(nn.Module):
    """RenderNet (Nguyen-Phuoc et al. 2018) as IG-GAN uses it: a view-aligned grid ``(B, 1, M, M, M)`` (the
    generator's sample embedded and turned, depth along dim 2 front to back) -> image ``(B, 1, M, M)`` in [0, 1].

    Two strided 3D convolutions (M -> M/4, channels ``c/2`` then ``c``), ``blocks_3d`` residual blocks in 3D,
    the **projection unit** (the depth axis folded into the channels, ``(c, M/4, M/4, M/4) -> (c M/4, M/4,
    M/4)``, and a 1x1 convolution to ``8c`` channels with LeakyReLU, RenderNet), ``blocks_2d`` residual blocks in
    2D, two transposed convolutions back to M x M and a 3x3 convolution to one channel with a sigmoid.
    B.1: 2 residual blocks in 3D and 4 in 2D.
    """

    def __init__(self, grid_size: int = 128, channels: int = 32, blocks_3d: int = 2, blocks_2d: int = 4):
        super().__init__()
        if grid_size % 4:
            raise ValueError(f"RenderNet: argument 'grid_size' must be a multiple of 4, got {grid_size}")
        self.grid_size = grid_size
        c, d = channels, grid_size // 4
        self.encode = nn.Sequential(
            nn.Conv3d(1, c // 2 or 1, 4, 2, 1), nn.LeakyReLU(0.2, True),
            nn.Conv3d(c // 2 or 1, c, 4, 2, 1), nn.LeakyReLU(0.2, True),
            *[_Residual(c, 3) for _ in range(blocks_3d)])
        self.project = nn.Sequential(nn.Conv2d(c * d, 8 * c, 1), nn.LeakyReLU(0.2, True))
        self.decode = nn.Sequential(
            *[_Residual(8 * c, 2) for _ in range(blocks_2d)],
            nn.ConvTranspose2d(8 * c, 2 * c, 4, 2, 1), nn.BatchNorm2d(2 * c), nn.ReLU(True),
            nn.ConvTranspose2d(2 * c, c, 4, 2, 1), nn.BatchNorm2d(c), nn.ReLU(True),
            nn.Conv2d(c, 1, 3, 1, 1))
        nn.init.constant_(self.decode[-1].bias, -3.0)  # (ours) starts near black: most of a render is background

    def forward(self, grid: Tensor) -> Tensor:
        M = self.grid_size
        if grid.dim() != 5 or tuple(grid.shape[1:]) != (1, M, M, M):
            raise ValueError(f"RenderNet: argument 'grid' must be (B, 1, {M}, {M}, {M}), got {tuple(grid.shape)}")
        h = self.encode(grid)                                   # (B, c, D', H', W')
        B, c, D, H, W = h.shape
        h = self.project(h.reshape(B, c * D, H, W))             # projection unit: depth into channels
        return torch.sigmoid(self.decode(h))


# ------------------------------------------------------------------------------------------------
# Losses


def discriminator_losses(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """The discriminator's binary cross-entropy: real -> 1, fake -> 0 (DCGAN), averaged over the batch."""
    return (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))


def generator_loss(fake_logits: Tensor) -> Tensor:
    """The non-saturating generator loss ``-log D(G(z))`` (DCGAN), averaged over the batch."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def dom_loss(neural_logits: Tensor, offtheshelf_logits: Tensor) -> Tensor:
    """Discriminator output matching: ``mean (D(R(x)) - D(f(x_d)))^2`` between the discriminator's outputs on
    the neural render ``R(x)`` of the continuous sample and on the off-the-shelf render ``f(x_d)`` of its
    binarisation; the latter is a target (no gradient). Trains the neural renderer to render what the
    discriminator judges, not the blur an L2 fit averages over thresholds to (supplement B.5, Figure 4)."""
    return (neural_logits - offtheshelf_logits.detach()).pow(2).mean()


# ------------------------------------------------------------------------------------------------
# Shapes for pre-training the neural renderer


def random_boxes(batch: int, grid_size: int, boxes: Tuple[int, int] = (1, 4), generator: Optional[torch.Generator] = None,
                 device=None) -> Tensor:
    """Grids ``(batch, 1, N, N, N)`` of 1 to 3 random axis-aligned boxes each, with soft values in [0, 1] (so that
    binarisation thresholds matter): the "random cubes" the neural renderer is pre-trained on (Table 3)."""
    N = grid_size
    coords = (torch.arange(N, dtype=torch.float32) + 0.5) / N * 2 - 1  # voxel centres in [-1, 1]
    out = torch.zeros(batch, 1, N, N, N)
    for b in range(batch):
        count = int(torch.randint(boxes[0], boxes[1], (), generator=generator))
        for _ in range(count):
            centre = (torch.rand(3, generator=generator) - 0.5) * 1.0
            half = 0.1 + 0.4 * torch.rand(3, generator=generator)
            inside = [((coords - centre[i]).abs() <= half[i]).float() for i in range(3)]  # d, h, w axes
            value = 0.3 + 0.7 * torch.rand((), generator=generator)
            box = inside[0][:, None, None] * inside[1][None, :, None] * inside[2][None, None, :]
            out[b, 0] = torch.maximum(out[b, 0], value * box)
    return out.to(device) if device is not None else out


# ------------------------------------------------------------------------------------------------
# Model


class IgganModel(nn.Module):
    """IG-GAN or one of its baselines (``config.variant``): generator, discriminator and, for IG-GAN, the
    neural renderer; :meth:`train_step` does one 1:1:1 update."""

    def __init__(self, config: Optional[IgganConfig] = None):
        super().__init__()
        c = self.config = config or IgganConfig()
        S = c.image_size
        if c.variant == "dcgan2d":
            self.generator = Generator2D(S, c.latent_dim, max(c.generator_channels // 8, 8))
        else:
            self.generator = Generator3D(c.grid_size, c.latent_dim, c.generator_channels)
        self.discriminator = DCGANDiscriminator(S, 1, c.discriminator_channels, c.spectral_norm)
        self.renderer = (RenderNet(S, c.renderer_channels, c.renderer_blocks_3d, c.renderer_blocks_2d)
                         if c.variant == "iggan" else None)

    # -- sampling ------------------------------------------------------------------------------------

    def sample_latents(self, batch: int, generator: Optional[torch.Generator] = None) -> Tensor:
        device = next(self.parameters()).device
        return torch.randn(batch, self.config.latent_dim, generator=generator).to(device)

    def sample_rotations(self, batch: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """Object-to-view rotations ``(batch, 3, 3)`` from the data's viewpoint distribution."""
        from invrender.data.shaded import sample_viewpoints

        c = self.config
        azimuth, elevation = sample_viewpoints(batch, c.azimuth_range, c.elevation_range, generator, torch.float32)
        return invrender.rotation_matrix(azimuth, elevation).to(next(self.parameters()).device)

    def sample_thresholds(self, batch: int, generator: Optional[torch.Generator] = None) -> Tensor:
        lo, hi = self.config.threshold_range
        return lo + (hi - lo) * torch.rand(batch, generator=generator)

    # -- rendering -------------------------------------------------------------------------------------

    def embed(self, voxels: Tensor, rotation: Tensor) -> Tensor:
        """The rigid embedding: ``(B, 1, N, N, N)`` turned by ``rotation`` into ``(B, 1, 2N, 2N, 2N)``."""
        return invrender.rotate_voxels(voxels, rotation, size=2 * self.config.grid_size)

    def render_offtheshelf(self, voxels: Tensor, rotation: Tensor, thresholds) -> Tensor:
        """The non-differentiable renderer: ``voxels > thresholds`` as shaded voxel surfaces, ``(B, 1, 2N, 2N)``."""
        from invrender.renderers import render_voxel_surface

        c = self.config
        with torch.no_grad():
            image, _ = render_voxel_surface(voxels.detach(), rotation, thresholds, image_size=c.image_size,
                                            extent=c.extent)
        return image.to(voxels.dtype)

    def render(self, voxels: Tensor, rotation: Tensor) -> Tensor:
        """The variant's differentiable image of generated grids, ``(B, 1, 2N, 2N)``: the neural renderer
        (IG-GAN), the visual hull, or absorption-only ray marching, all of the embedded grid."""
        c = self.config
        if c.variant == "iggan":
            return self.renderer(self.embed(voxels, rotation))
        pad = c.grid_size // 2
        padded = F.pad(voxels, (pad,) * 6)  # [-1, 1]^3 in [-2, 2]^3, the same spacing (fused rotation below)
        if c.variant == "visual_hull":
            return invrender.project_voxels(padded, rotation, tau=c.visual_hull_tau)
        if c.variant == "absorption":
            return invrender.raymarch(padded, rotation=rotation).image
        raise ValueError(f"IgganModel.render: the {c.variant} variant renders no voxels")

    @torch.no_grad()
    def generate(self, batch: int, generator: Optional[torch.Generator] = None, threshold: float = 0.5,
                 rotation: Optional[Tensor] = None) -> Dict[str, Tensor]:
        """Samples for evaluation and pictures: ``voxels`` (3D variants), ``rotation`` and ``image`` ``(B, 1, S,
        S)``: the off-the-shelf render at ``threshold`` for the 3D variants (every variant's shapes seen the
        same way), the generated image for the 2D DCGAN."""
        z = self.sample_latents(batch, generator)
        rotation = self.sample_rotations(batch, generator) if rotation is None else rotation
        if self.config.variant == "dcgan2d":
            return {"image": self.generator(z), "rotation": rotation}
        voxels = self.generator(z)
        return {"voxels": voxels, "rotation": rotation,
                "image": self.render_offtheshelf(voxels, rotation, torch.full((batch,), float(threshold)))}

    # -- training --------------------------------------------------------------------------------------

    def configure_optimizers(self) -> Dict[str, torch.optim.Optimizer]:
        c = self.config
        opts = {"generator": torch.optim.Adam(self.generator.parameters(), lr=c.lr_generator, betas=c.betas),
                "discriminator": torch.optim.Adam(self.discriminator.parameters(), lr=c.lr_discriminator,
                                                  betas=c.betas)}
        if self.renderer is not None:
            opts["renderer"] = torch.optim.Adam(self.renderer.parameters(), lr=c.lr_renderer, betas=c.betas)
        return opts

    def _module_of(self, name: str) -> nn.Module:
        return {"generator": self.generator, "discriminator": self.discriminator, "renderer": self.renderer}[name]

    def _update(self, name: str, loss: Tensor, optimizers, reduce_gradients=None) -> None:
        """Backward ``loss`` into module ``name``'s parameters only, and step its optimizer."""
        params = [p for p in self._module_of(name).parameters() if p.requires_grad]
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for p, g in zip(params, grads):
            p.grad = g if g is not None else torch.zeros_like(p)
        if reduce_gradients is not None:
            reduce_gradients(params)
        optimizers[name].step()
        for p in params:
            p.grad = None

    def renderer_step(self, voxels: Tensor, rotation: Tensor, thresholds: Tensor, target: Tensor,
                      optimizers, with_dom: bool = True, reduce_gradients=None) -> Dict[str, Tensor]:
        """One neural-renderer update: L2 to the off-the-shelf ``target`` (per pixel, or summed over each image's
        pixels with ``l2_reduction="sum"``; averaged over the batch) plus ``dom_weight`` times the DOM loss (when
        ``with_dom`` and the weight is positive)."""
        c = self.config
        neural = self.renderer(self.embed(voxels.detach(), rotation))
        l2 = (neural - target).pow(2).flatten(1)
        l2 = l2.sum(1).mean() if c.l2_reduction == "sum" else l2.mean()
        loss, out = l2, {"renderer_l2": l2.detach()}
        if with_dom and c.dom_weight > 0:
            dom = dom_loss(self.discriminator(neural), self.discriminator(target))
            loss = loss + c.dom_weight * dom
            out["renderer_dom"] = dom.detach()
        self._update("renderer", loss, optimizers, reduce_gradients)
        out["renderer_loss"] = loss.detach()
        return out

    def train_step(self, real: Tensor, optimizers: Dict[str, torch.optim.Optimizer],
                   generator: Optional[torch.Generator] = None, reduce_gradients=None) -> Dict[str, Tensor]:
        """One 1:1:1 iteration (B.1) on real images ``(B, 1, S, S)``:

        1. discriminator: real vs the fakes' renders (IG-GAN: the off-the-shelf renders of the binarised samples,
           Table 2's "OpenGL" setting; baselines: their own differentiable renders);
        2. IG-GAN only, neural renderer: :meth:`renderer_step` on the same samples and renders;
        3. generator: ``-log D`` of its samples' differentiable renders (IG-GAN: through the neural renderer).
        """
        c = self.config
        B = real.shape[0]
        z = self.sample_latents(B, generator)
        out: Dict[str, Tensor] = {}
        if c.variant == "dcgan2d":
            fake = self.generator(z)
            out["discriminator_loss"] = d_loss = discriminator_losses(self.discriminator(real),
                                                                     self.discriminator(fake.detach()))
            self._update("discriminator", d_loss, optimizers, reduce_gradients)
            g_loss = generator_loss(self.discriminator(fake))
        else:
            rotation = self.sample_rotations(B, generator)
            voxels = self.generator(z)
            if c.variant == "iggan":
                thresholds = self.sample_thresholds(B, generator)
                shown = self.render_offtheshelf(voxels, rotation, thresholds)
            else:
                shown = self.render(voxels.detach(), rotation)
            out["discriminator_loss"] = d_loss = discriminator_losses(self.discriminator(real),
                                                                     self.discriminator(shown))
            self._update("discriminator", d_loss, optimizers, reduce_gradients)
            if c.variant == "iggan":
                out.update(self.renderer_step(voxels, rotation, thresholds, shown, optimizers,
                                              reduce_gradients=reduce_gradients))
            g_loss = generator_loss(self.discriminator(self.render(voxels, rotation)))
            out["occupancy_mean"] = voxels.detach().mean()
        self._update("generator", g_loss, optimizers, reduce_gradients)
        out["generator_loss"] = g_loss.detach()
        out["total"] = (out["discriminator_loss"] + out["generator_loss"]).detach()
        return out

    def pretrain_renderer(self, steps: int, batch_size: int, optimizers, shapes: str = "boxes",
                          generator: Optional[torch.Generator] = None, progress: Optional[bool] = False,
                          shape_fn=None, lr: Optional[float] = None, reduce_gradients=None) -> List[float]:
        """Pre-trains the neural renderer by L2 on ``steps`` batches of random boxes (``shapes="boxes"``, Table 3's
        "Random") or of grids from ``shape_fn(batch) -> (B, 1, N, N, N)`` (another category), random views and
        thresholds; no DOM (the discriminator is untrained), at learning rate ``lr`` (default the renderer's;
        its optimizer's rate is restored afterwards). ``progress``: a progress bar (None: only on a terminal).
        ``reduce_gradients(params)``, when given, runs before each step (data parallelism). Returns the losses."""
        from tqdm.auto import tqdm

        if self.renderer is None:
            raise ValueError("IgganModel.pretrain_renderer: only the iggan variant has a neural renderer")
        device = next(self.parameters()).device
        losses = []
        groups = optimizers["renderer"].param_groups
        saved = [g["lr"] for g in groups]
        if lr is not None:
            for g in groups:
                g["lr"] = float(lr)
        for _ in tqdm(range(steps), desc="pre-training the neural renderer", disable=None if progress is None else not progress):
            if shape_fn is not None:
                voxels = shape_fn(batch_size).to(device)
            elif shapes == "boxes":
                voxels = random_boxes(batch_size, self.config.grid_size, generator=generator, device=device)
            else:
                raise ValueError(f"IgganModel.pretrain_renderer: argument 'shapes' must be 'boxes' or a shape_fn, "
                                 f"got {shapes!r}")
            rotation = self.sample_rotations(batch_size, generator)
            thresholds = self.sample_thresholds(batch_size, generator)
            target = self.render_offtheshelf(voxels, rotation, thresholds)
            out = self.renderer_step(voxels, rotation, thresholds, target, optimizers, with_dom=False,
                                     reduce_gradients=reduce_gradients)
            losses.append(float(out["renderer_loss"]))
        for g, rate in zip(groups, saved):
            g["lr"] = rate
        return losses


# ------------------------------------------------------------------------------------------------
# Training task (``invrender train iggan|visual_hull_gan|absorption_gan|dcgan2d --config configs/iggan/...``)


class _Cached(torch.utils.data.Dataset):
    """A fixed set of renders, rendered once and kept in memory (the "views" regime)."""

    def __init__(self, base):
        self.base, self._items = base, {}

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        if i not in self._items:
            self._items[i] = {k: v for k, v in self.base[i].items() if k in ("image", "label", "object")}
        return self._items[i]


class IgganTask:
    """Trains :class:`IgganModel` (``variant`` fixed by the task name) on grey renders of the synthetic data.

    Config (defaults in :meth:`default_config`): ``model`` holds :class:`IgganConfig` fields (``variant`` comes
    from the task; the viewpoint ranges default to ``data.viewpoints``'); ``data`` the arguments of
    :class:`invrender.data.ShadedViews` (``categories``, ``objects``, ``regime``, ``views_per_object``,
    ``length``, ``viewpoints``, ``seed``; the image size is ``2 * model.grid_size``), or ``data.kind: folder``
    with ``data.root`` for an :class:`invrender.data.ImageFolder` of natural images (the Chanterelle setting;
    converted to grey, resized); ``pretrain`` the neural renderer's pre-training before step 0 (``steps``,
    ``shapes``: ``boxes`` or a synthetic category, ``batch_size``); ``eval`` the FID protocol.

    Data parallel: the three optimizers step inside one training step, so the model is not wrapped
    (``wrap_ddp = False``) and each optimizer's gradients are averaged over the processes before its step.
    """

    wrap_ddp = False

    def __init__(self, variant: str = "iggan"):
        if variant not in VARIANTS:
            raise ValueError(f"IgganTask: argument 'variant' must be one of {VARIANTS}, got {variant!r}")
        self.variant = variant

    def default_config(self):
        return {
            # CPU size (ours): 32^3 in 64^3, 64^2 images, narrower networks; configs/iggan/<category>.yaml: the paper's
            "model": {"grid_size": 32, "generator_channels": 128, "renderer_channels": 8, "discriminator_channels": 32},
            "data": {"kind": "shaded", "categories": ["chair"], "objects": 500, "regime": "views",
                     "views_per_object": 1, "length": None, "viewpoints": "chairs", "seed": 0, "root": None},
            # (ours) the paper pre-trains on ShapeNet tables for an unstated time; a faster rate than the GAN phase's
            "pretrain": {"steps": 600 if self.variant == "iggan" else 0, "shapes": "boxes", "batch_size": 16,
                         "lr": 1e-3},
            "eval": {"num_samples": 500, "threshold": 0.5, "thresholds": [0.1, 0.3, 0.5], "seed": 0,
                     "fid_image_size": 64, "num_shapes": 100},
            "batch_size": 16, "steps": 2000, "vis_every": 250, "ckpt_every": 500, "log_every": 20,
        }

    def config_schema(self):
        hints = typing.get_type_hints(IgganConfig)
        model = {f.name: hints[f.name] for f in dataclasses.fields(IgganConfig) if f.name != "variant"}
        model["azimuth_range"] = model["elevation_range"] = model["betas"] = model["threshold_range"] = List[float]
        data = {"kind": str, "categories": typing.Union[str, List[str]], "objects": int, "regime": str,
                "views_per_object": int, "length": Optional[int], "viewpoints": typing.Union[str, List[List[float]]],
                "seed": int, "root": Optional[str]}
        return {"model": model, "data": data,
                "pretrain": {"steps": int, "shapes": str, "batch_size": int, "lr": float},
                "eval": {"num_samples": int, "threshold": float, "thresholds": List[float], "seed": int,
                         "fid_image_size": int, "num_shapes": int}}

    def _viewpoints(self, config):
        from invrender.data.shaded import VIEWPOINTS

        vp = config["data"].get("viewpoints", "default")
        if isinstance(vp, str):
            if vp not in VIEWPOINTS:
                raise ConfigError(f"{self.variant}: data.viewpoints must be one of {sorted(VIEWPOINTS)} or "
                                  f"[[az_lo, az_hi], [el_lo, el_hi]], got {vp!r}")
            return VIEWPOINTS[vp]
        return tuple(tuple(r) for r in vp)

    def model_config(self, config) -> IgganConfig:
        fields = dict(config.get("model") or {})
        (az, el) = self._viewpoints(config)
        fields.setdefault("azimuth_range", az)
        fields.setdefault("elevation_range", el)
        fields["variant"] = self.variant
        for key in ("betas", "azimuth_range", "elevation_range", "threshold_range"):
            if key in fields:
                fields[key] = tuple(fields[key])
        return IgganConfig(**fields)

    def shaded(self, config, split: str, **overrides):
        """The :class:`invrender.data.ShadedViews` of the config (``split`` train, or test: held-out objects)."""
        from invrender.data import ShadedViews

        data = config["data"]
        kw = dict(categories=data.get("categories", ["chair"]), objects=int(data.get("objects", 500)),
                  regime=data.get("regime", "views"), views_per_object=int(data.get("views_per_object", 1)),
                  length=data.get("length"), viewpoints=self._viewpoints(config),
                  image_size=self.model_config(config).image_size, split=split, seed=int(data.get("seed", 0)))
        kw.update(overrides)
        try:
            return ShadedViews(**kw)
        except ValueError as e:
            raise ConfigError(f"{self.variant}: data: {e}") from None

    def dataset(self, config, split):
        data = config["data"]
        kind = data.get("kind", "shaded")
        size = self.model_config(config).image_size
        if kind == "folder":
            from invrender.data import GrayscaleViews, ImageFolder

            if not data.get("root"):
                raise ConfigError(f"{self.variant}: data.root is required with data.kind=folder")
            return GrayscaleViews(ImageFolder(data["root"], image_size=size), image_size=size)
        if kind != "shaded":
            raise ConfigError(f"{self.variant}: data.kind must be 'shaded' or 'folder', got {kind!r}")
        views = self.shaded(config, "train" if split == "train" else "test")
        return _Cached(views) if views.regime == "views" and split == "train" else views

    def build(self, config, device):
        self._config = config  # train_step pre-trains the neural renderer at step 0 by config["pretrain"]
        model = IgganModel(self.model_config(config)).to(device)
        return model, model.configure_optimizers()

    def _pretrain_shapes(self, config, model, shapes: str):
        """``shape_fn(batch)`` of voxelized meshes of the synthetic category ``shapes`` (Table 3's "another
        category"), or None for random boxes."""
        if shapes == "boxes":
            return None
        from invrender import mesh as mesh_ops

        views = self.shaded(config, "train", categories=[shapes], objects=50)
        N = model.config.grid_size
        grids = torch.stack([mesh_ops.voxelize(*views.mesh(k), resolution=N).float() for k in range(views.objects)])
        g = torch.Generator().manual_seed(int(config.get("seed", 0)) + 1)

        def shape_fn(batch):
            return grids[torch.randint(len(grids), (batch,), generator=g)][:, None]
        return shape_fn

    def train_step(self, model, batch, optimizers, step):
        from invrender.training import average_gradients, broadcast_buffers, unwrap

        model = unwrap(model)
        out = {}
        pre = getattr(self, "_config", None)
        if step == 0 and pre is not None and model.renderer is not None and int(pre["pretrain"].get("steps", 0)) > 0:
            p = pre["pretrain"]
            losses = model.pretrain_renderer(int(p["steps"]), int(p.get("batch_size", 16)), optimizers,
                                             shape_fn=self._pretrain_shapes(pre, model, p.get("shapes", "boxes")),
                                             progress=None, lr=p.get("lr"), reduce_gradients=average_gradients)
            out["pretrain_renderer_loss"] = losses[-1]
        out.update(model.train_step(batch["image"], optimizers, reduce_gradients=average_gradients))
        broadcast_buffers(model)
        return out

    def visualize(self, model, batch, out_dir, step):
        """Training images, samples rendered by the off-the-shelf renderer (threshold 0.5) and as normal maps,
        the variant's differentiable render of the same samples (the neural renderer for IG-GAN), and the first
        sample's marching-cubes mesh (``sample0.obj``)."""
        from invrender import io
        from invrender.renderers import render_voxel_surface

        n = batch["image"].shape[0]
        g = torch.Generator().manual_seed(step)
        s = model.generate(n, g)
        out = {"data": batch["image"], "samples": s["image"]}
        if "voxels" in s:
            c = model.config
            out["samples_normals"], _ = render_voxel_surface(s["voxels"], s["rotation"], 0.5, c.image_size, c.extent,
                                                             normals=True)
            out["samples_" + ("neural_render" if c.variant == "iggan" else c.variant)] = model.render(
                s["voxels"], s["rotation"]).clamp(0, 1)
            meshes = io.marching_cubes(s["voxels"][:1, 0].cpu().float(), level=0.5)
            if meshes and meshes[0][1].shape[0] > 0:
                io.save_mesh(os.path.join(out_dir, "sample0.obj"), *meshes[0])
        return out

    def _mean_shape(self, config, grid_size: int, count: int = 50) -> Tensor:
        """The mean occupancy of ``count`` training objects voxelized in the generator's grid (each seen in
        its canonical frame), ``(1, 1, N, N, N)``: a learning-free generator of one shape."""
        from invrender import mesh as mesh_ops

        views = self.shaded(config, "train")
        count = min(count, views.objects)
        grids = [mesh_ops.voxelize(*views.mesh(k), resolution=grid_size).float() for k in range(count)]
        return torch.stack(grids).mean(0)[None, None]

    def _voxelized(self, config, split: str, count: int, grid_size: int) -> Tensor:
        """The first ``count`` objects of ``split`` voxelized in the generator's grid, ``(count, 1, N, N, N)``."""
        from invrender import mesh as mesh_ops

        views = self.shaded(config, split)
        count = min(count, views.objects)
        return torch.stack([mesh_ops.voxelize(*views.mesh(k), resolution=grid_size).float()
                            for k in range(count)])[:, None]

    def _shape_metrics(self, config, grid_size: int, voxels: Optional[Tensor], mean_shape: Tensor,
                       thresholds, seed: int) -> Dict[str, object]:
        """3D set metrics (:func:`invrender.metrics.generation_metrics` on ``1 - IoU`` of the grids) of the
        samples against ``eval.num_shapes`` held-out objects, beside the references under the same protocol:
        other training objects (the floor), the mean training shape (one shape: coverage ``1 / N``) and random
        boxes. The data fixes the generator's frame only up to a turn about the vertical axis (every azimuth is
        seen), so each set is first turned by the azimuth (10-degree steps) of lowest MMD; the 3D variants'
        grids are binarised at each of ``thresholds`` and the threshold of lowest MMD is reported as
        ``shape_best`` (its MMD, coverage, 1-NNA, threshold and azimuth)."""
        from invrender.metrics import generation_metrics, pairwise_voxel_iou_distance

        ev = config.get("eval") or {}
        n = int(ev.get("num_shapes", 100))
        reference = self._voxelized(config, "test", n, grid_size)
        d_rr = pairwise_voxel_iou_distance(reference, reference)
        angles = torch.arange(0, 360, 10, dtype=torch.float32)
        turns = invrender.rotation_matrix(torch.deg2rad(angles))

        def measure(grids, grid_thresholds):
            best = None
            for t in grid_thresholds:
                # The azimuth of lowest MMD (the nearest generated shape of every reference, averaged).
                scored = []
                for k in range(len(angles)):
                    turned = invrender.rotate_voxels(grids, turns[k])
                    scored.append((float(pairwise_voxel_iou_distance(turned, reference, t).min(0).values.mean()), k))
                k = min(scored)[1]
                turned = invrender.rotate_voxels(grids, turns[k])
                m = generation_metrics(pairwise_voxel_iou_distance(turned, reference, t),
                                       pairwise_voxel_iou_distance(turned, turned, t), d_rr)
                m.update(threshold=float(t), azimuth=float(angles[k]))
                if best is None or m["mmd"] < best["mmd"]:
                    best = m
            return best

        out: Dict[str, object] = {"num_shapes": len(reference)}
        if voxels is not None:
            out["shape_best"] = measure(voxels[:n].float(), thresholds)
        out["reference_shape_data"] = measure(self._voxelized(config, "train", n, grid_size), [0.5])
        out["reference_shape_mean_shape"] = measure(mean_shape.expand(len(reference), -1, -1, -1, -1).contiguous(),
                                                    thresholds)
        boxes = random_boxes(len(reference), grid_size, generator=torch.Generator().manual_seed(seed + 5))
        out["reference_shape_boxes"] = measure(boxes, [0.5])
        return out

    @torch.no_grad()
    def samples(self, model, n: int, seed: int, threshold: float):
        """The evaluation's ``n`` samples (drawn in batches of 50 from ``seed``): ``images (n, 1, S, S)`` (the
        variant's render at ``threshold``) and, for the 3D variants, ``voxels (n, 1, N, N, N)`` and their view
        ``rotations (n, 3, 3)`` (None for the 2D DCGAN); on the CPU."""
        g = torch.Generator().manual_seed(seed)
        batches, voxels, rotations = [], [], []
        for start in range(0, n, 50):
            s = model.generate(min(50, n - start), g, threshold=threshold)
            batches.append(s["image"].cpu())
            if "voxels" in s:
                voxels.append(s["voxels"].cpu())
                rotations.append(s["rotation"].cpu())
        if not voxels:
            return torch.cat(batches), None, None
        return torch.cat(batches), torch.cat(voxels), torch.cat(rotations)

    @torch.no_grad()
    def shape_metrics(self, model, config) -> Dict[str, object]:
        """Only the 3D set metrics of :meth:`evaluate` (same samples, same references), for runs evaluated before
        they existed (``tools/iggan_shape_metrics.py``)."""
        ev = config.get("eval") or {}
        thr, seed = float(ev.get("threshold", 0.5)), int(ev.get("seed", 0))
        n = int(ev.get("num_shapes", 100))
        _, voxels, _ = self.samples(model, n, seed, thr)
        thresholds = sorted(set(float(t) for t in ev.get("thresholds", [0.1, 0.3, 0.5])) | {thr})
        mean_shape = self._mean_shape(config, model.config.grid_size)
        return self._shape_metrics(config, model.config.grid_size, voxels, mean_shape, thresholds, seed)

    @torch.no_grad()
    def evaluate(self, model, config, out_dir):
        """FID (:mod:`invrender.fid`: a classifier trained on renders of the synthetic categories, Fréchet
        distance of its pooled features) of ``eval.num_samples`` samples against as many held-out renders of the
        training category (``split="test"``: objects never trained on), the 3D variants' samples rendered by the
        off-the-shelf renderer at ``eval.threshold`` from the data's viewpoint distribution.

        Learning-free references under the same protocol, printed beside the model:

        * ``reference_fid_data``: training renders (the data itself) against the held-out renders, the floor
          any model can reach at this sample size;
        * ``reference_fid_mean_shape``: the mean training shape (its occupancy, binarised at ``eval.threshold``)
          rendered from random views — one fixed shape, the "template" of this protocol;
        * ``reference_fid_boxes``: random boxes (the renderer's pre-training shapes) — shapes of no category.

        3D variants also report ``fid_by_threshold`` at ``eval.thresholds`` (0.1, 0.3, 0.5) and its minimum
        ``fid_best_threshold`` (the baselines' soft grids binarise differently from IG-GAN's); the mean shape
        likewise (``reference_fid_mean_shape_best_threshold``). The best threshold is chosen on the same
        reference renders, a slight optimism shared by the model and the reference.

        FID on this data barely sees variety (the mean training shape scores near the floor), so the 3D variants
        also report set metrics on the grids themselves (:meth:`_shape_metrics`: MMD, coverage and 1-NNA of
        ``1 - IoU`` against held-out objects), with the same references.

        Writes ``samples.png`` (off-the-shelf renders), ``samples_normals.png`` and ``samples.pt`` (the images).
        """
        from invrender import io
        from invrender.fid import fid_score, load_fid_classifier
        from invrender.renderers import render_voxel_surface
        from invrender.synthetic import CATEGORIES

        c = model.config
        ev = config.get("eval") or {}
        n, thr, seed = int(ev.get("num_samples", 500)), float(ev.get("threshold", 0.5)), int(ev.get("seed", 0))
        categories = config["data"].get("categories", ["chair"])
        categories = [categories] if isinstance(categories, str) else list(categories)
        if config["data"].get("kind", "shaded") != "shaded" or any(k not in CATEGORIES for k in categories):
            raise ConfigError(f"{self.variant}: evaluation needs data.kind=shaded (FID against held-out renders)")
        classifier, classifier_info = load_fid_classifier(int(ev.get("fid_image_size", 64)), progress=True)
        held_out = self.shaded(config, "test", regime="unlimited", length=n, seed=seed + 1)
        reference = torch.stack([held_out[i]["image"] for i in range(n)])

        def fid(images):
            return float(fid_score(images.cpu().float().clamp(0, 1), reference=reference, classifier=classifier,
                                   progress=False))

        samples, voxels, rotations_s = self.samples(model, n, seed, thr)
        metrics: Dict[str, object] = {"variant": c.variant, "category": ",".join(categories), "num_samples": n,
                                      "threshold": thr, "fid": fid(samples)}
        grid_thresholds = sorted(set(float(t) for t in ev.get("thresholds", [0.1, 0.3, 0.5])) | {thr})

        def by_threshold(grids, rotations):
            """FID of the grids' off-the-shelf renders at each of eval.thresholds (the grids' own scale of
            occupancy differs by model: the visual hull's and the ray marcher's are soft)."""
            out = {}
            for t in grid_thresholds:
                images = torch.cat([render_voxel_surface(grids[i:i + 50], rotations[i:i + 50], t, c.image_size,
                                                         c.extent)[0] for i in range(0, len(grids), 50)])
                out[f"{t:g}"] = fid(images)
            return out

        if voxels is not None:
            metrics["fid_by_threshold"] = by_threshold(voxels, rotations_s)
            metrics["fid_best_threshold"] = min(metrics["fid_by_threshold"].values())
        data_views = self.shaded(config, "train", regime="unlimited", length=n, seed=seed + 2)
        metrics["reference_fid_data"] = fid(torch.stack([data_views[i]["image"] for i in range(n)]))
        rot_g = torch.Generator().manual_seed(seed + 3)
        mean_shape = self._mean_shape(config, c.grid_size)
        rotations = model.sample_rotations(n, rot_g).cpu()
        mean_fids = by_threshold(mean_shape.expand(n, -1, -1, -1, -1), rotations)
        metrics["reference_fid_mean_shape"] = mean_fids[f"{thr:g}"]
        metrics["reference_fid_mean_shape_best_threshold"] = min(mean_fids.values())
        boxes = random_boxes(n, c.grid_size, generator=torch.Generator().manual_seed(seed + 4))
        metrics["reference_fid_boxes"] = fid(render_voxel_surface(boxes, rotations, thr, c.image_size, c.extent)[0])
        normals = []
        if voxels is not None:
            normals.append(render_voxel_surface(voxels[:32], rotations_s[:32], thr, c.image_size, c.extent,
                                                normals=True)[0])
        metrics["classifier_test_accuracy"] = classifier_info.get("test_accuracy")
        metrics.update(self._shape_metrics(config, c.grid_size, voxels, mean_shape, grid_thresholds, seed))
        os.makedirs(out_dir, exist_ok=True)
        io.save_image(os.path.join(out_dir, "samples.png"), io.image_grid(samples[:64], nrow=8))
        if normals:
            io.save_image(os.path.join(out_dir, "samples_normals.png"), io.image_grid(normals[0][:32], nrow=8))
        torch.save(samples, os.path.join(out_dir, "samples.pt"))
        print(f"FID {metrics['fid']:.1f}  (references: data {metrics['reference_fid_data']:.1f}, mean shape "
              f"{metrics['reference_fid_mean_shape']:.1f}, random boxes {metrics['reference_fid_boxes']:.1f})")
        return metrics


def _register():
    from invrender.training import register_task

    for name, variant in TASKS.items():
        register_task(name, lambda v=variant: IgganTask(v))


_register()
