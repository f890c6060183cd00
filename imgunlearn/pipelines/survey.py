"""Sanitize a whole survey folder: mirror SRC under DST, keep the metadata, log every file.

Every output is written atomically (temp file in its folder + ``os.replace``), so a killed
run leaves each output either complete or absent; ``audit.jsonl`` in DST gets one flushed
JSON line per file, which is what ``resume`` trusts. SRC is only ever read.

What is kept is a policy (``keep_metadata``, see :mod:`.metadata`): by default the survey's
facts (GPS, capture time, camera and optics, ICC) and nothing that can carry image content
or free text (thumbnails, XMP, IPTC, MakerNote, comments); the audit lists what was dropped.
Pixels are read with the EXIF orientation applied (faces are detected upright), so the
output's EXIF says orientation 1. Outputs are 8-bit RGB (alpha is composited on white, see
``open_rgb``). A georeferenced TIFF is read and written with ``rasterio`` when it is
installed, keeping its profile (CRS, transform, nodata, compression, tiling); without
rasterio PIL keeps its GeoTIFF tags as plain tags.

Across processes (a ``lightning.Fabric`` given as ``fabric``: ``preprocess --trainer.devices N``,
nodes too), the files still to do are dealt out in turn, rank by rank (the same list on every
rank: sorted paths, less what the audit says is done). Each rank writes its outputs atomically
and its records to ``audit.rankR.jsonl``; rank 0 merges the shards into ``audit.jsonl`` when all
are done, and also first thing on ``resume`` (the shards a killed run left), so a run resumes
whatever the world size of the one before.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from PIL import Image

from ..data.images import DEFAULT_MAX_MEGAPIXELS, check_size, image_from_array, open_rgb_array
from ..errors import InvalidSettingError
from ..fileio import TMP_SUFFIX, atomic_write, atomic_write_text, refuse_writes_into_inputs, write_json_atomic
from .metadata import check_keep, filter_geotiff_tags, save_options
from .sanitizer import Sanitizer, SanitizeReport

if TYPE_CHECKING:
    from lightning import Fabric

__all__ = ["AUDIT_FILENAME", "SURVEY_EXTENSIONS", "SurveySummary", "preprocess_folder", "tune_allocator"]

SURVEY_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff"})
AUDIT_FILENAME = "audit.jsonl"
SHARD_PATTERN = "audit.rank*.jsonl"  # one per rank while a run on several processes is going on
RUN_FILENAME = "run.json"
MASK_SUFFIX = ".forget-map.png"
_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF"}


# How often the heap's free pages go back to the system while a survey runs (seconds).
TRIM_SECONDS = 5.0
_TRIM_THREAD = "imgunlearn-heap-trim"


def tune_allocator(trim_every: float | None = TRIM_SECONDS) -> None:
    """Set glibc's allocator for a folder of photos, process-wide (``imgunlearn preprocess`` calls
    it; so does scripts/benchmark_preprocess.py, to measure what the command does).

    Blocks of 4 MB and more are served with mmap, so that they go back to the system when
    freed: by default the threshold climbs to 32 MB after the first large frees, and MTCNN's
    and the generator's per-batch tensors then fragment the heap (on a 100 MP photo the process
    held about a gigabyte it no longer used). The heap's top is trimmed only beyond 64 MB and
    grows 64 MB at a time: trimmed at 16 MB, the smaller blocks every tile batch frees and takes
    again went back to the system and came back as fresh pages, photo after photo, and a
    0.3 MP photo took 0.64-0.85 s instead of 0.48-0.52 (2-core CPU, docs/benchmarks.md).

    The top trim cannot return free blocks in the middle of the heap, and MTCNN's tensors of
    many sizes leave such holes: on a 108 MP photo the post-check's four turns grew the
    process by 0.4 GiB of freed blocks. So every ``trim_every`` seconds (``None``: never) a
    background thread hands the heap's free pages back (``malloc_trim``); once every few
    seconds that costs no measurable time, where once per MTCNN batch it cost a quarter of
    the detector's. A no-op where the C library is not glibc; the thread is started once."""
    if trim_every is not None and not trim_every > 0:
        raise InvalidSettingError(f"trim_every must be a positive number of seconds or None, got {trim_every!r}")
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 4 << 20)  # M_MMAP_THRESHOLD (fixed: no dynamic climb)
        libc.mallopt(-1, 64 << 20)  # M_TRIM_THRESHOLD
        libc.mallopt(-2, 64 << 20)  # M_TOP_PAD
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return  # not glibc: nothing to tune
    if trim_every is None or any(thread.name == _TRIM_THREAD for thread in threading.enumerate()):
        return

    def trim_now_and_then() -> None:
        while True:
            time.sleep(trim_every)
            trim(0)

    threading.Thread(target=trim_now_and_then, name=_TRIM_THREAD, daemon=True).start()


