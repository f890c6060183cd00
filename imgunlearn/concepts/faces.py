"""Finding faces with MTCNN (facenet-pytorch), batched and tiled for large photos.

MTCNN's image pyramid starts at the image's full resolution, so on a large aerial photo it is
both slow and memory hungry, and faces of a few dozen pixels are found best at full
resolution. ``FaceFinder`` therefore cuts a photo larger than ``tile_size`` into overlapping
tiles, runs every tile (plus one downscaled view of the whole photo, for faces larger than a
tile) through MTCNN in batches of equal-sized inputs, shifts the boxes back to photo
coordinates and merges duplicates across tiles.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np
import torch
from PIL import Image

from ..data.images import rgb_array, tensor_to_image
from ..data.tiling import tile_starts
from ..errors import InvalidSettingError, is_whole_number
from .mtcnn import detect_faces

__all__ = ["FaceDetections", "FaceFinder", "merge_boxes", "unrotate_boxes"]

ImageInput = Union[Image.Image, np.ndarray, torch.Tensor]

# A box whose area lies at least this much inside a better box is a fragment of the same face.
_CONTAINED = 0.6
# Tile-box edges this close (in pixels) to an inner tile border may be cut by that border.
_EDGE_TOLERANCE = 4.0
# Padding colour for inputs below MTCNN's minimum size; mid grey holds no face-like structure.
_PAD_VALUE = 127
# A CPU's default MTCNN batch: as many equal-sized inputs as hold this many pixels, at most
# CPU_MAX_BATCH (memory grows with the batch; small inputs run faster batched).
CPU_BATCH_PIXELS = 2 * 512 * 512
CPU_MAX_BATCH = 8


@dataclass(frozen=True, eq=False)
class FaceDetections:
    """Faces in one image: ``boxes`` (N, 4) float32 ``x0, y0, x1, y1`` in pixels of that image,
    ``scores`` (N,) float32 MTCNN probabilities, best first."""

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))

    def __post_init__(self) -> None:
        boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        if len(boxes) != len(scores):
            raise InvalidSettingError(f"FaceDetections: {len(boxes)} boxes but {len(scores)} scores")
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "scores", scores)

    def __len__(self) -> int:
        return len(self.scores)

    def __repr__(self) -> str:
        return f"FaceDetections(n={len(self)}, boxes={self.boxes.round(1).tolist()})"


def to_uint8_rgb(image: Any) -> np.ndarray:
    """PIL image, HxWx3 uint8 array or (3, H, W) tensor in [-1, 1] -> HxWx3 uint8 array."""
    if isinstance(image, Image.Image):
        return rgb_array(image if image.mode == "RGB" else image.convert("RGB"))
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise InvalidSettingError(f"expected a (3, H, W) tensor in [-1, 1], got shape {tuple(image.shape)}")
        return np.asarray(tensor_to_image(image), dtype=np.uint8)
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise InvalidSettingError(f"expected an HxWx3 uint8 array, got shape {image.shape}")
        if image.dtype != np.uint8:
            raise InvalidSettingError(f"expected an HxWx3 uint8 array, got dtype {image.dtype}")
        return image
    raise TypeError(
        f"expected a PIL image, an HxWx3 uint8 array or a (3, H, W) tensor, got {type(image).__name__}"
    )


def _pairwise_overlap(box: np.ndarray, others: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Intersection-over-union of ``box`` with each of ``others``, and the intersection as a share
    of ``box``'s and of each other box's area."""
    ix0 = np.maximum(box[0], others[:, 0])
    iy0 = np.maximum(box[1], others[:, 1])
    ix1 = np.minimum(box[2], others[:, 2])
    iy1 = np.minimum(box[3], others[:, 3])
    inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
    area = max(float((box[2] - box[0]) * (box[3] - box[1])), 1e-6)
    areas = np.maximum((others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1]), 1e-6)
    return inter / (area + areas - inter), inter / area, inter / areas


