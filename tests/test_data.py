"""Tests for imgunlearn.data; every image is a real file written into tmp_path."""

from __future__ import annotations

import hashlib
import json
import mmap
from pathlib import Path

import lightning
import numpy as np
import pytest
import torch
from lightning.pytorch.utilities import CombinedLoader
from PIL import Image, ImageOps, features

from imgunlearn.data import (
    IMAGE_EXTENSIONS,
    EmptyImageSetError,
    ImageFolderDataModule,
    ImageLoadError,
    ImageRecord,
    ImageRecordDataset,
    ManifestError,
    UnlearningDataModule,
    fit_to_square,
    image_to_tensor,
    list_image_files,
    load_image_tensor,
    open_rgb,
    image_from_array,
    open_rgb_array,
    read_manifest,
    resolve_records,
    save_png_atomic,
    tensor_to_image,
    validate_records,
)
from imgunlearn.data import images
from imgunlearn.errors import InvalidSettingError

RED = (255, 0, 0)
WHITE = (255, 255, 255)


# ----------------------------------------------------------------- helpers


def write_image(path: Path, mode: str = "RGB", color=RED, size=(8, 8), **save_kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, **save_kwargs)
    return path


def write_colour_set(folder: Path, count: int, size=(12, 10)) -> list[Path]:
    """Images with distinct grey levels so loaded samples can be told apart."""
    return [
        write_image(folder / f"img_{i:03d}.png", color=(i * 20, i * 20, i * 20), size=size)
        for i in range(count)
    ]


def file_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def assert_pixel(image: Image.Image, expected, tol: int = 0, xy=(0, 0)) -> None:
    assert image.mode == "RGB"
    actual = image.getpixel(xy)
    assert all(abs(a - e) <= tol for a, e in zip(actual, expected)), (actual, expected)


# ------------------------------------------------------------ open_rgb modes


def _palette_image() -> Image.Image:
    image = Image.new("P", (6, 6), 1)
    image.putpalette([0, 0, 0, 10, 200, 30, 0, 0, 255])
    return image


@pytest.mark.parametrize(
    "name, make, expected, tol",
    [
        ("rgb.png", lambda p: write_image(p, "RGB", (10, 20, 30)), (10, 20, 30), 0),
        ("grey.png", lambda p: write_image(p, "L", 128), (128, 128, 128), 0),
        ("grey_alpha_clear.png", lambda p: write_image(p, "LA", (50, 0)), WHITE, 0),
        ("grey_alpha_opaque.png", lambda p: write_image(p, "LA", (50, 255)), (50, 50, 50), 0),
        ("rgba_clear.png", lambda p: write_image(p, "RGBA", (0, 0, 0, 0)), WHITE, 0),
        ("rgba_opaque.png", lambda p: write_image(p, "RGBA", (0, 0, 255, 255)), (0, 0, 255), 0),
        ("rgba_half.png", lambda p: write_image(p, "RGBA", (0, 0, 0, 128)), (127, 127, 127), 1),
        ("palette.png", lambda p: _palette_image().save(p), (10, 200, 30), 0),
        ("palette_clear.png", lambda p: _palette_image().save(p, transparency=1), WHITE, 0),
        ("palette_other_clear.png", lambda p: _palette_image().save(p, transparency=2), (10, 200, 30), 0),
        ("palette.gif", lambda p: _palette_image().save(p), (10, 200, 30), 0),
        ("i16_max.png", lambda p: write_image(p, "I;16", 65535), WHITE, 0),
        ("i16_mid.png", lambda p: write_image(p, "I;16", 100 * 257), (100, 100, 100), 0),
        ("i16b.tiff", lambda p: write_image(p, "I;16B", 65535), WHITE, 0),
        ("i32_16bit_range.tif", lambda p: write_image(p, "I", 65535), WHITE, 0),
        ("i32_full_range.tif", lambda p: write_image(p, "I", 2**31 - 1), WHITE, 0),
        ("float_unit.tif", lambda p: write_image(p, "F", 0.5), (128, 128, 128), 0),
        ("float_one.tif", lambda p: write_image(p, "F", 1.0), WHITE, 0),
        ("float_bytes.tif", lambda p: write_image(p, "F", 200.0), (200, 200, 200), 0),
        ("float_over.tif", lambda p: write_image(p, "F", 900.0), WHITE, 0),
        ("cmyk.tif", lambda p: write_image(p, "CMYK", (0, 255, 255, 0)), RED, 0),
        ("cmyk.jpg", lambda p: write_image(p, "CMYK", (0, 255, 255, 0)), RED, 3),
        ("ycbcr.tif", lambda p: write_image(p, "YCbCr", (76, 85, 255)), RED, 3),
        ("bilevel_on.png", lambda p: write_image(p, "1", 1), WHITE, 0),
        ("bilevel_off.bmp", lambda p: write_image(p, "1", 0), (0, 0, 0), 0),
        ("red.jpg", lambda p: write_image(p, "RGB", RED), RED, 3),
        ("red.bmp", lambda p: write_image(p, "RGB", RED), RED, 0),
    ],
)
def test_open_rgb_converts_modes(tmp_path: Path, name, make, expected, tol) -> None:
    path = tmp_path / name
    make(path)
    image = open_rgb(path)
    assert image.mode == "RGB"
    assert image.size == (8, 8) or image.size == (6, 6)
    assert_pixel(image, expected, tol)
    array = open_rgb_array(path)  # what preprocess decodes: the same pixels
    assert array.dtype == np.uint8 and array.flags.writeable and np.array_equal(array, np.asarray(image))


