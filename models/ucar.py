"""Probabilistic 3D voxel autoencoders of Ucar et al. 2019, "Inverse graphics with 3D voxel autoencoders".

The model reads as the paper does (section 3, Figure 2, Table 1):

* a 2D convolutional :class:`Encoder` maps a 28x28 image to the mean ``mu`` and log-variance ``logvar``
  of the shape latent ``Z_S`` (amortised inference, section 3.1);
* a 3D deconvolutional :class:`Decoder` maps a sample ``z`` to a 28^3 occupancy grid in [0, 1]
  (section 3.1);
* the azimuth ``theta`` is constant (0), uniform random noise in [-pi, pi], or the output of a second
  generative model, :class:`AzimuthLatent`, whose per-example Gaussian parameters ``mu_theta`` and
  ``sigma_theta`` are free variables, not functions of the image (section 3.2, eq. 1);
* the grid is turned by ``theta`` and projected with the visual hull of eq. 2,
  ``P(i, j) = 1 - exp(-sum_k V_theta(i, j, k))``, by :func:`invrender.project_voxels` (this module
  renders nothing itself);
* an optional two-layer :class:`Texturizer` maps the projection to the final image (section 3);
* the objective is one of Table 1: VAE, beta-VAE, AAE (with a :class:`LatentDiscriminator`) or mu-VAE.

Facts taken from the authors' released code (pilatracu/uVAE:code/uvae.py) where the paper is silent are
marked "(code)" in the comments; choices of this implementation that neither source fixes are marked
"(ours)".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import invrender

__all__ = [
    "AzimuthLatent",
    "Decoder",
    "Encoder",
    "LatentDiscriminator",
    "Texturizer",
    "UcarConfig",
    "UcarModel",
    "aae_losses",
    "clip_gradients",
    "kl_divergence",
    "mu_vae_latent_loss",
    "reconstruction_loss",
]

OBJECTIVES = ("vae", "beta_vae", "aae", "mu_vae")
AZIMUTH_MODES = ("constant", "random", "latent")
PROJECTIONS = ("trilinear", "nearest")


# ------------------------------------------------------------------------------------------------
# Configuration


@dataclass
class UcarConfig:
    """Hyperparameters; the defaults are the paper's (or, where it is silent, its released code's).

    Projection and ``tau``: the decoder ends in ``sigmoid(.) / tau`` and the projection computes
    ``1 - exp(-tau * sum_k .)`` (code: ``sigmoid(h) * (1/tau)`` then PrGAN's ``project(v, tau)``,
    tau = 0.5). The two factors cancel, so the rendered image is exactly the paper's eq. 2,
    ``1 - exp(-sum_k V)``, with ``V = sigmoid(h)`` the occupancy in [0, 1] that :meth:`UcarModel.forward`
    returns as ``voxels``; the model calls ``invrender.project_voxels(voxels / tau, R, mode, tau=tau)``.

    Projection mode: the paper resamples the turned grid with nearest-neighbour (floor) sampling
    (section 3.2); the released code samples trilinearly. Only ``"trilinear"`` passes a gradient to
    the rotation, hence to the azimuth: with ``"nearest"`` the azimuth latent receives no gradient
    from the image loss and cannot be learned (it is moved only by its latent loss).
    """

    # Section 3.3: images resized to 28x28; the voxel grid has the image's resolution (28^3, section 3.1).
    image_size: int = 28
    # Shape latent Z_S: 19 dimensions (code: z_size = 20, of which the last is the azimuth).
    latent_dim: int = 19
    # Table 1 objective: "vae", "beta_vae", "aae" or "mu_vae" (the final model, section 4.4).
    objective: str = "mu_vae"
    # Section 3.4: "For the beta-VAE, we used beta = 30".
    beta: float = 30.0
    # Table 1, AAE: weight lambda of the adversarial term (the paper gives no value; ours: 1).
    aae_weight: float = 1.0
    # Section 3.2: azimuth "constant" (0), "random" (uniform in [-pi, pi]) or "latent" (final model).
    azimuth: str = "latent"
    # Dimension of the azimuth latent Z_theta (ours: 1; code: 12 free variables per batch slot).
    azimuth_latent_dim: int = 1
    # Hidden width of the azimuth network (section 3.2: two layers with tanh; code: dense(10, tanh)).
    azimuth_hidden: int = 10
    # Number of training examples: one free (mu_theta, logvar_theta) pair per example (section 3: the
    # azimuth parameters are not amortised). Set it to len(dataset); 60000 is MNIST's training set.
    dataset_size: int = 60000
    # Resampling of the turned grid; see the class docstring. Default "trilinear" (code) because it is
    # the only mode whose gradient reaches the azimuth; "nearest" is the paper's floor sampling.
    projection: str = "trilinear"
    # Decoder sigmoid / tau and projection tau (code: tau = 0.5); they cancel, see the class docstring.
    tau: float = 0.5
    # Section 3: optional texturizer, used by the final model.
    texturizer: bool = True
    # Initial bias of the decoder's last layer (code: 0). With 0 every voxel starts at occupancy 0.5 and the
    # projection saturates at 1 - exp(-R/2) ~ 1, where its gradient is ~exp(-14): the image loss then falls
    # first through the texturizer and the occupancy learns slowly. A negative value (e.g. -4: 28 x 0.018,
    # projection ~ 0.4) starts unsaturated (ours; optional).
    occupancy_bias: float = 0.0
    # Texturizer hidden width (code: dense(1000, leaky_relu)).
    texturizer_hidden: int = 1000
    # Encoder / decoder width (code: d_size = 128 channels; decoder 7^3 x 128 -> 14^3 x 64 -> 28^3 x 1).
    channels: int = 128
    # Slope of the Leaky ReLUs (code: TensorFlow's lrelu, 0.2).
    negative_slope: float = 0.2
    # Norm clipping of the encoder outputs (code): ||mu|| <= 6 sqrt(20), ||logvar|| <= sqrt(20).
    mu_clip: float = 6.0 * math.sqrt(20.0)
    logvar_clip: float = math.sqrt(20.0)
    # AAE discriminator hidden width (ours: the paper does not describe it).
    discriminator_hidden: int = 512
    # Section 3.4: Adam with beta1 = 0.9, beta2 = 0.999; learning rate 1e-3 (code) for every optimizer.
    lr: float = 1e-3
    betas: Tuple[float, float] = (0.9, 0.999)
    # Code: each gradient clipped to norm 1 (tf.clip_by_norm per variable) before the main step.
    grad_clip: float = 1.0
    # Code: batches of 64 images.
    batch_size: int = 64

    def __post_init__(self):
        def positive_int(name):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"UcarConfig.{name} must be a positive int, got {value!r}")

        def positive_float(name, allow_zero=False):
            value = getattr(self, name)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or value < 0 or (value == 0 and not allow_zero):
                raise ValueError(f"UcarConfig.{name} must be a {'non-negative' if allow_zero else 'positive'} "
                                 f"finite number, got {value!r}")

        for name in ("image_size", "latent_dim", "azimuth_latent_dim", "azimuth_hidden", "dataset_size",
                     "texturizer_hidden", "channels", "discriminator_hidden", "batch_size"):
            positive_int(name)
        for name in ("tau", "lr", "mu_clip", "logvar_clip", "grad_clip"):
            positive_float(name)
        for name in ("beta", "aae_weight", "negative_slope"):
            positive_float(name, allow_zero=True)
        if isinstance(self.occupancy_bias, bool) or not isinstance(self.occupancy_bias, (int, float)) \
                or not math.isfinite(self.occupancy_bias):
            raise ValueError(f"UcarConfig.occupancy_bias must be a finite number, got {self.occupancy_bias!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"UcarConfig.objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.azimuth not in AZIMUTH_MODES:
            raise ValueError(f"UcarConfig.azimuth must be one of {AZIMUTH_MODES}, got {self.azimuth!r}")
        if self.projection not in PROJECTIONS:
            raise ValueError(f"UcarConfig.projection must be one of {PROJECTIONS}, got {self.projection!r}")
        if not isinstance(self.texturizer, bool):
            raise ValueError(f"UcarConfig.texturizer must be a bool, got {self.texturizer!r}")
        betas = tuple(self.betas) if isinstance(self.betas, (tuple, list)) else None
        if betas is None or len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
            raise ValueError(f"UcarConfig.betas must be two numbers in [0, 1), got {self.betas!r}")
        self.betas = (float(betas[0]), float(betas[1]))
        decoder_plan(self.image_size)  # raises ValueError naming image_size


def decoder_plan(image_size: int) -> Tuple[int, int]:
    """``(base, stages)`` with ``image_size = base * 2**stages``, base in [4, 7] and stages >= 1.

    28 -> (7, 2) as in the paper (7^3 -> 14^3 -> 28^3); 32 -> (4, 3); 64 -> (4, 4).
    """
    size, stages = image_size, 0
    while size > 7 and size % 2 == 0:
        size //= 2
        stages += 1
    if stages == 0 or not 4 <= size <= 7:
        raise ValueError(f"UcarConfig.image_size must be b * 2^n with b in 4..7 and n >= 1 (28, 32, 64, ...), "
                         f"got {image_size}")
    return size, stages


# ------------------------------------------------------------------------------------------------
# Losses (Table 1, eq. 3)


def reconstruction_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """``||X - X'||^2`` of eq. 3: squared error summed over each image, averaged over the batch (code)."""
    if prediction.shape != target.shape:
        raise ValueError(f"reconstruction_loss: prediction {tuple(prediction.shape)} and target "
                         f"{tuple(target.shape)} differ in shape")
    return (prediction - target).pow(2).flatten(1).sum(1).mean()


