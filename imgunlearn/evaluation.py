"""``imgunlearn.evaluate``: measure a generator on a forget and a retain set (docs/design.md §3).

For each set, the generator's outputs are compared with the ground truth and with the outputs
of a reference model (usually the original, before unlearning); the reference itself is also
measured against the ground truth, so one report shows before and after side by side.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from .data import list_image_files, load_image_tensor, save_png_atomic, tensor_to_image
from .errors import InvalidSettingError
from .fileio import write_json_atomic
from .generators import Generator, inference_layout, load_generator
from .geometry import boxes_mask, grow_boxes
from .metrics import FeatureExtractor, SmallClassifier, evaluate_outputs, get_feature_extractor, load_classifier
from .tasks import Task
from .vocabulary import DEFAULT_MASK_AREA

# Labels for classifier accuracy come from file names like "00042_c7.png" (class 7), the way
# imgunlearn.builders.fashion_mnist.export_split_folders writes them.
_LABEL_PATTERN = re.compile(r"_c(\d+)$")
# Which comparisons a report holds, in table order.
COMPARISONS = (("generator", "ground_truth"), ("reference", "ground_truth"), ("generator", "reference"))


def label_from_name(path: Path) -> int | None:
    match = _LABEL_PATTERN.search(path.stem)
    return int(match.group(1)) if match else None


def _load_set(folder: str | Path, size: int, max_images: int | None) -> tuple[torch.Tensor, torch.Tensor | None, list[Path]]:
    files = list_image_files(folder)[:max_images]
    if not files:
        raise FileNotFoundError(f"{folder}: no images to evaluate")
    images = torch.stack([load_image_tensor(path, size)[0] for path in files])
    labels = [label_from_name(path) for path in files]
    label_tensor = torch.tensor(labels) if all(label is not None for label in labels) else None
    return images, label_tensor, files


@torch.no_grad()
def batched_outputs(generator: Any, inputs: torch.Tensor, batch_size: int = 64, device: str = "cpu",
                    desc: str = "outputs", progress: bool = False) -> torch.Tensor:
    """The generator's outputs (clamped to [-1, 1], on the CPU) for already transformed inputs.

    ``generator`` is a Generator (moved to ``device``, eval mode) or any callable on batches.
    """
    layout = contextlib.nullcontext()
    if isinstance(generator, torch.nn.Module):
        generator = generator.to(device).eval()
        layout = inference_layout(generator, device)
    chunks = []
    with layout:
        for start in tqdm(range(0, len(inputs), batch_size), desc=desc, unit="batch", disable=not progress,
                          leave=False):
            chunks.append(generator(inputs[start:start + batch_size].to(device)).clamp(-1, 1).cpu())
    return torch.cat(chunks)


def _resolve(spec: Any, kind: str) -> Any:
    if spec is None or isinstance(spec, torch.nn.Module):
        return spec
    if kind == "classifier":
        return load_classifier(spec)
    return get_feature_extractor(str(spec))


def evaluate(
    generator: Generator | str | Path,
    *,
    forget: str | Path,
    retain: str | Path,
    reference: Generator | str | Path | None = None,
    task: str | Task = "center_inpaint",
    mask_area: float = DEFAULT_MASK_AREA,
    features: FeatureExtractor | str | None = None,
    classifier: SmallClassifier | str | Path | None = None,
    clip: FeatureExtractor | str | None = None,
    max_images: int | None = None,
    batch_size: int = 64,
    device: str = "cpu",
    grid: str | Path | None = None,
    grid_rows: int = 4,
    output: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Measure ``generator`` (and ``reference``) on the ``forget`` and ``retain`` folders.

    ``features`` is the Fréchet-distance feature space (an extractor or a spec such as
    ``classifier:DIR``, ``mobilenet_v2:WEIGHTS``, ``inception``, ``open_clip:MODEL/TAG``); when
    not given and ``classifier`` is, the classifier's own features are used. ``classifier``
    (a SmallClassifier or its directory) adds accuracy (labels from ``*_c<k>`` file names) and
    Inception Score; ``clip`` adds the paper's CLIP cosine. PSNR and SSIM are always measured.
    Writes the JSON report to ``output`` and the image grid to ``grid`` when given.
    """
    generator_name = str(generator) if not isinstance(generator, Generator) else "generator"
    reference_name = str(reference) if reference is not None and not isinstance(reference, Generator) else (
        "reference" if reference is not None else None)
    generator = generator if isinstance(generator, Generator) else load_generator(generator)
    reference = reference if reference is None or isinstance(reference, Generator) else load_generator(reference)
    task = task if isinstance(task, Task) else Task(task, area=mask_area)
    classifier = _resolve(classifier, "classifier")
    features = _resolve(features, "features")
    if features is None and classifier is not None:
        features = get_feature_extractor("classifier", classifier=classifier)
    clip = _resolve(clip, "clip")

    report: dict[str, Any] = {
        "generator": generator_name, "reference": reference_name, "task": task.name, "mask_area": task.area,
        "extractors": {"fd": getattr(features, "name", None), "classifier": getattr(classifier, "source", None)
                       or (type(classifier).__name__ if classifier is not None else None),
                       "clip": getattr(clip, "name", None)},
        "sets": {},
    }
    grid_rows_images: list[torch.Tensor] = []
    for set_name, folder in (("forget", forget), ("retain", retain)):
        images, labels, files = _load_set(folder, generator.sample_size, max_images)
        # The same pixels are hidden from both models, each taking them its family's way.
        produced = {"ground_truth": images,
                    "generator": batched_outputs(generator, task(images, generator), batch_size, device,
                                                 f"{set_name}: generator", progress)}
        if reference is not None:
            produced["reference"] = batched_outputs(reference, task(images, reference), batch_size, device,
                                                    f"{set_name}: reference", progress)
        inputs = task(images)  # what the models were shown, as a picture
        entry: dict[str, Any] = {"folder": str(folder), "images": len(files), "labels": labels is not None}
        for made, against in COMPARISONS:
            if made not in produced or against not in produced:
                continue
            entry[f"{made}_vs_{against}"] = evaluate_outputs(
                produced[made], produced[against], extractor=features,
                classifier=classifier if against == "ground_truth" else None,
                labels=labels if against == "ground_truth" else None, clip=clip, batch_size=batch_size)
        report["sets"][set_name] = entry
        rows = min(grid_rows, len(files))
        for i in range(rows):
            row = [inputs[i], produced.get("reference", produced["generator"])[i], produced["generator"][i]]
            grid_rows_images.append(torch.stack(row))

    if grid is not None:
        headings = (f"input ({task.name})", "reference" if reference is not None else "generator", "generator")
        save_png_atomic(make_grid(grid_rows_images, headings=headings), Path(grid))
        report["grid"] = str(grid)
    if output is not None:
        write_json_atomic(report, Path(output))
    return report


