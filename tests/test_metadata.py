"""The metadata policy: an output keeps the survey's facts and never a copy of the input's pixels."""

from __future__ import annotations

import base64
import io
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image, PngImagePlugin

from imgunlearn.pipelines import preprocess_folder
from imgunlearn.pipelines.metadata import filter_exif, filter_geotiff_tags, holds_image

from test_survey import GPS, audit, icc_bytes, photo, sanitizer

XMP = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description>secret</rdf:Description></x:xmpmeta>'
SOI = b"\xff\xd8\xff"


def thumbnail_jpeg() -> bytes:
    buffer = io.BytesIO()
    photo(16, 12, 9).save(buffer, format="JPEG")
    return buffer.getvalue()


def with_thumbnail(exif_bytes: bytes, thumbnail: bytes) -> bytes:
    """Append an IFD1 (the EXIF thumbnail, as cameras write it) to Pillow's EXIF bytes."""
    tiff = bytearray(exif_bytes[6:])
    order = {b"II": "<", b"MM": ">"}[bytes(tiff[:2])]
    ifd0 = struct.unpack_from(order + "I", tiff, 4)[0]
    entries = struct.unpack_from(order + "H", tiff, ifd0)[0]
    next_pointer = ifd0 + 2 + 12 * entries
    assert struct.unpack_from(order + "I", tiff, next_pointer)[0] == 0
    if len(tiff) % 2:
        tiff += b"\x00"
    ifd1 = len(tiff)
    data = ifd1 + 2 + 2 * 12 + 4
    tiff += struct.pack(order + "H", 2)
    tiff += struct.pack(order + "HHII", 0x0201, 4, 1, data)  # JPEGInterchangeFormat
    tiff += struct.pack(order + "HHII", 0x0202, 4, 1, len(thumbnail))  # JPEGInterchangeFormatLength
    tiff += struct.pack(order + "I", 0) + thumbnail
    struct.pack_into(order + "I", tiff, next_pointer, ifd1)
    return b"Exif\x00\x00" + bytes(tiff)


def camera_exif() -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F] = "DJI"
    exif[0x0110] = "FC6310"
    exif[0x010E] = "Garden party at no. 12"  # ImageDescription: free text
    exif[0x0131] = "v01.08"  # Software
    exif[0x8769] = {0x9003: "2026:05:01 10:00:00", 0x920A: 8.8, 0x9286: b"ASCII\x00\x00\x00kids in the pool",
                    0x927C: b"maker secret bytes"}
    exif[0x8825] = {**GPS, 0x001C: b"ASCII\x00\x00\x00Smith family home"}
    return exif


