"""invrender.models.networks: ResNet-18 and VGG16 with torchvision's names, checked against a naming spec written from the
architecture and against hand-written functional oracles; UNICORN's perceptual loss."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from invrender.models import networks as nets
from invrender.models.networks import PerceptualLoss, ResNet18, VGG16Features


# ------------------------------------------------------------------------------------------------
# The spec: torchvision's names and shapes, written out from the architecture (not read from torchvision)
# ------------------------------------------------------------------------------------------------

def _bn_spec(name, c):
    return {f"{name}.weight": (c,), f"{name}.bias": (c,), f"{name}.running_mean": (c,), f"{name}.running_var": (c,),
            f"{name}.num_batches_tracked": ()}


def resnet18_spec(num_classes=None, in_channels=3):
    spec = {"conv1.weight": (64, in_channels, 7, 7), **_bn_spec("bn1", 64)}
    previous = 64
    for stage, width in enumerate((64, 128, 256, 512), start=1):
        for block in (0, 1):
            p = f"layer{stage}.{block}"
            cin = previous if block == 0 else width
            spec[f"{p}.conv1.weight"] = (width, cin, 3, 3)
            spec.update(_bn_spec(f"{p}.bn1", width))
            spec[f"{p}.conv2.weight"] = (width, width, 3, 3)
            spec.update(_bn_spec(f"{p}.bn2", width))
            if block == 0 and stage > 1:  # stride 2 and a channel change: a projection shortcut
                spec[f"{p}.downsample.0.weight"] = (width, cin, 1, 1)
                spec.update(_bn_spec(f"{p}.downsample.1", width))
        previous = width
    if num_classes is not None:
        spec["fc.weight"] = (num_classes, 512)
        spec["fc.bias"] = (num_classes,)
    return spec


# torchvision vgg16().features: (index, in, out) of each convolution; ReLU after each, pools at 4, 9, 16, 23, 30.
VGG16_CONVS = [(0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256),
               (14, 256, 256), (17, 256, 512), (19, 512, 512), (21, 512, 512), (24, 512, 512), (26, 512, 512),
               (28, 512, 512)]
VGG16_POOLS = (4, 9, 16, 23)
LAST_INDEX = {"relu1_2": 3, "relu2_2": 8, "relu3_3": 15, "relu4_3": 22, "relu5_3": 29}


def vgg16_spec(last):
    spec = {}
    for i, cin, cout in VGG16_CONVS:
        if i < LAST_INDEX[last]:
            spec[f"features.{i}.weight"] = (cout, cin, 3, 3)
            spec[f"features.{i}.bias"] = (cout,)
    return spec


def _shapes(module):
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


@pytest.mark.parametrize("num_classes", [None, 1000])
def test_resnet18_state_dict_is_torchvisions(num_classes):
    model = ResNet18(num_classes)
    assert _shapes(model) == resnet18_spec(num_classes)
    if num_classes == 1000:  # torchvision's resnet18 has 11,689,512 parameters
        assert sum(p.numel() for p in model.parameters()) == 11_689_512


def test_resnet18_in_channels_and_norm_layer():
    assert _shapes(ResNet18(in_channels=4)) == resnet18_spec(in_channels=4)
    gn = ResNet18(norm_layer=lambda c: nn.GroupNorm(4, c))
    assert not any("running_mean" in k for k in gn.state_dict())
    assert gn(torch.rand(2, 3, 32, 32)).shape == (2, 512)


@pytest.mark.parametrize("last", list(LAST_INDEX))
def test_vgg16_state_dict_and_shapes(last):
    vgg = VGG16Features(last)
    assert _shapes(vgg) == vgg16_spec(last)
    assert len(vgg.features) == LAST_INDEX[last] + 1 and isinstance(vgg.features[-1], nn.ReLU)
    channels = {"relu1_2": 64, "relu2_2": 128, "relu3_3": 256, "relu4_3": 512, "relu5_3": 512}[last]
    pools = sum(p < LAST_INDEX[last] for p in VGG16_POOLS)
    assert vgg(torch.rand(1, 3, 32, 48)).shape == (1, channels, 32 >> pools, 48 >> pools)
    if last == "relu5_3":  # torchvision's vgg16 features have 14,714,688 parameters
        assert sum(p.numel() for p in vgg.parameters()) == 14_714_688


# ------------------------------------------------------------------------------------------------
# Shapes
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("num_classes,batch,height,width", [(None, 2, 64, 64), (7, 2, 64, 64), (None, 1, 224, 224),
                                                            (1000, 1, 224, 224), (None, 1, 32, 57)])
def test_resnet18_output_shapes(num_classes, batch, height, width):
    model = ResNet18(num_classes)
    out = model(torch.rand(batch, 3, height, width))
    assert out.shape == (batch, 512 if num_classes is None else num_classes)
    assert torch.isfinite(out).all()


# ------------------------------------------------------------------------------------------------
# Oracles: the same networks written with torch.nn.functional from the modules' own parameters
# ------------------------------------------------------------------------------------------------

def _randomize_norms(model):
    # Non-trivial running statistics and affine parameters, so eval-mode batch norm is not the identity.
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.1)


def _bn(x, p, name):
    return F.batch_norm(x, p[f"{name}.running_mean"], p[f"{name}.running_var"], p[f"{name}.weight"],
                        p[f"{name}.bias"], training=False, eps=1e-5)


def _block(x, p, name, stride):
    out = F.relu(_bn(F.conv2d(x, p[f"{name}.conv1.weight"], stride=stride, padding=1), p, f"{name}.bn1"))
    out = _bn(F.conv2d(out, p[f"{name}.conv2.weight"], padding=1), p, f"{name}.bn2")
    if f"{name}.downsample.0.weight" in p:
        x = _bn(F.conv2d(x, p[f"{name}.downsample.0.weight"], stride=stride), p, f"{name}.downsample.1")
    return F.relu(out + x)


def _stem(x, p):
    x = F.relu(_bn(F.conv2d(x, p["conv1.weight"], stride=2, padding=3), p, "bn1"))
    return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


def resnet18_functional(x, p):
    x = _stem(x, p)
    for stage in (1, 2, 3, 4):
        x = _block(x, p, f"layer{stage}.0", 1 if stage == 1 else 2)
        x = _block(x, p, f"layer{stage}.1", 1)
    x = x.mean(dim=(2, 3))
    return F.linear(x, p["fc.weight"], p["fc.bias"]) if "fc.weight" in p else x


@pytest.mark.parametrize("num_classes", [None, 5])
def test_resnet18_matches_functional_oracle(num_classes):
    model = ResNet18(num_classes).double().eval()
    _randomize_norms(model)
    p = dict(model.state_dict())
    x = torch.rand(2, 3, 45, 64, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model.maxpool(model.relu(model.bn1(model.conv1(x)))), _stem(x, p))
        h = _stem(x, p)
        torch.testing.assert_close(model.layer2[0](h), _block(h, p, "layer2.0", 2))  # projection shortcut
        torch.testing.assert_close(model.layer1[1](h), _block(h, p, "layer1.1", 1))  # identity shortcut
        torch.testing.assert_close(model(x), resnet18_functional(x, p))


def test_resnet18_zero_init_residual_makes_blocks_identities():
    model = ResNet18(zero_init_residual=True).eval()
    assert all(block.bn2.weight.abs().sum() == 0 for stage in (model.layer1, model.layer2) for block in stage)
    x = torch.rand(2, 64, 16, 16)  # non-negative, like the ReLU output entering each block
    with torch.no_grad():
        torch.testing.assert_close(model.layer1[0](x), x)
    assert ResNet18().layer1[0].bn2.weight.abs().sum() > 0


def vgg16_functional(x, p, last):
    for i in range(LAST_INDEX[last] + 1):
        if f"features.{i}.weight" in p:
            x = F.conv2d(x, p[f"features.{i}.weight"], p[f"features.{i}.bias"], padding=1)
        elif i in VGG16_POOLS:
            x = F.max_pool2d(x, 2)
        else:
            x = F.relu(x)
    return x


@pytest.mark.parametrize("last", ["relu2_2", "relu4_3"])
def test_vgg16_matches_functional_oracle(last):
    vgg = VGG16Features(last).double()
    x = torch.randn(2, 3, 19, 24, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(vgg(x), vgg16_functional(x, dict(vgg.state_dict()), last))


# ------------------------------------------------------------------------------------------------
# Loading torchvision state dicts
# ------------------------------------------------------------------------------------------------

def _torchvision_vgg16_file(path, vgg, drop=(), extra=()):
    """Save ``vgg``'s weights as a full torchvision vgg16 state dict would hold them. The layers beyond ``vgg`` and
    the classifier are ignored by the loader, so they are saved with tiny shapes to keep the file small."""
    sd = dict(vgg.state_dict())
    for i, _, _ in VGG16_CONVS:
        sd.setdefault(f"features.{i}.weight", torch.zeros(1))
        sd.setdefault(f"features.{i}.bias", torch.zeros(1))
    for i in (0, 3, 6):
        sd[f"classifier.{i}.weight"] = torch.zeros(1)
        sd[f"classifier.{i}.bias"] = torch.zeros(1)
    for key in drop:
        del sd[key]
    sd.update(dict(extra))
    torch.save(sd, path)
    return path


def test_vgg16_from_file_round_trip(tmp_path):
    source = VGG16Features("relu3_3")
    path = _torchvision_vgg16_file(tmp_path / "vgg16.pth", source)
    loaded = VGG16Features.from_file(path)
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = torch.rand(1, 3, 16, 16)
    torch.testing.assert_close(loaded(x), source(x))
    assert VGG16Features.from_file(path, last="relu1_2").state_dict()["features.2.bias"].equal(
        source.features[2].bias.detach())


@pytest.mark.parametrize("drop,extra,words", [
    (["features.14.bias"], [], ["missing", "features.14.bias"]),
    ([], [("features.3.weight", torch.zeros(3))], ["unexpected", "features.3.weight"]),
    ([], [("features.0.weight", torch.zeros(64, 1, 3, 3))], ["features.0.weight", "(64, 3, 3, 3)", "(64, 1, 3, 3)"]),
])
def test_vgg16_from_file_names_bad_keys(tmp_path, drop, extra, words):
    path = _torchvision_vgg16_file(tmp_path / "bad.pth", VGG16Features(), drop, extra)
    with pytest.raises(ValueError) as info:
        VGG16Features.from_file(path)
    for word in words:
        assert word in str(info.value)


def test_vgg16_from_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        VGG16Features.from_file(tmp_path / "nothere.pth")


def test_resnet18_loads_torchvision_state_dict(tmp_path):
    classifier = ResNet18(num_classes=1000)
    _randomize_norms(classifier)
    torch.save(classifier.state_dict(), tmp_path / "resnet18.pth")
    sd = torch.load(tmp_path / "resnet18.pth", weights_only=True)
    encoder = ResNet18().load_torchvision_state_dict(sd)  # fc.* ignored: the encoder has no fc
    other = ResNet18(num_classes=1000).load_torchvision_state_dict(sd)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(other.eval()(x), classifier.eval()(x))
        torch.testing.assert_close(classifier.fc(encoder.eval()(x)), classifier(x))
    del sd["layer3.1.bn2.running_var"]
    with pytest.raises(ValueError, match="missing keys.*layer3.1.bn2.running_var"):
        ResNet18().load_torchvision_state_dict(sd)


# ------------------------------------------------------------------------------------------------
# Perceptual loss
# ------------------------------------------------------------------------------------------------

@pytest.fixture
def loss():
    return PerceptualLoss(weights="random").double()


def test_perceptual_zero_for_identical_positive_otherwise(loss):
    a = torch.rand(3, 3, 16, 16, dtype=torch.float64)
    b = torch.rand(3, 3, 16, 16, dtype=torch.float64)
    assert loss.enabled
    same = loss(a, a)
    assert same.shape == (3,) and torch.all(same == 0)
    diff = loss(a, b)
    assert diff.shape == (3,) and torch.all(diff > 0)
    torch.testing.assert_close(loss(a[1:2], b[1:2]), diff[1:2])  # per image, as the official code reduces
    torch.testing.assert_close(loss(b, a), diff)


def test_perceptual_matches_formula(loss):
    # UNICORN's formula: ImageNet normalisation, VGG16 relu3_3, unit features over C, mean over (C, H, W).
    a, b = torch.rand(2, 2, 3, 12, 20, dtype=torch.float64)
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(1, 3, 1, 1)
    p = dict(loss.vgg.state_dict())
    fa, fb = (vgg16_functional((t - mean) / std, p, "relu3_3") for t in (a, b))
    fa, fb = (f / (f.pow(2).sum(1, keepdim=True).sqrt() + 1e-10) for f in (fa, fb))
    torch.testing.assert_close(loss(a, b), ((fa - fb) ** 2).mean(dim=(1, 2, 3)))


def test_perceptual_invariant_to_feature_scale(loss):
    a, b = torch.rand(2, 2, 3, 16, 16, dtype=torch.float64)
    before = loss(a, b)
    last_conv = loss.vgg.features[14]
    with torch.no_grad():  # relu(7 z) = 7 relu(z): the relu3_3 features scale by 7
        last_conv.weight.mul_(7)
        last_conv.bias.mul_(7)
    torch.testing.assert_close(loss(a, b), before)


def test_perceptual_gradient_to_images_not_weights(loss):
    a = torch.rand(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    b = torch.rand(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    loss(a, b).sum().backward()
    assert a.grad.abs().sum() > 0 and b.grad is None  # targets are data: no gradient by default
    loss(a, b, target_grad=True).sum().backward()
    assert b.grad.abs().sum() > 0  # on request, both
    assert all(not p.requires_grad and p.grad is None for p in loss.vgg.parameters())
    small = PerceptualLoss(layer="relu1_2", weights="random").double()
    x = torch.rand(1, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    y = torch.rand(1, 3, 4, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: small(t, y), (x,))


def _reference_perceptual(loss, a, b):
    """The loss as it was: images and targets concatenated through VGG, both differentiable."""
    both = (torch.cat([a, b]) - loss.mean) / loss.std
    f = loss.vgg(both)
    f1, f2 = (f / (f.norm(dim=1, keepdim=True) + loss.eps)).chunk(2)
    return (f1 - f2).square().flatten(1).mean(1)


def test_perceptual_target_features_once_without_gradient(loss):
    # UNICORN's pose step: each of B targets against its K candidates. The targets' features computed once,
    # without gradient, give the same per-image losses and image gradients as K copies through VGG.
    B, K = 3, 4
    images = torch.rand(B * K, 3, 12, 12, dtype=torch.float64, requires_grad=True)
    targets = torch.rand(B, 3, 12, 12, dtype=torch.float64, requires_grad=True)
    copies = targets.unsqueeze(1).expand(B, K, 3, 12, 12).reshape(B * K, 3, 12, 12)
    weights = torch.rand(B * K, dtype=torch.float64)
    expected = _reference_perceptual(loss, images, copies)
    expected_grad, = torch.autograd.grad((weights * expected).sum(), images)
    features = loss.features(targets)
    assert not features.requires_grad and features.grad_fn is None  # no graph through the targets' VGG
    for got in (loss(images, target_features=features), loss(images, copies)):
        assert got.shape == (B * K,)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-15)
        grad, = torch.autograd.grad((weights * got).sum(), images)
        torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=1e-15)
    loss(images, target_features=features).sum().backward()
    loss(images, copies).sum().backward()
    assert targets.grad is None  # no gradient reaches the targets
    torch.testing.assert_close(loss(images, copies, target_grad=True), expected, rtol=1e-12, atol=1e-15)
    assert loss.features(targets, grad=True).requires_grad
    with pytest.raises(ValueError, match="exactly one"):
        loss(images)
    with pytest.raises(ValueError, match="exactly one"):
        loss(images, copies, target_features=features)
    with pytest.raises(ValueError, match="'target_features'.*dividing"):
        loss(images, target_features=loss.features(targets[:1].expand(5, 3, 12, 12)))
    with pytest.raises(ValueError, match="'target_features'.*feature shape"):
        loss(images, target_features=loss.features(torch.rand(B, 3, 16, 16, dtype=torch.float64)))
    with pytest.raises(RuntimeError, match="off"):
        PerceptualLoss().features(targets)


def test_perceptual_stays_frozen_and_out_of_state_dict(loss):
    model = nn.Module()
    model.perceptual = loss
    model.head = nn.Linear(2, 2)
    model.train()
    assert model.perceptual.training and not loss.vgg.training
    assert set(model.state_dict()) == {"head.weight", "head.bias"}  # the frozen VGG is not training state
    before = loss.vgg.features[0].weight.clone()
    model.load_state_dict(model.state_dict())  # strict, without the VGG weights
    assert torch.equal(loss.vgg.features[0].weight, before)


def test_perceptual_from_weights_file(tmp_path):
    vgg = VGG16Features()
    path = _torchvision_vgg16_file(tmp_path / "vgg16.pth", vgg)
    loss = PerceptualLoss(path)
    assert loss.enabled and loss.weights_path == str(path)
    assert all(torch.equal(loss.vgg.state_dict()[k], v) for k, v in vgg.state_dict().items())
    a, b = torch.rand(2, 1, 3, 8, 8)
    assert loss(a, b).item() > 0
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        PerceptualLoss(tmp_path / "missing.pth")


def test_perceptual_off_warns_once_and_returns_zero(recwarn):
    warnings.simplefilter("always")  # so a repeated warning would be recorded, not deduplicated by Python
    loss = PerceptualLoss()
    assert not loss.enabled and loss.vgg is None
    a = torch.rand(2, 3, 16, 16, requires_grad=True)
    first = loss(a, torch.rand(2, 3, 16, 16))
    second = loss(a, a)
    assert first.shape == (2,) and torch.all(first == 0) and torch.all(second == 0)
    assert torch.equal(loss(a, target_features=torch.rand(1, 256, 4, 4)), torch.zeros(2))
    first.sum().backward()  # a zero that keeps the graph: the model's total loss still backpropagates
    assert torch.all(a.grad == 0)
    messages = [str(w.message) for w in recwarn if "perceptual term is off" in str(w.message)]
    assert len(messages) == 1 and "VGG16 weights" in messages[0]
    assert recwarn[0].filename == __file__  # points at the caller, not into torch
    with pytest.warns(UserWarning, match="perceptual term is off"):
        PerceptualLoss()(a, a)  # once per instance


# ------------------------------------------------------------------------------------------------
# Bad inputs
# ------------------------------------------------------------------------------------------------

def test_bad_inputs_name_the_argument(loss):
    model = ResNet18()
    with pytest.raises(ValueError, match="'images'.*\\(B, 3, H, W\\)"):
        model(torch.rand(2, 1, 64, 64))
    with pytest.raises(ValueError, match="'images'.*at least 32x32"):
        model(torch.rand(2, 3, 16, 64))
    with pytest.raises(ValueError, match="'images'"):
        model(torch.rand(3, 64, 64))
    with pytest.raises(ValueError, match="'images'.*floating"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="'num_classes'"):
        ResNet18(num_classes=0)
    with pytest.raises(ValueError, match="'in_channels'"):
        ResNet18(in_channels=0)
    with pytest.raises(ValueError, match="'last'"):
        VGG16Features("relu3_4")
    with pytest.raises(ValueError, match="'images'.*at least 4x4"):
        VGG16Features()(torch.rand(1, 3, 3, 8))
    a = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="'targets'.*\\(B, 3, H, W\\)"):
        loss(a, torch.rand(1, 4, 8, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="'images'.*at least 4x4"):
        loss(a[..., :2, :2], a[..., :2, :2])
    with pytest.raises(ValueError, match="same shape"):
        loss(a, torch.rand(1, 3, 8, 9, dtype=torch.float64))
    with pytest.raises(ValueError, match="'targets'"):
        PerceptualLoss()(a, a[:, :1])  # checked in off mode too
    with pytest.raises(ValueError, match="'layer'"):
        PerceptualLoss(layer="conv3_3")
    with pytest.raises(ValueError, match="'weights'"):
        PerceptualLoss(weights="imagenet")
    with pytest.raises(ValueError, match="not both"):
        PerceptualLoss("vgg16.pth", weights="random")


def test_module_exports():
    assert set(nets.__all__) >= {"ResNet18", "VGG16Features", "PerceptualLoss"}
    import invrender.models
    assert invrender.models.networks is nets