GRID_HEADING_PX = 18


def make_grid(rows: list[torch.Tensor], pad: int = 2, headings: Sequence[str] = ()) -> Image.Image:
    """Rows of tiles (e.g. input, reference output, generator output) as one white-padded
    image, with ``headings`` written above the columns."""
    count, size = rows[0].shape[0], rows[0].shape[-1]
    canvas = Image.new("RGB", (count * (size + pad) + pad, len(rows) * (size + pad) + pad), "white")
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            canvas.paste(tensor_to_image(tile), (pad + c * (size + pad), pad + r * (size + pad)))
    scale = max(1, 96 // size)  # small images are hard to see: enlarge without smoothing
    canvas = canvas.resize((canvas.width * scale, canvas.height * scale), Image.Resampling.NEAREST)
    if not headings:
        return canvas
    # Drawn after enlarging, so the text stays sharp; a column narrower than its heading gets
    # the heading cut, not the grid widened.
    framed = Image.new("RGB", (canvas.width, canvas.height + GRID_HEADING_PX), "white")
    framed.paste(canvas, (0, GRID_HEADING_PX))
    draw = ImageDraw.Draw(framed)
    column = (size + pad) * scale
    for c, heading in enumerate(headings[:count]):
        text = heading
        while text and draw.textlength(text) > column - 4:
            text = text[:-1]
        draw.text((pad * scale + c * column + 2, 3), text, fill="black")
    return framed


_TABLE_METRICS = (("fd", "FD", "{:.3f}"), ("accuracy", "accuracy", "{:.1%}"), ("is_mean", "IS", "{:.2f}"),
                  ("clip_cosine", "CLIP cos", "{:.3f}"), ("psnr", "PSNR dB", "{:.2f}"), ("ssim", "SSIM", "{:.3f}"))


def markdown_table(report: dict[str, Any]) -> str:
    """One row per set and comparison, one column per metric present."""
    entries = [(set_name, key, values) for set_name, entry in report["sets"].items()
               for key, values in entry.items() if isinstance(values, dict)]
    columns = [(key, title, fmt) for key, title, fmt in _TABLE_METRICS
               if any(key in values for _, _, values in entries)]
    lines = ["| set | comparison | " + " | ".join(title for _, title, _ in columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for set_name, key, values in entries:
        cells = []
        for metric, _, fmt in columns:
            value = values.get(metric)
            cells.append("–" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt.format(value))
        lines.append(f"| {set_name} | {key.replace('_vs_', ' vs ').replace('_', ' ')} | " + " | ".join(cells) + " |")
    extractors = ", ".join(f"{k}: {v}" for k, v in report["extractors"].items() if v)
    if extractors:
        lines += ["", f"Measured with {extractors}."]
    return "\n".join(lines)


# -- the faces protocol (docs/design.md §3) ------------------------------------------------------------
def load_face_set(manifest: str | Path) -> tuple[torch.Tensor, list[torch.Tensor], list[Path]]:
    """Images (N, 3, H, W) in [-1, 1], their face boxes and paths, from a manifest of equal-sized
    tiles (both splits: tiles without faces are the retain side of the same photos)."""
    from .data import image_to_tensor, open_rgb, read_manifest

    records = [record for split in read_manifest(manifest).values() for record in split]
    if not records:
        raise FileNotFoundError(f"{manifest}: the manifest lists no images")
    images = [image_to_tensor(open_rgb(record.path)) for record in records]
    sizes = {tuple(image.shape[-2:]) for image in images}
    if len(sizes) > 1:
        raise InvalidSettingError(f"{manifest}: the faces protocol needs tiles of one size, found {sorted(sizes)}")
    boxes = [torch.tensor(record.boxes, dtype=torch.float32).reshape(-1, 4) for record in records]
    return torch.stack(images), boxes, [record.path for record in records]


def non_face_mask(boxes: list[torch.Tensor], height: int, width: int, margin: int = 4) -> torch.Tensor:
    """(N, 1, H, W): 1 on pixels at least ``margin`` px away from every face box."""
    return torch.stack([1.0 - boxes_mask(grow_boxes(b.numpy(), pixels=margin), height, width) for b in boxes])


@torch.no_grad()
def evaluate_faces(
    model: Any = None,
    manifest: str | Path = "",
    *,
    finder: Any,
    outputs: torch.Tensor | None = None,
    reference: Any = None,
    reference_outputs: torch.Tensor | None = None,
    margin: int = 4,
    batch_size: int = 16,
    device: str = "cpu",
    progress: bool = False,
    identity: Any = None,
    input_detections: list[Any] | None = None,
) -> dict[str, Any]:
    """Face survival and non-face fidelity of a model on the tiles of ``manifest``.

    ``model`` maps a batch (B, 3, H, W) in [-1, 1] to outputs (a Generator, a Sanitizer, or
    anything callable so); or pass its ``outputs`` directly (e.g. of a detect-and-blur tool).
    Face survival counts only the faces ``finder`` detects in the inputs (a detection centre
    inside the face box) and asks how many it still detects in the outputs. Non-face PSNR and
    SSIM cover pixels at least ``margin`` px from every face box, against the input and, when a
    ``reference`` (usually the original generator) or its outputs are given, against those.
    With ``identity`` (a ``metrics.FaceIdentity``), the same input-detected faces are also
    compared by face-recognition descriptor, input against output: ``identity_matched`` counts
    those still the same person (a detector may miss a face that is still recognisable), and
    ``identity_matched_verifiable`` those among the ``identity_verifiable_faces``, the faces the
    descriptor tells from no face at all (``FaceIdentity.floor_distances``).
    ``input_detections``: ``finder.detect_batch`` of the manifest's inputs, when several
    output sets of one manifest are measured (the inputs are then searched once).
    """
    from .metrics import faces_found, identity_matched, masked_psnr, masked_ssim, surviving_faces

    images, boxes, _ = load_face_set(manifest)
    if outputs is None:
        if model is None:
            raise InvalidSettingError("evaluate_faces needs a model or its outputs")
        outputs = batched_outputs(model, images, batch_size, device, "outputs", progress)
    if reference_outputs is None and reference is not None:
        reference_outputs = batched_outputs(reference, images, batch_size, device, "reference", progress)
    if outputs.shape != images.shape:
        raise InvalidSettingError(f"outputs have shape {tuple(outputs.shape)}, the inputs {tuple(images.shape)}")
    outputs = outputs.clamp(-1, 1)

    face_boxes = [b.numpy() for b in boxes]
    if input_detections is None:
        input_detections = finder.detect_batch(list(images))
    elif len(input_detections) != len(images):
        raise InvalidSettingError(f"{len(input_detections)} input detections for the {len(images)} images of {manifest}")
    output_detections = finder.detect_batch(list(outputs))
    input_faces, surviving = surviving_faces(face_boxes, output_detections, input_detections)
    found_in_input = [faces_found(b, d) for b, d in zip(face_boxes, input_detections)]  # the faces identity compares
    keep = non_face_mask(boxes, *images.shape[-2:], margin=margin)
    report: dict[str, Any] = {
        "manifest": str(manifest), "images": len(images), "faces": int(sum(len(b) for b in boxes)),
        "input_faces": input_faces, "surviving_faces": surviving,
        "face_survival": surviving / input_faces if input_faces else float("nan"),
        "non_face_margin_px": margin,
        "non_face_psnr_vs_input": masked_psnr(outputs, images, keep),
        "non_face_ssim_vs_input": masked_ssim(outputs, images, keep),
    }
    if reference_outputs is not None:
        report["non_face_psnr_vs_reference"] = masked_psnr(outputs, reference_outputs.clamp(-1, 1), keep)
        report["non_face_ssim_vs_reference"] = masked_ssim(outputs, reference_outputs.clamp(-1, 1), keep)
    if identity is not None:
        compared = [identity.distances_and_floor(image, output, b.numpy()[found])
                    for image, output, b, found in zip(images, outputs, boxes, found_in_input) if found.any()]
        leak = identity_matched([d for distances, _ in compared for d in distances],
                                floor=[f for _, floor in compared for f in floor])
        report.update({"identity_faces": leak["faces"], "identity_matched": leak["matched"],
                       "identity_match_rate": leak["match_rate"], "identity_mean_distance": leak["mean_distance"],
                       "identity_verifiable_faces": leak["verifiable"],
                       "identity_matched_verifiable": leak["matched_verifiable"],
                       "identity_verifiable_match_rate": leak["verifiable_match_rate"]})
    return report


@torch.no_grad()
def forget_map_outputs(sanitizer: Any, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A compositing Sanitizer (one with a reference) over each image: the outputs and the
    (N, 1, H, W) compositing weights of their forget maps."""
    outputs, weights = [], []
    for image in images:
        output, changed = sanitizer.generate_with_map(image)
        outputs.append(output)
        weights.append(changed.weight[None])
    return torch.stack(outputs), torch.stack(weights)


def forget_map_fidelity(images: torch.Tensor, outputs: torch.Tensor, weights: torch.Tensor,
                        boxes: list[torch.Tensor], margin: int = 8) -> dict[str, float]:
    """How little a composited output changed: the share of non-face pixels (at least
    ``margin`` px from every face box) whose 8-bit values equal the input's, the same share
    over the tiles without any face (what a survey photo with no face in it keeps; NaN where
    every tile has one), and the changed area over the face boxes' area."""

    height, width = images.shape[-2:]
    as_bytes = lambda t: ((t.clamp(-1, 1) + 1) * 127.5).round()  # noqa: E731
    equal = (as_bytes(images) == as_bytes(outputs)).all(dim=1, keepdim=True)
    keep = non_face_mask(boxes, height, width, margin=margin) > 0
    face_area = sum(float(boxes_mask(b.tolist(), height, width).sum()) for b in boxes)
    face_free = torch.tensor([len(b) == 0 for b in boxes])
    return {"non_face_identical": float(equal[keep].float().mean()),
            "face_free_identical": float(equal[face_free].float().mean()) if face_free.any() else float("nan"),
            "face_free_tiles": int(face_free.sum()),
            "changed_area_vs_boxes": float((weights > 0).sum()) / max(face_area, 1.0),
            "map_margin_px": margin}
