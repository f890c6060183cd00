"""The faces commands end to end: find-faces, split-survey, unlearn --manifest, preprocess and
demo, on the real astronaut photo, the shipped demo tiles and tiny real generators."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imgunlearn.cli import main
from imgunlearn.data import read_manifest
from imgunlearn.data.augment import resolve_augmentation
from imgunlearn.demo import (DEMO_UNLEARN, FLOAT32_DEMO_STEPS, demo_max_steps, demo_trainer_options,
                             demo_unlearn_settings)
from imgunlearn.errors import InvalidSettingError
from imgunlearn.generators import fast_dtype, load_generator

from conftest import state_copy, states_equal, tiny_generator

skimage_data = pytest.importorskip("skimage.data")
ROOT = Path(__file__).resolve().parent.parent
FACE_CORPUS = ROOT / "assets" / "face_corpus"


pytestmark = pytest.mark.usefixtures("one_thread")


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def survey(tmp_path_factory) -> Path:
    """A survey folder: the astronaut (one face) in a sub-folder, a faceless gradient, a corrupt JPEG."""
    src = tmp_path_factory.mktemp("survey")
    (src / "flight1").mkdir()
    Image.fromarray(skimage_data.astronaut()).save(src / "flight1" / "astronaut.jpg", quality=95)
    ramp = np.linspace(0, 255, 320 * 240, dtype=np.float32).reshape(240, 320)
    Image.fromarray(np.stack([ramp, ramp[::-1], np.full_like(ramp, 90)], -1).astype(np.uint8)).save(src / "field.png")
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return src


def test_find_faces_writes_boxes_and_reports_bad_files(survey, tmp_path, capsys):
    before = digest(survey)
    out = tmp_path / "boxes.jsonl"
    assert main(["find-faces", str(survey), "--output", str(out), "--no-progress"]) == 1  # one file failed
    captured = capsys.readouterr()
    assert "broken.jpg" in captured.err and "found 1 face(s) in 1 of 2 image(s)" in captured.out
    rows = {row["path"]: row for row in map(json.loads, out.read_text().splitlines())}
    assert set(rows) == {"flight1/astronaut.jpg", "field.png", "broken.jpg"}
    (x0, y0, x1, y1), = rows["flight1/astronaut.jpg"]["boxes"]
    assert 170 < (x0 + x1) / 2 < 280 and 60 < (y0 + y1) / 2 < 175
    assert rows["field.png"]["boxes"] == [] and "error" in rows["broken.jpg"]
    assert digest(survey) == before


def test_find_faces_filter_without_weights_is_a_clear_error(survey, tmp_path, capsys):
    missing = tmp_path / "no-such-checkpoint.safetensors"
    code = main(["find-faces", str(survey), "--output", str(tmp_path / "b.jsonl"), "--filter", "child",
                 "--clip-model", "ViT-B-32", "--clip-pretrained", str(missing), "--no-progress"])
    assert code == 2
    assert "imgunlearn: error:" in capsys.readouterr().err


def test_split_survey_then_unlearn_from_its_manifest(survey, tmp_path, capsys):
    out = tmp_path / "split"
    assert main(["split-survey", str(survey), "--output", str(out), "--tile", "256", "--no-progress"]) == 1
    # the face's box reaches past x 256: the tile beside it holds its edge and is forget too
    assert "2 forget tile(s)" in capsys.readouterr().out
    records = read_manifest(out / "manifest.jsonl")
    assert len(records["forget"]) == 2 and len(records["retain"]) >= 4
    for record in records["forget"]:
        (box,) = record.boxes
        assert all(0 <= v <= 256 for v in box)
    assert all(not record.boxes for record in records["retain"])

    base = tmp_path / "base"
    tiny_generator("kl").save_pretrained(base)
    decoder = state_copy(load_generator(base).model.decoder)
    unlearned = tmp_path / "unlearned"
    assert main(["unlearn", "--generator", str(base), "--manifest", str(out / "manifest.jsonl"), "--output",
                 str(unlearned), "--max-steps", "2", "--batch-size", "2", "--box-dilation", "2", "--no-progress"]) == 0
    stage = json.loads((unlearned / "imgunlearn_card.json").read_text())["history"][-1]
    assert stage["region_level"] is True and stage["forget_images"] == 2 and stage["box_dilation"] == 2
    assert states_equal(decoder, state_copy(load_generator(unlearned).model.decoder))


def test_preprocess_mirrors_the_tree_audits_and_fails_on_a_bad_file(survey, tmp_path, capsys):
    before = digest(survey)
    model = tmp_path / "model"
    tiny_generator("kl").save_pretrained(model)
    out = tmp_path / "clean"
    code = main(["preprocess", str(survey), "--generator", str(model), "--output", str(out), "--tile", "64",
                 "--overlap", "16", "--fail-closed", "--no-progress"])
    assert code == 1  # broken.jpg failed; the others were written
    assert "failed 1" in capsys.readouterr().out
    assert (out / "flight1" / "astronaut.jpg").is_file() and (out / "field.png").is_file()
    assert Image.open(out / "field.png").size == (320, 240)
    audit = [json.loads(line) for line in (out / "audit.jsonl").read_text().splitlines()]
    by_input = {Path(row["input"]).name: row for row in audit}
    assert by_input["broken.jpg"]["error"] and not by_input["field.png"]["error"]
    assert digest(survey) == before
    # A second run with --resume redoes nothing that finished.
    assert main(["preprocess", str(survey), "--generator", str(model), "--output", str(out), "--tile", "64",
                 "--overlap", "16", "--resume", "--no-progress"]) == 1
    assert "skipped 2 already done" in capsys.readouterr().out


@pytest.mark.skipif(not (FACE_CORPUS / "test" / "manifest.jsonl").is_file(), reason="demo tiles not in this checkout")
def test_demo_pipeline_on_a_tiny_model(tmp_path, capsys):
    """The demo end to end with a tiny base over a handful of the shipped tiles."""
    assets = tmp_path / "assets"
    tiny_generator("kl").save_pretrained(assets / "demo_base")
    for folder, split, count in (("face_corpus", "train", 6), ("face_corpus", "test", 4), ("demo_data", "test", 3)):
        source = ROOT / "assets" / folder / split
        rows = [json.loads(line) for line in (source / "manifest.jsonl").read_text().splitlines()]
        chosen = [r for r in rows if r["split"] == "forget"][:count - 2] + [r for r in rows if r["split"] == "retain"][:2]
        for row in chosen:
            row["path"] = str((source / row["path"]).resolve())
        (assets / folder / split).mkdir(parents=True)
        (assets / folder / split / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chosen))
    out = tmp_path / "runs" / "demo"
    assert main(["demo", "--assets", str(assets), "--output", str(out), "--max-steps", "3", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "| unlearned |" in printed and "cross-source test" in printed and "report.html" in printed
    assert "| unlearned + forget map |" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["settings"]["max_steps"] == 3
    assert metrics["precision"] == demo_trainer_options("cpu")["precision"]
    cross, first = metrics["sets"].values()
    assert cross["unlearned"]["images"] == 4 and first["unlearned"]["images"] == 3
    assert "face_corpus" in cross["manifest"] and "face_corpus/train" in metrics["train_manifest"]
    assert 0 <= cross["unlearned"]["non_face_ssim_vs_reference"] <= 1
    mapped = cross["unlearned + forget map"]
    assert 0 <= mapped["non_face_identical"] <= 1 and mapped["changed_area_vs_boxes"] >= 0
    assert metrics["forget_map"]["threshold"] > 0
    assert metrics["forget_map"]["blur"] == 0.0  # the demo's map is re-synthesised by the generator
    report = (out / "report.html").read_text()
    assert "the card's threshold (τ = " in report and "re-synthesised, every other pixel is the input's" in report
    assert "data:image/png;base64," in report and "<table>" in report and "<svg" in report
    assert "the forget map (white = changed)" in report
    assert "cross-source test" in report
    assert f"precision {metrics['precision']}" in report
    stage = load_generator(out / "unlearned").card["history"][-1]
    assert stage["precision"] == metrics["precision"]
    assert stage["region_level"] is True and stage["augment"] == resolve_augmentation(DEMO_UNLEARN["augment"]).to_dict()


def test_demo_settings_per_target():
    assert demo_unlearn_settings() == {**DEMO_UNLEARN, "target": "noise"}
    blank = demo_unlearn_settings("blank", max_steps=7)
    assert blank["target"] == "blank" and blank["alpha"] == DEMO_UNLEARN["alpha"] and blank["max_steps"] == 7
    with pytest.raises(ValueError, match="unknown target 'fog'"):
        demo_unlearn_settings("fog")


def test_demo_unlearns_in_bf16_only_where_the_device_runs_it_natively():
    """bf16 autocast where the CPU has AMX or AVX-512 BF16 (the demo's steps ran 2.4x faster);
    elsewhere emulated bfloat16 would be slow, so float32."""
    options = demo_trainer_options("cpu")
    native = fast_dtype("cpu") == torch.bfloat16
    assert options == {"accelerator": "cpu", "precision": "bf16-mixed" if native else "32-true"}
    with pytest.raises(InvalidSettingError, match="--device tpu"):
        demo_trainer_options("tpu")
    # float32 steps take 2.4x as long: the demo takes fewer of them to stay within its 10 minutes
    assert demo_max_steps("bf16-mixed") == DEMO_UNLEARN["max_steps"] > demo_max_steps("32-true") == FLOAT32_DEMO_STEPS
    if not torch.cuda.is_available():
        with pytest.raises(InvalidSettingError, match="CUDA is not available"):
            demo_trainer_options("cuda")


def test_demo_without_assets_says_where_to_get_them(tmp_path, capsys):
    assert main(["demo", "--assets", str(tmp_path / "nothing"), "--output", str(tmp_path / "out")]) == 2
    assert "demo assets not found" in capsys.readouterr().err


@pytest.mark.skipif(not (ROOT / "assets" / "demo_base" / "config.json").is_file(), reason="demo assets not in this checkout")
def test_preprocess_is_fail_closed_by_default_and_exits_1_when_faces_are_left(tmp_path, capsys):
    """The demo base has forgotten nothing, so its output keeps a large face: by default it is
    blanked (exit 0); with --no-fail-closed it is left, recorded, and the run exits 1."""
    src = tmp_path / "src"
    src.mkdir()
    records = read_manifest(ROOT / "assets" / "demo_data" / "test" / "manifest.jsonl")["forget"]
    face = next(r for r in records if r.boxes and max(b[2] - b[0] for b in r.boxes) >= 40)
    Image.open(face.path).convert("RGB").save(src / "face.png")
    base = str(ROOT / "assets" / "demo_base")
    common = ["--generator", base, "--tile", "128", "--overlap", "32", "--no-progress"]
    assert main(["preprocess", str(src), "--output", str(tmp_path / "closed"), *common]) == 0
    assert "faces blanked in 1, left in 0" in capsys.readouterr().out
    assert main(["preprocess", str(src), "--output", str(tmp_path / "open"), "--no-fail-closed", *common]) == 1
    captured = capsys.readouterr()
    assert "left in 1" in captured.out and "faces were left in 1 file(s)" in captured.err
    [record] = [json.loads(line) for line in (tmp_path / "open" / "audit.jsonl").read_text().splitlines()]
    assert record["action"] == "flagged"
