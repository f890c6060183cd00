"""``imgunlearn.train_generator``: base training behind ``imgunlearn train``."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L

from ..data import ImageFolderDataModule
from ..data.augment import Augmentation
from ..generators import Generator, build_generator
from ..runner import fit, make_trainer
from .module import GeneratorTrainingModule

log = logging.getLogger("imgunlearn")


def train_generator(
    generator: Generator | dict[str, Any],
    data: Any,
    *,
    max_steps: int = 2000,
    batch_size: int = 32,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    warmup_steps: int = 100,
    tasks: Sequence[str] = ("reconstruct", "center_inpaint", "outpaint"),
    mask_area: float = 0.25,
    family_loss_weight: float | None = None,
    seed: int = 0,
    skip_bad: bool = False,
    num_workers: int = 0,
    output_dir: str | Path | None = None,
    resume: str | Path | None = None,
    trainer_options: dict[str, Any] | None = None,
    progress: bool = True,
    augment: Augmentation | dict[str, Any] | str | bool | None = None,
) -> Generator:
    """Train a base generator on the images in ``data`` (a folder) and return it.

    ``family_loss_weight`` defaults to the family's own (VQ commitment 1, KL 1e-3).
    ``generator`` is a Generator to train further, or ``{"family": "kl"|"vq", "config": {...}}``
    (a diffusers model config) to build one; building happens after seeding, so the same
    ``seed`` gives the same weights. ``augment`` augments each batch
    (:func:`~imgunlearn.data.augment.resolve_augmentation`: ``True``, ``"survey"``, a dict).
    """
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    L.seed_everything(seed, workers=True, verbose=False)
    if not isinstance(generator, Generator):
        generator = build_generator(generator["family"], generator["config"])
    if family_loss_weight is None:
        family_loss_weight = generator.default_family_loss_weight
    datamodule = ImageFolderDataModule(data, image_size=generator.sample_size, batch_size=batch_size,
                                       num_workers=num_workers, skip_bad=skip_bad)
    datamodule.setup("fit")
    if datamodule.skipped:
        log.warning("skipped %d unreadable image(s)", len(datamodule.skipped))
    module = GeneratorTrainingModule(generator, tasks=tasks, mask_area=mask_area,
                                     family_loss_weight=family_loss_weight, lr=lr,
                                     weight_decay=weight_decay, warmup_steps=warmup_steps,
                                     max_steps=max_steps, augment=augment)
    trainer, checkpoint_dir = make_trainer(output_dir, max_steps, trainer_options, progress,
                                               description="train")
    started = time.perf_counter()
    fit(trainer, module, datamodule, checkpoint_dir, resume, max_steps)
    module.cpu()
    generator.eval()
    generator.card = {
        **generator.card,
        "history": [*generator.card.get("history", []), {
            "stage": "train", "data": str(data), "images": len(datamodule.records),
            "tasks": list(tasks), "mask_area": mask_area, "max_steps": max_steps,
            "batch_size": batch_size, "lr": lr, "family_loss_weight": family_loss_weight,
            "seed": seed, "augment": module.hparams["augment"], "skipped_files": [str(r.path) for r, _ in datamodule.skipped],
            "final_losses": {k: float(v) for k, v in trainer.callback_metrics.items()},
            "seconds": round(time.perf_counter() - started, 2),
        }],
    }
    return generator
