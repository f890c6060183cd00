"""Image-to-image tasks T: the input transform in ``output = D(E(T(x)))``.

A task is a mask (1 = hidden from the generator) plus the fill value written under it. Masks
are (B, 1, H, W) float tensors so they broadcast over channels and can be mixed per sample.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .errors import InvalidSettingError
from .vocabulary import DEFAULT_MASK_AREA, TASK_NAMES  # noqa: F401  (TASK_NAMES re-exported)

Box = tuple[float, float, float, float]


def center_box_mask(height: int, width: int, area: float = DEFAULT_MASK_AREA) -> torch.Tensor:
    """(1, H, W) mask of a centred rectangle covering ``area`` of the image."""
    _check_area(area)
    side = math.sqrt(area)
    box_h, box_w = round(height * side), round(width * side)
    top, left = (height - box_h) // 2, (width - box_w) // 2
    mask = torch.zeros(1, height, width)
    mask[:, top : top + box_h, left : left + box_w] = 1.0
    return mask


def border_mask(height: int, width: int, area: float = DEFAULT_MASK_AREA) -> torch.Tensor:
    """(1, H, W) mask of the border band covering ``area`` of the image (the centre stays)."""
    _check_area(area)
    return 1.0 - center_box_mask(height, width, 1.0 - area) if area < 1 else torch.ones(1, height, width)


def apply_mask(images: torch.Tensor, mask: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """Hide the masked pixels of ``images`` (in [-1, 1]) under ``fill`` (0 = mid grey)."""
    return images * (1.0 - mask) + fill * mask


@dataclass(frozen=True)
class Task:
    """A named I2I task. ``area`` is the hidden share of the image for inpaint/outpaint."""

    name: str = "reconstruct"
    area: float = DEFAULT_MASK_AREA
    fill: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in TASK_NAMES:
            raise InvalidSettingError(f"unknown task {self.name!r}; choose one of {list(TASK_NAMES)}")
        _check_area(self.area)

    def mask(self, height: int, width: int) -> torch.Tensor:
        if self.name == "center_inpaint":
            return center_box_mask(height, width, self.area)
        if self.name == "outpaint":
            return border_mask(height, width, self.area)
        return torch.zeros(1, height, width)

    def __call__(self, images: torch.Tensor, generator: Any = None) -> torch.Tensor:
        """The task's input: ``images`` with this task's pixels hidden, the way ``generator``'s
        family takes them (:meth:`~imgunlearn.generators.Generator.hide`; filled without one)."""
        if self.name == "reconstruct":
            return images
        mask = self.mask(*images.shape[-2:]).to(images)
        return apply_mask(images, mask, self.fill) if generator is None else generator.hide(images, mask, self.fill)


def random_task_masks(tasks: Sequence[Task], batch: int, height: int, width: int,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, 1, H, W) masks with one task drawn uniformly per sample (base training)."""
    choices = torch.randint(len(tasks), (batch,), generator=generator)
    table = torch.stack([task.mask(height, width) for task in tasks])
    return table[choices]


def _check_area(area: float) -> None:
    if not 0.0 < area <= 1.0:
        raise InvalidSettingError(f"mask area must be in (0, 1], got {area}")
