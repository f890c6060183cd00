"""Tile seams on a dark flat photo: the block artefact of whole-image re-synthesis, measured.

A 12 MP photo of dark, flat ground (sensor-like noise, no texture) with aerial-photo patches
(opencv-doc's aero1/aero3) scattered over it goes through the Sanitizer without a reference
(every pixel re-synthesised, 256 px tiles, 32 px overlap), in the stitching it had before and
in today's. On the flat pixels (at least 48 px from every patch) it reports, in 8-bit levels,
the tone step between neighbouring tiles (the tile-sized blocks: a tile holding a bright patch
is renormalised by the generator's group norms into another tone than its neighbours), and
the excess error inside the overlap bands and on the worst row or column (lines along tile
edges). See imgunlearn.data.tiling.seam_figures.

    python scripts/benchmark_seams.py            # about 5 minutes on 2 cores

Writes docs/benchmarks/seams.json and the "seams" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchdoc import publish  # noqa: E402

from imgunlearn import load_generator  # noqa: E402
from imgunlearn.data import open_rgb  # noqa: E402
from imgunlearn.data import tiling  # noqa: E402
from imgunlearn.pipelines.sanitizer import Sanitizer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
AERIAL = [Path("/usr/share/doc/opencv-doc/examples/data") / name for name in ("aero1.jpg", "aero3.jpg")]
GROUND = (38.0, 40.0, 44.0)  # dark asphalt-like ground, 8-bit RGB
CLEARANCE = 48  # px between a patch and the flat pixels measured


def dark_flat_photo(width: int, height: int, patches: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The photo ((3, H, W) in [-1, 1], 8-bit values) and its flat-pixel mask ((H, W) bool)."""
    sources = [np.asarray(open_rgb(path)) for path in AERIAL if path.is_file()]
    if not sources:
        raise SystemExit(f"needs the opencv-doc aerial photos ({AERIAL[0]}); apt install opencv-doc")
    rng = np.random.default_rng(seed)
    photo = np.asarray(GROUND) + rng.normal(0.0, 3.0, (height, width, 3))
    flat = np.ones((height, width), bool)
    for index in range(patches):
        source = sources[index % len(sources)]
        h, w = (int(v) for v in rng.integers(60, 240, 2))
        top, left = int(rng.integers(0, height - h)), int(rng.integers(0, width - w))
        sy, sx = int(rng.integers(0, source.shape[0] - h)), int(rng.integers(0, source.shape[1] - w))
        photo[top:top + h, left:left + w] = source[sy:sy + h, sx:sx + w]
        flat[max(0, top - CLEARANCE):top + h + CLEARANCE, max(0, left - CLEARANCE):left + w + CLEARANCE] = False
    pixels = torch.from_numpy(photo.clip(0, 255).round().astype(np.float32)).permute(2, 0, 1)
    return pixels / 127.5 - 1, torch.from_numpy(flat)


