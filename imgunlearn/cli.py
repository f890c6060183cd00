"""``imgunlearn`` command line (train | unlearn | generate | evaluate | find-faces | split-survey |
preprocess | demo): a thin layer over the Python API.

Settings come, in rising precedence, from the function defaults, ``--config FILE.yaml``
(keys spelled like the flags, with ``_`` for ``-``, plus ``generator:`` and ``trainer:``
sections), and the flags. ``--trainer.KEY VALUE`` passes any ``lightning.Trainer`` option.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from .errors import ImgUnlearnError
from .settings import (DEFAULT_FORGET_PASSES, DEFAULT_MAP_CONTEXT, DEFAULT_MAP_DILATION, MAP_CARD_PERCENTILES,
                       TrainSettings, UnlearnSettings, add_flags)

TRAINER_HELP = """\
Lightning Trainer options pass through as --trainer.KEY VALUE (or --trainer.KEY=VALUE); VALUE
is read as YAML, e.g. --trainer.accelerator gpu --trainer.devices 4 --trainer.precision bf16-mixed.
A config file may hold the same under a 'trainer:' section."""
PREPROCESS_TRAINER_HELP = """\
Several processes, GPUs or nodes (Lightning Fabric): --trainer.accelerator, --trainer.devices,
--trainer.num_nodes, --trainer.strategy and --trainer.precision, as for train and unlearn, e.g.
--trainer.accelerator cpu --trainer.devices 2 --trainer.strategy ddp. Files are dealt out to the
processes in turn; each writes its own audit shard, merged into DST_DIR/audit.jsonl at the end."""


class CLIError(ImgUnlearnError):
    """A usage problem to report without a traceback."""


def _split_trainer_options(argv: Sequence[str]) -> tuple[list[str], dict[str, Any]]:
    """Pull ``--trainer.KEY [VALUE]`` out of argv; the rest goes to argparse."""
    rest: list[str] = []
    options: dict[str, Any] = {}
    items = list(argv)
    i = 0
    while i < len(items):
        token = items[i]
        if token.startswith("--trainer."):
            key, has_value, value = token[len("--trainer."):].partition("=")
            if not key:
                raise CLIError(f"{token}: missing Trainer option name")
            if not has_value:
                if i + 1 < len(items) and not items[i + 1].startswith("--"):
                    value, i = items[i + 1], i + 1
                else:
                    value = "true"
            options[key.replace("-", "_")] = yaml.safe_load(value)
        else:
            rest.append(token)
        i += 1
    return rest, options


def _read_config(path: str | None) -> dict[str, Any]:
    if path is None:
        return {}
    config_path = Path(path)
    if not config_path.is_file():
        raise CLIError(f"{path}: no such config file")
    try:
        config = yaml.safe_load(config_path.read_text()) or {}
    except yaml.YAMLError as error:
        raise CLIError(f"{path}: not valid YAML ({error})") from error
    if not isinstance(config, dict):
        raise CLIError(f"{path}: expected a mapping of settings at the top level")
    return {key.replace("-", "_"): value for key, value in config.items()}


def _settings(args: argparse.Namespace, names: Sequence[str], trainer: dict[str, Any]) -> dict[str, Any]:
    """Merge config-file values and flags (flags win) for the keyword arguments ``names``."""
    config = _read_config(getattr(args, "config", None))
    known = set(names) | {"generator", "trainer"}
    unknown = sorted(set(config) - known)
    if unknown:
        raise CLIError(f"{args.config}: unknown setting(s) {unknown}; known: {sorted(known)}")
    settings = {name: config[name] for name in names if name in config}
    settings.update({name: getattr(args, name) for name in names if getattr(args, name, None) is not None})
    if settings.get("resume") is True:  # a bare --resume (or `resume: true`): the run's own folder
        settings["resume"] = getattr(args, "output", None)
    settings["trainer_options"] = {**(config.get("trainer") or {}), **trainer, **_device_options(args, trainer)}
    settings["_generator"] = config.get("generator")
    return settings


def _device_options(args: argparse.Namespace, trainer: dict[str, Any]) -> dict[str, Any]:
    """``--device`` in the Trainer's words: cpu -> accelerator cpu; cuda[:N] -> gpu, device N."""
    device = getattr(args, "device", None)
    if device is None:
        return {}
    if {"accelerator", "devices"} & set(trainer):
        raise CLIError("give either --device or --trainer.accelerator/--trainer.devices, not both")
    kind, _, index = device.partition(":")
    if kind == "cpu" and not index:
        return {"accelerator": "cpu", "devices": 1}
    if kind == "cuda" and (not index or index.isdigit()):
        return {"accelerator": "gpu", "devices": [int(index)] if index else 1}
    if kind == "mps" and not index:
        return {"accelerator": "mps", "devices": 1}
    raise CLIError(f"--device {device}: expected cpu, cuda, cuda:N or mps")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written, and every option's default in its help line unless the line
    already states it (``--batch-size ... (default 4)``)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (action.option_strings and not action.required and "default" not in text.lower()
                and action.default not in (None, False, True, argparse.SUPPRESS)):
            text += " (default %(default)s)"
        return text


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE.yaml", help="read settings from a YAML file (flags override it)")
    parser.add_argument("--device", help="cpu, cuda or cuda:N, as for the other commands: sets the Trainer's "
                                         "accelerator and device (more devices: --trainer.devices N)")
    parser.add_argument("--num-workers", dest="num_workers", type=int, metavar="N", help="data-loading worker processes (default 0)")
    parser.add_argument("--skip-bad", dest="skip_bad", action="store_true", default=None,
                        help="skip unreadable images (and report how many) instead of stopping")
    parser.add_argument("--resume", metavar="CKPT", nargs="?", const=True,
                        help="continue a killed run: alone, from --output's last checkpoint (as preprocess's "
                             "--resume goes on in its --output); or from this checkpoint or run folder. Refused "
                             "if it would train zero more steps")
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                        help="hide progress bars")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .vocabulary import DEFAULT_MASK_AREA, TARGETS, TASK_NAMES

    parser = argparse.ArgumentParser(
        prog="imgunlearn",
        description="Make image-to-image generators forget (Li et al., ICLR 2024).",
        epilog=TRAINER_HELP, formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"imgunlearn {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser(
        "train", help="train a base generator on an image folder",
        description="Train a base generator (all configured I2I tasks at once) and save it in diffusers format.",
        epilog=TRAINER_HELP)
    train.add_argument("--data", required=True, metavar="DIR", help="folder of training images (searched recursively)")
    train.add_argument("--output", required=True, metavar="MODEL_DIR", help="where the generator is saved")
    add_flags(train, TrainSettings)
    _add_common(train)

    unlearn = commands.add_parser(
        "unlearn", help="make a generator forget a set of images",
        description="Fine-tune the generator's encoder so forget images (or their boxes) map to noise, a blank or "
                    "their own mean colour while retain embeddings stay put; save the result in diffusers format.",
        epilog=TRAINER_HELP)
    unlearn.add_argument("--generator", required=True, metavar="MODEL_DIR", help="generator directory or hub id")
    unlearn.add_argument("--forget", metavar="DIR", help="folder of images to forget")
    unlearn.add_argument("--retain", metavar="DIR", help="folder of images to keep (a proxy set of the same domain works)")
    unlearn.add_argument("--manifest", metavar="FILE", help="CSV/JSONL with path, split (forget|retain), optional boxes; instead of --forget/--retain")
    unlearn.add_argument("--output", required=True, metavar="OUT_DIR", help="where the unlearned generator is saved")
    add_flags(unlearn, UnlearnSettings)
    _add_common(unlearn)

    generate = commands.add_parser(
        "generate", help="run a generator over a folder of images",
        description="Write one RGB PNG per input image (same file stem, sub-folders mirrored).")
    generate.add_argument("--generator", required=True, metavar="MODEL_DIR", help="generator directory or hub id")
    generate.add_argument("--input", required=True, metavar="DIR", help="folder of input images")
    generate.add_argument("--output", required=True, metavar="DIR", help="folder for the output PNGs")
    generate.add_argument("--task", choices=TASK_NAMES, default="reconstruct", help="I2I task (default reconstruct)")
    generate.add_argument("--mask-area", dest="mask_area", type=float, default=DEFAULT_MASK_AREA,
                          help=f"hidden share for center_inpaint/outpaint (default {DEFAULT_MASK_AREA})")
    generate.add_argument("--batch-size", dest="batch_size", type=int, default=16, help="images per forward pass")
    generate.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    generate.add_argument("--skip-bad", dest="skip_bad", action="store_true", help="skip unreadable images")
    generate.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    evaluate = commands.add_parser(
        "evaluate", help="measure a generator on forget and retain sets",
        description="Compare the generator's outputs with the ground truth and with a reference model's "
                    "(e.g. the original); print a Markdown table, write a JSON report and an image grid.")
    evaluate.add_argument("--generator", required=True, metavar="MODEL_DIR", help="generator to measure (directory or hub id)")
    evaluate.add_argument("--reference", metavar="ORIGINAL_DIR", help="reference generator, usually the original before unlearning")
    evaluate.add_argument("--forget", required=True, metavar="DIR", help="forget-set images (held out, ideally)")
    evaluate.add_argument("--retain", required=True, metavar="DIR", help="retain-set images")
    evaluate.add_argument("--task", choices=TASK_NAMES, default="center_inpaint", help="I2I task (default center_inpaint)")
    evaluate.add_argument("--mask-area", dest="mask_area", type=float, default=DEFAULT_MASK_AREA,
                          help=f"hidden share for center_inpaint/outpaint (default {DEFAULT_MASK_AREA})")
    evaluate.add_argument("--output", required=True, metavar="report.json", help="where the JSON report goes")
    evaluate.add_argument("--grid", metavar="PNG", help="image grid path (default: the report's path with .png)")
    evaluate.add_argument("--features", metavar="SPEC",
                          help="Fréchet-distance features: classifier:DIR, mobilenet_v2:WEIGHTS, inception[:WEIGHTS], "
                               "open_clip:MODEL[/TAG] (default: the --classifier's features, else no FD)")
    evaluate.add_argument("--classifier", metavar="DIR", help="a saved imgunlearn classifier: accuracy (labels from *_c<k> file names) and IS")
    evaluate.add_argument("--clip", metavar="SPEC", help="open_clip:MODEL/TAG or open_clip:MODEL//CHECKPOINT for the CLIP cosine")
    evaluate.add_argument("--max-images", dest="max_images", type=int, metavar="N", help="use at most N images per set")
    evaluate.add_argument("--batch-size", dest="batch_size", type=int, default=64, help="images per forward pass")
    evaluate.add_argument("--device", default="cpu", help="torch device (default cpu)")
    evaluate.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")

    find_faces = commands.add_parser(
        "find-faces", help="find faces in a folder of photos (MTCNN, optionally filtered by CLIP)",
        description="Detect faces in every image under SRC_DIR and write one JSON line per image "
                    "(path, width, height, boxes, scores).")
    find_faces.add_argument("src", metavar="SRC_DIR", help="folder of photos (searched recursively)")
    find_faces.add_argument("--output", required=True, metavar="boxes.jsonl", help="where the boxes go")
    _add_face_options(find_faces)

    split = commands.add_parser(
        "split-survey", help="tile a photo folder into a forget set (tiles with faces) and a retain set",
        description="Cut every photo into tiles; tiles with faces (and their boxes) become the forget set, the "
                    "others the retain set; writes OUT/forget, OUT/retain and OUT/manifest.jsonl, which "
                    "'imgunlearn unlearn --manifest' accepts.")
    split.add_argument("src", metavar="SRC_DIR", help="folder of photos (searched recursively; never written to)")
    split.add_argument("--output", required=True, metavar="DIR", help="where tiles and the manifest go")
    split.add_argument("--tile", type=int, default=256, help="tile side in pixels (default 256)")
    split.add_argument("--overlap", type=int, default=0, help="pixels shared by neighbouring tiles (default 0)")
    split.add_argument("--face-margin", dest="face_margin", type=float, default=0.1, metavar="SHARE",
                       help="grow each face box by this share of its longer side; every tile the grown box reaches "
                            "into is a forget tile (default 0.1)")
    _add_face_options(split)

    preprocess = commands.add_parser(
        "preprocess", help="sanitize a survey folder through an unlearned generator",
        description="Run every JPEG, PNG and TIFF under SRC_DIR through the generator (overlapping tiles, blended), "
                    "re-detect faces in the output, and write the same tree under DST_DIR with EXIF (GPS), ICC "
                    "profile and GeoTIFF georeferencing kept, plus DST_DIR/audit.jsonl. Exits 1 if any file failed.",
        epilog=PREPROCESS_TRAINER_HELP)
    preprocess.add_argument("src", metavar="SRC_DIR", help="folder of photos (never written to)")
    preprocess.add_argument("--generator", required=True, metavar="DIR", help="the unlearned generator")
    preprocess.add_argument("--reference", metavar="BASE_DIR",
                            help="the base the generator was unlearned from (recommended): only what the generator "
                                 "forgot is re-synthesised, every other pixel is the input's (the forget map)")
    preprocess.add_argument("--forget-threshold", dest="forget_threshold", type=float, metavar="TAU",
                            help="with --reference: override the forget map's threshold recorded in the card")
    preprocess.add_argument("--map-percentile", dest="map_percentile", type=float, metavar="P",
                            help="with --reference: take the threshold at this percentile of the retain cells' "
                                 "change instead, from the table in the card "
                                 f"({', '.join(f'{q:g}' for q in MAP_CARD_PERCENTILES)}): a higher one keeps more "
                                 "pixels and lets more of what was forgotten through; choose it on a val split")
    preprocess.add_argument("--map-dilation", dest="map_dilation", type=int, metavar="CELLS",
                            help="with --reference: latent cells added around the forget map (default: the one the "
                                 f"card records with the threshold; {DEFAULT_MAP_DILATION} for older cards)")
    preprocess.add_argument("--feather", type=int, default=4, metavar="PX",
                            help="with --reference: pixels over which the map's edge fades into the input (default 4)")
    preprocess.add_argument("--forget-passes", dest="forget_passes", type=int, metavar="N",
                            help="times each re-synthesised crop or tile goes through the generator, each pass "
                                 "taking the last one's output (default with --reference: the card's, recorded with "
                                 f"the threshold; {DEFAULT_FORGET_PASSES} for older cards; 1 without, where every "
                                 "pixel would be re-synthesised again)")
    preprocess.add_argument("--map-context", dest="map_context", type=_map_context, default=DEFAULT_MAP_CONTEXT,
                            metavar="PX", help="with --reference: run the forget passes on crops around the map with "
                                               "this many pixels of surroundings, where they cost less than whole "
                                               "tiles (faster on sparse maps, but they let slightly more faces "
                                               "through; see docs/benchmarks.md); 'tiles', the default, runs them "
                                               "on the whole tiles the map reaches")
    preprocess.add_argument("--map-blur", dest="map_blur", type=float, metavar="PX",
                            help="with --reference: fill the forget map with the input Gaussian-blurred with this "
                                 "sigma instead of the generator's output (the unlearned encoder still decides where; "
                                 "no decoder runs; in pixels, so raise it for larger faces); default: the card's, 0 "
                                 "(the generator's output) for older cards")
    preprocess.add_argument("--save-masks", dest="save_masks", action="store_true",
                            help="with --reference: write each forget map as NAME.forget-map.png beside its output")
    preprocess.add_argument("--precision", choices=["32", "bf16", "fp16"], default=None,
                            help="generator precision (default: bf16 on a CPU that runs it natively, AMX or AVX-512 "
                                 "BF16, where the forget map ran 2.5-2.9x faster; 32 elsewhere; bf16 / fp16 help on a GPU)")
    preprocess.add_argument("--channels-last", dest="channels_last", action=argparse.BooleanOptionalAction,
                            default=None,
                            help="channels-last memory layout for the generators (default: on a CPU, where it ran "
                                 "the KL generators up to 1.6-1.8x faster; off on a GPU, where the KL family's group "
                                 "norms ran slower)")
    preprocess.add_argument("--compile", action="store_true",
                            help="torch.compile the generators (on a GPU; the first photo pays the compilation)")
    preprocess.add_argument("--count-input-faces", dest="count_input_faces", action="store_true",
                            help="also detect the faces of every input for the audit log (a second MTCNN pass)")
    preprocess.add_argument("--output", required=True, metavar="DST_DIR", help="where sanitized photos go")
    preprocess.add_argument("--tile", type=int, default=256, help="tile side in pixels (default 256)")
    preprocess.add_argument("--overlap", type=int, default=32, help="blended overlap between tiles (default 32)")
    preprocess.add_argument("--batch-size", dest="batch_size", type=int, default=4, help="tiles per forward pass")
    preprocess.add_argument("--fail-closed", dest="fail_closed", action="store_true", default=True,
                            help="blank every face the post-check still finds and record it in the audit log "
                                 "(the default)")
    preprocess.add_argument("--no-fail-closed", dest="fail_closed", action="store_false",
                            help="leave faces the post-check finds in place, record them, and exit 1")
    preprocess.add_argument("--keep-metadata", dest="keep_metadata", choices=["survey", "all", "none"],
                            default="survey",
                            help="survey (default): GPS, capture time, camera and optics, ICC; drops thumbnails, "
                                 "XMP, IPTC, MakerNote and free text. all: every tag the format can hold (never a "
                                 "thumbnail or other embedded image). none: only the ICC profile")
    preprocess.add_argument("--no-face-check", dest="face_check", action="store_false",
                            help="skip the MTCNN post-check (faster; nothing is blanked or flagged)")
    _add_rotations(preprocess)
    preprocess.add_argument("--max-megapixels", dest="max_megapixels", type=float, default=150.0, metavar="MP",
                            help="refuse (and log) photos larger than this, from the header, before decoding "
                                 "(default 150)")
    preprocess.add_argument("--resume", action="store_true", help="skip files a killed run already finished")
    preprocess.add_argument("--device", help="torch device (default cpu); for several processes, GPUs or nodes "
                                             "use --trainer.accelerator/devices/num_nodes/strategy instead")
    preprocess.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")

    demo = commands.add_parser(
        "demo", help="forget the faces in the shipped demo tiles and report (a few minutes on a CPU)",
        description="Load the shipped demo base generator, make it forget the faces of the demo training tiles "
                    "region by region, evaluate on the held-out tiles, and write OUT/unlearned, OUT/metrics.json "
                    "and OUT/report.html.")
    demo.add_argument("--output", default="runs/demo", metavar="OUT", help="output folder (default runs/demo)")
    demo.add_argument("--assets", metavar="DIR", help="demo assets folder (default: the checkout's assets/, else the installed copy)")
    demo.add_argument("--target", choices=TARGETS, help="what faces become: noise (default), blank, or fill (each face a patch of its own mean colour)")
    demo.add_argument("--max-steps", dest="max_steps", type=int, metavar="N",
                      help="unlearning steps (default 2500 in bf16 autocast, 1000 where the device has no native "
                           "bfloat16)")
    demo.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    demo.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    for command in commands.choices.values():
        command.formatter_class = _HelpFormatter
    return parser


