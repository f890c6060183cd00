"""scripts/benchmark_precision.py's measure on a real face tile with tiny real models."""

from __future__ import annotations

import pytest
from PIL import Image

from conftest import face_tile_manifest, load_script, tiny_generator

from imgunlearn import unlearn
from imgunlearn.concepts.faces import FaceFinder

skimage_data = pytest.importorskip("skimage.data")
pytestmark = pytest.mark.usefixtures("one_thread")


def test_both_precisions_are_measured_on_the_same_faces_and_rendered(tmp_path, toy_data):
    bench = load_script("benchmark_precision")
    base = tiny_generator("kl")
    base.save_pretrained(tmp_path / "base")
    unlearn(base, toy_data["round"], toy_data["angular"], max_steps=2, batch_size=4, progress=False,
            trainer_options={"logger": False, "enable_model_summary": False}).save_pretrained(tmp_path / "model")
    photo = Image.fromarray(skimage_data.astronaut())
    manifest = face_tile_manifest(tmp_path, photo, (100, 0, 356, 256), [81, 62, 168, 172], (256, 256, 512, 512))
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
