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

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import invrender
from invrender.errors import ConfigError

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
AZIMUTH_MODES = ("constant", "random", "latent", "encoder")
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
    # Section 3.2: azimuth "constant" (0), "random" (uniform in [-pi, pi]) or "latent" (final model);
    # "encoder" (AAE only, section 4.2): one more encoder output, held to a uniform prior on [-1, 1]
    # by the discriminator and scaled to [-pi, pi].
    azimuth: str = "latent"
    # Dimension of the azimuth latent Z_theta (ours: 1; code: 12 free variables per batch slot).
    azimuth_latent_dim: int = 1
    # Hidden width of the azimuth network (section 3.2: two layers with tanh; code: dense(10, tanh)).
    azimuth_hidden: int = 10
    # Learning rate of the azimuth latent's own optimizer (None: ``lr``, the paper's). Each example's
    # (mu_theta, sigma_theta) moves only when its image is in the batch, about once per epoch, so short
    # trainings on small datasets may raise it (ours; the demo does).
    azimuth_lr: Optional[float] = None
    # Initial log-variance of the azimuth latent (code: 0). With 0 every sample of theta carries noise of
    # about one radian, and the main optimizer answers it by flattening the azimuth network until theta is
    # the same for every image (observed on the synthetic cars: the latent model then is the constant one).
    # A small value (e.g. -6, sigma 0.05) lets the per-example means set the azimuths (ours).
    azimuth_init_logvar: float = 0.0
    # Weight of the azimuth latent's regulariser (Table 1's term: 1). The mu-VAE term pins the batch mean of
    # log sigma_theta^2 to 0, so the noise returns to about one radian whatever the initial value; 0 leaves
    # (mu_theta, sigma_theta) to the reconstruction alone (ours).
    azimuth_latent_weight: float = 1.0
    # Number of training examples: one free (mu_theta, logvar_theta) pair per example (section 3: the
    # azimuth parameters are not amortised). Set it to len(dataset); 60000 is MNIST's training set.
    dataset_size: int = 60000
    # Camera elevation in degrees, the same for every image (ours; the paper's data is seen from the side: 0).
    # The grid is turned by rotation_matrix(theta, elevation): the shape's frame stays upright when the
    # data is rendered from above, as ShapeNet-NMR and the embedded synthetic data are (30 degrees).
    elevation_deg: float = 0.0
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
                raise ConfigError(f"UcarConfig.{name} must be a positive int, got {value!r}")

        def positive_float(name, allow_zero=False):
            value = getattr(self, name)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or value < 0 or (value == 0 and not allow_zero):
                raise ConfigError(f"UcarConfig.{name} must be a {'non-negative' if allow_zero else 'positive'} "
                                  f"finite number, got {value!r}")

        for name in ("image_size", "latent_dim", "azimuth_latent_dim", "azimuth_hidden", "dataset_size",
                     "texturizer_hidden", "channels", "discriminator_hidden", "batch_size"):
            positive_int(name)
        for name in ("tau", "lr", "mu_clip", "logvar_clip", "grad_clip"):
            positive_float(name)
        if self.azimuth_lr is not None:
            positive_float("azimuth_lr")
        if isinstance(self.azimuth_init_logvar, bool) or not isinstance(self.azimuth_init_logvar, (int, float)) \
                or not math.isfinite(self.azimuth_init_logvar):
            raise ConfigError(f"UcarConfig.azimuth_init_logvar must be a finite number, got {self.azimuth_init_logvar!r}")
        if isinstance(self.elevation_deg, bool) or not isinstance(self.elevation_deg, (int, float)) \
                or not -90.0 <= self.elevation_deg <= 90.0:
            raise ConfigError(f"UcarConfig.elevation_deg must be a number in [-90, 90], got {self.elevation_deg!r}")
        for name in ("beta", "aae_weight", "negative_slope", "azimuth_latent_weight"):
            positive_float(name, allow_zero=True)
        if isinstance(self.occupancy_bias, bool) or not isinstance(self.occupancy_bias, (int, float)) \
                or not math.isfinite(self.occupancy_bias):
            raise ConfigError(f"UcarConfig.occupancy_bias must be a finite number, got {self.occupancy_bias!r}")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"UcarConfig.objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.azimuth not in AZIMUTH_MODES:
            raise ConfigError(f"UcarConfig.azimuth must be one of {AZIMUTH_MODES}, got {self.azimuth!r}")
        if self.azimuth == "encoder" and self.objective != "aae":
            raise ConfigError(f"UcarConfig.azimuth='encoder' needs objective='aae' (section 4.2: the discriminator "
                              f"holds the encoded azimuth to its uniform prior), got objective={self.objective!r}")
        if self.projection not in PROJECTIONS:
            raise ConfigError(f"UcarConfig.projection must be one of {PROJECTIONS}, got {self.projection!r}")
        if not isinstance(self.texturizer, bool):
            raise ConfigError(f"UcarConfig.texturizer must be a bool, got {self.texturizer!r}")
        betas = tuple(self.betas) if isinstance(self.betas, (tuple, list)) else None
        if betas is None or len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
            raise ConfigError(f"UcarConfig.betas must be two numbers in [0, 1), got {self.betas!r}")
        self.betas = (float(betas[0]), float(betas[1]))
        decoder_plan(self.image_size)  # raises ConfigError naming image_size


