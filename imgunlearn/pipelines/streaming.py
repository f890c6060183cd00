"""Tiles through a generator in bounded memory, for photos of any size.

A photo is read tile by tile from its own pixels (a float tensor, or a uint8/uint16 array
straight from the decoder) and the generator's tiles are blended on the device one row of
tiles at a time: a band as tall as a tile and as wide as the photo. Rows no later tile
touches are written out and the band moves down, so memory grows with the photo's width,
not its area; the output is written into a buffer of the input's own type.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..data.tiling import blend_ramp, extract_tiles, mirror_index, pad_to
from ..errors import InvalidSettingError

__all__ = ["ArrayCanvas", "Canvas", "DeviceArrayCanvas", "TensorCanvas", "blend_rows", "make_canvas"]

Position = tuple[int, int]


class Canvas:
    """One image being sanitized: tiles are read from it, finished rows written back.

    ``padded_height`` x ``padded_width`` is the image mirror-padded to a multiple of the
    generator's factor (and to at least one tile); tiles may reach into that padding, writes
    are cropped to the image.
    """

    height: int
    width: int
    padded_height: int
    padded_width: int

    def tiles(self, positions: Sequence[Position], tile: tuple[int, int]) -> torch.Tensor:
        """(N, 3, th, tw) float32 tiles in [-1, 1] at ``positions`` of the padded image."""
        raise NotImplementedError

    def write(self, top: int, rows: torch.Tensor, weight: torch.Tensor | None, left: int = 0) -> None:
        """Put generated ``rows`` (3, r, w) in [-1, 1] at image row ``top`` and column ``left``
        (w reaches at most the padded width): all of them, or blended with the input by
        ``weight`` (r, w) where it is > 0."""
        raise NotImplementedError

    def result(self):
        raise NotImplementedError

    def _sizes(self, height: int, width: int, factor: int) -> None:
        if height <= 0 or width <= 0:
            raise InvalidSettingError(f"image size must be positive, got {height}x{width}")
        self.height, self.width = height, width
        # Mirror-padded to a multiple of the factor so tiles (and the latent grid) fit exactly.
        self.padded_height = math.ceil(height / factor) * factor
        self.padded_width = math.ceil(width / factor) * factor


class TensorCanvas(Canvas):
    """A (3, H, W) float tensor in [-1, 1]; the result is a float tensor (outputs unquantised)."""

    def __init__(self, image: torch.Tensor, factor: int, keep_input: bool) -> None:
        self._sizes(image.shape[-2], image.shape[-1], factor)
        self.source = image.detach().to("cpu", torch.float32)
        self.padded = pad_to(self.source, self.padded_height, self.padded_width)
        self.output = self.source.clone() if keep_input else torch.zeros_like(self.source)

    def tiles(self, positions: Sequence[Position], tile: tuple[int, int]) -> torch.Tensor:
        return extract_tiles(self.padded, positions, tile)

    def write(self, top: int, rows: torch.Tensor, weight: torch.Tensor | None, left: int = 0) -> None:
        bottom, right = min(self.height, top + rows.shape[1]), min(self.width, left + rows.shape[2])
        if bottom <= top or right <= left:
            return
        generated = rows[:, : bottom - top, : right - left].to("cpu", torch.float32).clamp(-1.0, 1.0)
        target = self.output[:, top:bottom, left:right]
        if weight is None:
            target.copy_(generated)
            return
        weight = weight[: bottom - top, : right - left].to("cpu", torch.float32)
        inside = weight > 0
        # Only inside the map: every other value stays the input's, bit for bit.
        x = target[:, inside]
        target[:, inside] = x + weight[inside] * (generated[:, inside] - x)

    def result(self) -> torch.Tensor:
        return self.output


class ArrayCanvas(Canvas):
    """An (H, W, 3) uint8 or uint16 array, as decoders give it; the result is the same type,
    so a 100 MP photo is never held as floats."""

    def __init__(self, array: np.ndarray, factor: int, keep_input: bool, in_place: bool = False) -> None:
        if array.ndim != 3 or array.shape[2] != 3 or array.dtype not in (np.uint8, np.uint16):
            raise InvalidSettingError(f"expected an (H, W, 3) uint8 or uint16 array, got {array.shape} {array.dtype}")
        self._sizes(array.shape[0], array.shape[1], factor)
        self.source = array
        self.half_peak = float(np.iinfo(array.dtype).max) / 2.0
        self.rows = mirror_index(self.height, self.padded_height).numpy()
        self.cols = mirror_index(self.width, self.padded_width).numpy()
        # In place is safe: blend_rows hands rows over top down, and only once no later tile
        # reads them (mirrored padding lies within the last row of tiles).
        if in_place and not array.flags.writeable:
            raise InvalidSettingError("in_place needs a writeable array")
        self.output = array if in_place else (array.copy() if keep_input else np.empty_like(array))

    def _inside(self, top: int, left: int, tile: tuple[int, int]) -> bool:
        """Whether the tile lies within the photo (a plain slice), not in its mirrored padding."""
        return top + tile[0] <= self.height and left + tile[1] <= self.width

    def tiles(self, positions: Sequence[Position], tile: tuple[int, int]) -> torch.Tensor:
        th, tw = tile
        blocks = [self.source[top : top + th, left : left + tw] if self._inside(top, left, tile)
                  else self.source[np.ix_(self.rows[top : top + th], self.cols[left : left + tw])]
                  for top, left in positions]
        stacked = torch.from_numpy(np.ascontiguousarray(np.stack(blocks)).astype(np.float32))
        return stacked.permute(0, 3, 1, 2) / self.half_peak - 1.0

    def _values(self, top: int, left: int, rows: torch.Tensor) -> tuple[int, int, torch.Tensor]:
        """The image rows ``top:bottom`` and columns ``left:right`` these generated rows cover,
        as (r, w, 3) float values on the array's scale (0..max); empty (``bottom <= top`` or
        ``right <= left``) when they lie wholly in the padding."""
        bottom, right = min(self.height, top + rows.shape[1]), min(self.width, left + rows.shape[2])
        values = rows[:, : max(0, bottom - top), : max(0, right - left)]
        return bottom, right, ((values.float().clamp(-1.0, 1.0) + 1.0) * self.half_peak).permute(1, 2, 0)

    def write(self, top: int, rows: torch.Tensor, weight: torch.Tensor | None, left: int = 0) -> None:
        bottom, right, values = self._values(top, left, rows)
        if bottom <= top or right <= left:
            return
        target = self.output[top:bottom, left:right]
        if weight is None:
            target[...] = values.round().to("cpu").numpy().astype(self.output.dtype)
            return
        weight = weight[: bottom - top, : right - left]
        inside = (weight > 0).cpu().numpy()
        if not inside.any():
            return
        x = torch.from_numpy(target[inside].astype(np.float32)).to(values.device)
        w = weight[torch.from_numpy(inside).to(weight.device)].float()[:, None]
        blended = (x + w * (values[torch.from_numpy(inside).to(values.device)] - x)).round()
        target[inside] = blended.cpu().numpy().astype(self.output.dtype)

    def result(self) -> np.ndarray:
        return self.output


class DeviceArrayCanvas(ArrayCanvas):
    """An :class:`ArrayCanvas` whose pixels live on an accelerator: the photo goes up once as
    integers (a quarter of float32's bytes), tiles are cut, converted and composited there,
    and the result comes back once. On a GPU this takes the host out of the tile loop, where
    cutting and converting tiles cost more than the generator."""

    def __init__(self, array: np.ndarray, factor: int, keep_input: bool, device: torch.device,
                 in_place: bool = False) -> None:
        # The host side: the output array, as ArrayCanvas chooses it (no copy of the input is
        # needed there, since every row comes back from the device at the end).
        super().__init__(array, factor, keep_input=False, in_place=in_place)
        # A copy, unless in place (on a CPU ``to`` would otherwise share the input's memory).
        # A read-only array is never written through here: torch's warning about it is moot.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            pixels = torch.from_numpy(np.ascontiguousarray(array)).to(device, copy=not in_place)
        # uint16 has few kernels; int32 holds every value and converts back exactly.
        self.pixels = pixels.to(torch.int32) if array.dtype == np.uint16 else pixels
        self.rows_index = torch.from_numpy(self.rows).to(device)
        self.cols_index = torch.from_numpy(self.cols).to(device)
        self.device = torch.device(device)

    def tiles(self, positions: Sequence[Position], tile: tuple[int, int]) -> torch.Tensor:
        th, tw = tile
        blocks = [self.pixels[top : top + th, left : left + tw] if self._inside(top, left, tile)
                  else self.pixels[self.rows_index[top : top + th]][:, self.cols_index[left : left + tw]]
                  for top, left in positions]
        return torch.stack(blocks).permute(0, 3, 1, 2).float() / self.half_peak - 1.0

    def write(self, top: int, rows: torch.Tensor, weight: torch.Tensor | None, left: int = 0) -> None:
        # Rows are written into the device copy of the input: blend_rows hands them over only
        # once no later tile reads them (the argument that makes ``in_place`` safe).
        bottom, right, values = self._values(top, left, rows)
        if bottom <= top or right <= left:
            return
        values = values.to(self.device)
        target = self.pixels[top:bottom, left:right]
        if weight is None:
            target.copy_(values.round())
            return
        weight = weight[: bottom - top, : right - left].to(self.device, torch.float32)[..., None]
        x = target.float()
        # torch.where, not arithmetic, outside the map: those values stay the input's, bit for bit.
        target.copy_(torch.where(weight > 0, (x + weight * (values - x)).round(), x))

    def result(self) -> np.ndarray:
        if self.output.dtype == np.uint16:  # int32 -> int16 keeps the 16 bits, viewed back as uint16
            torch.from_numpy(self.output.view(np.int16)).copy_(self.pixels.to(torch.int16))
        else:
            torch.from_numpy(self.output).copy_(self.pixels)
        return self.output


def make_canvas(image: torch.Tensor | np.ndarray, factor: int, keep_input: bool, in_place: bool = False,
                device: str | torch.device = "cpu") -> Canvas:
    """The canvas for a float tensor or an integer array; ``keep_input`` starts the output as
    a copy of the input (compositing) rather than empty (every row gets written);
    ``in_place`` writes an array's output into the array itself (no second copy). An array
    bound for an accelerator ``device`` goes there whole (:class:`DeviceArrayCanvas`)."""
    if isinstance(image, np.ndarray):
        if torch.device(device).type != "cpu":
            return DeviceArrayCanvas(image, factor, keep_input, torch.device(device), in_place)
        return ArrayCanvas(image, factor, keep_input, in_place)
    return TensorCanvas(image, factor, keep_input)


def blend_rows(
    canvas: Canvas,
    positions: Sequence[Position],
    tile: tuple[int, int],
    overlap: int,
    run: Callable[[torch.Tensor], torch.Tensor],
    on_rows: Callable[[int, torch.Tensor], None],
    *,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype,
    channels: int = 3,
    scale: int = 1,
    with_positions: bool = False,
) -> None:
    """Run ``run`` over the tiles at ``positions`` (pixel coordinates), one row of tiles at a
    time, and hand each band of finished rows to ``on_rows(top, blended)``. With
    ``with_positions``, ``run`` is also given the batch's positions (``run(tiles, positions)``).

    ``run`` maps (N, 3, th, tw) tiles to (N, channels, th/scale, tw/scale) outputs (``scale``
    > 1 for a latent-grid output); rows, tops and widths given to ``on_rows`` are in output
    units. Tiles are blended with linear ramps over the overlap, as
    :class:`~imgunlearn.data.tiling.TileAccumulator` does, in float32 on ``device``.
    Rows no selected tile covers are never handed over.
    """
    if not positions:
        return
    th, tw = tile[0] // scale, tile[1] // scale
    window = torch.outer(blend_ramp(th, overlap // scale), blend_ramp(tw, overlap // scale)).to(device, torch.float32)
    width = canvas.padded_width // scale
    total = torch.zeros(channels, th, width, device=device)
    weight = torch.zeros(1, th, width, device=device)
    by_top: dict[int, list[int]] = {}
    for top, left in positions:
        by_top.setdefault(top, []).append(left)
    tops = sorted(by_top)
    band_top = tops[0] // scale
    for index, top in enumerate(tops):
        shift = top // scale - band_top
        if shift:  # move the band down to this row of tiles; rows above it were handed over
            keep = max(0, th - shift)
            total = torch.cat([total[:, th - keep :], total.new_zeros(channels, th - keep, width)], dim=1)
            weight = torch.cat([weight[:, th - keep :], weight.new_zeros(1, th - keep, width)], dim=1)
            band_top = top // scale
        lefts = by_top[top]
        for start in range(0, len(lefts), batch_size):
            chunk = lefts[start : start + batch_size]
            where = [(top, left) for left in chunk]
            tiles = canvas.tiles(where, tile).to(device, dtype)
            outputs = (run(tiles, where) if with_positions else run(tiles)).float()
            for output, left in zip(outputs, chunk):
                column = left // scale
                total[:, :, column : column + tw] += output * window
                weight[:, :, column : column + tw] += window
        # Later rows of tiles start at the next top: everything above it is final.
        finished = th if index + 1 == len(tops) else min(th, (tops[index + 1] - top) // scale)
        on_rows(band_top, total[:, :finished] / weight[:, :finished].clamp_min(1e-12))
