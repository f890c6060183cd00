"""The package's layout rules: subpackages import each other one way only, and nothing
private crosses a package boundary."""

from __future__ import annotations

import ast
from pathlib import Path

import imgunlearn

ROOT = Path(imgunlearn.__file__).parent


def top_level_imports():
    """(importing module path, subpackage it sits in, imported dotted target, names) for
    every relative import at module level (imports inside functions are lazy on purpose)."""
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).parts
        package = parts[:-1]
        here = parts[0] if len(parts) > 1 else parts[0][:-3]
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                base = list(package[: len(package) - (node.level - 1)])
                target = base + (node.module.split(".") if node.module else [])
                yield path, here, target, [alias.name for alias in node.names]


def test_no_import_cycles_between_subpackages():
    edges: dict[str, set[str]] = {}
    for _, here, target, names in top_level_imports():
        for other in ([target[0]] if target else names):
            if other != here:
                edges.setdefault(here, set()).add(other)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in edges.get(start, ()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    cycles = sorted(f"{a} -> {b}" for a in edges for b in edges[a] if reaches(b, a, {b}))
    assert cycles == []


def test_no_private_name_is_imported_from_another_package():
    crossing = [f"{path.relative_to(ROOT)}: {name} from {'.'.join(target)}"
                for path, _, target, names in top_level_imports()
                for name in names
                if name.startswith("_") and name != "__version__"
                and tuple(target[:-1]) != path.relative_to(ROOT).parts[:-1]]
    assert crossing == []


def test_the_wheel_ships_every_demo_asset():
    """`pip install .` (not editable) must run `imgunlearn demo`: every file of the demo's
    assets is matched by a data-files entry of pyproject.toml (installed to
    PREFIX/share/imgunlearn/assets, where the demo looks outside a checkout)."""
    import fnmatch
    import tomllib

    checkout = ROOT.parent
    data_files = tomllib.loads((checkout / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    patterns = [pattern for globs in data_files.values() for pattern in globs]
    assert all(target == "share/imgunlearn/" + globs[0].rsplit("/", 1)[0] for target, globs in data_files.items())
    shipped = [path for folder in ("demo_base", "demo_data", "face_corpus")
               for path in sorted((checkout / "assets" / folder).rglob("*")) if path.is_file()]
    missing = [str(path.relative_to(checkout)) for path in shipped
               if not any(fnmatch.fnmatch(str(path.relative_to(checkout)), pattern) for pattern in patterns)]
    assert shipped and missing == []
