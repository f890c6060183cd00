"""Reading, normalising and writing single images.

Everything that touches pixels on disk goes through this module so that the
rest of the project can assume RGB images and tensors in [-1, 1].
"""

from __future__ import annotations

import math
import mmap
import os
import warnings
from pathlib import Path
from typing import Callable, Iterable, Sequence, TypeVar

import numpy as np
import torch
from PIL import Image, ImageOps

from ..errors import ImgUnlearnError, InvalidSettingError
from ..fileio import atomic_write
from ..geometry import boxes_mask

__all__ = [
    "IMAGE_EXTENSIONS",
    "Box",
    "ImageLoadError",
    "DEFAULT_MAX_MEGAPIXELS",
    "check_size",
    "open_rgb",
    "open_rgb_array",
    "image_from_array",
    "rgb_array",
    "fit_to_square",
    "image_to_tensor",
    "tensor_to_image",
    "load_image_tensor",
    "save_png_atomic",
]

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
)

Box = tuple[float, float, float, float]
T = TypeVar("T")

_WHITE = (255, 255, 255)
# Photos above this are refused before decoding: a few hundred KB of PNG can decode to
# gigabytes. 150 MP covers every survey camera (a 100 MP medium format frame included);
# raise it per call (``--max-megapixels``) for a genuine larger mosaic.
DEFAULT_MAX_MEGAPIXELS = 150.0


class ImageLoadError(ImgUnlearnError, ValueError):
    """An image file exists but cannot be decoded into pixels."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def _composite_on_white(image: Image.Image) -> Image.Image:
    # Transparent pixels have no meaningful colour; white is the conventional
    # background and keeps e.g. logos on transparent PNGs recognisable.
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, _WHITE + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _grey_array_to_rgb(values: np.ndarray) -> Image.Image:
    grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return Image.fromarray(np.stack([grey] * 3, axis=-1))


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert a decoded PIL image of any supported mode to RGB."""
    mode = image.mode
    if mode == "RGB":
        return image.copy()
    if mode in ("RGBA", "RGBa", "LA", "La", "PA"):
        return _composite_on_white(image)
    if mode == "P":
        # Palette images may mark one index (or per-index alpha) transparent.
        if "transparency" in image.info:
            return _composite_on_white(image)
        return image.convert("RGB")
    if mode.startswith("I;16"):
        # PIL's own I;16 -> RGB conversion clips instead of scaling, so do it
        # by hand: 65535 / 257 == 255 maps the full 16-bit range onto 8 bits.
        values = np.asarray(image).astype(np.float64)
        return _grey_array_to_rgb(values / 257.0)
    if mode == "I":
        values = np.asarray(image).astype(np.float64)
        peak = float(values.max()) if values.size else 0.0
        # 32-bit containers usually hold 16-bit data (e.g. TIFF/PNG scans).
        divisor = 257.0 if peak <= 65535 else (2**31 - 1) / 255.0
        return _grey_array_to_rgb(np.clip(values, 0, None) / divisor)
    if mode == "F":
        values = np.nan_to_num(np.asarray(image).astype(np.float64), nan=0.0)
        peak = float(values.max()) if values.size else 0.0
        if peak <= 1.0:
            values = np.clip(values, 0.0, 1.0) * 255.0
        return _grey_array_to_rgb(values)
    # L, 1, CMYK, YCbCr, LAB, HSV, ...: PIL's conversion is correct for these.
    return image.convert("RGB")


def check_size(path: str | os.PathLike[str], width: int, height: int,
               max_megapixels: float | None = DEFAULT_MAX_MEGAPIXELS) -> None:
    """Refuse (``ImageLoadError``) an image above ``max_megapixels`` before it is decoded."""
    if max_megapixels is not None and width * height > max_megapixels * 1e6:
        raise ImageLoadError(path, f"{width}x{height} pixels ({width * height / 1e6:.0f} MP) is above the limit of "
                                   f"{max_megapixels:g} MP; raise --max-megapixels if the image is genuine")


def _allow_pillow(max_megapixels: float | None) -> None:
    # Pillow refuses anything above 2 x MAX_IMAGE_PIXELS (about 179 MP) on its own; our limit,
    # checked first, is the one that counts, so a user who raises it is not stopped there.
    limit = None if max_megapixels is None else int(max_megapixels * 1e6)
    if Image.MAX_IMAGE_PIXELS is not None and (limit is None or limit > Image.MAX_IMAGE_PIXELS):
        Image.MAX_IMAGE_PIXELS = limit