def kl_divergence(mu: Tensor, logvar: Tensor) -> Tensor:
    """``KL(N(mu, exp(logvar)) || N(0, I))`` summed over latent dimensions, averaged over the batch."""
    return (-0.5 * (1.0 + logvar - mu.pow(2) - logvar.exp()).sum(1)).mean()


def mu_vae_latent_loss(mu: Tensor, logvar: Tensor) -> Tensor:
    """The mu-VAE latent term of Table 1: ``|mean_b sum_d mu| + |mean_b sum_d logvar|``.

    A moment matching of the aggregate posterior: the batch mean of the summed means and of the summed
    log-variances is pushed to the prior's (0), while single samples may spread out. Table 1 writes the
    two sums without absolute values; the released code takes them (a signed sum could be driven to
    -infinity), and so do we.
    """
    return mu.sum(1).mean().abs() + logvar.sum(1).mean().abs()


def aae_losses(discriminator: nn.Module, z: Tensor, prior_z: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """Adversarial terms of the AAE (Table 1; Makhzani et al.): ``(generator, discriminator)``.

    The discriminator tells samples of the prior ``p(z) = N(0, I)`` (label 1) from the encoder's samples of
    the aggregated posterior ``q(z)`` (label 0); the encoder, as generator, is trained to have its samples
    labelled 1. This replaces ``KL(q(z) || p(z))``. The discriminator term sees ``z`` detached, so it only
    trains the discriminator; the generator term trains the encoder (the discriminator's parameters receive
    gradients from it too: step only the encoder's optimizer with it).
    """
    if prior_z is None:
        prior_z = torch.randn_like(z)
    fake = discriminator(z)
    generator = F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))
    real = discriminator(prior_z)
    fake_detached = discriminator(z.detach())
    disc = (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
            + F.binary_cross_entropy_with_logits(fake_detached, torch.zeros_like(fake_detached)))
    return generator, disc