@dataclass
class SurveySummary:
    """Counts for one ``preprocess_folder`` run (``failed > 0`` should fail the command)."""

    processed: int = 0
    skipped: int = 0
    failed: int = 0
    blanked: int = 0  # images in which the post-check blanked faces
    flagged: int = 0  # images with faces left in (fail-closed off)
    megapixels: float = 0.0
    seconds: float = 0.0
    audit_path: Path | None = None
    failures: list[tuple[Path, str]] = field(default_factory=list)
    ignored: list[tuple[Path, str]] = field(default_factory=list)  # not processed, and why

    @property
    def ok(self) -> bool:
        return self.failed == 0


def preprocess_folder(
    src_dir: str | os.PathLike[str],
    dst_dir: str | os.PathLike[str],
    sanitizer: Sanitizer,
    *,
    resume: bool = False,
    fail_closed: bool | None = None,
    progress: bool = True,
    count_input_faces: bool = False,
    save_masks: bool = False,
    keep_metadata: str = "survey",
    max_megapixels: float | None = DEFAULT_MAX_MEGAPIXELS,
    fabric: Fabric | None = None,
) -> SurveySummary:
    """Sanitize every JPEG, PNG and TIFF under ``src_dir`` into the same tree under ``dst_dir``.

    ``resume`` skips files whose output exists *and* whose audit record says done, and
    appends to the audit log; otherwise the log starts afresh and outputs are overwritten.
    ``fail_closed`` overrides the sanitizer's own setting. A file that cannot be read or
    written is logged with its error and the run goes on. ``count_input_faces`` also
    detects the faces of each input for the audit log (a second MTCNN pass). With a
    sanitizer that composites, ``save_masks`` writes each file's forget map beside its
    output as ``NAME.forget-map.png`` (white = changed) for review.
    ``keep_metadata`` is the metadata policy (``survey``, ``all`` or ``none``, see
    :mod:`imgunlearn.pipelines.metadata`); each record lists what was dropped. A photo above
    ``max_megapixels`` is refused (and logged) from its header, before it is decoded.
    With ``fabric`` (launched), every rank calls this with its own sanitizer and does its share
    (module doc); the summary returned on every rank counts all ranks' files, and rank 0's
    ``failures`` lists them all.
    """
    check_keep(keep_metadata)
    if save_masks and sanitizer.reference is None:
        raise InvalidSettingError("save_masks needs a sanitizer with a reference generator (no forget map without one)")
    src = Path(src_dir)
    dst = Path(dst_dir)
    if not src.is_dir():
        raise NotADirectoryError(f"{src}: source folder does not exist or is not a directory")
    refuse_writes_into_inputs([dst], [src])
    rank, world = (fabric.global_rank, fabric.world_size) if fabric is not None else (0, 1)
    files, ignored = survey_files(src)

    audit_path = dst / AUDIT_FILENAME
    settings = {
        **sanitizer.settings(),
        "fail_closed": sanitizer.fail_closed if fail_closed is None else bool(fail_closed),
        "keep_metadata": keep_metadata, "save_masks": save_masks,
    }
    run_id = _check_run(dst, settings, resume)  # every rank refuses alike, before anyone waits
    if rank == 0:
        dst.mkdir(parents=True, exist_ok=True)
        write_json_atomic({"run": run_id, "settings": settings}, dst / RUN_FILENAME)
        if resume:
            merge_audit_shards(dst)  # what a killed run on several processes had logged
        else:
            audit_path.unlink(missing_ok=True)
            for shard in dst.glob(SHARD_PATTERN):
                shard.unlink()
        _remove_stale_temps(dst)
    if fabric is not None:
        fabric.barrier()
    done = _read_done(audit_path) if resume else set()

    summary = SurveySummary(audit_path=audit_path, ignored=ignored if rank == 0 else [])
    started = time.perf_counter()
    todo: list[tuple[Path, Path, Path]] = []
    for path in files:
        rel = path.relative_to(src)
        if rel.as_posix() in done and (dst / rel).is_file():
            summary.skipped += rank == 0
        else:
            todo.append((path, dst / rel, rel))
    todo = todo[rank::world]  # dealt in turn: neighbouring photos (similar sizes) spread over ranks
    progress = progress and rank == 0
    bar = _progress_bar(len(todo) + summary.skipped, progress, initial=summary.skipped,
                        desc="sanitizing" if world == 1 else f"sanitizing (rank 0's share of {world})")
    # The photo in hand, tile by tile: a 100 MP photo takes minutes on a CPU.
    tiles = _progress_bar(0, progress, unit="tile", desc="", position=1, leave=False)

    def tiles_done(done: int, total: int) -> None:
        tiles.total = total
        tiles.update(done - tiles.n)

    def finish(record: dict[str, Any], path: Path) -> None:
        audit.write(json.dumps(record) + "\n")
        audit.flush()  # a kill loses at most the files in flight
        if record["error"] is None:
            summary.processed += 1
            summary.megapixels += record["megapixels"]
            summary.blanked += record["action"] == "blanked"
            summary.flagged += record["action"] == "flagged"
        else:
            summary.failed += 1
            summary.failures.append((path, record["error"]))
        summary.seconds = time.perf_counter() - started
        bar.update(1)
        bar.set_postfix_str(f"{summary.megapixels / max(summary.seconds, 1e-9):.2f} MP/s, failed {summary.failed}")

    # The next photo is decoded and the last one encoded on background threads while the
    # generator works; a record reaches the audit log only once its output is on disk.
    log_path = audit_path if world == 1 else dst / SHARD_PATTERN.replace("*", str(rank))
    with _AuditLog(log_path, append=resume and world == 1) as audit, ThreadPoolExecutor(1) as reader, \
            ThreadPoolExecutor(1) as writer:
        for path, reason in summary.ignored:  # everything not processed is in the log, with why
            audit.write(json.dumps({"input": str(path), "relpath": path.relative_to(src).as_posix(),
                                    "action": "ignored", "reason": reason, "error": None, "run": run_id}) + "\n")
        load = partial(_load, keep=keep_metadata, max_megapixels=max_megapixels)
        loading = reader.submit(load, todo[0][0]) if todo else None
        pending: tuple[Future, dict[str, Any], Path] | None = None
        try:
            for index, (path, out, rel) in enumerate(todo):
                loaded = loading
                following = todo[index + 1][0] if index + 1 < len(todo) else None
                loading = reader.submit(load, following) if following and _small(following) else None
                tiles.reset()
                tiles.set_description_str(rel.as_posix()[-40:])
                record, writes = _process_file(path, out, rel, loaded or load, sanitizer, fail_closed,
                                               count_input_faces, save_masks, run_id, on_tiles=tiles_done)
                if pending is not None:
                    done_before, pending = pending, None
                    finish(_written(*done_before[:2]), done_before[2])
                if writes:
                    pending = (writer.submit(_run_writes, writes, src), record, path)
                else:
                    finish(record, path)
                if loading is None and following is not None:
                    loading = reader.submit(load, following)  # large photo: decoded only now
        finally:
            # Also on Ctrl-C: the photo already written gets its record, so resume trusts it.
            if pending is not None:
                finish(_written(*pending[:2]), pending[2])
    tiles.close()
    bar.close()
    if fabric is not None and world > 1:
        _gather_summary(fabric, summary, dst)
    summary.seconds = time.perf_counter() - started
    return summary


