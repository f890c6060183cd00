"""Atomic writes: a reader (or a killed run) sees the old file or the new one, never half."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable


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
                raise ValueError(f"{output}: refusing to write there: it is the source {given} or lies inside the "
                                 "source (symlinks followed); sources are never written to, choose an output outside")
            if target in source.parents:
                raise ValueError(f"{given}: the input lies inside the output folder {output}, which this run "
                                 "writes to; choose an output folder outside the inputs")
