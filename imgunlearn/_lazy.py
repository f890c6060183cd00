"""Package names loaded on first use (PEP 562).

Lightning brings matplotlib, scipy and torchmetrics with it: about 300 MB resident. The
sanitizer and ``preprocess`` need none of it, so the packages they pass through export
their Lightning parts lazily.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(package: str, exports: dict[str, str], namespace: dict[str, Any]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: each name in ``exports`` is read from
    the submodule it maps to (relative to ``package``) on first use, then kept in ``namespace``
    (the package's globals)."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            value = getattr(importlib.import_module(f".{exports[name]}", package), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