def _gather_summary(fabric: Fabric, summary: SurveySummary, dst: Path) -> None:
    """Every rank's counts summed into ``summary`` on every rank (so all exit alike); rank 0
    merges the audit shards and lists every rank's failures."""
    import torch

    counts = torch.tensor([summary.processed, summary.skipped, summary.failed, summary.blanked,
                           summary.flagged, summary.megapixels], dtype=torch.float64)
    # Each rank gets here with its shard closed, so the reduction is also the wait for every shard.
    total = fabric.all_reduce(counts, reduce_op="sum").tolist()
    summary.processed, summary.skipped, summary.failed, summary.blanked, summary.flagged = (int(v) for v in total[:5])
    summary.megapixels = total[5]
    if fabric.global_rank == 0:
        merged = merge_audit_shards(dst)
        summary.failures = [(Path(r["input"]), r["error"]) for r in merged
                            if r.get("error") is not None and r.get("action") != "ignored"]
    fabric.barrier()  # nobody leaves (and, say, resumes) before the shards are merged


def merge_audit_shards(dst: Path) -> list[dict[str, Any]]:
    """Append the records of every ``audit.rankR.jsonl`` in ``dst`` to ``audit.jsonl`` (one
    atomic rewrite) and remove the shards; returns the records added. A line already in the
    log is not added again (a kill between the rewrite and the removal), and a line cut short
    by a kill is dropped (its file has no record, so it is redone)."""
    shards = sorted(dst.glob(SHARD_PATTERN), key=lambda p: (len(p.name), p.name))
    if not shards:
        return []
    audit_path = dst / AUDIT_FILENAME
    lines = audit_path.read_text(encoding="utf-8").splitlines() if audit_path.is_file() else []
    seen, added = set(lines), []
    for shard in shards:
        for line in shard.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if line not in seen and isinstance(record, dict):
                seen.add(line)
                lines.append(line)
                added.append(record)
    atomic_write_text(audit_path, "".join(f"{line}\n" for line in lines if line.strip()))
    for shard in shards:
        shard.unlink()
    return added


