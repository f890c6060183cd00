"""Toy benchmark: forget one family of synthetic shapes, keep another.

Builds round shapes (forget) and angular shapes (retain) at 32 px with held-out test images,
trains tiny-kl and tiny-vq bases on both, unlearns the round shapes with our objective, and
reports the mean reconstruction error (MSE, images in [-1, 1]) per set before and after.
Targets: forget error up at least 5x, retain error up at most 1.5x.

    python scripts/benchmark_toy.py            # full: 3000 base steps per generator
    python scripts/benchmark_toy.py --quick    # about 7 minutes: 1000 base steps, fewer images

Finished parts (data, trained bases) are cached in --cache-dir and reused, so a killed run
resumes where it stopped. Results go to docs/benchmarks/toy.json and docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchdoc import write_section  # noqa: E402

from imgunlearn import load_generator, train_generator, unlearn  # noqa: E402
from imgunlearn.data import list_image_files, load_image_tensor  # noqa: E402
from imgunlearn.builders.toy import make_toy_dataset  # noqa: E402
from imgunlearn.fileio import write_json_atomic  # noqa: E402
from imgunlearn.generators import FAMILIES, Generator  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@torch.no_grad()
def mean_reconstruction_error(generator: Generator, folder: Path, batch_size: int = 100) -> float:
    """Mean squared error between D(E(x)) and x over every image in ``folder``."""
    generator.eval()
    files = list_image_files(folder)
    total = 0.0
    for start in range(0, len(files), batch_size):
        images = torch.stack([load_image_tensor(p, generator.sample_size)[0] for p in files[start:start + batch_size]])
        total += float(((generator(images) - images) ** 2).mean(dim=(1, 2, 3)).sum())
    return total / len(files)


def ensure_data(cache: Path, per_concept: int, test_per_concept: int) -> dict[str, Path]:
    data = cache / f"data-{per_concept}"
    if not (data / "done").exists():
        make_toy_dataset(data / "train", per_concept=per_concept, size=32, seed=0)
        make_toy_dataset(data / "test", per_concept=test_per_concept, size=32, seed=1)
        (data / "done").write_text("ok\n")
    return {"train": data / "train", "test": data / "test"}


def ensure_base(cache: Path, family: str, data: Path, steps: int, batch_size: int) -> tuple[Generator, float]:
    directory = cache / f"base-{family}-{steps}"
    if (directory / "config.json").exists():
        base = load_generator(directory)
        return base, base.card["history"][-1]["seconds"]
    config = yaml.safe_load((ROOT / "configs" / "generators" / f"tiny-{family}.yaml").read_text())
    options = {k: config[k] for k in ("lr", "warmup_steps", "tasks", "mask_area", "family_loss_weight", "seed")}
    print(f"training base tiny-{family} for {steps} steps", flush=True)
    base = train_generator(config["generator"], data, max_steps=steps, batch_size=batch_size,
                           output_dir=cache / f"train-{family}-{steps}", **options)
    base.save_pretrained(directory)
    return base, base.card["history"][-1]["seconds"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small budgets (minutes)")
    parser.add_argument("--families", nargs="+", default=sorted(FAMILIES), choices=sorted(FAMILIES))
    parser.add_argument("--train-steps", type=int, help="base training steps (default 3000, quick 1000)")
    parser.add_argument("--unlearn-steps", type=int, help="unlearning steps (default 300, the same when quick)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-2, help="unlearning learning rate (tiny models take a high one)")
    parser.add_argument("--alpha", type=float, default=0.2, help="forget-loss weight (the paper uses 0.2 for VQ-GAN)")
    parser.add_argument("--target", default="noise", choices=["noise", "blank"])
    parser.add_argument("--cache-dir", type=Path, default=ROOT / ".bench_cache" / "toy")
    parser.add_argument("--json", type=Path, help="results file (default docs/benchmarks/toy.json; "
                        "a --quick run writes into its cache dir and leaves the docs alone)")
    parser.add_argument("--no-doc", action="store_true", help="do not write docs/benchmarks.md")
    args = parser.parse_args(argv)
    train_steps = args.train_steps or (1000 if args.quick else 3000)
    unlearn_steps = args.unlearn_steps or 300
    per_concept = 200 if args.quick else 400
    if args.quick:
        args.no_doc = True  # the committed figures are a full run's; a quick run only prints
    args.json = args.json or (args.cache_dir / "toy-quick.json" if args.quick else ROOT / "docs" / "benchmarks" / "toy.json")
    command = shlex.join(["python", "scripts/benchmark_toy.py", *(argv if argv is not None else sys.argv[1:])])

    data = ensure_data(args.cache_dir, per_concept, 100)
    results = []
    for family in args.families:
        base, train_seconds = ensure_base(args.cache_dir, family, data["train"], train_steps, args.batch_size)
        started = time.perf_counter()
        unlearned = unlearn(base, forget=data["train"] / "round", retain=data["train"] / "angular",
                            objective="ours", target=args.target, alpha=args.alpha, max_steps=unlearn_steps,
                            batch_size=args.batch_size, lr=args.lr, seed=0,
                            output_dir=args.cache_dir / f"unlearn-{family}-{train_steps}-{unlearn_steps}")
        unlearn_seconds = time.perf_counter() - started
        record = {"generator": f"tiny-{family}", "train_steps": train_steps, "unlearn_steps": unlearn_steps,
                  "train_seconds": round(train_seconds, 1), "unlearn_seconds": round(unlearn_seconds, 1)}
        for name, folder in [("forget_test", data["test"] / "round"), ("retain_test", data["test"] / "angular"),
                             ("forget_train", data["train"] / "round"), ("retain_train", data["train"] / "angular")]:
            before = mean_reconstruction_error(base, folder)
            after = mean_reconstruction_error(unlearned, folder)
            record[name] = {"before": round(before, 5), "after": round(after, 5), "ratio": round(after / before, 2)}
        record["pass"] = record["forget_test"]["ratio"] >= 5 and record["retain_test"]["ratio"] <= 1.5
        results.append(record)
        print(json.dumps(record), flush=True)

    write_json_atomic({"command": command, "quick": args.quick, "target": args.target, "alpha": args.alpha,
                       "lr": args.lr, "results": results}, args.json)
    table = render(results, command, args)
    print("\n" + table)
    if not args.no_doc:
        write_section("toy", table)


def render(results: list[dict], command: str, args: argparse.Namespace) -> str:
    lines = [
        "## Toy: forget round shapes, keep angular shapes",
        "",
        f"Command: `{command}` (2-core CPU, {torch.__version__}).",
        f"Unlearning: objective `ours`, target `{args.target}`, alpha {args.alpha}, lr {args.lr}, "
        f"batch {args.batch_size}. Error = mean squared error of the reconstruction, images in [-1, 1], "
        "on held-out test images (train-set figures in docs/benchmarks/toy.json).",
        "Targets: forget error ×5 or more, retain error ×1.5 or less. Base training seconds were measured "
        "when each base was first trained (then cached), while other work shared the 2 cores.",
        "",
        "| generator | base steps | forget before | forget after | forget × | retain before | retain after | retain × | unlearn s | base train s | pass |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        f, k = r["forget_test"], r["retain_test"]
        lines.append(f"| {r['generator']} | {r['train_steps']} | {f['before']:.4f} | {f['after']:.4f} | {f['ratio']:.1f} | "
                     f"{k['before']:.4f} | {k['after']:.4f} | {k['ratio']:.2f} | {r['unlearn_seconds']:.0f} | "
                     f"{r['train_seconds']:.0f} | {'yes' if r['pass'] else 'no'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
