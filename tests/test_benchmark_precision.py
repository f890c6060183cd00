"""scripts/benchmark_precision.py's measure on a real face tile with tiny real models."""

from __future__ import annotations

import pytest

from conftest import astronaut_with_unlearned_pair, load_script

from imgunlearn.concepts.faces import FaceFinder

skimage_data = pytest.importorskip("skimage.data")
pytestmark = pytest.mark.usefixtures("one_thread")


def test_both_precisions_are_measured_on_the_same_faces_and_rendered(tmp_path, toy_data):
    bench = load_script("benchmark_precision")
    manifest = astronaut_with_unlearned_pair(tmp_path, toy_data)
    entry = bench.measure_split(manifest, tmp_path / "model", tmp_path / "base", FaceFinder(tile_size=None))
    assert set(entry["rows"]) == {"32", "bf16"}
    for row in entry["rows"].values():
        assert row["tiles"] == 2 and row["seconds"] > 0
        assert row["input_faces"] == 1  # the astronaut, searched once for both
        assert 0.0 <= row["non_face_identical"] <= 1.0
    assert 0.0 <= entry["map_pixels_disagreeing"] <= 1.0
    table = bench.render({"command": "python scripts/benchmark_precision.py", "cpu_capability": "AVX512",
                          "torch": "2", "fast_dtype": "bfloat16", "base": "base", "model": "model", "seed": 1,
                          "splits": {"val": entry}})
    assert "| val | 32 |" in table and "| val | bf16 |" in table
