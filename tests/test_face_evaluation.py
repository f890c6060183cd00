"""Masked PSNR/SSIM and the faces protocol's evaluate_faces on known inputs (real MTCNN)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import face_tile_manifest

from imgunlearn.concepts.faces import FaceFinder
from imgunlearn.evaluation import evaluate_faces, forget_map_fidelity, load_face_set, non_face_mask
from imgunlearn.metrics import masked_psnr, masked_ssim

skimage_data = pytest.importorskip("skimage.data")
pytestmark = pytest.mark.usefixtures("one_thread")


def test_masked_psnr_and_ssim_ignore_pixels_outside_the_mask():
    torch.manual_seed(0)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    mask = torch.ones(2, 1, 32, 32)
    mask[:, :, 8:16, 8:16] = 0
    changed = images.clone()
    changed[:, :, 8:16, 8:16] = -1.0  # only where the mask is 0
    assert masked_psnr(changed, images, mask) == 100.0
    assert masked_ssim(changed, images, torch.zeros_like(mask).index_fill_(2, torch.arange(24, 32), 1.0)) > 0.99
    noisy = (images + 0.1 * torch.randn_like(images)).clamp(-1, 1)
    expected = 10 * math.log10(4 / float(((noisy - images) ** 2).mean()))
    assert masked_psnr(noisy, images, torch.ones_like(mask)) == pytest.approx(expected, abs=1e-6)
    assert math.isnan(masked_psnr(noisy, images, torch.zeros_like(mask)))
    with pytest.raises(ValueError, match="mask must be"):
        masked_psnr(noisy, images, mask[:1])


def test_non_face_mask_keeps_a_margin_around_boxes():
    mask = non_face_mask([torch.tensor([[10.0, 10.0, 20.0, 20.0]]), torch.zeros(0, 4)], 32, 32, margin=2)
    assert mask.shape == (2, 1, 32, 32)
    assert mask[0, 0, 8:22, 8:22].sum() == 0 and mask[0, 0, 7, 7] == 1 and mask[1].min() == 1


@pytest.fixture(scope="module")
def face_manifest(tmp_path_factory):
    """Two 256 px tiles: the astronaut's face (box known) and a faceless crop of the same photo."""
    photo = Image.fromarray(skimage_data.astronaut())
    return face_tile_manifest(tmp_path_factory.mktemp("faces"), photo, (100, 0, 356, 256), [81, 62, 168, 172],
                              (256, 256, 512, 512))


def test_forget_map_fidelity_counts_the_face_free_tiles_apart() -> None:
    images = torch.zeros(3, 3, 32, 32)
    boxes = [torch.tensor([[8.0, 8.0, 16.0, 16.0]]), torch.zeros(0, 4), torch.zeros(0, 4)]
    outputs = images.clone()
    outputs[0, :, 8:16, 8:16] = 1.0  # the face, re-synthesised: not a non-face pixel
    outputs[2, :, :16, :] = 0.5  # half of one face-free tile changed
    weights = (outputs != images).any(dim=1, keepdim=True).float()
    fidelity = forget_map_fidelity(images, outputs, weights, boxes)
    assert fidelity["face_free_tiles"] == 2 and fidelity["face_free_identical"] == pytest.approx(0.75)
    # the face tile's background and both face-free tiles: 1024 - 24² + 2048 - 512 of 1024 - 24² + 2048
    assert fidelity["non_face_identical"] == pytest.approx((448 + 1536) / (448 + 2048))
    assert fidelity["changed_area_vs_boxes"] == pytest.approx((64 + 512) / 64)
    assert math.isnan(forget_map_fidelity(images[:1], outputs[:1], weights[:1], boxes[:1])["face_free_identical"])


def test_evaluate_faces_counts_surviving_faces_and_non_face_fidelity(face_manifest):
    finder = FaceFinder(tile_size=None)
    kept = evaluate_faces(lambda x: x, face_manifest, finder=finder, reference=lambda x: x)
    assert (kept["images"], kept["faces"], kept["input_faces"], kept["surviving_faces"]) == (2, 1, 1, 1)
    assert kept["face_survival"] == 1.0 and kept["non_face_psnr_vs_reference"] == 100.0

    def blank_faces(batch: torch.Tensor) -> torch.Tensor:
        out = batch.clone()
        out[0, :, 62:172, 81:168] = 0.0  # the face tile comes first in the manifest
        return out

    forgotten = evaluate_faces(blank_faces, face_manifest, finder=finder, reference=lambda x: x)
    assert forgotten["surviving_faces"] == 0 and forgotten["face_survival"] == 0.0
    # Everything outside the boxes is untouched.
    assert forgotten["non_face_psnr_vs_input"] == 100.0 and forgotten["non_face_ssim_vs_input"] > 0.999
    with pytest.raises(ValueError, match="needs a model or its outputs"):
        evaluate_faces(manifest=face_manifest, finder=finder)
    # The inputs' detections, taken once, give the same report for every output set.
    images, _, _ = load_face_set(face_manifest)
    found = finder.detect_batch(list(images))
    assert evaluate_faces(blank_faces, face_manifest, finder=finder, reference=lambda x: x,
                          input_detections=found) == forgotten
    with pytest.raises(ValueError, match="1 input detections for the 2 images"):
        evaluate_faces(blank_faces, face_manifest, finder=finder, input_detections=found[:1])
    assert np.isfinite(forgotten["non_face_ssim_vs_reference"])
