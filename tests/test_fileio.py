"""The one atomic writer: every file the package writes goes through it."""

from __future__ import annotations

import os
import stat

import pytest
from PIL import Image

from imgunlearn.data import save_png_atomic
from imgunlearn.fileio import TMP_SUFFIX, atomic_write, atomic_write_text, write_json_atomic

from conftest import tiny_generator


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_written_files_get_an_ordinary_mode_not_mkstemps(tmp_path):
    umask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "text")
        write_json_atomic({"a": 1}, tmp_path / "a.json")
        save_png_atomic(Image.new("RGB", (4, 4)), tmp_path / "a.png")
        tiny_generator("kl").save_pretrained(tmp_path / "model")
    finally:
        os.umask(umask)
    for path in (tmp_path / "a.txt", tmp_path / "a.json", tmp_path / "a.png",
                 tmp_path / "model" / "imgunlearn_card.json", tmp_path / "model" / "README.md"):
        assert mode(path) == 0o644, path  # readable by others on a shared server, as open() would give
    # Rewriting a file keeps the mode its owner gave it.
    os.chmod(tmp_path / "a.txt", 0o600)
    atomic_write_text(tmp_path / "a.txt", "new")
    assert mode(tmp_path / "a.txt") == 0o600 and (tmp_path / "a.txt").read_text() == "new"


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "keep.txt"
    target.write_text("old")

    def half_then_fail(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, half_then_fail)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
    assert TMP_SUFFIX.startswith(".")
