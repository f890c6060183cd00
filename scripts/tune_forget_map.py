"""Choose the forget map's calibration on the face corpus's val split (docs/design.md §1b).

The base is unlearned on the corpus's train split with the demo's settings (cached, shared
with scripts/benchmark_faces.py); its per-cell divergence on the train split's retain tiles
gives the percentiles a threshold may start from. For each (percentile, map dilation) the
val tiles are composited through the map and measured: face survival (MTCNN), the share of
non-face pixels (8 px from every box) left identical to the input, and the changed area over
the face boxes' area. Writes docs/benchmarks/forget_map_val.json and the "forget-map-val"
section of docs/benchmarks.md.

    python scripts/tune_forget_map.py
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchdoc import publish  # noqa: E402
from benchmark_faces import ensure_unlearned, shown, unlearned_dir, weights_digest  # noqa: E402

from imgunlearn import load_generator  # noqa: E402
from imgunlearn.concepts.faces import FaceFinder  # noqa: E402
from imgunlearn.data import read_manifest  # noqa: E402
from imgunlearn.data.datasets import ImageRecordDataset  # noqa: E402
from imgunlearn.demo import DEMO_UNLEARN  # noqa: E402
from imgunlearn.evaluation import batched_outputs, evaluate_faces, forget_map_fidelity, load_face_set  # noqa: E402
from imgunlearn.unlearning import forget_map  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PERCENTILES = (99.0, 99.5, 99.9)
DILATIONS = (1, 2)


@torch.no_grad()
def divergences(model: Any, base: Any, images: torch.Tensor) -> torch.Tensor:
    return torch.cat([forget_map.cell_divergence(model.embed(images[i:i + 32]), base.embed(images[i:i + 32]))
                      for i in range(0, len(images), 32)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, default=ROOT / "assets" / "demo_base")
    parser.add_argument("--corpus", type=Path, default=ROOT / "assets" / "face_corpus")
    parser.add_argument("--split", default="val")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / ".bench_cache" / "faces")
    parser.add_argument("--retain-tail", type=float, default=0.0,
                        help="unlearn with this retain-tail weight (imgunlearn unlearn --retain-tail; default off)")
    parser.add_argument("--tail-share", type=float, default=0.01)
    parser.add_argument("--rotate", action="store_true", help="augment with 90-degree turns as well")
    parser.add_argument("--dilations", type=int, nargs="+", default=list(DILATIONS))
    parser.add_argument("--json", type=Path, help="where the results go (default docs/benchmarks/forget_map_SPLIT.json)")
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args(argv)
    command = shlex.join(["python", "scripts/tune_forget_map.py", *(argv if argv is not None else sys.argv[1:])])
    base, digest = load_generator(args.base).eval(), weights_digest(args.base)
    train = args.corpus / "train" / "manifest.jsonl"
    settings = {**DEMO_UNLEARN, "seed": 0, "augment": "default"}  # as benchmark_faces.py --cross-source-only
    if args.retain_tail:
        settings.update(retain_tail=args.retain_tail, tail_share=args.tail_share)
    if args.rotate:
        settings["augment"] = {"preset": "default", "rotate": True}
    model = ensure_unlearned(base, digest, settings, train, args.cache_dir, progress=False).eval()

    retain = ImageRecordDataset(read_manifest(train)["retain"], base.sample_size)
    retain_d = divergences(model, base, torch.stack([retain[i]["image"] for i in range(len(retain))]))
    percentiles = {p: float(np.percentile(retain_d.numpy(), p)) for p in PERCENTILES}

    manifest = args.corpus / args.split / "manifest.jsonl"
    images, boxes, _ = load_face_set(manifest)
    generated = batched_outputs(model, images, 16).clamp(-1, 1)
    d = divergences(model, base, images)
    finder = FaceFinder(tile_size=None)
    whole = evaluate_faces(manifest=manifest, finder=finder, outputs=generated)
    rows = []
    for percentile in PERCENTILES:
        for dilation in args.dilations:
            # One tile per image, so the Sanitizer's composite is exactly this.
            cells = forget_map.cell_mask(d, percentiles[percentile], dilation)
            weights = torch.stack([forget_map.pixel_weight(c[0], 2 ** (len(base.config["block_out_channels"]) - 1),
                                                           *images.shape[-2:])[None] for c in cells])
            outputs = ((images + weights * (generated - images) + 1) * 127.5).round() / 127.5 - 1
            report = evaluate_faces(manifest=manifest, finder=finder, outputs=outputs)
            rows.append({"percentile": percentile, "threshold": percentiles[percentile], "dilation": dilation,
                         "face_survival": report["face_survival"], "surviving_faces": report["surviving_faces"],
                         "input_faces": report["input_faces"],
                         **forget_map_fidelity(images, outputs, weights, boxes)})
            print(rows[-1], flush=True)
    result = {"command": command, "model": shown(unlearned_dir(settings, digest, args.cache_dir)),
              "base": shown(args.base), "split": args.split, "settings": settings, "retain_percentiles": percentiles,
              "whole_tile_survival": whole["face_survival"], "whole_surviving": whole["surviving_faces"],
              "input_faces": whole["input_faces"], "rows": rows}
    lines = [
        f"## Forget map settings, chosen on the corpus's {args.split} split", "",
        f"Command: `{command}`. Model: `{result['model']}` (the base `{result['base']}` unlearned on the corpus's "
        f"train split with the demo's settings{tail_note(settings)}). The threshold is the given percentile of the per-cell "
        "divergence over the train split's retain tiles (margin 1); each tile is composited through the map "
        "(dilated by the given cells, 4 px feather). Without the map (whole tile re-synthesised) "
        f"{whole['face_survival']:.1%} ({whole['surviving_faces']}/{whole['input_faces']}) of the faces survive.", "",
        "| percentile | τ | dilation | face survival | non-face pixels identical | changed area / face boxes |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['percentile']:g} | {r['threshold']:.3g} | {r['dilation']} | {r['face_survival']:.1%} "
                     f"({r['surviving_faces']}/{r['input_faces']}) | {r['non_face_identical']:.2%} "
                     f"| {r['changed_area_vs_boxes']:.2f} |")
    best = min(rows, key=lambda r: (r["surviving_faces"], -r["non_face_identical"]))
    result["chosen"] = best
    lines += ["", f"Chosen (a privacy tool takes the lowest survival; ties go to the most pixels kept): the "
              f"{best['percentile']:g}th percentile, margin 1, dilation {best['dilation']}."]
    return publish(result, args.json or ROOT / "docs" / "benchmarks" / f"forget_map_{args.split}.json",
                   "\n".join(lines), f"forget-map-{args.split}", not args.no_doc)


def tail_note(settings: dict[str, Any]) -> str:
    notes = []
    if isinstance(settings.get("augment"), dict) and settings["augment"].get("rotate"):
        notes.append("90-degree turns in the augmentation")
    if settings.get("retain_tail"):
        notes.append(f"the retain-tail term (weight {settings['retain_tail']:g}, share {settings['tail_share']:g})")
    return "".join(f", plus {note}" for note in notes)


if __name__ == "__main__":
    sys.exit(main())
