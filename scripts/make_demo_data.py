"""Build the faces demo set: small faces composited into aerial tiles (offline sources only).

    python scripts/make_demo_data.py                        # assets/demo_data, seed 0, 128 px
    python scripts/make_demo_data.py --output DIR --seed 0 --tile 128 --train-tiles 160 --test-tiles 80
    python scripts/make_demo_data.py --background fallback  # scikit-image textures, no opencv-doc

Writes train/{forget,retain}/*.png, test/{forget,retain}/*.png, train/manifest.jsonl,
test/manifest.jsonl (readable by imgunlearn.data.read_manifest) and meta.json. The logic lives
in imgunlearn.builders.demo_faces; see its docstring for the split rules.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from imgunlearn.builders.demo_faces import (
    AERIAL_DIR,
    AERIAL_FILES,
    DemoDataConfig,
    MissingSourceError,
    build_demo_data,
    load_aerial_backgrounds,
)

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = DemoDataConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=ROOT / "assets" / "demo_data")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--tile", type=int, default=defaults.tile, help="tile side in pixels")
    parser.add_argument("--train-tiles", type=int, default=defaults.train_tiles)
    parser.add_argument("--test-tiles", type=int, default=defaults.test_tiles)
    parser.add_argument("--retain-fraction", type=float, default=defaults.retain_fraction,
                        help="share of tiles without faces")
    parser.add_argument("--max-faces", type=int, default=defaults.max_faces, help="faces per forget tile, at most")
    parser.add_argument("--face-min", type=int, default=defaults.face_min, help="smallest face side in pixels")
    parser.add_argument("--face-max", type=int, default=defaults.face_max, help="largest face side in pixels")
    parser.add_argument("--face-size-power", type=float, default=defaults.face_size_power,
                        help="size = min + (max-min)*u**power; < 1 favours large faces")
    parser.add_argument("--region-split", type=float, default=defaults.region_split,
                        help="left share of each photo used for train tiles")
    parser.add_argument("--background", choices=("aerial", "fallback"), default=defaults.background)
    parser.add_argument("--aerial-dir", type=Path, default=AERIAL_DIR,
                        help=f"folder holding {', '.join(AERIAL_FILES)} (Debian opencv-doc)")
    parser.add_argument("--no-detect", action="store_true", help="skip the MTCNN detectability check")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = DemoDataConfig(
        seed=args.seed, tile=args.tile, train_tiles=args.train_tiles, test_tiles=args.test_tiles,
        retain_fraction=args.retain_fraction, max_faces=args.max_faces, face_min=args.face_min,
        face_max=args.face_max, face_size_power=args.face_size_power, region_split=args.region_split,
        background=args.background, detect=not args.no_detect,
    )
    try:
        backgrounds = load_aerial_backgrounds(args.aerial_dir) if args.background == "aerial" else None
        meta = build_demo_data(args.output, config, backgrounds=backgrounds)
    except MissingSourceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    total = sum(p.stat().st_size for p in args.output.rglob("*") if p.is_file())
    print(f"demo data in {args.output} ({total / 1e6:.2f} MB, {total} bytes)")
    for split, counts in meta["counts"].items():
        line = (f"  {split}: {counts['tiles']} tiles ({counts['forget_tiles']} forget, "
                f"{counts['retain_tiles']} retain), {counts['faces']} faces of {counts['identities']} identities")
        if config.detect:
            line += f", {counts['detectable_faces']} detectable ({counts['detectability']:.1%})"
            line += f", {counts['false_detections']} detections outside face boxes"
        print(line)
    if config.detect:
        print(f"  detectability overall: {meta['detectability']:.1%}")
    groups = meta["split_rule"]["duplicate_groups"]
    print(f"  near-duplicate LFW crops kept on one side: {groups if groups else 'none found'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
