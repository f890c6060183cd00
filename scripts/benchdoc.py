"""Shared by the benchmark scripts: write one named section of docs/benchmarks.md in place,
so each benchmark can refresh its own figures without touching the others'."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imgunlearn.fileio import atomic_write_text, write_json_atomic

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
HEADER = "# Benchmarks\n\nEach section is written by the script it names, with the exact command.\n"


def write_section(name: str, markdown: str, doc: Path = DOC) -> None:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = doc.read_text() if doc.exists() else HEADER
    block = f"{start}\n{markdown.rstrip()}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    atomic_write_text(doc, text)


def publish(result: dict[str, Any], json_path: Path, table: str, section: str, write_doc: bool = True) -> int:
    """Write the JSON results, print the table and (unless ``write_doc`` is off) put it into
    the docs as ``section``; returns 0, the scripts' exit status."""
    write_json_atomic(result, json_path)
    print("\n" + table)
    if write_doc:
        write_section(section, table)
    return 0
