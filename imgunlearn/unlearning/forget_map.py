"""The forget map (docs/design.md §1b): where the unlearned encoder disagrees with the original.

The retain loss trains E_θ(x) ≈ E_θ0(x) on everything that was kept, so per latent cell
d = mean over channels of (E_θ(x) − E_θ0(x))² is small there and large where something was
forgotten. A threshold τ, calibrated on the retain set when unlearning ends, turns d into a
cell mask; the Sanitizer re-synthesises only those cells and keeps every other pixel of the
input. Pure functions on tensors, plus the calibration and the weights digest that tie an
unlearned model to the reference it must be compared against.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InvalidSettingError, is_whole_number
from ..settings import (DEFAULT_FORGET_PASSES, DEFAULT_MAP_BLUR, DEFAULT_MAP_DILATION, DEFAULT_MAP_MARGIN,
                        DEFAULT_MAP_PERCENTILE, MAP_CARD_PERCENTILES)

if TYPE_CHECKING:
    from ..generators import Generator

__all__ = [
    "CARD_KEY", "CARD_PERCENTILES", "DEFAULT_MARGIN", "DEFAULT_PERCENTILE", "MapWindow", "calibrate_forget_map",
    "calibrate_threshold", "cell_divergence", "cell_mask", "check_map_blur", "map_windows", "mask_boxes",
    "pixel_weight", "pixel_weight_box", "pixel_weight_rows", "threshold_at", "weights_digest",
]

CARD_KEY = "forget_map"
CARD_PERCENTILES = MAP_CARD_PERCENTILES  # the table of retain percentiles every card records
# τ = margin × the 97th percentile of d over the retain cells, chosen on the face corpus's val
# split with the map dilated by DEFAULT_MAP_DILATION cells (docs/benchmarks.md, "forget map
# settings") as the setting that keeps the most pixels among those letting at most 2% of unseen
# faces through: higher thresholds keep more pixels but let more faces through, and a privacy
# tool errs on the side of re-synthesising.
DEFAULT_PERCENTILE = DEFAULT_MAP_PERCENTILE
DEFAULT_MARGIN = DEFAULT_MAP_MARGIN


def cell_divergence(embedding: torch.Tensor, reference_embedding: torch.Tensor) -> torch.Tensor:
    """d = mean over channels of (E_θ(x) − E_θ0(x))², shape (B, 1, h, w)."""
    if embedding.shape != reference_embedding.shape:
        raise InvalidSettingError(
            f"embeddings differ in shape: {tuple(embedding.shape)} vs reference "
            f"{tuple(reference_embedding.shape)} (is the reference the same architecture?)"
        )
    return (embedding.float() - reference_embedding.float()).pow(2).mean(dim=1, keepdim=True)


def calibrate_threshold(divergence: torch.Tensor, percentile: float = DEFAULT_PERCENTILE,
                        margin: float = DEFAULT_MARGIN) -> float:
    """τ = ``margin`` × the ``percentile``-th percentile of ``divergence`` (retain cells)."""
    if not 0.0 < percentile <= 100.0:
        raise InvalidSettingError(f"percentile must be in (0, 100], got {percentile}")
    if margin < 1.0:
        raise InvalidSettingError(f"margin must be >= 1 (it widens the retain set's range), got {margin}")
    values = divergence.detach().flatten().to("cpu", torch.float64).numpy()
    if values.size == 0:
        raise InvalidSettingError("no retain cells to calibrate the forget map on")
    return float(np.percentile(values, percentile)) * margin


def threshold_at(entry: dict[str, Any], percentile: float) -> float:
    """τ = the card's margin × its recorded ``percentile`` of the retain cells' divergence."""
    table = entry.get("retain_percentiles")
    if not table:
        raise InvalidSettingError("the card records no table of retain percentiles (unlearned by an older "
                                  "imgunlearn?): give forget_threshold instead, or unlearn again")
    key = f"{float(percentile):g}"
    if key not in table:
        raise InvalidSettingError(f"the card records no {key}th percentile of the retain cells' divergence; "
                                  f"it has {', '.join(sorted(table, key=float))}")
    return float(table[key]) * float(entry.get("margin", DEFAULT_MARGIN))


def cell_mask(divergence: torch.Tensor, threshold: float, dilation: int = 1) -> torch.Tensor:
    """Bool (B, 1, h, w): cells with d > τ, grown by ``dilation`` cells each way (the encoder's
    receptive field spreads a forgotten object beyond the cells that light up)."""
    if dilation < 0:
        raise InvalidSettingError(f"dilation must be >= 0 cells, got {dilation}")
    mask = (divergence > threshold).float()
    if dilation > 0:
        mask = F.max_pool2d(mask, kernel_size=2 * dilation + 1, stride=1, padding=dilation)
    return mask > 0


def pixel_weight(mask: torch.Tensor, factor: int, height: int, width: int, feather: int = 4) -> torch.Tensor:
    """The (H, W) compositing weight of a (h, w) cell mask: 1 inside, a ramp of ``feather``
    pixels just inside the mask's edge, and exactly 0 outside it (those pixels stay the input's)."""
    if feather < 0:
        raise InvalidSettingError(f"feather must be >= 0 pixels, got {feather}")
    mask = mask.reshape(1, 1, *mask.shape[-2:]).float()
    pixels = F.interpolate(mask, scale_factor=factor, mode="nearest")[..., :height, :width]
    if feather == 0 or not bool(pixels.any()):
        return pixels[0, 0]
    # Mean of the mask eroded 0..feather-1 times: 1/feather at the edge, 1 from feather px in.
    # Erosion treats beyond-the-image as inside, so a mask touching the border stays solid there.
    eroded, total = pixels, torch.zeros_like(pixels)
    for _ in range(feather):
        total += eroded
        eroded = -F.max_pool2d(-F.pad(eroded, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return (total / feather)[0, 0]


def pixel_weight_rows(mask: torch.Tensor, factor: int, top: int, bottom: int, width: int,
                      height: int, feather: int = 4) -> torch.Tensor:
    """Rows ``top:bottom`` of :func:`pixel_weight` (an image ``height`` px tall), computed from
    the cells around them only, so a tall photo's map never exists at full resolution."""
    return pixel_weight_box(mask, factor, (top, 0, bottom, width), height, width, feather)