def decoder_plan(image_size: int) -> Tuple[int, int]:
    """``(base, stages)`` with ``image_size = base * 2**stages``, base in [4, 7] and stages >= 1.

    28 -> (7, 2) as in the paper (7^3 -> 14^3 -> 28^3); 32 -> (4, 3); 64 -> (4, 4).
    """
    size, stages = image_size, 0
    while size > 7 and size % 2 == 0:
        size //= 2
        stages += 1
    if stages == 0 or not 4 <= size <= 7:
        raise ConfigError(f"UcarConfig.image_size must be b * 2^n with b in 4..7 and n >= 1 (28, 32, 64, ...), "
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
    norm-clipped per example (code): ``||mu|| <= 6 sqrt(20)``, ``||logvar|| <= sqrt(20)``. With
    ``azimuth="encoder"`` (AAE, section 4.2) a third head gives the azimuth code ``s = tanh(.)`` in (-1, 1).
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
        self.azimuth = nn.Linear(c * size * size, 1) if config.azimuth == "encoder" else None
        self.mu_clip, self.logvar_clip = config.mu_clip, config.logvar_clip

    def forward(self, images: Tensor) -> Tuple[Tensor, Tensor]:
        """``(mu, logvar)``, each (B, latent_dim), of images (B, 1, R, R)."""
        return self.encode(images)[:2]

    def encode(self, images: Tensor) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        """``(mu, logvar, s)``: ``s`` (B, 1) is the azimuth code in (-1, 1), or None without that head."""
        h = self.features(images).flatten(1)
        s = torch.tanh(self.azimuth(h)) if self.azimuth is not None else None
        return _clip_rows(self.mu(h), self.mu_clip), _clip_rows(self.logvar(h), self.logvar_clip), s


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
        # channels_last_3d: the CPU transposed convolutions run about 20% faster on it (same values).
        h = h.contiguous(memory_format=torch.channels_last_3d)
        return torch.sigmoid(self.deconvs(h)).contiguous()


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
    ``mean + eps * exp(0.5 * logvar)``), shapes ``(dataset_size, azimuth_latent_dim)``, initialised to 0 and
    ``azimuth_init_logvar`` (code: 0 and 0). They are not amortised: no encoder predicts them (section 3). A reparameterised sample
    ``z_theta`` goes through ``Linear(., 10) tanh -> Linear(10, 1) tanh`` to ``s`` in [-1, 1], and
    ``theta = pi * s`` in [-pi, pi] as the paper says ("scaled to [-pi, pi]"). The released code uses
    ``(s + 1) * pi`` in [0, 2 pi]: the same rotations, shifted by pi (s = 0 faces the canonical view here).
    """

    def __init__(self, config: UcarConfig):
        super().__init__()
        shape = (config.dataset_size, config.azimuth_latent_dim)
        self.mean = nn.Parameter(torch.zeros(shape))
        self.logvar = nn.Parameter(torch.full(shape, float(config.azimuth_init_logvar)))
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
    With ``azimuth="encoder"`` it sees the shape latent and the azimuth code together (``latent_dim + 1``
    inputs), whose prior is ``N(0, I) x U(-1, 1)`` (section 4.2).
    """

    def __init__(self, config: UcarConfig):
        super().__init__()
        h = config.discriminator_hidden
        inputs = config.latent_dim + (1 if config.azimuth == "encoder" else 0)
        self.net = nn.Sequential(nn.Linear(inputs, h), nn.LeakyReLU(config.negative_slope),
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

    def azimuth(self, batch: int, index: Optional[Tensor], reference: Tensor,
                code: Optional[Tensor] = None) -> Dict[str, Tensor]:
        """Azimuth per section 3.2: constant 0, uniform in [-pi, pi], from the azimuth latent, or (AAE,
        section 4.2) ``pi * code`` from the encoder's azimuth head."""
        mode = self.config.azimuth
        if mode == "constant":
            return {"azimuth": reference.new_zeros(batch)}
        if mode == "random":
            return {"azimuth": (torch.rand(batch, dtype=reference.dtype, device=reference.device) * 2 - 1) * math.pi}
        if mode == "encoder":
            return {"azimuth": math.pi * code.squeeze(1)}
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
        ``azimuth_mu`` and ``azimuth_logvar`` (B, azimuth_latent_dim); with the encoder's azimuth
        ``azimuth_code`` (B, 1) in (-1, 1). In training mode ``z`` (and the azimuth latent) are samples;
        in evaluation mode the means.
        """
        return self.render(self.encode_decode(images), index)

    def encode_decode(self, images: Tensor) -> Dict[str, Tensor]:
        """The shape half of :meth:`forward`: ``mu``, ``logvar``, ``z``, ``voxels`` (and ``azimuth_code``)."""
        r = self.config.image_size
        if not isinstance(images, Tensor) or images.dim() != 4 or tuple(images.shape[1:]) != (1, r, r):
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"UcarModel.forward: images must be (B, 1, {r}, {r}), got {shape}")
        mu, logvar, code = self.encoder.encode(images)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        out = {"voxels": self.decoder(z), "mu": mu, "logvar": logvar, "z": z}
        if code is not None:
            out["azimuth_code"] = code
        return out

    def render(self, shape: Dict[str, Tensor], index: Optional[Tensor] = None) -> Dict[str, Tensor]:
        """The view half of :meth:`forward`: azimuth, projection (eq. 2) and texturizer for the output of
        :meth:`encode_decode` (a new dict; ``shape`` is not modified)."""
        out = dict(shape)
        voxels = out["voxels"]
        out.update(self.azimuth(voxels.shape[0], index, voxels, out.get("azimuth_code")))
        out["projection"] = self.project(voxels, self.view_rotation(out["azimuth"]))
        out["texture"] = self.texturizer(out["projection"]) if self.texturizer is not None else out["projection"]
        return out

    def view_rotation(self, azimuth: Tensor) -> Tensor:
        """Object-to-view rotations (B, 3, 3) of azimuths (B,) at the config's fixed elevation (section 3.2:
        the azimuth is the only pose variable)."""
        elevation = torch.full_like(azimuth, math.radians(self.config.elevation_deg))
        return invrender.rotation_matrix(azimuth, elevation)

    def decode(self, images: Tensor) -> Tensor:
        """The occupancy grid (B, 1, R, R, R) of images (B, 1, R, R) from the posterior means (evaluation)."""
        return self.decoder(self.encoder(images)[0])

    def project(self, voxels: Tensor, rotation: Tensor) -> Tensor:
        """Eq. 2 for occupancies (B, 1, R, R, R) seen through rotations (B, 3, 3) -> (B, 1, R, R).

        The decoder's sigmoid / tau and the projection's tau cancel (code); see :class:`UcarConfig`.
        """
        tau = self.config.tau
        return invrender.project_voxels(voxels / tau, rotation, mode=self.config.projection, tau=tau)

    # -- losses ----------------------------------------------------------------------------------

    def _adversarial(self, batch_out: Dict[str, Tensor], detach: bool = False) -> Tuple[Tensor, Tensor]:
        """AAE terms on the code the discriminator judges: ``z`` (and the azimuth code, prior U(-1, 1))."""
        code = batch_out["z"]
        prior = torch.randn_like(code)
        if "azimuth_code" in batch_out:
            s = batch_out["azimuth_code"]
            code = torch.cat([code, s], 1)
            prior = torch.cat([prior, torch.rand_like(s) * 2 - 1], 1)
        return aae_losses(self.discriminator, code.detach() if detach else code, prior)

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
            terms["generator"], terms["discriminator"] = self._adversarial(batch_out)
            total = total + cfg.aae_weight * terms["generator"]
        if "azimuth_mu" in batch_out:
            a_mu, a_logvar = batch_out["azimuth_mu"], batch_out["azimuth_logvar"]
            if cfg.objective == "mu_vae":
                terms["azimuth_latent"] = mu_vae_latent_loss(a_mu, a_logvar)
            else:
                terms["azimuth_latent"] = kl_divergence(a_mu, a_logvar)
            if cfg.azimuth_latent_weight:
                total = total + cfg.azimuth_latent_weight * terms["azimuth_latent"]
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
        """One Adam per non-empty parameter group (section 3.4: lr 1e-3, betas (0.9, 0.999); the azimuth
        latent's at ``azimuth_lr`` when set)."""
        cfg = self.config
        lrs = {"azimuth": cfg.azimuth_lr if cfg.azimuth_lr is not None else cfg.lr}
        return {name: torch.optim.Adam(params, lr=lrs.get(name, cfg.lr), betas=cfg.betas)
                for name, params in self.parameter_groups().items() if params}

    def train_step(self, images: Tensor, index: Optional[Tensor], optimizers: Dict[str, torch.optim.Optimizer],
                   reduce_gradients: Optional[Callable[[List[nn.Parameter]], None]] = None) -> Dict[str, Tensor]:
        """One iteration of section 3.4; returns the detached loss terms of the main step.

        1. azimuth latent (if any): its own Adam on ``total`` with the VAE frozen;
        2. main: ``total`` backpropagated, each gradient clipped to norm ``grad_clip`` (code), Adam step;
        3. AAE: the discriminator's Adam on ``discriminator``.

        The image is encoded and decoded once per step (ours): steps 1 and 2 share the decoded grid and its
        sample ``z``, and step 2 renders it again at the azimuth updated by step 1 (the code runs the whole
        network twice, drawing ``z`` twice; the decoder is most of a step's time on the CPU).

        ``reduce_gradients(params)``, when given, is called on each group's parameters after their
        gradients are set and before the step (data parallelism: average them over processes).
        """
        groups = self.parameter_groups()
        reduce_gradients = reduce_gradients or (lambda params: None)

        def set_grads(params, grads):
            for p, g in zip(params, grads):
                p.grad = g if g is not None else torch.zeros_like(p)
            reduce_gradients(params)

        shape = self.encode_decode(images)
        if groups["azimuth"]:
            total = self.losses(self.render(shape, index), images)["total"]
            set_grads(groups["azimuth"], torch.autograd.grad(total, groups["azimuth"], retain_graph=True))
            optimizers["azimuth"].step()
            optimizers["azimuth"].zero_grad(set_to_none=True)
        out = self.render(shape, index)
        terms = self.losses(out, images)
        optimizers["main"].zero_grad(set_to_none=True)
        set_grads(groups["main"], torch.autograd.grad(terms["total"], groups["main"], allow_unused=True))
        clip_gradients(groups["main"], self.config.grad_clip)
        optimizers["main"].step()
        if groups["discriminator"]:
            optimizers["discriminator"].zero_grad(set_to_none=True)
            _, disc = self._adversarial(out, detach=True)
            set_grads(groups["discriminator"], torch.autograd.grad(disc, groups["discriminator"]))
            optimizers["discriminator"].step()
        return {k: v.detach() for k, v in terms.items()}


# ------------------------------------------------------------------------------------------------
# Training task (``invrender train ucar --config configs/ucar_synthetic.yaml``)


class UcarTask:
    """Trains :class:`UcarModel` with :class:`invrender.training.Trainer`.

    Config (defaults in :meth:`default_config`): ``model`` holds :class:`UcarConfig` fields
    (``dataset_size`` is set from the data); ``data.root`` is a ShapeNet-NMR-layout folder (default:
    the embedded synthetic dataset, generated on first use), ``data.categories`` the categories,
    ``data.image_size`` the view size (28, the paper's).

    Data parallel (``torchrun``): the per-example azimuth optimizer steps inside
    :meth:`UcarModel.train_step`, between two renders, which DDP's hooks do not follow; so the model is
    not wrapped (``wrap_ddp = False``) and every optimizer's gradients are averaged over the processes
    before its step (:func:`invrender.training.average_gradients`); batchnorm statistics are computed
    per process and rank 0's running averages are copied to the others after each step. Every process
    then holds the same parameters. The batch terms (batchnorm, the mu-VAE moment term) see the local
    batch, so N processes with batch B/N approximate, not reproduce, one process with batch B.
    """

    wrap_ddp = False

    def default_config(self):
        return {
            "model": {"objective": "mu_vae", "azimuth": "latent", "projection": "trilinear", "texturizer": True,
                      "occupancy_bias": -4.0},
            "data": {"kind": "shapenet", "root": None, "categories": ["car"], "image_size": 28,
                     "synthetic": {"objects_per_category": 40, "views": 24, "image_size": 64}},
            "batch_size": 64, "steps": 1000, "vis_every": 250, "ckpt_every": 250, "log_every": 20,
        }

    def config_schema(self):
        """Types of the keys :meth:`default_config` leaves out: under ``model`` every :class:`UcarConfig` field
        but ``image_size`` and ``dataset_size`` (set from the data), under ``data`` the keys :meth:`dataset`
        reads, ``data.synthetic`` holding the arguments of :func:`invrender.synthetic.default_dataset`."""
        from invrender import synthetic

        hints = typing.get_type_hints(UcarConfig)
        model = {f.name: hints[f.name] for f in dataclasses.fields(UcarConfig)
                 if f.name not in ("image_size", "dataset_size")}
        synth = synthetic.default_dataset_schema()
        data = {"kind": str, "root": Optional[str], "test_root": Optional[str],
                "categories": Union[str, List[str], None], "image_size": int, "floor": float, "cache": bool,
                "synthetic": synth}
        return {"model": model, "data": data}

    def _root(self, config):
        from invrender import synthetic

        data = config["data"]
        if data.get("root"):
            return data["root"]
        if data.get("kind", "shapenet") != "shapenet":
            raise ConfigError(f"ucar: data.root is required with data.kind={data['kind']!r} (the folder with the files)")
        kw = dict(data.get("synthetic") or {})
        return synthetic.default_dataset(progress=False, **kw)

    def dataset(self, config, split, load_voxels: bool = False):
        """Single grayscale views (B, 1, R, R) by ``data.kind``:

        * ``shapenet`` (default): a ShapeNet-NMR-layout folder ``data.root`` (default: the embedded
          synthetic data), ``data.categories``; splits train / val / test;
        * ``mnist`` / ``fashion_mnist``: the IDX files in ``data.root`` (section 4.1); "val" and "test"
          read the t10k files;
        * ``folder``: every image under ``data.root`` (e.g. CelebA, section 4.2), converted to grey; no
          held-out split unless ``data.test_root`` names another folder.

        The model's camera elevation (``model.elevation_deg``) defaults to 30 degrees for ``shapenet``
        (the data's camera) and 0 otherwise.

        ``data.floor`` (default 0) lifts object pixels to ``floor + (1 - floor) * luminance``
        (:class:`invrender.data.GrayscaleViews`). ``data.cache`` (default: true for ``shapenet``) decodes
        the training views once and keeps them in memory (28x28 views are small; PNG decoding was a fifth
        of a CPU step).
        """
        from invrender.data import MNIST, GrayscaleViews, ImageFolder, ShapeNetNMR

        data = config["data"]
        kind, size = data.get("kind", "shapenet"), int(data.get("image_size", 28))
        if kind == "shapenet":
            base = ShapeNetNMR(self._root(config), categories=data.get("categories"), split=split,
                               load_voxels=load_voxels)
        elif kind in ("mnist", "fashion_mnist"):
            base = MNIST(self._root(config), split="train" if split == "train" else "test",
                         kind="mnist" if kind == "mnist" else "fashion", image_size=size)
        elif kind == "folder":
            root = data.get("test_root") if split != "train" and data.get("test_root") else self._root(config)
            base = ImageFolder(root, image_size=size)
        else:
            raise ConfigError(f"ucar: data.kind must be 'shapenet', 'mnist', 'fashion_mnist' or 'folder', got {kind!r}")
        views = GrayscaleViews(base, image_size=size, floor=float(data.get("floor", 0.0)))
        if split == "train" and data.get("cache", kind == "shapenet"):
            return _InMemory(views)
        return views

    def build(self, config, device):
        fields = dict(config.get("model") or {})
        fields["image_size"] = int(config["data"].get("image_size", 28))
        # ShapeNet-NMR (and the embedded synthetic data) is rendered from 30 degrees above; MNIST and
        # photographs are seen from the side.
        fields.setdefault("elevation_deg", 30.0 if config["data"].get("kind", "shapenet") == "shapenet" else 0.0)
        fields["dataset_size"] = len(self.dataset(config, "train"))
        if "betas" in fields:
            fields["betas"] = tuple(fields["betas"])
        model = UcarModel(UcarConfig(**fields)).to(device)
        return model, model.configure_optimizers()

    def train_step(self, model, batch, optimizers, step):
        from invrender.training import average_gradients, broadcast_buffers, unwrap

        model = unwrap(model)
        terms = model.train_step(batch["image"], batch["index"], optimizers, reduce_gradients=average_gradients)
        broadcast_buffers(model)
        return terms

    def visualize(self, model, batch, out_dir, step):
        """Inputs, the constant-view projection of the decoded shape and the texturizer's image of it, and
        turntables of the learned 3D shape of the first input (azimuths sweeping [-pi, pi] at elevations 0
        and 30 degrees, the paper's Figures 12-13); the decoded voxels of the first input exported as a
        marching-cubes OBJ."""
        import os

        from invrender import io

        images = batch["image"]
        voxels = model.decode(images)
        n = images.shape[0]
        front = model.project(voxels, model.view_rotation(images.new_zeros(n)))
        texture = model.texturizer(front) if model.texturizer is not None else front
        az = torch.linspace(-math.pi, math.pi, 9, device=images.device)[:-1]
        turn = {f"turntable_elev{e}": model.project(voxels[:1].expand(8, -1, -1, -1, -1),
                                                     invrender.rotation_matrix(az, torch.full_like(az, math.radians(e))))
                for e in (0, 30)}
        mesh = io.marching_cubes(voxels[:1, 0].detach().cpu().float(), level=0.5)[0]
        if mesh[1].shape[0] > 0:
            io.save_mesh(os.path.join(out_dir, "shape0.obj"), *mesh)
        return {"inputs": images, "projections": front, "textures": texture, **turn}

    @torch.no_grad()
    def evaluate(self, model, config, out_dir, max_views: Optional[int] = None):
        """Metrics on the test split ("val" split for MNIST's t10k files, the folder itself for images).

        * ``test_projection_mse``: mean squared error per pixel of the azimuth-0 projection (the constant
          model's reconstruction); ``test_projection_mse_best_azimuth``: of the best of 24 azimuths per
          image (the azimuth of an unseen image is not known to the latent model);
        * shapenet data with voxels: ``test_voxel_iou_best_azimuth`` (and per category): the decoded grid,
          turned by the best of 24 azimuths per view, against the ground-truth grid resampled into the
          model's frame, at one global occupancy threshold for the run, the best of {0.05 ... 0.5}
          (visual-hull occupancies sit well below 0.5, so, like IG-GAN's binarisation, the threshold is
          a property of the run); ``voxel_iou_threshold`` is the one chosen;
          ``test_voxel_iou_mean_shape`` (and per category): the same protocol for the mean of the training
          objects' ground-truth grids, a learning-free reference (high for a category of similar shapes).

        Every test view is used unless ``max_views`` limits them.
        """
        shapenet = config["data"].get("kind", "shapenet") == "shapenet"
        views = self.dataset(config, "test", load_voxels=shapenet)
        names = getattr(views.base, "category_names", None)
        if max_views is not None:
            views = torch.utils.data.Subset(views, range(min(max_views, len(views))))
        device = next(model.parameters()).device
        loader = torch.utils.data.DataLoader(views, batch_size=64)
        azimuths = torch.linspace(-math.pi, math.pi, 25, device=device)[:-1]
        thresholds = VOXEL_IOU_THRESHOLDS
        front_se, best_se, ious, categories, count = 0.0, 0.0, [], [], 0
        for batch in loader:
            images = batch["image"].to(device)
            n = len(images)
            voxels = model.decode(images)
            errors = torch.stack([((model.project(voxels, model.view_rotation(a.expand(n))) - images) ** 2)
                                  .mean(dim=(1, 2, 3)) for a in azimuths])  # (24, B)
            front_se += float(errors[12].sum())  # azimuths[12] == 0
            best_se += float(errors.min(0).values.sum())
            count += n
            if "voxels" in batch:
                gt = ground_truth_in_model_frame(batch["voxels"].to(device).float(), model.config.image_size)
                ious.append(best_azimuth_voxel_iou(voxels, gt, azimuths, thresholds)[0])  # (T, B)
                categories += batch["category"].tolist()
        out = {"test_views": count, "test_projection_mse": front_se / max(count, 1),
               "test_projection_mse_best_azimuth": best_se / max(count, 1)}
        if ious:
            baseline = self._mean_shape_iou(config, views, model.config.image_size, azimuths, device)
            for key, iou in (("test_voxel_iou_best_azimuth", torch.cat(ious, 1)), ("test_voxel_iou_mean_shape", baseline)):
                t = int(iou.mean(1).argmax())
                if key == "test_voxel_iou_best_azimuth":
                    out["voxel_iou_threshold"] = thresholds[t]
                out[key] = float(iou[t].mean())
                for c in sorted(set(categories)):
                    sel = torch.tensor([x == c for x in categories], device=iou.device)
                    name = names[c] if names is not None else str(c)
                    out[f"{key}/{name}"] = float(iou[t][sel].mean())
        return out

    def _mean_shape_iou(self, config, test_views, image_size, azimuths, device) -> Tensor:
        """(T, N) best-azimuth IoU of the mean training ground-truth grid against every test view's."""
        train = self.dataset(dict(config, data=dict(config["data"], cache=False)), "train").base
        mean = torch.stack([train.object_voxels(k) for k in range(len(train.objects))]).float().to(device)
        mean = ground_truth_in_model_frame(mean, image_size).mean(0, keepdim=True)
        loader = torch.utils.data.DataLoader(test_views, batch_size=64)
        ious = []
        for batch in loader:
            gt = ground_truth_in_model_frame(batch["voxels"].to(device).float(), image_size)
            ious.append(best_azimuth_voxel_iou(mean.expand(len(gt), -1, -1, -1, -1), gt, azimuths)[0])
        return torch.cat(ious, 1)


class _InMemory(torch.utils.data.Dataset):
    """The items of ``dataset``, loaded once (``base`` is the wrapped dataset's base, for its metadata)."""

    def __init__(self, dataset):
        self.items = [dataset[i] for i in range(len(dataset))]
        self.base = getattr(dataset, "base", None)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


#: Global occupancy thresholds among which the voxel-IoU evaluation picks the run's best.
VOXEL_IOU_THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.5)


