"""IG-GAN's FID (invrender.metrics.frechet_distance and friends, invrender.fid, the RenderClassifier and
``invrender fid``): the Fréchet distance against closed forms and an independent eigenvalue oracle, the
classifier's shapes, a tiny training run, the cache, the score's category separation and the command line."""

import os

import numpy as np
import pytest
import torch
from scipy import linalg

from invrender import fid
from invrender.cli import main
from invrender.data import ShadedViews
from invrender.errors import ConfigError, MissingInputError
from invrender.metrics import feature_statistics, fid_from_features, frechet_distance
from invrender.models.networks import RenderClassifier
from invrender.synthetic import CATEGORIES

#: Settings of the tiny classifiers trained here (a second or two each at 32^2).
TINY = dict(objects=24, batch_size=24, width=8, feature_dim=24, lr=1e-2, test_objects=12, test_images=48)


def _spd(rng, d, scale=1.0):
    a = rng.standard_normal((d, d))
    return scale * (a @ a.T / d + 0.1 * np.eye(d))


def _oracle(mu1, s1, mu2, s2):
    """FID by eigenvalues: tr((s1 s2)^1/2) = sum sqrt(eig(s1^1/2 s2 s1^1/2)), a symmetric PSD matrix."""
    w, v = np.linalg.eigh(s1)
    r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    lam = np.linalg.eigvalsh(r1 @ s2 @ r1)
    diff = mu1 - mu2
    return diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(lam, 0, None)).sum()


# ------------------------------------------------------------------------------------------------
# Fréchet distance


def test_distance_of_a_set_to_itself_is_zero():
    x = np.random.default_rng(0).standard_normal((400, 16)) * 3 + 1
    assert abs(fid_from_features(x, x)) < 1e-8
    mu, sigma = feature_statistics(x)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-8


def test_mean_shift_gives_the_squared_shift_and_grows_with_it():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 12)) @ rng.standard_normal((12, 12))
    direction = rng.standard_normal(12)
    values = []
    for t in (0.25, 0.5, 1.0, 2.0, 4.0):
        shift = t * direction
        value = fid_from_features(x, x + shift)
        assert value == pytest.approx(shift @ shift, rel=1e-7, abs=1e-8)
        values.append(value)
    assert all(a < b for a, b in zip(values, values[1:]))


def test_closed_form_for_diagonal_covariances():
    rng = np.random.default_rng(2)
    d = 20
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-9)


def test_closed_form_for_commuting_covariances():
    rng = np.random.default_rng(3)
    d = 15
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    a, b = rng.uniform(0.05, 4.0, d), rng.uniform(0.05, 4.0, d)
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T  # same eigenvectors: s1 s2 = s2 s1, not diagonal
    assert np.abs(s1 - np.diag(np.diag(s1))).max() > 0.1
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)


def test_symmetric_and_matches_an_eigenvalue_oracle():
    rng = np.random.default_rng(4)
    for d, scale in ((3, 1.0), (32, 1.0), (64, 100.0)):
        mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d) * 2
        s1, s2 = _spd(rng, d, scale), _spd(rng, d, 0.5 * scale)
        forward, backward = frechet_distance(mu1, s1, mu2, s2), frechet_distance(mu2, s2, mu1, s1)
        assert forward == pytest.approx(backward, rel=1e-8)
        assert forward == pytest.approx(_oracle(mu1, s1, mu2, s2), rel=1e-8)
        # and the direct formula of the reference FID code with scipy's root
        direct = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2) - 2 * np.trace(linalg.sqrtm(s1 @ s2).real)
        assert forward == pytest.approx(direct, rel=1e-10)


def test_singular_covariances_few_samples():
    """Fewer samples than dimensions: singular covariances, a root with imaginary noise; still finite, ~ oracle."""
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((6, 30)), rng.standard_normal((8, 30)) + 0.5
    value = fid_from_features(a, b)
    assert np.isfinite(value)
    assert value == pytest.approx(_oracle(*feature_statistics(a), *feature_statistics(b)), rel=1e-4)
    zero = np.zeros((4, 4))
    assert frechet_distance(np.ones(4), zero, np.zeros(4), zero) == pytest.approx(4.0, abs=1e-9)


