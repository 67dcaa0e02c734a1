"""FID for IG-GAN (Lunz et al. 2020, section 5): a classifier of grey renders and the Fréchet distance on its features.

IG-GAN computes FID with an Inception network retrained to classify renders of ShapeNet classes (95.3 % accuracy),
comparing generated images with renders of held-out ShapeNet models. Nothing is downloaded here, so (ours):

- the feature network is :class:`invrender.models.networks.RenderClassifier`, trained by
  :func:`train_fid_classifier` on grey shaded renders (:class:`invrender.data.ShadedViews`) of the 6 synthetic
  categories (:data:`invrender.synthetic.CATEGORIES`), from the ``"chairs"`` viewpoints (elevations -30..60,
  which cover the other regimes' viewpoints), with its test accuracy measured on held-out objects;
- the reference set of a category is ``num_images`` renders of held-out (``split="test"``) objects
  (:func:`reference_statistics`);
- :func:`fid_score` is :func:`invrender.metrics.frechet_distance` between the Gaussians fitted to the pooled
  features of the samples and of the reference.

Files are cached under :func:`invrender.synthetic.cache_root` (``$INVRENDER_CACHE`` or ``~/.cache/invrender``)
in ``fid/``: ``classifier-<size>-v1.pt`` (state dict + info: test accuracy, training config) and
``reference-<category>-<size>-<viewpoints>-n<N>-<classifier fingerprint>.npz`` (mu, sigma). Both are written
atomically. FIDs are comparable only under the same classifier, image size, reference and sample count.
"""

import glob
import hashlib
import math
import os
import time
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ConfigError, MissingInputError
from .metrics import feature_statistics, frechet_distance
from .synthetic import CATEGORIES, cache_root

__all__ = ["DEFAULT_TRAINING", "VERSION", "classifier_features", "classifier_path", "describe_classifier", "fid_score",
           "load_fid_classifier", "load_samples", "reference_statistics", "save_fid_classifier", "train_fid_classifier"]

#: Version of the classifier and reference files; bump it when the training recipe or the renders change.
VERSION = 1

#: Training defaults (ours). Measured at 64^2 on one CPU thread: 99.9 % test accuracy (1199 of 1200 held-out renders),
#: 87 s through ``invrender fid train`` (which keeps freed memory in the heap, :mod:`invrender.allocator`), 142 s from
#: Python with glibc's defaults; at 32^2 99.7 % in 35 s. The loss is below 0.05 after ~50 steps.
DEFAULT_TRAINING = {
    "objects": 600,        # distinct training objects (100 per category)
    "steps": 200,          # Adam steps
    "batch_size": 64,
    "lr": 2e-3,            # Adam, cosine decay to 0
    "width": 32,           # RenderClassifier widths: 32, 64, 128, feature_dim
    "feature_dim": 256,
    "test_objects": 120,   # held-out objects (20 per category) for the test accuracy
    "test_images": 1200,
}

_TRAIN_VIEWPOINTS = "chairs"