def _add_face_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--min-face-size", dest="min_face_size", type=int, default=12, help="smallest face in pixels (default 12)")
    parser.add_argument("--score-threshold", dest="score_threshold", type=float, default=0.9,
                        help="drop detections scoring below this (default 0.9)")
    parser.add_argument("--detect-tile", dest="detect_tile", type=int, default=512,
                        help="photos larger than this are searched in tiles of this size (0: whole; default 512)")
    parser.add_argument("--detect-overlap", dest="detect_overlap", type=int, default=64, help="overlap of detection tiles (default 64)")
    _add_rotations(parser)
    parser.add_argument("--filter", dest="filter_label", metavar="LABEL",
                        help="keep only faces an open_clip zero-shot filter labels LABEL (child or adult)")
    parser.add_argument("--clip-model", dest="clip_model", default="ViT-B-32", help="open_clip model name for --filter")
    parser.add_argument("--clip-pretrained", dest="clip_pretrained", default="openai",
                        help="open_clip pretrained tag or a local checkpoint file for --filter (default openai)")
    parser.add_argument("--clip-threshold", dest="clip_threshold", type=float, default=0.5,
                        help="probability of LABEL needed to keep a face (default 0.5)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")


def _rotations(text: str) -> tuple[int, ...]:
    # Parsed here; FaceFinder says which angles it accepts (multiples of 90).
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give angles in degrees, e.g. 0,90,180,270") from None


