"""Surveys of a real folder: the astronaut (one face), a faceless photo in a subfolder and a
corrupt JPEG, through find_faces_in_folder and split_survey with the real MTCNN."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_generator
from PIL import Image
from skimage import data

from imgunlearn import unlearn
from imgunlearn.concepts.faces import FaceFinder
from imgunlearn.concepts.survey import _tile_faces, find_faces_in_folder, split_survey
from imgunlearn.data.sources import EmptyImageSetError, read_manifest

ASTRONAUT_FACE = np.array([181.0, 62.0, 268.0, 172.0])  # checked by eye on the 512x512 photo


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def finder() -> FaceFinder:
    return FaceFinder()


@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(data.astronaut()).save(folder / "astronaut.png")
    Image.fromarray(data.coffee()).save(folder / "sub" / "coffee.png")  # 600x400, no face
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    return folder


def snapshot(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_find_faces_in_folder_writes_jsonl(photos, finder, tmp_path):
    before = snapshot(photos)
    output = tmp_path / "report" / "faces.jsonl"
    summary = find_faces_in_folder(photos, output, finder, progress=False)

    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [row["path"] for row in rows] == ["astronaut.png", "broken.jpg", "sub/coffee.png"]
    astronaut, broken, coffee = rows
    assert (astronaut["width"], astronaut["height"]) == (512, 512)
    assert len(astronaut["boxes"]) == 1 and len(astronaut["scores"]) == 1
    np.testing.assert_allclose(astronaut["boxes"][0], ASTRONAUT_FACE, atol=8)
    assert astronaut["scores"][0] >= 0.9
    assert set(broken) == {"path", "error"} and "cannot read image" in broken["error"]
    assert (coffee["width"], coffee["height"], coffee["boxes"], coffee["scores"]) == (600, 400, [], [])

    assert summary["images"] == 2 and summary["faces"] == 1 and summary["images_with_faces"] == 1
    assert [error["path"] for error in summary["errors"]] == ["broken.jpg"]
    assert snapshot(photos) == before
    assert not list(output.parent.glob("*.tmp"))  # the atomic write left no temporary file


def test_split_survey_sorts_tiles_and_writes_a_manifest(photos, finder, tmp_path):
    before = snapshot(photos)
    out = tmp_path / "split"
    summary = split_survey(photos, out, finder, tile=256, progress=False)
    assert snapshot(photos) == before

    # astronaut: 2x2 tiles, the face (centre 224, 117) in the top-left one and its right edge
    # (x 256..268, plus the margin) in the top-right one; coffee 600x400: columns at 0, 256,
    # 344 (the last aligned to the edge), rows at 0, 144
    assert summary["images"] == 2 and summary["faces"] == 1
    assert summary["tiles"] == 4 + 6 and summary["forget_tiles"] == 2 and summary["retain_tiles"] == 8
    assert [error["path"] for error in summary["errors"]] == ["broken.jpg"]

    records = read_manifest(out / "manifest.jsonl")
    assert len(records["forget"]) == 2 and len(records["retain"]) == 8
    face_tile, edge_tile = sorted(records["forget"], key=lambda record: record.path.name)
    assert edge_tile.path.name == "astronaut.png_x256_y0.png"
    edge_box = np.array(edge_tile.boxes[0])
    assert edge_box[0] == 0 and 12 <= edge_box[2] <= 12 + 0.1 * 110 + 8  # the face's last columns
    assert face_tile.path == (out / "forget" / "astronaut.png_x0_y0.png").absolute()
    assert len(face_tile.boxes) == 1
    box = np.array(face_tile.boxes[0])
    margin = 0.1 * (ASTRONAUT_FACE[3] - ASTRONAUT_FACE[1])  # boxes grow by 10% of the longer side
    grown = [ASTRONAUT_FACE[0] - margin, ASTRONAUT_FACE[1] - margin, 256, ASTRONAUT_FACE[3] + margin]
    np.testing.assert_allclose(box, grown, atol=8)
    assert box[2] <= 256  # clipped to the tile
    tile_pixels = np.asarray(Image.open(face_tile.path))
    np.testing.assert_array_equal(tile_pixels, data.astronaut()[:256, :256])

    retain_names = sorted(record.path.relative_to((out / "retain").absolute()).as_posix()
                          for record in records["retain"])
    assert retain_names == sorted(
        ["astronaut.png_x0_y256.png", "astronaut.png_x256_y256.png"]
        + [f"sub/coffee.png_x{x}_y{y}.png" for x in (0, 256, 344) for y in (0, 144)]
    )
    assert all(record.boxes == () for record in records["retain"])
    for record in records["retain"]:
        with Image.open(record.path) as tile:
            assert tile.size == (256, 256)
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert {row["source"] for row in rows} == {"astronaut.png", "sub/coffee.png"}


def test_no_part_of_a_face_reaches_the_retain_set():
    # A 100 px face whose box pokes 16 px (16%) into the right tile and 1.5 px into the one below.
    boxes = np.array([[140.0, 50.0, 272.0, 257.5]], np.float32)
    right = _tile_faces(boxes, 256, 0, 256, 256, face_margin=0.0)
    np.testing.assert_array_equal(right, [[0, 50, 16, 256]])
    below = _tile_faces(boxes, 0, 256, 256, 256, face_margin=0.0)
    np.testing.assert_array_equal(below, [[140, 0, 256, 2]])  # a sliver still masks whole pixels
    assert len(_tile_faces(boxes, 512, 0, 256, 256, face_margin=0.0)) == 0  # not touched at all
    # The margin reaches a tile the tight box misses: 10% of 207.5 px is 20.75 px.
    assert len(_tile_faces(boxes, 0, 272, 256, 256, face_margin=0.0)) == 0
    np.testing.assert_array_equal(_tile_faces(boxes, 0, 272, 256, 256, face_margin=0.1), [[119, 0, 256, 7]])


def test_tiles_holding_part_of_a_real_face_are_forget_tiles(photos, finder, tmp_path):
    # 128 px tiles cut the astronaut's face (about x 181..268, y 62..172) into four parts: the
    # centre tile holds most of it, three others a side, a corner or the chin.
    summary = split_survey(photos, tmp_path / "split", finder, tile=128, progress=False)
    records = read_manifest(tmp_path / "split" / "manifest.jsonl")
    forget = {record.path.name for record in records["forget"]}
    assert {f"astronaut.png_x{x}_y{y}.png" for x in (128, 256) for y in (0, 128)} <= forget
    face = ASTRONAUT_FACE
    for record in records["retain"]:
        left, top = (int(part[1:]) for part in record.path.stem.split("_")[-2:])
        if record.path.name.startswith("astronaut"):
            # no retain tile overlaps the detected face box
            assert not (left < face[2] and face[0] < left + 128 and top < face[3] and face[1] < top + 128)
    assert summary["forget_tiles"] == len(forget)


def test_split_survey_manifest_drives_unlearning(photos, finder, tmp_path):
    out = tmp_path / "split"
    split_survey(photos, out, finder, tile=256, progress=False)
    base = tiny_generator("kl")
    result = unlearn(base, manifest=out / "manifest.jsonl", max_steps=2, batch_size=4, progress=False)
    changed = any(not torch.equal(a, b) for a, b in zip(result.parameters(), base.parameters()))
    assert changed


def test_small_photo_is_one_smaller_tile(tmp_path, finder):
    folder = tmp_path / "small"
    folder.mkdir()
    Image.fromarray(np.full((90, 300, 3), 200, np.uint8)).save(folder / "strip.png")
    split_survey(folder, tmp_path / "out", finder, tile=256, progress=False)
    records = read_manifest(tmp_path / "out" / "manifest.jsonl")
    sizes = sorted(Image.open(record.path).size for record in records["retain"])
    assert sizes == [(256, 90), (256, 90)] and not records["forget"]  # columns at 0 and 44


def test_split_survey_refuses_to_write_into_the_source(photos, finder):
    with pytest.raises(ValueError, match="inside the source"):
        split_survey(photos, photos / "tiles", finder, progress=False)
    with pytest.raises(ValueError, match="inside the source"):
        split_survey(photos, photos, finder, progress=False)


def test_empty_folder_and_bad_arguments(tmp_path, finder):
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmptyImageSetError, match="no images"):
        find_faces_in_folder(tmp_path / "empty", tmp_path / "faces.jsonl", finder, progress=False)
    with pytest.raises(ValueError, match="overlap"):
        split_survey(tmp_path / "empty", tmp_path / "out", finder, tile=64, overlap=64, progress=False)


def tiny_clip_filter(threshold: float):
    import open_clip
    from open_clip.model import CLIP

    from imgunlearn.concepts.clip_filter import ClipFilter

    torch.manual_seed(0)
    model = CLIP(embed_dim=16, vision_cfg={"image_size": 32, "layers": 1, "width": 32, "patch_size": 8,
                                           "head_width": 16},
                 text_cfg={"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1})
    components = (model, open_clip.image_transform(32, is_train=False), open_clip.SimpleTokenizer(context_length=16))
    return ClipFilter("tiny", pretrained=None, threshold=threshold, components=components)


def test_clip_filter_decides_which_faces_count(photos, finder, tmp_path):
    dropped = find_faces_in_folder(photos, tmp_path / "none.jsonl", finder, clip_filter=tiny_clip_filter(1.01),
                                   progress=False)
    kept = find_faces_in_folder(photos, tmp_path / "all.jsonl", finder, clip_filter=tiny_clip_filter(0.0),
                                progress=False)
    assert dropped["faces"] == 0 and kept["faces"] == 1
    summary = split_survey(photos, tmp_path / "split", finder, clip_filter=tiny_clip_filter(1.01), progress=False)
    assert summary["forget_tiles"] == 0 and summary["retain_tiles"] == 10