@pytest.fixture
def camera_jpeg(tmp_path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    raw = with_thumbnail(camera_exif().tobytes(), thumbnail_jpeg())
    path = src / "DJI_0001.JPG"
    photo(40, 30, 0).save(path, exif=raw, icc_profile=icc_bytes(), xmp=XMP, comment=b"shot over the Smiths'",
                          quality=90)
    with Image.open(path) as check:  # the test file really has what cameras write
        assert check.getexif().get_ifd(ExifTags.IFD.IFD1)
        assert path.read_bytes().count(SOI) == 2
    return src


def test_survey_policy_keeps_geotags_and_drops_thumbnail_and_free_text(camera_jpeg, tmp_path):
    summary = preprocess_folder(camera_jpeg, tmp_path / "out", sanitizer(), progress=False)
    assert summary.ok
    out = tmp_path / "out" / "DJI_0001.JPG"
    data = out.read_bytes()
    assert data.count(SOI) == 1, "an embedded JPEG (the thumbnail) survived"
    assert b"secret" not in data and b"Smith" not in data and b"kids" not in data and b"Garden" not in data
    with Image.open(out) as result:
        exif = result.getexif()
        assert exif[0x010F] == "DJI" and exif[0x0110] == "FC6310"
        assert 0x010E not in exif and 0x0131 not in exif
        assert exif.get_ifd(ExifTags.IFD.GPSInfo) == GPS
        sub = exif.get_ifd(ExifTags.IFD.Exif)
        assert sub[0x9003] == "2026:05:01 10:00:00" and sub[0x920A] == 8.8
        assert 0x9286 not in sub and 0x927C not in sub
        assert not exif.get_ifd(ExifTags.IFD.IFD1)
        assert result.info["icc_profile"] == icc_bytes()
        assert "xmp" not in result.info and "comment" not in result.info
    [record] = audit(tmp_path / "out")
    assert set(record["metadata_dropped"]) >= {"EXIF thumbnail", "ImageDescription", "Software", "UserComment",
                                               "MakerNote", "GPSAreaInformation", "XMP", "JPEG comment"}


def test_all_policy_keeps_free_text_but_never_the_thumbnail(camera_jpeg, tmp_path):
    preprocess_folder(camera_jpeg, tmp_path / "out", sanitizer(), progress=False, keep_metadata="all")
    out = tmp_path / "out" / "DJI_0001.JPG"
    assert out.read_bytes().count(SOI) == 1
    with Image.open(out) as result:
        exif = result.getexif()
        assert exif[0x010E] == "Garden party at no. 12"
        assert exif.get_ifd(ExifTags.IFD.GPSInfo)[0x001C] == b"ASCII\x00\x00\x00Smith family home"
        assert result.info["xmp"] == XMP and result.info["comment"] == b"shot over the Smiths'"
    [record] = audit(tmp_path / "out")
    assert record["metadata_dropped"] == ["EXIF thumbnail"]


def test_all_policy_drops_every_embedded_preview(tmp_path):
    """``all`` keeps free text, but no tag or chunk that carries a picture of the unsanitized
    photo: a MakerNote preview (as Nikon writes one), an XMP thumbnail (base64), a PNG text
    chunk with ImageMagick's hex EXIF profile, a TIFF's Photoshop thumbnail resource."""
    src = tmp_path / "src"
    src.mkdir()
    preview = thumbnail_jpeg()
    exif = camera_exif()
    exif[0x8769] = {**exif[0x8769], 0x927C: b"Nikon\x00\x02\x10\x00\x00MM\x00*" + preview}
    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><xmpGImg:image>'
           + base64.encodebytes(preview) + b"</xmpGImg:image></x:xmpmeta>")
    photo(40, 30, 0).save(src / "nikon.jpg", exif=exif.tobytes(), xmp=xmp, quality=90)
    text = PngImagePlugin.PngInfo()
    text.add_text("Comment", "the Smiths' garden")
    profile = with_thumbnail(camera_exif().tobytes(), preview).hex()  # as ImageMagick writes it
    text.add_text("Raw profile type exif", f"\nexif\n{len(profile) // 2:8d}\n" + "\n".join(
        profile[i:i + 72] for i in range(0, len(profile), 72)))
    photo(36, 28, 1).save(src / "magick.png", pnginfo=text)
    tiff_exif = Image.Exif()
    tiff_exif[0x010E] = "Garden party at no. 12"
    tiff_exif[34377] = b"8BIM\x04\x0c\x00\x00\x00\x00\x00\x40" + preview  # the thumbnail resource
    photo(30, 22, 2).save(src / "layers.tif", exif=tiff_exif.tobytes())

    preprocess_folder(src, tmp_path / "out", sanitizer(), progress=False, keep_metadata="all")
    out = tmp_path / "out"
    for name in ("nikon.jpg", "magick.png", "layers.tif"):
        data = (out / name).read_bytes()
        assert data.count(SOI) == (name == "nikon.jpg"), f"an embedded JPEG survived in {name}"
        assert b"/9j/" not in data and b"ffd8ff" not in data.lower(), f"an encoded JPEG survived in {name}"
    with Image.open(out / "nikon.jpg") as result:
        assert result.getexif()[0x010E] == "Garden party at no. 12"  # free text still kept
        assert 0x927C not in result.getexif().get_ifd(ExifTags.IFD.Exif) and "xmp" not in result.info
    with Image.open(out / "magick.png") as result:
        assert result.text == {"Comment": "the Smiths' garden"}
    with Image.open(out / "layers.tif") as result:
        assert result.getexif()[0x010E] == "Garden party at no. 12" and 34377 not in result.getexif()
    dropped = {record["input"].rsplit("/", 1)[-1]: set(record["metadata_dropped"]) for record in audit(out)}
    assert dropped["nikon.jpg"] == {"MakerNote (holds an image)", "XMP (holds an image)"}
    assert dropped["magick.png"] == {"EXIF thumbnail", "PNG text 'Raw profile type exif' (holds an image)"}
    assert dropped["layers.tif"] == {"ImageResources (holds an image)"}


