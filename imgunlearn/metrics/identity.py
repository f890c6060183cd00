"""Identity leak (faces protocol): is a face still recognisable in the output, even where a
detector no longer finds it?

Each input face is described by dlib's ResNet face descriptor (128-D, trained for face
verification) twice: on the input and on the output, both cut out as aligned face chips with
the five landmarks found on the INPUT. The output is thus seen at the best alignment an attacker
who knows where the face was could get, and a face erased beyond landmark detection is still
compared. Two descriptors closer than ``IDENTITY_THRESHOLD`` count as the same person.

Some faces the descriptor cannot tell from no face at all: small or blurred ones, whose
descriptor lies as close to that of the same photo with the face erased without a trace (its
box grown ``ERASED_BOX_SCALE`` times and filled with the photo's mean colour) as to itself.
Any output matches such a face, so it sets a floor under the match rate that no erasure gets
below; ``floor_distances`` finds them, and ``identity_matched`` also reports the rate over the
faces the descriptor can verify.

dlib and the model files (PyPI ``dlib-bin`` and ``face-recognition-models``) are optional and
imported only when a ``FaceIdentity`` is made.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..concepts.faces import ImageInput, to_uint8_rgb
from ..errors import ImgUnlearnError, InvalidSettingError

__all__ = ["ERASED_BOX_SCALE", "IDENTITY_THRESHOLD", "FaceIdentity", "IdentityModelsMissing", "erase_faces",
           "identity_matched"]

# dlib's documented verification threshold: descriptors of the same person lie closer than 0.6
# (Euclidean), at which the model reaches 99.38% accuracy on the LFW benchmark.
IDENTITY_THRESHOLD = 0.6
# A face box grown this much about its centre covers the face's whole aligned chip (the face and
# a quarter of it on each side, at the default padding) and so erases the face without a trace.
ERASED_BOX_SCALE = 2.0
# The ResNet model takes 150x150 chips aligned like dlib.get_face_chip's (its default size).
CHIP_SIZE = 150
_MODELS_PACKAGE = "face_recognition_models"
_INSTALL_HINT = "pip install dlib-bin face-recognition-models (or pip install 'imgunlearn[identity]')"
_PREDICTOR_FILE = "shape_predictor_5_face_landmarks.dat"
_MODEL_FILE = "dlib_face_recognition_resnet_model_v1.dat"


class IdentityModelsMissing(ImgUnlearnError, ImportError):
    """dlib or the ``face_recognition_models`` package is not installed."""


def _packaged_models() -> Path:
    # Importing the package fails where setuptools no longer ships pkg_resources (which its
    # *_location() helpers use), so find its folder without importing it.
    spec = importlib.util.find_spec(_MODELS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise IdentityModelsMissing(
            f"FaceIdentity needs the {_MODELS_PACKAGE} package (or explicit predictor_path= and "
            f"model_path=): {_INSTALL_HINT}")
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def _model_file(given: str | Path | None, name: str, what: str) -> str:
    path = Path(given) if given is not None else _packaged_models() / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no {what} file there" + ("" if given is not None else f" ({_INSTALL_HINT})"))
    return str(path)


class FaceIdentity:
    """dlib's 5-point shape predictor and ResNet face descriptor, for comparing the identity of
    faces in an input and an output image.

    By default both model files come from the ``face_recognition_models`` package; pass
    ``predictor_path`` and ``model_path`` to use local copies. ``padding`` is the margin around
    the face in the aligned chips (dlib's default 0.25, which the model was trained with).
    """

    def __init__(self, predictor_path: str | Path | None = None, model_path: str | Path | None = None,
                 *, padding: float = 0.25) -> None:
        try:
            import dlib
        except ImportError as exc:
            raise IdentityModelsMissing(f"FaceIdentity needs dlib: {_INSTALL_HINT}") from exc
        self._dlib = dlib
        self.predictor_path = _model_file(predictor_path, _PREDICTOR_FILE, "dlib 5-point shape predictor")
        self.model_path = _model_file(model_path, _MODEL_FILE, "dlib face recognition model")
        self.padding = padding
        self._predictor = dlib.shape_predictor(self.predictor_path)
        self._model = dlib.face_recognition_model_v1(self.model_path)

    def __repr__(self) -> str:
        return f"FaceIdentity(predictor_path={self.predictor_path!r}, model_path={self.model_path!r})"

    def landmarks(self, image: ImageInput, boxes: Any) -> list[Any]:
        """dlib ``full_object_detection`` (5 landmarks) of each ``(x0, y0, x1, y1)`` box in ``image``."""
        pixels = np.ascontiguousarray(to_uint8_rgb(image))
        return [self._predictor(pixels, self._rectangle(box)) for box in _as_boxes(boxes)]

    def chips(self, image: ImageInput, shapes: Sequence[Any]) -> list[np.ndarray]:
        """Aligned ``CHIP_SIZE`` x ``CHIP_SIZE`` RGB face chips of ``image`` at the given landmarks."""
        pixels = np.ascontiguousarray(to_uint8_rgb(image))
        return [self._dlib.get_face_chip(pixels, shape, size=CHIP_SIZE, padding=self.padding) for shape in shapes]

    def describe(self, chips: Sequence[np.ndarray]) -> np.ndarray:
        """(N, 128) float64 face descriptors of aligned chips."""
        if not chips:
            return np.zeros((0, 128))
        return np.array([list(v) for v in self._model.compute_face_descriptor(list(chips))], dtype=np.float64)

    def distances(self, input_image: ImageInput, output_image: ImageInput, boxes: Any) -> np.ndarray:
        """Per face box of the input, the Euclidean distance between the descriptors of the input
        face and of the output at the same place (landmarks found on the input only)."""
        return self._measure(input_image, output_image, boxes, floor=False)[0]

    def floor_distances(self, input_image: ImageInput, boxes: Any) -> np.ndarray:
        """Per face box, ``distances`` between the input and the input with that face erased
        without a trace (:func:`erase_faces`). Under the threshold, the descriptor cannot tell
        the face from no face: every output would match it."""
        return self._measure(input_image, None, boxes, floor=True)[1]

    def distances_and_floor(self, input_image: ImageInput, output_image: ImageInput,
                            boxes: Any) -> tuple[np.ndarray, np.ndarray]:
        """``distances`` and ``floor_distances`` at once (landmarks and input descriptors shared)."""
        return self._measure(input_image, output_image, boxes, floor=True)

    def _measure(self, input_image: ImageInput, output_image: ImageInput | None, boxes: Any,
                 floor: bool) -> tuple[np.ndarray, np.ndarray]:
        # One descriptor batch: the input's chips, the output's, and each face's chip of its own erasure.
        source, array = to_uint8_rgb(input_image), _as_boxes(boxes)
        made = None if output_image is None else to_uint8_rgb(output_image)
        if made is not None and source.shape != made.shape:
            raise InvalidSettingError(f"input {source.shape} and output {made.shape} images differ in size")
        shapes = self.landmarks(source, array)
        chips = self.chips(source, shapes)
        if made is not None:
            chips += self.chips(made, shapes)
        if floor:
            chips += [self.chips(erase_faces(source, box[None]), [shape])[0] for box, shape in zip(array, shapes)]
        described = self.describe(chips)
        faces = len(shapes)
        inputs = described[:faces]
        outputs = described[faces:2 * faces] if made is not None else np.zeros((0, 128))
        erased = described[len(chips) - faces:] if floor else np.zeros((0, 128))
        return (np.linalg.norm(inputs - outputs, axis=1) if made is not None else np.zeros(0),
                np.linalg.norm(inputs - erased, axis=1) if floor else np.zeros(0))

    def leak(self, input_image: ImageInput, output_image: ImageInput, boxes: Any,
             threshold: float = IDENTITY_THRESHOLD) -> dict[str, Any]:
        """``identity_matched`` of ``distances`` for one image pair."""
        return identity_matched(self.distances(input_image, output_image, boxes), threshold)

    def _rectangle(self, box: np.ndarray) -> Any:
        x0, y0, x1, y1 = (int(round(float(v))) for v in box)
        return self._dlib.rectangle(x0, y0, x1, y1)


def _as_boxes(boxes: Any) -> np.ndarray:
    array = np.asarray(getattr(boxes, "boxes", boxes), dtype=np.float64)  # FaceDetections too
    if array.size == 0:
        return np.zeros((0, 4))
    if array.ndim != 2 or array.shape[1] != 4:
        raise InvalidSettingError(f"expected (N, 4) boxes x0, y0, x1, y1, got shape {array.shape}")
    if np.any(array[:, 2] <= array[:, 0]) or np.any(array[:, 3] <= array[:, 1]):
        raise InvalidSettingError(f"empty face box among {array.tolist()}")
    return array


def erase_faces(image: ImageInput, boxes: Any, scale: float = ERASED_BOX_SCALE) -> np.ndarray:
    """``image`` as uint8 RGB with each box grown ``scale`` times about its centre and filled
    with the image's mean colour: faces erased without a trace."""
    out = to_uint8_rgb(image).copy()
    height, width = out.shape[:2]
    mean = out.reshape(-1, 3).mean(axis=0).round().astype(np.uint8)
    for x0, y0, x1, y1 in _as_boxes(boxes):
        cx, cy, half_w, half_h = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * scale / 2, (y1 - y0) * scale / 2
        out[max(0, math.floor(cy - half_h)):min(height, math.ceil(cy + half_h)),
            max(0, math.floor(cx - half_w)):min(width, math.ceil(cx + half_w))] = mean
    return out


def identity_matched(distances: Sequence[float] | np.ndarray, threshold: float = IDENTITY_THRESHOLD,
                     floor: Sequence[float] | np.ndarray | None = None) -> dict[str, Any]:
    """How many faces are still the same person: ``faces``, ``matched`` (distance below
    ``threshold``), ``match_rate`` and ``mean_distance`` (NaN without faces), ``distances``.
    With ``floor`` (each face's ``floor_distances``) also ``verifiable`` (faces whose floor is
    at least ``threshold``: the descriptor tells them from no face), ``matched_verifiable``
    and ``verifiable_match_rate`` (NaN without verifiable faces)."""
    values = [float(d) for d in np.asarray(distances, dtype=np.float64).reshape(-1)]
    matched = sum(d < threshold for d in values)
    leak = {"faces": len(values), "matched": matched,
            "match_rate": matched / len(values) if values else math.nan,
            "mean_distance": float(np.mean(values)) if values else math.nan,
            "threshold": threshold, "distances": values}
    if floor is not None:
        floors = [float(d) for d in np.asarray(floor, dtype=np.float64).reshape(-1)]
        if len(floors) != len(values):
            raise InvalidSettingError(f"{len(floors)} floor distances for {len(values)} faces")
        verifiable = [d for d, f in zip(values, floors) if f >= threshold]
        matched_verifiable = sum(d < threshold for d in verifiable)
        leak.update({"verifiable": len(verifiable), "matched_verifiable": matched_verifiable,
                     "verifiable_match_rate": matched_verifiable / len(verifiable) if verifiable else math.nan,
                     "floor_distances": floors})
    return leak
