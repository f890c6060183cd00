"""Finding the images to train on: folders, manifests and validation."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Union

from ..errors import ImgUnlearnError
from .images import IMAGE_EXTENSIONS, Box, ImageLoadError, open_rgb

log = logging.getLogger("imgunlearn")

__all__ = [
    "ImageRecord",
    "EmptyImageSetError",
    "ManifestError",
    "list_image_files",
    "read_manifest",
    "resolve_records",
    "validate_records",
]

SPLITS = ("forget", "retain")
REQUIRED_COLUMNS = ("path", "split")
_PROGRESS_THRESHOLD = 200


@dataclass(frozen=True)
class ImageRecord:
    """One image file plus optional boxes (original pixel coordinates)."""

    path: Path
    boxes: tuple[Box, ...] = ()

    def __post_init__(self) -> None:
        # Normalise so records built from strings/lists compare and hash equal.
        object.__setattr__(self, "path", Path(self.path))
        object.__setattr__(
            self, "boxes", tuple(tuple(float(v) for v in box) for box in self.boxes)
        )


RecordSource = Union[str, os.PathLike, Iterable[Union[ImageRecord, str, os.PathLike]]]


class EmptyImageSetError(ImgUnlearnError, ValueError):
    """A forget/retain/training set has no usable images."""


class ManifestError(ImgUnlearnError, ValueError):
    """A manifest file is malformed."""


def list_image_files(folder: str | os.PathLike[str]) -> list[Path]:
    """All image files under ``folder`` (recursive, sorted, hidden entries skipped)."""
    root = Path(folder)
    if not root.exists():
        raise FileNotFoundError(f"{folder}: no such directory")
    if not root.is_dir():
        raise NotADirectoryError(f"{folder}: not a directory")
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        # Pruning in place stops os.walk descending into .git, .cache, ...
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith("."):
                continue
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                found.append(Path(dirpath) / name)
    return sorted(found)


def _parse_boxes(raw: Any, where: str) -> tuple[Box, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ManifestError(f"{where}: 'boxes' must be a list of [x0, y0, x1, y1] lists, got {raw!r}")
    boxes: list[Box] = []
    for box in raw:
        numeric = isinstance(box, list) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in box
        )
        if not numeric or len(box) != 4:
            raise ManifestError(f"{where}: box {box!r} is not 4 numbers [x0, y0, x1, y1]")
        x0, y0, x1, y1 = (float(v) for v in box)
        if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
            raise ManifestError(f"{where}: box {box!r} has non-finite coordinates")
        if x1 <= x0 or y1 <= y0:
            raise ManifestError(f"{where}: box {box!r} is empty (needs x1 > x0 and y1 > y0)")
        boxes.append((x0, y0, x1, y1))
    return tuple(boxes)


def _make_record(row: dict[str, Any], base: Path, where: str) -> tuple[str, ImageRecord]:
    raw_path = row.get("path")
    if not isinstance(raw_path, str) or not raw_path.strip():
        raise ManifestError(f"{where}: 'path' must be a non-empty string, got {raw_path!r}")
    raw_split = row.get("split")
    split = raw_split.strip().lower() if isinstance(raw_split, str) else None
    if split not in SPLITS:
        raise ManifestError(f"{where}: invalid split {raw_split!r} (expected 'forget' or 'retain')")
    image_path = Path(raw_path.strip()).expanduser()
    if not image_path.is_absolute():
        # Relative to the manifest so a dataset folder can be moved as a whole.
        image_path = base / image_path
    return split, ImageRecord(image_path, _parse_boxes(row.get("boxes"), where))


def _check_columns(columns: Iterable[str], where: str) -> None:
    present = list(columns)
    for column in REQUIRED_COLUMNS:
        if column not in present:
            found = ", ".join(present) if present else "none"
            raise ManifestError(f"{where}: missing required column '{column}' (found columns: {found})")


def read_manifest(path: str | os.PathLike[str]) -> dict[str, list[ImageRecord]]:
    """Read a CSV or JSONL manifest into ``{"forget": [...], "retain": [...]}``."""
    manifest = Path(path)
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest}: manifest file not found")
    suffix = manifest.suffix.lower()
    base = manifest.absolute().parent
    result: dict[str, list[ImageRecord]] = {split: [] for split in SPLITS}

    if suffix == ".csv":
        # utf-8-sig: spreadsheets often prepend a BOM to the header.
        with manifest.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None:
                raise ManifestError(f"{manifest}: empty manifest (no header row)")
            reader.fieldnames = [name.strip() for name in reader.fieldnames]
            _check_columns(reader.fieldnames, str(manifest))
            for row in reader:
                where = f"{manifest}, line {reader.line_num}"
                cell = row.get("boxes")
                if cell is None or not cell.strip():
                    row["boxes"] = None
                else:
                    try:
                        row["boxes"] = json.loads(cell)
                    except json.JSONDecodeError as exc:
                        raise ManifestError(f"{where}: 'boxes' is not valid JSON ({exc})") from exc
                split, record = _make_record(row, base, where)
                result[split].append(record)
    elif suffix in (".jsonl", ".ndjson"):
        with manifest.open(encoding="utf-8-sig") as handle:
            for line_no, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                where = f"{manifest}, line {line_no}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ManifestError(f"{where}: malformed JSON ({exc})") from exc
                if not isinstance(row, dict):
                    raise ManifestError(f"{where}: expected a JSON object, got {type(row).__name__}")
                _check_columns(row.keys(), where)
                split, record = _make_record(row, base, where)
                result[split].append(record)
    else:
        raise ManifestError(
            f"{manifest}: unsupported manifest format '{manifest.suffix}' "
            "(expected .csv, .jsonl or .ndjson)"
        )
    return _without_duplicates(result, manifest)


def _without_duplicates(result: dict[str, list[ImageRecord]], manifest: Path) -> dict[str, list[ImageRecord]]:
    """Drop repeated rows (each would weigh twice) and warn, with counts, about them and about
    files listed in both splits (the model is then told to forget and keep the same pixels)."""
    repeated = 0
    for split, records in result.items():
        seen: set[tuple[Path, tuple[Box, ...]]] = set()
        kept = []
        for record in records:
            key = (record.path, record.boxes)
            if key in seen:
                repeated += 1
                continue
            seen.add(key)
            kept.append(record)
        result[split] = kept
    if repeated:
        log.warning("%s: %d repeated row(s) dropped", manifest, repeated)
    both = sorted({r.path for r in result["forget"]} & {r.path for r in result["retain"]})
    if both:
        log.warning("%s: %d file(s) are in both the forget and the retain split (e.g. %s): the model is told to "
                    "forget and to keep the same pixels", manifest, len(both), both[0])
    return result


def resolve_records(source: RecordSource) -> list[ImageRecord]:
    """Turn a folder path, or an iterable of records/paths, into records."""
    if isinstance(source, (str, os.PathLike)):
        return [ImageRecord(path) for path in list_image_files(source)]
    records: list[ImageRecord] = []
    for item in source:
        if isinstance(item, ImageRecord):
            records.append(item)
        elif isinstance(item, (str, os.PathLike)):
            records.append(ImageRecord(Path(item)))
        else:
            raise TypeError(f"expected an ImageRecord or a path, got {type(item).__name__}: {item!r}")
    return records


def _check_boxes_inside(record: ImageRecord, width: int, height: int, name: str) -> None:
    # A box that misses the image entirely is a wrong manifest (other image, other scale,
    # swapped axes), not a region to forget: left alone it would empty the forget region.
    for box in record.boxes:
        x0, y0, x1, y1 = box
        if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
            raise ManifestError(f"{record.path}: box {list(box)} [in the {name} set] lies wholly outside the "
                                f"{width}x{height} image; fix the manifest (boxes are x0, y0, x1, y1 in pixels)")


def validate_records(
    records: Iterable[ImageRecord],
    *,
    name: str,
    skip_bad: bool = False,
    origin: str | os.PathLike[str] | None = None,
) -> tuple[list[ImageRecord], list[tuple[ImageRecord, str]]]:
    """Decode every image once so bad files fail before training starts.

    Returns ``(good, skipped)`` where ``skipped`` holds ``(record, message)``
    for unreadable files (only possible with ``skip_bad``). ``origin`` (a
    folder or manifest) is only used to make error messages more helpful.
    """
    records = list(records)
    iterator: Iterable[ImageRecord] = records
    if len(records) > _PROGRESS_THRESHOLD:
        from tqdm.auto import tqdm  # only needed for large sets

        iterator = tqdm(records, desc=f"checking {name} images", unit="img")

    good: list[ImageRecord] = []
    skipped: list[tuple[ImageRecord, str]] = []
    for record in iterator:
        try:
            image = open_rgb(record.path)
        except (ImageLoadError, OSError) as exc:
            if isinstance(exc, ImageLoadError):
                reason = exc.reason
            elif isinstance(exc, FileNotFoundError):
                reason = "no such file"
            else:
                reason = f"cannot read image ({exc})"
            if not skip_bad:
                raise ImageLoadError(
                    record.path,
                    f"{reason} [in the {name} set]; pass --skip-bad to skip unreadable images",
                ) from exc
            skipped.append((record, f"{record.path}: {reason}"))
            continue
        _check_boxes_inside(record, image.width, image.height, name)
        good.append(record)

    if not good:
        where = f" {origin}" if origin is not None else ""
        if not records:
            if origin is not None:
                exts = ", ".join(sorted(IMAGE_EXTENSIONS))
                detail = f"no images found in{where} (looked for {exts})"
            else:
                detail = "no images were given"
        else:
            detail = f"all {len(records)} images from{where or ' the input'} were unreadable and skipped"
        raise EmptyImageSetError(f"the {name} set is empty: {detail}")
    return good, skipped