def test_torch_and_numpy_inputs_agree():
    rng = np.random.default_rng(6)
    mu1, mu2 = rng.standard_normal(10), rng.standard_normal(10)
    s1, s2 = _spd(rng, 10), _spd(rng, 10)
    expected = frechet_distance(mu1, s1, mu2, s2)
    as_torch = [torch.from_numpy(v) for v in (mu1, s1, mu2, s2)]
    assert frechet_distance(*as_torch) == pytest.approx(expected, rel=1e-12)
    assert frechet_distance(*[t.float() for t in as_torch]) == pytest.approx(expected, rel=1e-5)
    x = rng.standard_normal((50, 10))
    assert fid_from_features(torch.from_numpy(x), x + 1) == pytest.approx(fid_from_features(x, x + 1), rel=1e-12)


@pytest.mark.parametrize("args, name", [
    ((np.zeros((2, 2)), np.eye(2), np.zeros(2), np.eye(2)), "mu1"),
    ((np.zeros(2), np.eye(2), np.zeros(3), np.eye(2)), "mu2"),
    ((np.zeros(2), np.eye(3), np.zeros(2), np.eye(2)), "sigma1"),
    ((np.zeros(2), np.eye(2), np.zeros(2), np.ones(2)), "sigma2"),
    ((np.array([0.0, np.nan]), np.eye(2), np.zeros(2), np.eye(2)), "mu1"),
    ((np.zeros(2), np.eye(2), np.zeros(2), np.diag([1.0, np.inf])), "sigma2"),
    (([0.0, 0.0], np.eye(2), np.zeros(2), np.eye(2)), "mu1"),
    ((np.zeros(2), np.eye(2).astype(complex), np.zeros(2), np.eye(2)), "sigma1"),
])
def test_bad_inputs_name_the_argument(args, name):
    with pytest.raises((ValueError, TypeError), match=f"'{name}'"):
        frechet_distance(*args)


def test_not_a_covariance_raises():
    with pytest.raises(ValueError, match="imaginary"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), -np.eye(2))


def test_feature_statistics_matches_numpy_cov():
    x = np.random.default_rng(7).standard_normal((57, 9)) * np.arange(1, 10)
    mu, sigma = feature_statistics(torch.from_numpy(x).float())
    assert mu.dtype == sigma.dtype == np.float64 and mu.shape == (9,) and sigma.shape == (9, 9)
    np.testing.assert_allclose(mu, x.mean(0), rtol=1e-6)
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float32).astype(np.float64), rowvar=False), rtol=1e-10)
    mu, sigma = feature_statistics(x[:2])
    np.testing.assert_allclose(sigma, np.cov(x[:2], rowvar=False), rtol=1e-12)


def test_feature_statistics_and_fid_from_features_errors():
    with pytest.raises(ValueError, match="'features'.*at least 2"):
        feature_statistics(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="'features'"):
        feature_statistics(np.zeros(4))
    with pytest.raises(ValueError, match="'features1' and 'features2'"):
        fid_from_features(np.zeros((3, 4)), np.zeros((3, 5)))
    with pytest.raises(ValueError, match="'features2'"):
        fid_from_features(np.zeros((3, 4)), np.zeros((1, 4)))


# ------------------------------------------------------------------------------------------------
# the classifier


@pytest.mark.parametrize("size", [32, 64, 128])
def test_classifier_shapes(size):
    model = RenderClassifier(width=4, feature_dim=20).eval()
    x = torch.rand(2, 1, size, size)
    assert model(x).shape == (2, 6)
    assert model.features(x).shape == (2, 20)
    torch.testing.assert_close(model.fc(model.features(x)), model(x))


def test_classifier_defaults_and_errors():
    model = RenderClassifier()
    assert model.features(torch.rand(1, 1, 64, 64)).shape == (1, 256)
    assert model(torch.rand(1, 1, 64, 64)).shape == (1, 6)
    with pytest.raises(ValueError, match="'x'.*\\(B, 1, H, W\\)"):
        model(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match="'x'.*at least 16"):
        model(torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match="'feature_dim'"):
        RenderClassifier(feature_dim=0)


# ------------------------------------------------------------------------------------------------
# training and the cache


def test_tiny_training_lowers_the_loss():
    model, info = fid.train_fid_classifier(32, steps=30, progress=False, **TINY)
    losses = info["losses"]
    assert len(losses) == info["steps"] == 30
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    assert 0.0 <= info["test_accuracy"] <= 1.0 and info["seconds"] > 0
    assert info["config"]["image_size"] == 32 and info["config"]["categories"] == list(CATEGORIES)
    assert model.image_size == 32 and not model.training