def _add_rotations(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rotations", type=_rotations, default=(0, 90, 180, 270), metavar="ANGLES",
                        help="also search faces turned by these angles (people lie at every angle in nadir photos); "
                             "each angle is one more detection pass (default 0,90,180,270; 0 is fastest)")


# What a config file or flag may set besides the settings dataclasses' fields.
_RUN_OPTIONS = ("num_workers", "skip_bad", "resume", "progress")


def _names(settings: type, *extra: str) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(settings)) + _RUN_OPTIONS + extra


def _is_main_process() -> bool:
    """With --trainer.devices N every process gets here; only rank 0 writes the model."""
    from lightning.pytorch.utilities import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def _run_train(args: argparse.Namespace, trainer: dict[str, Any]) -> None:
    from .generators import load_generator
    from .training import train_generator

    settings = _settings(args, _names(TrainSettings), trainer)
    spec = settings.pop("_generator")
    output = Path(args.output)
    if spec is None:
        if (output / "config.json").is_file() and args.resume:
            spec = load_generator(output)
        else:
            raise CLIError("train needs a generator architecture: give --config (e.g. "
                           "configs/generators/tiny-kl.yaml) with a 'generator:' section")
    elif not isinstance(spec, dict) or "family" not in spec or "config" not in spec:
        from .generators import FAMILIES

        raise CLIError(f"{args.config}: 'generator:' needs 'family' ({'|'.join(sorted(FAMILIES))}) and 'config' "
                       "(diffusers model config)")
    generator = train_generator(spec, args.data, output_dir=output, **settings)
    if not _is_main_process():
        return
    generator.save_pretrained(output)
    losses = generator.card["history"][-1]["final_losses"]
    print(f"saved {generator.family} generator to {output} "
          f"(reconstruction loss {losses.get('reconstruction_loss', float('nan')):.4f})")


