"""``imgunlearn.unlearn``: the one function behind ``imgunlearn unlearn`` and the Python API."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from ..data import UnlearningDataModule
from ..data.datasets import ImageRecordDataset
from ..errors import InvalidSettingError
from ..generators import Generator, load_generator
from ..runner import fit, make_trainer, resumed_seconds, run_folder
from ..settings import UnlearnSettings, module_arguments
from . import forget_map
from .module import UnlearningModule

log = logging.getLogger("imgunlearn")
# The forget map's threshold is calibrated on at most this many retain images.
CALIBRATION_IMAGES = 4096


def paper_lr(batch_size: int, base_lr: float = 1e-4) -> float:
    """The paper's learning-rate rule, lr = 1e-4 × batch / 256."""
    return base_lr * batch_size / 256


def unlearn(
    generator: Generator | str | Path,
    forget: Any = None,
    retain: Any = None,
    *,
    manifest: str | Path | None = None,
    settings: UnlearnSettings | None = None,
    skip_bad: bool = False,
    num_workers: int = 0,
    output_dir: str | Path | None = None,
    resume: str | Path | None = None,
    trainer_options: dict[str, Any] | None = None,
    progress: bool = True,
    **overrides: Any,
) -> Generator:
    """Return a copy of ``generator`` that has forgotten ``forget`` and kept ``retain``.

    ``forget`` and ``retain`` are image folders (or lists of paths); alternatively
    ``manifest`` is a CSV/JSONL file with ``path``, ``split`` and optional ``boxes``
    columns. The original generator is not modified. Checkpoints go to
    ``output_dir/checkpoints`` (a temporary folder, removed at the end, when not given) and
    ``resume`` continues from one. ``trainer_options`` are passed to ``lightning.Trainer``.

    The method's settings are the fields of :class:`~imgunlearn.settings.UnlearnSettings`,
    given as ``settings`` and/or as keyword arguments (``alpha=2.0, max_steps=300``), which
    win. Among them: with boxes, ``box_dilation`` latent cells around each box also take the
    forget loss (the encoder's receptive field spreads a face beyond its box); ``augment``
    mirrors and zooms out both sets while training, boxes included, so that faces smaller
    than the forget set's are forgotten too; ``retain_tail`` > 0 also penalises the largest
    ``tail_share`` of retained cells' embedding changes, which lowers the forget map's threshold.

    When training ends, the forget map's threshold is calibrated on the retain images
    (``map_margin`` × the ``map_percentile``-th percentile of the per-cell embedding change,
    docs/design.md §1b) and written into the card, with ``map_dilation``, ``map_passes`` and the digest of
    ``generator``, the reference a Sanitizer must be given to keep every pixel outside the map.
    """
    settings = (settings or UnlearnSettings()).replace(**overrides)
    max_steps, batch_size, seed = settings.max_steps, settings.batch_size, settings.seed
    if max_steps < 1:
        raise InvalidSettingError(f"max_steps must be >= 1, got {max_steps}")
    if not isinstance(generator, Generator):
        generator = load_generator(generator)
    L.seed_everything(seed, workers=True, verbose=False)
    data = UnlearningDataModule(forget=forget, retain=retain, manifest=manifest,
                                image_size=generator.sample_size, batch_size=batch_size,
                                num_workers=num_workers, skip_bad=skip_bad)
    data.setup("fit")  # bad or empty inputs fail here, before any training
    if data.skipped:
        log.warning("skipped %d unreadable image(s)", len(data.skipped))
    warmup = settings.warmup_steps if settings.warmup_steps is not None else max(1, max_steps // 20)
    module = UnlearningModule(generator, **{**module_arguments(UnlearningModule, settings), "warmup_steps": warmup})
    started = time.perf_counter()
    with run_folder(output_dir) as folder:
        trainer, checkpoint_dir = make_trainer(folder, max_steps, trainer_options, progress, description="unlearn")
        fit(trainer, module, data, checkpoint_dir, resume, max_steps)
    seconds = time.perf_counter() - started + resumed_seconds(trainer)

    module.cpu()  # the teacher is the caller's generator: give it back where it was
    result = module.student.eval().requires_grad_(True)
    # Evenly spaced retain images: a percentile over thousands of images' cells is settled, and a
    # 40 000-image retain set would otherwise cost more than the unlearning itself.
    records = data.retain_records[::max(1, -(-len(data.retain_records) // CALIBRATION_IMAGES))]
    retain_images = DataLoader(ImageRecordDataset(records, generator.sample_size), batch_size=32)
    map_entry = forget_map.calibrate_forget_map(result, generator, (batch["image"] for batch in retain_images),
                                                percentile=settings.map_percentile, margin=settings.map_margin,
                                                dilation=settings.map_dilation, passes=settings.map_passes,
                                                blur=settings.map_blur)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    result.card = {
        **generator.card,
        "history": [*generator.card.get("history", []), {
            "stage": "unlearn", **settings.to_dict(), "warmup_steps": warmup,
            "blank_color": list(settings.blank_color) if settings.target == "blank" else None,
            "forget": _describe(forget, manifest, "forget"), "forget_images": len(data.forget_records),
            "retain": _describe(retain, manifest, "retain"), "retain_images": len(data.retain_records),
            "region_level": any(r.boxes for r in data.forget_records), "augment": module.hparams["augment"],
            "skipped_files": [str(record.path) for record, _ in data.skipped],
            "final_losses": metrics, "world_size": trainer.world_size, "precision": trainer.precision,
            "seconds": round(seconds, 2),
        }],
        forget_map.CARD_KEY: map_entry,
    }
    return result


def _describe(source: Any, manifest: str | Path | None, split: str) -> str:
    if manifest is not None:
        return f"{manifest} ({split} rows)"
    if isinstance(source, (str, Path)):
        return str(source)
    return f"{type(source).__name__} of images"
