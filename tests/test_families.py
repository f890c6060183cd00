"""Every shipped family through the whole product with the commands the README gives: its tiny
config trains, unlearns a task, generates, evaluates and sanitizes a folder through the forget
map. A new family passes this file by adding its `configs/generators/tiny-FAMILY.yaml`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from skimage import data as skimage_data

from imgunlearn.cli import main
from imgunlearn.generators import FAMILIES, load_generator

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "generators"
TINY = sorted(CONFIGS.glob("tiny-*.yaml"))


def test_every_family_ships_a_tiny_config():
    assert sorted(yaml.safe_load(p.read_text())["generator"]["family"] for p in TINY) == sorted(FAMILIES)


@pytest.fixture(scope="module", params=[p.stem.removeprefix("tiny-") for p in TINY])
def family_run(request, toy_data, tmp_path_factory) -> dict:
    """The README's commands for one family: train the tiny config briefly, then unlearn."""
    family, root = request.param, tmp_path_factory.mktemp(f"family-{request.param}")
    data = toy_data["round"].parent
    assert main(["train", "--config", str(CONFIGS / f"tiny-{family}.yaml"), "--data", str(data),
                 "--output", str(root / "base"), "--max-steps", "4", "--batch-size", "8", "--no-progress"]) == 0
    assert main(["unlearn", "--generator", str(root / "base"), "--forget", str(toy_data["round"]),
                 "--retain", str(toy_data["angular"]), "--output", str(root / "unlearned"),
                 "--task", "center_inpaint", "--max-steps", "3", "--batch-size", "4", "--no-progress"]) == 0
    return {"family": family, "root": root, "base": root / "base", "unlearned": root / "unlearned"}


def test_train_and_unlearn_save_the_family(family_run):
    base, unlearned = load_generator(family_run["base"]), load_generator(family_run["unlearned"])
    assert base.family == unlearned.family == family_run["family"]
    assert [stage["stage"] for stage in unlearned.card["history"]] == ["train", "unlearn"]
    assert unlearned.card["history"][-1]["task"] == "center_inpaint"
    assert unlearned.card["forget_map"]["threshold"] > 0
    # The decoder is the base's, bit for bit; the encoder moved.
    assert all(np.array_equal(a.detach().numpy(), b.detach().numpy())
               for a, b in zip(base.decoder_parameters(), unlearned.decoder_parameters()))
    assert any(not np.array_equal(a.detach().numpy(), b.detach().numpy())
               for a, b in zip(base.encoder_parameters(), unlearned.encoder_parameters()))


def test_generate_and_evaluate(family_run, toy_data, tmp_path):
    generated = tmp_path / "generated"
    assert main(["generate", "--generator", str(family_run["unlearned"]), "--input", str(toy_data["round"]),
                 "--output", str(generated), "--task", "center_inpaint", "--no-progress"]) == 0
    outputs = sorted(generated.iterdir())
    assert len(outputs) == len(list(toy_data["round"].iterdir()))
    with Image.open(outputs[0]) as image:
        size = load_generator(family_run["unlearned"]).sample_size  # generate works at the model's size
        assert image.mode == "RGB" and image.size == (size, size)
    report = tmp_path / "report.json"
    assert main(["evaluate", "--generator", str(family_run["unlearned"]), "--reference", str(family_run["base"]),
                 "--forget", str(toy_data["round"]), "--retain", str(toy_data["angular"]),
                 "--task", "center_inpaint", "--output", str(report), "--max-images", "6", "--no-progress"]) == 0
    sets = json.loads(report.read_text())["sets"]
    assert sets["forget"]["images"] == sets["retain"]["images"] == 6
    assert np.isfinite(sets["retain"]["generator_vs_reference"]["psnr"])


def test_preprocess_through_the_forget_map(family_run, tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    photo = Image.fromarray(skimage_data.coffee()).resize((120, 90))
    photo.save(src / "coffee.png")
    assert main(["preprocess", str(src), "--generator", str(family_run["unlearned"]),
                 "--reference", str(family_run["base"]), "--output", str(dst), "--tile", "64", "--overlap", "16",
                 "--no-face-check", "--save-masks", "--no-progress"]) == 0
    record = json.loads((dst / "audit.jsonl").read_text().splitlines()[0])
    assert record["error"] is None and record["mode"] == "forget-map"
    mask = np.asarray(Image.open(record["mask"]))
    inp, out = np.asarray(photo), np.asarray(Image.open(dst / "coffee.png"))
    assert out.shape == inp.shape and np.array_equal(inp[mask == 0], out[mask == 0])
