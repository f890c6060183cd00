"""Overlapping tiles for images larger than a generator's comfortable input.

A large photo is cut into tiles that overlap by ``overlap`` pixels; the last row and column
of tiles are aligned to the image's edge so every pixel is covered without padding. Each
tile's output is weighted by a window that ramps up linearly over the middle of the overlap
at each side, and the stitched image is the weight-normalised sum, so neighbouring tiles fade
into each other instead of meeting at a visible seam. The outer part of each overlap gets
almost no weight: a convolutional generator's outermost rows and columns are its worst
(zero padding, and diffusers' downsamplers pad only at the bottom and right), and even a small
weight there draws lines along the tile edges on flat areas.

Images smaller than a tile (in either direction) are padded at the bottom/right by mirror
reflection up to the tile size; reflection keeps the padded area's statistics close to the
image's (a constant border would be an edge the generator reproduces and normalisation
layers would see). ``stitch`` crops the padding away again.
"""

from __future__ import annotations

import math

from typing import Sequence

import torch

from ..errors import InvalidSettingError

__all__ = ["TileAccumulator", "extract_tiles", "match_tile_tone", "pad_to", "seam_figures", "stitch", "tile_positions"]

def _pair(tile: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(tile, int):
        return tile, tile
    th, tw = (int(v) for v in tile)
    return th, tw


def tile_starts(length: int, tile: int, overlap: int, *, spread: bool = False) -> list[int]:
    """Where tiles of side ``tile`` start along a side of ``length``, covering it with at
    least ``overlap`` between neighbours. Regular (default): every ``tile - overlap``, and the
    last tile ends at the edge (it may overlap its neighbour by more), so starts stay on the
    stride's grid, as the generator's latent cells need. ``spread``: the same number of tiles
    spread evenly (face detection, where a last tile almost on top of the one before wastes a pass)."""
    if length <= tile:
        return [0]
    if spread:
        count = math.ceil((length - overlap) / (tile - overlap))
        return [round(i * (length - tile) / (count - 1)) for i in range(count)]
    starts = list(range(0, length - tile, tile - overlap))
    starts.append(length - tile)
    return starts


def tile_positions(
    height: int, width: int, tile: int | tuple[int, int], overlap: int
) -> list[tuple[int, int]]:
    """``(top, left)`` of every tile, row by row, covering a ``height`` x ``width`` image.

    ``tile`` is the tile side (or ``(tile_height, tile_width)``); tiles advance by
    ``tile - overlap``. A side no longer than the tile gets a single tile at 0 (a shorter
    side is padded, see :func:`extract_tiles`).
    """
    th, tw = _pair(tile)
    if height <= 0 or width <= 0:
        raise InvalidSettingError(f"image size must be positive, got {height}x{width}")
    if th <= 0 or tw <= 0:
        raise InvalidSettingError(f"tile size must be positive, got {th}x{tw}")
    if overlap < 0:
        raise InvalidSettingError(f"overlap must not be negative, got {overlap}")
    # A side covered by a single tile has no neighbour to overlap, so only check the others.
    for length, side in ((height, th), (width, tw)):
        if length > side and overlap >= side:
            raise InvalidSettingError(f"overlap {overlap} must be smaller than the tile ({th}x{tw})")
    return [(top, left) for top in tile_starts(height, th, overlap) for left in tile_starts(width, tw, overlap)]


def mirror_index(length: int, target: int) -> torch.Tensor:
    """Indices 0..target-1 folded back into 0..length-1 by repeated mirror reflection."""
    index = torch.arange(target)
    if length == 1:
        return torch.zeros_like(index)
    period = 2 * (length - 1)
    folded = index % period
    return torch.where(folded < length, folded, period - folded)


def pad_to(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pad a ``(..., H, W)`` tensor at the bottom/right to at least ``height`` x ``width``.

    Mirror reflection of any size (``F.pad``'s reflect mode needs the pad smaller than the
    image, which a 20 px image in a 256 px tile is not).
    """
    h, w = image.shape[-2:]
    if h >= height and w >= width:
        return image
    rows = mirror_index(h, max(h, height)).to(image.device)
    cols = mirror_index(w, max(w, width)).to(image.device)
    return image.index_select(-2, rows).index_select(-1, cols)


def extract_tiles(
    image: torch.Tensor, positions: Sequence[tuple[int, int]], tile: int | tuple[int, int]
) -> torch.Tensor:
    """Cut ``(N, C, tile_h, tile_w)`` tiles at ``positions`` out of a ``(C, H, W)`` image."""
    if image.ndim != 3:
        raise InvalidSettingError(f"expected an image of shape (C, H, W), got {tuple(image.shape)}")
    th, tw = _pair(tile)
    padded = pad_to(image, th, tw)
    height, width = padded.shape[-2:]
    tiles = []
    for top, left in positions:
        if top < 0 or left < 0 or top + th > height or left + tw > width:
            raise InvalidSettingError(
                f"tile at (top={top}, left={left}) of size {th}x{tw} falls outside the "
                f"{image.shape[-2]}x{image.shape[-1]} image"
            )
        tiles.append(padded[:, top : top + th, left : left + tw])
    return torch.stack(tiles)


# Share of the overlap, at each end, that a tile's window all but ignores (see the module doc).
RAMP_MARGIN = 0.375
# The window's least value: never 0, so a pixel only one tile covers (at the image's border) still normalises.
RAMP_FLOOR = 1e-3


def blend_ramp(length: int, overlap: int, margin: float | None = None) -> torch.Tensor:
    """1-D window: ``RAMP_FLOOR`` over the outer ``margin`` share (default ``RAMP_MARGIN``) of
    the overlap at both ends, linear up to 1 over the rest of the overlap, 1 between.

    Two opposite ramps over the same pixels sum to exactly 1 where they are linear (and the
    stitch normalises by the summed weight everywhere).
    """
    margin = RAMP_MARGIN if margin is None else margin
    if not 0.0 <= margin < 0.5:
        raise InvalidSettingError(f"ramp margin must be in [0, 0.5), got {margin}")
    window = torch.ones(length, dtype=torch.float64)
    ramp_len = min(overlap, length // 2)
    if ramp_len > 0:
        skipped = math.floor(overlap * margin)
        span = overlap - 2 * skipped
        ramp = ((torch.arange(ramp_len, dtype=torch.float64) + 0.5 - skipped) / span).clamp(RAMP_FLOOR, 1.0)
        window[:ramp_len] = ramp
        window[length - ramp_len :] = ramp.flip(0)
    return window


def match_tile_tone(tiles: torch.Tensor, outputs: torch.Tensor, limit: float) -> torch.Tensor:
    """``outputs`` shifted, per tile and channel, by the median of ``tiles - outputs`` (at most
    ``limit`` either way): every tile's output keeps its input's tone.

    A generator with group norms renormalises each tile by that tile's own statistics, so a
    tile holding a bright object renders the flat dark ground around it in another tone than
    its neighbours do, and a stitched photo shows tile-sized blocks. The median follows the
    bulk of the tile, not what differs in a minority of it (a forgotten face), and ``limit``
    bounds what the shift can bring back of a tile that differs everywhere.
    """
    offset = (tiles.to(outputs.dtype) - outputs).flatten(2).median(dim=2).values.clamp(-limit, limit)
    return outputs + offset[..., None, None]


class TileAccumulator:
    """Blend tiles into an image one batch at a time (so a large image's output tiles need
    not all be held at once). Accumulates in float64, so the blend of identical tiles gives
    back the exact float32 pixels."""

    def __init__(
        self, channels: int, height: int, width: int, tile: int | tuple[int, int], overlap: int
    ) -> None:
        self.height, self.width = height, width
        self.tile = _pair(tile)
        th, tw = self.tile
        # Canvas as large as the padded image; the padding is cropped in result().
        canvas_h, canvas_w = max(height, th), max(width, tw)
        self._sum = torch.zeros(channels, canvas_h, canvas_w, dtype=torch.float64)
        self._weight = torch.zeros(1, canvas_h, canvas_w, dtype=torch.float64)
        self._window = torch.outer(blend_ramp(th, overlap), blend_ramp(tw, overlap)).unsqueeze(0)

    def add(self, tiles: torch.Tensor, positions: Sequence[tuple[int, int]]) -> None:
        if tiles.ndim != 4 or tiles.shape[0] != len(positions):
            raise InvalidSettingError(
                f"expected {len(positions)} tiles of shape (C, H, W), got {tuple(tiles.shape)}"
            )
        if tuple(tiles.shape[-2:]) != self.tile:
            raise InvalidSettingError(f"tiles are {tuple(tiles.shape[-2:])}, expected {self.tile}")
        th, tw = self.tile
        tiles = tiles.detach().to("cpu", torch.float64)
        for one, (top, left) in zip(tiles, positions):
            self._sum[:, top : top + th, left : left + tw] += one * self._window
            self._weight[:, top : top + th, left : left + tw] += self._window

    def result(self, dtype: torch.dtype = torch.float32, uncovered: float | None = None) -> torch.Tensor:
        """The blended image. Pixels no tile covered are an error, or ``uncovered`` when given
        (for a caller that added only some tiles on purpose)."""
        weight = self._weight[:, : self.height, : self.width]
        empty = weight == 0
        if bool(empty.any()):
            if uncovered is None:
                raise InvalidSettingError("some pixels are covered by no tile; were all positions added?")
            blended = self._sum[:, : self.height, : self.width] / weight.clamp_min(1e-12)
            return blended.masked_fill(empty, uncovered).to(dtype)
        return (self._sum[:, : self.height, : self.width] / weight).to(dtype)


def stitch(
    tiles: torch.Tensor,
    positions: Sequence[tuple[int, int]],
    height: int,
    width: int,
    overlap: int,
) -> torch.Tensor:
    """Blend ``(N, C, tile_h, tile_w)`` tiles into a ``(C, height, width)`` image."""
    if tiles.ndim != 4:
        raise InvalidSettingError(f"expected tiles of shape (N, C, H, W), got {tuple(tiles.shape)}")
    accumulator = TileAccumulator(
        tiles.shape[1], height, width, (tiles.shape[-2], tiles.shape[-1]), overlap
    )
    accumulator.add(tiles, positions)
    return accumulator.result(tiles.dtype if tiles.is_floating_point() else torch.float32)


def tile_edge_mask(height: int, width: int, tile: int | Sequence[int], overlap: int, strip: int = 4) -> torch.Tensor:
    """(H, W) bool mask of pixels within ``strip`` px of an inner tile edge of the tiling that
    ``tile_positions`` gives: where seams would show if stitching left any."""
    tile_h, tile_w = _pair(tile)
    mask = torch.zeros(height, width, dtype=torch.bool)
    for top, left in tile_positions(height, width, (tile_h, tile_w), overlap):
        for edge in (top, top + tile_h):
            if 0 < edge < height:
                mask[max(0, edge - strip): edge + strip, :] = True
        for edge in (left, left + tile_w):
            if 0 < edge < width:
                mask[:, max(0, edge - strip): edge + strip] = True
    return mask


def seam_figures(inputs: torch.Tensor, outputs: torch.Tensor, flat: torch.Tensor,
                 tile: int | Sequence[int], overlap: int) -> dict[str, float]:
    """How visible a tiling is on the ``flat`` pixels (an (H, W) bool mask of a uniform area)
    of a stitched ``outputs`` against its ``inputs`` ((3, H, W) in [-1, 1]); in 8-bit levels.

    ``tone_step_mean`` / ``tone_step_max``: between every two neighbouring tiles whose
    interiors (beyond the overlaps) are at least half flat, the largest per-channel difference
    of their mean output-minus-input: the block artefact. ``overlap_excess``: mean |output −
    input| on flat pixels inside the overlap bands minus that outside them: lines along tile edges.
    """
    th, tw = _pair(tile)
    height, width = inputs.shape[-2:]
    diff = (outputs.double() - inputs.double()) * 127.5
    positions = tile_positions(height, width, (th, tw), overlap)
    tones: dict[tuple[int, int], torch.Tensor] = {}
    for top, left in positions:
        region = (slice(top + overlap, top + th - overlap), slice(left + overlap, left + tw - overlap))
        chosen = flat[region]
        if chosen.numel() and chosen.float().mean() >= 0.5:
            tones[top, left] = diff[(slice(None), *region)][:, chosen].mean(dim=1)
    tops, lefts = sorted({t for t, _ in positions}), sorted({l for _, l in positions})
    steps = []
    for (top, left), tone in tones.items():
        below = tops[tops.index(top) + 1] if top != tops[-1] else None
        right = lefts[lefts.index(left) + 1] if left != lefts[-1] else None
        for neighbour in ((below, left), (top, right)):
            if None not in neighbour and neighbour in tones:
                steps.append(float((tone - tones[neighbour]).abs().max()))
    bands = torch.zeros(height, width, dtype=torch.bool)
    for before, after in zip(tops, tops[1:]):
        bands[after : before + th, :] = True
    for before, after in zip(lefts, lefts[1:]):
        bands[:, after : before + tw] = True
    error = diff.abs().mean(dim=0)
    inside, outside = error[bands & flat], error[~bands & flat]
    return {"tone_step_mean": sum(steps) / len(steps) if steps else float("nan"),
            "tone_step_max": max(steps, default=float("nan")),
            "overlap_excess": float(inside.mean() - outside.mean()) if inside.numel() and outside.numel() else float("nan"),
            "tile_pairs": len(steps)}
