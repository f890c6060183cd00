"""What the noise target decodes to, and what ours' forget outputs are classified as.

The forget loss draws a fresh noise image every step, so a (deterministic) student can only
learn the mean of the teacher's embeddings over noise draws. This script measures, on the val
half of a class benchmark cache (scripts/benchmark_classes.py) and for each task: the spread of
one draw around that mean (the level the forget loss cannot go below), the classifier's forget
accuracy on the decoded single draw, on the decoded mean of K draws and for constant images,
and, for unlearned models given on the command line, on their outputs with the classes they
are taken for.

    python scripts/probe_noise_target.py --family mae \\
        .bench_cache/classes-full-all-5_7_9/ours-mae-16644a25-s100-lr0.001-a0.2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmark_classes as bench  # noqa: E402

from imgunlearn import load_generator  # noqa: E402
from imgunlearn.builders.fashion_mnist import CLASSES  # noqa: E402
from imgunlearn.metrics import load_classifier  # noqa: E402
from imgunlearn.tasks import Task  # noqa: E402
from imgunlearn.unlearning.objectives import blank_images, noise_images  # noqa: E402


def described(name: str, outputs: torch.Tensor, labels: torch.Tensor, classifier) -> str:
    with torch.no_grad():
        predicted = classifier(outputs).argmax(dim=1)
    counts = torch.bincount(predicted, minlength=len(CLASSES))
    top = ", ".join(f"{CLASSES[c]} {int(counts[c])}" for c in counts.argsort(descending=True)[:3] if counts[c])
    return f"  {name}: forget acc {(predicted == labels).float().mean():.1%} (taken for: {top})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", type=Path, help="unlearned models to classify the outputs of")
    parser.add_argument("--family", default="mae")
    parser.add_argument("--cache-dir", type=Path, default=bench.ROOT / ".bench_cache" / "classes-full-all-5_7_9")
    parser.add_argument("--images", type=int, default=512, help="forget images for the noise figures")
    parser.add_argument("--draws", type=int, nargs="+", default=[2, 4, 8, 16])
    args = parser.parse_args(argv)
    data = bench.prepare_data(argparse.Namespace(data_root=None, forget_classes=[5, 7, 9], per_class=None),
                              args.cache_dir)
    classifier = load_classifier(args.cache_dir / "classifier")
    base_dir = args.cache_dir / f"base-{bench.family_key(args.family)}"
    if not (base_dir / "config.json").exists():
        parser.error(f"{base_dir}: no base; run scripts/benchmark_classes.py --families {args.family} first")
    base = load_generator(base_dir).eval()
    images, labels = data["val"]["forget"]
    few, few_labels = images[: args.images], labels[: args.images]
    torch.manual_seed(0)
    for task_name in bench.TASKS:
        task = Task(task_name)
        print(f"{task_name} (val forget images: {len(labels)}; noise figures on {len(few_labels)})")
        for path in [None, *args.models]:
            model = base if path is None else load_generator(path).eval()
            print(described("original" if path is None else path.name, bench.outputs_of(model, images, task),
                            labels, classifier))
        with torch.no_grad():
            draws = torch.stack([base.embed(task(torch.cat([noise_images(chunk) for chunk in few.split(32)]), base))
                                 for _ in range(max(args.draws))])
            mean = draws.mean(dim=0)
            print(f"  one draw's squared distance to the mean of {len(draws)}, a value: "
                  f"{(draws[0] - mean).square().mean():.3f}")
            print(described("one noise draw, decoded", base.decode(draws[0]), few_labels, classifier))
            for count in args.draws:
                print(described(f"mean of {count} draws, decoded", base.decode(draws[:count].mean(dim=0)),
                                few_labels, classifier))
            for grey in (0.0, 0.5):
                print(described(f"the original's output for a constant {grey:g} image",
                                 base(task(blank_images(few, (grey,) * 3), base)), few_labels, classifier))
            print(described("a constant black output itself", blank_images(few, (0.0,) * 3), few_labels, classifier))


if __name__ == "__main__":
    main()
