"""The settings of a training or unlearning run, in one place.

Each field is at once a keyword argument of :func:`imgunlearn.train_generator` /
:func:`imgunlearn.unlearn`, a flag of ``imgunlearn train`` / ``imgunlearn unlearn``
(``max_steps`` -> ``--max-steps``; help, metavar and parsing come from the field's
metadata), a key of their YAML configs and an entry of the model card's history. Adding an
option means adding a field here and using it where it acts; nothing else.

This module imports nothing heavy: the CLI builds its parser from it without loading torch.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidSettingError
from .vocabulary import DEFAULT_MASK_AREA, OBJECTIVES, TARGETS, TASK_NAMES

__all__ = ["DEFAULT_FORGET_PASSES", "DEFAULT_MAP_CONTEXT", "DEFAULT_MAP_DILATION", "DEFAULT_MAP_MARGIN",
           "DEFAULT_MAP_PERCENTILE",
           "MAP_CARD_PERCENTILES", "RunSettings", "TrainSettings", "UnlearnSettings", "add_flags", "module_arguments",
           "parse_color", "parse_tasks"]

# The forget map's threshold: margin x this percentile of retain cells' embedding change.
DEFAULT_MAP_PERCENTILE = 97.0
DEFAULT_MAP_MARGIN = 1.0
# Percentiles of that change the card records besides the chosen one, so the map's sensitivity
# can be chosen again when sanitising (preprocess --map-percentile), e.g. on a val split of the
# user's own data, without unlearning again.
MAP_CARD_PERCENTILES = (90.0, 95.0, 96.0, 97.0, 98.0, 99.0, 99.5, 99.7, 99.9)
# Latent cells the Sanitizer adds around the forget map each way; chosen with the percentile
# (both are recorded in the card, so a model unlearned with other map settings carries them).
DEFAULT_MAP_DILATION = 1
# Passes through the generator inside the forget map, chosen on the face corpus's val split for
# the noise target (docs/benchmarks.md, forget-map-val; 1 to 4 tried, the fewest faces kept at
# 4). Recorded in the card with the threshold: a black target needs one (forget-map-demo-val).
DEFAULT_FORGET_PASSES = 4
# Pixels of surroundings the forget passes see around the map's crops; None: whole tiles, the
# default, since crops let one or two more faces through wherever a split could tell them
# apart (docs/benchmarks.md, map-crops).
DEFAULT_MAP_CONTEXT: int | None = None
# What fills the forget map: 0, the unlearned generator's output (forget passes); a sigma > 0,
# the input Gaussian-blurred with it (pixels). Recorded in the card with the threshold.
DEFAULT_MAP_BLUR = 0.0
AUGMENT_PRESETS = ("default", "turns", "survey")


def parse_tasks(text: str) -> str | list[str]:
    """``"center_inpaint,outpaint"`` -> a list of task names (one name stays a string)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names or any(name not in TASK_NAMES for name in names):
        raise argparse.ArgumentTypeError(f"{text!r}: tasks are {', '.join(TASK_NAMES)}")
    return names[0] if len(names) == 1 else names


def parse_color(text: str) -> tuple[float, ...]:
    """``"0.5,0.5,0.5"`` -> an RGB triple in 0..1."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected three numbers like 0.5,0.5,0.5") from None
    if len(values) != 3 or not all(0 <= v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: expected three numbers in 0..1")
    return values


def _setting(default: Any, help: str, **cli: Any) -> Any:
    """A field with its flag's help and argparse options (``type``, ``metavar``, ...)."""
    return field(default=default, metadata={"help": help, "cli": cli})


_AUGMENT_HELP = ("augment training batches (boxes follow) so faces unlike the training set's count too: "
                 "'default' (also the bare flag) mirrors and zooms out; 'turns' adds 90-degree turns; "
                 "'survey' adds turns, enlarging, light, colour, grey, blur and JPEG. A config may give "
                 "'augment: {preset: survey, jpeg: 0.0, ...}' (fields of imgunlearn.data.augment.Augmentation)")


@dataclass(frozen=True)
class RunSettings:
    """What every optimisation run has."""

    max_steps: int = _setting(200, "optimiser steps to train for", type=int, metavar="N")
    batch_size: int = _setting(16, "images per batch (per set when unlearning)", type=int, metavar="B")
    lr: float = _setting(1e-4, "peak learning rate of AdamW (betas 0.9/0.95), after warm-up, cosine decay",
                         type=float)
    weight_decay: float = _setting(0.0, "AdamW weight decay", type=float)
    warmup_steps: int | None = _setting(None, "linear warm-up steps", type=int, metavar="N")
    seed: int = _setting(0, "random seed; the same seed on CPU gives the same weights", type=int)
    augment: Any = _setting(None, _AUGMENT_HELP, nargs="?", const=True, choices=AUGMENT_PRESETS, metavar="PRESET")

    def replace(self, **changes: Any) -> RunSettings:
        """A copy with ``changes``; a name that is not a setting is refused, naming the known ones."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise InvalidSettingError(f"unknown setting(s) {unknown} for {type(self).__name__}; known: {sorted(names)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (tuples as lists), as the card and a YAML config hold them."""
        return {f.name: list(value) if isinstance(value := getattr(self, f.name), tuple) else value
                for f in dataclasses.fields(self)}


