"""Zero-shot filtering of face crops (or tiles) with open_clip.

MTCNN finds faces; which of them to forget may depend on a concept MTCNN knows nothing about
(e.g. children's faces). ``ClipFilter`` scores crops against text prompts per label, with
CLIP's usual prompt ensembling (the mean of each label's normalised prompt embeddings), and
keeps a crop when the probability of the ``keep`` labels reaches ``threshold``.

Offline caveat: no pretrained CLIP weights and no photos of children exist in this project's
offline environment (docs/design.md §4), so the filter is tested only for its mechanics, with tiny
randomly initialised open_clip models; how well the default prompts separate children from
adults has not been measured here. With network access, ``pretrained="openai"`` downloads the
weights through open_clip; offline, pass a local checkpoint file.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import InvalidSettingError
from ..fileio import looks_like_path
from .faces import FaceDetections, ImageInput, to_uint8_rgb

__all__ = ["DEFAULT_PROMPTS", "ClipFilter", "filter_detections"]

DEFAULT_PROMPTS: dict[str, list[str]] = {
    "child": [
        "a photo of a child's face",
        "a close-up photo of a young child",
        "a photo of a kid's face",
        "a photo of a baby's face",
    ],
    "adult": [
        "a photo of an adult's face",
        "a photo of a grown man's face",
        "a photo of a grown woman's face",
        "a close-up photo of an adult",
    ],
}


class ClipFilter:
    """open_clip zero-shot classifier over image crops.

    Args:
        model_name: open_clip model name (a built-in or registered config).
        pretrained: open_clip pretrained tag (needs network or a warm cache), a local
            checkpoint file (.safetensors, or a torch file read with ``weights_only=True``), or
            ``None`` for random weights.
        prompts: label -> text prompts; each label's prompt embeddings are averaged.
        keep: labels whose summed probability decides whether a crop is kept.
        threshold: keep a crop when that summed probability is at least this.
        device: torch device for the model.
        components: an already-built ``(model, preprocess, tokenizer)``; ``model_name`` and
            ``pretrained`` are then only used as labels.
        batch_size: crops per forward pass.
    """

    def __init__(
        self,
        model_name: str = "ViT-B-32",
        pretrained: str | Path | None = "openai",
        prompts: Mapping[str, Sequence[str]] | None = None,
        keep: Sequence[str] = ("child",),
        threshold: float = 0.5,
        device: str | torch.device = "cpu",
        components: tuple[torch.nn.Module, Callable[[Image.Image], torch.Tensor], Callable[..., torch.Tensor]]
        | None = None,
        batch_size: int = 32,
    ) -> None:
        prompts = DEFAULT_PROMPTS if prompts is None else prompts
        if not prompts:
            raise InvalidSettingError("prompts must name at least one label")
        for label, texts in prompts.items():
            if isinstance(texts, str) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
                raise InvalidSettingError(f"prompts[{label!r}] must be a non-empty list of non-empty strings, got {texts!r}")
        keep = (keep,) if isinstance(keep, str) else tuple(keep)
        unknown = [label for label in keep if label not in prompts]
        if not keep or unknown:
            raise InvalidSettingError(f"keep must name labels from the prompts ({', '.join(prompts)}), got {keep!r}")
        if not np.isfinite(threshold):
            raise InvalidSettingError(f"threshold must be a finite number, got {threshold!r}")
        if batch_size < 1:
            raise InvalidSettingError(f"batch_size must be positive, got {batch_size!r}")

        self.device = torch.device(device)
        self.model_name = model_name
        self.pretrained = None if pretrained is None else str(pretrained)
        if components is None:
            model, preprocess, tokenizer = self._build(model_name, pretrained)
        else:
            if len(components) != 3:
                raise InvalidSettingError("components must be (model, preprocess, tokenizer)")
            model, preprocess, tokenizer = components
        if not (hasattr(model, "encode_image") and hasattr(model, "encode_text")):
            raise TypeError(f"expected an open_clip model with encode_image/encode_text, got {type(model).__name__}")
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.labels = list(prompts)
        self.prompts = {label: list(texts) for label, texts in prompts.items()}
        self.keep = keep
        self._keep_columns = [self.labels.index(label) for label in keep]
        self.threshold = float(threshold)
        self.batch_size = batch_size
        self.text_features = self._encode_prompts()

    def __repr__(self) -> str:
        return (f"ClipFilter(model_name={self.model_name!r}, pretrained={self.pretrained!r}, "
                f"labels={self.labels}, keep={self.keep}, threshold={self.threshold})")

    @staticmethod
    def _build(model_name: str, pretrained: str | Path | None) -> tuple[Any, Any, Any]:
        import open_clip

        if pretrained is not None and (isinstance(pretrained, Path) or looks_like_path(str(pretrained))):
            if not Path(pretrained).is_file():
                raise FileNotFoundError(f"open_clip checkpoint not found: {pretrained}")
            pretrained = str(pretrained)
        try:
            # A file is read as safetensors or with torch.load(weights_only=True): never unpickles code.
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=pretrained, weights_only=True
            )
        except Exception as exc:
            raise RuntimeError(
                f"could not build open_clip model {model_name!r} with pretrained={pretrained!r}: "
                f"{type(exc).__name__}: {exc}. Offline, pass a local checkpoint file as `pretrained`."
            ) from exc
        return model, preprocess, open_clip.get_tokenizer(model_name)

    @torch.no_grad()
    def _encode_prompts(self) -> torch.Tensor:
        rows = []
        for label in self.labels:
            tokens = self.tokenizer(self.prompts[label]).to(self.device)
            embeddings = self.model.encode_text(tokens).float()
            embeddings = embeddings / embeddings.norm(dim=-1, keepdim=True)
            mean = embeddings.mean(dim=0)
            rows.append(mean / mean.norm())
        return torch.stack(rows)  # (n_labels, D)

    def _logit_scale(self) -> float:
        scale = getattr(self.model, "logit_scale", None)
        # open_clip stores log(scale); CLIP's trained value is ~100
        return float(scale.exp().reshape(-1)[0]) if isinstance(scale, torch.Tensor) else 100.0

    @torch.no_grad()
    def scores(self, crops: Sequence[ImageInput]) -> np.ndarray:
        """Softmax probabilities over ``labels`` for each crop: (N, n_labels) float32."""
        images = [Image.fromarray(to_uint8_rgb(crop)) for crop in crops]
        if not images:
            return np.zeros((0, len(self.labels)), np.float32)
        scale = self._logit_scale()
        chunks = []
        for start in range(0, len(images), self.batch_size):
            batch = torch.stack([self.preprocess(image) for image in images[start:start + self.batch_size]])
            features = self.model.encode_image(batch.to(self.device)).float()
            features = features / features.norm(dim=-1, keepdim=True)
            chunks.append((scale * features @ self.text_features.T).softmax(dim=-1).cpu())
        return torch.cat(chunks).numpy().astype(np.float32)

    def keep_mask(self, crops: Sequence[ImageInput]) -> np.ndarray:
        """Boolean (N,): the ``keep`` labels' probability is at least ``threshold``."""
        probabilities = self.scores(crops)
        return probabilities[:, self._keep_columns].sum(axis=1) >= self.threshold


