"""Time the README's main job, `imgunlearn demo`, as a user runs it, and record its figures.

    python scripts/benchmark_demo.py                # runs `imgunlearn demo` in a fresh process

Target (the one-command demo): at most 10 minutes on a CPU. Writes the "demo" section of
docs/benchmarks.md with the command, the wall time and the demo's own metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchdoc import write_section  # noqa: E402

from imgunlearn.demo import summary_table  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TARGET_SECONDS = 600


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=ROOT / "runs" / "demo-benchmark")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args(argv)
    command = shlex.join(["python", "scripts/benchmark_demo.py", *(argv if argv is not None else sys.argv[1:])])
    demo = [str(Path(sys.executable).parent / "imgunlearn"), "demo", "--output", str(args.output),
            "--device", args.device, "--no-progress"]
    started = time.perf_counter()
    result = subprocess.run(demo, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.perf_counter() - started
    if result.returncode != 0:
        print(f"imgunlearn demo failed with exit status {result.returncode}", file=sys.stderr)
        return result.returncode
    metrics = json.loads((args.output / "metrics.json").read_text())
    settings = ", ".join(f"{k} {v}" for k, v in metrics["settings"].items())
    table = "\n".join([
        "## Demo: `imgunlearn demo`",
        "",
        f"Command: `{command}` (runs `imgunlearn demo` in a fresh process; {os.cpu_count()}-core machine, "
        f"device {args.device}, torch {torch.__version__}). Wall time {wall:.0f} s (target ≤ {TARGET_SECONDS} s), "
        f"of which unlearning {metrics['unlearn_seconds']:.0f} s; settings: {settings}; precision "
        f"{metrics['precision']}.",
        "",
        summary_table(metrics),
    ])
    print("\n" + table)
    if not args.no_doc:
        write_section("demo", table)
    return 0 if wall <= TARGET_SECONDS else 1


if __name__ == "__main__":
    sys.exit(main())
