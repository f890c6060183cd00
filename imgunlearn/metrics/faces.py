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

__all__ = ["face_survival", "faces_found", "matched_faces"]

BoxesLike = Union[np.ndarray, FaceDetections, Sequence[Sequence[float]]]


def _boxes(value: BoxesLike, what: str, index: int) -> np.ndarray:
    raw = value.boxes if isinstance(value, FaceDetections) else value
    boxes = np.asarray(raw, dtype=np.float64)
    if boxes.size == 0:
        return np.zeros((0, 4))
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{what}[{index}]: expected boxes of shape (N, 4), got {boxes.shape}")
    return boxes


def faces_found(faces: BoxesLike, detections: BoxesLike) -> np.ndarray:
    """For each face box of one image, whether some detection's centre lies inside it."""
    faces, detections = _boxes(faces, "faces", 0), _boxes(detections, "detections", 0)
    if len(faces) == 0 or len(detections) == 0:
        return np.zeros(len(faces), dtype=bool)
    cx = (detections[:, 0] + detections[:, 2]) / 2
    cy = (detections[:, 1] + detections[:, 3]) / 2
    inside = ((cx[None, :] >= faces[:, 0:1]) & (cx[None, :] <= faces[:, 2:3])
              & (cy[None, :] >= faces[:, 1:2]) & (cy[None, :] <= faces[:, 3:4]))  # (faces, detections)
    return inside.any(axis=1)


def matched_faces(input_boxes: Sequence[BoxesLike], output_detections: Sequence[BoxesLike]) -> list[int]:
    """Per image, how many input face boxes contain the centre of some output detection."""
    if len(input_boxes) != len(output_detections):
        raise ValueError(f"{len(input_boxes)} input images but {len(output_detections)} output detections")
    counts = []
    for index, (given, found) in enumerate(zip(input_boxes, output_detections)):
        _boxes(given, "input_boxes", index), _boxes(found, "output_detections", index)  # shape errors name the image
        counts.append(int(faces_found(given, found).sum()))
    return counts


def face_survival(input_boxes: Sequence[BoxesLike], output_detections: Sequence[BoxesLike]) -> float:
    """Share of input faces found again in the outputs (0 = all forgotten, 1 = all survive).

    ``input_boxes[i]`` holds the faces of input image i ((N, 4) boxes or ``FaceDetections``),
    ``output_detections[i]`` the detections on output image i. NaN when there are no input faces.
    """
    total = sum(len(_boxes(given, "input_boxes", i)) for i, given in enumerate(input_boxes))
    matched = sum(matched_faces(input_boxes, output_detections))
    return float("nan") if total == 0 else matched / total
