"""preprocess_folder on a real survey tree: metadata kept, SRC untouched, audit and resume."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from imgunlearn.pipelines import Sanitizer, preprocess_folder

from conftest import tiny_generator

GPS = {1: "N", 2: (52.0, 31.0, 12.5), 3: "E", 4: (13.0, 24.0, 1.0)}


# Built once: the profile carries its creation time, so each build differs.
ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def icc_bytes() -> bytes:
    return ICC


def photo(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8))


@pytest.fixture
def survey(tmp_path) -> Path:
    src = tmp_path / "src"
    (src / "flight1" / "deep").mkdir(parents=True)
    (src / "flight2").mkdir()
    exif = Image.Exif()
    exif[0x010F] = "DJI"
    exif[0x8825] = GPS
    photo(40, 30, 0).save(src / "flight1" / "a.JPG", exif=exif.tobytes(), icc_profile=icc_bytes(),
                          quality=90)
    photo(36, 28, 1).save(src / "flight1" / "deep" / "b.png", icc_profile=icc_bytes())
    photo(30, 22, 2).save(src / "flight2" / "c.tif", exif=exif.tobytes())
    (src / "flight2" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (src / "notes.txt").write_text("not an image")
    return src


def tree_hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def audit(dst: Path, ignored: bool = False) -> list[dict]:
    """The audit records of the files processed (``ignored``: of the entries left out)."""
    records = [json.loads(line) for line in (dst / "audit.jsonl").read_text().splitlines()]
    return [r for r in records if (r["action"] == "ignored") == ignored]


def sanitizer() -> Sanitizer:
    return Sanitizer(tiny_generator("kl"), tile=16, overlap=4)


def test_survey_mirrors_tree_keeps_metadata_and_logs_failures(survey, tmp_path):
    before = tree_hashes(survey)
    dst = tmp_path / "out"
    summary = preprocess_folder(survey, dst, sanitizer(), progress=False)
    assert tree_hashes(survey) == before  # SRC byte-identical

    assert (summary.processed, summary.skipped, summary.failed) == (3, 0, 1)
    assert not summary.ok and summary.megapixels > 0
    for rel in ("flight1/a.JPG", "flight1/deep/b.png", "flight2/c.tif"):
        assert (dst / rel).is_file()
    assert not (dst / "flight2" / "broken.jpg").exists()
    assert not list(dst.rglob("*.imgunlearn-tmp"))

    with Image.open(dst / "flight1" / "a.JPG") as jpeg:
        assert jpeg.format == "JPEG" and jpeg.size == (40, 30)
        assert jpeg.getexif().get_ifd(0x8825) == GPS
        assert jpeg.getexif()[0x010F] == "DJI"
        assert jpeg.info["icc_profile"] == icc_bytes()
        changed = np.asarray(jpeg).astype(int)
    assert np.abs(changed - np.asarray(photo(40, 30, 0)).astype(int)).mean() > 10  # sanitized
    with Image.open(dst / "flight1" / "deep" / "b.png") as png:
        assert png.format == "PNG" and png.info["icc_profile"] == icc_bytes()
    with Image.open(dst / "flight2" / "c.tif") as tiff:
        assert tiff.format == "TIFF" and tiff.size == (30, 22)
        assert tiff.getexif().get_ifd(0x8825) == GPS

    records = {Path(r["input"]).name: r for r in audit(dst)}
    assert set(records) == {"a.JPG", "b.png", "c.tif", "broken.jpg"}
    assert set(records["a.JPG"]) >= {"input", "output", "faces_before", "faces_after", "action",
                                     "error", "seconds"}
    assert records["a.JPG"]["error"] is None and records["a.JPG"]["action"] == "no-check"
    broken = records["broken.jpg"]
    assert broken["action"] == "failed" and "broken.jpg" in broken["error"]
    assert summary.failures[0][0].name == "broken.jpg"


def test_face_counts_reach_the_audit(survey, tmp_path):
    from imgunlearn.concepts.faces import FaceFinder

    closed = Sanitizer(tiny_generator("kl"), face_finder=FaceFinder(), tile=16, overlap=4,
                       fail_closed=True)
    summary = preprocess_folder(survey, tmp_path / "out", closed, progress=False, count_input_faces=True)
    assert summary.processed == 3
    done = [r for r in audit(tmp_path / "out") if r["error"] is None]
    assert all(r["faces_before"] == 0 and r["faces_after"] == 0 and r["action"] == "passed"
               for r in done)


class InterruptedSanitizer(Sanitizer):
    """A real Sanitizer whose run is killed (Ctrl-C) while it works on its second image."""

    calls = 0

    def generate_with_map(self, image, **kwargs):
        type(self).calls += 1
        if type(self).calls == 2:
            raise KeyboardInterrupt
        return super().generate_with_map(image, **kwargs)


def test_resume_after_an_interrupted_run(survey, tmp_path):
    dst = tmp_path / "out"
    interrupted = InterruptedSanitizer(tiny_generator("kl"), tile=16, overlap=4)
    with pytest.raises(KeyboardInterrupt):
        preprocess_folder(survey, dst, interrupted, progress=False)
    first = audit(dst)
    assert [Path(r["input"]).name for r in first] == ["a.JPG"]  # sorted order: flight1/a first
    assert not (dst / "flight1" / "deep" / "b.png").exists()  # the killed file is absent
    finished = dst / "flight1" / "a.JPG"
    stamp = finished.stat().st_mtime_ns

    summary = preprocess_folder(survey, dst, sanitizer(), resume=True, progress=False)
    assert (summary.processed, summary.skipped, summary.failed) == (2, 1, 1)
    assert finished.stat().st_mtime_ns == stamp  # not redone
    records = audit(dst)
    assert records[0] == first[0]  # earlier lines kept
    assert sorted(Path(r["input"]).name for r in records[1:]) == ["b.png", "broken.jpg", "c.tif"]

    # An output that exists without a "done" record is not trusted; a failed file is retried.
    lines = (dst / "audit.jsonl").read_text().splitlines()
    kept = [line for line in lines if "c.tif" not in line]
    (dst / "audit.jsonl").write_text("\n".join(kept) + "\n")
    again = preprocess_folder(survey, dst, sanitizer(), resume=True, progress=False)
    assert (again.processed, again.skipped, again.failed) == (1, 2, 1)


def test_output_inside_source_is_refused(survey, tmp_path):
    before = tree_hashes(survey)
    for bad in (survey, survey / "flight1" / "out"):
        with pytest.raises(ValueError, match="inside"):
            preprocess_folder(survey, bad, sanitizer(), progress=False)
    with pytest.raises(ValueError, match="inside the output"):
        preprocess_folder(survey, survey.parent, sanitizer(), progress=False)
    assert tree_hashes(survey) == before
    with pytest.raises(NotADirectoryError, match="missing"):
        preprocess_folder(tmp_path / "missing", tmp_path / "out", sanitizer(), progress=False)


def test_geotiff_keeps_its_georeferencing(tmp_path):
    rasterio = pytest.importorskip("rasterio")
    src = tmp_path / "src"
    src.mkdir()
    profile = {"driver": "GTiff", "width": 34, "height": 26, "count": 3, "dtype": "uint8",
               "crs": "EPSG:32633", "transform": rasterio.Affine(0.05, 0, 500000.0, 0, -0.05, 5800000.0),
               "compress": "deflate"}
    pixels = (np.random.default_rng(3).random((3, 26, 34)) * 255).astype(np.uint8)
    with rasterio.open(src / "ortho.TIF", "w", **profile) as target:
        target.write(pixels)
        target.update_tags(FLIGHT="7")
    summary = preprocess_folder(src, tmp_path / "out", sanitizer(), progress=False)
    assert summary.processed == 1 and summary.failed == 0
    with rasterio.open(tmp_path / "out" / "ortho.TIF") as result:
        assert result.crs.to_epsg() == 32633
        assert result.transform == profile["transform"]
        assert (result.width, result.height, result.count) == (34, 26, 3)
        assert result.compression.value.lower() == "deflate"
        assert "FLIGHT" not in result.tags()  # free text: dropped by the default (survey) policy
        assert not np.array_equal(result.read(), pixels)
    preprocess_folder(src, tmp_path / "all", sanitizer(), progress=False, keep_metadata="all")
    with rasterio.open(tmp_path / "all" / "ortho.TIF") as result:
        assert result.tags()["FLIGHT"] == "7"


def test_exif_orientation_is_applied_and_reset(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    exif[0x8825] = GPS
    photo(40, 24, 4).save(src / "turned.jpg", exif=exif.tobytes())
    preprocess_folder(src, tmp_path / "out", sanitizer(), progress=False)
    with Image.open(tmp_path / "out" / "turned.jpg") as result:
        assert result.size == (24, 40)  # upright pixels
        assert result.getexif()[0x0112] == 1  # so viewers must not turn it again
        assert result.getexif().get_ifd(0x8825) == GPS


def test_a_failed_write_is_recorded_and_the_run_goes_on(survey, tmp_path):
    """Outputs are written on a background thread; a write that fails still makes its file a
    failure in the audit (never a success without an output), and the others are written."""
    dst = tmp_path / "out"
    (dst / "flight1" / "deep" / "b.png").mkdir(parents=True)  # a folder where b.png's output goes
    summary = preprocess_folder(survey, dst, sanitizer(), progress=False)
    records = {Path(r["input"]).name: r for r in audit(dst)}
    assert records["b.png"]["error"] and "b.png" in records["b.png"]["error"]
    assert records["a.JPG"]["error"] is None and (dst / "flight1" / "a.JPG").is_file()
    assert records["c.tif"]["error"] is None and (dst / "flight2" / "c.tif").is_file()
    assert summary.failed == 2 and summary.processed == 2  # b.png and the broken JPEG
    assert [Path(r["input"]).name for r in audit(dst)] == ["a.JPG", "b.png", "broken.jpg", "c.tif"]


def test_resume_with_another_generator_or_settings_is_refused(survey, tmp_path):
    dst = tmp_path / "out"
    preprocess_folder(survey, dst, sanitizer(), progress=False)
    run = json.loads((dst / "run.json").read_text())
    assert run["settings"]["generator_sha256"] and run["settings"]["keep_metadata"] == "survey"
    assert {r["run"] for r in audit(dst)} == {run["run"]}
    other_tile = Sanitizer(tiny_generator("kl"), tile=32, overlap=4)
    with pytest.raises(ValueError, match="cannot resume with another generator or other settings.*tile was 16, now 32"):
        preprocess_folder(survey, dst, other_tile, resume=True, progress=False)
    other_weights = Sanitizer(tiny_generator("kl", seed=1), tile=16, overlap=4)
    with pytest.raises(ValueError, match="generator_sha256 was"):
        preprocess_folder(survey, dst, other_weights, resume=True, progress=False)
    with pytest.raises(ValueError, match="keep_metadata was 'survey', now 'none'"):
        preprocess_folder(survey, dst, sanitizer(), resume=True, progress=False, keep_metadata="none")
    # Garbage or a missing run record: refused with the file named, never a traceback.
    (dst / "run.json").write_text("[1, 2")
    with pytest.raises(ValueError, match="run.json: cannot resume: not a run record"):
        preprocess_folder(survey, dst, sanitizer(), resume=True, progress=False)
    (dst / "run.json").unlink()
    with pytest.raises(ValueError, match="no run.json"):
        preprocess_folder(survey, dst, sanitizer(), resume=True, progress=False)
    # Without --resume a fresh run replaces it all.
    assert preprocess_folder(survey, dst, other_tile, progress=False).processed == 3


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` (a decompression bomb's calling card)."""
    import io
    import struct
    import zlib

    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    start = data.index(b"IHDR")
    struct.pack_into(">II", data, start + 4, width, height)
    struct.pack_into(">I", data, start + 17, zlib.crc32(bytes(data[start:start + 17])))
    return bytes(data)