def test_open_rgb_source_modes_are_what_we_think(tmp_path: Path) -> None:
    # Guards the parametrised test: the files really are stored in these modes.
    cases = {
        "a.png": ("I;16", 65535),
        "b.tiff": ("I;16B", 65535),
        "c.tif": ("I", 65535),
        "d.tif": ("F", 0.5),
        "e.tif": ("YCbCr", (76, 85, 255)),
        "f.jpg": ("CMYK", (0, 255, 255, 0)),
        "g.png": ("LA", (1, 2)),
    }
    for name, (mode, colour) in cases.items():
        write_image(tmp_path / name, mode, colour)
        with Image.open(tmp_path / name) as opened:
            assert opened.mode == mode, name


@pytest.mark.skipif(not features.check("webp"), reason="Pillow built without WebP")
def test_open_rgb_webp(tmp_path: Path) -> None:
    path = write_image(tmp_path / "red.webp", "RGB", RED, lossless=True)
    assert_pixel(open_rgb(path), RED)


def test_open_rgb_applies_exif_orientation(tmp_path: Path) -> None:
    image = Image.new("RGB", (40, 20), RED)
    image.paste((0, 0, 255), (20, 0, 40, 20))  # left half red, right half blue
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif, quality=95)

    loaded = open_rgb(path)
    assert loaded.size == (20, 40)
    # Rotating clockwise moves the left (red) half to the top.
    assert_pixel(loaded, RED, tol=10, xy=(10, 5))
    assert_pixel(loaded, (0, 0, 255), tol=10, xy=(10, 35))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_open_rgb_array_orients_as_pillow_does(tmp_path: Path, orientation: int) -> None:
    # Taller than one conversion band (256 rows), and every pixel distinct enough to show a
    # transpose or flip: each orientation must give PIL's own exif_transpose, bit for bit.
    pixels = np.random.default_rng(orientation).integers(0, 256, (300, 70, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = orientation
    path = tmp_path / "oriented.png"
    image.save(path, exif=exif)
    with Image.open(path) as opened:
        expected = np.asarray(ImageOps.exif_transpose(opened))
    assert expected.shape == ((70, 300, 3) if orientation >= 5 else (300, 70, 3))
    array = open_rgb_array(path)
    assert np.array_equal(array, expected)
    assert np.array_equal(np.asarray(open_rgb(path)), expected)


def test_image_from_array_gives_the_pixels_and_hands_back_a_decoded_photos_pages(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (700, 90, 3), dtype=np.uint8)  # several bands
    Image.fromarray(pixels).save(tmp_path / "a.png")
    # Below the threshold a decoded photo is an ordinary array, and only read.
    small = open_rgb_array(tmp_path / "a.png")
    assert small.flags.writeable and np.array_equal(np.asarray(image_from_array(small)), pixels)
    assert np.array_equal(small, pixels)
    # A big photo's array has pages of its own (the threshold lowered, to keep the test small).
    monkeypatch.setattr(images, "MAPPED_ARRAY_BYTES", 0)
    decoded = open_rgb_array(tmp_path / "a.png")
    image = image_from_array(decoded)
    assert image.mode == "RGB" and np.array_equal(np.asarray(image), pixels)
    # The decoded photo's pages went back to the system band by band: all but the last
    # partial page read as zeros now (its documented cost: the array is consumed).
    released = decoded.reshape(-1)[: decoded.size // mmap.PAGESIZE * mmap.PAGESIZE]
    assert not released.any()
    # Any other array is only read.
    image = image_from_array(pixels)
    assert np.array_equal(np.asarray(image), pixels) and pixels.any()
    with pytest.raises(InvalidSettingError, match="uint8"):
        image_from_array(pixels.astype(np.float32))


def test_open_rgb_random_bytes_raise_image_load_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.png"
    path.write_bytes(np.random.default_rng(0).bytes(500))
    with pytest.raises(ImageLoadError) as info:
        open_rgb(path)
    assert "garbage.png" in str(info.value)
    assert "cannot read image" in str(info.value)
    assert info.value.path == path


def test_open_rgb_truncated_jpeg_raises(tmp_path: Path) -> None:
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    full = tmp_path / "full.jpg"
    Image.fromarray(noise).save(full, quality=90)
    truncated = tmp_path / "truncated.jpg"
    data = full.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match="truncated.jpg"):
        open_rgb(truncated)


def test_open_rgb_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.png"):
        open_rgb(tmp_path / "nope.png")


def test_open_rgb_directory_is_load_error(tmp_path: Path) -> None:
    folder = tmp_path / "folder.png"
    folder.mkdir()
    with pytest.raises(ImageLoadError, match="folder.png"):
        open_rgb(folder)


def test_open_rgb_leaves_file_unchanged(tmp_path: Path) -> None:
    image = Image.new("RGB", (40, 20), RED)
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(tmp_path / "a.jpg", exif=exif)
    write_image(tmp_path / "b.png", "RGBA", (0, 0, 0, 0))
    before = file_hashes(tmp_path)
    open_rgb(tmp_path / "a.jpg")
    open_rgb(tmp_path / "b.png")
    assert file_hashes(tmp_path) == before


# ------------------------------------------------------ geometry & tensors


def test_fit_to_square_wide_image_and_box_mapping() -> None:
    image = Image.new("RGB", (40, 20), RED)
    square, transform = fit_to_square(image, 10)
    assert square.size == (10, 10)
    # scale 0.5 -> 20x10, then 5 px cropped from the left.
    assert transform((10, 0, 30, 20)) == pytest.approx((0, 0, 10, 10))
    assert transform((12, 2, 20, 8)) == pytest.approx((1, 1, 5, 4))
    # Parts outside the crop are clipped to the square.
    assert transform((0, 0, 8, 20)) == pytest.approx((0, 0, 0, 10))
    assert transform((-10, -10, 100, 100)) == pytest.approx((0, 0, 10, 10))


def test_fit_to_square_tall_image_upscaled() -> None:
    image = Image.new("RGB", (5, 15), RED)
    square, transform = fit_to_square(image, 10)
    assert square.size == (10, 10)
    # scale 2 -> 10x30, then 10 px cropped from the top.
    assert transform((1, 5, 4, 10)) == pytest.approx((2, 0, 8, 10))
    assert_pixel(square, RED, xy=(5, 5))


def test_fit_to_square_rejects_bad_size() -> None:
    with pytest.raises(ValueError):
        fit_to_square(Image.new("RGB", (4, 4)), 0)


def test_red_round_trip_through_tensor_and_disk(tmp_path: Path) -> None:
    source = write_image(tmp_path / "red.png", "RGB", RED)
    tensor = image_to_tensor(open_rgb(source))
    assert tensor.shape == (3, 8, 8)
    assert tensor.dtype == torch.float32
    assert torch.all(tensor[0] == 1.0)  # R
    assert torch.all(tensor[1] == -1.0)  # G
    assert torch.all(tensor[2] == -1.0)  # B

    image = tensor_to_image(tensor)
    r, g, b = image.getpixel((3, 3))
    assert (r, g, b) == (255, 0, 0)

    out = tmp_path / "out" / "red_again.png"
    save_png_atomic(image, out)
    assert open_rgb(out).getpixel((0, 0)) == RED


def test_tensor_round_trip_is_exact_for_all_levels() -> None:
    levels = np.arange(256, dtype=np.uint8)
    array = np.stack([levels, levels[::-1], np.full(256, 7, np.uint8)], axis=-1)[None]
    image = Image.fromarray(array)
    tensor = image_to_tensor(image)
    assert tensor.min() >= -1 and tensor.max() <= 1
    assert np.array_equal(np.asarray(tensor_to_image(tensor)), array)


def test_tensor_to_image_clamps_and_checks_shape() -> None:
    tensor = torch.full((3, 2, 2), 5.0)
    tensor[2] = -7.0
    assert tensor_to_image(tensor).getpixel((0, 0)) == (255, 255, 0)
    with pytest.raises(ValueError):
        tensor_to_image(torch.zeros(2, 2, 3))


def test_image_to_tensor_requires_rgb() -> None:
    with pytest.raises(ValueError, match="RGB"):
        image_to_tensor(Image.new("L", (2, 2)))


def test_load_image_tensor_mask_covers_transformed_boxes(tmp_path: Path) -> None:
    # 64x32 -> size 16: scale 0.5 to 32x16, crop 8 px from the left.
    path = write_image(tmp_path / "wide.png", size=(64, 32))
    image, mask = load_image_tensor(path, 16, [(20, 4, 36, 12)])
    assert image.shape == (3, 16, 16) and mask.shape == (1, 16, 16)
    assert mask.dtype == torch.float32
    expected = torch.zeros(1, 16, 16)
    expected[:, 2:6, 2:10] = 1
    assert torch.equal(mask, expected)

    # Fractional edges cover every touched pixel: floor(x0)..ceil(x1).
    _, mask = load_image_tensor(path, 16, [(21, 5, 35, 11)])  # -> (2.5, 2.5, 9.5, 5.5)
    assert torch.equal(mask, expected)

    # Boxes entirely in the cropped-away margins add nothing: in x,
    # (8..12) -> -4..-2, (0..10) -> -8..-3 and (48..56) -> 16..20 all clip to empty.
    outside = [(8, 20, 12, 28), (0, 0, 10, 10), (48, 20, 56, 32)]
    _, mask = load_image_tensor(path, 16, [(20, 4, 36, 12), *outside])
    assert torch.equal(mask, expected)
    # Union of two visible boxes.
    union = expected.clone()
    _, mask = load_image_tensor(path, 16, [(20, 4, 36, 12), (24, 20, 30, 28)])  # 2nd -> (4, 10, 7, 14)
    union[:, 10:14, 4:7] = 1
    assert torch.equal(mask, union)

    _, mask = load_image_tensor(path, 16, [(40, 16, 46, 24)])  # -> (12, 8, 15, 12)
    inside = torch.zeros(1, 16, 16)
    inside[:, 8:12, 12:15] = 1
    assert torch.equal(mask, inside)


def test_load_image_tensor_without_boxes_has_empty_mask(tmp_path: Path) -> None:
    path = write_image(tmp_path / "a.png", size=(20, 30))
    image, mask = load_image_tensor(path, 8)
    assert image.shape == (3, 8, 8)
    assert mask.shape == (1, 8, 8) and mask.sum() == 0


# --------------------------------------------------------- save_png_atomic


def test_save_png_atomic_creates_dirs_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "out.png"
    noise = np.random.default_rng(2).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    save_png_atomic(Image.fromarray(noise), target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.png"]
    assert np.array_equal(np.asarray(open_rgb(target)), noise)
    assert target.stat().st_mode & 0o444 == 0o444  # readable like a normal file

    # Overwriting replaces the content.
    save_png_atomic(Image.new("RGB", (3, 3), RED), target)
    assert open_rgb(target).size == (3, 3)
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.png"]


def test_save_png_atomic_failure_keeps_old_file_and_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "out.png"
    save_png_atomic(Image.new("RGB", (4, 4), RED), target)
    before = target.read_bytes()
    with pytest.raises(OSError):
        # PNG cannot store CMYK, so saving fails part-way.
        save_png_atomic(Image.new("CMYK", (4, 4)), target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


# ---------------------------------------------------------- list_image_files


def test_list_image_files_recursive_sorted_filtered(tmp_path: Path) -> None:
    write_image(tmp_path / "b.png")
    write_image(tmp_path / "A.JPG", format="JPEG")
    write_image(tmp_path / "sub" / "deeper" / "c.TIFF", format="TIFF")
    write_image(tmp_path / "sub" / "d.gif")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "noext").write_bytes(b"x")
    write_image(tmp_path / ".hidden.png")
    write_image(tmp_path / ".cache" / "e.png")
    found = list_image_files(tmp_path)
    assert found == sorted(found)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "A.JPG",
        "b.png",
        "sub/d.gif",
        "sub/deeper/c.TIFF",
    ]


def test_list_image_files_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing_dir: no such directory"):
        list_image_files(tmp_path / "missing_dir")
    file = write_image(tmp_path / "single.png")
    with pytest.raises(NotADirectoryError, match="single.png"):
        list_image_files(file)


def test_image_extensions_constant() -> None:
    assert IMAGE_EXTENSIONS == frozenset(
        {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
    )


# ---------------------------------------------------------------- manifests


def test_read_manifest_csv(tmp_path: Path) -> None:
    root = tmp_path / "dataset"
    absolute = write_image(tmp_path / "elsewhere" / "abs.png")
    manifest = root / "manifest.csv"
    root.mkdir()
    manifest.write_text(
        "path,split,boxes\n"
        'imgs/a.png,forget,"[[1, 2, 3, 4], [0, 0, 5.5, 6]]"\n'
        "imgs/b.png, Retain ,\n"
        f"{absolute},FORGET,[]\n",
        encoding="utf-8",
    )
    result = read_manifest(manifest)
    assert set(result) == {"forget", "retain"}
    assert result["forget"] == [
        ImageRecord(root.absolute() / "imgs" / "a.png", ((1, 2, 3, 4), (0, 0, 5.5, 6))),
        ImageRecord(absolute, ()),
    ]
    assert result["retain"] == [ImageRecord(root.absolute() / "imgs" / "b.png")]
    assert all(isinstance(v, float) for v in result["forget"][0].boxes[0])


def test_read_manifest_csv_relative_paths_do_not_depend_on_cwd(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "ds"
    root.mkdir()
    (root / "m.csv").write_text("path,split\nx.png,forget\n")
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.chdir(other)
    result = read_manifest(Path("..") / "ds" / "m.csv")
    assert result["forget"][0].path.resolve() == (root / "x.png").resolve()
    assert result["retain"] == []


@pytest.mark.parametrize("suffix", [".jsonl", ".ndjson"])
def test_read_manifest_jsonl(tmp_path: Path, suffix: str) -> None:
    manifest = tmp_path / f"m{suffix}"
    lines = [
        json.dumps({"path": "f/a.png", "split": "forget", "boxes": [[1, 2, 3, 4]]}),
        "",
        "   ",
        json.dumps({"path": "r/b.png", "split": " retain", "extra": 1}),
        json.dumps({"path": "r/c.png", "split": "retain", "boxes": None}),
    ]
    manifest.write_text("\n".join(lines) + "\n")
    result = read_manifest(manifest)
    assert result["forget"] == [ImageRecord(tmp_path / "f" / "a.png", ((1.0, 2.0, 3.0, 4.0),))]
    assert [r.path for r in result["retain"]] == [tmp_path / "r" / "b.png", tmp_path / "r" / "c.png"]


def test_read_manifest_missing_column_csv(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\na.png,forget\n")
    with pytest.raises(ManifestError) as info:
        read_manifest(manifest)
    message = str(info.value)
    assert "m.csv" in message and "'split'" in message and "path, label" in message


def test_read_manifest_missing_column_jsonl(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"path": "a.png", "split": "forget"}\n{"file": "b.png", "split": "retain"}\n')
    with pytest.raises(ManifestError, match=r"m\.jsonl, line 2: missing required column 'path'"):
        read_manifest(manifest)


def test_read_manifest_bad_split(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,split\na.png,forget\nb.png,train\n")
    with pytest.raises(ManifestError, match=r"m\.csv, line 3: invalid split 'train'"):
        read_manifest(manifest)


@pytest.mark.parametrize(
    "boxes, problem",
    [
        ([[1, 2, 3]], "not 4 numbers"),
        ([[1, 2, 3, 4, 5]], "not 4 numbers"),
        ([["a", 2, 3, 4]], "not 4 numbers"),
        ([[5, 0, 1, 4]], "x1 > x0"),
        ([[0, 4, 3, 4]], "y1 > y0"),
        ([1, 2, 3, 4], "not 4 numbers"),
        ({"x0": 1}, "must be a list"),
    ],
)
def test_read_manifest_malformed_boxes_jsonl(tmp_path: Path, boxes, problem: str) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"path": "a.png", "split": "forget", "boxes": boxes}) + "\n")
    with pytest.raises(ManifestError, match=problem) as info:
        read_manifest(manifest)
    assert "m.jsonl, line 1" in str(info.value)


@pytest.mark.parametrize("cell", ['"[[1,2,3]]"', '"[[3,3,1,1]]"', "not-json"])
def test_read_manifest_malformed_boxes_csv(tmp_path: Path, cell: str) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,split,boxes\na.png,retain,{cell}\n")
    with pytest.raises(ManifestError, match=r"m\.csv, line 2"):
        read_manifest(manifest)


def test_read_manifest_malformed_json_line(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"path": "a.png", "split": "forget"}\n{"path": oops}\n')
    with pytest.raises(ManifestError, match=r"m\.jsonl, line 2: malformed JSON"):
        read_manifest(manifest)


def test_read_manifest_non_object_line(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('["a.png", "forget"]\n')
    with pytest.raises(ManifestError, match="line 1: expected a JSON object"):
        read_manifest(manifest)


def test_read_manifest_unknown_extension_and_missing(tmp_path: Path) -> None:
    manifest = tmp_path / "m.txt"
    manifest.write_text("path,split\n")
    with pytest.raises(ManifestError, match=r"m\.txt: unsupported manifest format"):
        read_manifest(manifest)
    with pytest.raises(FileNotFoundError, match="absent.csv"):
        read_manifest(tmp_path / "absent.csv")


def test_read_manifest_empty_csv(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("")
    with pytest.raises(ManifestError, match="no header"):
        read_manifest(manifest)


# ------------------------------------------------------- records/validation


def test_resolve_records_from_folder_and_iterables(tmp_path: Path) -> None:
    paths = write_colour_set(tmp_path / "set", 3)
    from_dir = resolve_records(tmp_path / "set")
    assert [r.path for r in from_dir] == paths
    assert resolve_records(str(tmp_path / "set")) == from_dir
    mixed = resolve_records([paths[0], str(paths[1]), ImageRecord(paths[2], ((0, 0, 1, 1),))])
    assert [r.path for r in mixed] == paths
    assert mixed[2].boxes == ((0.0, 0.0, 1.0, 1.0),)
    with pytest.raises(TypeError):
        resolve_records([42])


def test_validate_records_bad_file_without_skip(tmp_path: Path) -> None:
    good = write_colour_set(tmp_path, 2)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    records = resolve_records(tmp_path)
    with pytest.raises(ImageLoadError) as info:
        validate_records(records, name="forget")
    assert "broken.png" in str(info.value)
    assert "--skip-bad" in str(info.value)
    assert info.value.path == bad
    assert len(good) == 2


def test_validate_records_missing_file_is_reported(tmp_path: Path) -> None:
    record = ImageRecord(tmp_path / "gone.png")
    with pytest.raises(ImageLoadError, match=r"gone\.png: no such file.*--skip-bad"):
        validate_records([record], name="retain")


def test_validate_records_skip_bad_counts(tmp_path: Path) -> None:
    write_colour_set(tmp_path, 3)
    (tmp_path / "bad1.png").write_bytes(b"nope")
    (tmp_path / "bad2.jpg").write_bytes(b"")
    records = resolve_records(tmp_path)
    missing = ImageRecord(tmp_path / "missing.png")
    good, skipped = validate_records(records + [missing], name="retain", skip_bad=True)
    assert len(good) == 3
    assert len(skipped) == 3
    assert {r.path.name for r, _ in skipped} == {"bad1.png", "bad2.jpg", "missing.png"}
    assert all(r.path.name in message for r, message in skipped)


def test_validate_records_all_bad_is_empty_set(tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(EmptyImageSetError, match="the forget set is empty: all 1 images"):
        validate_records(resolve_records(tmp_path), name="forget", skip_bad=True, origin=tmp_path)


def test_validate_records_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(EmptyImageSetError) as info:
        validate_records(resolve_records(tmp_path), name="retain", origin=tmp_path)
    assert "the retain set is empty" in str(info.value)
    assert str(tmp_path) in str(info.value)


def test_validate_records_progress_bar_only_for_large_sets(tmp_path: Path, capsys) -> None:
    small = [write_image(tmp_path / "small" / f"{i}.png", size=(2, 2)) for i in range(3)]
    validate_records(resolve_records(small), name="forget")
    assert "checking forget images" not in capsys.readouterr().err
    big = [write_image(tmp_path / "big" / f"{i}.png", size=(2, 2)) for i in range(201)]
    good, _ = validate_records(resolve_records(big), name="retain")
    assert len(good) == 201
    assert "checking retain images" in capsys.readouterr().err


# ------------------------------------------------------ datasets & modules


def test_image_record_dataset_items(tmp_path: Path) -> None:
    path = write_image(tmp_path / "a.png", size=(20, 10))
    dataset = ImageRecordDataset([ImageRecord(path, ((0, 0, 10, 10),))], 8)
    assert len(dataset) == 1
    item = dataset[0]
    assert item["image"].shape == (3, 8, 8) and item["mask"].shape == (1, 8, 8)
    assert item["image"].min() >= -1 and item["image"].max() <= 1
    # 20x10 -> 16x8, crop 4 from the left: box -> (0, 0, 4, 8).
    assert item["mask"][0, :, :4].sum() == 32 and item["mask"][0, :, 4:].sum() == 0


def test_image_folder_data_module(tmp_path: Path) -> None:
    write_colour_set(tmp_path / "train", 5)
    (tmp_path / "train" / "bad.png").write_bytes(b"junk")
    module = ImageFolderDataModule(tmp_path / "train", image_size=8, batch_size=2, skip_bad=True)
    module.setup("fit")
    assert len(module.records) == 5 and len(module.skipped) == 1
    batches = list(module.train_dataloader())
    assert len(batches) == 2  # 5 images, batch 2, drop_last
    assert batches[0]["image"].shape == (2, 3, 8, 8)

    # setup runs once: deleting a file afterwards does not re-validate.
    (tmp_path / "train" / "img_000.png").unlink()
    module.setup("fit")
    assert len(module.records) == 5

    small = ImageFolderDataModule(tmp_path / "train", image_size=8, batch_size=32, skip_bad=True)
    small.setup()
    assert [b["image"].shape[0] for b in small.train_dataloader()] == [4]  # no drop_last


def test_image_folder_data_module_errors_before_training(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmptyImageSetError, match="the training set is empty"):
        ImageFolderDataModule(tmp_path / "empty", image_size=8).setup()
    write_colour_set(tmp_path / "train", 1)
    (tmp_path / "train" / "bad.png").write_bytes(b"junk")
    with pytest.raises(ImageLoadError, match="bad.png"):
        ImageFolderDataModule(tmp_path / "train", image_size=8).setup()


def test_unlearning_data_module_argument_checks(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not both"):
        UnlearningDataModule(forget=tmp_path, retain=tmp_path, manifest=tmp_path / "m.csv")
    with pytest.raises(ValueError, match="missing the retain set"):
        UnlearningDataModule(forget=tmp_path)
    with pytest.raises(ValueError, match="missing the forget and retain set"):
        UnlearningDataModule()


def test_unlearning_data_module_folders_end_to_end(tmp_path: Path) -> None:
    write_colour_set(tmp_path / "forget", 3, size=(30, 20))
    write_colour_set(tmp_path / "retain", 6, size=(20, 30))
    (tmp_path / "retain" / "broken.jpg").write_bytes(b"\xff\xd8\xff broken")
    before = file_hashes(tmp_path)

    module = UnlearningDataModule(
        forget=tmp_path / "forget", retain=tmp_path / "retain", image_size=16, batch_size=4,
        skip_bad=True,
    )
    module.setup("fit")
    assert len(module.forget_records) == 3 and len(module.retain_records) == 6
    assert [r.path.name for r, _ in module.skipped] == ["broken.jpg"]

    loaders = module.train_dataloader()
    assert set(loaders) == {"forget", "retain"}
    forget_batch = next(iter(loaders["forget"]))
    retain_batch = next(iter(loaders["retain"]))
    assert forget_batch["image"].shape == (3, 3, 16, 16)  # min(4, 3)
    assert forget_batch["mask"].shape == (3, 1, 16, 16)
    assert retain_batch["image"].shape == (4, 3, 16, 16)
    assert len(loaders["retain"]) == 1  # 6 images, batch 4, drop_last

    # Lightning's default training combination mode for a dict of loaders.
    combined = CombinedLoader(loaders, mode="max_size_cycle")
    steps = list(combined)
    assert len(steps) == 1
    batch = steps[0][0]
    assert batch["forget"]["image"].shape[0] == 3 and batch["retain"]["image"].shape[0] == 4

    assert file_hashes(tmp_path) == before  # inputs are never modified


def test_unlearning_data_module_manifest_end_to_end(tmp_path: Path) -> None:
    write_image(tmp_path / "imgs" / "f1.png", size=(32, 32))
    write_image(tmp_path / "imgs" / "f2.jpg", size=(32, 16))
    write_colour_set(tmp_path / "imgs" / "retain", 2)
    manifest = tmp_path / "manifest.jsonl"
    rows = [
        {"path": "imgs/f1.png", "split": "forget", "boxes": [[0, 0, 16, 16]]},
        {"path": "imgs/f2.jpg", "split": "forget"},
        {"path": "imgs/retain/img_000.png", "split": "retain"},
        {"path": str(tmp_path / "imgs" / "retain" / "img_001.png"), "split": "retain"},
    ]
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    before = file_hashes(tmp_path)

    module = UnlearningDataModule(manifest=manifest, image_size=8, batch_size=16)
    module.setup()
    assert [r.path.name for r in module.forget_records] == ["f1.png", "f2.jpg"]
    assert module.skipped == []
    loaders = module.train_dataloader()
    forget_batch = next(iter(loaders["forget"]))
    assert forget_batch["image"].shape == (2, 3, 8, 8)
    # f1's box covers the top-left quarter; f2 has no box.
    assert sorted(float(m.sum()) for m in forget_batch["mask"]) == [0.0, 16.0]
    assert next(iter(loaders["retain"]))["image"].shape == (2, 3, 8, 8)
    assert file_hashes(tmp_path) == before


def test_unlearning_data_module_reports_empty_forget_first(tmp_path: Path) -> None:
    (tmp_path / "forget").mkdir()
    (tmp_path / "retain").mkdir()
    module = UnlearningDataModule(forget=tmp_path / "forget", retain=tmp_path / "retain")
    with pytest.raises(EmptyImageSetError, match="the forget set is empty"):
        module.setup()

    manifest = tmp_path / "m.csv"
    write_image(tmp_path / "a.png")
    manifest.write_text("path,split\na.png,forget\n")
    with pytest.raises(EmptyImageSetError, match=r"the retain set is empty.*m\.csv"):
        UnlearningDataModule(manifest=manifest).setup()


def test_shuffling_is_reproducible_with_seed(tmp_path: Path) -> None:
    write_colour_set(tmp_path / "forget", 8, size=(4, 4))
    write_colour_set(tmp_path / "retain", 8, size=(4, 4))

    def first_orders(seed: int) -> tuple[list[float], list[float]]:
        lightning.seed_everything(seed, verbose=False)
        module = UnlearningDataModule(
            forget=tmp_path / "forget", retain=tmp_path / "retain", image_size=4, batch_size=8
        )
        loaders = module.train_dataloader()
        forget = next(iter(loaders["forget"]))["image"][:, 0, 0, 0].tolist()
        retain = next(iter(loaders["retain"]))["image"][:, 0, 0, 0].tolist()
        return forget, retain

    assert first_orders(123) == first_orders(123)
    orders = {tuple(first_orders(seed)[0]) for seed in range(5)}
    assert len(orders) > 1  # it really shuffles


def test_fit_to_square_never_blows_up_a_thin_strip():
    from imgunlearn.data.images import fit_to_square

    strip = Image.new("RGB", (100_000, 1), (10, 20, 30))
    square, transform = fit_to_square(strip, 128)
    assert square.size == (128, 128)
    assert np.asarray(square).reshape(-1, 3).mean(axis=0).round().tolist() == [10, 20, 30]
