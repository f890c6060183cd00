"""Atomic writes: a reader (or a killed run) sees the old file or the new one, never half."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

from .errors import InvalidSettingError

# Temp files end in this (and start with a dot) so a resumed run can find a killed run's leftovers.
TMP_SUFFIX = ".imgunlearn-tmp"


def _umask() -> int:
    """The process umask, read without changing it (os.umask would race with writer threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


_FILE_MODE = 0o666 & ~_umask()


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """The one way this package writes a file: ``write(tmp)`` fills a temp file in the same
    folder (same filesystem, so the rename is atomic), which is flushed to disk, given an
    ordinary file's mode (the old file's, or 0666 less the umask, not mkstemp's 0600) and
    renamed over ``path``. A reader or a killed run sees the old file or the new one, never
    half of one; on failure the temp file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.is_file() else _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def write_json_atomic(data: Any, path: str | Path) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def looks_like_path(value: str) -> bool:
    """Whether a weights argument names a file (rather than a hub or registry name)."""
    return "/" in value or "\\" in value or Path(value).suffix in {".pt", ".pth", ".bin", ".safetensors"}


def refuse_writes_into_inputs(outputs: Iterable[str | Path | None], inputs: Iterable[str | Path | None]) -> None:
    """Raise ValueError, naming the paths, when an output is an input or lies inside an input
    folder, or an input lies inside an output folder. Paths are compared resolved, symlinks
    followed, so a link in the output tree that points into an input is caught too. Inputs
    that do not exist on disk (a hub id) are skipped; ``None`` entries are ignored."""
    resolved_inputs = [(Path(i), Path(i).resolve()) for i in inputs if i is not None and Path(i).exists()]
    for output in outputs:
        if output is None:
            continue
        target = Path(output).resolve()
        for given, source in resolved_inputs:
            if target == source or source in target.parents:
                raise InvalidSettingError(f"{output}: refusing to write there: it is the source {given} or lies inside the "
                                          "source (symlinks followed); sources are never written to, choose an output outside")
            if target in source.parents:
                raise InvalidSettingError(f"{given}: the input lies inside the output folder {output}, which this run "
                                          "writes to; choose an output folder outside the inputs")