def _run_unlearn(args: argparse.Namespace, trainer: dict[str, Any]) -> None:
    from .unlearning import unlearn

    settings = _settings(args, _names(UnlearnSettings, "forget", "retain", "manifest"), trainer)
    if settings.pop("_generator") is not None:
        raise CLIError(f"{args.config}: 'generator:' belongs in a train config; unlearn takes --generator MODEL_DIR")
    if "blank_color" in settings:
        settings["blank_color"] = tuple(settings["blank_color"])
    if settings.get("manifest") is None and (settings.get("forget") is None or settings.get("retain") is None):
        raise CLIError("unlearn needs --forget DIR and --retain DIR, or --manifest FILE")
    output = Path(args.output)
    generator = unlearn(args.generator, output_dir=output, **settings)
    if not _is_main_process():
        return
    generator.save_pretrained(output)
    stage = generator.card["history"][-1]
    losses = stage["final_losses"]
    skipped = f", skipped {len(stage['skipped_files'])} bad file(s)" if stage["skipped_files"] else ""
    print(f"saved unlearned generator to {output}: forgot {stage['forget_images']} image(s), "
          f"retained {stage['retain_images']}{skipped}; retain loss {losses.get('retain_loss', float('nan')):.4g}, "
          f"forget loss {losses.get('forget_loss', float('nan')):.4g}, {stage['seconds']:.1f} s")