def clip_gradients(parameters, max_norm: float) -> None:
    """Clip each parameter's gradient to norm ``max_norm`` separately (code: tf.clip_by_norm per variable)."""
    for p in parameters:
        if p.grad is not None:
            norm = p.grad.norm()
            if norm > max_norm:
                p.grad.mul_(max_norm / norm)


def _clip_rows(x: Tensor, max_norm: float) -> Tensor:
    """Scale each row of ``x`` down to norm ``max_norm`` (tf.clip_by_norm(x, c, axes=1))."""
    norm = x.norm(dim=1, keepdim=True)
    return x * torch.clamp(max_norm / norm.clamp_min(1e-12), max=1.0)


# ------------------------------------------------------------------------------------------------
# Networks (section 3.1, 3.2)


class Encoder(nn.Module):
    """2D CNN: 4 x (conv 3x3 stride 2, batchnorm, Leaky ReLU) then linear ``mu`` and ``logvar`` (section 3.1).

    28x28 -> 14 -> 7 -> 4 -> 2 with 128 channels (code), flattened, then two linear heads whose outputs are
    norm-clipped per example (code): ``||mu|| <= 6 sqrt(20)``, ``||logvar|| <= sqrt(20)``.
    """

    def __init__(self, config: UcarConfig):
        super().__init__()
        c, layers, size = config.channels, [], config.image_size
        in_channels = 1
        for _ in range(4):
            layers += [nn.Conv2d(in_channels, c, 3, stride=2, padding=1), nn.BatchNorm2d(c, eps=1e-5, momentum=0.1),
                       nn.LeakyReLU(config.negative_slope)]
            in_channels, size = c, (size + 1) // 2
        self.features = nn.Sequential(*layers)
        self.mu = nn.Linear(c * size * size, config.latent_dim)
        self.logvar = nn.Linear(c * size * size, config.latent_dim)
        self.mu_clip, self.logvar_clip = config.mu_clip, config.logvar_clip

    def forward(self, images: Tensor) -> Tuple[Tensor, Tensor]:
        h = self.features(images).flatten(1)
        return _clip_rows(self.mu(h), self.mu_clip), _clip_rows(self.logvar(h), self.logvar_clip)