def merge_boxes(
    boxes: np.ndarray, scores: np.ndarray, truncated: np.ndarray, iou_merge: float
) -> tuple[np.ndarray, np.ndarray]:
    """Score-ordered NMS across tiles that also removes partial boxes.

    Boxes possibly cut by a tile border (``truncated``) rank after whole ones, so a face seen
    whole in some tile keeps that box and the fragments from neighbouring tiles are dropped. A
    box overlapping a kept one by more than ``iou_merge`` IoU, or lying mostly inside it, is
    dropped; when the kept box is itself a fragment, it grows to the union instead, because a
    face wider than the tile overlap is only ever seen in pieces.
    """
    if len(boxes) == 0:
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)
    order = np.lexsort((-scores, truncated))  # last key is primary: whole boxes first
    kept_boxes: list[np.ndarray] = []
    kept_scores: list[float] = []
    kept_truncated: list[bool] = []
    for index in order:
        box = boxes[index].astype(np.float64)
        if kept_boxes:
            iou, inside_kept, kept_inside = _pairwise_overlap(box, np.stack(kept_boxes))
            same_face = (iou > iou_merge) | (inside_kept >= _CONTAINED) | (kept_inside >= _CONTAINED)
            hits = np.flatnonzero(same_face)
            if len(hits):
                target = int(hits[0])
                if kept_truncated[target]:
                    merged = kept_boxes[target]
                    kept_boxes[target] = np.concatenate([np.minimum(merged[:2], box[:2]),
                                                         np.maximum(merged[2:], box[2:])])
                    kept_scores[target] = max(kept_scores[target], float(scores[index]))
                continue
        kept_boxes.append(box)
        kept_scores.append(float(scores[index]))
        kept_truncated.append(bool(truncated[index]))
    result_boxes = np.stack(kept_boxes).astype(np.float32)
    result_scores = np.asarray(kept_scores, dtype=np.float32)
    best_first = np.argsort(-result_scores, kind="stable")
    return result_boxes[best_first], result_scores[best_first]


@dataclass
class _View:
    """One MTCNN input cut from an image: where it came from and how it was scaled."""

    image_index: int
    pixels: np.ndarray  # HxWx3 uint8, possibly padded
    left: int
    top: int
    scale: float  # view pixels per image pixel
    width: int  # unpadded extent in view pixels
    height: int
    inner_edges: tuple[bool, bool, bool, bool]  # left, top, right, bottom border inside the image
    quarter: int = 0  # the image was turned this many quarter turns counter-clockwise (np.rot90)


