"""Surveys of photo folders: where the faces are, and forget/retain tiles for unlearning.

``find_faces_in_folder`` writes one JSON line per image with its face boxes.
``split_survey`` cuts every photo into tiles, puts tiles showing a face into ``forget/`` (with
the face boxes in tile coordinates, for region-level forgetting, docs/design.md §1) and the others into
``retain/``, and writes a ``manifest.jsonl`` that ``imgunlearn.data.sources.read_manifest``
reads, so ``imgunlearn.unlearn(generator, manifest=...)`` can use it directly.

The source folder is only ever read.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..data.images import IMAGE_EXTENSIONS, ImageLoadError, open_rgb, save_png_atomic
from ..data.sources import EmptyImageSetError, list_image_files
from ..data.tiling import tile_positions
from ..errors import InvalidSettingError, is_whole_number
from ..fileio import atomic_write_text, refuse_writes_into_inputs
from ..geometry import box_pixels, grow_boxes
from .clip_filter import ClipFilter, filter_detections
from .faces import FaceDetections, FaceFinder

__all__ = ["find_faces_in_folder", "split_survey"]

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.jsonl"


def _load_images(files: list[Path], progress: bool, desc: str
                 ) -> Iterator[tuple[Path, Image.Image | None, str | None]]:
    """Yield ``(file, image, None)``, or ``(file, None, reason)`` for an unreadable file."""
    from tqdm.auto import tqdm

    for file in tqdm(files, desc=desc, unit="img", disable=not progress):
        try:
            yield file, open_rgb(file), None
        except (ImageLoadError, OSError) as exc:
            reason = exc.reason if isinstance(exc, ImageLoadError) else f"cannot read image ({exc})"
            logger.warning("skipping %s: %s", file, reason)
            yield file, None, reason


def _detect(finder: FaceFinder, clip_filter: ClipFilter | None, images: list[Image.Image]
            ) -> list[FaceDetections]:
    detections = finder.detect_batch(images)
    if clip_filter is not None:
        detections = [filter_detections(image, found, clip_filter) for image, found in zip(images, detections)]
    return detections


def _list_images(src: Path) -> list[Path]:
    files = list_image_files(src)
    if not files:
        raise EmptyImageSetError(f"{src}: no images found (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return files


def _rounded(values: np.ndarray, decimals: int = 2) -> list:
    # float64 first, so the JSON shows 181.8 rather than float32's 181.8000030517578
    return np.round(values.astype(np.float64), decimals).tolist()


def find_faces_in_folder(
    src_dir: str | os.PathLike[str],
    output_jsonl: str | os.PathLike[str],
    finder: FaceFinder,
    clip_filter: ClipFilter | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Detect faces in every image under ``src_dir`` (recursive) and write ``output_jsonl``.

    One line per image: ``{"path": relative to src_dir, "width", "height", "boxes": [[x0, y0,
    x1, y1], ...], "scores": [...]}``; an unreadable image gets ``{"path", "error"}`` instead of
    stopping the survey. The file is written at the end, atomically.

    Returns a summary: images read, errors (``[{"path", "error"}]``), faces, images with faces
    and the output path.
    """
    src = Path(src_dir)
    output = Path(output_jsonl)
    refuse_writes_into_inputs([output], [src])
    files = _list_images(src)
    lines: list[str] = []  # in file order; a batched image's line is filled in when detected
    summary: dict[str, Any] = {"images": 0, "errors": [], "faces": 0, "images_with_faces": 0,
                               "output": str(output)}
    pending: list[tuple[int, Path, Image.Image]] = []
    from tqdm.auto import tqdm

    # Counts images detected, not loaded: loading a batch takes a moment, detecting it the time.
    bar = tqdm(total=len(files), desc="finding faces", unit="img", disable=not progress)

    def flush() -> None:
        found = _detect(finder, clip_filter, [image for _, _, image in pending])
        for (slot, file, image), detections in zip(pending, found):
            lines[slot] = json.dumps({
                "path": file.relative_to(src).as_posix(),
                "width": image.width,
                "height": image.height,
                "boxes": _rounded(detections.boxes),
                "scores": _rounded(detections.scores, 4),
            })
            summary["images"] += 1
            summary["faces"] += len(detections)
            summary["images_with_faces"] += int(len(detections) > 0)
        bar.update(len(pending))
        pending.clear()

    for file, image, error in _load_images(files, False, "loading"):
        if image is None:
            failure = {"path": file.relative_to(src).as_posix(), "error": error}
            lines.append(json.dumps(failure))
            summary["errors"].append(failure)
            bar.update(1)
            continue
        pending.append((len(lines), file, image))
        lines.append("")
        # A few images at a time: MTCNN batches equal sizes, and memory stays bounded.
        if len(pending) >= finder.batch_size:
            flush()
    if pending:
        flush()
    bar.close()
    atomic_write_text(output, "".join(line + "\n" for line in lines))
    return summary