def pixel_weight_box(mask: torch.Tensor, factor: int, box: tuple[int, int, int, int], height: int,
                     width: int, feather: int = 4) -> torch.Tensor:
    """The ``(top, left, bottom, right)`` pixel box of :func:`pixel_weight` (an image
    ``height`` x ``width`` px), computed from the cells around the box only."""
    top, left, bottom, right = box
    margin = math.ceil(feather / factor) + 1  # erosion reaches ``feather`` px across the cut
    cells = mask.reshape(mask.shape[-2:])
    first_row, first_col = max(0, top // factor - margin), max(0, left // factor - margin)
    last_row = min(cells.shape[0], math.ceil(bottom / factor) + margin)
    last_col = min(cells.shape[1], math.ceil(right / factor) + margin)
    # Cells cut off here are replicated by the erosion; the margin keeps them out of reach,
    # except at the photo's real edges, where replication is what pixel_weight does.
    weight = pixel_weight(cells[first_row:last_row, first_col:last_col], factor,
                          min(height, last_row * factor) - first_row * factor,
                          min(width, last_col * factor) - first_col * factor, feather)
    return weight[top - first_row * factor : bottom - first_row * factor,
                  left - first_col * factor : right - first_col * factor]


@dataclass(frozen=True)
class MapWindow:
    """A crop the forget passes run on, in latent cells: ``window`` is ``(top, left, bottom,
    right)`` of what the generator sees; ``core`` the box whose cells this window writes, and
    ``cells`` those cells (a bool array of the core's shape). Cores never share a cell."""

    window: tuple[int, int, int, int]
    core: tuple[int, int, int, int]
    cells: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.window[2] - self.window[0], self.window[3] - self.window[1]


def map_windows(mask: torch.Tensor | np.ndarray, context: int, limit: tuple[int, int],
                multiple: int = 1) -> list[MapWindow]:
    """Cover the map's cells with crops that carry ``context`` cells of surroundings each way.

    Map regions closer than twice the context share one crop (their surroundings overlap);
    a region whose crop would exceed ``limit`` (cells, e.g. the tile) is cut into cores of at
    most ``limit - 2 * context`` (at least one cell). Crops stay within the map's grid, and
    each side is rounded up to a ``multiple`` of cells (so crops repeat shapes and can be
    batched) where that stays within ``limit``. Sorted by top row.
    """
    from scipy import ndimage

    if context < 0 or multiple < 1:
        raise InvalidSettingError(f"context must be >= 0 and multiple >= 1 cells, got {context} and {multiple}")
    cells = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask).reshape(mask.shape[-2:]).astype(bool)
    height, width = cells.shape
    grown = ndimage.maximum_filter(cells, size=2 * context + 1) if context else cells
    labels, _ = ndimage.label(grown, structure=np.ones((3, 3), dtype=int))
    windows = []
    for label, (rows, cols) in enumerate(ndimage.find_objects(labels), start=1):
        group = (labels[rows, cols] == label) & cells[rows, cols]
        used_rows, used_cols = np.flatnonzero(group.any(axis=1)), np.flatnonzero(group.any(axis=0))
        top, bottom = rows.start + used_rows[0], rows.start + used_rows[-1] + 1
        left, right = cols.start + used_cols[0], cols.start + used_cols[-1] + 1
        for r0, r1 in _pieces(top, bottom, context, limit[0], height):
            for c0, c1 in _pieces(left, right, context, limit[1], width):
                piece = group[r0 - rows.start : r1 - rows.start, c0 - cols.start : c1 - cols.start]
                if piece.any():
                    window_top, window_bottom = _span(r0, r1, context, multiple, limit[0], height)
                    window_left, window_right = _span(c0, c1, context, multiple, limit[1], width)
                    windows.append(MapWindow(window=(window_top, window_left, window_bottom, window_right),
                                             core=(r0, c0, r1, c1), cells=piece.copy()))
    return sorted(windows, key=lambda w: (w.window[0], w.window[1]))


