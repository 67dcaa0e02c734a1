"""UNICORN of Monnier et al. 2022, "Share With Thy Neighbors: Single-View Reconstruction by Cross-Instance
Consistency": the model's building blocks.

The model reads as the paper does (section 3, Figure 3, appendix A):

* an image encoder (ResNet-18, 512 features; any module mapping ``(B, 3, H, W)`` to ``(B, 512)`` plugs in)
  followed by MLP heads predicting the shape code ``z_sh``, the texture code ``z_tx``, the background code
  ``z_bg``, the anisotropic scale ``s``, K pose candidates ``(r_k, t_k)`` and their probabilities ``p_k``
  (appendix A.1);
* shape: a :class:`DeformationField` ``s_theta(x, z_sh)`` displaces the vertices of a fixed ellipsoid
  template, ``S(x) = x + s_theta(x, z_sh)`` (section 3.1);
* texture: a GIRAFFE-style :class:`TextureGenerator` ``t_theta(z_tx)`` outputs a 64x64 UV image mapped onto
  the template by spherical coordinates (section 3.1); the background generator ``b_theta`` is the same
  network at the image size;
* pose: ``A(x) = rot(r) diag(s) x + t`` with K = 6 rotation candidates, tanh-bounded offsets around
  reference azimuths (section 3.3, Table 4);
* progressive conditioning: the codes are masked so that only their first k values are live, k growing at
  the stage milestones (section 3.2, :func:`code_mask`);
* swap reconstruction: a :class:`MemoryBank` of the last M = 1024 instances and :func:`swap_neighbours`,
  which picks, in a viewpoint bin drawn uniformly, the nearest instance in code space (section 3.2,
  appendix B.2);
* rendering through :class:`invrender.LayeredRenderer` only (appendix C): :meth:`UnicornModel.render`;
* training and evaluation: :class:`UnicornTask`, registered as ``unicorn`` with :mod:`invrender.training`
  (``invrender train unicorn``, ``invrender eval``: the ShapeNet protocol of section 4.1 with learning-free
  references).

Facts taken from the authors' released code (monniert/unicorn) where the paper is silent or differs are
marked "(code)"; choices of this implementation are marked "(ours)".

Frames: invrender's (README): ``p_view = R @ p_obj``, the camera on +z at ``camera_distance`` looking at the
origin, rotations from :func:`invrender.rotation_matrix` (azimuth from +z toward +x, elevation toward +y).
The released code uses PyTorch3D's row vectors (``verts @ R + T``, view +x left, +z away from the camera);
the learned canonical frame is arbitrary, so only the candidate set matters, and it is the same (K
azimuths evenly over 360 degrees at one elevation, camera above the object for positive elevation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import invrender
from invrender.errors import ConfigError
from invrender.mesh import ellipsoid, spherical_uvs
from invrender.models.networks import PerceptualLoss, ResNet18

__all__ = [
    "DeformationField",
    "MemoryBank",
    "Pose",
    "PoseCandidates",
    "PoseHeads",
    "TextureGenerator",
    "UnicornConfig",
    "UnicornModel",
    "alternating_step",
    "average_texture",
    "candidate_angles",
    "code_mask",
    "code_size",
    "default_encoder",
    "draw_viewpoint_bins",
    "mlp",
    "real_image_config",
    "reconstruction_loss",
    "regularization_loss",
    "rotation_angle",
    "select_pose",
    "swap_neighbours",
    "training_stage",
    "uniform_loss",
    "viewpoint_bin_edges",
]


# ------------------------------------------------------------------------------------------------
# Configuration


@dataclass
class UnicornConfig:
    """Hyperparameters; the defaults are the paper's ShapeNet setting (or its released code's
    ``configs/sn/*.yml`` where the paper is silent). :func:`real_image_config` gives the real-image column
    of Table 4.

    Epochs: the released code counts the schedule (stage milestones, freezes) in epochs; the paper in
    iterations (ShapeNet: 50k for stage 1, 250k for each other stage, appendix A.2). Every ``*_epochs``
    field is a number of epochs from the start of training.
    """

    # Appendix A.2: 64x64 images.
    image_size: int = 64
    # Appendix A.1: ResNet-18 backbone, 512 features after global pooling.
    feature_dim: int = 512
    # Appendix A.1: every MLP head has three hidden layers of 128 units, ReLU.
    head_hidden: int = 128
    head_layers: int = 3
    # Template (appendix A.1, Table 4): icosphere (level 3, 642 vertices; code) scaled per axis by
    # [1, 0.7, 0.7] and by 0.4 (ShapeNet; 0.6 for real images).
    template_level: int = 3
    template_radii: Tuple[float, float, float] = (1.0, 0.7, 0.7)
    template_scale: float = 0.4
    # Deformation field s_theta (section 3.1): 512 hidden units (code: n_field_units; appendix A.1 says 128),
    # three hidden layers (appendix A.1; code N_LAYERS = 3), last layer zero-initialised (code).
    field_hidden: int = 512
    field_layers: int = 3
    # Progressive conditioning (section 3.2): 4 stages; the code sizes per stage. Stage boundaries in epochs
    # (code, configs/sn: 14 / 84 / 154 of 238 epochs).
    stage_milestones: Tuple[int, ...] = (14, 84, 154)
    shape_code_sizes: Tuple[int, ...] = (0, 2, 8, 32)
    texture_code_sizes: Tuple[int, ...] = (2, 8, 32, 128)
    background_code_sizes: Tuple[int, ...] = (4, 16, 64, 128)
    # Background model b_theta (section 3.1): none on ShapeNet, whose images are on white (appendix A.2).
    background: bool = False
    # Colour behind the object when there is no background model (appendix A.2: white; code: (1, 1, 1)).
    background_color: float = 1.0
    # Texture image t_theta(z_tx): 64x64 (appendix A.1), GIRAFFE generator (code: 128 features at 1x1,
    # halved per block down to 16).
    texture_size: int = 64
    generator_features: int = 128
    generator_min_features: int = 16
    # Appendix A.2 (ShapeNet): the texture is averaged to a constant during the first stage (code:
    # constant_txt = 14 epochs), then averaged with probability 0.2 per iteration (code: use_mean_txt, for
    # the whole training: None; real images stop at the last stage).
    constant_texture_epochs: int = 14
    mean_texture_prob: float = 0.2
    mean_texture_until: Optional[int] = None
    # Stage-1 curriculum (appendix A.2: position the ellipsoid, then deform it, then scale it); the heads'
    # outputs are held at their neutral value for these many epochs (code, configs/sn: scale 3).
    freeze_translation_epochs: int = 0
    freeze_shape_epochs: int = 0
    freeze_scale_epochs: int = 3
    # Scale s = 1 + range * tanh(.) per axis (Table 4: 1 +- 0.5 on ShapeNet).
    scale_range: Tuple[float, float, float] = (0.5, 0.5, 0.5)
    # Pose candidates (section 3.3): K = 6 reference viewpoints along the azimuth; Table 4 ranges in degrees.
    num_poses: int = 6
    azimuth_range: Tuple[float, float] = (0.0, 360.0)
    elevation_range: Tuple[float, float] = (30.0, 30.0)
    roll_range: Tuple[float, float] = (0.0, 0.0)
    # Offsets r = reference + factor * (bin width) * tanh(.): 0.52 of a bin (code: "extend the range a bit to
    # allow overlap" between neighbouring candidates).
    rotation_range_factor: float = 0.52
    # Translation t = range * tanh(.) in view space (x, y, depth; Table 4 gives 0 +- 0.5 for x, y on ShapeNet,
    # the code's configs/sn 0.2, and a fixed depth).
    translation_range: Tuple[float, float, float] = (0.2, 0.2, 0.0)
    # Camera (Table 4): focal length 3.732 (fov 30 degrees) at distance t_z = 2.732.
    focal_length: float = 3.732050895690918
    camera_distance: float = 2.732
    # Renderer (appendix C; code): sigma 1e-4, 50 faces per pixel on ShapeNet (25 by default).
    render_layers: int = 50
    sigma: float = 1e-4
    # Swap reconstruction (section 3.2, appendix B.2): memory bank of M = 1024 instances, V viewpoint bins
    # over [20, 180] degrees (the paper says V = 4, the code uses 5).
    memory_size: int = 1024
    viewpoint_bins: int = 5
    min_swap_angle: float = 20.0
    # Loss weights (section 3.2, 3.3; code): reconstruction MSE 1, perceptual 10, Laplacian and normal
    # consistency 0.01 (lambda_reg), swap 1, uniform pose prior 0.02.
    rgb_weight: float = 1.0
    perceptual_weight: float = 10.0
    laplacian_weight: float = 0.01
    normal_weight: float = 0.01
    swap_weight: float = 1.0
    uniform_weight: float = 0.02
    # Appendix A.2: Adam, constant learning rate 1e-4, batches of 32.
    lr: float = 1e-4
    batch_size: int = 32
    # Encoder (appendix A.1): one ResNet-18 shared by every head; the code's "big" models (shared_encoder:
    # False) give the shape (and scale), texture, background and pose heads one ResNet-18 each.
    shared_encoder: bool = True
    # Perceptual term (section 3.2): a torchvision-format VGG16 state dict (nothing is downloaded); None turns
    # the term off, with one warning (models.networks.PerceptualLoss).
    perceptual_weights: Optional[str] = None

    def __post_init__(self):
        name = type(self).__name__

        def fail(field_name, expected, value):
            raise ConfigError(f"{name}.{field_name} must be {expected}, got {value!r}")

        def is_number(v):
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        for f in ("image_size", "feature_dim", "head_hidden", "head_layers", "field_hidden", "field_layers",
                  "texture_size", "generator_features", "generator_min_features", "num_poses", "render_layers",
                  "memory_size", "viewpoint_bins", "batch_size"):
            v = getattr(self, f)
            if not is_int(v) or v <= 0:
                fail(f, "a positive int", v)
        for f in ("constant_texture_epochs", "freeze_translation_epochs", "freeze_shape_epochs",
                  "freeze_scale_epochs", "template_level"):
            v = getattr(self, f)
            if not is_int(v) or v < 0:
                fail(f, "a non-negative int", v)
        if self.template_level > 8:
            fail("template_level", "an int in [0, 8]", self.template_level)
        if self.mean_texture_until is not None and (not is_int(self.mean_texture_until)
                                                    or self.mean_texture_until < 0):
            fail("mean_texture_until", "None or a non-negative int", self.mean_texture_until)
        for f in ("template_scale", "focal_length", "camera_distance", "sigma", "lr", "rotation_range_factor"):
            v = getattr(self, f)
            if not is_number(v) or v <= 0:
                fail(f, "a positive finite number", v)
        for f in ("rgb_weight", "perceptual_weight", "laplacian_weight", "normal_weight", "swap_weight",
                  "uniform_weight", "background_color"):
            v = getattr(self, f)
            if not is_number(v) or v < 0:
                fail(f, "a non-negative finite number", v)
        if not is_number(self.mean_texture_prob) or not 0 <= self.mean_texture_prob <= 1:
            fail("mean_texture_prob", "a probability in [0, 1]", self.mean_texture_prob)
        if not is_number(self.min_swap_angle) or not 0 <= self.min_swap_angle < 180:
            fail("min_swap_angle", "a number of degrees in [0, 180)", self.min_swap_angle)
        for f in ("background", "shared_encoder"):
            if not isinstance(getattr(self, f), bool):
                fail(f, "a bool", getattr(self, f))
        if self.perceptual_weights is not None and not isinstance(self.perceptual_weights, str):
            fail("perceptual_weights", "None or the path of a VGG16 state dict", self.perceptual_weights)

        def triple(f, positive):
            v = getattr(self, f)
            ok = isinstance(v, (tuple, list)) and len(v) == 3 and all(is_number(x) for x in v)
            if not ok or not all(x > 0 if positive else x >= 0 for x in v):
                fail(f, f"three {'positive' if positive else 'non-negative'} finite numbers", v)
            setattr(self, f, tuple(float(x) for x in v))

        triple("template_radii", True)
        triple("scale_range", False)
        triple("translation_range", False)
        if any(s >= 1 for s in self.scale_range):
            fail("scale_range", "three numbers in [0, 1) (the scale 1 +- range must stay positive)",
                 self.scale_range)

        def interval(f, lo, hi):
            v = getattr(self, f)
            ok = isinstance(v, (tuple, list)) and len(v) == 2 and all(is_number(x) for x in v)
            if not ok or not lo <= v[0] <= v[1] <= hi:
                fail(f, f"two numbers (low, high) with {lo} <= low <= high <= {hi} degrees", v)
            setattr(self, f, (float(v[0]), float(v[1])))

        interval("azimuth_range", -360.0, 720.0)
        interval("elevation_range", -90.0, 90.0)
        interval("roll_range", -180.0, 180.0)
        if self.azimuth_range[1] - self.azimuth_range[0] > 360.0:
            fail("azimuth_range", "an interval of at most 360 degrees", self.azimuth_range)

        m = self.stage_milestones
        if not isinstance(m, (tuple, list)) or not all(is_int(x) for x in m) or \
                any(x <= 0 for x in m) or any(b <= a for a, b in zip(m, m[1:])):
            fail("stage_milestones", "increasing positive ints (epochs at which stages 2, 3, ... start)", m)
        self.stage_milestones = tuple(m)
        for f in ("shape_code_sizes", "texture_code_sizes", "background_code_sizes"):
            s = getattr(self, f)
            if not isinstance(s, (tuple, list)) or len(s) != len(m) + 1 or not all(is_int(x) for x in s) or \
                    any(x < 0 for x in s) or any(b < a for a, b in zip(s, s[1:])) or s[-1] <= 0:
                fail(f, f"{len(m) + 1} non-decreasing non-negative ints (one per stage, the last > 0)", s)
            setattr(self, f, tuple(s))
        size = self.texture_size
        if size < 2 or size & (size - 1):
            fail("texture_size", "a power of two >= 2 (the generator doubles a 1x1 map)", size)
        if self.background and (self.image_size < 2 or self.image_size & (self.image_size - 1)):
            fail("image_size", "a power of two >= 2 when background=True (the background generator doubles a "
                 "1x1 map)", self.image_size)


def real_image_config(**overrides) -> UnicornConfig:
    """The real-image column of Table 4 (CompCars, LSUN, CUB, Pascal3D+), with the released code's
    ``configs/car.yml`` where the paper is silent; ``overrides`` replace any field."""
    values = dict(
        template_scale=0.6,  # Table 4
        background=True,  # section 3.1
        stage_milestones=(175, 350, 525),  # code (car.yml, 700 epochs)
        constant_texture_epochs=0,  # code: no constant stage on real images
        mean_texture_until=525,  # code: averaged textures until the last stage
        freeze_translation_epochs=2, freeze_shape_epochs=4, freeze_scale_epochs=60,  # code
        scale_range=(0.3, 0.3, 0.3),  # Table 4
        elevation_range=(-10.0, 30.0), roll_range=(-30.0, 30.0),  # Table 4
        translation_range=(0.3, 0.3, 0.3),  # Table 4 (t_z = 2.732 +- 0.3)
        focal_length=1.0 / math.tan(math.radians(15.0)),  # Table 4: fov 30 degrees
        render_layers=25,  # code: the renderer's default
    )
    values.update(overrides)
    return UnicornConfig(**values)


# ------------------------------------------------------------------------------------------------
# Progressive conditioning (section 3.2)


def training_stage(epoch: int, milestones: Sequence[int]) -> int:
    """The stage (0-based) an epoch is in: the number of milestones ``<= epoch``."""
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"training_stage: argument 'epoch' must be a non-negative int, got {epoch!r}")
    return sum(1 for m in milestones if m <= epoch)


def code_size(epoch: int, milestones: Sequence[int], sizes: Sequence[int]) -> int:
    """Live size of a progressively conditioned code at ``epoch``: ``sizes[training_stage(epoch)]``.

    ``sizes`` has one entry per stage (``len(milestones) + 1``), e.g. the shape code's 0/2/8/32 with the
    ShapeNet milestones 14/84/154: size 0 for epochs 0..13, 2 for 14..83, 8 for 84..153, 32 from 154.
    """
    if len(sizes) != len(milestones) + 1:
        raise ValueError(f"code_size: need one size per stage ({len(milestones) + 1}), got {len(sizes)} sizes")
    return int(sizes[training_stage(epoch, milestones)])


def code_mask(epoch: int, milestones: Sequence[int], sizes: Sequence[int], device=None,
              dtype: Optional[torch.dtype] = None) -> Tensor:
    """``(sizes[-1],)`` mask of a code at ``epoch``: 1 on its first :func:`code_size` values, 0 after.

    The heads always predict the full code (its size is the last stage's); masking the tail restricts the
    codes to a subspace of the current stage's dimension (section 3.2: "we implement progressive conditioning
    by masking out, stage-by-stage, a decreasing number of values of the latent code").
    """
    k = code_size(epoch, milestones, sizes)
    mask = torch.zeros(int(sizes[-1]), device=device, dtype=dtype or torch.get_default_dtype())
    mask[:k] = 1
    return mask


# ------------------------------------------------------------------------------------------------
# Networks


def mlp(in_dim: int, out_dim: int, hidden: int = 128, layers: int = 3, zero_last: bool = False) -> nn.Sequential:
    """``layers`` hidden Linear + ReLU layers of ``hidden`` units, then a Linear to ``out_dim`` (appendix
    A.1's heads). Kaiming-normal weights and zero biases (code); ``zero_last`` zeroes the last layer."""
    dims = [in_dim] + [hidden] * layers
    seq = []
    for a, b in zip(dims, dims[1:]):
        seq += [nn.Linear(a, b), nn.ReLU(inplace=True)]
    seq.append(nn.Linear(dims[-1], out_dim))
    net = nn.Sequential(*seq)
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        if zero_last:
            net[-1].weight.zero_()
    return net


class DeformationField(nn.Module):
    """Shape deformation ``s_theta(x, z_sh)``: an MLP on a vertex position and the shape code returning the
    vertex displacement (section 3.1; AtlasNet-style field).

    The first layer acts on the concatenation ``[x, z]`` written as two Linears, ``W_x x + W_z z`` (code), so
    the code's contribution is computed once per mesh, not once per vertex; then ``layers - 1`` more hidden
    layers and a last Linear to 3, zero-initialised so that the initial mesh is the template.
    """

    def __init__(self, code_dim: int, hidden: int = 512, layers: int = 3):
        super().__init__()
        if layers < 1:
            raise ValueError(f"DeformationField: argument 'layers' must be >= 1, got {layers}")
        self.code_dim = code_dim
        self.linear_x = nn.Linear(3, hidden)
        self.linear_z = nn.Linear(code_dim, hidden) if code_dim > 0 else None
        self.mlp = mlp(hidden, 3, hidden, layers - 1, zero_last=True)
        with torch.no_grad():
            for m in (self.linear_x, self.linear_z):
                if m is not None:
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                    nn.init.zeros_(m.bias)

    def forward(self, verts: Tensor, code: Tensor) -> Tensor:
        """Displacements ``(B, V, 3)`` of ``verts`` ``(V, 3)`` (or ``(B, V, 3)``) under codes ``(B, code_dim)``."""
        if code.dim() != 2 or code.shape[1] != self.code_dim:
            raise ValueError(f"DeformationField: argument 'code' must have shape (B, {self.code_dim}), "
                             f"got {tuple(code.shape)}")
        h = self.linear_x(verts)
        h = h.unsqueeze(0) if h.dim() == 2 else h
        if self.linear_z is not None:
            h = h + self.linear_z(code).unsqueeze(1)
        h = h.expand(code.shape[0], -1, -1)
        return self.mlp(F.relu(h))


class Blur(nn.Module):
    """Fixed 3x3 binomial blur ``[1, 2, 1]^T [1, 2, 1] / 16`` per channel, reflect-padded (code: after each
    bilinear upsampling of the RGB skip path, as in GIRAFFE / StyleGAN)."""

    def __init__(self):
        super().__init__()
        k = torch.tensor([1.0, 2.0, 1.0])
        self.register_buffer("kernel", (k[:, None] * k[None, :] / 16.0)[None, None], persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        c = x.shape[1]
        kernel = self.kernel.to(x.dtype).expand(c, 1, 3, 3)
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), kernel, groups=c)


class TextureGenerator(nn.Module):
    """GIRAFFE's 2D neural renderer used as UNICORN's generators t_theta and b_theta (appendix A.1): a code
    ``(B, code_dim)`` to an image ``(B, 3, size, size)`` in [0, 1].

    The code is a ``1x1`` map of ``code_dim`` channels (code: ``features = code_dim``, no input layer).
    ``log2(size)`` blocks each upsample the features (nearest) and apply a 3x3 convolution + ReLU, the
    channels halving from ``features`` down to ``min_features``; an RGB skip path adds a 3x3 convolution of
    every level's features to the running image, upsampled bilinearly and blurred between levels; a sigmoid
    ends it. Convolutions have no bias and Kaiming-normal weights (code).
    """

    def __init__(self, code_dim: int = 128, size: int = 64, features: Optional[int] = None,
                 min_features: int = 16, out_channels: int = 3):
        super().__init__()
        if size < 2 or size & (size - 1):
            raise ValueError(f"TextureGenerator: argument 'size' must be a power of two >= 2, got {size}")
        features = code_dim if features is None else features
        self.code_dim, self.size = code_dim, size
        blocks = int(math.log2(size))
        channels = [max(features // 2 ** i, min_features) for i in range(blocks + 1)]
        self.conv_in = nn.Conv2d(code_dim, features, 1, bias=False) if features != code_dim else nn.Identity()
        ins = [features] + channels[1:-1]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1, bias=False) for a, b in zip(ins, channels[1:]))
        self.to_rgb = nn.ModuleList(nn.Conv2d(c, out_channels, 3, padding=1, bias=False)
                                    for c in [features] + channels[1:])
        self.blur = Blur()
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")

    def _upsample_rgb(self, rgb: Tensor) -> Tensor:
        return self.blur(F.interpolate(rgb, scale_factor=2, mode="bilinear", align_corners=False))

    def forward(self, code: Tensor) -> Tensor:
        if code.dim() != 2 or code.shape[1] != self.code_dim:
            raise ValueError(f"TextureGenerator: argument 'code' must have shape (B, {self.code_dim}), "
                             f"got {tuple(code.shape)}")
        net = self.conv_in(code[:, :, None, None])
        rgb = self._upsample_rgb(self.to_rgb[0](net))
        for i, conv in enumerate(self.convs):
            net = F.relu(conv(F.interpolate(net, scale_factor=2, mode="nearest")))
            rgb = rgb + self.to_rgb[i + 1](net)
            if i < len(self.convs) - 1:
                rgb = self._upsample_rgb(rgb)
        return torch.sigmoid(rgb)


def average_texture(texture: Tensor) -> Tensor:
    """Each texture image replaced by its mean colour: ``(B, C, H, W)`` constant per image (appendix A.2,
    "the predicted texture image is averaged to yield a constant texture"). Images are averaged separately,
    never across the batch. The code estimates the mean from 64 random texels; we take the exact mean (ours).
    """
    return texture.mean(dim=(2, 3), keepdim=True).expand_as(texture)


# ------------------------------------------------------------------------------------------------
# Pose (section 3.3, Table 4)


class PoseCandidates(NamedTuple):
    """K pose candidates per image. ``angles`` ``(B, K, 3)`` (azimuth, elevation, roll) in degrees;
    ``rotation`` ``(B, K, 3, 3)`` object-to-view (``invrender.rotation_matrix``); ``translation``
    ``(B, K, 3)`` in view space (added after the rotation; the camera distance is the camera's);
    ``probabilities`` ``(B, K)`` summing to 1 over the candidates."""

    angles: Tensor
    rotation: Tensor
    translation: Tensor
    probabilities: Tensor


class Pose(NamedTuple):
    """One pose per image: ``rotation`` ``(B, 3, 3)`` and view-space ``translation`` ``(B, 3)``."""

    rotation: Tensor
    translation: Tensor


def candidate_angles(num_poses: int, azimuth_range: Sequence[float], elevation_range: Sequence[float],
                     roll_range: Sequence[float], range_factor: float = 0.52) -> Tuple[Tensor, Tensor]:
    """Reference viewpoints and offset ranges of the pose candidates (section 3.3; code ``init_rotations``).

    The K references are spread uniformly along the azimuth at the middle of the elevation and roll ranges:
    on a full circle ``azimuth_k = low + k * 360 / K`` (0, 60, ..., 300 for K = 6), otherwise the centres of K
    equal bins. Each candidate's angles are ``reference + offset_range * tanh(.)`` with ``offset_range =
    range_factor * (bin width, elevation range, roll range)`` (code: 0.52, slightly over half a bin, so
    neighbouring candidates overlap).

    Returns:
        ``references`` ``(K, 3)`` and ``offset_range`` ``(3,)``, in degrees (float64).
    """
    (a0, a1), (e0, e1), (r0, r1) = azimuth_range, elevation_range, roll_range
    width = (a1 - a0) / num_poses
    k = torch.arange(num_poses, dtype=torch.float64)
    full_circle = a1 - a0 == 360.0 and num_poses > 1
    azimuth = a0 + k * width if full_circle else a0 + (k + 0.5) * width
    refs = torch.stack([azimuth, torch.full_like(k, (e0 + e1) / 2), torch.full_like(k, (r0 + r1) / 2)], dim=1)
    offset_range = range_factor * torch.tensor([width, e1 - e0, r1 - r0], dtype=torch.float64)
    return refs, offset_range


class PoseHeads(nn.Module):
    """K rotation heads, K translation heads (last layers zero-initialised: each candidate starts at its
    reference viewpoint, centred; code) and one probability head (softmax over the candidates)."""

    def __init__(self, config: UnicornConfig):
        super().__init__()
        nf, nu, nl, K = config.feature_dim, config.head_hidden, config.head_layers, config.num_poses
        self.num_poses = K
        self.rotation_heads = nn.ModuleList(mlp(nf, 3, nu, nl, zero_last=True) for _ in range(K))
        self.translation_heads = nn.ModuleList(mlp(nf, 3, nu, nl, zero_last=True) for _ in range(K))
        self.probability_head = mlp(nf, K, nu, nl)
        refs, offset_range = candidate_angles(K, config.azimuth_range, config.elevation_range, config.roll_range,
                                              config.rotation_range_factor)
        self.register_buffer("reference_angles", refs.float())
        self.register_buffer("angle_range", offset_range.float())
        self.register_buffer("translation_range", torch.tensor(config.translation_range))

    def forward(self, features: Tensor, freeze_translation: bool = False) -> PoseCandidates:
        offsets = torch.tanh(torch.stack([h(features) for h in self.rotation_heads], dim=1))  # (B, K, 3)
        angles = self.reference_angles.to(offsets.dtype) + offsets * self.angle_range.to(offsets.dtype)
        azimuth, elevation, roll = torch.deg2rad(angles).unbind(-1)
        rotation = invrender.rotation_matrix(azimuth, elevation, roll)
        t = torch.tanh(torch.stack([h(features) for h in self.translation_heads], dim=1))
        if freeze_translation:
            t = t * 0
        translation = t * self.translation_range.to(t.dtype)
        probabilities = torch.softmax(self.probability_head(features), dim=1)
        return PoseCandidates(angles, rotation, translation, probabilities)


def select_pose(candidates: PoseCandidates) -> Tuple[Pose, Tensor]:
    """The most likely candidate of each image (section 3.3: the 3D-step and inference use it):
    ``(Pose, index (B,))``."""
    index = candidates.probabilities.argmax(dim=1)
    rows = torch.arange(index.shape[0], device=index.device)
    return Pose(candidates.rotation[rows, index], candidates.translation[rows, index]), index


# ------------------------------------------------------------------------------------------------
# Swap reconstruction: memory bank and neighbour selection (section 3.2, appendix B.2)


def rotation_angle(r1: Tensor, r2: Tensor) -> Tensor:
    """Angle in degrees, in [0, 180], of the relative rotation ``r1^T r2`` (broadcast over leading dims)."""
    trace = (r1 * r2).sum(dim=(-2, -1))  # trace(r1^T r2)
    return torch.rad2deg(torch.acos(((trace - 1) / 2).clamp(-1.0, 1.0)))


def viewpoint_bin_edges(num_bins: int, min_angle: float = 20.0) -> Tensor:
    """Edges ``(num_bins + 1,)`` of V equal viewpoint bins over ``[min_angle, 180]`` degrees (appendix B.2:
    angles under 20 degrees are excluded, "to remove instances that have a similar pose")."""
    return torch.linspace(float(min_angle), 180.0, num_bins + 1, dtype=torch.float64)


def draw_viewpoint_bins(batch: int, num_bins: int, generator: Optional[torch.Generator] = None,
                        device=None) -> Tensor:
    """A target viewpoint bin per instance, uniform over the V bins: ``(batch,)`` int64."""
    bins = torch.randint(0, num_bins, (batch,), generator=generator)
    return bins.to(device) if device is not None else bins


def swap_neighbours(codes: Tensor, rotations: Tensor, bank_codes: Tensor, bank_rotations: Tensor, bins: Tensor,
                    num_bins: int, min_angle: float = 20.0, valid: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """For each instance, the bank entry nearest in code space (L2) among those whose viewpoint lies in the
    instance's drawn bin (section 3.2, appendix B.2).

    The viewpoint difference is :func:`rotation_angle` between the instance's rotation and the entry's;
    bin ``b`` holds the angles in ``[edge_b, edge_{b+1})`` of :func:`viewpoint_bin_edges`, the last bin
    closed at 180 degrees (ours: the code leaves exact back views out of every bin).

    Args:
        codes: ``(B, C)`` shape (or texture) codes of the batch.
        rotations: ``(B, 3, 3)`` their (most likely) rotations.
        bank_codes: ``(M, C)``; bank_rotations: ``(M, 3, 3)``.
        bins: ``(B,)`` int64 target bins in ``[0, num_bins)`` (:func:`draw_viewpoint_bins`).
        valid: optional ``(M,)`` bool, the filled entries of the bank.

    Returns:
        ``index (B,)`` int64 into the bank and ``found (B,)`` bool: False where no valid entry lies in the
        drawn bin (the index is then 0 and meaningless; the code silently takes an entry out of the bin).
    """
    if codes.dim() != 2 or bank_codes.dim() != 2 or codes.shape[1] != bank_codes.shape[1]:
        raise ValueError(f"swap_neighbours: 'codes' (B, C) and 'bank_codes' (M, C) must share C, got "
                         f"{tuple(codes.shape)} and {tuple(bank_codes.shape)}")
    if bins.shape != codes.shape[:1]:
        raise ValueError(f"swap_neighbours: argument 'bins' must have shape ({codes.shape[0]},), "
                         f"got {tuple(bins.shape)}")
    edges = viewpoint_bin_edges(num_bins, min_angle).to(codes.device)
    angles = rotation_angle(rotations[:, None].double(), bank_rotations[None].double())  # (B, M)
    lo, hi = edges[bins][:, None], edges[bins + 1][:, None]
    last = (bins == num_bins - 1)[:, None]
    in_bin = (angles >= lo) & ((angles < hi) | (last & (angles <= hi)))
    if valid is not None:
        in_bin = in_bin & valid[None]
    distance = torch.cdist(codes.double(), bank_codes.double()) if codes.shape[1] > 0 else \
        torch.zeros(angles.shape, dtype=torch.float64, device=codes.device)
    distance = distance.masked_fill(~in_bin, math.inf)
    best, index = distance.min(dim=1)
    found = torch.isfinite(best)
    return torch.where(found, index, torch.zeros_like(index)), found


class MemoryBank(nn.Module):
    """The last M instances seen in training (section 3.2): codes, scale, pose, background code and image,
    held in buffers so that checkpoints carry them. A ring: :meth:`push` overwrites the oldest entries.
    Everything stored is detached."""

    FIELDS = ("shape_code", "texture_code", "background_code", "scale", "rotation", "translation", "image")

    def __init__(self, size: int, shape_dim: int, texture_dim: int, background_dim: int,
                 image_shape: Sequence[int]):
        super().__init__()
        if size <= 0:
            raise ValueError(f"MemoryBank: argument 'size' must be positive, got {size}")
        self.size = size
        shapes = {"shape_code": (shape_dim,), "texture_code": (texture_dim,), "background_code": (background_dim,),
                  "scale": (3,), "rotation": (3, 3), "translation": (3,), "image": tuple(image_shape)}
        for name in self.FIELDS:
            self.register_buffer(name, torch.zeros(size, *shapes[name]))
        self.register_buffer("position", torch.zeros((), dtype=torch.long))  # next slot to write
        self.register_buffer("count", torch.zeros((), dtype=torch.long))  # filled slots

    def __len__(self) -> int:
        return int(self.count.item())

    @property
    def valid(self) -> Tensor:
        """``(M,)`` bool: the filled slots (the first ``len(self)``: the ring fills from slot 0)."""
        return torch.arange(self.size, device=self.count.device) < self.count

    @torch.no_grad()
    def push(self, **entries: Tensor) -> None:
        """Stores a batch: every field of :attr:`FIELDS` as a keyword, each ``(B, ...)``."""
        missing = set(self.FIELDS) - set(entries)
        extra = set(entries) - set(self.FIELDS)
        if missing or extra:
            raise ValueError(f"MemoryBank.push: needs exactly the fields {self.FIELDS}; missing {sorted(missing)}, "
                             f"unknown {sorted(extra)}")
        batch = entries["image"].shape[0]
        for name in self.FIELDS:
            value = entries[name]
            store = getattr(self, name)
            if value.shape[0] != batch or tuple(value.shape[1:]) != tuple(store.shape[1:]):
                raise ValueError(f"MemoryBank.push: '{name}' must have shape ({batch}, "
                                 f"{', '.join(map(str, store.shape[1:]))}), got {tuple(value.shape)}")
        keep = min(batch, self.size)  # a batch larger than the bank keeps its last entries
        slots = (self.position + torch.arange(keep, device=self.position.device)) % self.size
        for name in self.FIELDS:
            store = getattr(self, name)
            store[slots.to(store.device)] = entries[name][batch - keep:].detach().to(store.dtype)
        self.position.copy_((self.position + keep) % self.size)
        self.count.copy_(torch.clamp(self.count + keep, max=self.size))

    def neighbours(self, kind: str, codes: Tensor, rotations: Tensor, bins: Tensor, num_bins: int,
                   min_angle: float = 20.0) -> Tuple[Tensor, Tensor]:
        """:func:`swap_neighbours` against this bank's ``"shape"`` or ``"texture"`` codes."""
        if kind not in ("shape", "texture"):
            raise ValueError(f"MemoryBank.neighbours: argument 'kind' must be 'shape' or 'texture', got {kind!r}")
        bank_codes = getattr(self, f"{kind}_code")
        return swap_neighbours(codes, rotations, bank_codes.to(codes.dtype), self.rotation, bins, num_bins,
                               min_angle, self.valid)

    def entries(self, index: Tensor) -> Dict[str, Tensor]:
        """The stored fields at ``index`` ``(B,)``."""
        return {name: getattr(self, name)[index] for name in self.FIELDS}


# ------------------------------------------------------------------------------------------------
# Losses (section 3.2, 3.3) and the alternating optimisation


STEPS = ("pose", "3d")


def alternating_step(iteration: int) -> str:
    """The step of a training iteration (section 3.3, appendix B.3: "we alternate the optimization every new
    batch"): ``"pose"`` (P-step) on even iterations, ``"3d"`` (3D-step) on odd ones (code: the first
    iteration is a pose step)."""
    if isinstance(iteration, bool) or not isinstance(iteration, int) or iteration < 0:
        raise ValueError(f"alternating_step: argument 'iteration' must be a non-negative int, got {iteration!r}")
    return STEPS[iteration % 2]


def reconstruction_loss(rendered: Tensor, target: Tensor, perceptual=None, rgb_weight: float = 1.0,
                        perceptual_weight: float = 10.0) -> Tensor:
    """``L_rec`` per image ``(N,)`` (section 3.2): ``rgb_weight * MSE`` (mean over pixels and channels) plus
    ``perceptual_weight * perceptual(rendered, target)`` when a perceptual loss (a callable returning ``(N,)``;
    VGG16 relu3_3 in the paper) is given."""
    if rendered.shape != target.shape:
        raise ValueError(f"reconstruction_loss: rendered {tuple(rendered.shape)} and target {tuple(target.shape)} "
                         f"differ in shape")
    loss = rgb_weight * (rendered - target).pow(2).flatten(1).mean(1)
    if perceptual is not None and perceptual_weight > 0:
        loss = loss + perceptual_weight * perceptual(rendered, target)
    return loss


def uniform_loss(probabilities: Tensor) -> Tensor:
    """``L_uni`` (section 3.3): deviation of the batch-averaged candidate probabilities ``(B, K)`` from the
    uniform ``1/K``. Averaged over the candidates (code; the paper writes the sum, K times larger, with the
    same weight 0.02)."""
    k = probabilities.shape[1]
    return (probabilities.mean(0) - 1.0 / k).abs().mean()


def regularization_loss(verts: Tensor, faces: Tensor, laplacian_weight: float = 0.01,
                        normal_weight: float = 0.01) -> Tensor:
    """``lambda_reg L_reg`` (section 3.2): uniform Laplacian smoothing and normal consistency of the meshes
    ``(B, V, 3)`` (code: PyTorch3D's ``mesh_laplacian_smoothing(method="uniform")`` and
    ``mesh_normal_consistency``; here :mod:`invrender.mesh`'s)."""
    return (laplacian_weight * invrender.mesh.laplacian_loss(verts, faces, "uniform")
            + normal_weight * invrender.mesh.normal_consistency_loss(verts, faces))


# ------------------------------------------------------------------------------------------------
# The model


#: The branches that read image features (:meth:`UnicornModel.encode`); ``shape`` also feeds the scale head.
ENCODER_BRANCHES = ("shape", "texture", "background", "pose")


def default_encoder(config: UnicornConfig) -> nn.Module:
    """UNICORN's encoder (appendix A.1): a ResNet-18 trained from scratch, 512 pooled features; with
    ``shared_encoder=False`` an ``nn.ModuleDict`` of one ResNet-18 per branch of :data:`ENCODER_BRANCHES`
    (``background`` only with a background model)."""
    if config.feature_dim != ResNet18.out_features:
        raise ConfigError(f"UnicornConfig.feature_dim must be {ResNet18.out_features} with the default ResNet-18 "
                          f"encoder, got {config.feature_dim} (pass an encoder of that width instead)")
    if config.shared_encoder:
        return ResNet18()
    names = [n for n in ENCODER_BRANCHES if n != "background" or config.background]
    return nn.ModuleDict({name: ResNet18() for name in names})


class UnicornModel(nn.Module):
    """UNICORN's structured autoencoder (section 3.1). Built from a config and an image ``encoder``
    (an ``nn.Module`` mapping ``(B, 3, H, W)`` to ``(B, config.feature_dim)``; None: :func:`default_encoder`,
    the paper's ResNet-18). The perceptual term is ``self.perceptual`` (:class:`PerceptualLoss` of
    ``config.perceptual_weights``), used by :meth:`train_step` unless another is passed.

    The current epoch is a buffer (:meth:`set_epoch`), so a checkpoint holds the curriculum's position.
    """

    def __init__(self, config: Optional[UnicornConfig] = None, encoder: Optional[nn.Module] = None):
        super().__init__()
        self.config = config = UnicornConfig() if config is None else config
        if encoder is None:
            encoder = default_encoder(config)
        elif not isinstance(encoder, nn.Module):
            raise TypeError(f"UnicornModel: argument 'encoder' must be None (ResNet-18) or an nn.Module mapping "
                            f"(B, 3, H, W) to (B, {config.feature_dim}), got {type(encoder).__name__}")
        self.encoder = encoder
        # Perceptual term (section 3.2): frozen VGG16, left out of the state dict; off without a weights file.
        self.perceptual = PerceptualLoss(config.perceptual_weights)
        self.register_buffer("epoch", torch.zeros((), dtype=torch.long))
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))  # training iterations done

        # Template (section 3.1): the ellipsoid, its faces and per-corner spherical UVs (code: UVs of the
        # ellipsoid's vertices).
        verts, faces = ellipsoid(config.template_level, config.template_radii, config.template_scale,
                                 dtype=torch.float32)
        self.register_buffer("template_verts", verts)
        self.register_buffer("faces", faces)
        self.register_buffer("uvs", spherical_uvs(verts, faces))

        nf, nu, nl = config.feature_dim, config.head_hidden, config.head_layers
        # Code heads: last layer zero-initialised "to avoid discontinuity when increasing the size of the
        # latent codes" (appendix A.1).
        self.shape_head = mlp(nf, config.shape_code_sizes[-1], nu, nl, zero_last=True)
        self.deformation = DeformationField(config.shape_code_sizes[-1], config.field_hidden, config.field_layers)
        self.scale_head = mlp(nf, 3, nu, nl, zero_last=True)
        self.register_buffer("scale_range", torch.tensor(config.scale_range))
        self.texture_head = mlp(nf, config.texture_code_sizes[-1], nu, nl, zero_last=True)
        self.texture_generator = TextureGenerator(config.texture_code_sizes[-1], config.texture_size,
                                                  config.generator_features, config.generator_min_features)
        if config.background:
            self.background_head = mlp(nf, config.background_code_sizes[-1], nu, nl, zero_last=True)
            self.background_generator = TextureGenerator(config.background_code_sizes[-1], config.image_size,
                                                         config.generator_features, config.generator_min_features)
        else:
            self.background_head = self.background_generator = None
        self.pose_heads = PoseHeads(config)
        self.memory = MemoryBank(config.memory_size, config.shape_code_sizes[-1], config.texture_code_sizes[-1],
                                 config.background_code_sizes[-1] if config.background else 0,
                                 (3, config.image_size, config.image_size))
        # Rendering (appendix C) through invrender's layered renderer; the camera of Table 4.
        camera = invrender.PerspectiveCamera.from_focal_length(config.focal_length, distance=config.camera_distance)
        self.renderer = invrender.LayeredRenderer(camera, config.image_size, layers=config.render_layers,
                                                  sigma=config.sigma, kind="exp",
                                                  background=config.background_color)

    # -- curriculum -------------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Moves the curriculum (code masks, freezes, constant texture) to ``epoch``."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"UnicornModel.set_epoch: argument 'epoch' must be a non-negative int, got {epoch!r}")
        self.epoch.fill_(epoch)

    @property
    def current_epoch(self) -> int:
        return int(self.epoch.item())

    def _masked(self, code: Tensor, sizes: Sequence[int]) -> Tensor:
        return code * code_mask(self.current_epoch, self.config.stage_milestones, sizes, code.device, code.dtype)

    # -- shape ------------------------------------------------------------------------------------

    def shape_code(self, features: Tensor) -> Tensor:
        """``z_sh`` ``(B, 32)`` with only the current stage's first values live (section 3.2)."""
        return self._masked(self.shape_head(features), self.config.shape_code_sizes)

    def shape(self, shape_code: Tensor) -> Tensor:
        """Deformed template ``S(E) = E + s_theta(E, z_sh)``: vertices ``(B, V, 3)`` (before scaling).
        The displacement is held at 0 for the first ``freeze_shape_epochs`` (code)."""
        disp = self.deformation(self.template_verts, shape_code)
        if self.current_epoch < self.config.freeze_shape_epochs:
            disp = disp * 0
        return self.template_verts + disp

    def scale(self, features: Tensor) -> Tensor:
        """Anisotropic scale ``s = 1 + range * tanh(.)`` ``(B, 3)`` (Table 4); 1 during the first
        ``freeze_scale_epochs`` (code)."""
        s = torch.tanh(self.scale_head(features))
        if self.current_epoch < self.config.freeze_scale_epochs:
            s = s * 0
        return 1 + s * self.scale_range.to(s.dtype)

    # -- pose ---------------------------------------------------------------------------------------

    def poses(self, features: Tensor) -> PoseCandidates:
        """The K pose candidates and their probabilities (translation held at 0 for the first
        ``freeze_translation_epochs``, code)."""
        return self.pose_heads(features, self.current_epoch < self.config.freeze_translation_epochs)

    # -- texture and background --------------------------------------------------------------------

    def texture_code(self, features: Tensor) -> Tensor:
        """``z_tx`` ``(B, 128)`` with only the current stage's first values live (section 3.2)."""
        return self._masked(self.texture_head(features), self.config.texture_code_sizes)

    def texture(self, texture_code: Tensor, averaged: bool = False) -> Tensor:
        """UV texture image ``t_theta(z_tx)`` ``(B, 3, 64, 64)``; each image replaced by its mean colour when
        ``averaged`` (see :meth:`draw_texture_averaging`)."""
        texture = self.texture_generator(texture_code)
        return average_texture(texture) if averaged else texture

    def draw_texture_averaging(self, generator: Optional[torch.Generator] = None) -> bool:
        """Whether this iteration renders averaged textures (appendix A.2): always during the first
        ``constant_texture_epochs`` (in eval mode too, code: the texture is only trained through its mean
        then); afterwards, in training mode only, with probability ``mean_texture_prob`` (one draw for the
        whole batch) until ``mean_texture_until`` (None: to the end)."""
        c, epoch = self.config, self.current_epoch
        if epoch < c.constant_texture_epochs:
            return True
        if not self.training:
            return False
        if c.mean_texture_until is not None and epoch >= c.mean_texture_until:
            return False
        return bool(torch.rand((), generator=generator).item() < c.mean_texture_prob)

    def background_code(self, features: Tensor) -> Optional[Tensor]:
        """``z_bg`` ``(B, 128)`` (masked by stage), or None without a background model."""
        if self.background_head is None:
            return None
        return self._masked(self.background_head(features), self.config.background_code_sizes)

    def background(self, background_code: Optional[Tensor]) -> Optional[Tensor]:
        """Background image ``b_theta(z_bg)`` ``(B, 3, H, W)``, or None without a background model (the
        renderer then composites over ``config.background_color``)."""
        if self.background_generator is None or background_code is None:
            return None
        return self.background_generator(background_code)

    # -- the whole prediction and rendering -----------------------------------------------------------

    def predict(self, images: Tensor, averaged_texture: bool = False) -> Dict[str, object]:
        """Every factor of ``images`` ``(B, 3, H, W)`` (Figure 3): a dict with ``features`` ``(B, F)``, the
        masked codes ``shape_code``, ``texture_code``, ``background_code`` (None without a background
        model), ``scale`` ``(B, 3)``, ``verts`` ``(B, V, 3)`` the deformed template scaled by ``diag(s)``
        (object space, before the pose), ``texture`` ``(B, 3, Ht, Wt)``, ``background`` ``(B, 3, H, W)`` or
        None, and ``candidates`` (:class:`PoseCandidates`). ``averaged_texture``: see
        :meth:`draw_texture_averaging`."""
        features = self.encode(images)
        shape_code = self.shape_code(features["shape"])
        texture_code = self.texture_code(features["texture"])
        background_code = self.background_code(features["background"])
        scale = self.scale(features["shape"])
        return {
            "features": features["pose"],
            "shape_code": shape_code,
            "texture_code": texture_code,
            "background_code": background_code,
            "scale": scale,
            "verts": self.shape(shape_code) * scale[:, None, :],
            "texture": self.texture(texture_code, averaged_texture),
            "background": self.background(background_code),
            "candidates": self.poses(features["pose"]),
        }

    def encode(self, images: Tensor) -> Dict[str, Tensor]:
        """Features ``(B, F)`` per branch (``shape``, which also feeds the scale, ``texture``, ``background``,
        ``pose``): one tensor for all with a shared encoder, one encoder's each otherwise."""
        if isinstance(self.encoder, nn.ModuleDict):
            return {name: self.encoder[name](images) if name in self.encoder else None for name in ENCODER_BRANCHES}
        features = self.encoder(images)
        return dict.fromkeys(ENCODER_BRANCHES, features)

    def render(self, verts: Tensor, textures: Tensor, poses: Pose,
               background: Optional[Tensor] = None) -> "invrender.CompositeResult":
        """Renders posed textured meshes with :class:`invrender.LayeredRenderer` (the model renders nothing
        by itself).

        Args:
            verts: ``(N, V, 3)`` object-space vertices of the template's topology (``self.faces``).
            textures: ``(N, 3, Ht, Wt)`` UV images, mapped through the template's spherical UVs
                (``self.uvs``, per face corner) and sampled bilinearly by the renderer.
            poses: :class:`Pose` with ``rotation`` ``(N, 3, 3)`` and view-space ``translation`` ``(N, 3)``:
                ``A(x) = R x + t`` seen by the camera at ``config.camera_distance``.
            background: ``(N, 3, H, W)`` or None (``config.background_color``).

        Returns:
            :class:`invrender.CompositeResult` ``(image (N, 3, H, W), mask (N, 1, H, W))``.
        """
        return self.renderer(verts, self.faces, self.uvs.to(verts.dtype), textures, rotation=poses.rotation,
                             translation=poses.translation, background=background)

    def render_candidates(self, prediction: Dict[str, object], detach_object: bool = False) -> Tuple[Tensor, Tensor]:
        """Renders each image's object from its K pose candidates: images ``(B, K, 3, H, W)`` and masks
        ``(B, K, 1, H, W)``. ``detach_object`` cuts the gradient to the mesh, texture and background (P-step)."""
        verts, texture, background = prediction["verts"], prediction["texture"], prediction["background"]
        if detach_object:
            verts, texture = verts.detach(), texture.detach()
            background = background.detach() if background is not None else None
        cand: PoseCandidates = prediction["candidates"]
        B, K = cand.probabilities.shape

        def repeat(t):
            return t.unsqueeze(1).expand(B, K, *t.shape[1:]).reshape(B * K, *t.shape[1:])

        poses = Pose(cand.rotation.reshape(B * K, 3, 3), cand.translation.reshape(B * K, 3))
        image, mask = self.render(repeat(verts), repeat(texture), poses,
                                  repeat(background) if background is not None else None)
        return image.reshape(B, K, *image.shape[1:]), mask.reshape(B, K, *mask.shape[1:])

    def pose_step_losses(self, prediction: Dict[str, object], images: Tensor, perceptual=None) -> Dict[str, Tensor]:
        """P-step (section 3.3, eq. 3): ``sum_k p_k L_rec(I, I_k) + lambda_uni L_uni``, averaged over the batch.
        The object (mesh, texture, background) is detached, so only the pose branches and the encoder
        receive gradients."""
        c = self.config
        rendered, _ = self.render_candidates(prediction, detach_object=True)
        B, K = rendered.shape[:2]
        flat = rendered.reshape(B * K, *rendered.shape[2:])
        target = images.unsqueeze(1).expand_as(rendered).reshape(B * K, *images.shape[1:])
        if isinstance(perceptual, PerceptualLoss) and perceptual.enabled and c.perceptual_weight > 0:
            # Each image's VGG features once, without gradient, compared with its K candidates (not K copies
            # of every image through VGG): the same per-candidate losses and gradients.
            rec = reconstruction_loss(flat, target, None, c.rgb_weight)
            rec = rec + c.perceptual_weight * perceptual(flat, target_features=perceptual.features(images))
        else:
            rec = reconstruction_loss(flat, target, perceptual, c.rgb_weight, c.perceptual_weight)
        rec = rec.reshape(B, K)
        probabilities = prediction["candidates"].probabilities
        losses = {"reconstruction": (probabilities * rec).sum(1).mean(),
                  "uniform": c.uniform_weight * uniform_loss(probabilities)}
        losses["total"] = losses["reconstruction"] + losses["uniform"]
        return losses

    def step_3d_losses(self, prediction: Dict[str, object], images: Tensor, perceptual=None, swap: bool = True,
                       averaged_texture: bool = False,
                       generator: Optional[torch.Generator] = None) -> Dict[str, Tensor]:
        """3D-step (section 3.3, eq. 1): ``L_rec`` from the most likely candidate, ``lambda_reg L_reg`` and, with
        ``swap``, ``lambda_swap L_swap`` (:meth:`swap_losses`, which also fills the memory bank;
        ``averaged_texture`` is this iteration's texture averaging, applied to the neighbours too, code). The
        pose is detached (selected by argmax), so only the shape, texture, background and scale branches and
        the encoder receive gradients."""
        c = self.config
        cand: PoseCandidates = prediction["candidates"]
        pose, _ = select_pose(PoseCandidates(*(t.detach() for t in cand)))
        image, _ = self.render(prediction["verts"], prediction["texture"], pose, prediction["background"])
        losses = {"reconstruction": reconstruction_loss(image, images, perceptual, c.rgb_weight,
                                                        c.perceptual_weight).mean(),
                  "regularization": regularization_loss(prediction["verts"], self.faces, c.laplacian_weight,
                                                        c.normal_weight)}
        if swap and c.swap_weight > 0:
            swap_terms = self.swap_losses(prediction, images, pose, perceptual, averaged_texture, generator)
            losses["swap"] = c.swap_weight * (swap_terms["swap_shape"] + swap_terms["swap_texture"])
        losses["total"] = sum(losses.values())
        return losses

    def swap_losses(self, prediction: Dict[str, object], images: Tensor, pose: Pose, perceptual=None,
                    averaged_texture: bool = False, generator: Optional[torch.Generator] = None) -> Dict[str, Tensor]:
        """Swap reconstruction ``L_swap`` (section 3.2, eq. 2; appendix B.2), per term, averaged over the batch.

        The batch (codes, scale, ``pose``, images; detached) is first pushed into the memory bank. For each
        instance a viewpoint bin is drawn; ``m_s`` / ``m_t`` are the bank entries in that bin nearest in
        shape / texture code. The neighbours' parameters are recomputed from their images with the current
        network, without gradient (section 3.2). Then:

        * ``swap_shape``: our shape (unscaled) with ``m_s``'s scale, texture, pose and background, compared
          with ``m_s``'s image (trains the shape branch);
        * ``swap_texture``: our texture on ``m_t``'s scaled shape, seen from ``m_t``'s pose over its
          background, compared with ``m_t``'s image (trains the texture branch).

        Instances whose drawn bin holds no entry contribute 0 (ours). Both terms are 0 while the shape or the
        texture code has no live value (code: "when latent spaces are small, codes are similar"). Not weighted.
        """
        c, bank = self.config, self.memory
        B = images.shape[0]
        background_code = prediction["background_code"]
        bank.push(shape_code=prediction["shape_code"], texture_code=prediction["texture_code"],
                  background_code=(background_code if background_code is not None
                                   else images.new_zeros(B, 0)),
                  scale=prediction["scale"], rotation=pose.rotation, translation=pose.translation, image=images)
        zero = images.new_zeros(())
        epoch, milestones = self.current_epoch, c.stage_milestones
        if code_size(epoch, milestones, c.shape_code_sizes) == 0 or \
                code_size(epoch, milestones, c.texture_code_sizes) == 0:
            return {"swap_shape": zero, "swap_texture": zero}
        bins = draw_viewpoint_bins(B, c.viewpoint_bins, generator, images.device)
        rotation = pose.rotation.detach()
        index_sh, found_sh = bank.neighbours("shape", prediction["shape_code"].detach(), rotation, bins,
                                             c.viewpoint_bins, c.min_swap_angle)
        index_tx, found_tx = bank.neighbours("texture", prediction["texture_code"].detach(), rotation, bins,
                                             c.viewpoint_bins, c.min_swap_angle)
        target_sh, target_tx = bank.image[index_sh].to(images.dtype), bank.image[index_tx].to(images.dtype)
        with torch.no_grad():
            nb_sh, nb_tx = self.predict(target_sh, averaged_texture), self.predict(target_tx, averaged_texture)
        pose_sh, _ = select_pose(nb_sh["candidates"])
        pose_tx, _ = select_pose(nb_tx["candidates"])
        verts_sh = prediction["verts"] / prediction["scale"][:, None, :] * nb_sh["scale"][:, None, :]
        image_sh, _ = self.render(verts_sh, nb_sh["texture"], pose_sh, nb_sh["background"])
        image_tx, _ = self.render(nb_tx["verts"], prediction["texture"], pose_tx, nb_tx["background"])
        loss_sh = reconstruction_loss(image_sh, target_sh, perceptual, c.rgb_weight, c.perceptual_weight)
        loss_tx = reconstruction_loss(image_tx, target_tx, perceptual, c.rgb_weight, c.perceptual_weight)
        return {"swap_shape": (loss_sh * found_sh).mean(), "swap_texture": (loss_tx * found_tx).mean()}

    def branch_parameters(self) -> Dict[str, list]:
        """Parameters by branch: ``encoder`` (updated by both steps), ``pose`` (rotation, translation and
        probability heads: the P-step's) and ``3d`` (shape, texture, background and scale heads, deformation
        field, generators: the 3D-step's). Every parameter is in exactly one."""
        pose = list(self.pose_heads.parameters())
        encoder = list(self.encoder.parameters())
        taken = {id(p) for p in pose + encoder}
        return {"encoder": encoder, "pose": pose,
                "3d": [p for p in self.parameters() if id(p) not in taken and p.requires_grad]}

    def configure_optimizers(self) -> Dict[str, torch.optim.Optimizer]:
        """One Adam over every trained parameter at the constant learning rate 1e-4 (appendix A.2; code)."""
        return {"main": torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=self.config.lr)}

    def train_step(self, images: Tensor, optimizers: Dict[str, torch.optim.Optimizer], perceptual=None,
                   generator: Optional[torch.Generator] = None,
                   reduce_gradients=None) -> Dict[str, Tensor]:
        """One iteration of the alternating optimisation (section 3.3): a P-step on even iterations, a 3D-step
        on odd ones (:func:`alternating_step` of the ``iteration`` buffer, which checkpoints carry), with this
        iteration's texture averaging (:meth:`draw_texture_averaging`). Gradients are reset to None first, so
        Adam leaves the other branch's parameters untouched (no momentum drift). ``reduce_gradients(params)``,
        when given, runs before the step (data parallelism). Returns the detached loss terms and ``step``
        (0 for a P-step, 1 for a 3D-step)."""
        step = alternating_step(int(self.iteration.item()))
        if perceptual is None:
            perceptual = self.perceptual  # warns once when it is off
        averaged = self.draw_texture_averaging(generator)
        optimizer = optimizers["main"]
        optimizer.zero_grad(set_to_none=True)
        prediction = self.predict(images, averaged)
        if step == "pose":
            losses = self.pose_step_losses(prediction, images, perceptual)
        else:
            losses = self.step_3d_losses(prediction, images, perceptual, averaged_texture=averaged,
                                         generator=generator)
        losses["total"].backward()
        if reduce_gradients is not None:
            reduce_gradients([p for p in self.parameters() if p.grad is not None])
        optimizer.step()
        self.iteration += 1
        out = {k: v.detach() for k, v in losses.items()}
        out["step"] = torch.tensor(STEPS.index(step))
        return out


# ------------------------------------------------------------------------------------------------
# Training task (``invrender train unicorn --config configs/unicorn_synthetic.yaml``)


class _Views(torch.utils.data.Dataset):
    """RGB views of a :class:`invrender.data.ShapeNetNMR` (or of a real-image dataset) as ``{"image" (3, H, W),
    "mask" (1, H, W), "index"}`` (no ``mask`` when the base has none; ``keys`` chooses the item's fields, e.g. UMR
    adds ``parts``), decoded once and kept in memory when ``cache`` (64x64 views are small; PNG decoding is not
    free)."""

    def __init__(self, base, cache: bool = False, keys: Tuple[str, ...] = ("image", "mask")):
        self.base = base
        self.keys = keys
        self.items = [self._load(i) for i in range(len(base))] if cache else None

    def _load(self, i):
        item = self.base[i]
        out = {key: item[key] for key in self.keys if key in item}
        out["index"] = torch.tensor(i, dtype=torch.int64)
        return out

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        return self.items[i] if self.items is not None else self._load(i)


def view_angles(rotation: Tensor) -> Tuple[Tensor, Tensor]:
    """Azimuth and elevation in degrees of object-to-view rotations ``(..., 3, 3)`` made by
    :func:`invrender.rotation_matrix` (any roll): the third row is the direction from the object to the camera,
    ``(sin(az) cos(el), sin(el), cos(az) cos(el))``. Azimuth in (-180, 180]."""
    back = rotation[..., 2, :]
    azimuth = torch.rad2deg(torch.atan2(back[..., 0], back[..., 2]))
    elevation = torch.rad2deg(torch.asin(back[..., 1].clamp(-1.0, 1.0)))
    return azimuth, elevation


def wrap_degrees(angle: Tensor) -> Tensor:
    """Angles in degrees wrapped to [-180, 180)."""
    return torch.remainder(angle + 180.0, 360.0) - 180.0


def one_view_per_object(dataset, generator: torch.Generator) -> List[int]:
    """UNICORN's ShapeNet test protocol draws one view per test object: the dataset index of a view drawn
    uniformly (by ``generator``) among each object's views, in object order."""
    views: Dict[int, List[int]] = {}
    for i, (k, _) in enumerate(dataset._index):
        views.setdefault(k, []).append(i)
    return [v[int(torch.randint(len(v), (), generator=generator))] for _, v in sorted(views.items())]


def ground_truth_mesh(dataset, k: int) -> Tuple[Tensor, Optional[Tensor]]:
    """The ground-truth surface of object ``k`` of a :class:`invrender.data.ShapeNetNMR`: its mesh ``verts (V, 3)``
    float32, ``faces (F, 3)`` int64 (``mesh.npz`` of the synthetic data), or, without one, its point cloud
    ``points (P, 3)`` float32 and ``None`` (``pointcloud.npz``: DVR's ShapeNet-NMR files, 100k points on the
    surface, in the frame ``world_mat`` maps from)."""
    import os

    import numpy as np

    from invrender.errors import MissingInputError

    _, synset, name = dataset.objects[k]
    path = os.path.join(dataset.root, synset, name, "mesh.npz")
    if os.path.isfile(path):
        with np.load(path) as npz:
            return torch.from_numpy(npz["verts"]).float(), torch.from_numpy(npz["faces"]).long()
    cloud = os.path.join(dataset.root, synset, name, "pointcloud.npz")
    if os.path.isfile(cloud):
        return dataset._pointcloud(cloud)["points"], None
    raise MissingInputError(f"unicorn eval: neither {path} nor {cloud} found; the Chamfer protocol needs "
                            f"ground-truth surfaces (mesh.npz, written by 'invrender data synth', or DVR's "
                            f"pointcloud.npz)")


def medoid_object(dataset, candidates: Optional[int] = 32, num_points: int = 2000,
                  generator: Optional[torch.Generator] = None) -> int:
    """The category's most typical training shape: among ``candidates`` objects of ``dataset`` (drawn with
    ``generator``; None: all), the one with the smallest mean Chamfer-L1 to the others, shapes compared in
    their common object frame with ``num_points`` points each. Returns its index in ``dataset.objects``."""
    from invrender import mesh as mesh_ops
    from invrender import metrics

    n = len(dataset.objects)
    if n == 0:
        raise ValueError("medoid_object: the dataset has no objects")
    pool = torch.randperm(n, generator=generator).tolist()[:candidates] if candidates else list(range(n))
    clouds = []
    for k in pool:
        v, f = ground_truth_mesh(dataset, k)
        cloud = (mesh_ops.sample_points(v[None], f, num_points, generator=generator)[0] if f is not None else
                 metrics._draw_points(v, num_points, generator))
        clouds.append(cloud)
    clouds = torch.stack(clouds)
    m = len(pool)
    i, j = torch.triu_indices(m, m, 1)
    d = torch.zeros(m, m)
    d[i, j] = d[j, i] = metrics.chamfer_l1(clouds[i], clouds[j]) if m > 1 else torch.zeros(0)
    return pool[int(d.sum(1).argmin())]


#: The data :class:`UnicornTask` reads (``data.kind``).
DATA_KINDS = ("shapenet", "cub", "p3d_car", "image_folder")


class SyntheticDataMixin:
    """``data.kind`` (one of the task's :attr:`data_kinds`, ``"shapenet"`` by default) and ``data.root`` (default:
    the embedded synthetic dataset, generated with ``data.synthetic``) of the tasks that train on ShapeNet-NMR-layout
    folders and real images (UNICORN, UMR)."""

    data_kinds: Tuple[str, ...] = DATA_KINDS

    @classmethod
    def _kind(cls, config) -> str:
        kind = config["data"].get("kind") or "shapenet"
        if kind not in cls.data_kinds:
            raise ConfigError(f"config key 'data.kind' must be one of {list(cls.data_kinds)}, got {kind!r}")
        return kind

    def _root(self, config):
        from invrender import synthetic

        data = config["data"]
        if data.get("root"):
            return data["root"]
        if self._kind(config) != "shapenet":
            raise ConfigError(f"config key 'data.root' must name the dataset folder for data.kind "
                              f"{self._kind(config)!r} (only ShapeNet has embedded synthetic data)")
        return synthetic.default_dataset(progress=False, **dict(data.get("synthetic") or {}))


class UnicornTask(SyntheticDataMixin):
    """Trains :class:`UnicornModel` with :class:`invrender.training.Trainer`.

    Config (defaults in :meth:`default_config`): ``model`` holds :class:`UnicornConfig` fields (``image_size``
    and ``batch_size`` come from ``data.image_size`` and the trainer's ``batch_size``); ``data.root`` is a
    ShapeNet-NMR-layout folder (default: the embedded synthetic data), ``data.categories`` the categories (one
    model per category, as in the paper), ``data.image_size`` 64 (the paper's); ``eval`` the test protocol
    (:meth:`evaluate`).

    ``data.kind`` selects the data (:data:`DATA_KINDS`): ``"shapenet"`` (default, above); ``"cub"``
    (:class:`invrender.data.CUB200` at ``data.root``), ``"p3d_car"`` (:class:`invrender.data.Pascal3DCar`) and
    ``"image_folder"`` (:class:`invrender.data.ImageFolder` at ``data.root``, masks at ``data.mask_root`` when
    set, squared by ``data.resize_mode``; every split is the same folder, as UNICORN's CompCars and LSUN have no
    held-out images). ``data.jitter`` and ``data.random_flip`` augment the training split of real images
    (UNICORN trains with both); the training views are then decoded at every read, not cached. Real images have
    no 3D ground truth: :meth:`evaluate` reports mask IoU only (:meth:`evaluate_masks`).

    The curriculum counts epochs as the released code does, an epoch being one pass over every (object, view)
    pair of the training split: before each step the model is moved to epoch ``step * batch_size // N``.

    Data parallel (``torchrun``): :meth:`UnicornModel.train_step` runs the forward, backward and Adam step
    itself, so the model is not wrapped (``wrap_ddp = False``); gradients are averaged over the processes
    before the step and rank 0's buffers (batchnorm statistics, memory bank, counters) are copied to the
    others after it, so every process keeps the same parameters and bank.
    """

    wrap_ddp = False

    def default_config(self):
        return {
            "model": {},
            "data": {"kind": "shapenet", "root": None, "categories": ["car"], "image_size": 64, "cache": True,
                     "synthetic": {"objects_per_category": 20, "views": 24, "image_size": 64},
                     "mask_root": None, "resize_mode": "pad", "jitter": False, "random_flip": False},
            "eval": {"num_points": 100_000, "icp_num_points": 10_000, "seed": 0, "max_objects": None,
                     "spread_pairs": None, "medoid_candidates": 32},
            "batch_size": 32, "steps": 1000, "vis_every": 250, "ckpt_every": 250, "log_every": 10,
        }

    def config_schema(self):
        """Types of the keys :meth:`default_config` leaves out: under ``model`` every :class:`UnicornConfig`
        field but ``image_size`` and ``batch_size``; under ``data`` and ``eval`` the keys the task reads."""
        import dataclasses
        import typing
        from typing import List, Union

        from invrender import synthetic

        hints = typing.get_type_hints(UnicornConfig)
        model = {f.name: hints[f.name] for f in dataclasses.fields(UnicornConfig)
                 if f.name not in ("image_size", "batch_size")}
        synth = synthetic.default_dataset_schema()
        data = {"kind": str, "root": Optional[str], "categories": Union[str, List[str], None], "image_size": int,
                "cache": bool, "synthetic": synth, "mask_root": Optional[str], "resize_mode": str, "jitter": bool,
                "random_flip": bool}
        ev = {"num_points": int, "icp_num_points": Optional[int], "seed": int, "max_objects": Optional[int],
              "spread_pairs": Optional[int], "medoid_candidates": Optional[int]}
        return {"model": model, "data": data, "eval": ev}

    def _base(self, config, split):
        from invrender.data import CUB200, ImageFolder, Pascal3DCar, ShapeNetNMR

        data, kind = config["data"], self._kind(config)
        size = int(data.get("image_size", 64))
        augment = dict(jitter=bool(data.get("jitter")), random_flip=bool(data.get("random_flip")))
        if kind == "cub":
            return CUB200(self._root(config), split=split, image_size=size, **augment)
        if kind == "p3d_car":
            return Pascal3DCar(self._root(config), split=split, image_size=size, **augment)
        if kind == "image_folder":  # no held-out split: augment the training reads only
            train = split == "train"
            return ImageFolder(self._root(config), image_size=size, mask_root=data.get("mask_root"),
                               resize_mode=data.get("resize_mode") or "pad", jitter=augment["jitter"] and train,
                               random_flip=augment["random_flip"] and train)
        return ShapeNetNMR(self._root(config), categories=data.get("categories"), split=split, image_size=size)

    def _val_base(self, config, test_base):
        """The validation split beside ``test_base`` (same root and categories), or None when it is empty:
        no category has a non-empty ``softras_val.lst`` / ``val.lst``. Real images: CUB's and Pascal3D+'s val
        ``.mat`` when present; none for image folders (one split)."""
        import os

        from invrender.data.shapenet import read_split_list

        kind = self._kind(config)
        if kind == "image_folder":
            return None
        if kind != "shapenet":
            try:
                return self._base(config, "val")
            except FileNotFoundError:
                return None

        for synset in test_base.categories:
            for name in ("softras_val.lst", "val.lst"):
                lst = os.path.join(test_base.root, synset, name)
                if os.path.isfile(lst):
                    if read_split_list(lst):
                        return self._base(config, "val")
                    break  # the one ShapeNetNMR reads (softras_ first), and it is empty
        return None

    def dataset(self, config, split):
        """RGB views on white ``(3, R, R)`` with their masks (``data.image_size``, 64 by default) of the
        ShapeNet-NMR-layout folder (or of the real images of ``data.kind``); the training views are decoded once
        when ``data.cache``, unless they are augmented (``data.jitter``, ``data.random_flip``: drawn per read)."""
        data = config["data"]
        augmented = self._kind(config) != "shapenet" and (data.get("jitter") or data.get("random_flip"))
        cache = split == "train" and bool(data.get("cache", True)) and not augmented
        return _Views(self._base(config, split), cache=cache)

    def model_config(self, config) -> UnicornConfig:
        fields = dict(config.get("model") or {})
        fields["image_size"] = int(config["data"].get("image_size", 64))
        fields["batch_size"] = int(config.get("batch_size", 32))
        return UnicornConfig(**fields)

    def build(self, config, device):
        self.train_size = len(self._base(config, "train"))  # (object, view) pairs: the epoch's length
        self.batch_size = int(config.get("batch_size", 32))
        model = UnicornModel(self.model_config(config)).to(device)
        return model, model.configure_optimizers()

    def epoch_of(self, step: int) -> int:
        """The curriculum's epoch before training step ``step`` (samples seen // training pairs)."""
        return step * self.batch_size // self.train_size

    def train_step(self, model, batch, optimizers, step):
        from invrender.training import average_gradients, broadcast_buffers, unwrap

        model = unwrap(model)
        model.set_epoch(self.epoch_of(step))
        terms = model.train_step(batch["image"], optimizers, reduce_gradients=average_gradients)
        broadcast_buffers(model)
        # The trainer logs "step" itself: the kind of step is logged as the share of 3D-steps.
        terms["share_3d_steps"] = terms.pop("step").float()
        terms["epoch"] = float(model.current_epoch)
        return terms

    @torch.no_grad()
    def evaluate_masks(self, model, config, out_dir):
        """The evaluation of real images (``data.kind`` other than shapenet), which have no 3D ground truth:
        the rendered silhouette of the most likely pose against the dataset's mask on the test split (every
        image, or ``eval.max_objects`` drawn without replacement with ``eval.seed``):

        * ``mask_iou``: soft IoU (:func:`invrender.metrics.mask_iou`), averaged over the images;
        * ``mask_iou_hard``: the silhouette binarised at 0.5 first (UNICORN's CUB protocol, ``ProxyEvaluator``,
          which compares at 256x256 with the rendering upsampled; here at ``data.image_size``);
        * ``template_mask_iou``: the learning-free reference, the soft IoU of the initial template (the
          ellipsoid, unscaled and centred) seen from the best of the K reference viewpoints of each image;
        * ``test_objects``: the number of images; without masks (an image folder without ``data.mask_root``)
          only this and the pictures.

        Writes ``reconstructions.png`` (:meth:`visualize` of the first 8 evaluated images) into ``out_dir``."""
        import os

        from invrender import io, metrics

        ev = dict(self.default_config()["eval"], **(config.get("eval") or {}))
        base = self._base(config, "test")
        chosen = list(range(len(base)))
        if ev["max_objects"] is not None and int(ev["max_objects"]) < len(base):
            g = torch.Generator().manual_seed(int(ev["seed"]))
            chosen = sorted(torch.randperm(len(base), generator=g)[:int(ev["max_objects"])].tolist())
        device = next(model.parameters()).device
        refs = torch.deg2rad(model.pose_heads.reference_angles)  # (K, 3): the template from each reference view
        K = len(refs)
        reference_poses = Pose(invrender.rotation_matrix(*refs.unbind(-1)), torch.zeros_like(refs))
        template = model.render(model.template_verts[None].expand(K, -1, -1), refs.new_ones(K, 3, 2, 2),
                                reference_poses).mask  # (K, 1, H, W)
        ious = {"mask_iou": [], "mask_iou_hard": [], "template_mask_iou": []}
        preview = None
        for start in range(0, len(chosen), 32):
            items = [base[i] for i in chosen[start:start + 32]]
            images = torch.stack([it["image"] for it in items]).to(device)
            if preview is None:
                preview = images[:8]
            if "mask" in items[0]:
                masks = torch.stack([it["mask"] for it in items]).to(device)
                rendered = self.reconstruct(model, images)["mask"]
                ious["mask_iou"].append(metrics.mask_iou(rendered, masks))
                ious["mask_iou_hard"].append(metrics.mask_iou(rendered, masks, soft=False))
                pairs = metrics.mask_iou(template[None].expand(len(masks), -1, -1, -1, -1).flatten(0, 1),
                                         masks[:, None].expand(-1, K, -1, -1, -1).flatten(0, 1))
                ious["template_mask_iou"].append(pairs.view(-1, K).max(dim=1).values)
        out = {"test_objects": len(chosen), "data_kind": self._kind(config)}
        out.update({k: float(torch.cat(v).mean()) for k, v in ious.items() if v})
        grid = self.visualize(model, {"image": preview}, out_dir, 0)["reconstructions"]
        io.save_image(os.path.join(out_dir, "reconstructions.png"), grid)
        if "mask_iou" in out:
            print(f"mask IoU on {len(chosen)} test images: model {out['mask_iou']:.4f} "
                  f"(hard {out['mask_iou_hard']:.4f}), template (ellipsoid) {out['template_mask_iou']:.4f}")
        else:
            print(f"no masks: wrote the reconstructions of {len(chosen)} test images")
        return out

    @torch.no_grad()
    def reconstruct(self, model: "UnicornModel", images: Tensor) -> Dict[str, object]:
        """The model's reading of ``images``: the prediction, the most likely pose and its rendering."""
        prediction = model.predict(images, model.draw_texture_averaging())
        pose, _ = select_pose(prediction["candidates"])
        image, mask = model.render(prediction["verts"], prediction["texture"], pose, prediction["background"])
        return {"prediction": prediction, "pose": pose, "image": image, "mask": mask}

    def visualize(self, model, batch, out_dir, step):
        """One row per input: input | reconstruction | the textured mesh from three other views (azimuth +90,
        +180, +270 degrees about the object's vertical axis) | UV texture; the first mesh as an OBJ."""
        import os

        from invrender import io

        images = batch["image"]
        out = self.reconstruct(model, images)
        pred, pose = out["prediction"], out["pose"]
        others = []
        for turn in (90.0, 180.0, 270.0):
            spin = invrender.rotation_matrix(torch.full((len(images),), math.radians(turn), device=images.device,
                                                        dtype=images.dtype))
            others.append(model.render(pred["verts"], pred["texture"], Pose(pose.rotation @ spin, pose.translation),
                                       pred["background"])[0])
        uv = F.interpolate(pred["texture"], size=images.shape[-2:], mode="bilinear", align_corners=False)
        rows = torch.stack([images, out["image"], *others, uv], 1)  # (B, 6, 3, H, W)
        verts = pred["verts"][0].detach().cpu()
        io.save_mesh(os.path.join(out_dir, "mesh0.obj"), verts, model.faces.cpu())
        return {"reconstructions": io.image_grid(rows.flatten(0, 1).clamp(0, 1).cpu(), nrow=rows.shape[1])}

    @torch.no_grad()
    def write_pictures(self, model, config, out_dir: str, show: int = 6, frames: int = 24) -> Dict[str, object]:
        """UNICORN's pictures of ``show`` test objects, one view each (the evaluation's seeded draw), into
        ``out_dir``; returns the written files' names (relative to ``out_dir``):

        * ``reconstructions.png``: a row per input: input | reconstruction | the textured mesh from three other
          views (+90, +180, +270 degrees about its vertical axis) | its UV texture map;
        * ``turntable_elev30.gif`` / ``turntable_elev0.gif``: per object (columns) the ground-truth mesh shaded
          (top), the learned mesh shaded (middle) and the learned textured mesh (bottom), the camera turning a full
          circle at elevation 30 degrees (the data's) and 0 (never seen). The learned mesh is put in the true object
          frame by its own pose: ``R_true^T R_pred``, so both turn alike when the predicted pose is right;
        * ``meshes/test<k>_learned.obj`` (+ ``.mtl`` and the ``.png`` UV texture) and ``.glb``, and
          ``meshes/test<k>_ground_truth.obj``.
        """
        import os
        import tempfile

        from invrender import io
        from invrender.ops import rotation_matrix
        from invrender.renderers import render_shaded

        base = self._base(config, "test")
        seed = int((config.get("eval") or {}).get("seed", 0))
        chosen = one_view_per_object(base, torch.Generator().manual_seed(seed))[:show]
        items = [base[i] for i in chosen]
        device = next(model.parameters()).device
        images = torch.stack([it["image"] for it in items]).to(device)
        true_rotation = torch.stack([it["camera"]["rotation"] for it in items]).to(device)
        size = images.shape[-1]
        zoom = max(1, 128 // size)

        def zoomed(x):  # pictures of about 128 pixels a side, pixels kept sharp
            return F.interpolate(x.float().clamp(0, 1), scale_factor=zoom, mode="nearest")
        with tempfile.TemporaryDirectory() as tmp:
            grid = self.visualize(model, {"image": images}, tmp, 0)["reconstructions"]
        io.save_image(os.path.join(out_dir, "reconstructions.png"), zoomed(grid[None])[0])

        prediction = model.predict(images)
        pose, _ = select_pose(prediction["candidates"])
        verts = prediction["verts"] @ (true_rotation.transpose(1, 2) @ pose.rotation).transpose(1, 2)  # true frame
        texture = prediction["texture"]
        truth = [ground_truth_mesh(base, base._index[i][0]) for i in chosen]
        n = len(items)
        files: Dict[str, object] = {}
        for elevation in (30, 0):
            shots = []
            for k in range(frames):
                turn = rotation_matrix(torch.full((n,), 2 * math.pi * k / frames, device=device),
                                       torch.full((n,), math.radians(elevation), device=device))
                gt = torch.cat([render_shaded(v.to(device), f.to(device), turn[j:j + 1], size)[0]
                                for j, (v, f) in enumerate(truth) if f is not None] or [images[:0]])
                shaded = render_shaded(verts, model.faces, turn, size)[0]
                textured = model.render(verts, texture, Pose(turn, torch.zeros(n, 3, device=device)))[0]
                shots.append(io.image_grid(zoomed(torch.cat([gt, shaded, textured])), nrow=n, padding=4,
                                            pad_value=1.0))
            name = f"turntable_elev{elevation}.gif"
            io.save_gif(os.path.join(out_dir, name), torch.stack(shots), fps=8)
            files[f"elev{elevation}"] = name

        meshes = []
        for k in range(n):
            entry = {}
            for ext in ("obj", "glb"):
                name = f"meshes/test{k}_learned.{ext}"
                io.save_mesh(os.path.join(out_dir, name), verts[k].cpu(), model.faces.cpu(), uvs=model.uvs.cpu(),
                             texture=texture[k].clamp(0, 1).cpu())
                entry[f"learned ({ext.upper()}, textured)"] = name
            v, f = truth[k]
            if f is not None:
                name = f"meshes/test{k}_ground_truth.obj"
                io.save_mesh(os.path.join(out_dir, name), v, f)
                entry["ground truth"] = name
            meshes.append(entry)
        files["meshes"] = meshes
        files["reconstructions"] = "reconstructions.png"
        return files

    @torch.no_grad()
    def evaluate(self, model, config, out_dir):
        """UNICORN's ShapeNet protocol (section 4.1; reference notes) on the test split, one view per test
        object drawn with ``eval.seed`` (:func:`one_view_per_object`).

        Shapes are compared in the view frame of that image (the prediction posed by its most likely
        candidate, the ground truth by the true camera), sampled with ``eval.num_points`` points per
        surface (100k in the paper):

        * ``chamfer_l1``: Chamfer-L1 x10, as posed; ``chamfer_l1_icp``: x10 after normalising the prediction
          and aligning it by gradient ICP (:func:`invrender.metrics.chamfer_l1_meshes`, ``align=True``;
          ``eval.icp_num_points`` fit the transform), the paper's number;
        * ``mask_iou``: soft IoU of the rendered silhouette and the true mask;
        * pose: the learned canonical frame is arbitrary, so azimuths are compared after one azimuth offset
          (``pose_azimuth_offset_deg``, 1-degree grid: the one that minimises the median azimuth error,
          :func:`fit_azimuth_offset`). It is fitted on the validation split, one view per val object drawn
          the same way (same seed and ``eval.max_objects``), and then applied unchanged to the test views, so
          the test views do not choose their own offset; when the val split is empty (no val list, or empty
          lists) it falls back to the test views, which is optimistic. ``pose_offset_fitted_on`` records
          which ("val" or "test") and ``pose_offset_objects`` on how many views.
          ``pose_azimuth_median_deg`` and ``pose_elevation_median_deg`` are median absolute errors on the
          test views, ``pose_rotation_median_deg`` the median geodesic error against the offset true rotation
          and ``pose_accuracy_15deg`` / ``_30deg`` the fraction under 15 / 30 degrees of it;
        * learning-free references under the same protocol: ``template_chamfer_l1(_icp)``, the initial
          template (the ellipsoid, unscaled, seen by the true camera); ``medoid_chamfer_l1(_icp)``, the
          category's most typical training shape (:func:`medoid_object` over ``eval.medoid_candidates``
          training objects; a mean of meshes is not defined) seen by the true camera: what a model that
          learned one good shape for the whole category, and the poses, would score; and
          ``spread_chamfer_l1(_icp)``, the
          mean Chamfer-L1 between ``eval.spread_pairs`` (default: as many as objects) random pairs of distinct
          ground-truth test shapes in their common object frame (the error of answering with another
          instance of the category).

        Ground truth is each object's ``mesh.npz``, or its ``pointcloud.npz`` when there is none (DVR's
        ShapeNet-NMR: 100k points, drawn down to ``eval.num_points``; the medoid and spread references need
        meshes and are left out then); true cameras are the items' ``camera["rotation"]`` (``world_mat`` in
        invrender's convention).

        Every sampling uses its own generator seeded from ``eval.seed`` (views: seed, model: seed + 1,
        template: seed + 2, spread: seed + 3, medoid: seed + 4), so references are reproducible on their own.

        The pictures of :meth:`write_pictures` go to ``out_dir``; ``files`` lists them.
        """

        from invrender import metrics

        if self._kind(config) != "shapenet":  # real images: no 3D ground truth
            return self.evaluate_masks(model, config, out_dir)
        ev = dict(self.default_config()["eval"], **(config.get("eval") or {}))
        seed, num_points, icp_points = int(ev["seed"]), int(ev["num_points"]), ev["icp_num_points"]
        base = self._base(config, "test")
        chosen = one_view_per_object(base, torch.Generator().manual_seed(seed))
        if ev["max_objects"] is not None:
            chosen = chosen[:int(ev["max_objects"])]
        device = next(model.parameters()).device
        items = [base[i] for i in chosen]
        objects = [base._index[i][0] for i in chosen]
        images = torch.stack([it["image"] for it in items]).to(device)
        masks = torch.stack([it["mask"] for it in items]).to(device)
        gt_rotation = torch.stack([it["camera"]["rotation"] for it in items]).to(device)
        gt_meshes = [ground_truth_mesh(base, k) for k in objects]
        gt_view = [(v.to(device) @ r.T, None if f is None else f.to(device)) for (v, f), r in zip(gt_meshes, gt_rotation)]

        out = {"test_objects": len(items)}
        recs = [self.reconstruct(model, images[i:i + 32]) for i in range(0, len(images), 32)]
        verts = torch.cat([r["prediction"]["verts"] for r in recs])
        rotation = torch.cat([r["pose"].rotation for r in recs])
        translation = torch.cat([r["pose"].translation for r in recs])
        rendered_mask = torch.cat([r["mask"] for r in recs])
        pred_view = verts @ rotation.transpose(1, 2) + translation[:, None]
        faces = model.faces

        def chamfer(pred, pred_faces, gt, gen_seed):
            gt_v, gt_f = [g[0] for g in gt], [g[1] for g in gt]
            gt_f = None if any(f is None for f in gt_f) else gt_f  # point clouds (DVR's ShapeNet-NMR)
            plain = metrics.chamfer_l1_meshes(pred, pred_faces, gt_v, gt_f, num_points,
                                              generator=torch.Generator().manual_seed(gen_seed))
            icp = metrics.chamfer_l1_meshes(pred, pred_faces, gt_v, gt_f, num_points, align=True,
                                            generator=torch.Generator().manual_seed(gen_seed),
                                            icp_num_points=icp_points)
            return 10 * float(plain.mean()), 10 * float(icp.mean())

        out["chamfer_l1"], out["chamfer_l1_icp"] = chamfer(pred_view, faces, gt_view, seed + 1)
        out["mask_iou"] = float(metrics.mask_iou(rendered_mask, masks).mean())

        template = model.template_verts[None] @ gt_rotation.transpose(1, 2)
        out["template_chamfer_l1"], out["template_chamfer_l1_icp"] = chamfer(template, faces, gt_view, seed + 2)

        train = self._base(config, "train")
        if len(train.objects):
            k = medoid_object(train, ev["medoid_candidates"], generator=torch.Generator().manual_seed(seed + 4))
            mv, mf = ground_truth_mesh(train, k)
            if mf is not None:
                out["medoid_chamfer_l1"], out["medoid_chamfer_l1_icp"] = chamfer(
                    mv.to(device)[None] @ gt_rotation.transpose(1, 2), mf.to(device), gt_view, seed + 4)
            out["medoid_object"] = train.objects[k][2]

        unique = sorted(set(objects))
        if len(unique) >= 2:
            g = torch.Generator().manual_seed(seed + 3)
            pairs = []
            for _ in range(int(ev["spread_pairs"] or len(unique))):
                a, b = torch.randperm(len(unique), generator=g)[:2].tolist()
                pairs.append((unique[a], unique[b]))
            source = [ground_truth_mesh(base, a) for a, _ in pairs]
            target = [ground_truth_mesh(base, b) for _, b in pairs]
        if len(unique) >= 2 and all(f is not None for _, f in source):  # meshes (point clouds: no reference)
            out["spread_chamfer_l1"], out["spread_chamfer_l1_icp"] = chamfer(
                [v.to(device) for v, _ in source], [f.to(device) for _, f in source],
                [(v.to(device), f.to(device)) for v, f in target], seed + 3)

        val = self._val_base(config, base)
        if val is None:
            offset, fitted_on, fit_views = fit_azimuth_offset(rotation, gt_rotation), "test", len(items)
        else:
            val_chosen = one_view_per_object(val, torch.Generator().manual_seed(seed))
            if ev["max_objects"] is not None:
                val_chosen = val_chosen[:int(ev["max_objects"])]
            val_items = [val[i] for i in val_chosen]
            val_images = torch.stack([it["image"] for it in val_items]).to(device)
            val_gt = torch.stack([it["camera"]["rotation"] for it in val_items]).to(device)
            val_rotation = torch.cat([self.reconstruct(model, val_images[i:i + 32])["pose"].rotation
                                      for i in range(0, len(val_images), 32)])
            offset, fitted_on, fit_views = fit_azimuth_offset(val_rotation, val_gt), "val", len(val_items)
        out.update(pose_errors(rotation, gt_rotation, offset=offset))
        out["pose_offset_fitted_on"], out["pose_offset_objects"] = fitted_on, fit_views
        out["category"] = ",".join(base.category_names)

        out["files"] = self.write_pictures(model, config, out_dir)
        _print_beside(out)
        return out


def fit_azimuth_offset(rotation: Tensor, gt_rotation: Tensor) -> float:
    """The azimuth offset in degrees (1-degree grid, ``[0, 360)``) of predicted object-to-view rotations
    ``(N, 3, 3)`` against the true ones that minimises the median absolute azimuth error."""
    az, _ = view_angles(rotation.double())
    gt_az, _ = view_angles(gt_rotation.double())
    offsets = torch.arange(360, dtype=torch.float64, device=az.device)
    errors = wrap_degrees(az[None] - gt_az[None] - offsets[:, None]).abs()  # (360, N)
    return float(offsets[int(errors.median(dim=1).values.argmin())])


def pose_errors(rotation: Tensor, gt_rotation: Tensor, offset: Optional[float] = None) -> Dict[str, float]:
    """Pose errors of predicted object-to-view rotations ``(N, 3, 3)`` against the true ones, up to the azimuth
    ``offset`` in degrees; by default the one fitted on these same views (:func:`fit_azimuth_offset`, which is
    optimistic: :meth:`UnicornTask.evaluate` fits it on the val split)."""
    if offset is None:
        offset = fit_azimuth_offset(rotation, gt_rotation)
    offset = float(offset)
    az, el = view_angles(rotation.double())
    gt_az, gt_el = view_angles(gt_rotation.double())
    az_error = wrap_degrees(az - gt_az - offset).abs()
    aligned = invrender.rotation_matrix(torch.deg2rad(gt_az + offset), torch.deg2rad(gt_el))
    geodesic = rotation_angle(rotation.double(), aligned)
    return {"pose_azimuth_offset_deg": offset,
            "pose_azimuth_median_deg": float(az_error.median()),
            "pose_elevation_median_deg": float((el - gt_el).abs().median()),
            "pose_rotation_median_deg": float(geodesic.median()),
            "pose_accuracy_15deg": float((geodesic < 15).double().mean()),
            "pose_accuracy_30deg": float((geodesic < 30).double().mean())}


def _print_beside(out: Dict[str, object]) -> None:
    """The model's Chamfer-L1 beside the learning-free references, as a small table."""
    print(f"{'Chamfer-L1 x10':<24}{'posed':>10}{'with ICP':>10}")
    for name, key in (("model", "chamfer_l1"), ("template (ellipsoid)", "template_chamfer_l1"),
                      ("medoid training shape", "medoid_chamfer_l1"), ("category spread", "spread_chamfer_l1")):
        if key in out:
            print(f"{name:<24}{out[key]:>10.4f}{out[key + '_icp']:>10.4f}")


def _register():
    from invrender.training import register_task

    register_task("unicorn", UnicornTask)


_register()
