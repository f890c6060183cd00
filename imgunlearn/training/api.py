"""``imgunlearn.train_generator``: base training behind ``imgunlearn train``."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L

from ..data import ImageFolderDataModule
from ..errors import InvalidSettingError
from ..generators import Generator, build_generator
from ..runner import fit, make_trainer, resumed_seconds, run_folder
from ..settings import TrainSettings, module_arguments
from .module import GeneratorTrainingModule

log = logging.getLogger("imgunlearn")


def train_generator(
    generator: Generator | dict[str, Any],
    data: Any,
    *,
    settings: TrainSettings | None = None,
    skip_bad: bool = False,
    num_workers: int = 0,
    output_dir: str | Path | None = None,
    resume: str | Path | None = None,
    trainer_options: dict[str, Any] | None = None,
    progress: bool = True,
    **overrides: Any,
) -> Generator:
    """Train a base generator on the images in ``data`` (a folder) and return it.

    The settings are the fields of :class:`~imgunlearn.settings.TrainSettings`, given as
    ``settings`` and/or keyword arguments (which win). ``family_loss_weight`` defaults to
    the family's own (VQ commitment 1, KL 1e-3). ``generator`` is a Generator to train
    further, or ``{"family": "kl"|"vq", "config": {...}}`` (a diffusers model config) to
    build one; building happens after seeding, so the same ``seed`` gives the same weights.
    ``augment`` augments each batch (:func:`~imgunlearn.data.augment.resolve_augmentation`:
    ``True``, ``"survey"``, a dict).
    """
    settings = (settings or TrainSettings()).replace(**overrides)
    if isinstance(settings.tasks, str):  # one task named alone (`--tasks outpaint`)
        settings = settings.replace(tasks=(settings.tasks,))
    max_steps = settings.max_steps
    if max_steps < 1:
        raise InvalidSettingError(f"max_steps must be >= 1, got {max_steps}")
    L.seed_everything(settings.seed, workers=True, verbose=False)
    if not isinstance(generator, Generator):
        generator = build_generator(generator["family"], generator["config"])
    if settings.family_loss_weight is None:
        settings = settings.replace(family_loss_weight=generator.default_family_loss_weight)
    datamodule = ImageFolderDataModule(data, image_size=generator.sample_size, batch_size=settings.batch_size,
                                       num_workers=num_workers, skip_bad=skip_bad)
    datamodule.setup("fit")
    if datamodule.skipped:
        log.warning("skipped %d unreadable image(s)", len(datamodule.skipped))
    module = GeneratorTrainingModule(generator, **module_arguments(GeneratorTrainingModule, settings))
    started = time.perf_counter()
    with run_folder(output_dir) as folder:
        trainer, checkpoint_dir = make_trainer(folder, max_steps, trainer_options, progress, description="train")
        fit(trainer, module, datamodule, checkpoint_dir, resume, max_steps)
    module.cpu()
    generator.eval()
    generator.card = {
        **generator.card,
        "history": [*generator.card.get("history", []), {
            "stage": "train", "data": str(data), "images": len(datamodule.records), **settings.to_dict(),
            "augment": module.hparams["augment"], "skipped_files": [str(r.path) for r, _ in datamodule.skipped],
            "final_losses": {k: float(v) for k, v in trainer.callback_metrics.items()},
            # batch_size is per process: each step saw batch_size × world_size images.
            "world_size": trainer.world_size, "precision": trainer.precision,
            "seconds": round(time.perf_counter() - started + resumed_seconds(trainer), 2),
        }],
    }
    return generator
