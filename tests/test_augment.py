"""Batch augmentations: pure functions, and their use in a real unlearning run."""

from __future__ import annotations

import pytest
import torch

from imgunlearn import unlearn
from imgunlearn.data.augment import (
    Augmentation,
    augment_batch,
    photometric_jitter,
    colour_jitter,
    random_blur,
    random_flips,
    random_jpeg,
    random_rotations,
    random_scale,
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


def _square(count: int, start: int, side: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Dark images with a bright square (a stand-in face) under its box."""
    images = torch.full((count, 3, 40, 40), -0.5)
    masks = torch.zeros(count, 1, 40, 40)
    images[..., start:start + side, start:start + side] = 0.5
    masks[..., start:start + side, start:start + side] = 1
    return images, masks


def test_zoom_out_shrinks_the_content_and_its_mask_alike():
    images, masks = _square(6, 15)  # in the middle: the mirrored border never reaches it
    zoomed, zoomed_masks = random_scale(images, masks, 0.8, 1.0, torch.Generator().manual_seed(0))
    assert zoomed.shape == images.shape and zoomed_masks.shape == masks.shape
    bright = zoomed.mean(dim=1, keepdim=True) > 0
    assert torch.equal(bright.flatten(1).any(dim=1), zoomed_masks.flatten(1).any(dim=1))
    assert not (bright & (zoomed_masks == 0)).any()
    areas = zoomed_masks.flatten(1).sum(dim=1)
    # Max-pooling keeps every pixel that was partly masked: a box may gain one pixel a side.
    assert (areas <= 12 * 12).all() and (areas < 100).any()
    unchanged, _ = random_scale(images, masks, 1.0, 1.0)
    assert torch.allclose(unchanged, images, atol=1e-6)


def test_zoom_out_masks_the_mirrored_copies_of_a_face_at_the_edge():
    images, masks = _square(6, 30)  # in the corner: the mirroring copies it into the border
    zoomed, zoomed_masks = random_scale(images, masks, 0.5, 1.0, torch.Generator().manual_seed(0))
    bright = zoomed.mean(dim=1, keepdim=True) > 0
    assert not (bright & (zoomed_masks == 0)).any()


def test_same_generator_seed_gives_the_same_batch():
    images, masks = _batch()
    augmentation = Augmentation(min_scale=0.6, brightness=0.2, contrast=0.3)
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
    with pytest.raises(ValueError, match="min_scale must be in \\[0.5, 1\\]"):
        Augmentation(min_scale=0.3)
    with pytest.raises(ValueError, match="unknown augmentation preset 'yes'"):
        resolve_augmentation("yes")
    with pytest.raises(TypeError, match="augment must be"):
        resolve_augmentation(3)
    assert resolve_augmentation("survey") == Augmentation.survey()
    assert resolve_augmentation({"preset": "survey", "jpeg": 0.0}) == Augmentation.survey(jpeg=0.0)
    assert Augmentation.survey().rotate and Augmentation.survey().max_scale > 1
    with pytest.raises(ValueError, match="grey is a probability"):
        Augmentation(grey=1.5)
    with pytest.raises(ValueError, match="max_scale must be in \\[1, 2\\]"):
        Augmentation(max_scale=0.9)


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


def test_rotations_turn_each_sample_and_its_mask_by_the_same_quarter():
    images, masks = _batch(32)
    turned, turned_masks = random_rotations(images, masks, torch.Generator().manual_seed(0))
    seen = set()
    for image, mask, original, original_mask in zip(turned, turned_masks, images, masks):
        (k,) = [k for k in range(4) if torch.equal(image, torch.rot90(original, k, dims=(-2, -1)))]
        assert torch.equal(mask, torch.rot90(original_mask, k, dims=(-2, -1)))
        seen.add(k)
    assert seen == {0, 1, 2, 3}
    wide = torch.rand(16, 3, 6, 10)
    turned_wide, _ = random_rotations(wide, None, torch.Generator().manual_seed(0))
    assert turned_wide.shape == wide.shape  # a wide image is only turned upside down or not at all
    assert all(torch.equal(t, w) or torch.equal(t, w.flip(-1, -2)) for t, w in zip(turned_wide, wide))


def test_enlarging_shows_a_window_and_its_mask_alike():
    images, masks = _square(8, 15)
    enlarged, enlarged_masks = random_scale(images, masks, 1.0, 2.0, torch.Generator().manual_seed(0))
    assert enlarged.shape == images.shape and enlarged_masks.shape == masks.shape
    bright = enlarged.mean(dim=1, keepdim=True) > 0.05
    sure = enlarged.mean(dim=1, keepdim=True) > 0.45  # well inside the square (bilinear edges blend)
    assert not (sure & (enlarged_masks == 0)).any()
    assert (enlarged_masks.flatten(1).sum(dim=1) > 100).any(), "some squares should have grown"
    assert not ((enlarged_masks == 1) & ~bright).flatten(1).sum(dim=1).gt(2 * 40).any()


def test_colour_jitter_greys_and_saturates():
    images, _ = _batch()
    assert torch.allclose(colour_jitter(images, 0.0, 0.0), images, atol=1e-6)
    grey = colour_jitter(images, 0.0, 1.0)
    assert torch.allclose(grey[:, 0], grey[:, 1], atol=1e-6) and torch.allclose(grey[:, 1], grey[:, 2], atol=1e-6)
    jittered = colour_jitter(images, 0.9, 0.0, torch.Generator().manual_seed(0))
    spread = (jittered - jittered.mean(dim=1, keepdim=True)).abs().mean(dim=(1, 2, 3))
    base = (images - images.mean(dim=1, keepdim=True)).abs().mean(dim=(1, 2, 3))
    assert (spread / base).min() < 0.7 and (spread / base).max() > 1.3  # less and more colourful
    assert jittered.min() >= -1 and jittered.max() <= 1


def test_blur_softens_some_samples_and_leaves_the_others():
    images = torch.rand(16, 3, 24, 24, generator=torch.Generator().manual_seed(2)) * 2 - 1
    blurred = random_blur(images, 2.0, torch.Generator().manual_seed(0))
    same = [torch.equal(b, i) for b, i in zip(blurred, images)]
    assert 0 < sum(same) < len(same)
    roughness = lambda x: (x[..., 1:] - x[..., :-1]).abs().mean()  # noqa: E731
    assert all(roughness(b) < roughness(i) for b, i, s in zip(blurred, images, same) if not s)


def test_jpeg_round_trip_adds_small_artefacts():
    size = torch.linspace(-1, 1, 32)
    images = torch.stack([torch.stack([size.view(1, -1).expand(32, 32)] * 3)] * 6)
    images[:, 1] = images[:, 1].flip(-1)
    compressed = random_jpeg(images, 1.0, 10, torch.Generator().manual_seed(0))
    error = (compressed - images).abs().mean(dim=(1, 2, 3))
    assert compressed.shape == images.shape and compressed.dtype == images.dtype
    assert (error > 0).all() and (error < 0.15).all()
    assert torch.equal(random_jpeg(images, 0.0, 10), images)


def test_survey_augmentation_keeps_every_face_pixel_masked():
    images, masks = _square(12, 28)  # near the corner: mirroring, rotation and enlarging all move it
    geometric = Augmentation.survey(brightness=0.0, contrast=0.0, saturation=0.0, grey=0.0, blur=0.0, jpeg=0.0)
    out = augment_batch({"image": images, "mask": masks}, geometric, torch.Generator().manual_seed(4))
    sure = out["image"].mean(dim=1, keepdim=True) > 0.45
    assert not (sure & (out["mask"] == 0)).any()
    full = augment_batch({"image": images, "mask": masks}, Augmentation.survey(), torch.Generator().manual_seed(4))
    assert full["image"].shape == images.shape and full["image"].min() >= -1 and full["image"].max() <= 1
