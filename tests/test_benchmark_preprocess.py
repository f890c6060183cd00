"""scripts/benchmark_preprocess.py's measuring pieces on a real photo with tiny real models:
the stage breakdown and the peak-memory run of the real preprocess command."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from conftest import load_script, tiny_generator

from imgunlearn import unlearn
from imgunlearn.concepts.faces import FaceFinder
from imgunlearn.pipelines.sanitizer import Sanitizer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models(tmp_path_factory, toy_data) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bench-preprocess")
    base = tiny_generator("kl")
    base.save_pretrained(root / "base")
    unlearn(base, toy_data["round"], toy_data["angular"], max_steps=2, batch_size=4, progress=False,
            trainer_options={"logger": False, "enable_model_summary": False}).save_pretrained(root / "model")
    photo = root / "coffee.jpg"
    Image.fromarray(data.coffee()).resize((240, 180)).save(photo, quality=90)
    return {"base": root / "base", "model": root / "model", "photo": photo}


def test_stage_times_cover_every_stage(models):
    bench = load_script("benchmark_preprocess")
    sanitizer = Sanitizer.from_pretrained(models["model"], face_finder=FaceFinder(), reference=models["base"],
                                          tile=16, overlap=4)
    times = bench.stage_times(models["photo"], sanitizer, count_input_faces=False, repeats=1)
    assert set(times) == {"decode", "generator", "post-check (output)", "input face count", "encode", "total"}
    assert times["input face count"] == 0.0 and all(v >= 0 for v in times.values())
    assert times["total"] == pytest.approx(sum(v for k, v in times.items() if k != "total"))


def test_mtcnn_crop_rates_time_both_detectors_and_compare_their_boxes(tmp_path):
    bench = load_script("benchmark_preprocess")
    photo = tmp_path / "astronaut.png"
    Image.fromarray(data.astronaut()).resize((600, 400)).save(photo)
    row = bench.mtcnn_crop_rates(photo, "cpu", repeats=1, tile=256, batch_size=4)
    assert row["tiles"] == 2 * 3 and row["same_boxes"] is True
    assert row["facenet_seconds"] > 0 and row["batched_seconds"] > 0


@pytest.mark.skipif(shutil.which("time") is None and not Path("/usr/bin/time").is_file(), reason="needs GNU time")
def test_peak_memory_runs_the_real_command(models):
    bench = load_script("benchmark_preprocess")
    row = bench.peak_memory(models["photo"], models["model"], models["base"], True, 16, 4)
    assert 0.05 < row["peak_rss_gb"] < 8 and row["reference"] is True
    assert "sanitized 1 file(s)" in row["summary"]


def test_survey_photo_is_made_once(tmp_path):
    bench = load_script("benchmark_preprocess")
    if not bench.PHOTO.is_file():
        pytest.skip("opencv-doc's aerial photos are not installed")
    path = bench.survey_photo(900, 700, tmp_path / "mosaic.jpg")
    with Image.open(path) as photo:
        assert photo.size == (900, 700)
    stamp = path.stat().st_mtime_ns
    assert bench.survey_photo(900, 700, path) == path and path.stat().st_mtime_ns == stamp
    assert np.asarray(Image.open(path)).std() > 10