def worst_line_excess(inputs: torch.Tensor, outputs: torch.Tensor, flat: torch.Tensor, border: int) -> float:
    """The largest mean |output − input| of a row or column's flat pixels (at least a quarter
    of it flat, ``border`` px or more from the photo's edge) over the median row's, in 8-bit
    levels: a line along tile edges shows here. The photo's own edge rows are left out: no
    neighbouring tile covers them, so they are the generator's edge, not a seam."""
    error = ((outputs.double() - inputs.double()).abs().mean(dim=0) * 127.5).where(flat, torch.nan)
    excess = []
    for dim in (1, 0):  # rows, then columns
        share = flat.float().mean(dim=dim)
        lines = error.nanmean(dim=dim)
        inner = torch.zeros_like(share, dtype=torch.bool)
        inner[border:-border] = True
        lines = lines[(share >= 0.25) & inner]
        excess.append(float(lines.max() - lines.median()))
    return max(excess)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generator", default="assets/demo_base", help="generator folder (default assets/demo_base)")
    parser.add_argument("--size", type=int, nargs=2, default=(4000, 3000), metavar=("W", "H"),
                        help="photo size (default 4000 3000, 12 MP)")
    parser.add_argument("--patches", type=int, default=40, help="aerial patches on the ground (default 40)")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "benchmarks" / "seams.json")
    parser.add_argument("--no-doc", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    command = shlex.join(["python", "scripts/benchmark_seams.py", *(argv if argv is not None else sys.argv[1:])])

    image, flat = dark_flat_photo(*args.size, args.patches)
    generator = load_generator(args.generator)
    # (label, ramp margin, tone matching, overlap): the stitching before this benchmark, a
    # wider overlap alone, each of today's two changes alone, and today's default.
    settings = [
        ("linear ramp over the whole overlap (before)", 0.0, False, args.overlap),
        (f"linear ramp, overlap {2 * args.overlap}", 0.0, False, 2 * args.overlap),
        ("outer overlap ignored", tiling.RAMP_MARGIN, False, args.overlap),
        ("tone matched per tile", 0.0, True, args.overlap),
        ("both (default)", tiling.RAMP_MARGIN, True, args.overlap),
    ]
    default_margin, rows = tiling.RAMP_MARGIN, []
    try:
        for label, margin, match_tone, overlap in settings:
            tiling.RAMP_MARGIN = margin  # read by blend_ramp at every call
            sanitizer = Sanitizer(generator, tile=args.tile, overlap=overlap, batch_size=8, match_tone=match_tone)
            start = time.perf_counter()
            output = sanitizer.generate(image)
            seconds = time.perf_counter() - start
            figures = tiling.seam_figures(image, output, flat, args.tile, overlap)
            rows.append({"setting": label, "ramp_margin": margin, "match_tone": match_tone, "overlap": overlap,
                         **figures, "worst_line_excess": worst_line_excess(image, output, flat, args.overlap),
                         "seconds": round(seconds, 1)})
            print(rows[-1], flush=True)
    finally:
        tiling.RAMP_MARGIN = default_margin
    width, height = args.size
    lines = [
        "## Seams: tiles on a dark flat photo",
        "",
        f"Command: `{command}` (2-core CPU, {torch.get_num_threads()} thread(s), torch {torch.__version__}).",
        f"A {width}×{height} photo of dark flat ground (RGB {GROUND}, Gaussian noise σ 3) with {args.patches} "
        "patches of opencv-doc's aerial photos, through the Sanitizer without a reference (every pixel re-synthesised "
        f"by `{args.generator}`), {args.tile} px tiles. Measured on the flat pixels ({CLEARANCE} px or more from every "
        f"patch; {float(flat.float().mean()):.0%} of the photo), in 8-bit levels: *tone step*, between neighbouring "
        "tiles, the largest per-channel difference of their interiors' mean output − input (the tile-sized blocks); "
        "*overlap excess*, mean |output − input| inside the overlap bands minus outside them; *worst line*, the "
        "worst row or column's mean |output − input| over the median row's (lines along tile edges; rows and columns "
        "within one overlap of the photo's edge left out: no second tile covers them).",
        "",
        "| stitching | overlap | tone step, mean | tone step, max | overlap excess | worst line | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['setting']} | {r['overlap']} | {r['tone_step_mean']:.2f} | {r['tone_step_max']:.2f} | "
                     f"{r['overlap_excess']:+.2f} | {r['worst_line_excess']:.2f} | {r['seconds']:.0f} |")
    lines += ["", "Target: tone step and worst line under 1 level (8-bit) with the defaults."]
    result = {"command": command, "generator": args.generator, "size": [width, height], "tile": args.tile,
              "rows": rows}
    return publish(result, args.json, "\n".join(lines), "seams", write_doc=not args.no_doc)


if __name__ == "__main__":
    sys.exit(main())
