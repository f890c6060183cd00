"""``imgunlearn evaluate`` end to end on a tiny model and labelled images on disk."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from imgunlearn.cli import main
from imgunlearn.data import list_image_files, load_image_tensor
from imgunlearn.builders.toy import make_toy_dataset
from imgunlearn.evaluation import GRID_HEADING_PX, label_from_name, markdown_table
from imgunlearn.metrics import save_classifier, train_classifier

from conftest import tiny_generator


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """Round shapes are class 0 (forget), angular shapes class 1 (retain); names carry labels."""
    root = tmp_path_factory.mktemp("labelled")
    source = make_toy_dataset(root / "src", per_concept=12, size=16, seed=3)
    sets = {}
    for label, (concept, folder) in enumerate(source.items()):
        target = root / ("forget" if concept == "round" else "retain")
        target.mkdir()
        for i, path in enumerate(list_image_files(folder)):
            Image.open(path).save(target / f"{i:05d}_c{label}.png")
        sets[target.name] = target
    images = torch.cat([torch.stack([load_image_tensor(p, 16)[0] for p in list_image_files(sets[name])])
                        for name in ("forget", "retain")])
    labels = torch.tensor([0] * 12 + [1] * 12)
    classifier = train_classifier(images, labels, num_classes=2, epochs=2, batch_size=8, in_size=16, width=8,
                                  progress=False)
    sets["classifier"] = save_classifier(classifier, root / "classifier")
    generator = tiny_generator("kl")
    sets["model"] = generator.save_pretrained(root / "model")
    sets["other"] = tiny_generator("kl", seed=1).save_pretrained(root / "other")
    return sets


def test_label_from_name(tmp_path):
    assert label_from_name(tmp_path / "00042_c7.png") == 7
    assert label_from_name(tmp_path / "photo.png") is None


def test_evaluate_cli_writes_report_table_and_grid(labelled, tmp_path, capsys):
    report_path = tmp_path / "report.json"
    assert main(["evaluate", "--generator", str(labelled["other"]), "--reference", str(labelled["model"]),
                 "--forget", str(labelled["forget"]), "--retain", str(labelled["retain"]), "--task", "outpaint",
                 "--classifier", str(labelled["classifier"]), "--output", str(report_path), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "| set | comparison |" in printed and "forget" in printed and "retain" in printed
    report = json.loads(report_path.read_text())
    assert report["task"] == "outpaint" and report["extractors"]["fd"].startswith("classifier:")
    for set_name in ("forget", "retain"):
        entry = report["sets"][set_name]
        assert entry["images"] == 12 and entry["labels"] is True
        truth = entry["generator_vs_ground_truth"]
        assert {"psnr", "ssim", "fd", "accuracy", "is_mean"} <= set(truth)
        assert 0.0 <= truth["accuracy"] <= 1.0
        assert "accuracy" not in entry["generator_vs_reference"]  # labels belong to the ground truth
        assert "reference_vs_ground_truth" in entry
    with Image.open(tmp_path / "report.png") as grid:
        # 3 columns (input, reference, generator) x 8 rows (4 forget + 4 retain) of 16 px tiles,
        # enlarged, under a band of column headings.
        tiles_height = grid.height - GRID_HEADING_PX
        assert abs(grid.width / tiles_height - 3 / 8) < 0.05
        band = np.asarray(grid.convert("L"))[:GRID_HEADING_PX]
        columns = np.array_split(band, 3, axis=1)
        assert all((column < 128).any() for column in columns)  # each column has its heading


def test_identical_models_agree_exactly(labelled, tmp_path):
    from imgunlearn import evaluate

    report = evaluate(labelled["model"], reference=labelled["model"], forget=labelled["forget"],
                      retain=labelled["retain"], task="reconstruct", progress=False)
    for entry in report["sets"].values():
        assert entry["generator_vs_reference"]["psnr"] == 100.0
        assert entry["generator_vs_reference"]["ssim"] == pytest.approx(1.0)
    assert "FD" not in markdown_table(report)  # no extractor given: no Fréchet distance column


def test_evaluate_errors_name_the_folder(labelled, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["evaluate", "--generator", str(labelled["model"]), "--forget", str(tmp_path / "empty"),
                 "--retain", str(labelled["retain"]), "--output", str(tmp_path / "r.json")]) == 2
    assert "empty" in capsys.readouterr().err
