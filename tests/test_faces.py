"""FaceFinder with the real MTCNN weights from the facenet-pytorch wheel, on a real face
(scikit-image's astronaut photo) placed on large canvases to exercise tiling and merging."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from imgunlearn.concepts.faces import FaceDetections, FaceFinder, merge_boxes, unrotate_boxes
from imgunlearn.data.tiling import tile_starts
from imgunlearn.data.images import image_to_tensor
from imgunlearn.metrics.faces import face_survival, matched_faces, surviving_faces

# Where the astronaut's face is (checked by eye on the 512x512 photo): x 181-268, y 62-172.
ASTRONAUT_FACE = np.array([181.0, 62.0, 268.0, 172.0])
# The crop pasted onto canvases: the face plus some hair and neck around it.
FACE_CROP = (150, 40, 300, 200)  # left, top, right, bottom


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def finder() -> FaceFinder:
    return FaceFinder()


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return data.astronaut()


def paste_face(canvas: Image.Image, astronaut: np.ndarray, face_width: float, centre: tuple[float, float]
               ) -> np.ndarray:
    """Paste the astronaut's face scaled to ``face_width`` px with its centre at ``centre``;
    return where the face box should now be."""
    left, top, right, bottom = FACE_CROP
    scale = face_width / (ASTRONAUT_FACE[2] - ASTRONAUT_FACE[0])
    patch = Image.fromarray(astronaut[top:bottom, left:right]).resize(
        (round((right - left) * scale), round((bottom - top) * scale)), Image.Resampling.LANCZOS)
    face_in_patch = (ASTRONAUT_FACE - [left, top, left, top]) * scale
    centre_in_patch = (face_in_patch[:2] + face_in_patch[2:]) / 2
    x, y = round(centre[0] - centre_in_patch[0]), round(centre[1] - centre_in_patch[1])
    canvas.paste(patch, (x, y))
    return face_in_patch + [x, y, x, y]


def grey_canvas(width: int, height: int, noise: float = 6.0) -> Image.Image:
    rng = np.random.default_rng(0)
    pixels = np.clip(128 + rng.normal(0, noise, (height, width, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    area = lambda box: (box[2] - box[0]) * (box[3] - box[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def test_finds_the_astronauts_face(finder, astronaut):
    found = finder.detect(astronaut)
    assert isinstance(found, FaceDetections) and len(found) == 1
    assert found.boxes.dtype == np.float32 and found.boxes.shape == (1, 4)
    assert found.scores.dtype == np.float32 and found.scores[0] >= finder.score_threshold
    np.testing.assert_allclose(found.boxes[0], ASTRONAUT_FACE, atol=8)


def test_small_face_in_corner_of_large_photo_maps_back(finder, astronaut):
    canvas = grey_canvas(1400, 1000)
    expected = paste_face(canvas, astronaut, face_width=40, centre=(1370, 960))
    found = finder.detect(canvas)
    assert len(found) == 1
    np.testing.assert_allclose(found.boxes[0], expected, atol=4)


def test_face_cut_by_tile_border_is_reported_once(finder, astronaut):
    # 960 px wide: tiles [0, 512) and [448, 960), overlapping by exactly tile_overlap = 64. A
    # 100 px face centred in the overlap fits neither tile whole, so each sees a fragment.
    assert tile_starts(960, 512, 64, spread=True) == [0, 448]
    canvas = grey_canvas(960, 512)
    expected = paste_face(canvas, astronaut, face_width=100, centre=(480, 256))
    pixels = np.asarray(canvas)
    untiled = FaceFinder(tile_size=None)
    left_part = untiled.detect(np.ascontiguousarray(pixels[:, :512]))
    right_part = untiled.detect(np.ascontiguousarray(pixels[:, 448:]))
    assert len(left_part) == 1 and len(right_part) == 1  # the fragments exist...

    found = finder.detect(canvas)
    assert len(found) == 1  # ...and are merged into one face
    assert iou(found.boxes[0], expected) > 0.7


def test_blank_and_tiny_images_give_no_faces(finder):
    for shape in [(300, 400, 3), (1, 1, 3), (5, 7, 3), (12, 12, 3), (13, 40, 3), (700, 3, 3)]:
        found = finder.detect(np.full(shape, 128, np.uint8))
        assert len(found) == 0
        assert found.boxes.shape == (0, 4) and found.boxes.dtype == np.float32
        assert found.scores.shape == (0,) and found.scores.dtype == np.float32


def test_input_types_agree(finder, astronaut):
    picture = Image.fromarray(astronaut)
    results = [finder.detect(picture), finder.detect(astronaut), finder.detect(image_to_tensor(picture))]
    for other in results[1:]:
        np.testing.assert_allclose(other.boxes, results[0].boxes, atol=1e-3)
        np.testing.assert_allclose(other.scores, results[0].scores, atol=1e-5)


def test_cpu_batches_follow_the_input_size():
    finder = FaceFinder()
    assert [finder._batch_for((side, side, 3)) for side in (128, 256, 512, 1024)] == [8, 8, 2, 1]
    assert FaceFinder(batch_size=3)._batch_for((128, 128, 3)) == 3  # a given size is kept


def test_batch_equals_singles(astronaut):
    finder = FaceFinder(batch_size=2)
    small = np.asarray(Image.fromarray(astronaut).resize((256, 256), Image.Resampling.LANCZOS))
    images = [small, np.full((200, 300, 3), 90, np.uint8), astronaut, small.copy()]
    batched = finder.detect_batch(images)
    assert [len(found) for found in batched] == [1, 0, 1, 1]
    for image, found in zip(images, batched):
        single = finder.detect(image)
        np.testing.assert_allclose(found.boxes, single.boxes, atol=0.5)
        np.testing.assert_allclose(found.scores, single.scores, atol=1e-3)
    np.testing.assert_allclose(batched[0].boxes[0], ASTRONAUT_FACE / 2, atol=6)


def test_merge_boxes_rules():
    boxes = np.array([
        [100, 100, 150, 160],  # a whole face
        [100, 100, 126, 160],  # the left fragment of it, seen by a tile that cuts it
        [300, 100, 340, 150],  # a second face: left fragment, better score...
        [320, 105, 360, 150],  # ...and the right fragment from the neighbouring tile
        [500, 500, 540, 550],  # a face far away
    ], np.float32)
    scores = np.array([0.95, 0.99, 0.99, 0.97, 0.9], np.float32)
    truncated = np.array([False, True, True, True, False])
    merged, merged_scores = merge_boxes(boxes, scores, truncated, iou_merge=0.3)
    assert merged.shape == (3, 4)
    as_rows = {tuple(row) for row in merged.tolist()}
    assert (100, 100, 150, 160) in as_rows  # the whole box wins over its better-scored fragment
    assert (300, 100, 360, 150) in as_rows  # two fragments grow into their union
    assert (500, 500, 540, 550) in as_rows
    assert list(merged_scores) == sorted(merged_scores, reverse=True)


@pytest.mark.parametrize("kwargs", [
    {"min_face_size": 0}, {"thresholds": (0.6, 0.7)}, {"thresholds": (0.6, 0.7, 1.5)},
    {"score_threshold": -0.1}, {"tile_size": 10}, {"tile_overlap": 512}, {"tile_overlap": -1},
    {"batch_size": 0}, {"iou_merge": 0.0},
])
def test_invalid_arguments_are_rejected(kwargs):
    with pytest.raises(ValueError):
        FaceFinder(**kwargs)


def test_invalid_images_are_rejected(finder):
    with pytest.raises(ValueError, match="HxWx3"):
        finder.detect(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        finder.detect(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        finder.detect(torch.zeros(1, 3, 8, 8))
    with pytest.raises(TypeError):
        finder.detect("face.png")


def test_face_survival_counts_centres_inside_input_boxes():
    inputs = [np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32), np.zeros((0, 4), np.float32),
              np.array([[0, 0, 50, 50]], np.float32)]
    outputs = [FaceDetections(np.array([[2, 2, 12, 12]]), np.array([0.99])),  # centre (7, 7) in face 1
               FaceDetections(np.array([[0, 0, 5, 5]]), np.array([0.99])),    # no input face here
               FaceDetections()]
    assert matched_faces(inputs, outputs) == [1, 0, 0]
    assert face_survival(inputs, outputs) == pytest.approx(1 / 3)
    assert face_survival(inputs, inputs) == 1.0
    assert np.isnan(face_survival([np.zeros((0, 4))], [FaceDetections()]))
    with pytest.raises(ValueError):
        face_survival(inputs, outputs[:2])
    # With the input's detections, only faces the detector finds in the input count (what the
    # faces protocol reports): here face 2 of image 0 is not found in the input.
    found_in_input = [FaceDetections(np.array([[1, 1, 9, 9]]), np.array([0.99])), FaceDetections(),
                      FaceDetections(np.array([[5, 5, 45, 45]]), np.array([0.99]))]
    assert surviving_faces(inputs, outputs, found_in_input) == (2, 1)
    assert face_survival(inputs, outputs, found_in_input) == pytest.approx(1 / 2)


def test_face_survival_on_real_detections(finder, astronaut):
    original = finder.detect(astronaut)
    blurred = np.asarray(Image.fromarray(astronaut).resize((16, 16)).resize((512, 512)))
    assert face_survival([original], [finder.detect(astronaut)]) == 1.0
    assert face_survival([original], [finder.detect(blurred)]) == 0.0


def test_unrotate_boxes_inverts_np_rot90():
    """A box found in np.rot90(image, k) maps back onto the same pixels of the image."""
    height, width = 30, 50
    image = np.zeros((height, width), np.uint8)
    image[4:9, 10:18] = 1
    for quarter in range(4):
        found = _box_of(np.rot90(image, quarter))  # where a detector would see it, turned
        assert np.allclose(unrotate_boxes(found, quarter, height, width), [[10, 4, 18, 9]])


def _box_of(mask: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(mask)
    return np.array([[cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]], np.float32)


@pytest.mark.parametrize("grey", [False, True])
def test_faces_turned_by_quarter_turns_are_found_with_rotations(astronaut, grey):
    """MTCNN finds upright faces only; nadir photos show people at every angle."""
    photo = astronaut
    if grey:
        photo = np.repeat(np.asarray(Image.fromarray(astronaut).convert("L"))[..., None], 3, axis=2)
    every_angle = FaceFinder(rotations=(0, 90, 180, 270))
    upright_only = FaceFinder()
    mask = np.zeros(photo.shape[:2], np.uint8)
    x0, y0, x1, y1 = ASTRONAUT_FACE.astype(int)
    mask[y0:y1, x0:x1] = 1
    for quarter in (1, 2, 3):
        turned = np.ascontiguousarray(np.rot90(photo, quarter))
        expected = _box_of(np.rot90(mask, quarter))[0]
        assert len(upright_only.detect(turned)) == 0, "MTCNN now finds turned faces: rotations may be unneeded"
        found = every_angle.detect(turned)
        assert len(found) == 1 and iou(found.boxes[0], expected) > 0.6, (quarter, found)
    with pytest.raises(ValueError, match="multiples of 90"):
        FaceFinder(rotations=(45,))
