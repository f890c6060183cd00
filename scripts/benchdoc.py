"""Shared by the benchmark scripts: write one named section of docs/benchmarks.md in place,
so each benchmark can refresh its own figures without touching the others'."""

from __future__ import annotations

from pathlib import Path

from imgunlearn.fileio import atomic_write_text

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
