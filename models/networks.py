"""The few standard networks the models share: ResNet-18, VGG16 features, and UNICORN's perceptual loss.

torchvision does not import against this project's CPU torch, so the two architectures are written here,
with **torchvision's parameter and buffer names**, so a torchvision state dict loads as it is:

- :class:`ResNet18` — ``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer2.0.downsample.0`` / ``.1``, ..., ``fc``
  (He et al. 2016; the encoder of UNICORN and UMR, trained from scratch there).
- :class:`VGG16Features` — torchvision's ``features`` indices (``features.0`` ... ``features.28``) up to a named
  ReLU (Simonyan & Zisserman 2015, configuration D).
- :class:`DCGANDiscriminator` — DCGAN's image critic with spectral normalisation (IG-GAN and its baselines).
- :class:`PerceptualLoss` — UNICORN's perceptual term (monnier2022 section 3.2; monniert/unicorn:src/model/loss.py):
  ImageNet normalisation, frozen VGG16 to ``relu3_3``, features unit-normalised along channels, per-image mean
  squared difference. Off (a zero, with one warning) when no VGG16 weights file is given; nothing is downloaded.

Images are ``(B, C, H, W)`` as everywhere in invrender.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Callable, Dict, Iterable, Mapping, Optional, Union

import torch
from torch import Tensor, nn

from ..errors import MissingInputError

__all__ = ["BasicBlock", "DCGANDiscriminator", "PerceptualLoss", "ResNet18", "VGG16Features", "VGG16_LAYERS"]

PathLike = Union[str, "os.PathLike[str]"]


def _check_images(images: object, name: str, owner: str, channels: int, min_size: int) -> None:
    """Raise ValueError naming ``name`` unless ``images`` is a floating (B, channels, H, W) tensor, H, W >= min_size."""
    if not isinstance(images, Tensor):
        raise ValueError(f"{owner}: argument '{name}' must be a tensor, got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != channels:
        raise ValueError(f"{owner}: argument '{name}' must be (B, {channels}, H, W) images, "
                         f"got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"{owner}: argument '{name}' must be a floating tensor, got {images.dtype}")
    if min(images.shape[2:]) < min_size:
        raise ValueError(f"{owner}: argument '{name}' must be at least {min_size}x{min_size} pixels, "
                         f"got {images.shape[2]}x{images.shape[3]}")


def _load_matching(module: nn.Module, state_dict: Mapping[str, Tensor], ignored: Callable[[str], bool],
                   owner: str) -> None:
    """Copy ``state_dict`` into ``module`` after dropping the keys ``ignored`` accepts; raise ValueError naming
    every missing key, unexpected key and shape mismatch otherwise."""
    own = module.state_dict()
    given = {k: v for k, v in state_dict.items() if not ignored(k)}
    missing = sorted(set(own) - set(given))
    unexpected = sorted(set(given) - set(own))
    shapes = [f"{k}: expected {tuple(own[k].shape)}, got {tuple(given[k].shape)}"
              for k in sorted(set(own) & set(given)) if tuple(own[k].shape) != tuple(given[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {missing}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected}")
        if shapes:
            parts.append(f"shape mismatches [{'; '.join(shapes)}]")
        raise ValueError(f"{owner}: the state dict does not match torchvision's names for this network: "
                         + ", ".join(parts))
    module.load_state_dict(given, strict=True)


def _read_state_dict(path: PathLike, owner: str) -> Dict[str, Tensor]:
    if not os.path.isfile(path):
        raise MissingInputError(f"{owner}: weights file '{os.fspath(path)}' does not exist")
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"{owner}: '{os.fspath(path)}' holds a {type(state_dict).__name__}, not a state dict")
    return dict(state_dict)


# ------------------------------------------------------------------------------------------------
# ResNet-18
# ------------------------------------------------------------------------------------------------

def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.

    The shortcut is the identity, or ``downsample`` (1x1 convolution with the block's stride, then a norm layer)
    when the stride or the channel count changes.

    Args:
        in_channels, out_channels: channel counts of the input and output.
        stride: stride of ``conv1`` and of the shortcut; 2 halves H and W (rounding up).
        norm_layer: ``norm_layer(num_channels)`` builds each normalisation module.

    Shapes: ``(B, in_channels, H, W) -> (B, out_channels, ceil(H / stride), ceil(W / stride))``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1,
                 norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d):
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn1 = norm_layer(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.bn2 = norm_layer(out_channels)
        self.downsample: Optional[nn.Sequential] = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                norm_layer(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


class ResNet18(nn.Module):
    """ResNet-18 (He et al. 2016) with torchvision's parameter names.

    Stem: 7x7 stride-2 convolution to 64 channels, norm, ReLU, 3x3 stride-2 max pooling; then four stages
    (``layer1`` ... ``layer4``) of two :class:`BasicBlock` each with 64, 128, 256, 512 channels (stages 2-4 start
    with stride 2); then global average pooling. The total stride is 32, so 64x64 images (UNICORN) reach
    ``layer4`` as 2x2 maps and 224x224 ones as 7x7.

    Args:
        num_classes: None (default): no ``fc`` and :meth:`forward` returns the ``(B, 512)`` pooled features
            (UNICORN's encoder, trained from scratch); a number: a final ``fc`` linear layer and logits.
        in_channels: channels of the input images (3 for RGB).
        norm_layer: ``norm_layer(num_channels)`` builds every normalisation module (default BatchNorm2d).
        zero_init_residual: start each block's last norm layer at weight 0 so each residual branch starts as
            zero and every block as the identity (Goyal et al. 2017), as torchvision's option does.

    Initialisation: convolutions Kaiming-normal (fan out, ReLU gain), norm layers weight 1 and bias 0, ``fc``
    PyTorch's default.
    """

    out_features = 512  # width of the pooled features

    def __init__(self, num_classes: Optional[int] = None, in_channels: int = 3,
                 norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d, zero_init_residual: bool = False):
        super().__init__()
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                        or num_classes < 1):
            raise ValueError(f"ResNet18: argument 'num_classes' must be None or a positive int, got {num_classes!r}")
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"ResNet18: argument 'in_channels' must be a positive int, got {in_channels!r}")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        widths = (64, 128, 256, 512)
        previous = 64
        for i, width in enumerate(widths, start=1):
            stride = 1 if i == 1 else 2
            stage = nn.Sequential(BasicBlock(previous, width, stride, norm_layer),
                                  BasicBlock(width, width, 1, norm_layer))
            self.add_module(f"layer{i}", stage)
            previous = width
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc: Optional[nn.Linear] = nn.Linear(512, num_classes) if num_classes is not None else None

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock) and getattr(m.bn2, "weight", None) is not None:
                    nn.init.zeros_(m.bn2.weight)

    def forward(self, images: Tensor) -> Tensor:
        """Args:
            images: (B, in_channels, H, W) floating tensor, H and W >= 32 (the network's total stride).

        Returns:
            (B, 512) pooled features if ``num_classes`` is None, else (B, num_classes) logits.
        """
        _check_images(images, "images", "ResNet18", self.in_channels, 32)
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return x if self.fc is None else self.fc(x)

    def load_torchvision_state_dict(self, state_dict: Mapping[str, Tensor]) -> "ResNet18":
        """Load a torchvision ``resnet18`` state dict; its ``fc.*`` is ignored when this network has no ``fc``.

        Raises ValueError naming missing keys, unexpected keys and shape mismatches. Returns ``self``.
        """
        _load_matching(self, state_dict, lambda k: self.fc is None and k.startswith("fc."), "ResNet18")
        return self


# ------------------------------------------------------------------------------------------------
# VGG16
# ------------------------------------------------------------------------------------------------

# VGG16 (configuration D): output channels of each 3x3 convolution, "M" for a 2x2 max pooling. In torchvision's
# ``features`` every convolution is followed by its ReLU, which gives the indices below.
_VGG16_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")

#: Index in torchvision's ``vgg16().features`` of each named ReLU.
VGG16_LAYERS = {"relu1_2": 3, "relu2_2": 8, "relu3_3": 15, "relu4_3": 22, "relu5_3": 29}


class DCGANDiscriminator(nn.Module):
    """DCGAN's discriminator (Radford et al. 2016) with spectral normalisation (Miyato et al. 2018), as IG-GAN's
    (Lunz et al. 2020, supplement B.1) and its baselines' image critics.

    ``log2(image_size / 4)`` strided 4x4 convolutions (stride 2, padding 1) halve the image down to 4x4 while the
    channels double from ``channels`` (capped at ``8 * channels``), each followed by LeakyReLU(0.2); a last 4x4
    convolution without padding gives one logit per image. With ``spectral_norm`` (the paper's setting) every
    convolution is spectrally normalised and there is no batch normalisation (DCGAN's BatchNorm after every
    convolution but the first otherwise).

    Args:
        image_size: side of the square inputs, a power of two >= 8.
        in_channels: image channels (1 for IG-GAN's grey renders).
        channels: width of the first convolution (DCGAN: 64).
        spectral_norm: spectral normalisation instead of batch normalisation.

    Shapes: ``(B, in_channels, S, S) -> (B,)`` logits.
    """

    def __init__(self, image_size: int = 128, in_channels: int = 1, channels: int = 64, spectral_norm: bool = True):
        super().__init__()
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8 or \
                image_size & (image_size - 1):
            raise ValueError(f"DCGANDiscriminator: argument 'image_size' must be a power of two >= 8, got {image_size!r}")
        for name, value in (("in_channels", in_channels), ("channels", channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"DCGANDiscriminator: argument '{name}' must be a positive int, got {value!r}")
        self.image_size, self.in_channels = image_size, in_channels
        sn = nn.utils.spectral_norm if spectral_norm else (lambda m: m)
        layers, c_in, c_out, size = [], in_channels, channels, image_size
        first = True
        while size > 4:
            layers.append(sn(nn.Conv2d(c_in, c_out, 4, 2, 1, bias=spectral_norm or first)))
            if not spectral_norm and not first:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            c_in, c_out, size, first = c_out, min(2 * c_out, 8 * channels), size // 2, False
        layers.append(sn(nn.Conv2d(c_in, 1, 4, 1, 0)))
        self.main = nn.Sequential(*layers)

    def forward(self, images: Tensor) -> Tensor:
        _check_images(images, "images", "DCGANDiscriminator", self.in_channels, self.image_size)
        if tuple(images.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(f"DCGANDiscriminator: argument 'images' must be {self.image_size}x{self.image_size}, "
                             f"got {tuple(images.shape[-2:])}")
        return self.main(images).reshape(-1)


def _vgg16_min_size(last: str) -> int:
    """2^p for the p poolings before ``last``: the smallest image side that reaches it."""
    index, pools = -1, 0
    for item in _VGG16_CONFIG:
        index += 1 if item == "M" else 2
        if index >= VGG16_LAYERS[last]:
            return 2 ** pools
        pools += item == "M"
    raise AssertionError(last)


class VGG16Features(nn.Module):
    """The convolutional part of VGG16 (Simonyan & Zisserman 2015) up to a named ReLU, with torchvision's indices.

    ``features`` is an ``nn.Sequential`` whose layer ``i`` is layer ``i`` of torchvision's ``vgg16().features``, so
    ``features.0.weight`` ... load unchanged. No ImageNet normalisation here (see :class:`PerceptualLoss`).

    Args:
        last: the last layer kept, one of ``VGG16_LAYERS``: ``relu1_2`` (index 3), ``relu2_2`` (8),
            ``relu3_3`` (15, default), ``relu4_3`` (22), ``relu5_3`` (29).

    Shapes: ``(B, 3, H, W) -> (B, C, H / 2^p, W / 2^p)`` (floor at each pooling), with C = 64, 128, 256, 512, 512
    and p = 0, 1, 2, 3, 4 pooling layers before ``last``; H and W must be at least ``2^p``.
    """

    def __init__(self, last: str = "relu3_3"):
        super().__init__()
        if last not in VGG16_LAYERS:
            raise ValueError(f"VGG16Features: argument 'last' must be one of {sorted(VGG16_LAYERS)}, got {last!r}")
        self.last = last
        layers = []
        channels = 3
        for item in _VGG16_CONFIG:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, item, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                channels = item
            if len(layers) > VGG16_LAYERS[last]:
                break
        self.features = nn.Sequential(*layers)
        self.out_channels = channels
        self.min_size = _vgg16_min_size(last)

    def forward(self, images: Tensor) -> Tensor:
        """Args:
            images: (B, 3, H, W) floating tensor (ImageNet-normalised for pretrained weights), H, W >= ``min_size``.

        Returns:
            (B, out_channels, H', W') activations of the layer ``last``.
        """
        _check_images(images, "images", "VGG16Features", 3, self.min_size)
        return self.features(images)

    def load_torchvision_state_dict(self, state_dict: Mapping[str, Tensor]) -> "VGG16Features":
        """Load a torchvision ``vgg16`` state dict (or this module's own): ``classifier.*`` and the ``features.i.*``
        beyond ``last`` are ignored. Raises ValueError naming missing keys, unexpected keys and shape mismatches.
        Returns ``self``.
        """
        end = len(self.features)

        def ignored(key: str) -> bool:
            if key.startswith("classifier."):
                return True
            parts = key.split(".")
            return len(parts) == 3 and parts[0] == "features" and parts[1].isdigit() and int(parts[1]) >= end

        _load_matching(self, state_dict, ignored, "VGG16Features")
        return self

    @classmethod
    def from_file(cls, path: PathLike, last: str = "relu3_3") -> "VGG16Features":
        """Build the network up to ``last`` and load a torchvision VGG16 state dict saved with ``torch.save``
        (read with ``weights_only=True``, onto the CPU)."""
        return cls(last).load_torchvision_state_dict(_read_state_dict(path, "VGG16Features"))


# ------------------------------------------------------------------------------------------------
# Perceptual loss
# ------------------------------------------------------------------------------------------------

class PerceptualLoss(nn.Module):
    """UNICORN's perceptual loss: monnier2022 section 3.2 ("an L2 loss on the relu3_3 layer of a pre-trained VGG16",
    lambda_perc = 10); the input normalisation, unit features and reduction are the released code's
    (monniert/unicorn:src/model/loss.py, ``PerceptualLoss`` with its defaults).

    For images in [0, 1]: normalise with ImageNet's mean and std, run a frozen VGG16 to ``layer``, divide the
    features by their L2 norm over channels, ``f / (||f||_2 + eps)``, and average the squared difference of the two
    images' features over channels and pixels, **per image** — the official code's reduction
    (``loss.flatten(1).mean(1)``, ``sum_channels=False``, eps = 1e-10), which UNICORN then weights by the pose
    probabilities before averaging over the batch.

    The VGG16 is frozen (``requires_grad_(False)``, kept in eval mode by :meth:`train`). The loss is differentiable
    w.r.t. the images; the targets are data: their features are computed without gradient (``target_grad=True``
    differentiates them too), and can be computed once (:meth:`features`) and reused (``target_features``). The
    VGG16 weights are not training state: they are left out of this module's
    ``state_dict`` (and not required by ``load_state_dict``), so checkpoints stay small and load whether or not the
    run had a weights file.

    Args:
        weights_path: a torchvision ``vgg16`` state dict saved with ``torch.save`` (ImageNet weights; nothing is
            downloaded). None (default): the loss is **off** — ``enabled`` is False, :meth:`forward` returns zeros
            (attached to the graph) and warns once per instance that the perceptual term is off.
        layer: the VGG16 layer compared (``VGG16_LAYERS``; UNICORN uses ``relu3_3``).
        weights: ``"random"`` for randomly initialised VGG16 weights instead of a file: the same cost as the real
            loss, for benchmarks and tests (meaningless as a loss). Exclusive with ``weights_path``.
        eps: added to the feature norm (the official 1e-10).
    """

    def __init__(self, weights_path: Optional[PathLike] = None, layer: str = "relu3_3", *,
                 weights: Optional[str] = None, eps: float = 1e-10):
        super().__init__()
        if weights not in (None, "random"):
            raise ValueError(f"PerceptualLoss: argument 'weights' must be None or 'random', got {weights!r}")
        if weights is not None and weights_path is not None:
            raise ValueError("PerceptualLoss: give either 'weights_path' or weights='random', not both")
        if layer not in VGG16_LAYERS:
            raise ValueError(f"PerceptualLoss: argument 'layer' must be one of {sorted(VGG16_LAYERS)}, got {layer!r}")
        self.layer = layer
        self.eps = eps
        self.weights_path = None if weights_path is None else os.fspath(weights_path)
        self.vgg: Optional[VGG16Features] = None
        if weights_path is not None:
            state_dict = _read_state_dict(weights_path, "PerceptualLoss")
            self.vgg = VGG16Features(layer).load_torchvision_state_dict(state_dict)
        elif weights == "random":
            self.vgg = VGG16Features(layer)
        self.min_size = _vgg16_min_size(layer)
        if self.vgg is not None:
            self.vgg.requires_grad_(False)
            self.vgg.eval()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)
        self._warned = False
        self.register_state_dict_post_hook(_drop_frozen_vgg)
        self.register_load_state_dict_pre_hook(_fill_frozen_vgg)

    @property
    def enabled(self) -> bool:
        """Whether the loss is computed (a weights file or ``weights="random"`` was given)."""
        return self.vgg is not None

    def train(self, mode: bool = True) -> "PerceptualLoss":
        super().train(mode)
        if self.vgg is not None:
            self.vgg.eval()  # a frozen loss network stays in eval mode inside a training model
        return self

    def _features(self, images: Tensor) -> Tensor:
        x = (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        features = self.vgg(x)
        return features / (features.norm(dim=1, keepdim=True) + self.eps)

    def features(self, images: Tensor, *, grad: bool = False) -> Tensor:
        """The unit VGG16 features ``(N, C, h, w)`` the loss compares, of ``(N, 3, H, W)`` images in [0, 1];
        without gradient unless ``grad``. For targets used more than once: compute them once and pass them to
        :meth:`forward` as ``target_features`` (UNICORN's pose step compares each image with its K candidates).
        Raises RuntimeError when the loss is off (check :attr:`enabled`)."""
        _check_images(images, "images", "PerceptualLoss.features", 3, self.min_size)
        if self.vgg is None:
            raise RuntimeError("PerceptualLoss.features: the loss is off (no VGG16 weights file was given); "
                               "check 'enabled' first")
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            return self._features(images)

    def forward(self, images: Tensor, targets: Optional[Tensor] = None, *, target_features: Optional[Tensor] = None,
                target_grad: bool = False) -> Tensor:
        """Args:
            images: ``(N, 3, H, W)`` floating images in [0, 1], H, W >= ``min_size`` (4 for ``relu3_3``).
            targets: ``(N, 3, H, W)`` images of the same shape. Their features are computed without gradient
                (targets are data: nothing to backpropagate through the target half of VGG) unless
                ``target_grad`` is True, which makes the loss differentiable in the targets too.
            target_features: instead of ``targets``: their :meth:`features`, ``(M, C, h, w)`` with ``M`` dividing
                ``N``; target ``m`` is compared with the ``N / M`` consecutive images ``m N/M ... (m+1) N/M - 1``
                (e.g. the K pose candidates of each of M images, flattened image-major), without copying it.
            target_grad: see ``targets``.

        Returns:
            (N,) per-image losses (zeros when the loss is off).
        """
        _check_images(images, "images", "PerceptualLoss", 3, self.min_size)
        if (targets is None) == (target_features is None):
            raise ValueError("PerceptualLoss: give exactly one of 'targets' and 'target_features'")
        if targets is not None:
            _check_images(targets, "targets", "PerceptualLoss", 3, self.min_size)
            if images.shape != targets.shape:
                raise ValueError(f"PerceptualLoss: arguments 'images' and 'targets' must have the same shape, got "
                                 f"{tuple(images.shape)} and {tuple(targets.shape)}")
        else:
            if not isinstance(target_features, Tensor) or target_features.dim() != 4 or \
                    target_features.shape[0] == 0 or images.shape[0] % target_features.shape[0]:
                shape = tuple(target_features.shape) if isinstance(target_features, Tensor) else \
                    type(target_features).__name__
                raise ValueError(f"PerceptualLoss: argument 'target_features' must be a (M, C, h, w) tensor with M "
                                 f"dividing the {images.shape[0]} images, got {shape}")
        if self.vgg is None:
            if not self._warned:
                self._warned = True
                warnings.warn("PerceptualLoss: the perceptual term is off because no VGG16 weights file was given "
                              "(weights_path=None); pass a torchvision vgg16 state dict to enable it",
                              stacklevel=_caller_stacklevel())
            if targets is None or not target_grad:
                return images.sum(dim=(1, 2, 3)) * 0
            return (images.sum(dim=(1, 2, 3)) + targets.sum(dim=(1, 2, 3))) * 0
        if targets is not None and target_grad:
            features = self._features(torch.cat([images, targets]))
            f1, f2 = features.chunk(2)
            return (f1 - f2).square().flatten(1).mean(1)
        if targets is not None:
            target_features = self.features(targets)
        f1 = self._features(images)
        if tuple(target_features.shape[1:]) != tuple(f1.shape[1:]):
            raise ValueError(f"PerceptualLoss: argument 'target_features' must have the images' feature shape "
                             f"(M, {', '.join(map(str, f1.shape[1:]))}), got {tuple(target_features.shape)}")
        M = target_features.shape[0]
        f1 = f1.reshape(M, -1, *f1.shape[1:])  # (M, N / M, C, h, w): each target against its images
        return (f1 - target_features.unsqueeze(1)).square().flatten(2).mean(2).reshape(-1)


def _caller_stacklevel() -> int:
    """The ``stacklevel`` that points a warning raised in a ``forward`` at the code that called the module."""
    modules_dir = os.path.dirname(nn.Module.__call__.__code__.co_filename)
    frame, level = sys._getframe(2), 2  # frame 1 is forward's caller of this function, i.e. forward itself
    while frame is not None and frame.f_code.co_filename.startswith(modules_dir):
        frame, level = frame.f_back, level + 1
    return level


def _drop_frozen_vgg(module: nn.Module, state_dict: Dict[str, Tensor], prefix: str, local_metadata: dict) -> None:
    for key in [k for k in state_dict if k.startswith(prefix + "vgg.")]:
        del state_dict[key]


def _fill_frozen_vgg(module: nn.Module, state_dict: Dict[str, Tensor], prefix: str, *args: object) -> None:
    # Absent frozen weights load as themselves, so strict loading accepts a checkpoint without them.
    if getattr(module, "vgg", None) is not None:
        for name, tensor in _named_tensors(module.vgg, prefix + "vgg."):
            state_dict.setdefault(name, tensor)


def _named_tensors(module: nn.Module, prefix: str) -> Iterable:
    for name, tensor in module.named_parameters(prefix=prefix[:-1]):
        yield name, tensor.detach()
    for name, tensor in module.named_buffers(prefix=prefix[:-1]):
        yield name, tensor


# ================================================================================================
# RenderClassifier: the feature network of invrender.fid (IG-GAN's FID, issue 16)
# ------------------------------------------------------------------------------------------------
# Kept in its own section at the end of the file; only __all__ below is extended from here.
# ================================================================================================

class RenderClassifier(nn.Module):
    """A small CNN that classifies grey renders of the synthetic categories; its pooled features are FID's.

    IG-GAN (Lunz et al. 2020, section 5) computes FID with an Inception network retrained to classify renders of
    ShapeNet classes; this is our cheap stand-in for 32^2 - 128^2 grey renders (ours): a stem and four
    stages, each a stride-2 3x3 convolution and a 3x3 convolution, every convolution followed by BatchNorm and
    ReLU (widths ``width, 2 width, 4 width, feature_dim``); global average pooling to ``feature_dim`` features;
    a linear classifier. Any image size >= 16 works (the pooling is global); it is trained at one size
    (:func:`invrender.fid.train_fid_classifier`).

    Args:
        num_classes: output classes (6: :data:`invrender.synthetic.CATEGORIES`).
        in_channels: image channels (1: grey renders).
        width: channels of the first stage.
        feature_dim: size of the pooled features (FID's ``D``).

    Names: ``stem``, ``stages.<i>`` (``nn.Sequential`` of conv/bn/relu), ``fc``.
    """

    def __init__(self, num_classes: int = 6, in_channels: int = 1, width: int = 32, feature_dim: int = 256):
        super().__init__()
        for name, value in (("num_classes", num_classes), ("in_channels", in_channels), ("width", width),
                            ("feature_dim", feature_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"RenderClassifier: argument '{name}' must be a positive int, got {value!r}")
        self.num_classes, self.in_channels = num_classes, in_channels
        self.width, self.feature_dim = width, feature_dim

        def conv_bn_relu(cin: int, cout: int, stride: int) -> list:
            return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.stem = nn.Sequential(*conv_bn_relu(in_channels, width, 1))
        channels = (width, 2 * width, 4 * width, feature_dim)
        stages, previous = [], width
        for c in channels:
            stages.append(nn.Sequential(*conv_bn_relu(previous, c, 2), *conv_bn_relu(c, c, 1)))
            previous = c
        self.stages = nn.ModuleList(stages)
        self.fc = nn.Linear(feature_dim, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    #: Smallest image side: four stride-2 stages leave at least one pixel.
    min_size = 16

    def features(self, x: Tensor) -> Tensor:
        """``(N, in_channels, H, W)`` images (grey renders in [0, 1]) -> ``(N, feature_dim)`` pooled features."""
        _check_images(x, "x", "RenderClassifier", self.in_channels, self.min_size)
        h = self.stem(x)
        for stage in self.stages:
            h = stage(h)
        return h.mean((2, 3))

    def forward(self, x: Tensor) -> Tensor:
        """``(N, in_channels, H, W)`` images -> ``(N, num_classes)`` logits."""
        return self.fc(self.features(x))


__all__ += ["RenderClassifier"]