def test_huge_photos_are_refused_before_decoding(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "bomb.png").write_bytes(png_claiming(13000, 13000))  # 169 MP from a few bytes
    photo(40, 30, 0).save(src / "small.jpg")
    summary = preprocess_folder(src, tmp_path / "out", sanitizer(), progress=False)
    assert (summary.processed, summary.failed) == (1, 1)
    records = {r["relpath"]: r for r in audit(tmp_path / "out")}
    assert "13000x13000 pixels (169 MP) is above the limit of 150 MP" in records["bomb.png"]["error"]
    assert "bomb.png" in records["bomb.png"]["error"]
    strict = preprocess_folder(src, tmp_path / "strict", sanitizer(), progress=False, max_megapixels=0.001)
    assert strict.failed == 2


def test_everything_not_processed_is_in_the_audit_and_the_summary(survey, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    photo(20, 20, 7).save(elsewhere / "outside.jpg")
    (survey / "flight1" / "linked").symlink_to(elsewhere, target_is_directory=True)
    (survey / ".thumbs").mkdir()
    photo(20, 20, 8).save(survey / ".thumbs" / "a.jpg")
    photo(20, 20, 9).save(survey / "flight2" / ".hidden.jpg")
    photo(20, 20, 9).save(survey / "flight2" / "scan.bmp")
    summary = preprocess_folder(survey, tmp_path / "out", sanitizer(), progress=False)
    reasons = {r["relpath"]: r["reason"] for r in audit(tmp_path / "out", ignored=True)}
    assert reasons == {".thumbs": "hidden folder (not searched)", "flight1/linked": "folder link (not followed)",
                       "flight2/.hidden.jpg": "hidden file", "flight2/scan.bmp": "not a JPEG, PNG or TIFF",
                       "notes.txt": "not a JPEG, PNG or TIFF"}
    assert sorted(p.relative_to(survey).as_posix() for p, _ in summary.ignored) == sorted(reasons)
    assert not (tmp_path / "out" / "flight1" / "linked").exists()


def test_preprocess_never_imports_lightning(tmp_path):
    """Lightning (with matplotlib and scipy's extras) is about 70 MB of the 108 MP photo's peak
    memory and preprocess uses none of it unless --trainer.* asks for Fabric."""
    import subprocess
    import sys

    src = tmp_path / "src"
    src.mkdir()
    photo(40, 30, 0).save(src / "a.jpg")
    tiny_generator("kl").save_pretrained(tmp_path / "gen")
    code = ("import sys; from imgunlearn.cli import main; "
            f"code = main(['preprocess', {str(src)!r}, '--generator', {str(tmp_path / 'gen')!r}, "
            f"'--output', {str(tmp_path / 'dst')!r}, '--tile', '16', '--overlap', '4', '--no-progress']); "
            "print(code, sorted(m for m in ('lightning', 'torchmetrics', 'matplotlib') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "0 []"
    assert (tmp_path / "dst" / "a.jpg").is_file()


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads resident memory from /proc")
def test_tune_allocator_hands_freed_heap_holes_back_to_the_system():
    """Freed blocks in the middle of the heap (what MTCNN's tensors leave behind) go back to
    the system within a few trim periods; the trimming thread is started once."""
    import subprocess
    import sys

    code = """
import threading, time
import numpy as np
from imgunlearn.pipelines.survey import tune_allocator

def resident_mb():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS'):
            return int(line.split()[1]) / 1024

tune_allocator(trim_every=0.05)
tune_allocator(trim_every=0.05)
threads = sum(t.name == 'imgunlearn-heap-trim' for t in threading.enumerate())
blocks = [np.ones(64 * 1024, np.uint8) for _ in range(4000)]  # 256 MB of heap blocks under 4 MB
kept = blocks[15::16]  # one in 16 kept: the heap cannot shrink from the top
before = resident_mb()  # read while the blocks live, so no trim can come first
del blocks
time.sleep(0.5)
print(threads, round(before - resident_mb()))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    threads, released_mb = map(int, done.stdout.split())
    assert threads == 1
    assert released_mb > 150  # of the 240 MB freed


def test_tune_allocator_refuses_a_period_that_is_not_positive():
    from imgunlearn.errors import InvalidSettingError
    from imgunlearn.pipelines.survey import tune_allocator

    with pytest.raises(InvalidSettingError, match="trim_every"):
        tune_allocator(trim_every=0)