class FaceFinder:
    """MTCNN face detector for images of any size.

    Args:
        min_face_size: smallest face (pixels) MTCNN's pyramid looks for.
        thresholds: MTCNN's three stage thresholds (P-, R-, O-net).
        score_threshold: drop final detections scoring below this.
        tile_size: images larger than this (either side) are searched in tiles of this size,
            plus once downscaled to it; ``None`` searches every image whole.
        tile_overlap: overlap of neighbouring tiles in pixels; faces up to this size are
            always seen whole in some tile.
        batch_size: MTCNN inputs per forward pass (inputs of equal size are batched); default
            32 on an accelerator, where small batches leave it idle, and on a CPU as many as
            hold ``CPU_BATCH_PIXELS`` (2 of 512 px, up to 8 smaller ones): there larger
            batches of large inputs are no faster and cost memory (P-Net's first layers on
            eight 512 px tiles held 235 MB more than on two), while 128 px tiles ran 25%
            faster eight at a time than two.
        iou_merge: IoU above which detections from different tiles count as one face.
        device: torch device for the MTCNN networks.
        rotations: angles (multiples of 90°, counter-clockwise) at which the image is also
            searched. MTCNN finds upright faces only, and in a nadir drone photo people lie at
            every angle; each angle costs one more pass, so ``(0, 90, 180, 270)`` takes about
            four times as long as ``(0,)`` (the default).
    """

    def __init__(
        self,
        min_face_size: int = 12,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        score_threshold: float = 0.9,
        tile_size: int | None = 512,
        tile_overlap: int = 64,
        batch_size: int | None = None,
        iou_merge: float = 0.3,
        device: str | torch.device = "cpu",
        rotations: Sequence[int] = (0,),
    ) -> None:
        if not is_whole_number(min_face_size, 1):
            raise InvalidSettingError(f"min_face_size must be a positive integer, got {min_face_size!r}")
        thresholds = tuple(float(t) for t in thresholds)
        if len(thresholds) != 3 or not all(0.0 <= t <= 1.0 for t in thresholds):
            raise InvalidSettingError(f"thresholds must be three numbers in [0, 1], got {thresholds!r}")
        if not 0.0 <= score_threshold <= 1.0:
            raise InvalidSettingError(f"score_threshold must be in [0, 1], got {score_threshold!r}")
        if tile_size is not None:
            if not is_whole_number(tile_size, min_face_size + 1):
                raise InvalidSettingError(
                    f"tile_size must be an integer larger than min_face_size ({min_face_size}) or None, "
                    f"got {tile_size!r}"
                )
            if not isinstance(tile_overlap, int) or not 0 <= tile_overlap < tile_size:
                raise InvalidSettingError(f"tile_overlap must be an integer in [0, tile_size), got {tile_overlap!r}")
        # On a CPU the default batch follows the inputs' size (see _batch_for).
        self._sized_batches = batch_size is None and torch.device(device).type == "cpu"
        if batch_size is None:
            batch_size = 2 if self._sized_batches else 32
        if not is_whole_number(batch_size, 1):
            raise InvalidSettingError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not 0.0 < iou_merge <= 1.0:
            raise InvalidSettingError(f"iou_merge must be in (0, 1], got {iou_merge!r}")
        rotations = tuple(sorted({int(r) % 360 for r in rotations})) if len(rotations) else ()
        if not rotations or any(r % 90 for r in rotations):
            raise InvalidSettingError(f"rotations must be one or more multiples of 90 degrees, got {rotations!r}")

        from facenet_pytorch import MTCNN  # the weights ship inside the wheel

        self.min_face_size = min_face_size
        self.thresholds = thresholds
        self.score_threshold = float(score_threshold)
        self.tile_size = tile_size
        self.tile_overlap = tile_overlap
        self.batch_size = batch_size
        self.iou_merge = float(iou_merge)
        self.rotations = rotations
        self.device = torch.device(device)
        self.mtcnn = MTCNN(
            keep_all=True,
            min_face_size=min_face_size,
            thresholds=list(thresholds),
            select_largest=False,
            post_process=False,
            device=self.device,
        ).eval()
        # MTCNN's pyramid is empty (and it crashes) when the short side is below min_face_size.
        self._min_side = min_face_size + 1

    def __repr__(self) -> str:
        return (f"FaceFinder(min_face_size={self.min_face_size}, score_threshold={self.score_threshold}, "
                f"tile_size={self.tile_size}, tile_overlap={self.tile_overlap}, rotations={self.rotations}, "
                f"device={str(self.device)!r})")

    def detect(self, image: ImageInput) -> FaceDetections:
        """Faces in one image (PIL image, HxWx3 uint8 array or (3, H, W) tensor in [-1, 1])."""
        return self.detect_batch([image])[0]

    def detect_batch(self, images: Sequence[ImageInput]) -> list[FaceDetections]:
        """Faces in each of ``images`` (any mix of sizes and input types)."""
        arrays = [to_uint8_rgb(image) for image in images]
        views = [view for index, array in enumerate(arrays) for quarter in self._quarters
                 for view in self._views(index, array, quarter)]
        found: list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = [[] for _ in arrays]
        by_shape: dict[tuple[int, ...], list[_View]] = {}
        for view in views:
            by_shape.setdefault(view.pixels.shape, []).append(view)
        for shape, group in by_shape.items():
            size = self._batch_for(shape)
            for start in range(0, len(group), size):
                chunk = group[start:start + size]
                batch_boxes, batch_scores = detect_faces(self.mtcnn, np.stack([v.pixels for v in chunk]))
                for view, boxes, scores in zip(chunk, batch_boxes, batch_scores):
                    boxes, scores, truncated = self._to_image_coordinates(view, boxes, scores)
                    height, width = arrays[view.image_index].shape[:2]
                    found[view.image_index].append((unrotate_boxes(boxes, view.quarter, height, width), scores,
                                                    truncated))

        results = []
        for array, parts in zip(arrays, found):
            boxes = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, 4), np.float32)
            scores = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0,), np.float32)
            truncated = np.concatenate([p[2] for p in parts]) if parts else np.zeros((0,), bool)
            keep = scores >= self.score_threshold
            boxes, scores = merge_boxes(boxes[keep], scores[keep], truncated[keep], self.iou_merge)
            height, width = array.shape[:2]
            boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
            boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
            # A box MTCNN put wholly in the grey padding has no area left in the image.
            inside = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            results.append(FaceDetections(boxes[inside], scores[inside]))
        return results

    def _batch_for(self, shape: tuple[int, ...]) -> int:
        """MTCNN inputs of this (H, W, 3) shape per forward pass."""
        if not self._sized_batches:
            return self.batch_size
        return max(1, min(CPU_MAX_BATCH, CPU_BATCH_PIXELS // (shape[0] * shape[1])))

    @property
    def _quarters(self) -> list[int]:
        return [r // 90 for r in self.rotations]

    def _views(self, index: int, photo: np.ndarray, quarter: int = 0) -> list[_View]:
        # Turned as a view (no copy); tiles are cut from it and copied only batch by batch.
        array = np.rot90(photo, quarter) if quarter else photo
        height, width = array.shape[:2]
        if self.tile_size is None or max(height, width) <= self.tile_size:
            return [self._view(index, np.ascontiguousarray(array), 0, 0, 1.0, (False,) * 4, quarter)]
        tile = self.tile_size
        views = []
        for top in tile_starts(height, tile, self.tile_overlap, spread=True):
            for left in tile_starts(width, tile, self.tile_overlap, spread=True):
                bottom, right = min(top + tile, height), min(left + tile, width)
                inner = (left > 0, top > 0, right < width, bottom < height)
                views.append(self._view(index, array[top:bottom, left:right], left, top, 1.0, inner, quarter))
        # The whole photo shrunk to one tile finds faces too large to fit any tile.
        scale = tile / max(height, width)
        size = (max(1, round(photo.shape[1] * scale)), max(1, round(photo.shape[0] * scale)))
        # Every few pixels first (a strided view, copied small), then an antialiased resize:
        # a PIL copy of a 100 MP photo would take 400 MB for a 512 px overview.
        step = max(1, max(height, width) // (2 * tile))
        reduced = np.ascontiguousarray(photo[::step, ::step])
        overview = np.asarray(Image.fromarray(reduced).resize(size, Image.Resampling.BILINEAR))
        overview = np.ascontiguousarray(np.rot90(overview, quarter)) if quarter else overview
        views.append(self._view(index, overview, 0, 0, scale, (False,) * 4, quarter))
        return views

    def _view(self, index: int, pixels: np.ndarray, left: int, top: int, scale: float,
              inner_edges: tuple[bool, bool, bool, bool], quarter: int = 0) -> _View:
        height, width = pixels.shape[:2]
        if min(height, width) < self._min_side:
            # Pad right/bottom so coordinates stay put; grey adds no faces.
            padded = np.full((max(height, self._min_side), max(width, self._min_side), 3), _PAD_VALUE, np.uint8)
            padded[:height, :width] = pixels
            pixels = padded
        # Tiles stay views into the photo; np.stack copies them only batch by batch.
        return _View(index, pixels, left, top, scale, width, height, inner_edges, quarter)

    def _to_image_coordinates(self, view: _View, boxes: np.ndarray, scores: np.ndarray
                              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        left_in, top_in, right_in, bottom_in = view.inner_edges
        tol = _EDGE_TOLERANCE
        truncated = (
            (left_in & (boxes[:, 0] <= tol))
            | (top_in & (boxes[:, 1] <= tol))
            | (right_in & (boxes[:, 2] >= view.width - tol))
            | (bottom_in & (boxes[:, 3] >= view.height - tol))
        )
        # Boxes MTCNN extends into the grey padding end at the real image border.
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(None, view.width)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(None, view.height)
        boxes = boxes / view.scale + np.array([view.left, view.top, view.left, view.top], np.float32)
        return boxes.astype(np.float32), scores, truncated.astype(bool)


def unrotate_boxes(boxes: np.ndarray, quarter: int, height: int, width: int) -> np.ndarray:
    """Boxes found in ``np.rot90(image, quarter)`` back in the coordinates of ``image``
    (``height`` x ``width``)."""
    x0, y0, x1, y1 = (boxes[:, i] for i in range(4))
    quarter %= 4
    if quarter == 1:  # rotated (x, y) = (y, W - x)
        mapped = (width - y1, x0, width - y0, x1)
    elif quarter == 2:
        mapped = (width - x1, height - y1, width - x0, height - y0)
    elif quarter == 3:  # rotated (x, y) = (H - y, x)
        mapped = (y0, height - x1, y1, height - x0)
    else:
        return boxes
    return np.stack(mapped, axis=1).astype(np.float32).reshape(-1, 4)