def _run_generate(args: argparse.Namespace) -> None:
    from .generate import generate_folder
    from .generators import load_generator
    from .tasks import Task

    generator = load_generator(args.generator)
    written = generate_folder(generator, args.input, args.output, task=Task(args.task, area=args.mask_area),
                              batch_size=args.batch_size, device=args.device, skip_bad=args.skip_bad,
                              progress=args.progress)
    print(f"wrote {len(written)} image(s) to {args.output}")


def _run_evaluate(args: argparse.Namespace) -> None:
    from .evaluation import evaluate, markdown_table

    output = Path(args.output)
    report = evaluate(args.generator, forget=args.forget, retain=args.retain, reference=args.reference,
                      task=args.task, mask_area=args.mask_area, features=args.features, classifier=args.classifier,
                      clip=args.clip, max_images=args.max_images, batch_size=args.batch_size, device=args.device,
                      grid=Path(args.grid) if args.grid else output.with_suffix(".png"), output=output,
                      progress=args.progress)
    print(markdown_table(report))
    print(f"\nwrote {output} and {report['grid']}")


def _face_tools(args: argparse.Namespace) -> tuple[Any, Any]:
    from .concepts import DEFAULT_PROMPTS, ClipFilter, FaceFinder

    finder = FaceFinder(min_face_size=args.min_face_size, score_threshold=args.score_threshold,
                        tile_size=args.detect_tile or None, tile_overlap=args.detect_overlap, device=args.device,
                        rotations=args.rotations)
    if args.filter_label is None:
        return finder, None
    if args.filter_label not in DEFAULT_PROMPTS:
        raise CLIError(f"--filter {args.filter_label}: choose one of {sorted(DEFAULT_PROMPTS)}")
    try:
        clip_filter = ClipFilter(args.clip_model, pretrained=args.clip_pretrained, keep=(args.filter_label,),
                                 threshold=args.clip_threshold, device=args.device)
    except RuntimeError as error:  # open_clip's "could not download" and friends
        raise CLIError(f"--filter needs open_clip weights for {args.clip_model}/{args.clip_pretrained}: {error}. "
                       "Pass --clip-pretrained with a local checkpoint file when offline.") from error
    return finder, clip_filter