class Decoder(nn.Module):
    """3D DeCNN: linear -> base^3 x 128, then stride-2 3x3x3 transposed convolutions to R^3 x 1 (section 3.1).

    For R = 28: 7^3 x 128 -> 14^3 x 64 -> 28^3 x 1 (code). Batchnorm and Leaky ReLU after every layer but the
    last, which ends in a sigmoid: the output is the occupancy ``V`` in [0, 1], (B, 1, R, R, R).
    """

    def __init__(self, config: UcarConfig):
        super().__init__()
        base, stages = decoder_plan(config.image_size)
        c = config.channels
        self.base, self.channels = base, c
        self.linear = nn.Linear(config.latent_dim, base ** 3 * c)
        self.linear_norm = nn.BatchNorm3d(c, eps=1e-5, momentum=0.1)
        layers: List[nn.Module] = []
        for i in range(stages):
            last = i == stages - 1
            out = 1 if last else max(c // 2, 8)
            layers.append(nn.ConvTranspose3d(c, out, 3, stride=2, padding=1, output_padding=1))
            if not last:
                layers += [nn.BatchNorm3d(out, eps=1e-5, momentum=0.1), nn.LeakyReLU(config.negative_slope)]
            c = out
        self.deconvs = nn.Sequential(*layers)
        nn.init.constant_(layers[-1].bias, config.occupancy_bias)
        self.negative_slope = config.negative_slope

    def forward(self, z: Tensor) -> Tensor:
        h = self.linear(z).view(z.shape[0], self.channels, self.base, self.base, self.base)
        h = F.leaky_relu(self.linear_norm(h), self.negative_slope)
        return torch.sigmoid(self.deconvs(h))


class Texturizer(nn.Module):
    """Two dense layers on the flattened projection: R^2 -> 1000 (Leaky ReLU) -> R^2 (sigmoid) (section 3, code)."""

    def __init__(self, config: UcarConfig):
        super().__init__()
        n = config.image_size ** 2
        self.hidden = nn.Linear(n, config.texturizer_hidden)
        self.out = nn.Linear(config.texturizer_hidden, n)
        self.negative_slope = config.negative_slope

    def forward(self, projection: Tensor) -> Tensor:
        h = F.leaky_relu(self.hidden(projection.flatten(1)), self.negative_slope)
        return torch.sigmoid(self.out(h)).view_as(projection)


class AzimuthLatent(nn.Module):
    """The azimuth's generative model (section 3.2, eq. 1): free latent parameters -> two tanh layers -> theta.

    Each training example ``i`` owns free variational parameters ``mean[i]`` (``mu_theta``) and
    ``logvar[i]`` (``log sigma_theta^2``; the notes' "log-scale": the code samples
    ``mean + eps * exp(0.5 * logvar)``), shapes ``(dataset_size, azimuth_latent_dim)``, initialised to 0
    (code). They are not amortised: no encoder predicts them (section 3). A reparameterised sample
    ``z_theta`` goes through ``Linear(., 10) tanh -> Linear(10, 1) tanh`` to ``s`` in [-1, 1], and
    ``theta = pi * s`` in [-pi, pi] as the paper says ("scaled to [-pi, pi]"). The released code uses
    ``(s + 1) * pi`` in [0, 2 pi]: the same rotations, shifted by pi (s = 0 faces the canonical view here).
    """

    def __init__(self, config: UcarConfig):
        super().__init__()
        shape = (config.dataset_size, config.azimuth_latent_dim)
        self.mean = nn.Parameter(torch.zeros(shape))
        self.logvar = nn.Parameter(torch.zeros(shape))
        self.hidden = nn.Linear(config.azimuth_latent_dim, config.azimuth_hidden)
        self.out = nn.Linear(config.azimuth_hidden, 1)
        for layer in (self.hidden, self.out):  # code: Xavier initialisation
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def latent_parameters(self) -> List[nn.Parameter]:
        """The free variational parameters (``mu_theta``, ``log sigma_theta^2``), for their own optimizer."""
        return [self.mean, self.logvar]

    def forward(self, index: Tensor, sample: bool = True) -> Tuple[Tensor, Tensor, Tensor]:
        """``(theta (B,), mean (B, d), logvar (B, d))`` for examples ``index`` (B,) int64.

        ``sample=False`` uses the mean instead of a sample (evaluation).
        """
        if not isinstance(index, Tensor) or index.dtype != torch.long or index.dim() != 1:
            raise ValueError("AzimuthLatent: index must be a 1-D int64 tensor of example indices")
        n = self.mean.shape[0]
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= n):
            raise ValueError(f"AzimuthLatent: index must lie in [0, dataset_size = {n}), "
                             f"got values in [{int(index.min())}, {int(index.max())}]")
        index = index.to(self.mean.device)
        mean, logvar = self.mean[index], self.logvar[index]
        z = mean + torch.randn_like(mean) * torch.exp(0.5 * logvar) if sample else mean
        s = torch.tanh(self.out(torch.tanh(self.hidden(z))))
        return math.pi * s.squeeze(1), mean, logvar


