"""Image metrics of docs/design.md §3: Fréchet distance in a chosen feature space, Inception score,
CLIP cosine, PSNR/SSIM and classifier accuracy on generator outputs.

All take RGB images in [-1, 1] (B, 3, H, W). Inputs are moved to the device of the model that
measures them, in batches, under ``torch.no_grad()``. Where torchmetrics has the metric it does
the arithmetic; the module docstrings of each function note the torchmetrics quirks handled.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InvalidSettingError
from .features import FeatureExtractor


def _device_of(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def _check_images(images: Tensor, what: str) -> None:
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise InvalidSettingError(f"{what}: expected RGB images (B, 3, H, W) in [-1, 1], got {shape}")


def _check_pair(outputs: Tensor, targets: Tensor) -> None:
    _check_images(outputs, "outputs")
    _check_images(targets, "targets")
    if outputs.shape != targets.shape:
        raise InvalidSettingError(f"outputs {tuple(outputs.shape)} and targets {tuple(targets.shape)} differ in shape")


def _batched(module: nn.Module, images: Tensor, batch_size: int) -> Tensor:
    device = _device_of(module)
    parts = [module(images[i:i + batch_size].to(device)).float() for i in range(0, images.shape[0], batch_size)]
    return torch.cat(parts)


class _TorchmetricsFeatures(nn.Module):
    """Adapter giving torchmetrics' FID what it expects of a custom feature module.

    With a custom module and ``normalize=True`` torchmetrics 1.9 passes the float images through
    untouched (it only converts to uint8 for its own Inception), and it reads ``num_features``
    instead of probing the module with a 3×299×299 dummy image.
    """

    def __init__(self, extractor: FeatureExtractor, num_features: int) -> None:
        super().__init__()
        self.extractor = extractor
        self.num_features = num_features

    def forward(self, images: Tensor) -> Tensor:
        if images.dtype == torch.uint8:  # in case a torchmetrics version converts after all
            images = images.float() / 255.0
        return self.extractor(images * 2 - 1)


@torch.no_grad()
def frechet_distance(real: Tensor, fake: Tensor, extractor: FeatureExtractor, batch_size: int = 256) -> float:
    """Fréchet distance between Gaussians fitted to ``extractor`` features of two image sets.

    Uses torchmetrics' FrechetInceptionDistance with the extractor as its feature module
    (float64 statistics; the matrix square root via eigenvalues of Σ₁Σ₂). The exact value
    depends on the feature space: report ``extractor.name`` with it.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    _check_images(real, "real")
    _check_images(fake, "fake")
    if real.shape[0] < 2 or fake.shape[0] < 2:
        raise InvalidSettingError(f"Fréchet distance needs at least 2 images per set; got {real.shape[0]} real "
                                  f"and {fake.shape[0]} fake")
    device = _device_of(extractor)
    dim = getattr(extractor, "dim", None)
    if dim is None:
        dim = int(extractor(real[:2].to(device)).shape[-1])
    metric = FrechetInceptionDistance(feature=_TorchmetricsFeatures(extractor, dim), normalize=True).to(device)
    for images, is_real in ((real, True), (fake, False)):
        for i in range(0, images.shape[0], batch_size):
            batch = images[i:i + batch_size].to(device).float()
            metric.update((batch + 1) / 2, real=is_real)
    value = float(metric.compute())
    # The eigenvalue square root leaves ~1e-6-relative noise; a distance is never below zero.
    return max(value, 0.0)


@torch.no_grad()
def inception_score(images: Tensor, logits_module: nn.Module, splits: int = 1, batch_size: int = 256,
                    seed: int = 0) -> tuple[float, float]:
    """Inception score exp(E KL(p(y|x) ‖ p(y))) with any module returning logits (e.g. our
    SmallClassifier, or Inception logits). Returns (mean, std over splits; 0.0 for one split).

    torchmetrics' InceptionScore shuffles with the global RNG before splitting and reports a NaN
    std for a single split; we seed the shuffle without touching the global RNG and return 0.0.
    """
    from torchmetrics.image.inception import InceptionScore

    _check_images(images, "images")
    if splits < 1 or images.shape[0] < splits:
        raise InvalidSettingError(f"need at least one image per split; got {images.shape[0]} images, {splits} splits")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        metric = InceptionScore(feature=logits_module, splits=splits, normalize=False)
    metric = metric.to(_device_of(logits_module))
    was_training = logits_module.training
    logits_module.eval()
    try:
        for i in range(0, images.shape[0], batch_size):
            metric.update(images[i:i + batch_size].to(_device_of(logits_module)).float())
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            torch.manual_seed(seed)
            warnings.filterwarnings("ignore", message=".*degrees of freedom.*")  # std of one split
            mean, std = metric.compute()
    finally:
        logits_module.train(was_training)
    std_value = float(std) if splits > 1 and math.isfinite(float(std)) else 0.0
    return float(mean), std_value


@torch.no_grad()
def clip_cosine(outputs: Tensor, targets: Tensor, extractor: FeatureExtractor, batch_size: int = 256) -> float:
    """Mean cosine similarity between each output's embedding and its own target's (the paper's
    CLIP metric when ``extractor`` is an OpenClipFeatures)."""
    _check_pair(outputs, targets)
    a = _batched(extractor, outputs, batch_size)
    b = _batched(extractor, targets, batch_size)
    return float(F.cosine_similarity(a.double(), b.double(), dim=-1).mean())