@pytest.mark.parametrize("mode, space", [("L", b"GRAY"), ("CMYK", b"CMYK")])
def test_a_profile_of_another_colour_space_is_not_put_on_the_rgb_output(tmp_path, mode, space):
    """A grey or CMYK photo comes out RGB: its profile would misstate the output's values."""
    src = tmp_path / "src"
    src.mkdir()
    profile = icc_bytes()[:16] + space + icc_bytes()[20:]
    photo(40, 30, 4).convert(mode).save(src / "scan.jpg", icc_profile=profile)
    preprocess_folder(src, tmp_path / "out", sanitizer(), progress=False, keep_metadata="all")
    with Image.open(tmp_path / "out" / "scan.jpg") as result:
        assert result.mode == "RGB" and "icc_profile" not in result.info
    [record] = audit(tmp_path / "out")
    assert record["metadata_dropped"] == [f"ICC profile ({space.decode()} colour space; the output is RGB)"]


@pytest.mark.parametrize("value", [
    b"prefix \xff\xd8\xff\xe0 jpeg", b"\x89PNG\r\n\x1a\n", "GIF89a", b"RIFF\x10\x00\x00\x00WEBPVP8 ",
    "<x:xmpmeta>/9j/4AAQSkZJRgABAQ</x:xmpmeta>", "iVBORw0K\nGgoAAAANSUhEUg", "45786966 0000 FFD8\nFFE0",
    ("text", b"\xff\xd8\xff"), {1: "ok", 2: "/9j/4AAQ"},
])
def test_holds_image_finds_raw_base64_and_hex_streams(value):
    assert holds_image(value)


@pytest.mark.parametrize("value", ["Garden party at no. 12", b"ASCII\x00\x00\x00kids", 8.8, (1, 2),
                                   b"Nikon\x00\x02\x10\x00\x00MM\x00*\x00\x08", "", b""])
def test_holds_image_leaves_text_numbers_and_bare_maker_notes(value):
    assert not holds_image(value)


def test_none_policy_keeps_only_the_colour_profile(camera_jpeg, tmp_path):
    preprocess_folder(camera_jpeg, tmp_path / "out", sanitizer(), progress=False, keep_metadata="none")
    with Image.open(tmp_path / "out" / "DJI_0001.JPG") as result:
        assert len(result.getexif()) == 0
        assert result.info["icc_profile"] == icc_bytes()
        assert "xmp" not in result.info


