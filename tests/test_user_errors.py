"""Every user-caused failure is one clear line naming the file and the fix: regression tests
for what a hostile or careless user found."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgunlearn.cli import main
from imgunlearn.data import read_manifest
from imgunlearn.data.sources import ManifestError, validate_records
from imgunlearn.generators import load_generator

from conftest import tiny_generator


def write_photo(path: Path, size: tuple[int, int] = (24, 16), seed: int = 0) -> Path:
    pixels = (np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def test_a_box_wholly_outside_its_image_is_an_error(tmp_path):
    write_photo(tmp_path / "a.png", (24, 16))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"path": "a.png", "split": "forget", "boxes": [[100, 100, 120, 130]]}) + "\n")
    records = read_manifest(manifest)["forget"]
    with pytest.raises(ManifestError, match=r"a\.png: box \[100.0, 100.0, 120.0, 130.0\] .* lies wholly outside "
                                            r"the 24x16 image"):
        validate_records(records, name="forget")
    # Partly outside is fine: the box is clipped to the image.
    manifest.write_text(json.dumps({"path": "a.png", "split": "forget", "boxes": [[20, 10, 40, 30]]}) + "\n")
    good, _ = validate_records(read_manifest(manifest)["forget"], name="forget")
    assert len(good) == 1


def test_repeated_rows_and_files_in_both_splits_are_warned_with_counts(tmp_path, caplog):
    for name in ("a.png", "b.png"):
        write_photo(tmp_path / name)
    rows = [{"path": "a.png", "split": "forget"}, {"path": "a.png", "split": "forget"},
            {"path": "a.png", "split": "forget"}, {"path": "b.png", "split": "retain"},
            {"path": "a.png", "split": "retain"}]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with caplog.at_level(logging.WARNING, logger="imgunlearn"):
        result = read_manifest(manifest)
    assert len(result["forget"]) == 1 and len(result["retain"]) == 2
    text = caplog.text
    assert "2 repeated row(s) dropped" in text and "1 file(s) are in both the forget and the retain split" in text


@pytest.mark.parametrize("damage, message", [
    ("list", "config.json holds a JSON list"),
    ("garbage", "config.json: not a readable generator config"),
    ("other-class", "the weights do not load into the VQModel its config.json names (size mismatch"),
    ("truncated", "the weights do not load into the AutoencoderKL"),
])
def test_a_damaged_generator_folder_is_one_clear_error(damage, message, tmp_path, capsys):
    folder = tmp_path / "model"
    tiny_generator("kl").save_pretrained(folder)
    config = folder / "config.json"
    if damage == "list":
        config.write_text("[1, 2]")
    elif damage == "garbage":
        config.write_text("{not json")
    elif damage == "other-class":
        config.write_text(json.dumps({**json.loads(config.read_text()), "_class_name": "VQModel"}))
    else:
        weights = next(folder.glob("*.safetensors"))
        weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError) as error:
        load_generator(folder)
    assert message in str(error.value) and str(folder) in str(error.value)
    src = tmp_path / "src"
    src.mkdir()
    write_photo(src / "a.png")
    assert main(["generate", "--generator", str(folder), "--input", str(src), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


def test_generate_skip_bad_skips_a_dangling_link(tmp_path, capsys, caplog):
    model = tmp_path / "model"
    tiny_generator("kl").save_pretrained(model)
    src = tmp_path / "src"
    src.mkdir()
    write_photo(src / "a.png")
    (src / "gone.png").symlink_to(tmp_path / "deleted.png")
    out = tmp_path / "out"
    assert main(["generate", "--generator", str(model), "--input", str(src), "--output", str(out), "--skip-bad",
                 "--no-progress"]) == 0
    assert (out / "a.png").is_file() and not (out / "gone.png").exists()
    assert "skipping" in caplog.text and "gone.png: no such file" in caplog.text
    assert main(["generate", "--generator", str(model), "--input", str(src), "--output", str(tmp_path / "o2"),
                 "--no-progress"]) == 2
    assert "gone.png: no such file" in capsys.readouterr().err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without a GPU")
@pytest.mark.parametrize("flags", [["--device", "cuda"], ["--trainer.accelerator", "gpu"]])
def test_a_gpu_asked_for_on_a_machine_without_one_is_one_line(flags, tmp_path, capsys):
    """Lightning's MisconfigurationException used to come out as a raw traceback."""
    tiny_generator("kl").save_pretrained(tmp_path / "base")
    for split in ("forget", "retain"):
        (tmp_path / split).mkdir()
        write_photo(tmp_path / split / "a.png", (16, 16))
    code = main(["unlearn", "--generator", str(tmp_path / "base"), "--forget", str(tmp_path / "forget"),
                 "--retain", str(tmp_path / "retain"), "--output", str(tmp_path / "out"), "--max-steps", "1",
                 "--no-progress", *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "gpu" in err[0] and "Traceback" not in err[0]


def test_device_means_the_same_for_train_and_unlearn_as_for_the_other_commands():
    from imgunlearn.cli import CLIError, _device_options, build_parser

    args = build_parser().parse_args(["unlearn", "--generator", "g", "--output", "o", "--device", "cuda:1"])
    assert _device_options(args, {}) == {"accelerator": "gpu", "devices": [1]}
    args = build_parser().parse_args(["train", "--data", "d", "--output", "o", "--device", "cpu"])
    assert _device_options(args, {}) == {"accelerator": "cpu", "devices": 1}
    with pytest.raises(CLIError, match="not both"):
        _device_options(args, {"accelerator": "gpu"})
    args = build_parser().parse_args(["train", "--data", "d", "--output", "o", "--device", "tpu"])
    with pytest.raises(CLIError, match="--device tpu: expected cpu, cuda, cuda:N or mps"):
        _device_options(args, {})