def ground_truth_in_model_frame(gt: Tensor, image_size: int) -> Tensor:
    """Ground-truth occupancy grids (B, D, D, D) of the synthetic / ShapeNet-NMR data, which span the
    object's [-0.5, 0.5]^3, resampled into the voxel model's frame (B, 1, R, R, R) as a 0/1 float grid.

    The model's grid spans the image's [-1, 1]^2 (the 28x28 view), where the camera (focal 3.732 at distance
    2.732) shows the object magnified by about 3.732 / 2.732: GT is scaled by that, trilinearly, then
    thresholded at 0.5.
    """
    from invrender.synthetic import DISTANCE, FOCAL

    b = gt.shape[0]
    scale = 2.0 * DISTANCE / FOCAL
    theta = torch.zeros(b, 3, 4, device=gt.device, dtype=gt.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = theta[:, 2, 2] = scale
    grid = F.affine_grid(theta, [b, 1, image_size, image_size, image_size], align_corners=False)
    return (F.grid_sample(gt[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False) > 0.5).to(gt.dtype)


def best_azimuth_voxel_iou(voxels: Tensor, gt: Tensor, azimuths: Tensor, thresholds=VOXEL_IOU_THRESHOLDS
                           ) -> Tuple[Tensor, Tensor]:
    """For each threshold and view, the IoU of ``voxels >= threshold`` turned by the best of ``azimuths``
    against ``gt`` (both (B, 1, R, R, R)): returns ``(iou (T, B), azimuth index (T, B))``."""
    from invrender import metrics

    b = voxels.shape[0]
    best = voxels.new_full((len(thresholds), b), -1.0)
    arg = torch.zeros(len(thresholds), b, dtype=torch.long, device=voxels.device)
    for k, a in enumerate(azimuths):
        turned = invrender.rotate_voxels(voxels, invrender.rotation_matrix(a.expand(b)))
        for t, th in enumerate(thresholds):
            iou = metrics.voxel_iou(turned[:, 0], gt[:, 0], threshold=th)
            better = iou > best[t]
            best[t] = torch.where(better, iou, best[t])
            arg[t] = torch.where(better, torch.full_like(arg[t], k), arg[t])
    return best, arg


def _register():
    from invrender.training import register_task

    register_task("ucar", UcarTask)


_register()