def crop_boxes(image: ImageInput, boxes: np.ndarray, margin: float = 0.2) -> list[Image.Image]:
    """Crops of ``boxes`` from ``image``, each side widened by ``margin`` × the box size and
    clipped to the image (CLIP sees some context around a face, as in its training photos)."""
    if margin < 0:
        raise InvalidSettingError(f"margin must be >= 0, got {margin!r}")
    pixels = to_uint8_rgb(image)
    height, width = pixels.shape[:2]
    picture = Image.fromarray(pixels)
    crops = []
    for x0, y0, x1, y1 in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
        dx, dy = (x1 - x0) * margin, (y1 - y0) * margin
        left, top = max(0, int(np.floor(x0 - dx))), max(0, int(np.floor(y0 - dy)))
        right, bottom = min(width, int(np.ceil(x1 + dx))), min(height, int(np.ceil(y1 + dy)))
        # a degenerate box still yields a 1-pixel crop rather than an error mid-survey
        right, bottom = max(right, min(left + 1, width)), max(bottom, min(top + 1, height))
        crops.append(picture.crop((left, top, right, bottom)))
    return crops


def filter_detections(image: ImageInput, detections: FaceDetections, clip_filter: ClipFilter,
                      margin: float = 0.2) -> FaceDetections:
    """The detections whose crops (box widened by ``margin``) ``clip_filter`` keeps."""
    if len(detections) == 0:
        return detections
    mask = clip_filter.keep_mask(crop_boxes(image, detections.boxes, margin))
    return FaceDetections(detections.boxes[mask], detections.scores[mask])