def test_training_is_deterministic_and_leaves_the_global_rng_alone():
    def train():
        return fid.train_fid_classifier(32, steps=2, seed=3, progress=False, **dict(TINY, test_images=6))[0]

    torch.manual_seed(5)
    m1 = train()
    after = torch.rand(3)
    torch.manual_seed(5)
    torch.testing.assert_close(after, torch.rand(3), rtol=0, atol=0)
    m2 = train()
    for (k, v1), v2 in zip(m1.state_dict().items(), m2.state_dict().values()):
        torch.testing.assert_close(v1, v2, rtol=0, atol=0, msg=k)


def test_training_arguments_are_checked():
    with pytest.raises(ConfigError, match="'steps'"):
        fid.train_fid_classifier(32, steps=0, progress=False)
    with pytest.raises(ConfigError, match="unknown arguments \\['widht'\\]"):
        fid.train_fid_classifier(32, widht=8, progress=False)
    with pytest.raises(ConfigError, match="'image_size'"):
        fid.train_fid_classifier(8, progress=False)


def test_cache_round_trip(tmp_path, capsys):
    cache = str(tmp_path)
    with pytest.raises(MissingInputError, match="does not exist.*invrender fid train --size 32"):
        fid.load_fid_classifier(32, cache_dir=cache, train_if_missing=False)
    model, info = fid.load_fid_classifier(32, cache_dir=cache, progress=False, steps=3, **TINY)
    path = fid.classifier_path(32, cache)
    assert path == os.path.join(cache, "fid", "classifier-32-v1.pt") and os.path.isfile(path)
    assert "training the 32px FID classifier" in capsys.readouterr().out
    assert not [f for f in os.listdir(os.path.dirname(path)) if "tmp" in f]  # written atomically, tmp removed

    again, info2 = fid.load_fid_classifier(32, cache_dir=cache, train_if_missing=False)
    x = torch.rand(5, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)
        torch.testing.assert_close(again.features(x), model.features(x), rtol=0, atol=0)
    assert info2["test_accuracy"] == info["test_accuracy"] and info2["config"] == info["config"]
    assert again.image_size == 32

    # a file for another setting (here: another category order) is stale, not silently used
    saved = torch.load(path, weights_only=True)
    saved["info"]["config"]["categories"] = list(reversed(CATEGORIES))
    torch.save(saved, path)
    with pytest.raises(MissingInputError, match="another setting: categories="):
        fid.load_fid_classifier(32, cache_dir=cache, train_if_missing=False)
    with open(path, "wb") as f:
        f.write(b"truncated")
    with pytest.raises(MissingInputError, match="could not be read"):
        fid.load_fid_classifier(32, cache_dir=cache, train_if_missing=False)


def test_cache_honours_invrender_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("INVRENDER_CACHE", str(tmp_path))
    assert fid.classifier_path(64) == os.path.join(str(tmp_path), "fid", "classifier-64-v1.pt")


# ------------------------------------------------------------------------------------------------
# fid_score


@pytest.fixture(scope="module")
def tiny_classifier():
    model, info = fid.train_fid_classifier(32, steps=40, seed=0, progress=False, **TINY)
    return model


def _held_out(category, n=120, size=32, seed=7):
    views = ShadedViews(category, 40, regime="unlimited", length=n, image_size=size, split="test", seed=seed)
    return torch.stack([views[i]["image"] for i in range(n)])


def test_fid_separates_categories(tiny_classifier, tmp_path):
    chairs = _held_out("chair")
    kwargs = dict(classifier=tiny_classifier, reference_images=160, cache_dir=str(tmp_path))
    same = fid.fid_score(chairs, category="chair", **kwargs)
    others = {c: fid.fid_score(chairs, category=c, **kwargs) for c in ("car", "airplane", "mug")}
    assert same >= 0
    assert all(other > 4 * same for other in others.values()), (same, others)
    # cached reference statistics give the same number
    cached = [f for f in os.listdir(tmp_path / "fid") if f.startswith("reference-chair-32-default-")]
    assert len(cached) == 1
    assert fid.fid_score(chairs, category="chair", **kwargs) == pytest.approx(same, rel=1e-12)


