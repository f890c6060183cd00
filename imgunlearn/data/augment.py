"""Batch augmentations for unlearning and base training: geometry, light, colour, optics.

The forget set is small (a few hundred faces), while the faces a sanitizer meets vary in size,
orientation, light, colour and sharpness. Augmenting the forget tiles, and the retain tiles
alike so that the retain constraint holds on backgrounds the set does not hold, makes the
encoder forget faces under those variations rather than the exact pixels it was shown: on the
first demo set, zooming out alone took held-out face survival from 4.7% to 0.8% (mean of four
seeds). Nadir drone photos show people at every angle, hence the 90° rotations; survey
photos come as JPEGs of many cameras, hence the blur, JPEG and colour terms. The functions are
pure: tensors and a ``torch.Generator`` in, tensors out; images are (B, C, H, W) in [-1, 1]
and masks (B, 1, H, W) follow the images' geometry.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import InvalidSettingError
from ..geometry import blurred_box

# ITU-R BT.601 luma: what "grey" means for a photo.
_LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class Augmentation:
    """How strongly to augment each sample. ``Augmentation()`` mirrors and zooms out only;
    ``Augmentation.survey()`` covers what survey photos vary in (the demo's setting).

    Args:
        flip: mirror left-right with probability 1/2 (boxes move with the image).
        rotate: turn by a random multiple of 90° (square images; others by 0° or 180°).
        min_scale, max_scale: rescale by a factor drawn from ``[min_scale, max_scale]``.
            Below 1 the image shrinks and the border is filled by mirroring (the mask is
            mirrored alike): smaller faces, as from a higher flight. Above 1 a random window
            is enlarged to the full size: larger faces. 1 and 1 turn it off.
        brightness: a shift drawn from ``[-brightness, brightness]`` (images span 2).
        contrast: a factor about the image mean drawn from ``[1 - contrast, 1 + contrast]``.
        saturation: colour saturation scaled by a factor from ``[1 - saturation, 1 + saturation]``.
        grey: probability of turning a sample grey (a monochrome camera, a grey face).
        blur: Gaussian blur with sigma drawn from ``[0, blur]`` pixels, on half the samples.
        jpeg: probability of a JPEG round trip at a quality drawn from ``[jpeg_quality, 95]``.
        jpeg_quality: the lowest JPEG quality drawn.
    """

    flip: bool = True
    rotate: bool = False
    min_scale: float = 0.6
    max_scale: float = 1.0
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    grey: float = 0.0
    blur: float = 0.0
    jpeg: float = 0.0
    jpeg_quality: int = 30

    def __post_init__(self) -> None:
        # A factor of 1 - 1 = 0 would flatten an image; a shift of 2 spans the whole range.
        limits = {"brightness": 2.0, "contrast": 1.0, "saturation": 1.0}
        for name, limit in limits.items():
            value = getattr(self, name)
            if not 0 <= value < limit:
                raise InvalidSettingError(f"augmentation {name} must be in [0, {limit:g}), got {value}")
        for name in ("grey", "jpeg"):
            if not 0 <= getattr(self, name) <= 1:
                raise InvalidSettingError(f"augmentation {name} is a probability in [0, 1], got {getattr(self, name)}")
        if not 0.5 <= self.min_scale <= 1:
            # Below 1/2 the mirrored border would need more than one reflection.
            raise InvalidSettingError(f"augmentation min_scale must be in [0.5, 1], got {self.min_scale}")
        if not 1 <= self.max_scale <= 2:
            raise InvalidSettingError(f"augmentation max_scale must be in [1, 2], got {self.max_scale}")
        if not 0 <= self.blur <= 10:
            raise InvalidSettingError(f"augmentation blur (largest sigma in pixels) must be in [0, 10], got {self.blur}")
        if not 1 <= self.jpeg_quality <= 95:
            raise InvalidSettingError(f"augmentation jpeg_quality must be in [1, 95], got {self.jpeg_quality}")

    @classmethod
    def survey(cls, **changes: Any) -> "Augmentation":
        """Every variation survey photos show, at strengths a face stays recognisable under."""
        return replace(cls(flip=True, rotate=True, min_scale=0.5, max_scale=1.5, brightness=0.2, contrast=0.3,
                           saturation=0.5, grey=0.2, blur=1.2, jpeg=0.3, jpeg_quality=30), **changes)

    @classmethod
    def turns(cls, **changes: Any) -> "Augmentation":
        """The defaults (mirror, zoom out) plus quarter turns: people lie at every angle in nadir photos."""
        return replace(cls(rotate=True), **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PRESETS = {"default": Augmentation, "turns": Augmentation.turns, "survey": Augmentation.survey}


def resolve_augmentation(value: Augmentation | dict[str, Any] | str | bool | None) -> Augmentation | None:
    """``True`` → the defaults, ``False``/``None`` → none, a preset name (``"default"``,
    ``"survey"``), or a dict of fields (with an optional ``"preset"`` to start from)."""
    if value is None or value is False:
        return None
    if value is True:
        return Augmentation()
    if isinstance(value, Augmentation):
        return value
    if isinstance(value, str):
        value = {"preset": value}
    if isinstance(value, dict):
        fields = dict(value)
        preset = fields.pop("preset", "default")
        if preset not in PRESETS:
            raise InvalidSettingError(f"unknown augmentation preset {preset!r}; choose one of {sorted(PRESETS)}")
        unknown = set(fields) - set(Augmentation.__dataclass_fields__)
        if unknown:
            raise InvalidSettingError(f"unknown augmentation field(s) {sorted(unknown)}; "
                                      f"expected some of {sorted(Augmentation.__dataclass_fields__)}")
        return PRESETS[preset](**fields)
    raise TypeError(f"augment must be a bool, a preset name, a dict or an Augmentation, got {type(value).__name__}")


def _device(generator: torch.Generator | None) -> torch.device | str:
    return generator.device if generator is not None else "cpu"


def _uniform(count: int, spread: float, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """``count`` values from [-spread, spread], shaped to broadcast over (B, C, H, W)."""
    draws = torch.rand(count, generator=generator, device=_device(generator))
    return ((draws * 2 - 1) * spread).to(like).view(count, 1, 1, 1)


def _chance(count: int, probability: float, generator: torch.Generator | None) -> list[bool]:
    return (torch.rand(count, generator=generator, device=_device(generator)) < probability).tolist()


def random_flips(images: torch.Tensor, masks: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mirror each sample left-right with probability 1/2; its mask goes with it."""
    flip = (torch.rand(images.shape[0], generator=generator, device=_device(generator)) < 0.5).to(images.device)
    flip = flip.view(-1, 1, 1, 1)
    images = torch.where(flip, images.flip(-1), images)
    if masks is not None:
        masks = torch.where(flip, masks.flip(-1), masks)
    return images, masks


def random_rotations(images: torch.Tensor, masks: torch.Tensor | None = None,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Turn each sample by a random multiple of 90° (only 0° or 180° unless it is square)."""
    square = images.shape[-1] == images.shape[-2]
    draws = torch.randint(0, 4, (images.shape[0],), generator=generator, device=_device(generator)).tolist()
    turns = [k if square else 2 * (k % 2) for k in draws]
    images = torch.stack([torch.rot90(image, k, dims=(-2, -1)) for image, k in zip(images, turns)])
    if masks is not None:
        masks = torch.stack([torch.rot90(mask, k, dims=(-2, -1)) for mask, k in zip(masks, turns)])
    return images, masks


def random_scale(images: torch.Tensor, masks: torch.Tensor | None, min_scale: float, max_scale: float = 1.0,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rescale each sample by a factor in [min_scale, max_scale] about a random point.

    Shrunk samples are mirrored into the border, and the mask is shrunk and mirrored the same
    way, so a face copied into the border by the mirroring is masked too (a box edge stays a
    box edge: a cell is masked if any of it was). Enlarged samples show a random window of the
    original; the mask is cut and enlarged alike.
    """
    height, width = images.shape[-2:]
    device = _device(generator)
    scales = min_scale + torch.rand(images.shape[0], generator=generator, device=device) * (max_scale - min_scale)
    offsets = torch.rand(images.shape[0], 2, generator=generator, device=device)
    out_images, out_masks = [], []
    for index, (scale, (fx, fy)) in enumerate(zip(scales.tolist(), offsets.tolist())):
        image = images[index:index + 1]
        mask = masks[index:index + 1].float() if masks is not None else None
        if scale >= 1:
            # Enlarge: a window of 1/scale of each side, resized to the full size.
            h, w = max(1, round(height / scale)), max(1, round(width / scale))
            top, left = round((height - h) * fy), round((width - w) * fx)
            image = F.interpolate(image[..., top:top + h, left:left + w], size=(height, width), mode="bilinear",
                                  align_corners=False)
            if mask is not None:
                mask = F.interpolate(mask[..., top:top + h, left:left + w], size=(height, width), mode="nearest")
        else:
            h, w = max(1, round(height * scale)), max(1, round(width * scale))
            left, top = round((width - w) * fx), round((height - h) * fy)
            padding = (left, width - w - left, top, height - h - top)
            # Reflection needs a border narrower than the content: only tiny images miss that.
            mode = "reflect" if max(padding) < min(h, w) else "replicate"
            image = F.pad(F.interpolate(image, size=(h, w), mode="bilinear", antialias=True, align_corners=False),
                          padding, mode=mode)
            if mask is not None:
                mask = F.pad(F.adaptive_max_pool2d(mask, (h, w)), padding, mode=mode)
        out_images.append(image)
        if mask is not None:
            out_masks.append(mask.to(masks.dtype))
    return torch.cat(out_images), (torch.cat(out_masks) if masks is not None else None)


def photometric_jitter(images: torch.Tensor, brightness: float, contrast: float,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample contrast about the image mean, then a brightness shift; clamped to [-1, 1]."""
    count = images.shape[0]
    factor = 1 + _uniform(count, contrast, generator, images)
    shift = _uniform(count, brightness, generator, images)
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    return ((images - mean) * factor + mean + shift).clamp(-1, 1)


def colour_jitter(images: torch.Tensor, saturation: float, grey: float,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Scale each sample's saturation by a factor from [1 - saturation, 1 + saturation]; turn
    it grey with probability ``grey``. Needs RGB (3 channels); clamped to [-1, 1]."""
    if images.shape[1] != 3:
        return images
    luma = (images * torch.tensor(_LUMA, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)).sum(
        dim=1, keepdim=True)
    factor = 1 + _uniform(images.shape[0], saturation, generator, images)
    greyed = torch.tensor(_chance(images.shape[0], grey, generator), device=images.device).view(-1, 1, 1, 1)
    factor = torch.where(greyed, torch.zeros_like(factor), factor)
    return (luma + (images - luma) * factor).clamp(-1, 1)


def random_blur(images: torch.Tensor, max_sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Gaussian-blur half the samples, each with a sigma from [0, max_sigma] pixels (a soft lens,
    motion, a low-resolution camera upsampled)."""
    chosen = _chance(images.shape[0], 0.5, generator)
    sigmas = (torch.rand(images.shape[0], generator=generator, device=_device(generator)) * max_sigma).tolist()
    out = []
    for image, blur, sigma in zip(images, chosen, sigmas):
        if blur and sigma >= 0.1 and min(image.shape[-2:]) > 1:  # a 1 px side has nothing to blur with
            image = blurred_box(image, (0, 0, image.shape[-1], image.shape[-2]), sigma)
        out.append(image)
    return torch.stack(out)


def random_jpeg(images: torch.Tensor, probability: float, lowest_quality: int,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Round-trip each sample through JPEG with probability ``probability``, at a quality drawn
    from [lowest_quality, 95]: the block and ringing artefacts of survey cameras' files."""
    from torchvision.io import decode_jpeg, encode_jpeg

    chosen = _chance(images.shape[0], probability, generator)
    qualities = torch.randint(lowest_quality, 96, (images.shape[0],), generator=generator,
                              device=_device(generator)).tolist()
    if images.shape[1] != 3 or not any(chosen):
        return images
    out = []
    for image, compress, quality in zip(images, chosen, qualities):
        if compress:
            pixels = ((image.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
            decoded = decode_jpeg(encode_jpeg(pixels, quality=quality)).to(image.device, torch.float32)
            image = (decoded / 127.5 - 1).to(image.dtype)
        out.append(image)
    return torch.stack(out)


def augment_batch(batch: dict[str, torch.Tensor], augmentation: Augmentation,
                  generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Augment a ``{"image", "mask"}`` batch; other keys pass through unchanged."""
    images, masks = batch["image"], batch.get("mask")
    if augmentation.flip:
        images, masks = random_flips(images, masks, generator)
    if augmentation.rotate:
        images, masks = random_rotations(images, masks, generator)
    if augmentation.min_scale < 1 or augmentation.max_scale > 1:
        images, masks = random_scale(images, masks, augmentation.min_scale, augmentation.max_scale, generator)
    if augmentation.brightness > 0 or augmentation.contrast > 0:
        images = photometric_jitter(images, augmentation.brightness, augmentation.contrast, generator)
    if augmentation.saturation > 0 or augmentation.grey > 0:
        images = colour_jitter(images, augmentation.saturation, augmentation.grey, generator)
    if augmentation.blur > 0:
        images = random_blur(images, augmentation.blur, generator)
    if augmentation.jpeg > 0:
        images = random_jpeg(images, augmentation.jpeg, augmentation.jpeg_quality, generator)
    result = {**batch, "image": images}
    if masks is not None:
        result["mask"] = masks
    return result