def _print_errors(errors: list[dict[str, str]]) -> None:
    for error in errors:
        print(f"imgunlearn: skipped {error['path']}: {error['error']}", file=sys.stderr)


def _run_find_faces(args: argparse.Namespace) -> int:
    from .concepts import find_faces_in_folder

    finder, clip_filter = _face_tools(args)
    summary = find_faces_in_folder(args.src, args.output, finder, clip_filter=clip_filter, progress=args.progress)
    _print_errors(summary["errors"])
    print(f"found {summary['faces']} face(s) in {summary['images_with_faces']} of {summary['images']} image(s); "
          f"wrote {args.output}")
    return 1 if summary["errors"] else 0


def _run_split_survey(args: argparse.Namespace) -> int:
    from .concepts import split_survey

    finder, clip_filter = _face_tools(args)
    summary = split_survey(args.src, args.output, finder, tile=args.tile, overlap=args.overlap,
                           clip_filter=clip_filter, progress=args.progress, face_margin=args.face_margin)
    _print_errors(summary["errors"])
    print(f"{summary['images']} photo(s), {summary['faces']} face(s): {summary['forget_tiles']} forget tile(s), "
          f"{summary['retain_tiles']} retain tile(s); manifest {summary['manifest']}")
    return 1 if summary["errors"] else 0