def _tile_faces(boxes: np.ndarray, left: int, top: int, width: int, height: int,
                face_margin: float) -> np.ndarray:
    """The face boxes that reach into one tile, clipped to it, in tile coordinates.

    Any overlap counts: a tile showing a mouth and chin is a face tile, or the retain loss
    would teach the encoder to keep face parts. Each box first grows by ``face_margin`` × its
    longer side (hair and ears identify too), and clipped boxes are rounded outwards to whole
    pixels, so a sliver of a face still masks the pixels it touches.
    """
    local = grow_boxes(boxes, share=face_margin) - np.array([left, top, left, top], np.float64)
    pixels = [box_pixels(box, height, width) for box in local]
    return np.array([p for p in pixels if p[2] > p[0] and p[3] > p[1]], np.float32).reshape(-1, 4)


def split_survey(
    src_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    finder: FaceFinder,
    tile: int = 256,
    overlap: int = 0,
    clip_filter: ClipFilter | None = None,
    progress: bool = True,
    face_margin: float = 0.1,
) -> dict[str, Any]:
    """Cut the photos under ``src_dir`` into tiles and sort them into forget and retain sets.

    Tiles are ``tile`` pixels square with ``overlap`` pixels between neighbours; the last row
    and column are aligned to the photo's edge. A photo side shorter than ``tile`` is kept at its
    own length (one tile that is narrower or shorter), not padded: padding would invent pixels
    the generator then learns to reproduce. Faces are found on the whole photo (``finder``
    tiles it as it needs, optionally ``clip_filter`` keeps only some). A face belongs to every
    tile its box reaches into, after growing the box by ``face_margin`` × its longer side: no
    retain tile shows any part of a face.

    Writes ``output_dir/forget/<relative path>_x<left>_y<top>.png`` (boxes clipped to the tile,
    in tile coordinates), ``output_dir/retain/...`` and ``output_dir/manifest.jsonl`` (paths
    relative to the manifest; extra fields ``source`` and ``tile`` say where a tile came from).
    Unreadable photos are logged and listed in the summary. Tiles from an earlier run with other
    settings are not deleted; the manifest lists exactly this run's tiles.
    """
    src, out = Path(src_dir), Path(output_dir)
    if not is_whole_number(tile, 1):
        raise InvalidSettingError(f"tile must be a positive integer, got {tile!r}")
    if not is_whole_number(overlap) or overlap >= tile:
        raise InvalidSettingError(f"overlap must be an integer in [0, tile), got {overlap!r}")
    if not 0.0 <= face_margin <= 1.0:
        raise InvalidSettingError(f"face_margin must be in [0, 1], got {face_margin!r}")
    files = _list_images(src)
    # SRC may lie in OUT, but not where tiles and the manifest are written.
    refuse_writes_into_inputs([out / "forget", out / "retain", out / MANIFEST_NAME], [src])

    rows: list[str] = []
    summary: dict[str, Any] = {"images": 0, "errors": [], "faces": 0, "tiles": 0, "forget_tiles": 0,
                               "retain_tiles": 0, "manifest": str(out / MANIFEST_NAME)}
    for file, image, error in _load_images(files, progress, "splitting survey"):
        relative = file.relative_to(src)
        if image is None:
            summary["errors"].append({"path": relative.as_posix(), "error": error})
            continue
        detections = _detect(finder, clip_filter, [image])[0]
        summary["images"] += 1
        summary["faces"] += len(detections)
        for top, left in tile_positions(image.height, image.width, tile, overlap):
            # A photo side shorter than the tile stays short (no padding, see above).
            width, height = min(tile, image.width - left), min(tile, image.height - top)
            boxes = _tile_faces(detections.boxes, left, top, width, height, face_margin)
            split = "forget" if len(boxes) else "retain"
            name = relative.parent / f"{relative.name}_x{left}_y{top}.png"
            refuse_writes_into_inputs([out / split / name], [src])  # no link in OUT leads into SRC
            save_png_atomic(image.crop((left, top, left + width, top + height)), out / split / name)
            row = {"path": (Path(split) / name).as_posix(), "split": split,
                   "source": relative.as_posix(), "tile": [left, top, width, height]}
            if len(boxes):
                row["boxes"] = _rounded(boxes)
            rows.append(json.dumps(row))
            summary["tiles"] += 1
            summary[f"{split}_tiles"] += 1
    atomic_write_text(out / MANIFEST_NAME, "".join(row + "\n" for row in rows))
    return summary
