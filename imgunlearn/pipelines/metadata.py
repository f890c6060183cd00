"""What metadata a sanitized photo keeps: the survey's facts, never a copy of the pixels.

A photo's metadata can hold the very content that was forgotten: an EXIF thumbnail (IFD1)
is a small JPEG of the *unsanitized* photo, XMP, IPTC and Photoshop blocks can embed
previews, and free-text fields (ImageDescription, UserComment, MakerNote, PNG text) say
anything at all. Three policies, chosen with ``keep``:

- ``"survey"`` (the default): what photogrammetry and mapping need and nothing that can
  carry image content or free text: camera make and model, lens and exposure, focal length
  and focal-plane resolution, capture times, resolution, orientation (always 1: the pixels
  are written upright), every GPS tag but the free-text area name, the ICC profile, and the
  GeoTIFF georeferencing tags.
- ``"all"``: every tag and chunk the output format can hold, including free text; the EXIF
  thumbnail is still dropped, and so is what the writers cannot reproduce (IPTC/Photoshop
  blocks, extra frames).
- ``"none"``: no EXIF, XMP, text or tags; only the ICC profile, which defines what the
  pixel values mean.

Whatever the policy, a tag or chunk that holds an embedded image (a JPEG, PNG, GIF, WebP or
JPEG 2000 stream, raw, base64 or hex: a MakerNote preview, an XMP thumbnail, a Photoshop
thumbnail resource, ImageMagick's raw EXIF profile in PNG text) is dropped: like the EXIF
thumbnail, it can show the photo as it was before sanitizing. So is an ICC profile of
another colour space than the RGB output's (a grey or CMYK photo's).

Every function returns what it dropped by name, for the audit log.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import ExifTags, Image, JpegImagePlugin, PngImagePlugin

from ..errors import InvalidSettingError

__all__ = ["KEEP_METADATA", "SURVEY_EXIF_TAGS", "SURVEY_GPS_DROPPED", "filter_exif", "filter_geotiff_tags",
           "holds_image", "save_options"]

KEEP_METADATA = ("survey", "all", "none")
JPEG_QUALITY = 95  # for a JPEG output of an input that has no quantisation tables of its own

ORIENTATION = 0x0112
_EXIF_IFD, _GPS_IFD, _INTEROP_IFD = int(ExifTags.IFD.Exif), int(ExifTags.IFD.GPSInfo), int(ExifTags.IFD.Interop)
_MAKER_NOTE = 0x927C

# IFD0 and Exif-IFD tags kept by the survey policy (by name, for review; resolved to ids below).
_SURVEY_TAG_NAMES = (
    # IFD0: camera, resolution, time
    "Make", "Model", "Orientation", "XResolution", "YResolution", "ResolutionUnit", "DateTime",
    # Exif IFD: exposure, optics, capture times, sensor geometry
    "ExifVersion", "ExposureTime", "FNumber", "ExposureProgram", "ISOSpeedRatings", "DateTimeOriginal",
    "DateTimeDigitized", "OffsetTime", "OffsetTimeOriginal", "OffsetTimeDigitized", "ShutterSpeedValue",
    "ApertureValue", "ExposureBiasValue", "MaxApertureValue", "SubjectDistance", "MeteringMode", "LightSource",
    "Flash", "FocalLength", "SubsecTime", "SubsecTimeOriginal", "SubsecTimeDigitized", "ColorSpace",
    "ExifImageWidth", "ExifImageHeight", "FocalPlaneXResolution", "FocalPlaneYResolution",
    "FocalPlaneResolutionUnit", "ExposureMode", "WhiteBalance", "DigitalZoomRatio", "FocalLengthIn35mmFilm",
    "SceneCaptureType", "BodySerialNumber", "LensSpecification", "LensMake", "LensModel",
)
_TAG_IDS = {name: tag for tag, name in ExifTags.TAGS.items()}
SURVEY_EXIF_TAGS: frozenset[int] = frozenset(_TAG_IDS[name] for name in _SURVEY_TAG_NAMES)
# GeoTIFF georeferencing (plain TIFF path, without rasterio) and nodata: the map's placement.
_GEOTIFF_TAGS = frozenset({33550, 33922, 34264, 34735, 34736, 34737, 42113})
# GPSAreaInformation is free text; every other GPS tag is a geotag.
SURVEY_GPS_DROPPED: frozenset[int] = frozenset({0x001C})
# GDAL metadata items (rasterio tags) kept by the survey policy; the rest are free text.
_SURVEY_GDAL_TAGS = frozenset({"AREA_OR_POINT", "TIFFTAG_DATETIME", "TIFFTAG_XRESOLUTION",
                               "TIFFTAG_YRESOLUTION", "TIFFTAG_RESOLUTIONUNIT"})
# TIFF tags that describe the stored pixels rather than the photo; the writer sets its own.
TIFF_LAYOUT_TAGS = frozenset(
    {254, 255, 256, 257, 258, 259, 262, 263, 266, 273, 277, 278, 279, 280, 281, 284, 317,
     320, 322, 323, 324, 325, 330, 338, 339, 340, 341, 347, 513, 514, 530, 531, 532, 34675}
)


# Signatures of image streams as metadata carries them: raw bytes, base64 (XMP thumbnails, GDAL
# items) and hex (ImageMagick's "Raw profile type ..." PNG text). Raw TIFF headers are left
# out on purpose: every Nikon MakerNote is a TIFF structure; its preview JPEG has an SOI.
_RAW_IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"WEBPVP8",
                         b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51")
_BASE64_IMAGE_SIGNATURES = (b"/9j/", b"iVBORw0KGgo", b"R0lGODdh", b"R0lGODlh", b"UklGR")
_HEX_IMAGE_SIGNATURES = (b"ffd8ff", b"89504e470d0a1a0a", b"474946383", b"0000000c6a502020")
_WHITESPACE = b" \t\r\n"


def holds_image(value: Any) -> bool:
    """Whether a metadata value (bytes, text, or a tuple, list or dict of them) holds an
    embedded image stream, raw, base64 or hex encoded."""
    if isinstance(value, dict):
        return any(holds_image(v) for v in value.values())
    if isinstance(value, (tuple, list)):
        return any(holds_image(v) for v in value)
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogateescape")
    if not isinstance(value, (bytes, bytearray)):
        return False
    data = bytes(value)
    if any(signature in data for signature in _RAW_IMAGE_SIGNATURES):
        return True
    # Encoded streams are often broken into lines (XMP, ImageMagick's hex): join them first.
    joined = data.translate(None, _WHITESPACE)
    lowered = joined.lower()
    return (any(signature in joined for signature in _BASE64_IMAGE_SIGNATURES)
            or any(signature in lowered for signature in _HEX_IMAGE_SIGNATURES))


def _image_free(name: str, value: Any, dropped: list[str]) -> bool:
    """Whether ``value``, which a policy keeps, holds no image; if it holds one, ``name`` goes
    to ``dropped``."""
    if holds_image(value):
        dropped.append(f"{name} (holds an image)")
        return False
    return True


def check_keep(keep: str) -> str:
    if keep not in KEEP_METADATA:
        raise InvalidSettingError(f"keep_metadata must be one of {', '.join(KEEP_METADATA)}, got {keep!r}")
    return keep


def _tag_name(tag: int, gps: bool = False) -> str:
    names = ExifTags.GPSTAGS if gps else ExifTags.TAGS
    return names.get(tag, f"tag {tag:#06x}")


def filter_exif(exif: Image.Exif, keep: str = "survey", tiff: bool = False) -> tuple[Image.Exif, list[str]]:
    """A fresh ``Image.Exif`` holding what policy ``keep`` lets through, and the names dropped.

    The orientation becomes 1 (the pixels are stored upright). The EXIF thumbnail (IFD1) is
    never carried: it shows the photo as it was before sanitizing. With ``tiff`` the tags that
    describe the stored pixels (strips, compression, ...) are left to the writer.
    """
    check_keep(keep)
    dropped: list[str] = []
    if not tiff and exif.get_ifd(ExifTags.IFD.IFD1):  # (a TIFF's IFD1 is its next page)
        dropped.append("EXIF thumbnail")
    kept = Image.Exif()
    if keep == "none":
        dropped += [_tag_name(tag) for tag in exif if not (tiff and tag in TIFF_LAYOUT_TAGS)]
        return kept, sorted(set(dropped))

    def allowed(tag: int) -> bool:
        return keep == "all" or tag in SURVEY_EXIF_TAGS or (tiff and tag in _GEOTIFF_TAGS)

    def admit(tag: int, value: Any, gps: bool = False) -> bool:
        """Whether (tag, value) is kept; what is not is named in ``dropped``."""
        if not (gps or allowed(tag)):
            dropped.append(_tag_name(tag))
            return False
        return _image_free(_tag_name(tag, gps), value, dropped)

    for tag, value in exif.items():
        if tiff and tag in TIFF_LAYOUT_TAGS:
            continue
        if tag in (_EXIF_IFD, _GPS_IFD):
            continue  # sub-IFDs below
        if admit(tag, value):
            kept[tag] = value
    sub = {tag: value for tag, value in _sub_ifd(exif, _EXIF_IFD).items() if tag != _INTEROP_IFD}
    if keep == "all" and _MAKER_NOTE not in sub and exif.get_ifd(_MAKER_NOTE):
        dropped.append("MakerNote")  # Pillow hands a parsed MakerNote back, not its bytes
    kept_sub = {tag: value for tag, value in sub.items() if admit(tag, value)}
    if kept_sub:
        kept[_EXIF_IFD] = kept_sub
    gps = _sub_ifd(exif, _GPS_IFD)
    for tag in [tag for tag in gps if keep != "all" and tag in SURVEY_GPS_DROPPED]:
        del gps[tag]
        dropped.append(_tag_name(tag, gps=True))
    gps = {tag: value for tag, value in gps.items() if admit(tag, value, gps=True)}
    if gps:
        kept[_GPS_IFD] = gps
    if ORIENTATION in kept:
        kept[ORIENTATION] = 1
    return kept, sorted(set(dropped))


def _sub_ifd(exif: Image.Exif, tag: int) -> dict[int, Any]:
    value = exif.get(tag)
    # Built in memory, a sub-IFD is the dict itself; read from a file, an offset to parse.
    return dict(value) if isinstance(value, dict) else dict(exif.get_ifd(tag))


def filter_geotiff_tags(tags: Mapping[str, str], keep: str = "survey") -> tuple[dict[str, str], list[str]]:
    """GDAL metadata items (``rasterio`` default-domain tags) that policy ``keep`` lets through.

    The georeferencing itself (CRS, transform, nodata) lives in the profile, not in these
    tags, and is always kept.
    """
    check_keep(keep)
    kept: dict[str, str] = {}
    dropped: list[str] = []
    for key, value in tags.items():
        if not (keep == "all" or (keep == "survey" and key in _SURVEY_GDAL_TAGS)):
            dropped.append(key)
        elif _image_free(key, value, dropped):
            kept[key] = value
    return kept, sorted(dropped)


def save_options(path: Path, fmt: str, keep: str = "survey") -> tuple[dict[str, Any], list[str]]:
    """Save keywords that carry the input's metadata, as policy ``keep`` allows, over to an
    RGB output of format ``fmt`` (JPEG, PNG, TIFF); and the names of what was dropped.

    JPEG outputs also keep the input's quantisation tables and subsampling: outside what was
    changed, the only loss is one re-encode at the quality the photo already had.
    """
    check_keep(keep)
    with Image.open(path) as source:
        info = dict(source.info)
        options: dict[str, Any] = {}
        dropped: list[str] = []
        profile = info.get("icc_profile")
        space = _profile_space(profile) if profile else None
        if space == "RGB":
            options["icc_profile"] = profile
        elif profile:  # a grey or CMYK profile would misstate the RGB output's values
            dropped.append(f"ICC profile ({space or 'unknown'} colour space; the output is RGB)")
        if info.get("dpi") and keep != "none":
            options["dpi"] = info["dpi"]
        frames = getattr(source, "n_frames", 1)
        if frames > 1:
            dropped.append(f"{frames - 1} extra frame(s)")
        exif, exif_dropped = filter_exif(source.getexif(), keep, tiff=fmt == "TIFF")
        dropped += exif_dropped
        if fmt == "TIFF":
            options.update(_tiff_encoding(exif, info))
        elif len(exif):
            options["exif"] = exif.tobytes()
        if fmt == "JPEG":
            options.update(_jpeg_encoding(source))
            # XMP and the comment can be rewritten; APP13 (Photoshop/IPTC) cannot.
            for key, label in (("xmp", "XMP"), ("comment", "JPEG comment"), ("photoshop", "Photoshop/IPTC")):
                value = info.get(key)
                if not value:
                    continue
                if keep != "all" or key == "photoshop":
                    dropped.append(label)
                elif _image_free(label, value, dropped):
                    options[key] = value
        text = getattr(source, "text", None) if fmt == "PNG" else None
        if text and keep == "all":
            chunks = PngImagePlugin.PngInfo()
            for key, value in text.items():
                # e.g. ImageMagick's "Raw profile type exif", thumbnail and all
                if _image_free(f"PNG text {key!r}", value, dropped):
                    chunks.add_itxt(key, value)
            options["pnginfo"] = chunks
        elif text:
            dropped += [f"PNG text {key!r}" for key in text]  # XMP included ("XML:com.adobe.xmp")
    return options, sorted(set(dropped))


def _profile_space(profile: bytes) -> str:
    """The data colour space of an ICC profile, from its header ("RGB", "GRAY", "CMYK", ...)."""
    return profile[16:20].decode("latin-1").strip() if len(profile) >= 20 else ""


def _jpeg_encoding(source: Image.Image) -> dict[str, Any]:
    options: dict[str, Any] = {}
    tables = getattr(source, "quantization", None)
    if tables:
        options["qtables"] = [tables[k] for k in sorted(tables)]
    else:
        options["quality"] = JPEG_QUALITY
    sampling = JpegImagePlugin.get_sampling(source) if source.format == "JPEG" else -1
    if sampling >= 0:
        options["subsampling"] = sampling
    return options


_LOSSLESS_TIFF = frozenset({"raw", "tiff_lzw", "tiff_adobe_deflate", "tiff_deflate", "packbits"})


def _tiff_encoding(exif: Image.Exif, info: dict[str, Any]) -> dict[str, Any]:
    compression = info.get("compression", "raw")
    if compression not in _LOSSLESS_TIFF:
        compression = "tiff_adobe_deflate"  # lossy or bilevel input: store the RGB losslessly
    if _EXIF_IFD in exif or _GPS_IFD in exif:
        # Pillow's libtiff writer (every compression but raw) cannot write the EXIF/GPS
        # sub-IFDs; keeping the GPS matters more than the file size.
        compression = "raw"
    return {"exif": exif.tobytes(), "compression": compression}
