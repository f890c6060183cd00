"""Atomic writes: a reader (or a killed run) sees the old file or the new one, never half."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
        handle.write(text)
    try:
        os.replace(handle.name, path)
    except BaseException:
        os.unlink(handle.name)
        raise


def write_json_atomic(data: Any, path: str | Path) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def check_separate_folders(source: str | Path, output: str | Path, written: tuple[str, ...] = ()) -> None:
    """Refuse an ``output`` folder that is ``source`` or inside it (the source is never written
    to), and a ``source`` inside a folder the run writes to: ``output`` itself, or only its
    ``written`` sub-folders when given."""
    src, out = Path(source).resolve(), Path(output).resolve()
    if out == src or src in out.parents:
        raise ValueError(f"{output}: the output folder is the source folder or lies inside the source folder "
                         f"{source}; choose a folder outside it, the source is never written to")
    for target in [out / name for name in written] or [out]:
        if target == src or target in src.parents:
            raise ValueError(f"{source}: the source folder lies inside the output folder {target}, which this run "
                             "writes to")
