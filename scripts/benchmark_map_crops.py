"""The forget passes on crops around the map against whole tiles: faces let through, speed.

    python scripts/benchmark_map_crops.py             # val (the choice), speed, then test once

The evidence on ``map_context``. With a reference, the Sanitizer's forget passes
ran on every whole tile the map reaches; with ``map_context`` they run on crops around the
map that carry that many pixels of surroundings. The map, and so every pixel outside it, is
the same either way: what can change is what the passes make of the faces inside it, and
the time. Where a photo's crops would cost more than its tiles, the Sanitizer takes the tiles
(``passes_on``). The demo base unlearned on the face corpus's train split with the demo's settings
(seeds 1 and 2, cached, shared with tune_forget_map.py) composites every val tile through
each variant; the generator alone is timed on whole aerial photos (tile 256, overlap 32, the
preprocess defaults). Rule: among the contexts that let no more val faces through than whole
tiles, the fastest (mean MP/s over the photos; within 5%, the one with more context); the test
split is then measured once, for whole tiles and the chosen context. Writes
docs/benchmarks/map_crops.json and the "map-crops" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchdoc import publish  # noqa: E402
from benchmark_faces import PHOTO, shown  # noqa: E402
from benchmark_precision import corpus_model, measure_variants  # noqa: E402

from imgunlearn.concepts.faces import FaceFinder  # noqa: E402
from imgunlearn.data import open_rgb  # noqa: E402
from imgunlearn.generators import fast_dtype, load_generator  # noqa: E402
from imgunlearn.pipelines import Sanitizer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TILES = "whole tiles"
CONTEXTS = (4, 8, 16)
# Speeds closer than this are within what repeated runs on a 2-core machine vary by.
SPEED_TIE = 0.05


def variant_name(context: int | None) -> str:
    return TILES if context is None else f"crops, {context} px context"


def photo_speeds(photos: list[Path], model_dir: Path, base_dir: Path, contexts: list[int | None],
                 repeats: int) -> dict[str, dict[str, Any]]:
    """Generator-only MP/s per variant and photo (median of ``repeats`` after two warm-ups),
    with how many crops or tiles went through the decoder."""
    speeds: dict[str, dict[str, Any]] = {}
    for photo in photos:
        array = np.asarray(open_rgb(photo))
        megapixels = array.shape[0] * array.shape[1] / 1e6
        for context in contexts:
            sanitizer = Sanitizer(load_generator(model_dir), reference=load_generator(base_dir), tile=256, overlap=32,
                                  batch_size=4, map_context=context)
            for _ in range(2):
                _, changed = sanitizer.generate_with_map(array)
            seconds = []
            for _ in range(repeats):
                started = time.perf_counter()
                sanitizer.generate_with_map(array)
                seconds.append(time.perf_counter() - started)
            speeds.setdefault(variant_name(context), {})[shown(photo)] = {
                "megapixels_per_second": megapixels / statistics.median(seconds), "decoded": changed.decoded_tiles,
                "passes_on": changed.passes_on, "changed_share": changed.share}
            print(shown(photo), variant_name(context), speeds[variant_name(context)][shown(photo)], flush=True)
    return speeds


def pooled(per_seed: dict[int, dict[str, dict[str, Any]]], name: str) -> dict[str, Any]:
    rows = [rows[name] for rows in per_seed.values()]
    surviving, faces = sum(r["surviving_faces"] for r in rows), sum(r["input_faces"] for r in rows)
    return {"surviving_faces": surviving, "input_faces": faces, "face_survival": surviving / max(faces, 1),
            "non_face_identical": float(np.mean([r["non_face_identical"] for r in rows])),
            "seconds": sum(r["seconds"] for r in rows)}


def choose(val: dict[str, dict[str, Any]], speeds: dict[str, dict[str, Any]], contexts: list[int]) -> int | None:
    """The fastest context letting no more val faces through than whole tiles (ties within
    ``SPEED_TIE``: more context); ``None`` (whole tiles) when none qualifies."""
    def mean_speed(name: str) -> float:
        return float(np.mean([s["megapixels_per_second"] for s in speeds[name].values()]))

    allowed = [c for c in contexts if val[variant_name(c)]["surviving_faces"] <= val[TILES]["surviving_faces"]]
    if not allowed:
        return None
    fastest = max(mean_speed(variant_name(c)) for c in allowed)
    return max(c for c in allowed if mean_speed(variant_name(c)) >= fastest * (1 - SPEED_TIE))


def render(result: dict[str, Any]) -> str:
    photos = list(next(iter(result["speeds"].values())))
    lines = [
        "## Forget passes on crops around the map, against whole tiles", "",
        f"Command: `{result['command']}` ({os.cpu_count()}-core machine, torch {result['torch']}, precision "
        f"{result['precision']}). Models: the base `{result['base']}` unlearned on the face corpus's train split with "
        f"the demo's settings, seeds {', '.join(str(s) for s in result['seeds'])} "
        f"({', '.join(f'`{m}`' for m in result['models'].values())}); faces pooled over the seeds. Each tile is "
        "composited through its forget map (the base as reference, tile = the tile, 4 passes); the map is the same "
        "in every variant, so the pixels kept are too. Speed: the generator alone (map and passes) on whole photos, "
        f"tile 256, overlap 32, batch 4, median of {result['repeats']} runs after two warm-ups.", "",
        "| split | variant | face survival | non-face pixels identical | seconds for the split | "
        + " | ".join(f"MP/s on {p.split(':')[-1]} (decoded)" for p in photos) + " |",
        "|---|---|---|---|---|" + "---|" * len(photos),
    ]
    for split in ("val", "test"):
        for name, row in result.get(split, {}).items():
            speed = result["speeds"].get(name, {})
            cells = [f"{speed[p]['megapixels_per_second']:.2f} ({speed[p]['decoded']} {speed[p]['passes_on']})"
                     if p in speed else "—" for p in photos]
            lines.append(f"| {split} | {name} | {row['face_survival']:.1%} ({row['surviving_faces']}/"
                         f"{row['input_faces']}) | {row['non_face_identical']:.2%} | {row['seconds']:.1f} | "
                         + " | ".join(cells) + " |")
    chosen = result["chosen"]
    lines += ["", f"Rule: among the contexts that let no more val faces through than whole tiles, the fastest "
              f"(mean over the photos; within {SPEED_TIE:.0%}, more context). Chosen: "
              + ("whole tiles." if chosen is None else f"{chosen} px of context. The test split was measured once, "
                 "after the choice.")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, default=ROOT / "assets" / "demo_base")
    parser.add_argument("--corpus", type=Path, default=ROOT / "assets" / "face_corpus")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2],
                        help="unlearning seeds (tune_forget_map.py caches 1 and 2)")
    parser.add_argument("--contexts", type=int, nargs="+", default=list(CONTEXTS), help="context pixels to try")
    parser.add_argument("--photos", type=Path, nargs="+", default=[PHOTO, PHOTO.with_name("aero3.jpg")])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cache-dir", type=Path, default=ROOT / ".bench_cache" / "faces")
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "benchmarks" / "map_crops.json")
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args(argv)
    command = shlex.join(["python", "scripts/benchmark_map_crops.py", *(argv if argv is not None else sys.argv[1:])])
    models = {seed: corpus_model(args.base, args.corpus, seed, args.cache_dir) for seed in args.seeds}
    finder = FaceFinder(tile_size=None)
    contexts: list[int | None] = [None, *args.contexts]

    def split_rows(split: str, variants: list[int | None]) -> dict[str, dict[str, Any]]:
        per_seed = {seed: measure_variants(args.corpus / split / "manifest.jsonl", model, args.base, finder,
                                           {variant_name(c): {"map_context": c} for c in variants})[0]
                    for seed, model in models.items()}
        return {variant_name(c): pooled(per_seed, variant_name(c)) for c in variants}

    val = split_rows("val", contexts)
    speeds = photo_speeds([p for p in args.photos if p.is_file()], models[args.seeds[0]], args.base, contexts,
                          args.repeats)
    chosen = choose(val, speeds, args.contexts)
    test = split_rows("test", [None] if chosen is None else [None, chosen])
    result = {"command": command, "torch": torch.__version__, "base": shown(args.base),
              "precision": str(fast_dtype("cpu")).removeprefix("torch."), "seeds": args.seeds,
              "models": {seed: shown(model) for seed, model in models.items()}, "repeats": args.repeats,
              "val": val, "speeds": speeds, "chosen": chosen, "test": test}
    return publish(result, args.json, render(result), "map-crops", not args.no_doc)


if __name__ == "__main__":
    raise SystemExit(main())
