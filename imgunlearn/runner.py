"""What base training and unlearning share around the Lightning Trainer: building it from
user options, checkpoints a killed run can resume from, and refusing useless resumes."""

from __future__ import annotations

import inspect
import logging
import signal
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, ProgressBar
from lightning.pytorch.loggers import CSVLogger
from tqdm.auto import tqdm

from .errors import InvalidSettingError

CHECKPOINT_DIRNAME = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
# Set by imgunlearn itself; a --trainer.* option may not override them.
_RESERVED_TRAINER_OPTIONS = {"max_steps", "default_root_dir"}


# Lightning warnings that say nothing about a run of ours: the frozen teacher is in eval mode
# on purpose, small sets have few batches per epoch, and a deprecation inside Lightning.
_LIGHTNING_NOISE = (".*module\\(s\\) in eval mode.*", ".*smaller than the logging interval.*", ".*LeafSpec.*",
                    ".*does not have many workers.*")


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in record.getMessage()


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropTips())


class ResumeError(InvalidSettingError):
    """A checkpoint that cannot be resumed (missing, or would train zero more steps)."""


def validate_trainer_options(options: dict[str, Any] | None) -> dict[str, Any]:
    options = dict(options or {})
    allowed = set(inspect.signature(L.Trainer.__init__).parameters) - {"self"}
    for key in options:
        if key in _RESERVED_TRAINER_OPTIONS:
            raise InvalidSettingError(f"--trainer.{key} is set by imgunlearn; use the command's own flag instead")
        if key not in allowed:
            raise InvalidSettingError(f"unknown Trainer option --trainer.{key}; see lightning.Trainer's arguments")
    return options


def resolve_checkpoint(resume: str | Path) -> Path:
    """A checkpoint file, or the run's output directory (its last checkpoint)."""
    path = Path(resume)
    if path.is_dir():
        path = path / CHECKPOINT_DIRNAME / LAST_CHECKPOINT
    if not path.is_file():
        raise ResumeError(f"{resume}: no checkpoint to resume from (looked for {path})")
    return path


def checkpoint_step(path: Path) -> int:
    # weights_only: a checkpoint file is data; it must never run code on load.
    state = torch.load(path, map_location="cpu", weights_only=True)
    return int(state.get("global_step", 0))


def check_resume(resume: str | Path, max_steps: int) -> Path:
    """The checkpoint to resume from, or ResumeError if it would train no more steps."""
    path = resolve_checkpoint(resume)
    done = checkpoint_step(path)
    if done >= max_steps:
        raise ResumeError(
            f"{path}: this run already finished {done} of --max-steps {max_steps}; resuming "
            f"would train zero more steps. Raise --max-steps to train further."
        )
    return path


class StepProgressBar(ProgressBar):
    """One bar over all optimiser steps (Lightning's default restarts every epoch, which
    says little when a run is counted in steps over small sets)."""

    def __init__(self, description: str = "steps") -> None:
        super().__init__()
        self.description = description
        self._enabled = True
        self._bar: tqdm | None = None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._bar = tqdm(total=trainer.max_steps, initial=trainer.global_step, desc=self.description,
                         unit="step", dynamic_ncols=True, disable=not self._enabled)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self._bar is None:
            return
        self._bar.update(trainer.global_step - self._bar.n)
        metrics = {k: f"{float(v):.4g}" for k, v in trainer.progress_bar_metrics.items()}
        self._bar.set_postfix(metrics, refresh=False)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class RunClock(Callback):
    """Training seconds carried across resumes: every checkpoint holds the seconds trained so
    far, so the card of a resumed run counts the killed run's time too, not the resumed part alone."""

    def __init__(self) -> None:
        self.previous = 0.0  # seconds of the runs this one resumed
        self._started: float | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.perf_counter()

    def state_dict(self) -> dict[str, float]:
        return {"seconds": self.previous + (time.perf_counter() - self._started if self._started else 0.0)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.previous = float(state_dict.get("seconds", 0.0))


def resumed_seconds(trainer: L.Trainer) -> float:
    """Seconds the runs this trainer resumed had already trained (0 for a fresh run)."""
    return next((callback.previous for callback in trainer.callbacks if isinstance(callback, RunClock)), 0.0)


@contextmanager
def run_folder(output_dir: str | Path | None) -> Iterator[Path]:
    """``output_dir``, or a temporary folder (checkpoints and logs of a run that asked for no
    output) removed when the run ends, so a Python ``unlearn()`` leaves nothing behind."""
    if output_dir is not None:
        yield Path(output_dir)
        return
    with tempfile.TemporaryDirectory(prefix="imgunlearn-") as folder:
        yield Path(folder)


def make_trainer(output_dir: str | Path, max_steps: int, trainer_options: dict[str, Any] | None = None,
                 progress: bool = True, checkpoint_every: int | None = None, description: str = "steps") -> tuple[L.Trainer, Path]:
    """A Trainer that checkpoints into ``output_dir/checkpoints`` and logs a CSV of losses."""
    options = validate_trainer_options(trainer_options)
    root = Path(output_dir)
    checkpoint_dir = root / CHECKPOINT_DIRNAME
    every = checkpoint_every or max(1, min(100, max_steps // 10))
    callbacks = list(options.pop("callbacks", None) or [])
    if progress and options.get("enable_progress_bar", True):
        callbacks.append(StepProgressBar(description))
    callbacks.append(ModelCheckpoint(dirpath=checkpoint_dir, save_last=True, save_top_k=0,
                                     every_n_train_steps=every))
    callbacks.append(RunClock())
    defaults: dict[str, Any] = {
        "accelerator": "auto",
        "devices": 1,
        "logger": CSVLogger(root, name="logs"),  # version_N per (re)start: resuming keeps old curves
        "enable_progress_bar": progress,
        "enable_model_summary": False,
        "log_every_n_steps": max(1, min(10, max_steps)),
        "num_sanity_val_steps": 0,
    }
    defaults.update(options)
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        trainer = L.Trainer(max_steps=max_steps, default_root_dir=root, callbacks=callbacks, **defaults)
    except MisconfigurationException as error:  # e.g. accelerator "gpu" on a machine without one
        shown = ", ".join(f"--trainer.{k} {v}" for k, v in options.items()) or "the default Trainer options"
        raise InvalidSettingError(f"{shown}: {error}") from None
    return trainer, checkpoint_dir


def fit(trainer: L.Trainer, module: L.LightningModule, datamodule: L.LightningDataModule,
        checkpoint_dir: Path, resume: str | Path | None, max_steps: int) -> None:
    """Fit (resuming if asked) and leave a final checkpoint behind."""
    ckpt_path = check_resume(resume, max_steps) if resume is not None else None
    with torch.enable_grad(), warnings.catch_warnings():  # enable_grad restores the caller's mode after
        for noise in _LIGHTNING_NOISE:
            warnings.filterwarnings("ignore", message=noise)
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        except SystemExit:
            # Lightning turns Ctrl-C into a graceful shutdown and sys.exit(1): say what to do next.
            if not trainer.interrupted:
                raise
    if trainer.interrupted:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning ignores SIGINT from then on
        last = checkpoint_dir / LAST_CHECKPOINT
        hint = (f"; go on with the same command and --resume (from {last.parent.parent})" if last.is_file()
                else "; no checkpoint was written yet: run it again from the start")
        raise KeyboardInterrupt(f"interrupted{hint}")
    trainer.save_checkpoint(checkpoint_dir / LAST_CHECKPOINT, weights_only=False)
