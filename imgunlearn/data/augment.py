"""Batch augmentations for unlearning: random flips and photometric jitter.

The forget set is small (a few hundred faces), while the faces a sanitizer meets vary in
light, contrast and pose. Jittering the forget tiles (and the retain tiles alike) makes the
encoder forget faces under those variations rather than the exact pixels it was shown. The
functions are pure: tensors and a ``torch.Generator`` in, tensors out; images are (B, C, H, W)
in [-1, 1] and masks (B, 1, H, W) follow the images' geometry.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Augmentation:
    """How strongly to augment each sample.

    Args:
        flip: mirror left-right with probability 1/2 (boxes move with the image).
        brightness: a shift drawn from ``[-brightness, brightness]`` (images span 2).
        contrast: a factor about the image mean drawn from ``[1 - contrast, 1 + contrast]``.
        box_contrast: a factor drawn from ``[1 - box_contrast, 1 + box_contrast]`` applied
            about the box's mean inside the boxes only: faint and harsh faces on the same
            background.
    """

    flip: bool = True
    brightness: float = 0.2
    contrast: float = 0.4
    box_contrast: float = 0.0

    def __post_init__(self) -> None:
        # A factor of 1 - 1 = 0 would flatten an image; a shift of 2 spans the whole range.
        limits = {"brightness": 2.0, "contrast": 1.0, "box_contrast": 1.0}
        for name, limit in limits.items():
            value = getattr(self, name)
            if not 0 <= value < limit:
                raise ValueError(f"augmentation {name} must be in [0, {limit:g}), got {value}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_augmentation(value: Augmentation | dict[str, Any] | bool | None) -> Augmentation | None:
    """``True`` → the defaults, ``False``/``None`` → none, a dict → its fields."""
    if value is None or value is False:
        return None
    if value is True:
        return Augmentation()
    if isinstance(value, Augmentation):
        return value
    if isinstance(value, dict):
        unknown = set(value) - set(Augmentation.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown augmentation field(s) {sorted(unknown)}; "
                             f"expected some of {sorted(Augmentation.__dataclass_fields__)}")
        return Augmentation(**value)
    raise TypeError(f"augment must be a bool, a dict or an Augmentation, got {type(value).__name__}")


def _uniform(count: int, spread: float, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """``count`` values from [-spread, spread], shaped to broadcast over (B, C, H, W)."""
    draws = torch.rand(count, generator=generator, device=generator.device if generator else "cpu")
    return ((draws * 2 - 1) * spread).to(like).view(count, 1, 1, 1)


def random_flips(images: torch.Tensor, masks: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mirror each sample left-right with probability 1/2; its mask goes with it."""
    flip = (torch.rand(images.shape[0], generator=generator,
                       device=generator.device if generator else "cpu") < 0.5).to(images.device)
    flip = flip.view(-1, 1, 1, 1)
    images = torch.where(flip, images.flip(-1), images)
    if masks is not None:
        masks = torch.where(flip, masks.flip(-1), masks)
    return images, masks


def photometric_jitter(images: torch.Tensor, brightness: float, contrast: float,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample contrast about the image mean, then a brightness shift; clamped to [-1, 1]."""
    count = images.shape[0]
    factor = 1 + _uniform(count, contrast, generator, images)
    shift = _uniform(count, brightness, generator, images)
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    return ((images - mean) * factor + mean + shift).clamp(-1, 1)


def box_contrast_jitter(images: torch.Tensor, masks: torch.Tensor, contrast: float,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample contrast about the masked pixels' mean, inside the mask only."""
    factor = 1 + _uniform(images.shape[0], contrast, generator, images)
    inside = masks.to(images)
    mean = (images * inside).sum(dim=(2, 3), keepdim=True) / inside.sum(dim=(2, 3), keepdim=True).clamp_min(1)
    jittered = ((images - mean) * factor + mean).clamp(-1, 1)
    return images * (1 - inside) + jittered * inside


def augment_batch(batch: dict[str, torch.Tensor], augmentation: Augmentation,
                  generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Augment a ``{"image", "mask"}`` batch; other keys pass through unchanged."""
    images, masks = batch["image"], batch.get("mask")
    if augmentation.flip:
        images, masks = random_flips(images, masks, generator)
    if augmentation.box_contrast > 0 and masks is not None:
        images = box_contrast_jitter(images, masks, augmentation.box_contrast, generator)
    if augmentation.brightness > 0 or augmentation.contrast > 0:
        images = photometric_jitter(images, augmentation.brightness, augmentation.contrast, generator)
    result = {**batch, "image": images}
    if masks is not None:
        result["mask"] = masks
    return result
