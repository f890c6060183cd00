"""Pixel boxes ``(x0, y0, x1, y1)``, in one place: growing them, rasterising them into masks
and matching detections to them. Every module that handles face boxes uses these, so a box
means the same pixels everywhere (training masks, tiles, blanking, metrics)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["blurred_box", "box_pixels", "boxes_mask", "centres_inside", "grow_boxes", "latent_cells"]


def grow_boxes(boxes: np.ndarray | Sequence[Sequence[float]], share: float = 0.0, at_least: float = 0.0,
               pixels: float = 0.0) -> np.ndarray:
    """(N, 4) float64 boxes grown each way by ``max(at_least, share × the box's longer side)``
    plus ``pixels`` (detector boxes are tight: hair and ears identify too)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    margin = np.maximum(at_least, share * np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])) + pixels
    return boxes + np.stack([-margin, -margin, margin, margin], axis=1)


def box_pixels(box: Sequence[float], height: int, width: int, tolerance: float = 0.0) -> tuple[int, int, int, int]:
    """The whole pixels ``(c0, r0, c1, r1)`` a box touches, clipped to the image: edges are
    rounded outwards, except by less than ``tolerance`` (so 10.0000001 from a resize does not
    cover an extra row). Empty when ``c1 <= c0`` or ``r1 <= r0``."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return (max(0, math.floor(x0 + tolerance)), max(0, math.floor(y0 + tolerance)),
            min(width, math.ceil(x1 - tolerance)), min(height, math.ceil(y1 - tolerance)))


def boxes_mask(boxes: Iterable[Sequence[float]], height: int, width: int, tolerance: float = 0.0) -> torch.Tensor:
    """(1, H, W) float mask, 1 on every pixel a box touches (see :func:`box_pixels`)."""
    mask = torch.zeros(1, height, width)
    for box in boxes:
        c0, r0, c1, r1 = box_pixels(box, height, width, tolerance)
        if c1 > c0 and r1 > r0:
            mask[:, r0:r1, c0:c1] = 1.0
    return mask


def centres_inside(boxes: np.ndarray | Sequence[Sequence[float]],
                   detections: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """(len(boxes), len(detections)) bool: whether each detection's centre lies in each box
    (edges included). How a face counts as found, in the metrics and in the corpus builder."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    detections = np.asarray(detections, dtype=np.float64).reshape(-1, 4)
    cx = (detections[:, 0] + detections[:, 2]) / 2
    cy = (detections[:, 1] + detections[:, 3]) / 2
    return ((cx[None, :] >= boxes[:, 0:1]) & (cx[None, :] <= boxes[:, 2:3])
            & (cy[None, :] >= boxes[:, 1:2]) & (cy[None, :] <= boxes[:, 3:4]))


def latent_cells(pixel_mask: torch.Tensor, latent_size: Sequence[int], dilate: int = 0) -> torch.Tensor:
    """A (B, 1, H, W) pixel mask pooled onto a ``latent_size`` grid, then dilated by
    ``dilate`` cells: a cell counts as soon as any pixel under it is masked, and the dilation
    covers the encoder's receptive field spilling over a box's edge (docs/design.md §1)."""
    pooled = F.adaptive_max_pool2d(pixel_mask.float(), tuple(latent_size))
    if dilate > 0:
        pooled = F.max_pool2d(pooled, kernel_size=2 * dilate + 1, stride=1, padding=dilate)
    return pooled


def blurred_box(image: torch.Tensor, box: Sequence[int], sigma: float) -> torch.Tensor:
    """The pixels ``(c0, r0, c1, r1)`` of ``image`` ((C, H, W)) Gaussian-blurred with ``sigma``
    px. The blur reads up to 3σ of the image around the box, so the box's edge pixels average
    real neighbours rather than a reflection of the box itself; where the image is too small
    for that kernel it is cut short, and a box with no room to blur at all gets its mean."""
    c0, r0, c1, r1 = (int(v) for v in box)
    height, width = image.shape[-2:]
    radius = math.ceil(3 * sigma)
    k0, l0 = max(0, c0 - radius), max(0, r0 - radius)
    k1, l1 = min(width, c1 + radius), min(height, r1 + radius)
    crop = image[:, l0:l1, k0:k1]
    radius = min(radius, min(crop.shape[-2:]) - 1)  # reflect padding needs pad < side
    if radius < 1:
        return crop[:, r0 - l0 : r1 - l0, c0 - k0 : c1 - k0].mean(dim=(1, 2), keepdim=True).expand(
            -1, r1 - r0, c1 - c0).clone()
    # Separable: two 1-D passes cost 2(2r + 1) taps a pixel, where one 2-D kernel costs (2r + 1)².
    taps = torch.arange(-radius, radius + 1, dtype=crop.dtype, device=crop.device)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = (kernel / kernel.sum()).expand(crop.shape[0], 1, -1)
    rows = F.conv2d(F.pad(crop[None], (radius, radius, 0, 0), mode="reflect"), kernel[:, :, None, :],
                    groups=crop.shape[0])
    blurred = F.conv2d(F.pad(rows, (0, 0, radius, radius), mode="reflect"), kernel[:, :, :, None],
                       groups=crop.shape[0])[0]
    return blurred[:, r0 - l0 : r1 - l0, c0 - k0 : c1 - k0]