class LatentDiscriminator(nn.Module):
    """AAE discriminator on the shape latent (section 3, Figure 2): logits of "sample of the prior".

    The paper does not describe it; ours is an MLP ``latent_dim -> 512 -> 512 -> 1`` with Leaky ReLUs.
    """

    def __init__(self, config: UcarConfig):
        super().__init__()
        h = config.discriminator_hidden
        self.net = nn.Sequential(nn.Linear(config.latent_dim, h), nn.LeakyReLU(config.negative_slope),
                                 nn.Linear(h, h), nn.LeakyReLU(config.negative_slope), nn.Linear(h, 1))

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).squeeze(1)


# ------------------------------------------------------------------------------------------------
# The model


class UcarModel(nn.Module):
    """Probabilistic 3D autoencoder of Ucar et al. 2019 (Figure 2) with the objective of ``config.objective``.

    Training follows section 3.4 and the code: per iteration, first the azimuth latent parameters are
    updated with their own Adam while the VAE is frozen, then the VAE (encoder, decoder, texturizer, azimuth
    network) with gradients clipped to norm 1, then (AAE) the discriminator. :meth:`train_step` does that.
    """

    def __init__(self, config: Optional[UcarConfig] = None):
        super().__init__()
        self.config = config = config if config is not None else UcarConfig()
        if not isinstance(config, UcarConfig):
            raise TypeError(f"UcarModel: config must be a UcarConfig, got {type(config).__name__}")
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.texturizer = Texturizer(config) if config.texturizer else None
        self.azimuth_latent = AzimuthLatent(config) if config.azimuth == "latent" else None
        self.discriminator = LatentDiscriminator(config) if config.objective == "aae" else None

    # -- forward ---------------------------------------------------------------------------------

    def azimuth(self, batch: int, index: Optional[Tensor], reference: Tensor) -> Dict[str, Tensor]:
        """Azimuth per section 3.2: constant 0, uniform in [-pi, pi], or from the azimuth latent."""
        mode = self.config.azimuth
        if mode == "constant":
            return {"azimuth": reference.new_zeros(batch)}
        if mode == "random":
            return {"azimuth": (torch.rand(batch, dtype=reference.dtype, device=reference.device) * 2 - 1) * math.pi}
        if index is None:
            raise ValueError("UcarModel.forward: index (B,) int64 is required with azimuth='latent'")
        if index.shape != (batch,):
            raise ValueError(f"UcarModel.forward: index must have shape ({batch},), got {tuple(index.shape)}")
        theta, mean, logvar = self.azimuth_latent(index, sample=self.training)
        return {"azimuth": theta.to(reference.dtype), "azimuth_mu": mean, "azimuth_logvar": logvar}

    def forward(self, images: Tensor, index: Optional[Tensor] = None) -> Dict[str, Tensor]:
        """Encode, sample, decode, turn and project.

        Args:
            images: (B, 1, R, R) images in [0, 1], R = ``config.image_size``.
            index: (B,) int64 dataset indices of the images; required when ``config.azimuth == "latent"``.

        Returns a dict: ``voxels`` (B, 1, R, R, R) occupancy in [0, 1]; ``projection`` (B, 1, R, R), eq. 2;
        ``texture`` (B, 1, R, R) texturizer output (``projection`` itself when the texturizer is off);
        ``mu``, ``logvar``, ``z`` (B, latent_dim); ``azimuth`` (B,) radians; with the azimuth latent also
        ``azimuth_mu`` and ``azimuth_logvar`` (B, azimuth_latent_dim). In training mode ``z`` (and the
        azimuth latent) are samples; in evaluation mode the means.
        """
        r = self.config.image_size
        if not isinstance(images, Tensor) or images.dim() != 4 or tuple(images.shape[1:]) != (1, r, r):
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"UcarModel.forward: images must be (B, 1, {r}, {r}), got {shape}")
        mu, logvar = self.encoder(images)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        voxels = self.decoder(z)
        out = {"voxels": voxels, "mu": mu, "logvar": logvar, "z": z}
        out.update(self.azimuth(images.shape[0], index, images))
        rotation = invrender.rotation_matrix(out["azimuth"])  # (B, 3, 3), elevation 0 (section 3.2)
        # Decoder output sigmoid / tau, projected with tau (code): eq. 2 on the occupancy; see UcarConfig.
        tau = self.config.tau
        out["projection"] = invrender.project_voxels(voxels / tau, rotation, mode=self.config.projection, tau=tau)
        out["texture"] = self.texturizer(out["projection"]) if self.texturizer is not None else out["projection"]
        return out

    # -- losses ----------------------------------------------------------------------------------

    def losses(self, batch_out: Dict[str, Tensor], images: Tensor) -> Dict[str, Tensor]:
        """Named terms of the Table 1 objective (as losses to minimise) and their ``total``.

        ``reconstruction`` is eq. 3: ``projection_loss`` (+ ``texture_loss`` with the texturizer).
        ``kl_divergence`` is always reported; it enters the total for "vae" (weight 1) and "beta_vae"
        (weight beta). "mu_vae" adds ``mu_vae_latent`` (and "aae" ``aae_weight * generator``). With the
        azimuth latent, ``azimuth_latent`` regularises ``mu_theta, log sigma_theta^2``: the mu-VAE term of
        Table 1 for "mu_vae"; for the other objectives, whose Table 1 rows have no azimuth latent, the KL
        to N(0, 1) (ours). ``discriminator`` (AAE) is reported but not in ``total``: it trains only the
        discriminator.
        """
        cfg = self.config
        terms: Dict[str, Tensor] = {}
        terms["projection_loss"] = reconstruction_loss(batch_out["projection"], images)
        terms["reconstruction"] = terms["projection_loss"]
        if self.texturizer is not None:
            terms["texture_loss"] = reconstruction_loss(batch_out["texture"], images)
            terms["reconstruction"] = terms["reconstruction"] + terms["texture_loss"]
        mu, logvar = batch_out["mu"], batch_out["logvar"]
        terms["kl_divergence"] = kl_divergence(mu, logvar)
        total = terms["reconstruction"]
        if cfg.objective == "vae":
            total = total + terms["kl_divergence"]
        elif cfg.objective == "beta_vae":
            total = total + cfg.beta * terms["kl_divergence"]
        elif cfg.objective == "mu_vae":
            terms["mu_vae_latent"] = mu_vae_latent_loss(mu, logvar)
            total = total + terms["mu_vae_latent"]
        else:  # aae
            terms["generator"], terms["discriminator"] = aae_losses(self.discriminator, batch_out["z"])
            total = total + cfg.aae_weight * terms["generator"]
        if "azimuth_mu" in batch_out:
            a_mu, a_logvar = batch_out["azimuth_mu"], batch_out["azimuth_logvar"]
            if cfg.objective == "mu_vae":
                terms["azimuth_latent"] = mu_vae_latent_loss(a_mu, a_logvar)
            else:
                terms["azimuth_latent"] = kl_divergence(a_mu, a_logvar)
            total = total + terms["azimuth_latent"]
        terms["total"] = total
        return terms

    # -- optimisation ----------------------------------------------------------------------------

    def parameter_groups(self) -> Dict[str, List[nn.Parameter]]:
        """Parameters by optimizer: ``main`` (encoder, decoder, texturizer, azimuth network), ``azimuth``
        (the free ``mu_theta``, ``log sigma_theta^2``; empty unless ``azimuth == "latent"``) and
        ``discriminator`` (empty unless AAE). Every parameter is in exactly one group."""
        azimuth = self.azimuth_latent.latent_parameters() if self.azimuth_latent is not None else []
        discriminator = list(self.discriminator.parameters()) if self.discriminator is not None else []
        special = {id(p) for p in azimuth + discriminator}
        main = [p for p in self.parameters() if id(p) not in special]
        return {"main": main, "azimuth": azimuth, "discriminator": discriminator}

    def configure_optimizers(self) -> Dict[str, torch.optim.Optimizer]:
        """One Adam per non-empty parameter group (section 3.4: lr 1e-3, betas (0.9, 0.999))."""
        cfg = self.config
        return {name: torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas)
                for name, params in self.parameter_groups().items() if params}

    def train_step(self, images: Tensor, index: Optional[Tensor], optimizers: Dict[str, torch.optim.Optimizer]
                   ) -> Dict[str, Tensor]:
        """One iteration of section 3.4; returns the detached loss terms of the main step.

        1. azimuth latent (if any): its own Adam on ``total`` with the VAE frozen;
        2. main: ``total`` backpropagated, each gradient clipped to norm ``grad_clip`` (code), Adam step;
        3. AAE: the discriminator's Adam on ``discriminator``.

        With the azimuth latent the model runs forward twice per step in training mode, so batchnorm running
        statistics are updated twice (as in the code, which runs both updates with ``train_flag=True``).
        """
        groups = self.parameter_groups()
        if groups["azimuth"]:
            out = self(images, index)
            total = self.losses(out, images)["total"]
            grads = torch.autograd.grad(total, groups["azimuth"])
            for p, g in zip(groups["azimuth"], grads):
                p.grad = g
            optimizers["azimuth"].step()
            optimizers["azimuth"].zero_grad(set_to_none=True)
        out = self(images, index)
        terms = self.losses(out, images)
        optimizers["main"].zero_grad(set_to_none=True)
        main_grads = torch.autograd.grad(terms["total"], groups["main"], allow_unused=True)
        for p, g in zip(groups["main"], main_grads):
            p.grad = g
        clip_gradients(groups["main"], self.config.grad_clip)
        optimizers["main"].step()
        if groups["discriminator"]:
            optimizers["discriminator"].zero_grad(set_to_none=True)
            z = out["z"].detach()
            _, disc = aae_losses(self.discriminator, z)
            disc.backward()
            optimizers["discriminator"].step()
        return {k: v.detach() for k, v in terms.items()}