# What preprocess takes of the --trainer.* options: how many processes, on which devices.
_PREPROCESS_TRAINER_OPTIONS = ("accelerator", "devices", "num_nodes", "strategy", "precision")
# Lightning's precision names for the Sanitizer's (its weights and tiles in that type).
_SANITIZER_PRECISIONS = {"32": "32", "32-true": "32", "bf16": "bf16", "bf16-mixed": "bf16", "bf16-true": "bf16",
                         "16": "fp16", "16-mixed": "fp16", "16-true": "fp16"}


def _launch_fabric(args: argparse.Namespace, trainer: dict[str, Any]) -> Any:
    """A launched ``lightning.Fabric`` for ``preprocess --trainer.*`` (every rank returns here;
    with ``--trainer.strategy ddp`` the other processes run this command again), or None."""
    if not trainer:
        return None
    unknown = sorted(set(trainer) - set(_PREPROCESS_TRAINER_OPTIONS))
    if unknown:
        raise CLIError(f"preprocess takes --trainer.{{{','.join(_PREPROCESS_TRAINER_OPTIONS)}}} only, not "
                       f"{', '.join('--trainer.' + key for key in unknown)}")
    options = {key: value for key, value in trainer.items() if key != "precision"}
    options.update(_device_options(args, trainer))
    if "precision" in trainer:
        precision = _SANITIZER_PRECISIONS.get(str(trainer["precision"]))
        if precision is None:
            raise CLIError(f"--trainer.precision {trainer['precision']}: preprocess runs in one of "
                           f"{sorted(_SANITIZER_PRECISIONS)}")
        if args.precision not in (None, precision):
            raise CLIError(f"--precision {args.precision} and --trainer.precision {trainer['precision']} disagree; give one")
        args.precision = precision
    from lightning import Fabric
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        fabric = Fabric(**options)
    except (MisconfigurationException, ValueError, TypeError) as error:
        shown = ", ".join(f"--trainer.{key} {value}" for key, value in trainer.items())
        raise CLIError(f"{shown}: {error}") from None
    fabric.launch()
    return fabric


def _map_context(text: str) -> int | None:
    """``--map-context``: whole pixels >= 0, or ``tiles`` (None: the passes on whole tiles)."""
    if text == "tiles":
        return None
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected pixels (a whole number >= 0) or 'tiles'")
    return value


