"""Pure loss functions: the paper's objective (docs/design.md §1), its baselines, and the pieces
they are built from. No modules, no state: tensors in, tensors out.

Images are in [-1, 1]. Embedding tensors are (B, C, h, w). ``weight`` arguments are
(B, 1, h, w) masks over latent positions (region-level forgetting); ``None`` means all.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..errors import InvalidSettingError
from .forget_map import cell_divergence


def masked_mse(prediction: torch.Tensor, target: torch.Tensor,
               weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error, over the positions where ``weight`` > 0 when it is given.

    An all-zero weight gives 0 (nothing to compare), not NaN.
    """
    squared = (prediction - target) ** 2
    if weight is None:
        return squared.mean()
    weight = weight.to(squared).expand_as(squared)
    return (squared * weight).sum() / weight.sum().clamp_min(1.0)


def retain_loss(student_embedding: torch.Tensor, teacher_embedding: torch.Tensor,
                weight: torch.Tensor | None = None) -> torch.Tensor:
    """L_R = mean((E_θ(T(x_r)) − E_θ0(T(x_r)))²): retain embeddings stay where they were."""
    return masked_mse(student_embedding, teacher_embedding.detach(), weight)


def cell_change(student_embedding: torch.Tensor, teacher_embedding: torch.Tensor) -> torch.Tensor:
    """The forget map's d per latent cell (:func:`~imgunlearn.unlearning.forget_map.cell_divergence`),
    shape (B, h, w), with the teacher's side held fixed."""
    return cell_divergence(student_embedding, teacher_embedding.detach())[:, 0]


def retain_tail_loss(student_embedding: torch.Tensor, teacher_embedding: torch.Tensor, share: float = 0.01,
                     weight: torch.Tensor | None = None) -> torch.Tensor:
    """The mean of the largest ``share`` of per-cell changes d = mean over channels of
    (E_θ − E_θ0)², over the cells where ``weight`` > 0 (all when ``None``).

    The forget map (docs/design.md §1b) thresholds d at a high percentile of the retain
    cells' d; the plain retain loss bounds only d's mean, so a few retain cells that move far
    set a high threshold that unseen forget content does not reach. This term pulls that tail
    in. An empty selection gives 0.
    """
    if not 0.0 < share <= 1.0:
        raise InvalidSettingError(f"share must be in (0, 1], got {share}")
    change = cell_change(student_embedding, teacher_embedding)
    cells = change.flatten() if weight is None else change[weight[:, 0] > 0]
    if cells.numel() == 0:
        return change.sum() * 0.0
    count = max(1, math.ceil(share * cells.numel()))
    return cells.topk(count).values.mean()


def retain_output_loss(student_output: torch.Tensor, teacher_output: torch.Tensor) -> torch.Tensor:
    """mean((D(E_θ(T(x_r))) − D(E_θ0(T(x_r))))²) with the frozen decoder D: a retain image's
    embedding change weighed by the pixels it moves."""
    return F.mse_loss(student_output, teacher_output.detach())


def forget_loss(student_embedding: torch.Tensor, target_embedding: torch.Tensor,
                weight: torch.Tensor | None = None) -> torch.Tensor:
    """L_F = mean((E_θ(T(x_f)) − E_θ0(T(n)))²): forget embeddings go to the target's."""
    return masked_mse(student_embedding, target_embedding.detach(), weight)


def forget_margin_loss(student_embedding: torch.Tensor, original_embedding: torch.Tensor, level: float,
                       weight: torch.Tensor | None = None) -> torch.Tensor:
    """The mean of relu(level − d) over the forget cells, weighted by ``weight`` (every cell
    alike when ``None``), d the cell's change from the original's embedding of the same image
    (:func:`cell_change`).

    The forget map re-synthesises a cell only where d is over its threshold, but the forget
    loss pulls a face cell towards the target's embedding, which may lie close to the
    original's (flat skin near a noise image's mean): a cell moved part of the way there stays
    under the threshold. This term asks every forget cell to move at least ``level``.
    It has no gradient at d = 0, so it acts once the forget term has moved a cell.
    """
    if level <= 0:
        raise InvalidSettingError(f"level must be > 0, got {level}")
    shortfall = torch.relu(level - cell_change(student_embedding, original_embedding))
    if weight is None:
        return shortfall.mean()
    cells = weight[:, 0].to(shortfall)
    return (shortfall * cells).sum() / cells.sum().clamp_min(1.0)