# -- the run's bookkeeping ----------------------------------------------------------------
def _check_run(dst: Path, settings: dict[str, Any], resume: bool) -> str:
    """The id of a run with ``settings`` (the generator's weights hash and every setting that
    decides the outputs; each audit record carries it, and DST/run.json records both).
    Resuming a folder made with other weights or settings is refused: its finished files would
    silently stay as they were. Only reads."""
    path = dst / RUN_FILENAME
    folders = ("generator", "reference")  # where the weights lay; the hashes are what count
    if resume and (path.is_file() or (dst / AUDIT_FILENAME).is_file()):
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))["settings"]
            if not isinstance(previous, dict):
                raise TypeError("settings is not a mapping")
        except FileNotFoundError:
            raise InvalidSettingError(f"{dst}: cannot resume: the folder has an audit log but no {RUN_FILENAME}, so which "
                                      "generator and settings made its outputs is unknown; write to a new folder") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InvalidSettingError(f"{path}: cannot resume: not a run record imgunlearn wrote ({exc}); "
                                      "write to a new folder") from None
        changed = [f"{key} was {previous.get(key)!r}, now {settings.get(key)!r}"
                   for key in sorted(set(previous) | set(settings))
                   if key not in folders and previous.get(key) != settings.get(key)]
        if changed:
            raise InvalidSettingError(f"{dst}: cannot resume with another generator or other settings ({'; '.join(changed)}); "
                                      "rerun with the same ones, or write to a new folder")
    return hashlib.sha256(json.dumps({k: v for k, v in settings.items() if k not in folders},
                                     sort_keys=True).encode()).hexdigest()[:16]