def test_fid_reference_forms_agree_and_resizing(tiny_classifier):
    a, b = _held_out("sofa", 60, seed=1), _held_out("sofa", 60, seed=2)
    by_images = fid.fid_score(a, reference=b, classifier=tiny_classifier)
    stats = feature_statistics(fid.classifier_features(b, tiny_classifier))
    assert fid.fid_score(a, reference=stats, classifier=tiny_classifier) == pytest.approx(by_images, rel=1e-12)
    assert fid.fid_score(b, reference=b, classifier=tiny_classifier) == pytest.approx(0.0, abs=1e-6)
    # 64^2 samples are area-averaged to the classifier's 32^2
    big = _held_out("sofa", 60, size=64, seed=1)
    shrunk = torch.nn.functional.avg_pool2d(big, 2)
    assert fid.fid_score(big, reference=b, classifier=tiny_classifier) == pytest.approx(
        fid.fid_score(shrunk, reference=b, classifier=tiny_classifier), rel=1e-6)
    # uint8 images are read as value / 255
    as_bytes = (a * 255).round().to(torch.uint8)
    assert fid.fid_score(as_bytes, reference=b, classifier=tiny_classifier) == pytest.approx(by_images, rel=0.05)


def test_fid_score_errors(tiny_classifier):
    x = torch.rand(4, 1, 32, 32)
    with pytest.raises(ConfigError, match="'images' must have 1 channel.*3 channels"):
        fid.fid_score(torch.rand(4, 3, 32, 32), category="chair", classifier=tiny_classifier)
    with pytest.raises(ConfigError, match="'images'.*\\[0, 1\\]"):
        fid.fid_score(x * 2, category="chair", classifier=tiny_classifier)
    with pytest.raises(ConfigError, match="'images'.*at least 2"):
        fid.fid_score(x[:1], category="chair", classifier=tiny_classifier)
    with pytest.raises(ConfigError, match="'images'.*square"):
        fid.fid_score(torch.rand(4, 1, 32, 40), category="chair", classifier=tiny_classifier)
    with pytest.raises(ConfigError, match="exactly one of 'category' and 'reference', got both"):
        fid.fid_score(x, category="chair", reference=x, classifier=tiny_classifier)
    with pytest.raises(ConfigError, match="got neither"):
        fid.fid_score(x, classifier=tiny_classifier)
    with pytest.raises(ConfigError, match="'category'.*'dog'"):
        fid.fid_score(x, category="dog", classifier=tiny_classifier)
    with pytest.raises(ConfigError, match="'reference'"):
        fid.fid_score(x, reference="chair", classifier=tiny_classifier)


# ------------------------------------------------------------------------------------------------
# the command line


def test_cli_train_and_score(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("INVRENDER_CACHE", str(tmp_path / "cache"))
    small = ["--size", "32", "--steps", "3", "--objects", "12", "--batch-size", "8", "--quiet"]
    assert main(["fid", "train", *small]) == 0
    out = capsys.readouterr().out
    path = fid.classifier_path(32)
    assert path.startswith(str(tmp_path)) and os.path.isfile(path)
    assert "test accuracy" in out and path in out
    mtime = os.stat(path).st_mtime_ns
    assert main(["fid", "train", *small]) == 0  # cached with these settings: not retrained
    assert "already cached" in capsys.readouterr().out and os.stat(path).st_mtime_ns == mtime

    samples = _held_out("mug", 20)
    torch.save(samples, tmp_path / "samples.pt")
    score = ["fid", "score", "--category", "mug", "--size", "32", "--reference-images", "40", "--quiet"]
    assert main([*score, "--samples", str(tmp_path / "samples.pt")]) == 0
    line = capsys.readouterr().out
    assert line.startswith("FID ") and "20 samples" in line
    value = float(line.split()[1])

    # the same images as a folder of PNGs (8-bit: nearly the same value)
    from PIL import Image

    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, im in enumerate(samples):
        Image.fromarray((im[0].numpy() * 255).round().astype(np.uint8)).save(folder / f"{i:03d}.png")
    assert main([*score, "--samples", str(folder)]) == 0
    assert float(capsys.readouterr().out.split()[1]) == pytest.approx(value, rel=0.05)

    torch.save(torch.rand(4, 3, 32, 32), tmp_path / "rgb.pt")
    assert main([*score, "--samples", str(tmp_path / "rgb.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("invrender: error: ") and "1 channel" in err and len(err.splitlines()) == 1
    assert main([*score, "--samples", str(tmp_path / "missing.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit) as e:
        main(["fid", "score", "--samples", "x.pt", "--category", "dog"])
    assert e.value.code == 2 and "invalid choice: 'dog'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["fid", "train", "--size", "8"])
    assert "at least 16" in capsys.readouterr().err