def _decode_rgb(path: str | os.PathLike[str], max_megapixels: float | None,
                take: Callable[[Image.Image, bool], T]) -> T:
    """Open, size-check, decode and orient the file, make it RGB and hand it to ``take``
    (with whether it is the opened image itself, whose pixels go when the file is closed)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    _allow_pillow(max_megapixels)
    try:
        with warnings.catch_warnings():
            # Pillow warns above ~89 MP; the limit above is ours to set.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(path)
        with opened:
            check_size(path, opened.width, opened.height, max_megapixels)
            # Decode now so truncated/corrupt data fails here, not later.
            opened.load()
            # In place: an upright photo is not copied (a 100 MP photo is 400 MB in PIL).
            ImageOps.exif_transpose(opened, in_place=True)
            rgb = opened if opened.mode == "RGB" else to_rgb(opened)
            return take(rgb, rgb is opened)
    except ImageLoadError:
        raise
    except Exception as exc:  # PIL raises many unrelated exception types.
        raise ImageLoadError(path, f"cannot read image ({exc})") from exc


def open_rgb(path: str | os.PathLike[str], max_megapixels: float | None = DEFAULT_MAX_MEGAPIXELS) -> Image.Image:
    """Open an image file, fully decode it and return it as an RGB image.

    EXIF orientation is applied so the pixels match what viewers show. An image above
    ``max_megapixels`` is refused from its header, before decoding (``None``: no limit).
    The file is only read, never modified.
    """
    # The opened image is copied: it must outlive the closed file.
    return _decode_rgb(path, max_megapixels, lambda image, opened: image.copy() if opened else image)


# Arrays from this size up get pages of their own (as glibc's malloc does from 32 MB);
# below it a mapping per tile would cost a syscall and a page each for nothing.
MAPPED_ARRAY_BYTES = 16 * 2**20


def _mapped_array(shape: tuple[int, ...]) -> np.ndarray:
    # A zeroed uint8 array on pages of its own (an anonymous mmap), so that
    # ``image_from_array`` can hand them back to the system row by row.
    size = math.prod(shape)
    # Private: shared anonymous pages would only leave this process's count, not the memory.
    buffer = mmap.mmap(-1, max(size, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return np.frombuffer(buffer, np.uint8, count=size).reshape(shape)


def image_from_array(array: np.ndarray, rows: int = 256) -> Image.Image:
    """An RGB PIL image of an (H, W, 3) uint8 array, consuming the array.

    ``Image.fromarray`` holds the photo twice (the array, and PIL's 4 bytes a pixel): 0.76 GB
    more at the peak for a 108 MP photo. Here PIL's image is left uninitialised (its pages
    are not resident until written), filled a band of rows at a time, and where the array
    came from ``rgb_array``/``open_rgb_array`` (``MAPPED_ARRAY_BYTES`` or more) each band's
    pages are returned to the system once copied: those rows of ``array`` read as zeros
    afterwards, so do not use it again. Other arrays are only read.
    """
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise InvalidSettingError(f"expected an (H, W, 3) uint8 array, got {array.dtype} {array.shape}")
    height, width = array.shape[:2]
    image = Image.new("RGB", (width, height), None)
    mapped = _own_mapping(array)
    row_bytes = width * 3
    released = 0
    for top in range(0, height, rows):
        bottom = min(top + rows, height)
        image.paste(Image.fromarray(array[top:bottom]), (0, top))
        if mapped is not None:
            end = bottom * row_bytes // mmap.PAGESIZE * mmap.PAGESIZE
            if end > released:
                mapped.madvise(mmap.MADV_DONTNEED, released, end - released)
                released = end
    return image


def _own_mapping(array: np.ndarray) -> mmap.mmap | None:
    """The anonymous mmap ``array`` covers from its first byte, C-contiguous, or None."""
    base = array.base
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview):  # numpy keeps a view of the buffer it was given
        base = base.obj
    if not isinstance(base, mmap.mmap) or not array.flags.c_contiguous:
        return None
    start = np.frombuffer(base, np.uint8, count=1).__array_interface__["data"][0]
    return base if array.__array_interface__["data"][0] == start else None


def open_rgb_array(path: str | os.PathLike[str],
                   max_megapixels: float | None = DEFAULT_MAX_MEGAPIXELS) -> np.ndarray:
    """``open_rgb`` as a writeable (H, W, 3) uint8 array, holding the photo in PIL once and
    never as a second PIL copy (for photos of any size; ``rgb_array`` says how)."""
    return _decode_rgb(path, max_megapixels, lambda image, opened: rgb_array(image))


def rgb_array(image: Image.Image, rows: int = 256) -> np.ndarray:
    """A writeable (H, W, 3) uint8 copy of an RGB image, converted ``rows`` at a time.

    ``np.asarray(image)`` goes through ``image.tobytes()``, which gathers the pixels in
    chunks and joins them: twice the photo's bytes on top of PIL's own 4 bytes a pixel
    (1.06 GB at the peak for a 108 MP photo). Band by band, only the array is added, and
    from ``MAPPED_ARRAY_BYTES`` up it sits on pages of its own that ``image_from_array`` can
    hand back.
    """
    if image.mode != "RGB":
        raise InvalidSettingError(f"rgb_array needs an RGB image, got mode {image.mode}")
    shape = (image.height, image.width, 3)
    if math.prod(shape) < MAPPED_ARRAY_BYTES:
        return np.array(image)  # a small image: the joined copy costs nothing worth a mapping
    array = _mapped_array(shape)
    for top in range(0, image.height, rows):
        bottom = min(top + rows, image.height)
        array[top:bottom] = np.asarray(image.crop((0, top, image.width, bottom)))
    return array


def fit_to_square(
    image: Image.Image, size: int
) -> tuple[Image.Image, Callable[[Sequence[float]], Box]]:
    """Resize so the shorter side is ``size`` and centre-crop to a square.

    Returns the new image and a function that maps a box ``(x0, y0, x1, y1)``
    given in original pixel coordinates into the new image's coordinates.
    """
    if size <= 0:
        raise InvalidSettingError(f"size must be positive, got {size}")
    width, height = image.size
    if width <= 0 or height <= 0:
        raise InvalidSettingError(f"cannot resize an empty image ({width}x{height})")
    scale = size / min(width, height)
    new_w = max(size, round(width * scale))
    new_h = max(size, round(height * scale))
    left = (new_w - size) // 2
    top = (new_h - size) // 2
    # Per-axis factors, because rounding can make them differ slightly.
    sx = new_w / width
    sy = new_h / height
    # Only the square that is kept is resampled (PIL's filters are antialiased): a thin
    # strip is never blown up whole (1 x 100000 px would become 128 x 12.8 M first).
    source_box = (left / sx, top / sy, (left + size) / sx, (top + size) / sy)
    cropped = image.resize((size, size), Image.Resampling.BICUBIC, box=source_box)

    def transform_box(box: Sequence[float]) -> Box:
        x0, y0, x1, y1 = (float(v) for v in box)

        def clip(v: float) -> float:
            return min(max(v, 0.0), float(size))

        return (
            clip(x0 * sx - left),
            clip(y0 * sy - top),
            clip(x1 * sx - left),
            clip(y1 * sy - top),
        )

    return cropped, transform_box


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float32 tensor of shape (3, H, W) in [-1, 1]."""
    if image.mode != "RGB":
        raise InvalidSettingError(f"expected an RGB image, got mode {image.mode!r} (use open_rgb)")
    array = np.asarray(image, dtype=np.uint8)  # (H, W, 3), channels R, G, B
    tensor = torch.from_numpy(array.copy()).permute(2, 0, 1).to(torch.float32)
    return tensor / 127.5 - 1.0


