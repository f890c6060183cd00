"""``imgunlearn.evaluate``: measure a generator on a forget and a retain set (DESIGN §3).

For each set, the generator's outputs are compared with the ground truth and with the outputs
of a reference model (usually the original, before unlearning); the reference itself is also
measured against the ground truth, so one report shows before and after side by side.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from .data import list_image_files, load_image_tensor, save_png_atomic, tensor_to_image
from .fileio import write_json_atomic
from .generators import Generator, load_generator
from .metrics import FeatureExtractor, SmallClassifier, evaluate_outputs, get_feature_extractor, load_classifier
from .tasks import Task

# Labels for classifier accuracy come from file names like "00042_c7.png" (class 7), the way
# imgunlearn.data.fashion_mnist.export_split_folders writes them.
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
def batched_outputs(generator: Generator, inputs: torch.Tensor, batch_size: int = 64, device: str = "cpu",
                    desc: str = "outputs", progress: bool = False) -> torch.Tensor:
    """The generator's outputs (clamped to [-1, 1], on the CPU) for already transformed inputs."""
    generator = generator.to(device).eval()
    chunks = []
    for start in tqdm(range(0, len(inputs), batch_size), desc=desc, unit="batch", disable=not progress, leave=False):
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
    mask_area: float = 0.25,
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
        inputs = task(images)
        produced = {"ground_truth": images,
                    "generator": batched_outputs(generator, inputs, batch_size, device, f"{set_name}: generator", progress)}
        if reference is not None:
            produced["reference"] = batched_outputs(reference, inputs, batch_size, device, f"{set_name}: reference", progress)
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
        save_png_atomic(make_grid(grid_rows_images), Path(grid))
        report["grid"] = str(grid)
    if output is not None:
        write_json_atomic(report, Path(output))
    return report


def make_grid(rows: list[torch.Tensor], pad: int = 2) -> Image.Image:
    """Rows of (input, reference output, generator output) tiles as one white-padded image."""
    count, size = rows[0].shape[0], rows[0].shape[-1]
    canvas = Image.new("RGB", (count * (size + pad) + pad, len(rows) * (size + pad) + pad), "white")
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            canvas.paste(tensor_to_image(tile), (pad + c * (size + pad), pad + r * (size + pad)))
    scale = max(1, 96 // size)  # small images are hard to see: enlarge without smoothing
    return canvas.resize((canvas.width * scale, canvas.height * scale), Image.Resampling.NEAREST)


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
