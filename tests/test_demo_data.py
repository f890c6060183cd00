"""Tests for the faces demo set builder (imgunlearn.builders.demo_faces, scripts/make_demo_data.py).

The fallback backgrounds (scikit-image textures) are tested everywhere; the opencv-doc aerial
photos only where they are installed. Real MTCNN, real files, tiny sets.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import load_script

from imgunlearn.data import read_manifest
from imgunlearn.builders.demo_faces import (
    AERIAL_DIR,
    AERIAL_FILES,
    DemoDataConfig,
    MissingSourceError,
    build_demo_data,
    elliptical_alpha,
    load_aerial_backgrounds,
    load_face_sources,
    make_detector,
    near_duplicate_groups,
)

TINY = dict(train_tiles=8, test_tiles=6, retain_fraction=0.35, tile=96, face_max=40)
AERIAL_PRESENT = all((AERIAL_DIR / name).is_file() for name in AERIAL_FILES)


@pytest.fixture(scope="module")
def detector() -> Any:
    return make_detector()


def _rows(folder: Path, split: str) -> list[dict[str, Any]]:
    lines = (folder / split / "manifest.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _overlap(a: list[float], b: list[float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _check_set(folder: Path, config: DemoDataConfig) -> None:
    """Everything a valid demo set promises, checked from the files alone."""
    meta = json.loads((folder / "meta.json").read_text())
    rows = {split: _rows(folder, split) for split in ("train", "test")}
    for split in ("train", "test"):
        for kind in ("forget", "retain"):
            assert (folder / split / kind).is_dir()
        records = read_manifest(folder / split / "manifest.jsonl")
        assert len(records["forget"]) + len(records["retain"]) == len(rows[split])
        assert len(rows[split]) == getattr(config, f"{split}_tiles")
        on_disk = sorted(p.relative_to(folder / split).as_posix() for p in (folder / split).rglob("*.png"))
        assert on_disk == sorted(r["path"] for r in rows[split])
        assert all(r.path.is_file() for recs in records.values() for r in recs)
        assert all(r.boxes == () for r in records["retain"])
        assert all(r.boxes for r in records["forget"])
        for row in rows[split]:
            assert row["path"].startswith(row["split"] + "/")
            assert len(row["boxes"]) == len(row["identities"]) == len(row["detectable"])
            assert all(isinstance(flag, bool) for flag in row["detectable"])
            if row["split"] == "retain":
                assert row["boxes"] == [] and row["identities"] == []
            for i, box in enumerate(row["boxes"]):
                x0, y0, x1, y1 = box
                assert 0 <= x0 < x1 <= config.tile and 0 <= y0 < y1 <= config.tile
                assert x1 - x0 == y1 - y0
                assert config.face_min <= x1 - x0 <= config.face_max
                assert not any(_overlap(box, other) for other in row["boxes"][i + 1:])

    # Face identities: no identity on both sides, and the meta's lists agree with the tiles.
    used = {split: {i for row in rows[split] for i in row["identities"]} for split in rows}
    assert used["train"] and used["test"]
    assert not used["train"] & used["test"]
    assert not set(meta["split_rule"]["identities"]["train"]) & set(meta["split_rule"]["identities"]["test"])
    for split in rows:
        assert used[split] <= set(meta["split_rule"]["identities"][split])

    # Background pixels: no test source window overlaps a train source window of the same photo.
    for test_row in rows["test"]:
        for train_row in rows["train"]:
            if test_row["source"] == train_row["source"]:
                assert not _overlap(test_row["source_box"], train_row["source_box"])
    for split in rows:
        for row in rows[split]:
            region = meta["split_rule"]["regions"][split][row["source"]]
            sx0, sy0, sx1, sy1 = row["source_box"]
            assert region[0] <= sx0 < sx1 <= region[2] and region[1] <= sy0 < sy1 <= region[3]


def _file_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_fallback_build_is_valid_and_deterministic(tmp_path: Path, detector: Any) -> None:
    config = DemoDataConfig(background="fallback", seed=3, **TINY)
    meta = build_demo_data(tmp_path / "a", config, detector=detector)
    _check_set(tmp_path / "a", config)
    assert meta["counts"]["train"]["retain_tiles"] > 0 and meta["counts"]["test"]["forget_tiles"] > 0
    assert 0.0 <= meta["detectability"] <= 1.0
    build_demo_data(tmp_path / "b", config, detector=detector)
    first, second = _file_bytes(tmp_path / "a"), _file_bytes(tmp_path / "b")
    assert first.keys() == second.keys() and first == second
    other = build_demo_data(tmp_path / "c", DemoDataConfig(background="fallback", seed=4, **TINY), detector=detector)
    assert _file_bytes(tmp_path / "c") != first and other["config"]["seed"] == 4


def test_rebuild_replaces_own_output_and_refuses_foreign_folder(tmp_path: Path, detector: Any) -> None:
    config = DemoDataConfig(background="fallback", detect=False, **{**TINY, "train_tiles": 3, "test_tiles": 2})
    build_demo_data(tmp_path / "out", config, detector=detector)
    (tmp_path / "out" / "train" / "forget" / "stale.png").write_bytes(b"old")
    build_demo_data(tmp_path / "out", config, detector=detector)
    assert not (tmp_path / "out" / "train" / "forget" / "stale.png").exists()
    assert "detectable" not in _rows(tmp_path / "out", "train")[0]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        build_demo_data(foreign, config, detector=detector)
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


@pytest.mark.skipif(not AERIAL_PRESENT, reason=f"opencv-doc aerial photos not in {AERIAL_DIR} (apt-get install opencv-doc)")
def test_aerial_build_is_valid(tmp_path: Path, detector: Any) -> None:
    config = DemoDataConfig(seed=0, **TINY)
    meta = build_demo_data(tmp_path / "aerial", config, detector=detector)
    _check_set(tmp_path / "aerial", config)
    assert set(meta["split_rule"]["regions"]["train"]) == set(AERIAL_FILES)
    # Composited faces must mostly be findable, or the faces benchmark has nothing to count.
    assert meta["detectability"] >= 0.6


def test_missing_aerial_file_names_it_and_the_package(tmp_path: Path) -> None:
    with pytest.raises(MissingSourceError, match=r"aero1\.jpg.*apt-get install opencv-doc"):
        load_aerial_backgrounds(tmp_path)
    script = load_script("make_demo_data")
    assert script.main(["--output", str(tmp_path / "out"), "--aerial-dir", str(tmp_path)]) == 2
    assert not (tmp_path / "out").exists()


def test_near_duplicates_are_found_and_kept_on_one_side(monkeypatch: pytest.MonkeyPatch, detector: Any) -> None:
    import skimage.data

    real = skimage.data.lfw_subset()
    # The real subset has no near-duplicate crops at the default threshold.
    assert near_duplicate_groups(real[:100], 0.9) == []
    planted = real.copy()
    planted[90] = planted[5][:, ::-1] * 0.9 + 0.05  # index 5 mirrored, contrast changed
    assert near_duplicate_groups(planted[:100], 0.9) == [[5, 90]]
    monkeypatch.setattr(skimage.data, "lfw_subset", lambda: planted)
    faces = load_face_sources(detector, DemoDataConfig())
    train_ids = {f.identity for f in faces["train"]}
    test_ids = {f.identity for f in faces["test"]}
    assert {"lfw005", "lfw090"} <= train_ids and not train_ids & test_ids
    assert {"astronaut", "grace_hopper"} <= test_ids
    assert len(train_ids) + len(test_ids) == 102


def test_elliptical_alpha_has_soft_edge_and_no_square_border() -> None:
    alpha = elliptical_alpha(32, 0.3)
    assert alpha.shape == (32, 32)
    assert alpha[16, 16] == pytest.approx(1.0)
    assert alpha[0, 0] == alpha[0, -1] == alpha[-1, 0] == alpha[-1, -1] == 0.0
    assert np.all(alpha[0, :] < 0.05)  # the pasted square's own edge never shows
    assert 0.0 < alpha[16, 3] < 1.0  # a feathered ramp, not a hard cut