def unlearning_loss(retain: torch.Tensor, forget: torch.Tensor, alpha: float) -> torch.Tensor:
    """L = L_R + α·L_F."""
    return retain + alpha * forget


def noise_images(images: torch.Tensor, generator: torch.Generator | None = None,
                 low: float = -1.0, high: float = 1.0) -> torch.Tensor:
    """Gaussian noise with the batch's per-channel mean and std, clamped to the data range."""
    mean = images.mean(dim=(0, 2, 3), keepdim=True)
    std = images.std(dim=(0, 2, 3), keepdim=True) if images.numel() > images.shape[1] else torch.ones_like(mean)
    noise = torch.randn(images.shape, generator=generator, dtype=images.dtype, device=images.device)
    return (noise * std + mean).clamp(low, high)


def blank_images(images: torch.Tensor, color: Sequence[float] = (0.5, 0.5, 0.5)) -> torch.Tensor:
    """A constant image like ``images``; ``color`` is RGB in [0, 1] (default mid grey)."""
    if len(color) != images.shape[1]:
        raise InvalidSettingError(f"blank colour has {len(color)} values, images have {images.shape[1]} channels")
    value = torch.tensor(color, dtype=images.dtype, device=images.device).view(1, -1, 1, 1) * 2 - 1
    return value.expand_as(images).clone()


def region_mean_images(images: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Each image's mean colour under its ``region`` (B, 1, H, W) pixel mask, everywhere: the
    ``fill`` target, a forgotten face becoming a flat patch of its own colour."""
    area = region.sum(dim=(2, 3), keepdim=True).clamp_min(1.0)
    colour = (images * region).sum(dim=(2, 3), keepdim=True) / area
    return colour.expand_as(images).clone()


def random_embeddings_like(teacher_embedding: torch.Tensor,
                           generator: torch.Generator | None = None) -> torch.Tensor:
    """RANDOM ENCODER's target: Gaussian vectors with the teacher embedding's mean and std."""
    teacher_embedding = teacher_embedding.detach()
    noise = torch.randn(teacher_embedding.shape, generator=generator,
                        dtype=teacher_embedding.dtype, device=teacher_embedding.device)
    return noise * teacher_embedding.std() + teacher_embedding.mean()


def reconstruction_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 + MSE between images: base training's loss, and the baselines' building block."""
    return F.l1_loss(output, target) + F.mse_loss(output, target)


def max_loss_forget_term(forget_output: torch.Tensor, forget_images: torch.Tensor) -> torch.Tensor:
    """MAX LOSS: minimising this is gradient *ascent* of the forget reconstruction loss."""
    return -reconstruction_loss(forget_output, forget_images)


def noisy_label_forget_term(forget_output: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """NOISY LABEL: forget outputs are trained to match Gaussian-noise images."""
    return reconstruction_loss(forget_output, noise)


def cycled_retain_images(retain_images: torch.Tensor, count: int) -> torch.Tensor:
    """RETAIN LABEL's targets: ``count`` retain images, the batch cycled (1, 2, 1, 2, ...)."""
    index = torch.arange(count, device=retain_images.device) % retain_images.shape[0]
    return retain_images[index]


def retain_label_forget_term(forget_output: torch.Tensor, retain_targets: torch.Tensor) -> torch.Tensor:
    """RETAIN LABEL: forget outputs are trained to match retain images
    (:func:`cycled_retain_images`, one per forget image)."""
    return reconstruction_loss(forget_output, retain_targets)