@dataclass(frozen=True)
class TrainSettings(RunSettings):
    """Settings of base-generator training (:func:`imgunlearn.train_generator`)."""

    max_steps: int = _setting(2000, "optimiser steps to train for", type=int, metavar="N")
    batch_size: int = _setting(32, "images per batch", type=int, metavar="B")
    lr: float = _setting(1e-3, "peak learning rate of AdamW (betas 0.9/0.95), after warm-up, cosine decay",
                         type=float)
    warmup_steps: int = _setting(100, "linear warm-up steps", type=int, metavar="N")
    tasks: Sequence[str] = _setting(TASK_NAMES, "I2I tasks drawn per sample", type=parse_tasks,
                                    metavar="|".join(TASK_NAMES))
    mask_area: float = _setting(DEFAULT_MASK_AREA, "hidden share for center_inpaint/outpaint", type=float)
    family_loss_weight: float | None = _setting(None, "weight of the VQ commitment or KL term (default: the "
                                                "family's own, VQ 1, KL 1e-3)", type=float)


@dataclass(frozen=True)
class UnlearnSettings(RunSettings):
    """Settings of one unlearning run (:func:`imgunlearn.unlearn`): the paper's objective or a
    baseline, its target, the task, the optimiser, augmentation and the forget map's calibration."""

    objective: str = _setting("ours", "ours or a baseline", choices=OBJECTIVES)
    target: str = _setting("noise", "what forget images should become", choices=TARGETS)
    alpha: float = _setting(0.2, "weight of the forget loss, L = L_R + alpha L_F", type=float)
    task: str | Sequence[str] = _setting(
        "reconstruct", "I2I task whose mask is applied on both sides; a comma list (center_inpaint,outpaint) "
        "draws one per sample so one model serves them all", type=parse_tasks, metavar="|".join(TASK_NAMES))
    mask_area: float = _setting(DEFAULT_MASK_AREA, "hidden share for center_inpaint/outpaint", type=float)
    warmup_steps: int | None = _setting(None, "linear warm-up steps (default: max_steps // 20)", type=int,
                                        metavar="N")
    blank_color: tuple[float, float, float] = _setting((0.5, 0.5, 0.5), "colour of the blank target, RGB in 0..1",
                                                       type=parse_color, metavar="R,G,B")
    box_dilation: int = _setting(1, "with manifest boxes: latent cells around each box that are forgotten too",
                                 type=int, metavar="CELLS")
    frozen_encoder_stages: int = _setting(0, "the first N stages of the encoder, from the input, keep the "
                                          "original's weights (0: the whole encoder learns, as in the paper)",
                                          type=int, metavar="N")
    retain_tail: float = _setting(0.0, "also penalise the largest --tail-share of retained cells' embedding "
                                  "changes with this weight: a lower forget-map threshold (0: off)", type=float,
                                  metavar="WEIGHT")
    tail_share: float = _setting(0.01, "share of retained cells --retain-tail averages", type=float, metavar="SHARE")
    retain_output: float = _setting(0.0, "also keep the decoded retain images: this weight times the mean squared "
                                    "difference of the student's and the original's decoder outputs (0: off)",
                                    type=float, metavar="WEIGHT")
    forget_margin: float = _setting(0.0, "also ask every forget cell's embedding to move at least --margin-level "
                                    "from the original's, with this weight, so the forget map finds it (0: off)",
                                    type=float, metavar="WEIGHT")
    margin_level: float = _setting(1.0, "the least per-cell change --forget-margin asks for (mean squared over "
                                   "channels, the forget map's d)", type=float, metavar="D")
    map_percentile: float = _setting(DEFAULT_MAP_PERCENTILE, "forget map: percentile of the retain cells' "
                                     "embedding change that the threshold starts from", type=float, metavar="P")
    map_margin: float = _setting(DEFAULT_MAP_MARGIN, "forget map: threshold = this times that percentile, "
                                 "recorded in the card", type=float, metavar="X")
    map_dilation: int = _setting(DEFAULT_MAP_DILATION, "forget map: latent cells the Sanitizer adds around the "
                                 "map each way, recorded in the card with the threshold", type=int, metavar="CELLS")
    map_passes: int = _setting(DEFAULT_FORGET_PASSES, "forget map: times the Sanitizer passes the map's tiles "
                               "through the generator (its forget_passes), recorded in the card with the threshold",
                               type=int, metavar="N")
    map_blur: float = _setting(DEFAULT_MAP_BLUR, "forget map: the Sanitizer fills the map with the input "
                               "Gaussian-blurred with this sigma instead of the generator's output (0: the "
                               "generator's; its map_blur), recorded in the card with the threshold",
                               type=float, metavar="PX")


def module_arguments(module_class: type, settings: RunSettings) -> dict[str, Any]:
    """The settings ``module_class.__init__`` takes, by name: a setting reaches the
    LightningModule by being one of its parameters (the module's hparams record them)."""
    import inspect

    parameters = inspect.signature(module_class.__init__).parameters
    names = {f.name for f in dataclasses.fields(settings)}
    return {name: getattr(settings, name) for name in parameters if name in names}


def add_flags(parser: argparse.ArgumentParser, settings: type[RunSettings]) -> None:
    """One flag per field of ``settings``, default ``None`` (so a config file's value, then the
    field's default, applies), with the field's default shown in its help."""
    for setting in dataclasses.fields(settings):
        default = setting.default
        shown = "" if default is None or "(default" in setting.metadata["help"] else (
            f" (default {','.join(map(str, default)) if isinstance(default, tuple) else default})")
        parser.add_argument(f"--{setting.name.replace('_', '-')}", dest=setting.name, default=None,
                            help=setting.metadata["help"] + shown, **setting.metadata["cli"])