def test_png_exif_thumbnail_and_text_are_dropped(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    text = PngImagePlugin.PngInfo()
    text.add_text("Comment", "the Smiths' garden")
    text.add_itxt("XML:com.adobe.xmp", XMP.decode())
    raw = with_thumbnail(camera_exif().tobytes(), thumbnail_jpeg())
    photo(36, 28, 1).save(src / "tile.png", exif=raw, pnginfo=text)
    preprocess_folder(src, tmp_path / "out", sanitizer(), progress=False)
    data = (tmp_path / "out" / "tile.png").read_bytes()
    assert SOI not in data and b"Smith" not in data and b"secret" not in data
    with Image.open(tmp_path / "out" / "tile.png") as result:
        assert result.getexif().get_ifd(ExifTags.IFD.GPSInfo) == GPS
        assert not getattr(result, "text", {})
    [record] = audit(tmp_path / "out")
    assert {"EXIF thumbnail", "PNG text 'Comment'", "PNG text 'XML:com.adobe.xmp'"} <= set(record["metadata_dropped"])


def test_tiff_xmp_iptc_photoshop_and_extra_frames_are_dropped(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    exif = camera_exif()
    exif[700] = XMP  # XMLPacket
    exif[33723] = b"\x1c\x02\x78\x00\x05Smith"  # IPTC caption
    exif[34377] = b"8BIM\x04\x0c preview of the photo"  # Photoshop image resources (thumbnail)
    first, second = photo(30, 22, 2), photo(30, 22, 3)
    first.save(src / "pair.tif", exif=exif.tobytes(), save_all=True, append_images=[second])
    preprocess_folder(src, tmp_path / "out", sanitizer(), progress=False)
    out = tmp_path / "out" / "pair.tif"
    data = out.read_bytes()
    assert b"secret" not in data and b"Smith" not in data and b"8BIM" not in data and b"Garden" not in data
    with Image.open(out) as result:
        assert getattr(result, "n_frames", 1) == 1
        assert result.getexif().get_ifd(ExifTags.IFD.GPSInfo) == GPS
        assert result.getexif()[0x010F] == "DJI"
    [record] = audit(tmp_path / "out")
    assert {"1 extra frame(s)", "ImageDescription", "XMLPacket", "IPTCNAA", "ImageResources"} \
        <= set(record["metadata_dropped"])


def test_filter_exif_resets_orientation_and_rejects_unknown_policies():
    exif = camera_exif()
    exif[0x0112] = 6
    kept, dropped = filter_exif(exif, "survey")
    assert kept[0x0112] == 1 and "ImageDescription" in dropped
    with pytest.raises(ValueError, match="keep_metadata must be one of survey, all, none"):
        filter_exif(exif, "most")


def test_filter_geotiff_tags_keeps_only_known_survey_items():
    tags = {"AREA_OR_POINT": "Area", "TIFFTAG_DATETIME": "2026:05:01 10:00:00",
            "TIFFTAG_IMAGEDESCRIPTION": "Smith garden", "OPERATOR_NOTE": "kids visible"}
    kept, dropped = filter_geotiff_tags(tags)
    assert kept == {"AREA_OR_POINT": "Area", "TIFFTAG_DATETIME": "2026:05:01 10:00:00"}
    assert dropped == ["OPERATOR_NOTE", "TIFFTAG_IMAGEDESCRIPTION"]
    assert filter_geotiff_tags(tags, "none") == ({}, sorted(tags))
    assert filter_geotiff_tags(tags, "all") == (tags, [])
    with_preview = {**tags, "PREVIEW": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAA"}
    assert filter_geotiff_tags(with_preview, "all") == (tags, ["PREVIEW (holds an image)"])
    assert "PREVIEW" in filter_geotiff_tags(with_preview)[1]  # the survey policy drops it anyway


def test_geotiff_free_text_tags_are_dropped(tmp_path):
    rasterio = pytest.importorskip("rasterio")
    src = tmp_path / "src"
    src.mkdir()
    profile = {"driver": "GTiff", "width": 40, "height": 30, "count": 3, "dtype": "uint8",
               "crs": "EPSG:32633", "transform": rasterio.Affine(0.05, 0, 500000.0, 0, -0.05, 5800000.0)}
    with rasterio.open(src / "ortho.tif", "w", **profile) as target:
        target.write(np.asarray(photo(40, 30, 5)).transpose(2, 0, 1))
        target.update_tags(TIFFTAG_IMAGEDESCRIPTION="Smith garden", AREA_OR_POINT="Area")
    preprocess_folder(src, tmp_path / "out", sanitizer(), progress=False)
    with rasterio.open(tmp_path / "out" / "ortho.tif") as result:
        assert result.crs.to_epsg() == 32633
        assert "TIFFTAG_IMAGEDESCRIPTION" not in result.tags()
    [record] = audit(tmp_path / "out")
    assert "TIFFTAG_IMAGEDESCRIPTION" in record["metadata_dropped"]