def _pieces(start: int, stop: int, context: int, limit: int, size: int) -> list[tuple[int, int]]:
    """``start:stop`` whole if it fits ``limit`` with its context (cut off by the map's edge),
    else cut into as few equal pieces as keep each at most ``limit - 2 * context`` long."""
    if min(size, stop + context) - max(0, start - context) <= limit:
        return [(start, stop)]
    count = math.ceil((stop - start) / max(1, limit - 2 * context))
    edges = [start + round(i * (stop - start) / count) for i in range(count + 1)]
    return list(zip(edges[:-1], edges[1:]))


def _span(start: int, stop: int, context: int, multiple: int, limit: int, size: int) -> tuple[int, int]:
    """``start:stop`` grown by ``context`` each way, rounded up to a ``multiple`` (not past
    ``limit``), and moved back within 0..size where it sticks out (more context on the other side)."""
    first, last = start - context, stop + context
    extra = min(-(last - first) % multiple, max(0, limit - (last - first)))
    first, last = first - extra // 2, last + extra - extra // 2
    if first < 0:
        first, last = 0, last - first
    if last > size:
        first, last = max(0, first - (last - size)), size
    return first, last


def check_map_blur(sigma: Any) -> float:
    """``sigma`` as a map blur (a finite number of pixels >= 0), or a clear error."""
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma < 0:
        raise InvalidSettingError(f"map blur must be a Gaussian sigma >= 0 pixels, got {sigma!r}")
    return float(sigma)


def mask_boxes(mask: torch.Tensor, factor: int, height: int, width: int) -> list[list[int]]:
    """``[x0, y0, x1, y1]`` pixel boxes of the mask's connected regions (8-connected cells)."""
    from scipy import ndimage

    cells = mask.reshape(mask.shape[-2:]).cpu().numpy().astype(bool)
    labels, _ = ndimage.label(cells, structure=np.ones((3, 3), dtype=int))
    boxes = []
    for rows, cols in ndimage.find_objects(labels):
        boxes.append([cols.start * factor, rows.start * factor,
                      min(width, cols.stop * factor), min(height, rows.stop * factor)])
    return boxes


def weights_digest(generator: Generator) -> str:
    """SHA-256 of the generator's weights (names, shapes, dtypes and values, in name order):
    what ties an unlearned model to the base its forget map must be computed against."""
    digest = hashlib.sha256()
    for name, tensor in sorted(generator.model.state_dict().items()):
        value = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tuple(value.shape)}:{value.dtype}".encode())
        # Flattened first: a channels-last 1x1 kernel counts as contiguous with a last stride
        # that is not 1, which a byte view refuses; the digest must not depend on the layout.
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


@torch.no_grad()
def calibrate_forget_map(student: Generator, reference: Generator, batches: Iterable[torch.Tensor],
                                  percentile: float = DEFAULT_PERCENTILE, margin: float = DEFAULT_MARGIN,
                                  device: str | torch.device = "cpu", dilation: int = DEFAULT_MAP_DILATION,
                                  passes: int = DEFAULT_FORGET_PASSES,
                                  blur: float = DEFAULT_MAP_BLUR) -> dict[str, Any]:
    """The card entry of an unlearned ``student``: τ from its retain images (``batches`` of
    (B, 3, H, W) in [-1, 1]) against ``reference``, the generator it was unlearned from, and
    the map ``dilation``, forget ``passes`` and ``blur`` chosen with it (the Sanitizer's
    defaults for this model)."""
    if not is_whole_number(dilation):
        raise InvalidSettingError(f"map dilation must be a whole number of cells >= 0, got {dilation!r}")
    if not is_whole_number(passes, 1):
        raise InvalidSettingError(f"map passes must be a whole number >= 1, got {passes!r}")
    check_map_blur(blur)
    from ..generators import inference_layout  # generators imports this module's users

    student_mode, reference_mode = student.training, reference.training
    student.eval(), reference.eval()
    divergences = []
    try:
        with inference_layout(student, device), inference_layout(reference, device), torch.no_grad():
            for images in batches:
                images = images.to(device)
                divergences.append(cell_divergence(student.embed(images), reference.embed(images)).cpu())
    finally:
        student.train(student_mode), reference.train(reference_mode)
    if not divergences:
        raise InvalidSettingError("no retain images to calibrate the forget map on")
    divergence = torch.cat([d.flatten() for d in divergences])
    table = sorted({*CARD_PERCENTILES, float(percentile)})
    # One pass over the cells for the whole table (np.percentile sorts once for many q).
    values = np.percentile(divergence.to(torch.float64).numpy(), table)
    return {
        "threshold": calibrate_threshold(divergence, percentile, margin),
        "percentile": percentile,
        "margin": margin,
        "dilation": dilation,
        "passes": passes,
        "blur": float(blur),
        "retain_percentiles": {f"{p:g}": float(v) for p, v in zip(table, values)},
        "retain_cells": int(divergence.numel()),
        "retain_median": float(divergence.median()),
        "reference_digest": weights_digest(reference),
    }