@torch.no_grad()
def psnr(outputs: Tensor, targets: Tensor, max_db: float = 100.0) -> float:
    """Mean over images of per-image PSNR (data range 2.0 for [-1,1]), each capped at ``max_db``
    so an exact reconstruction scores ``max_db`` rather than inf."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    _check_pair(outputs, targets)
    per_image = peak_signal_noise_ratio(outputs.double(), targets.to(outputs.device).double(), data_range=2.0,
                                        reduction="none", dim=(1, 2, 3))
    return float(per_image.clamp(max=max_db).mean())


def _ssim_gaussian(height: int, width: int, sigma: float = 1.5) -> float:
    """Sigma whose Gaussian window fits the image.

    torchmetrics ignores ``kernel_size`` for Gaussian windows and derives the size from sigma as
    2·int(3.5σ + 0.5) + 1 (11 for σ = 1.5); the image must be at least that big. For smaller
    images pick the largest odd window ≤ min(H, W) and the sigma that yields it.
    """
    default = 2 * int(3.5 * sigma + 0.5) + 1
    side = min(height, width)
    if side >= default:
        return sigma
    half = (side - 1) // 2
    return half / 3.5 if half > 0 else 0.1  # 0.1 → a 1-pixel window


@torch.no_grad()
def ssim(outputs: Tensor, targets: Tensor) -> float:
    """Mean SSIM (torchmetrics, Gaussian window σ=1.5, data range 2.0; window shrunk for
    images under 11 px)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    _check_pair(outputs, targets)
    sigma = _ssim_gaussian(*outputs.shape[-2:])
    value = structural_similarity_index_measure(outputs.float(), targets.to(outputs.device).float(),
                                                sigma=sigma, data_range=2.0)
    return float(value)


def _check_mask(mask: Tensor, images: Tensor) -> Tensor:
    if mask.ndim != 4 or mask.shape[0] != images.shape[0] or mask.shape[1] != 1 or mask.shape[-2:] != images.shape[-2:]:
        raise InvalidSettingError(f"mask must be (B, 1, H, W) matching images {tuple(images.shape)}, got {tuple(mask.shape)}")
    return mask.to(images.device, torch.float64)


@torch.no_grad()
def masked_psnr(outputs: Tensor, targets: Tensor, mask: Tensor, max_db: float = 100.0) -> float:
    """PSNR over the pixels where ``mask`` (B, 1, H, W) is 1, pooled over the whole set (data
    range 2.0), capped at ``max_db``. Pooling keeps images with few such pixels from dominating."""
    _check_pair(outputs, targets)
    weight = _check_mask(mask, outputs)
    count = float(weight.sum()) * outputs.shape[1]
    if count == 0:
        return float("nan")
    squared = (outputs.double() - targets.to(outputs.device).double()).pow(2)
    mse = float((squared * weight).sum()) / count
    return max_db if mse == 0 else min(max_db, 10 * math.log10(4.0 / mse))


@torch.no_grad()
def masked_ssim(outputs: Tensor, targets: Tensor, mask: Tensor) -> float:
    """Mean of torchmetrics' SSIM map over the pixels where ``mask`` (B, 1, H, W) is 1."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    _check_pair(outputs, targets)
    weight = _check_mask(mask, outputs)
    if float(weight.sum()) == 0:
        return float("nan")
    sigma = _ssim_gaussian(*outputs.shape[-2:])
    _, ssim_map = structural_similarity_index_measure(outputs.float(), targets.to(outputs.device).float(), sigma=sigma,
                                                      data_range=2.0, return_full_image=True)
    ssim_map = ssim_map.double().mean(dim=1, keepdim=True)
    return float((ssim_map * weight).sum() / weight.sum())


@torch.no_grad()
def classifier_accuracy(outputs: Tensor, labels: Tensor, classifier: nn.Module, batch_size: int = 256) -> float:
    """Fraction of outputs the classifier assigns to their label, in [0, 1]."""
    _check_images(outputs, "outputs")
    if labels.shape[0] != outputs.shape[0]:
        raise InvalidSettingError(f"{outputs.shape[0]} outputs but {labels.shape[0]} labels")
    if outputs.shape[0] == 0:
        raise InvalidSettingError("no outputs to classify")
    was_training = classifier.training
    classifier.eval()
    try:
        predictions = _batched(classifier, outputs, batch_size).argmax(dim=-1)
    finally:
        classifier.train(was_training)
    return float((predictions.cpu() == labels.cpu().long()).float().mean())


def extractor_name(module: nn.Module) -> str:
    """The name a report should give for the feature space / classifier that measured."""
    return getattr(module, "name", None) or getattr(module, "source", None) or type(module).__name__


def evaluate_outputs(outputs: Tensor, targets: Tensor, *, extractor: FeatureExtractor | None = None,
                     classifier: nn.Module | None = None, labels: Tensor | None = None,
                     clip: FeatureExtractor | None = None, batch_size: int = 256) -> dict[str, float | str]:
    """The §3 metrics of one output set against its ground truth, as a flat dict that names the
    models used: psnr, ssim; fd + fd_features with an extractor; accuracy, is_mean, is_std +
    classifier with a classifier (accuracy needs labels); clip_cosine + clip_model with clip."""
    report: dict[str, float | str] = {"psnr": psnr(outputs, targets), "ssim": ssim(outputs, targets)}
    if extractor is not None:
        report["fd"] = frechet_distance(targets, outputs, extractor, batch_size=batch_size)
        report["fd_features"] = extractor_name(extractor)
    if classifier is not None:
        report["classifier"] = extractor_name(classifier)
        if labels is not None:
            report["accuracy"] = classifier_accuracy(outputs, labels, classifier, batch_size=batch_size)
        report["is_mean"], report["is_std"] = inception_score(outputs, classifier, batch_size=batch_size)
    if clip is not None:
        report["clip_cosine"] = clip_cosine(outputs, targets, clip, batch_size=batch_size)
        report["clip_model"] = extractor_name(clip)
    return report