def tensor_to_image(tensor: torch.Tensor) -> Image.Image:
    """Tensor of shape (3, H, W) in [-1, 1] -> RGB PIL image (values clamped)."""
    if tensor.ndim != 3 or tensor.shape[0] != 3:
        raise InvalidSettingError(f"expected a tensor of shape (3, H, W), got {tuple(tensor.shape)}")
    values = tensor.detach().to("cpu", torch.float32)
    values = torch.nan_to_num(values, nan=0.0).clamp(-1.0, 1.0)
    pixels = ((values + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    array = pixels.permute(1, 2, 0).contiguous().numpy()
    return Image.fromarray(array)  # (H, W, 3) uint8 is inferred as RGB


def load_image_tensor(
    path: str | os.PathLike[str],
    size: int,
    boxes: Iterable[Sequence[float]] = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load an image as a (3, size, size) tensor plus a (1, size, size) box mask.

    The mask is 1 on the union of ``boxes`` (original pixel coordinates) after
    the same resize/crop as the image, and 0 elsewhere.
    """
    image, transform_box = fit_to_square(open_rgb(path), size)
    tensor = image_to_tensor(image)
    # The tolerance keeps 10.0000001 (after the resize) from covering an extra row or column.
    return tensor, boxes_mask([transform_box(box) for box in boxes], size, size, tolerance=1e-6)


def save_png_atomic(image: Image.Image, path: str | os.PathLike[str]) -> None:
    """Write ``image`` as PNG so that ``path`` is never left half-written."""
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))