def survey_files(src: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The photos under ``src`` that ``preprocess`` sanitizes (sorted), and every other entry
    with the reason it is left out: hidden files and folders, folder links (not followed, so
    a survey cannot lead outside itself or loop) and files that are not JPEG, PNG or TIFF."""
    files: list[Path] = []
    ignored: list[tuple[Path, str]] = []
    for dirpath, dirnames, filenames in os.walk(src):
        folder = Path(dirpath)
        for name in sorted(dirnames):
            if name.startswith("."):
                ignored.append((folder / name, "hidden folder (not searched)"))
            elif (folder / name).is_symlink():
                ignored.append((folder / name, "folder link (not followed)"))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not (folder / d).is_symlink())
        for name in sorted(filenames):
            path = folder / name
            if name.startswith("."):
                ignored.append((path, "hidden file"))
            elif path.suffix.lower() not in SURVEY_EXTENSIONS:
                ignored.append((path, "not a JPEG, PNG or TIFF"))
            else:
                files.append(path)
    return sorted(files), sorted(ignored)


def _read_done(audit_path: Path) -> set[str]:
    """Relative paths whose latest audit record is a success."""
    done: set[str] = set()
    if not audit_path.is_file():
        return done
    with audit_path.open(encoding="utf-8") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill: its file is simply redone
            rel = record.get("relpath") if isinstance(record, dict) else None
            if not isinstance(rel, str):
                continue
            if record.get("action") == "ignored":
                continue
            if record.get("error") is None:
                done.add(rel)
            else:
                done.discard(rel)
    return done


class _AuditLog:
    """The audit log opened for appending (resume) or afresh, always starting on a new line."""

    def __init__(self, path: Path, append: bool) -> None:
        self.path, self.append = path, append

    def __enter__(self):
        needs_newline = (
            self.append and self.path.is_file() and self.path.stat().st_size > 0
            and not self.path.read_bytes().endswith(b"\n")
        )
        self.handle = self.path.open("a" if self.append else "w", encoding="utf-8")
        if needs_newline:
            self.handle.write("\n")
        return self.handle

    def __exit__(self, *exc: Any) -> None:
        self.handle.close()


def _remove_stale_temps(dst: Path) -> None:
    # Only our own temp files (unique suffix), left by a run that was killed mid-write.
    for stale in dst.rglob(f".*{TMP_SUFFIX}"):
        stale.unlink(missing_ok=True)


def _progress_bar(total: int, enabled: bool, unit: str = "img", desc: str = "sanitizing", **options: Any):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit=unit, desc=desc, disable=not enabled, dynamic_ncols=True, **options)


@dataclass
class _Loaded:
    """A decoded photo and what its output needs to be written alike."""

    pixels: Any  # (H, W, 3) uint8 array, or (bands, H, W) array for a GeoTIFF
    options: dict[str, Any]
    geotiff: bool = False
    dropped: list[str] = field(default_factory=list)  # metadata the policy left out


# Decoding the next photo ahead of time holds two in memory; beyond this size, wait.
_PREFETCH_MAX_PIXELS = 50_000_000


def _small(path: Path) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return image.width * image.height <= _PREFETCH_MAX_PIXELS
    except Exception:  # unreadable or huge: decoded later, where _load reports it with the file's name
        return False


def _load(path: Path, keep: str = "survey", max_megapixels: float | None = DEFAULT_MAX_MEGAPIXELS) -> _Loaded:
    if _FORMATS[path.suffix.lower()] == "TIFF" and _is_georeferenced(path):
        return _load_geotiff(path, keep, max_megapixels)
    fmt = _FORMATS[path.suffix.lower()]
    pixels = open_rgb_array(path, max_megapixels)  # ImageLoadError names the file
    options, dropped = save_options(path, fmt, keep)
    return _Loaded(pixels, {"format": fmt, **options}, dropped=dropped)


def _process_file(
    path: Path,
    out: Path,
    rel: Path,
    loading: Future | Callable[[Path], _Loaded],
    sanitizer: Sanitizer,
    fail_closed: bool | None,
    count_input_faces: bool,
    save_masks: bool = False,
    run_id: str | None = None,
    on_tiles: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, Any], list[tuple[Path, Callable[[Path], None]]]]:
    """Sanitize one photo; returns its audit record and the writes still to do (atomic, in order)."""
    started = time.perf_counter()
    record: dict[str, Any] = {"input": str(path), "output": str(out), "relpath": rel.as_posix()}
    writes: list[tuple[Path, Callable[[Path], None]]] = []
    try:
        loaded = loading.result() if isinstance(loading, Future) else loading(path)
        if loaded.geotiff:
            report, pixels, write = _sanitize_geotiff(loaded, sanitizer, fail_closed, count_input_faces, on_tiles)
        else:
            report, pixels, write = _sanitize_pil(loaded, sanitizer, fail_closed, count_input_faces, on_tiles)
        writes.append((out, write))
        if save_masks and report.forget_map is not None:
            mask_path = out.with_name(out.name + MASK_SUFFIX)
            mask = report.forget_map.to_image()
            writes.append((mask_path, lambda tmp: mask.save(tmp, format="PNG")))
            record["mask"] = str(mask_path)
    except Exception as exc:  # one bad file must not stop a survey; KeyboardInterrupt does
        record.update(_failure(path, exc))
        writes = []
    else:
        record.update(report.to_dict(), error=None, megapixels=pixels / 1e6, metadata_dropped=loaded.dropped)
    record["run"] = run_id
    record["seconds"] = round(time.perf_counter() - started, 4)
    return record, writes


def _failure(path: Path, exc: BaseException) -> dict[str, Any]:
    message = str(exc)
    if str(path) not in message:
        message = f"{path}: {type(exc).__name__}: {message}"
    return {"faces_before": None, "faces_after": None, "action": "failed", "error": message,
            "megapixels": 0.0, "blanked_boxes": []}


def _run_writes(writes: list[tuple[Path, Callable[[Path], None]]], src: Path) -> None:
    for path, write in writes:
        # A folder or file link planted in DST must not lead a write into the source.
        refuse_writes_into_inputs([path], [src])
        atomic_write(path, write)


def _written(future: Future, record: dict[str, Any]) -> dict[str, Any]:
    """``record`` once its writes ended: a failed write makes it a failure."""
    try:
        future.result()
    except Exception as exc:
        record = {**record, **_failure(Path(record["input"]), exc)}
    return record


# -- PIL: JPEG, PNG, plain TIFF -----------------------------------------------------------
def _sanitize_pil(
    loaded: _Loaded, sanitizer: Sanitizer, fail_closed: bool | None, count_input_faces: bool,
    on_tiles: Callable[[int, int], None] | None = None,
) -> tuple[SanitizeReport, int, Callable[[Path], None]]:
    # Decoded straight into a writeable array (the PIL image is gone): unless the input's faces
    # are counted afterwards, the output is written over it, one copy of a large photo, not two.
    array, loaded.pixels = loaded.pixels, None
    height, width = array.shape[:2]
    output, changed = sanitizer.generate_with_map(array, in_place=not count_input_faces, on_tiles=on_tiles)
    # The input is let go before the post-check unless its faces are counted.
    before, array = (array if count_input_faces else None), None
    output, report = sanitizer.post_check(before, output, fail_closed=fail_closed, in_place=True)
    report.forget_map = changed
    del before
    return report, height * width, _writer([output], loaded.options)


def _writer(holder: list[np.ndarray], options: dict[str, Any]) -> Callable[[Path], None]:
    """Write the array in ``holder`` as an image; the array is consumed as PIL fills its copy."""
    def write(tmp: Path) -> None:
        image = image_from_array(holder.pop())  # the array's pages go back as PIL's fill
        image.save(tmp, **options)

    return write


# -- rasterio: georeferenced TIFF ---------------------------------------------------------
def _rasterio():
    try:
        import rasterio
    except ImportError:
        return None
    return rasterio


def _is_georeferenced(path: Path) -> bool:
    rasterio = _rasterio()
    if rasterio is None:
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(path) as dataset:
                return (
                    dataset.crs is not None
                    or not dataset.transform.is_identity
                    or bool(dataset.gcps[0])
                )
    except rasterio.errors.RasterioIOError:
        return False  # unreadable here: the PIL path reports the error with the file name


def _load_geotiff(path: Path, keep: str = "survey", max_megapixels: float | None = DEFAULT_MAX_MEGAPIXELS
                  ) -> _Loaded:
    rasterio = _rasterio()
    with rasterio.open(path) as dataset:
        check_size(path, dataset.width, dataset.height, max_megapixels)
        tags, dropped = filter_geotiff_tags(dataset.tags(), keep)
        if dataset.count and dataset.overviews(1):
            dropped.append("overviews")  # downscaled copies of the unsanitized pixels
        options = {"profile": dataset.profile.copy(), "tags": tags, "colorinterp": dataset.colorinterp}
        data = dataset.read()
    if data.dtype not in (np.uint8, np.uint16):
        raise InvalidSettingError(f"{path}: GeoTIFF samples of type {data.dtype} are not supported (uint8, uint16)")
    if data.shape[0] not in (1, 3, 4):
        raise InvalidSettingError(f"{path}: GeoTIFF with {data.shape[0]} bands is not supported (1, 3 or 4 = RGBA)")
    return _Loaded(data, options, geotiff=True, dropped=dropped)


def _sanitize_geotiff(
    loaded: _Loaded, sanitizer: Sanitizer, fail_closed: bool | None, count_input_faces: bool,
    on_tiles: Callable[[int, int], None] | None = None,
) -> tuple[SanitizeReport, int, Callable[[Path], None]]:
    data = loaded.pixels
    bands, height, width = data.shape
    rgb = data[:3] if bands >= 3 else np.repeat(data, 3, axis=0)
    # (H, W, 3) in the file's own integer type: tiles are read from it, never the whole as floats.
    pixels = np.ascontiguousarray(rgb.transpose(1, 2, 0))
    output, report = sanitizer.sanitize_with_report(
        pixels, fail_closed=fail_closed, detect_input=count_input_faces, on_tiles=on_tiles
    )
    values = output.transpose(2, 0, 1)
    result = data.copy()
    if bands == 1:
        result[0] = np.rint(values.astype(np.float64).mean(axis=0)).astype(data.dtype)
    else:
        result[:3] = values  # a 4th (alpha) band is kept as it was
    rasterio, options = _rasterio(), loaded.options

    def write(tmp: Path) -> None:
        with rasterio.open(tmp, "w", **options["profile"]) as target:
            target.write(result)
            target.update_tags(**options["tags"])
            target.colorinterp = options["colorinterp"]

    return report, height * width, write