def _run_preprocess(args: argparse.Namespace, trainer: dict[str, Any]) -> int:
    from .pipelines import Sanitizer, preprocess_folder
    from .pipelines.survey import tune_allocator

    tune_allocator()
    if args.reference is None and (args.save_masks or args.forget_threshold is not None
                                   or args.map_percentile is not None or args.map_dilation is not None
                                   or args.map_blur is not None):
        raise CLIError("--save-masks, --forget-threshold, --map-percentile, --map-dilation and --map-blur need "
                       "--reference BASE_DIR (the forget map compares against it)")
    # Launched before any model is loaded: each process loads its own onto its device.
    fabric = _launch_fabric(args, trainer)
    device = fabric.device if fabric is not None else (args.device or "cpu")
    map_options = {} if args.reference is None else {
        "reference": args.reference, "forget_threshold": args.forget_threshold, "map_percentile": args.map_percentile,
        "map_dilation": args.map_dilation, "feather": args.feather, "map_context": args.map_context,
        **({} if args.map_blur is None else {"map_blur": args.map_blur})}
    from .concepts import FaceFinder

    finder = FaceFinder(device=device, rotations=args.rotations) if args.face_check else False
    sanitizer = Sanitizer.from_pretrained(args.generator, face_finder=finder,
                                          device=device, tile=args.tile, overlap=args.overlap,
                                          batch_size=args.batch_size,
                                          fail_closed=args.fail_closed and args.face_check,
                                          precision=args.precision, channels_last=args.channels_last,
                                          compile=args.compile, forget_passes=args.forget_passes, **map_options)
    summary = preprocess_folder(args.src, args.output, sanitizer, resume=args.resume, progress=args.progress,
                                count_input_faces=args.count_input_faces, save_masks=args.save_masks,
                                keep_metadata=args.keep_metadata, max_megapixels=args.max_megapixels,
                                fabric=fabric)
    status = 0 if summary.ok and not summary.flagged else 1
    if fabric is not None and fabric.global_rank != 0:
        return status  # rank 0 reports for all
    for path, error in summary.failures:
        print(f"imgunlearn: failed {path}: {error}", file=sys.stderr)
    rate = summary.megapixels / summary.seconds if summary.seconds else float("nan")
    print(f"sanitized {summary.processed} file(s), skipped {summary.skipped} already done, failed {summary.failed}; "
          f"faces blanked in {summary.blanked}, left in {summary.flagged}; ignored {len(summary.ignored)} other "
          f"entr{'y' if len(summary.ignored) == 1 else 'ies'} (hidden, links, not JPEG/PNG/TIFF); "
          f"{summary.megapixels:.1f} MP at {rate:.2f} MP/s; audit log {summary.audit_path}")
    if summary.flagged:
        print(f"imgunlearn: faces were left in {summary.flagged} file(s) (--no-fail-closed); see the audit log",
              file=sys.stderr)
    return status


def _run_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo, summary_table

    metrics = run_demo(args.output, assets=args.assets, device=args.device, target=args.target,
                       max_steps=args.max_steps, progress=args.progress)
    print(summary_table(metrics))
    print(f"\nunlearning took {metrics['unlearn_seconds']:.0f} s; the whole demo {metrics['total_seconds']:.0f} s. "
          f"Wrote {metrics['unlearned']}, {Path(args.output) / 'metrics.json'} and {Path(args.output) / 'report.html'}")


# What each command reads and what it writes: no write may land in what it reads.
_INPUTS = {"train": ("data",), "unlearn": ("generator", "forget", "retain", "manifest"),
           "generate": ("generator", "input"), "evaluate": ("generator", "reference", "forget", "retain", "classifier"),
           "find-faces": ("src",), "split-survey": ("src",), "preprocess": ("src", "generator", "reference"),
           "demo": ("assets",)}
_OUTPUTS = {"evaluate": ("output", "grid")}


def _check_outputs(args: argparse.Namespace) -> None:
    from .fileio import refuse_writes_into_inputs

    inputs = [getattr(args, name, None) for name in _INPUTS.get(args.command, ())]
    outputs = [getattr(args, name, None) for name in _OUTPUTS.get(args.command, ("output",))]
    refuse_writes_into_inputs(outputs, inputs)


# What an interrupted command can do next (printed after Ctrl-C).
_RESUME_HINTS = {
    "preprocess": "; finished photos are kept: run the same command with --resume to go on",
}


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="imgunlearn: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = None
    try:
        rest, trainer = _split_trainer_options(argv)
        args = build_parser().parse_args(rest)
        if trainer and args.command not in ("train", "unlearn", "preprocess"):
            raise CLIError("--trainer.* options apply to train, unlearn and preprocess only")
        _check_outputs(args)
        if args.command == "train":
            _run_train(args, trainer)
        elif args.command == "unlearn":
            _run_unlearn(args, trainer)
        elif args.command == "evaluate":
            _run_evaluate(args)
        elif args.command == "find-faces":
            return _run_find_faces(args)
        elif args.command == "split-survey":
            return _run_split_survey(args)
        elif args.command == "preprocess":
            return _run_preprocess(args, trainer)
        elif args.command == "demo":
            _run_demo(args)
        else:
            _run_generate(args)
    except KeyboardInterrupt as error:
        # train/unlearn raise it with the folder to resume from; a bare Ctrl-C carries nothing.
        message = str(error) or f"interrupted{_RESUME_HINTS.get(getattr(args, 'command', None), '')}"
        print(f"imgunlearn: {message}", file=sys.stderr)
        return 130
    except (ImgUnlearnError, OSError) as error:
        # Our errors name the file and the problem; a traceback would only bury that. Anything
        # else is a bug, and its traceback is what a report needs.
        if os.environ.get("IMGUNLEARN_DEBUG"):
            raise
        print(f"imgunlearn: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
