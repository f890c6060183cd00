"""ClipFilter mechanics with a tiny randomly initialised open_clip model (no pretrained CLIP and
no child faces exist offline, so what the scores *mean* cannot be tested here)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from imgunlearn.concepts.clip_filter import DEFAULT_PROMPTS, ClipFilter, crop_boxes, filter_detections
from imgunlearn.concepts.faces import FaceDetections
from imgunlearn.data.images import image_to_tensor

TINY_NAME = "imgunlearn-tiny-face-clip"
# The real BPE tokenizer (49408 tokens) with a short context, so prompts tokenise as in CLIP.
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_name(tmp_path_factory) -> str:
    import open_clip

    directory = tmp_path_factory.mktemp("clip_cfg")
    (directory / f"{TINY_NAME}.json").write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(directory)
    return TINY_NAME


@pytest.fixture(scope="module")
def clip_filter(tiny_name) -> ClipFilter:
    torch.manual_seed(0)
    return ClipFilter(tiny_name, pretrained=None)


def random_crops(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (24 + 5 * i, 20 + 3 * i, 3), dtype=np.uint8) for i in range(count)]


def test_scores_are_probabilities(clip_filter):
    scores = clip_filter.scores(random_crops(5))
    assert scores.shape == (5, len(DEFAULT_PROMPTS)) and scores.dtype == np.float32
    assert clip_filter.labels == list(DEFAULT_PROMPTS)
    assert (scores >= 0).all() and (scores <= 1).all()
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-5)
    assert clip_filter.scores([]).shape == (0, len(DEFAULT_PROMPTS))


def test_keep_mask_follows_threshold(clip_filter):
    crops = random_crops(4)
    child = clip_filter.scores(crops)[:, clip_filter.labels.index("child")]
    mask = clip_filter.keep_mask(crops)
    assert mask.shape == (4,) and mask.dtype == bool
    np.testing.assert_array_equal(mask, child >= clip_filter.threshold)


def test_crop_types_agree(clip_filter):
    crop = random_crops(1)[0]
    picture = Image.fromarray(crop)
    as_array = clip_filter.scores([crop])
    np.testing.assert_allclose(clip_filter.scores([picture]), as_array, atol=1e-6)
    np.testing.assert_allclose(clip_filter.scores([image_to_tensor(picture)]), as_array, atol=1e-6)


def test_filter_detections_keeps_all_or_none(tiny_name):
    image = np.random.default_rng(1).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    detections = FaceDetections(np.array([[10, 10, 40, 50], [100, 60, 150, 115], [0, 0, 5, 5]], np.float32),
                                np.array([0.99, 0.95, 0.91], np.float32))
    torch.manual_seed(0)
    keep_all = ClipFilter(tiny_name, pretrained=None, threshold=0.0)
    kept = filter_detections(image, detections, keep_all)
    np.testing.assert_array_equal(kept.boxes, detections.boxes)
    np.testing.assert_array_equal(kept.scores, detections.scores)

    keep_none = ClipFilter(tiny_name, pretrained=None, threshold=1.01)
    dropped = filter_detections(image, detections, keep_none)
    assert len(dropped) == 0 and dropped.boxes.shape == (0, 4)
    assert len(filter_detections(image, FaceDetections(), keep_all)) == 0


def test_crop_boxes_widens_by_margin_and_clips():
    image = np.zeros((100, 200, 3), np.uint8)
    crops = crop_boxes(image, np.array([[50, 40, 90, 60], [0, 0, 20, 10], [190, 90, 200, 100]]), margin=0.25)
    assert [crop.size for crop in crops] == [(60, 30), (25, 13), (13, 13)]
    assert crop_boxes(image, np.array([[50, 40, 90, 60]]), margin=0.0)[0].size == (40, 20)
    with pytest.raises(ValueError):
        crop_boxes(image, np.zeros((1, 4)), margin=-0.1)


def test_local_checkpoint_round_trip(tiny_name, clip_filter, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "tiny-clip.safetensors"
    save_file({k: v.contiguous() for k, v in clip_filter.model.state_dict().items()}, str(path))
    loaded = ClipFilter(tiny_name, pretrained=path)
    crops = random_crops(3)
    np.testing.assert_allclose(loaded.scores(crops), clip_filter.scores(crops), atol=1e-6)

    pt_path = tmp_path / "tiny-clip.pt"
    torch.save(clip_filter.model.state_dict(), pt_path)
    np.testing.assert_allclose(ClipFilter(tiny_name, pretrained=str(pt_path)).scores(crops),
                               clip_filter.scores(crops), atol=1e-6)

    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        ClipFilter(tiny_name, pretrained=tmp_path / "missing.safetensors")


def test_prebuilt_components(clip_filter):
    import open_clip
    from open_clip.model import CLIP

    torch.manual_seed(1)
    model = CLIP(embed_dim=TINY_CONFIG["embed_dim"], vision_cfg=TINY_CONFIG["vision_cfg"],
                 text_cfg=TINY_CONFIG["text_cfg"])
    preprocess = open_clip.image_transform(32, is_train=False)
    tokenizer = open_clip.SimpleTokenizer(context_length=16)
    prompts = {"face": ["a photo of a face"], "tree": ["a photo of a tree"], "car": ["a photo of a car"]}
    custom = ClipFilter("custom", prompts=prompts, keep=("face", "car"), components=(model, preprocess, tokenizer))
    scores = custom.scores(random_crops(2))
    assert scores.shape == (2, 3)
    np.testing.assert_array_equal(custom.keep_mask(random_crops(2)), scores[:, [0, 2]].sum(axis=1) >= 0.5)


@pytest.mark.parametrize("kwargs, message", [
    ({"keep": ("teen",)}, "keep"),
    ({"prompts": {}}, "prompts"),
    ({"prompts": {"child": []}}, "child"),
    ({"prompts": {"child": "a child"}}, "child"),
    ({"threshold": float("nan")}, "threshold"),
])
def test_invalid_arguments(tiny_name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ClipFilter(tiny_name, pretrained=None, **kwargs)
