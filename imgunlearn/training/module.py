"""Base-generator training: one generator learns every configured I2I task at once."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch

from ..data.augment import Augmentation, augment_batch, resolve_augmentation
from ..errors import InvalidSettingError
from ..generators import Generator
from ..optim import adamw_warmup_cosine
from ..tasks import Task, random_task_masks
from ..unlearning.objectives import reconstruction_loss
from ..vocabulary import DEFAULT_MASK_AREA


class GeneratorTrainingModule(L.LightningModule):
    """Train ``generator`` so ``D(E(T(x)))`` reproduces the whole ``x``, T drawn per sample.

    Args:
        generator: the generator to train (modified in place).
        tasks: the I2I tasks to draw from (docs/design.md §1: one base serves them all).
        mask_area: hidden share of the image for ``center_inpaint`` / ``outpaint``.
        family_loss_weight: weight of the family's own term (VQ commitment, KL).
        lr, weight_decay, warmup_steps, max_steps: AdamW with warm-up and cosine decay.
        augment: augmentation of each batch (see :func:`~imgunlearn.data.augment.resolve_augmentation`):
            a base that reconstructs turned, grey or blurred faces too is one whose forgetting
            can be measured on them.
    """

    def __init__(
        self,
        generator: Generator,
        tasks: Sequence[str] = ("reconstruct", "center_inpaint", "outpaint"),
        mask_area: float = DEFAULT_MASK_AREA,
        family_loss_weight: float = 1.0,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 100,
        max_steps: int = 2000,
        augment: Augmentation | dict | str | bool | None = None,
    ) -> None:
        super().__init__()
        if not tasks:
            raise InvalidSettingError("at least one task is needed")
        self.augmentation = resolve_augmentation(augment)
        self.save_hyperparameters(ignore=["generator", "augment"])
        self.hparams["augment"] = self.augmentation.to_dict() if self.augmentation else None
        self.generator = generator
        self.tasks = [Task(name, area=mask_area) for name in tasks]

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self.augmentation is not None:
            batch = augment_batch(batch, self.augmentation)
        images = batch["image"]
        masks = random_task_masks(self.tasks, images.shape[0], *images.shape[-2:]).to(images)
        output = self.generator.training_output(self.generator.hide(images, masks), images)
        reconstruction = reconstruction_loss(output.sample, images if output.target is None else output.target)
        loss = reconstruction + self.hparams.family_loss_weight * output.family_loss
        self.log("reconstruction_loss", reconstruction, prog_bar=True, batch_size=images.shape[0])
        self.log("family_loss", output.family_loss, batch_size=images.shape[0])
        self.log("loss", loss, batch_size=images.shape[0])
        return loss

    def configure_optimizers(self) -> dict:
        h = self.hparams
        return adamw_warmup_cosine(self.generator.parameters(), h.lr, h.weight_decay,
                                   h.warmup_steps, h.max_steps)
