"""`preprocess` of one folder on 1 and 2 processes (and on 1 GPU where there is one).

Eight aerial photos (1600×1200, cut from the 12 MP mosaic of benchmark_preprocess.py, each
with a face pasted in) go through `imgunlearn preprocess` as a user runs it: the demo's
unlearned model with the base as reference, the post-check at four angles, fail-closed. Each
setting is a fresh command (`python -m imgunlearn.cli`), timed from start to exit, so the
figures include start-up (imports, loading the models, and for 2 processes Lightning's launch
of the second one). The outputs of every setting are compared with the first's (one process
on one thread): equal pixel for pixel when every process runs as many threads, and within
float rounding otherwise (torch sums in another order on another number of threads).

    python scripts/benchmark_processes.py                  # 2-core CPU: 1 and 2 processes
    python scripts/benchmark_processes.py --device cuda    # adds 1 GPU

Writes docs/benchmarks/processes[-cuda].json and the "preprocess-processes" section of
docs/benchmarks.md (not with --device cuda: the GPU machine's figures are copied in by hand
with their command).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchdoc import publish  # noqa: E402
from benchmark_faces import unlearned_dir, weights_digest  # noqa: E402
from benchmark_preprocess import survey_photo  # noqa: E402

from imgunlearn.demo import demo_unlearn_settings  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".bench_cache"
PHOTO_SIZE = (1600, 1200)


def survey_folder(folder: Path, count: int) -> Path:
    """``count`` photos cut from the 12 MP mosaic at different places (made once)."""
    if len(list(folder.glob("*.jpg"))) == count:
        return folder
    mosaic = Image.open(survey_photo(4000, 3000, CACHE / "preprocess" / "survey-12mp.jpg"))
    folder.mkdir(parents=True, exist_ok=True)
    width, height = PHOTO_SIZE
    for index in range(count):
        left = (index * 797) % (mosaic.width - width)
        top = (index * 541) % (mosaic.height - height)
        mosaic.crop((left, top, left + width, top + height)).save(folder / f"photo{index:02d}.jpg", quality=90)
    return folder


def run(src: Path, dst: Path, model: Path, reference: Path, extra: list[str], env: dict[str, str]) -> float:
    command = [sys.executable, "-m", "imgunlearn.cli", "preprocess", str(src), "--generator", str(model),
               "--reference", str(reference), "--output", str(dst), "--no-progress", *extra]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **env})
    seconds = time.perf_counter() - started
    if result.returncode not in (0, 1):
        raise SystemExit(f"{shlex.join(command)} failed:\n{result.stderr}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--photos", type=int, default=8)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args(argv)
    command = shlex.join(["python", "scripts/benchmark_processes.py", *(argv if argv is not None else sys.argv[1:])])
    base_dir = ROOT / "assets" / "demo_base"
    # The model benchmark_preprocess.py makes (and caches): the base unlearned with the demo's settings.
    model_dir = unlearned_dir({**demo_unlearn_settings("noise", 600), "seed": 0}, weights_digest(base_dir),
                              CACHE / "faces", ROOT / "assets" / "demo_data" / "train" / "manifest.jsonl")
    if not (model_dir / "config.json").is_file():
        raise SystemExit(f"{model_dir}: no unlearned model; run python scripts/benchmark_faces.py first")
    src = survey_folder(CACHE / "processes" / "src", args.photos)
    megapixels = sum(np.prod(Image.open(p).size) for p in src.glob("*.jpg")) / 1e6
    cpu = ["--trainer.accelerator", "cpu"]
    # (label, options, environment): Lightning gives each of 2 processes one of the 2 cores.
    settings = [("1 process, 1 thread", [*cpu, "--trainer.devices", "1"], {"OMP_NUM_THREADS": "1"}),
                (f"1 process, {os.cpu_count()} threads", [*cpu, "--trainer.devices", "1"], {}),
                ("2 processes (DDP, gloo), 1 thread each", [*cpu, "--trainer.devices", "2", "--trainer.strategy", "ddp"],
                 {})]
    if args.device == "cuda":
        settings.append(("1 GPU", ["--trainer.accelerator", "gpu", "--trainer.devices", "1"], {}))
    rows, first = [], None
    for index, (label, extra, env) in enumerate(settings):
        dst = CACHE / "processes" / f"run{index}"
        seconds = run(src, dst, model_dir, base_dir, extra, env)
        pixels = {p.name: np.asarray(Image.open(p)).astype(np.int16) for p in sorted(dst.glob("*.jpg"))}
        first = first or pixels
        if pixels.keys() != first.keys():
            raise SystemExit(f"{dst}: other files than {sorted(first)}")
        differences = np.concatenate([np.abs(pixels[k] - first[k]).ravel() for k in first])
        rows.append({"setting": label, "options": " ".join(extra), "env": env, "seconds": round(seconds, 1),
                     "mp_per_s": float(megapixels / seconds), "equal_share": float((differences == 0).mean()),
                     "max_difference": int(differences.max())})
        print(rows[-1], flush=True)
    result = {"command": command, "megapixels": megapixels, "photos": args.photos, "model": str(model_dir.relative_to(ROOT)),
              "cpus": os.cpu_count(), "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
              "torch": torch.__version__, "rows": rows}
    json_path = args.json or ROOT / "docs" / "benchmarks" / f"processes{'-cuda' if args.device == 'cuda' else ''}.json"
    return publish(result, json_path, render(result), "preprocess-processes",
                   write_doc=not args.no_doc and args.device == "cpu")


def render(result: dict) -> str:
    rows = result["rows"]
    lines = [
        "## preprocess: 1 and 2 processes",
        "",
        f"Command: `{result['command']}` ({result['cpus']}-core CPU"
        + (f", {result['gpu']}" if result["gpu"] else "") + f", torch {result['torch']}). "
        f"{result['photos']} photos of {PHOTO_SIZE[0]}×{PHOTO_SIZE[1]} ({result['megapixels']:.1f} MP) through "
        f"`imgunlearn preprocess` with `{result['model']}` and `--reference assets/demo_base`, the post-check at "
        "0/90/180/270°, fail-closed; wall time of the whole command, start-up included. Row 1 runs with "
        "`OMP_NUM_THREADS=1`; with 2 processes Lightning gives each one thread. Outputs against row 1's: the share "
        "of 8-bit values that are equal, and the largest difference (float rounding on another number of threads, "
        "through the JPEG re-encode).",
        "",
        "| setting | options | seconds | MP/s | values equal to row 1 | largest difference |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['setting']} | `{r['options']}` | {r['seconds']:.1f} | {r['mp_per_s']:.3f} | "
                     f"{r['equal_share']:.4%} | {r['max_difference']} |")
    if len(rows) >= 3:
        lines += ["", f"Two processes run {rows[0]['seconds'] / rows[2]['seconds']:.2f}× as fast as one process on one "
                  f"thread and {rows[1]['seconds'] / rows[2]['seconds']:.2f}× as fast as one process on both cores: "
                  "torch's threads already share the convolutions between the cores, so a second process gains only "
                  "what one process leaves serial (decoding and encoding photos, MTCNN's steps between its networks, "
                  "blending)."]
    if not result["gpu"]:
        lines += ["", "On a GPU: `python scripts/benchmark_processes.py --device cuda` (part of `scripts/gpu_checks.sh`) "
                  "adds a 1-GPU row; its figures are copied here with its command when a GPU machine has run it."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
