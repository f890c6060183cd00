"""scripts/benchmark_map_crops.py's measures and rule, on a real face tile and a real photo with
tiny real models."""

from __future__ import annotations

import pytest
from PIL import Image

from conftest import astronaut_with_unlearned_pair, load_script

from imgunlearn.concepts.faces import FaceFinder

skimage_data = pytest.importorskip("skimage.data")
pytestmark = pytest.mark.usefixtures("one_thread")


def test_crops_and_tiles_are_measured_on_the_same_faces_chosen_by_the_rule_and_rendered(tmp_path, toy_data):
    bench = load_script("benchmark_map_crops")
    precision = load_script("benchmark_precision")
    manifest = astronaut_with_unlearned_pair(tmp_path, toy_data)
    contexts = [None, 4]
    rows, maps = precision.measure_variants(manifest, tmp_path / "model", tmp_path / "base", FaceFinder(tile_size=None),
                                            {bench.variant_name(c): {"map_context": c} for c in contexts})
    assert set(rows) == {"whole tiles", "crops, 4 px context"}
    # The same map either way: the pixels kept are the same.
    assert (maps["whole tiles"] == maps["crops, 4 px context"]).all()
    val = {name: bench.pooled({1: rows}, name) for name in rows}
    assert all(row["input_faces"] == 1 for row in val.values())  # the astronaut, searched once for both
    Image.open(tmp_path / "face.png").resize((96, 96)).save(tmp_path / "photo.png")
    speeds = bench.photo_speeds([tmp_path / "photo.png"], tmp_path / "model", tmp_path / "base", contexts, repeats=1)
    assert all(entry[next(iter(entry))]["megapixels_per_second"] > 0 for entry in speeds.values())
    chosen = bench.choose(val, speeds, [4])
    assert chosen == (4 if val["crops, 4 px context"]["surviving_faces"] <= val["whole tiles"]["surviving_faces"]
                      else None)
    # A context that lets more faces through than whole tiles is never chosen, however fast.
    worse = {**val, "crops, 4 px context": {**val["crops, 4 px context"],
                                            "surviving_faces": val["whole tiles"]["surviving_faces"] + 1}}
    assert bench.choose(worse, speeds, [4]) is None
    table = bench.render({"command": "python scripts/benchmark_map_crops.py", "torch": "2", "precision": "bfloat16",
                          "base": "base", "seeds": [1], "models": {1: "model"}, "repeats": 1, "val": val,
                          "speeds": speeds, "chosen": 4, "test": {"whole tiles": val["whole tiles"]}})
    assert "| val | whole tiles |" in table and "| val | crops, 4 px context |" in table
    assert "| test | whole tiles |" in table and "Chosen: 4 px of context" in table