# ------------------------------------------------------------------------------------------------
# Training task (``invrender train ucar --config configs/ucar_synthetic.yaml``)


class UcarTask:
    """Trains :class:`UcarModel` with :class:`invrender.training.Trainer`.

    Config (defaults in :meth:`default_config`): ``model`` holds :class:`UcarConfig` fields
    (``dataset_size`` is set from the data); ``data.root`` is a ShapeNet-NMR-layout folder (default:
    the embedded synthetic dataset, generated on first use), ``data.categories`` the categories,
    ``data.image_size`` the view size (28, the paper's). Single-process only for now: the paper's
    per-example azimuth optimizer steps inside :meth:`UcarModel.train_step`, outside DDP's
    gradient synchronisation.
    """

    def default_config(self):
        return {
            "model": {"objective": "mu_vae", "azimuth": "latent", "projection": "trilinear", "texturizer": True,
                      "occupancy_bias": -4.0},
            "data": {"root": None, "categories": ["car"], "image_size": 28,
                     "synthetic": {"objects_per_category": 40, "views": 24, "image_size": 64}},
            "batch_size": 64, "steps": 1000, "vis_every": 250, "ckpt_every": 250, "log_every": 20,
        }

    def _root(self, config):
        from invrender import synthetic

        data = config["data"]
        if data.get("root"):
            return data["root"]
        kw = dict(data.get("synthetic") or {})
        return synthetic.default_dataset(progress=False, **kw)

    def dataset(self, config, split):
        from invrender.data import GrayscaleViews, ShapeNetNMR

        data = config["data"]
        base = ShapeNetNMR(self._root(config), categories=data.get("categories"), split=split)
        return GrayscaleViews(base, image_size=int(data.get("image_size", 28)))

    def build(self, config, device):
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            raise NotImplementedError("ucar: training runs in one process (the azimuth optimizer steps outside "
                                      "DDP's gradient synchronisation); launch without torchrun")
        fields = dict(config.get("model") or {})
        fields["image_size"] = int(config["data"].get("image_size", 28))
        fields["dataset_size"] = len(self.dataset(config, "train"))
        if "betas" in fields:
            fields["betas"] = tuple(fields["betas"])
        model = UcarModel(UcarConfig(**fields)).to(device)
        return model, model.configure_optimizers()

    def train_step(self, model, batch, optimizers, step):
        from invrender.training import unwrap

        return unwrap(model).train_step(batch["image"], batch["index"], optimizers)

    def visualize(self, model, batch, out_dir, step):
        """Inputs, the constant-view projection of the decoded shape, and a turntable of the learned
        3D shape (azimuths sweeping [-pi, pi]) for the first input; the decoded voxels of the first
        input exported as a marching-cubes OBJ."""
        import os

        from invrender import io

        images = batch["image"]
        mu, _ = model.encoder(images)
        voxels = model.decoder(mu)
        tau = model.config.tau
        n = images.shape[0]
        front = invrender.project_voxels(voxels / tau, invrender.rotation_matrix(torch.zeros(n, device=images.device)),
                                         mode=model.config.projection, tau=tau)
        az = torch.linspace(-math.pi, math.pi, 9, device=images.device)[:-1]
        turn = invrender.project_voxels(voxels[:1].expand(8, -1, -1, -1, -1) / tau, invrender.rotation_matrix(az),
                                        mode=model.config.projection, tau=tau)
        mesh = io.marching_cubes(voxels[:1, 0].detach().cpu().float(), level=0.5)[0]
        if mesh[1].shape[0] > 0:
            io.save_mesh(os.path.join(out_dir, "shape0.obj"), *mesh)
        return {"inputs": images, "projections": front, "turntable": turn}

    @torch.no_grad()
    def evaluate(self, model, config, out_dir):
        """Mean squared reconstruction error of the front projection on the test split, and the voxel
        IoU against the ground-truth grids (first 64 test views) after the best of 24 azimuths, at the
        best of a few global occupancy thresholds."""
        from invrender import metrics
        from invrender.data import GrayscaleViews, ShapeNetNMR

        data = config["data"]
        base = ShapeNetNMR(self._root(config), categories=data.get("categories"), split="test", load_voxels=True)
        views = GrayscaleViews(base, image_size=model.config.image_size)
        device = next(model.parameters()).device
        loader = torch.utils.data.DataLoader(views, batch_size=64)
        mse, ious, count = 0.0, [], 0
        for k, batch in enumerate(loader):
            images = batch["image"].to(device)
            mu, _ = model.encoder(images)
            voxels = model.decoder(mu)
            tau = model.config.tau
            front = invrender.project_voxels(voxels / tau, invrender.rotation_matrix(torch.zeros(len(images), device=device)),
                                             mode=model.config.projection, tau=tau)
            mse += float(((front - images) ** 2).mean(dim=(1, 2, 3)).sum())
            count += len(images)
            if k == 0:  # voxel IoU on the first batch: GT resampled to the model's grid, best azimuth
                gt = torch.stack([base[i]["voxels"] for i in range(len(images))]).float().to(device)[:, None]
                # GT grids span the object's [-0.5, 0.5]^3; the model's grid spans the image's [-1, 1]
                # (a 28x28 view), where the camera (focal 3.732 at distance 2.732) shows the object
                # magnified by about 3.732 / 2.732: resample GT into the model's frame.
                from invrender.synthetic import DISTANCE, FOCAL

                scale = 2.0 * DISTANCE / FOCAL
                theta = torch.zeros(len(images), 3, 4, device=device)
                theta[:, 0, 0] = theta[:, 1, 1] = theta[:, 2, 2] = scale
                grid = torch.nn.functional.affine_grid(theta, list(voxels.shape), align_corners=False)
                gt = torch.nn.functional.grid_sample(gt, grid, mode="bilinear", padding_mode="zeros",
                                                     align_corners=False) > 0.5
                # The visual hull fixes only sum-along-depth, so occupancies are often well below 0.5:
                # like IG-GAN's binarisation, one global threshold (the best of a few) for the run.
                thresholds = (0.05, 0.1, 0.2, 0.3, 0.5)
                best = torch.zeros(len(thresholds), len(images), device=device)
                for a in torch.linspace(0, 2 * math.pi, 25)[:-1]:
                    rot = invrender.rotate_voxels(voxels, invrender.rotation_matrix(a.expand(len(images)).to(device)))
                    for t, th in enumerate(thresholds):
                        best[t] = torch.maximum(best[t], metrics.voxel_iou(rot[:, 0], gt[:, 0].float(), threshold=th))
                ious = best[best.mean(1).argmax()].tolist()
        return {"test_projection_mse": mse / max(count, 1), "test_voxel_iou_best_azimuth": sum(ious) / max(len(ious), 1),
                "test_views": count}


def _register():
    from invrender.training import register_task

    register_task("ucar", UcarTask)


_register()