def _positive_int(value, name: str, op: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{op}: argument '{name}' must be a positive int, got {value!r}")
    return value


def _image_size(value, op: str) -> int:
    from .models.networks import RenderClassifier

    _positive_int(value, "image_size", op)
    if value < RenderClassifier.min_size:
        raise ConfigError(f"{op}: argument 'image_size' must be at least {RenderClassifier.min_size}, got {value}")
    return value


def _fid_dir(cache_dir: Optional[str]) -> str:
    return os.path.join(cache_root(cache_dir), "fid")


def classifier_path(image_size: int = 64, cache_dir: Optional[str] = None) -> str:
    """Where :func:`load_fid_classifier` keeps the ``image_size`` classifier."""
    return os.path.join(_fid_dir(cache_dir), f"classifier-{image_size}-v{VERSION}.pt")


def _batches(dataset, start: int, stop: int, batch_size: int):
    """``(images (B, 1, S, S), labels (B,))`` of items ``start .. stop - 1`` in order."""
    for i in range(start, stop, batch_size):
        items = [dataset[j] for j in range(i, min(i + batch_size, stop))]
        yield torch.stack([it["image"] for it in items]), torch.stack([it["label"] for it in items])


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


# ------------------------------------------------------------------------------------------------
# the classifier


def _test_accuracy(model: nn.Module, image_size: int, config: Dict, seed: int, batch_size: int) -> float:
    from .data import ShadedViews

    test = ShadedViews(list(CATEGORIES), config["test_objects"], regime="unlimited", length=config["test_images"],
                       viewpoints=_TRAIN_VIEWPOINTS, image_size=image_size, split="test", seed=seed)
    model.eval()
    correct = 0
    with torch.no_grad():
        for images, labels in _batches(test, 0, len(test), batch_size):
            correct += int((model(images.to(_device_of(model))).argmax(1).cpu() == labels).sum())
    return correct / len(test)


def train_fid_classifier(image_size: int = 64, objects: Optional[int] = None, steps: Optional[int] = None,
                         batch_size: Optional[int] = None, seed: int = 0, progress: bool = True,
                         device: Union[str, torch.device] = "cpu",
                         **overrides) -> Tuple[nn.Module, Dict[str, object]]:
    """Train the FID classifier: a :class:`~invrender.models.networks.RenderClassifier` on grey renders of the 6
    synthetic categories, then measure its accuracy on renders of held-out objects.

    Training images are ``ShadedViews(CATEGORIES, objects, regime="unlimited", viewpoints="chairs",
    split="train")``: every step a fresh batch of random views of random training objects (rendered on the fly).
    Adam (``lr``) with a cosine decay to 0, cross-entropy. The test accuracy is measured on ``test_images``
    renders of ``test_objects`` held-out objects (``split="test"``) from the same viewpoints.

    Args:
        image_size: ``S`` of the ``(1, S, S)`` renders (>= 16).
        objects, steps, batch_size: training objects, Adam steps, images per step (None: :data:`DEFAULT_TRAINING`).
        seed: seed of the initial weights and of the viewpoints.
        progress: show a tqdm progress bar.
        device: where to train.
        **overrides: other keys of :data:`DEFAULT_TRAINING` (``lr``, ``width``, ``feature_dim``,
            ``test_objects``, ``test_images``).

    Returns:
        ``(model, info)``: the model in eval mode (with ``model.image_size`` set) and a dict with
        ``test_accuracy``, ``steps``, ``seconds`` (training and testing), ``final_loss`` (mean of the last 10
        steps), ``losses`` (every step's loss) and ``config`` (everything needed to rebuild and to retrain it).
    """
    with torch.enable_grad():  # also when called under no_grad (e.g. from an evaluation that trains it on first use)
        return _train_fid_classifier(image_size, objects, steps, batch_size, seed, progress, device, **overrides)


def _train_fid_classifier(image_size: int = 64, objects: Optional[int] = None, steps: Optional[int] = None,
                         batch_size: Optional[int] = None, seed: int = 0, progress: bool = True,
                         device: Union[str, torch.device] = "cpu",
                         **overrides) -> Tuple[nn.Module, Dict[str, object]]:

    """The implementation of :func:`train_fid_classifier` (gradients enabled by the caller)."""
    from .data import ShadedViews
    from .models.networks import RenderClassifier

    op = "train_fid_classifier"
    unknown = sorted(set(overrides) - set(DEFAULT_TRAINING))
    if unknown:
        raise ConfigError(f"{op}: unknown arguments {unknown}; known: {sorted(DEFAULT_TRAINING)}")
    config = dict(DEFAULT_TRAINING)
    config.update({k: v for k, v in (("objects", objects), ("steps", steps), ("batch_size", batch_size))
                   if v is not None})
    config.update(overrides)
    for key, value in config.items():
        if key == "lr":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{op}: argument 'lr' must be a positive number, got {value!r}")
        else:
            _positive_int(value, key, op)
    image_size = _image_size(image_size, op)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"{op}: argument 'seed' must be an int, got {seed!r}")
    config.update(image_size=image_size, seed=seed, categories=list(CATEGORIES), viewpoints=_TRAIN_VIEWPOINTS,
                  num_classes=len(CATEGORIES), in_channels=1, version=VERSION)

    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):  # seeded weights without touching the caller's random state
        torch.manual_seed(seed)
        model = RenderClassifier(len(CATEGORIES), 1, config["width"], config["feature_dim"]).to(device)
    steps, batch = config["steps"], config["batch_size"]
    train = ShadedViews(list(CATEGORIES), config["objects"], regime="unlimited", length=steps * batch,
                        viewpoints=_TRAIN_VIEWPOINTS, image_size=image_size, split="train", seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=config["lr"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * s / steps)))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=f"FID classifier {image_size}px", unit="step", dynamic_ncols=True)
    losses: List[float] = []
    model.train()
    for images, labels in _batches(train, 0, len(train), batch):
        loss = F.cross_entropy(model(images.to(device)), labels.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    if bar is not None:
        bar.close()
    train_seconds = time.perf_counter() - start
    accuracy = _test_accuracy(model, image_size, config, seed, max(batch, 64))
    model.image_size = image_size
    info = {"test_accuracy": accuracy, "steps": steps, "seconds": time.perf_counter() - start,
            "train_seconds": train_seconds, "final_loss": float(np.mean(losses[-10:])), "losses": losses,
            "config": config, "torch_threads": torch.get_num_threads()}
    return model, info


def _save_atomic(obj, path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_fid_classifier(model: nn.Module, info: Dict[str, object], path: str) -> None:
    """Write ``model``'s state dict and ``info`` to ``path`` atomically (a temporary file, then ``os.replace``)."""
    _save_atomic({"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "info": info}, path)


def _read_classifier(path: str, image_size: int) -> Tuple[Optional[nn.Module], Optional[Dict], str]:
    """``(model, info, "")`` from a cache file, or ``(None, None, why)`` when it is absent or does not fit."""
    from .models.networks import RenderClassifier

    if not os.path.isfile(path):
        return None, None, "it does not exist"
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        info, state = saved["info"], saved["state_dict"]
        config = info["config"]
    except Exception as e:  # a truncated or foreign file is a stale cache, not a crash
        return None, None, f"it could not be read ({type(e).__name__}: {e})"
    expected = {"version": VERSION, "image_size": image_size, "categories": list(CATEGORIES),
                "num_classes": len(CATEGORIES), "in_channels": 1}
    wrong = [f"{k}={config.get(k)!r} (expected {v!r})" for k, v in expected.items() if config.get(k) != v]
    if wrong:
        return None, None, "it was trained for another setting: " + ", ".join(wrong)
    model = RenderClassifier(config["num_classes"], config["in_channels"], config["width"], config["feature_dim"])
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        return None, None, f"its weights do not fit the stored config ({e})"
    model.eval()
    model.image_size = image_size
    return model, info, ""


def load_fid_classifier(image_size: int = 64, cache_dir: Optional[str] = None, train_if_missing: bool = True,
                        progress: bool = True, force: bool = False,
                        **training) -> Tuple[nn.Module, Dict[str, object]]:
    """The cached FID classifier for ``image_size`` renders, trained (and cached) on first use.

    The file is :func:`classifier_path` (``<cache>/fid/classifier-<size>-v1.pt``). Loading checks the stored
    config (version, image size, the category list and order, channels); a file that is missing, unreadable or
    trained for another setting is retrained when ``train_if_missing`` (printing why), else it raises.

    Args:
        image_size: the renders' size ``S``.
        cache_dir: the cache's base directory (default: :func:`invrender.synthetic.cache_root`).
        train_if_missing: train with :func:`train_fid_classifier` when there is no usable file.
        progress: progress bar while training.
        force: retrain and overwrite the file even if it is usable.
        **training: arguments of :func:`train_fid_classifier` used when it trains (``objects``, ``steps``, ...).

    Returns:
        ``(model, info)``: the classifier in eval mode on the CPU (``model.image_size`` set) and its info
        (``test_accuracy``, ``config``, ``seconds``, ...; :func:`train_fid_classifier`).

    Raises:
        MissingInputError: no usable file and ``train_if_missing`` is false.
    """
    image_size = _image_size(image_size, "load_fid_classifier")
    path = classifier_path(image_size, cache_dir)
    why = ""
    if not force:
        model, info, why = _read_classifier(path, image_size)
        if model is not None:
            return model, info
    if not train_if_missing:
        raise MissingInputError(f"load_fid_classifier: no usable FID classifier at '{path}': {why}; "
                                f"train it with 'invrender fid train --size {image_size}'")
    reason = "retraining as asked" if force else f"{why}; once, later runs reuse it"
    print(f"invrender: training the {image_size}px FID classifier into {path} ({reason})")
    model, info = train_fid_classifier(image_size, progress=progress, **training)
    model = model.cpu()
    save_fid_classifier(model, info, path)
    return model, info


def _fingerprint(model: nn.Module) -> str:
    """A short hash of a classifier's weights: reference statistics are cached per classifier."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


# ------------------------------------------------------------------------------------------------
# features and statistics


def _check_images(images, name: str, op: str) -> Tensor:
    if not isinstance(images, Tensor):
        raise ConfigError(f"{op}: argument '{name}' must be a tensor of images (N, 1, S, S), "
                          f"got {type(images).__name__}")
    if images.dim() != 4:
        raise ConfigError(f"{op}: argument '{name}' must be grey images (N, 1, S, S), got shape {tuple(images.shape)}")
    if images.shape[1] != 1:
        raise ConfigError(f"{op}: argument '{name}' must have 1 channel (grey renders; convert colour images to "
                          f"grey first), got {images.shape[1]} channels in shape {tuple(images.shape)}")
    if images.shape[2] != images.shape[3]:
        raise ConfigError(f"{op}: argument '{name}' must be square images, got {images.shape[2]}x{images.shape[3]}")
    if images.dtype == torch.uint8:
        images = images.float() / 255.0
    elif not images.is_floating_point():
        raise ConfigError(f"{op}: argument '{name}' must be float images in [0, 1] (or uint8), got {images.dtype}")
    if images.numel():
        if not torch.isfinite(images).all():
            raise ConfigError(f"{op}: argument '{name}' has non-finite values")
        lo, hi = float(images.min()), float(images.max())
        if lo < -1e-3 or hi > 1.0 + 1e-3:
            raise ConfigError(f"{op}: argument '{name}' must hold values in [0, 1], got values in [{lo:.3g}, {hi:.3g}]")
    return images


def _resize(images: Tensor, size: int) -> Tensor:
    """Square images to ``size`` x ``size``: area averaging when shrinking, bilinear when enlarging."""
    if images.shape[-1] == size:
        return images
    if images.shape[-1] > size:
        return F.interpolate(images, size=(size, size), mode="area")
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)


def classifier_features(images: Tensor, classifier: nn.Module, image_size: Optional[int] = None,
                        batch_size: int = 256) -> np.ndarray:
    """``(N, 1, S, S)`` images in [0, 1] -> ``(N, D)`` float64 pooled features of ``classifier`` (eval mode).

    Images are resized to ``image_size`` (default ``classifier.image_size``, else left as they are) first.
    """
    op = "classifier_features"
    images = _check_images(images, "images", op)
    batch_size = _positive_int(batch_size, "batch_size", op)
    size = image_size if image_size is not None else getattr(classifier, "image_size", images.shape[-1])
    device = _device_of(classifier)
    was_training = classifier.training
    classifier.eval()
    out = []
    try:
        with torch.no_grad():
            for i in range(0, images.shape[0], batch_size):
                chunk = _resize(images[i:i + batch_size].to(device, torch.float32), size)
                out.append(classifier.features(chunk).double().cpu())
    finally:
        classifier.train(was_training)
    if not out:
        return np.zeros((0, getattr(classifier, "feature_dim", 0)))
    return torch.cat(out).numpy()


def _viewpoints_key(viewpoints) -> str:
    if isinstance(viewpoints, str):
        return viewpoints
    try:
        (a0, a1), (e0, e1) = viewpoints
        return "az{:g}_{:g}-el{:g}_{:g}".format(float(a0), float(a1), float(e0), float(e1))
    except (TypeError, ValueError):
        raise ConfigError(f"reference_statistics: argument 'viewpoints' must be a name or ((az_lo, az_hi), "
                          f"(el_lo, el_hi)), got {viewpoints!r}") from None


def reference_statistics(category: str, image_size: int = 64, num_images: int = 2000, viewpoints="default",
                         classifier: Optional[nn.Module] = None, objects: int = 100, cache_dir: Optional[str] = None,
                         batch_size: int = 256, use_cache: bool = True,
                         progress: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """``(mu (D,), sigma (D, D))`` of the classifier features of held-out renders of ``category``: FID's reference.

    The renders are ``ShadedViews(category, objects, regime="unlimited", length=num_images, viewpoints,
    image_size, split="test")``: random views of ``objects`` held-out objects (never seen by the classifier,
    nor by a generator trained on ``split="train"``). Cached in ``<cache>/fid/`` per category, size, viewpoints,
    count and classifier weights (a hash), so a retrained classifier never meets stale statistics.

    Args:
        category: a name of :data:`invrender.synthetic.CATEGORIES`.
        image_size: render size ``S`` (the classifier's).
        num_images: reference renders (>= 2).
        viewpoints: as in :class:`invrender.data.ShadedViews` (IG-GAN's ``"default"``, ``"chairs"``, ``"lvp"``
            or a pair of ranges); use the viewpoints the generator was trained on.
        classifier: the feature network (default: :func:`load_fid_classifier` for ``image_size``).
        objects: held-out objects the renders come from.
        cache_dir: the cache's base directory (default: :func:`invrender.synthetic.cache_root`).
        batch_size: images per forward pass.
        use_cache: read and write the cache file.
        progress: progress bar if the classifier has to be trained.
    """
    from .data import ShadedViews

    op = "reference_statistics"
    if category not in CATEGORIES:
        raise ConfigError(f"{op}: argument 'category' must be one of {CATEGORIES}, got {category!r}")
    image_size = _image_size(image_size, op)
    num_images = _positive_int(num_images, "num_images", op)
    if num_images < 2:
        raise ConfigError(f"{op}: argument 'num_images' must be at least 2 (a covariance), got {num_images}")
    objects = _positive_int(objects, "objects", op)
    if classifier is None:
        classifier, _ = load_fid_classifier(image_size, cache_dir=cache_dir, progress=progress)
    key = _viewpoints_key(viewpoints)
    path = os.path.join(_fid_dir(cache_dir), f"reference-{category}-{image_size}-{key}-o{objects}-n{num_images}-"
                                             f"{_fingerprint(classifier)}-v{VERSION}.npz")
    if use_cache and os.path.isfile(path):
        try:
            with np.load(path) as f:
                return f["mu"], f["sigma"]
        except Exception:  # unreadable: recompute and overwrite
            pass
    try:
        views = ShadedViews(category, objects, regime="unlimited", length=num_images, viewpoints=viewpoints,
                            image_size=image_size, split="test", seed=0)
    except ValueError as e:
        raise ConfigError(f"{op}: {e}") from None
    features = [classifier_features(images, classifier, image_size, batch_size)
                for images, _ in _batches(views, 0, len(views), batch_size)]
    mu, sigma = feature_statistics(np.concatenate(features))
    if use_cache:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        try:
            with open(tmp, "wb") as f:  # a file object: np.savez adds no ".npz" to the name
                np.savez(f, mu=mu, sigma=sigma)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return mu, sigma


def fid_score(images: Tensor, category: Optional[str] = None, reference=None, classifier: Optional[nn.Module] = None,
              image_size: Optional[int] = None, batch_size: int = 256, viewpoints="default",
              reference_images: int = 2000, cache_dir: Optional[str] = None, progress: bool = True) -> float:
    """FID of generated images against held-out renders of a category (IG-GAN's protocol with our classifier).

    Exactly one of ``category`` and ``reference`` says what to compare with: ``category`` uses
    :func:`reference_statistics` (``reference_images`` held-out renders from ``viewpoints``); ``reference`` is
    either reference images ``(M, 1, S', S')`` or precomputed statistics ``(mu, sigma)``.

    Args:
        images: ``(N, 1, S, S)`` samples, float in [0, 1] (or uint8), ``N >= 2``; resized to the classifier's
            size (area averaging when shrinking, bilinear when enlarging) if ``S`` differs.
        category: a name of :data:`invrender.synthetic.CATEGORIES`.
        reference: reference images or ``(mu, sigma)``.
        classifier: the feature network (default: :func:`load_fid_classifier` for ``image_size``, trained and
            cached on first use).
        image_size: the classifier's input size (default: ``classifier.image_size``, else 64).
        batch_size: images per forward pass.
        viewpoints, reference_images: the reference renders of ``category``.
        cache_dir: the cache's base directory.
        progress: progress bar if the classifier has to be trained.

    Returns:
        The FID, a float (0 for identical statistics; lower is better). Its value depends on ``N`` (fewer samples
        than feature dimensions bias it upward): compare FIDs with equal sample counts.
    """
    op = "fid_score"
    images = _check_images(images, "images", op)
    if images.shape[0] < 2:
        raise ConfigError(f"{op}: argument 'images' must hold at least 2 images, got {images.shape[0]}")
    if (category is None) == (reference is None):
        raise ConfigError(f"{op}: give exactly one of 'category' and 'reference', got "
                          f"{'both' if category is not None else 'neither'}")
    if category is not None and category not in CATEGORIES:
        raise ConfigError(f"{op}: argument 'category' must be one of {CATEGORIES}, got {category!r}")
    if image_size is None:
        image_size = getattr(classifier, "image_size", 64) if classifier is not None else 64
    image_size = _image_size(image_size, op)
    if classifier is None:
        classifier, _ = load_fid_classifier(image_size, cache_dir=cache_dir, progress=progress)
    features = classifier_features(images, classifier, image_size, batch_size)
    if category is not None:
        mu_ref, sigma_ref = reference_statistics(category, image_size, reference_images, viewpoints, classifier,
                                                 cache_dir=cache_dir, batch_size=batch_size, progress=progress)
    elif isinstance(reference, Tensor):
        ref = _check_images(reference, "reference", op)
        if ref.shape[0] < 2:
            raise ConfigError(f"{op}: argument 'reference' must hold at least 2 images, got {ref.shape[0]}")
        mu_ref, sigma_ref = feature_statistics(classifier_features(ref, classifier, image_size, batch_size))
    elif isinstance(reference, (tuple, list)) and len(reference) == 2:
        mu_ref, sigma_ref = reference
    else:
        raise ConfigError(f"{op}: argument 'reference' must be images (M, 1, S, S) or a pair (mu, sigma), "
                          f"got {type(reference).__name__}")
    mu, sigma = feature_statistics(features)
    return frechet_distance(mu, sigma, mu_ref, sigma_ref)


# ------------------------------------------------------------------------------------------------
# samples from files


def load_samples(path: str) -> Tensor:
    """Images to score from a file or folder: ``(N, 1, S, S)`` float32 in [0, 1].

    ``path`` is a ``.pt`` file holding a tensor ``(N, 1, S, S)`` or ``(N, S, S)`` (float in [0, 1] or uint8), or
    a dict with such a tensor under ``"images"``; or a folder of ``.png`` files (sorted by name, converted to
    grey, all the same size).

    Raises:
        MissingInputError: ``path`` does not exist. ConfigError: its content is not images of that kind.
    """
    op = "load_samples"
    if os.path.isdir(path):
        files = sorted(glob.glob(os.path.join(glob.escape(path), "*.png")))
        if not files:
            raise MissingInputError(f"{op}: folder '{path}' holds no .png files")
        from PIL import Image

        arrays = []
        for f in files:
            with Image.open(f) as im:
                arrays.append(np.asarray(im.convert("L")))
        shapes = sorted({a.shape for a in arrays})
        if len(shapes) > 1:
            raise ConfigError(f"{op}: the .png files in '{path}' must all have the same size, got {shapes}")
        return torch.from_numpy(np.stack(arrays)).unsqueeze(1).float() / 255.0
    if not os.path.isfile(path):
        raise MissingInputError(f"{op}: '{path}' does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(f"{op}: '{path}' is not a readable torch file ({type(e).__name__}: {e})") from None
    if isinstance(data, dict):
        if "images" not in data:
            raise ConfigError(f"{op}: '{path}' holds a dict without an 'images' key (keys: {sorted(map(str, data))})")
        data = data["images"]
    if not isinstance(data, Tensor):
        raise ConfigError(f"{op}: '{path}' must hold a tensor of images, got {type(data).__name__}")
    if data.dim() == 3:
        data = data.unsqueeze(1)
    images = _check_images(data, f"images in {path}", op)
    return images.float()


def describe_classifier(info: Dict[str, object]) -> str:
    """One line about a classifier's info: test accuracy and training budget."""
    config = info.get("config", {})
    return (f"test accuracy {100 * float(info['test_accuracy']):.1f}% on {config.get('test_images')} held-out renders "
            f"({config.get('steps')} steps x {config.get('batch_size')} images, {config.get('objects')} objects, "
            f"{float(info.get('seconds', float('nan'))):.0f} s)")

