"""A folder of mixed hostile and tricky files through `imgunlearn preprocess`: the source is
never changed, every entry gets exactly one audit record, failures exit 1, no traceback."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image

from imgunlearn.cli import main

from conftest import tiny_generator
from test_metadata import camera_exif, thumbnail_jpeg, with_thumbnail
from test_survey import png_claiming


def pixels(width: int, height: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8)


def hostile_folder(root: Path, outside: Path) -> Path:
    src = root / "src"
    (src / "deep" / "er").mkdir(parents=True)
    good = Image.fromarray(pixels(48, 32, 0))
    good.save(src / "plain.jpg", quality=90)
    jpeg = io.BytesIO()
    good.save(jpeg, format="JPEG")
    (src / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (src / "empty.png").write_bytes(b"")
    (src / "text.jpg").write_text("this is not a photo")
    (src / "bomb.png").write_bytes(png_claiming(20000, 20000))
    (src / "garbage.tif").write_bytes(b"II*\x00" + os.urandom(200))
    (src / "dangling.jpg").symlink_to(root / "nowhere.jpg")
    Image.fromarray(pixels(40, 40, 1)).save(outside / "target.png")
    (src / "link-to-outside.png").symlink_to(outside / "target.png")
    (src / "folder.jpg").mkdir()  # a folder with a photo's name
    Image.fromarray(pixels(1, 3000, 2)).save(src / "thin.png")  # 1 px wide
    Image.fromarray((np.random.default_rng(3).random((20, 30)) * 65535).astype(np.uint16)).save(src / "sixteen.png")
    palette = Image.fromarray(pixels(30, 20, 4)).convert("P")
    palette.info["transparency"] = 0
    palette.save(src / "palette.png", transparency=0)
    Image.fromarray(pixels(30, 20, 5)).convert("CMYK").save(src / "cmyk.jpg")
    Image.fromarray(pixels(30, 20, 6)).convert("L").save(src / "deep" / "grey.JPEG")
    turned = Image.Exif()
    turned[0x0112] = 8
    Image.fromarray(pixels(30, 20, 7)).save(src / "deep" / "turned.jpg", exif=turned.tobytes())
    Image.fromarray(pixels(30, 20, 8)).save(src / "deep" / "er" / "thumb.jpg",
                                           exif=with_thumbnail(camera_exif().tobytes(), thumbnail_jpeg()))
    Image.fromarray(pixels(30, 20, 9)).save(src / "deep" / "two-frames.mpo", format="MPO", save_all=True,
                                           append_images=[Image.fromarray(pixels(30, 20, 10))])
    os.replace(src / "deep" / "two-frames.mpo", src / "deep" / "two-frames.jpg")
    Image.fromarray(pixels(30, 20, 11)).save(src / "ünïcode name.png")
    Image.fromarray(pixels(30, 20, 12)).save(src / "new\nline.png")
    (src / ".hidden.jpg").write_bytes(jpeg.getvalue())
    (src / "readme.txt").write_text("flight notes")
    (src / "loop").symlink_to(src, target_is_directory=True)
    return src


def digests(root: Path) -> dict[str, str]:
    found = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            found[rel] = "link:" + os.readlink(path)
        elif path.is_file():
            found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def test_hostile_folder_through_preprocess(tmp_path, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    src = hostile_folder(tmp_path, outside)
    before, outside_before = digests(src), digests(outside)
    model = tmp_path / "model"
    tiny_generator("kl").save_pretrained(model)
    dst = tmp_path / "dst"
    code = main(["preprocess", str(src), "--generator", str(model), "--output", str(dst), "--tile", "16",
                 "--overlap", "4", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 1
    assert "Traceback" not in captured.err + captured.out
    assert digests(src) == before and digests(outside) == outside_before

    records = [json.loads(line) for line in (dst / "audit.jsonl").read_text().splitlines()]
    by_path = {}
    for record in records:
        assert record["relpath"] not in by_path, f"two records for {record['relpath']}"
        by_path[record["relpath"]] = record
    entries = {p.relative_to(src).as_posix() for p in src.iterdir()} | {
        p.relative_to(src).as_posix() for p in (src / "deep").rglob("*") if p.is_file()}
    entries -= {"deep", "folder.jpg"}  # folders are walked, not recorded
    assert set(by_path) == entries

    failed = {rel for rel, r in by_path.items() if r["error"]}
    assert failed == {"truncated.jpg", "empty.png", "text.jpg", "bomb.png", "garbage.tif", "dangling.jpg"}
    for rel in failed:
        assert by_path[rel]["error"].startswith(str(src / rel)), by_path[rel]["error"]
    assert {rel for rel, r in by_path.items() if r["action"] == "ignored"} == {".hidden.jpg", "readme.txt", "loop"}
    written = {rel for rel, r in by_path.items() if not r["error"] and r["action"] != "ignored"}
    for rel in written:
        assert (dst / rel).is_file() and not (dst / rel).is_symlink(), rel
        with Image.open(dst / rel) as out:
            assert out.mode == "RGB"
            assert not out.getexif().get_ifd(ExifTags.IFD.IFD1)  # no thumbnail
    assert by_path["deep/two-frames.jpg"]["metadata_dropped"] == ["1 extra frame(s)"]
    assert "EXIF thumbnail" in by_path["deep/er/thumb.jpg"]["metadata_dropped"]
    with Image.open(dst / "deep" / "turned.jpg") as out:
        assert out.size == (20, 30)  # turned upright, orientation reset
    assert f"failed {len(failed)}" in captured.out
