"""The forget map in float32 and in bfloat16 on this device: time, faces let through, pixels kept.

    python scripts/benchmark_precision.py            # corpus val (the choice) and test splits

The evidence behind ``generators.fast_dtype``: the Sanitizer runs bf16 by default on a CPU
that has it natively. The demo base unlearned on the face corpus's train split with the
demo's settings (cached, shared with tune_forget_map.py) composites every tile of each split
through its forget map at both precisions, one tile per call as the demo does; the faces
MTCNN finds in the inputs are searched once. Writes the "precision" section of
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchdoc import publish  # noqa: E402
from benchmark_faces import ensure_unlearned, shown, unlearned_dir, weights_digest  # noqa: E402

from imgunlearn.concepts.faces import FaceFinder  # noqa: E402
from imgunlearn.demo import DEMO_UNLEARN  # noqa: E402
from imgunlearn.evaluation import evaluate_faces, forget_map_fidelity, forget_map_outputs, load_face_set  # noqa: E402
from imgunlearn.generators import fast_dtype, load_generator  # noqa: E402
from imgunlearn.pipelines import Sanitizer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PRECISIONS = ("32", "bf16")


def corpus_model(base_dir: Path, corpus: Path, seed: int, cache_dir: Path) -> Path:
    """The folder of the base unlearned on the corpus's train split with the demo's settings
    and ``seed`` (unlearned now unless cached)."""
    settings = {**DEMO_UNLEARN, "seed": seed}
    train = corpus / "train" / "manifest.jsonl"
    digest = weights_digest(base_dir)
    ensure_unlearned(load_generator(base_dir), digest, settings, train, cache_dir, progress=False)
    return unlearned_dir(settings, digest, cache_dir, train)


def measure_variants(manifest: Path, model_dir: Path, base_dir: Path, finder: FaceFinder,
                     variants: dict[str, dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], dict[str, torch.Tensor]]:
    """Per variant (Sanitizer keyword arguments, with the base as reference and tile = the
    tile): seconds for the split, survival, identical share, changed area; and each
    variant's map (where its compositing weight is > 0)."""
    images, boxes, _ = load_face_set(manifest)
    found = finder.detect_batch(list(images))
    rows, maps = {}, {}
    for name, options in variants.items():
        base = load_generator(base_dir)
        sanitizer = Sanitizer(load_generator(model_dir), reference=base, tile=base.sample_size, overlap=0, **options)
        forget_map_outputs(sanitizer, images[:4])  # warm-up: oneDNN picks its kernels on the first calls
        started = time.perf_counter()
        outputs, weights = forget_map_outputs(sanitizer, images)
        seconds = time.perf_counter() - started
        report = evaluate_faces(manifest=manifest, finder=finder, outputs=outputs, input_detections=found)
        rows[name] = {"seconds": seconds, "tiles": len(images), "face_survival": report["face_survival"],
                      "surviving_faces": report["surviving_faces"], "input_faces": report["input_faces"],
                      **forget_map_fidelity(images, outputs, weights, boxes)}
        maps[name] = weights > 0
        print(manifest.parent.name, name, rows[name], flush=True)
    return rows, maps


def measure_split(manifest: Path, model_dir: Path, base_dir: Path, finder: FaceFinder) -> dict[str, Any]:
    """Per precision: seconds for the split, survival, identical share, changed area; and how
    many map pixels the two precisions disagree on."""
    rows, maps = measure_variants(manifest, model_dir, base_dir, finder,
                                  {precision: {"precision": precision} for precision in PRECISIONS})
    disagree = float((maps["32"] != maps["bf16"]).float().mean())
    return {"manifest": shown(manifest), "rows": rows, "map_pixels_disagreeing": disagree}


def render(result: dict[str, Any]) -> str:
    lines = [
        "## Forget map: float32 against bfloat16", "",
        f"Command: `{result['command']}` ({os.cpu_count()}-core machine, device cpu, CPU capability "
        f"{result['cpu_capability']}, torch {result['torch']}; `fast_dtype` here: {result['fast_dtype']}). Model: the "
        f"base `{result['base']}` unlearned on the face corpus's train split with the demo's settings, seed "
        f"{result['seed']} (`{result['model']}`). Each tile composited through its forget map (the Sanitizer with "
        "the base as reference, tile = the tile, 4 passes), one tile per call, after a warm-up of 4; faces: MTCNN's "
        "in the inputs, searched once.", "",
        "| split | precision | seconds | face survival | non-face pixels identical | changed area / face boxes "
        "| map pixels where the precisions disagree |",
        "|---|---|---|---|---|---|---|",
    ]
    for split, entry in result["splits"].items():
        for precision, row in entry["rows"].items():
            lines.append(
                f"| {split} | {precision} | {row['seconds']:.1f} ({row['tiles']} tiles) | {row['face_survival']:.1%} "
                f"({row['surviving_faces']}/{row['input_faces']}) | {row['non_face_identical']:.2%} "
                f"| {row['changed_area_vs_boxes']:.2f} | {entry['map_pixels_disagreeing']:.2%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, default=ROOT / "assets" / "demo_base")
    parser.add_argument("--corpus", type=Path, default=ROOT / "assets" / "face_corpus")
    parser.add_argument("--splits", nargs="+", default=["val", "test"])
    parser.add_argument("--seed", type=int, default=1, help="the unlearning seed (tune_forget_map.py caches 1 and 2)")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / ".bench_cache" / "faces")
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "benchmarks" / "precision.json")
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args(argv)
    command = shlex.join(["python", "scripts/benchmark_precision.py", *(argv if argv is not None else sys.argv[1:])])
    model_dir = corpus_model(args.base, args.corpus, args.seed, args.cache_dir)
    finder = FaceFinder(tile_size=None)
    splits = {split: measure_split(args.corpus / split / "manifest.jsonl", model_dir, args.base, finder)
              for split in args.splits}
    result = {"command": command, "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "fast_dtype": str(fast_dtype("cpu")).removeprefix("torch."), "base": shown(args.base),
              "model": shown(model_dir), "seed": args.seed, "splits": splits}
    return publish(result, args.json, render(result), "precision", not args.no_doc)


if __name__ == "__main__":
    raise SystemExit(main())
