"""Face survival (docs/design.md §3, faces protocol): how many of the faces in the inputs a face
detector still finds in the generator's outputs.

An input face counts as surviving when some output detection's centre lies inside its box
(borders included); the centre rule tolerates the box jitter between two detector runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import numpy as np

from ..concepts.faces import FaceDetections
from ..errors import InvalidSettingError
from ..geometry import centres_inside

__all__ = ["face_survival", "faces_found", "matched_faces", "surviving_faces"]

BoxesLike = Union[np.ndarray, FaceDetections, Sequence[Sequence[float]]]


def _boxes(value: BoxesLike, what: str, index: int) -> np.ndarray:
    raw = value.boxes if isinstance(value, FaceDetections) else value
    boxes = np.asarray(raw, dtype=np.float64)
    if boxes.size == 0:
        return np.zeros((0, 4))
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise InvalidSettingError(f"{what}[{index}]: expected boxes of shape (N, 4), got {boxes.shape}")
    return boxes


def faces_found(faces: BoxesLike, detections: BoxesLike) -> np.ndarray:
    """For each face box of one image, whether some detection's centre lies inside it."""
    faces, detections = _boxes(faces, "faces", 0), _boxes(detections, "detections", 0)
    return centres_inside(faces, detections).any(axis=1)


def matched_faces(input_boxes: Sequence[BoxesLike], output_detections: Sequence[BoxesLike]) -> list[int]:
    """Per image, how many input face boxes contain the centre of some output detection."""
    if len(input_boxes) != len(output_detections):
        raise InvalidSettingError(f"{len(input_boxes)} input images but {len(output_detections)} output detections")
    counts = []
    for index, (given, found) in enumerate(zip(input_boxes, output_detections)):
        _boxes(given, "input_boxes", index), _boxes(found, "output_detections", index)  # shape errors name the image
        counts.append(int(faces_found(given, found).sum()))
    return counts


def surviving_faces(faces: Sequence[BoxesLike], output_detections: Sequence[BoxesLike],
                    input_detections: Sequence[BoxesLike] | None = None) -> tuple[int, int]:
    """The one definition of face survival, as counts over images: ``(counted, surviving)``.

    A face box of image i counts when the detector finds it in the input (some detection of
    ``input_detections[i]`` has its centre in the box; every box counts when
    ``input_detections`` is not given) and survives when it is found the same way in
    ``output_detections[i]``."""
    if len(faces) != len(output_detections) or (input_detections is not None
                                                 and len(input_detections) != len(faces)):
        raise InvalidSettingError(f"{len(faces)} input images but {len(output_detections)} output detections"
                                  + ("" if input_detections is None else f" and {len(input_detections)} input ones"))
    counted = surviving = 0
    for index, given in enumerate(faces):
        boxes = _boxes(given, "faces", index)
        _boxes(output_detections[index], "output_detections", index)  # shape errors name the image
        found_in_input = (np.ones(len(boxes), dtype=bool) if input_detections is None
                          else faces_found(boxes, input_detections[index]))
        counted += int(found_in_input.sum())
        surviving += int((found_in_input & faces_found(boxes, output_detections[index])).sum())
    return counted, surviving


def face_survival(input_boxes: Sequence[BoxesLike], output_detections: Sequence[BoxesLike],
                  input_detections: Sequence[BoxesLike] | None = None) -> float:
    """Share of input faces found again in the outputs (0 = all forgotten, 1 = all survive),
    by :func:`surviving_faces`; NaN when no face counts."""
    counted, surviving = surviving_faces(input_boxes, output_detections, input_detections)
    return float("nan") if counted == 0 else surviving / counted
