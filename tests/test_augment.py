"""Batch augmentations: pure functions, and their use in a real unlearning run."""

from __future__ import annotations

import pytest
import torch

from imgunlearn import unlearn
from imgunlearn.data.augment import (
    Augmentation,
    augment_batch,
    box_contrast_jitter,
    photometric_jitter,
    random_flips,
    resolve_augmentation,
)


def _batch(count: int = 16, size: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(1)) * 1.2 - 0.6
    masks = torch.zeros(count, 1, size, size)
    masks[..., 2:6, 0:4] = 1  # a box on the left half
    return images, masks


def test_flips_mirror_some_samples_and_their_masks_with_them():
    images, masks = _batch()
    flipped, flipped_masks = random_flips(images, masks, torch.Generator().manual_seed(0))
    mirrored = [torch.equal(f, i.flip(-1)) for f, i in zip(flipped, images)]
    assert all(m or torch.equal(f, i) for m, f, i in zip(mirrored, flipped, images))
    assert 0 < sum(mirrored) < len(mirrored)
    for was_mirrored, mask, original in zip(mirrored, flipped_masks, masks):
        assert torch.equal(mask, original.flip(-1) if was_mirrored else original)
    # The box moved to the right half exactly where the image was mirrored.
    assert all(bool(m[..., 8:].any()) == w for m, w in zip(flipped_masks, mirrored))


def test_photometric_jitter_is_identity_at_zero_and_stays_in_range():
    images, _ = _batch()
    assert torch.allclose(photometric_jitter(images, 0.0, 0.0), images)
    jittered = photometric_jitter(images, 0.5, 0.9, torch.Generator().manual_seed(0))
    assert jittered.min() >= -1 and jittered.max() <= 1
    spread = lambda x: x.std(dim=(1, 2, 3))  # noqa: E731
    ratio = spread(jittered) / spread(images)
    assert ratio.min() < 0.9 and ratio.max() > 1.1, "contrast should go both ways across the batch"


def test_brightness_alone_shifts_each_image_by_one_value_within_bounds():
    images, _ = _batch()
    shifted = photometric_jitter(images, 0.3, 0.0, torch.Generator().manual_seed(0))
    shift = shifted - images  # no clamping: images lie in [-0.6, 0.6]
    per_image = shift.flatten(1)
    assert torch.allclose(per_image, per_image[:, :1].expand_as(per_image), atol=1e-6)
    assert per_image.abs().max() <= 0.3 + 1e-6


def test_box_contrast_changes_only_the_box():
    images, masks = _batch()
    jittered = box_contrast_jitter(images, masks, 0.8, torch.Generator().manual_seed(0))
    outside = masks.expand_as(images) == 0
    assert torch.equal(jittered[outside], images[outside])
    assert not torch.equal(jittered[~outside], images[~outside])


def test_same_generator_seed_gives_the_same_batch():
    images, masks = _batch()
    augmentation = Augmentation(box_contrast=0.5)
    first = augment_batch({"image": images, "mask": masks}, augmentation, torch.Generator().manual_seed(3))
    second = augment_batch({"image": images, "mask": masks}, augmentation, torch.Generator().manual_seed(3))
    assert torch.equal(first["image"], second["image"]) and torch.equal(first["mask"], second["mask"])


def test_resolving_augmentation_settings():
    assert resolve_augmentation(None) is None and resolve_augmentation(False) is None
    assert resolve_augmentation(True) == Augmentation()
    assert resolve_augmentation({"contrast": 0.1}) == Augmentation(contrast=0.1)
    with pytest.raises(ValueError, match="unknown augmentation field.*'hue'"):
        resolve_augmentation({"hue": 0.1})
    with pytest.raises(ValueError, match="contrast must be in \\[0, 1\\)"):
        Augmentation(contrast=1.0)
    with pytest.raises(TypeError, match="augment must be"):
        resolve_augmentation("yes")


def test_unlearning_with_augmentation_records_it_and_leaves_the_decoder(trained, toy_data):
    base = trained["kl"]
    decoder_before = [p.detach().clone() for p in base.decoder_parameters()]
    result = unlearn(base, forget=toy_data["round"], retain=toy_data["angular"], max_steps=3,
                     augment={"brightness": 0.1}, batch_size=8, lr=2e-3, progress=False)
    assert result.card["history"][-1]["augment"] == Augmentation(brightness=0.1).to_dict()
    assert all(torch.equal(a, b) for a, b in zip(decoder_before, result.decoder_parameters()))
    plain = unlearn(base, forget=toy_data["round"], retain=toy_data["angular"], max_steps=3,
                    batch_size=8, lr=2e-3, progress=False)
    assert plain.card["history"][-1]["augment"] is None
    changed = [not torch.equal(a, b) for a, b in zip(result.encoder_parameters(), plain.encoder_parameters())]
    assert any(changed), "augmented batches should train a different encoder than plain ones"
