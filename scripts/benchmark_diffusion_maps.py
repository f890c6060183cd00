"""Which of the diffusion encoder's feature maps carry a class to the output.

An oracle, not a method: the class benchmark's diffusion base (scripts/benchmark_classes.py,
its cache) samples the val half's forget images (centre inpainting and outpainting) while, at
every DDIM step, the chosen maps are replaced by what the same encoder makes of the noise
target's input at the same noisy sample. If forgetting is possible by changing only the
encoder, it is possible through those maps; the classifier's accuracy on the outputs says
how much of the class still came through. The maps are numbered as the encoder passes them on:
0 the input convolution (full resolution, a linear function of the input), then each down
block's resnets and downsampler, then the mid block.

    python scripts/benchmark_diffusion_maps.py   # needs the class benchmark's diffusion base

Writes the section "diffusion-maps" of docs/benchmarks.md (--no-doc: print only).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchdoc import write_section  # noqa: E402
from benchmark_classes import ROOT, TASKS, family_key, family_sets, noise_target_images, prepare_data  # noqa: E402

from imgunlearn import load_generator  # noqa: E402
from imgunlearn.metrics import classifier_accuracy, load_classifier  # noqa: E402
from imgunlearn.tasks import Task  # noqa: E402


def swapped_maps_sampling(model, inputs: torch.Tensor, target_inputs: torch.Tensor, maps: set[int]) -> torch.Tensor:
    """``model``'s samples for ``inputs`` with the encoder's ``maps`` taken, at every step, from
    its pass on ``target_inputs`` (same noisy sample, same timestep)."""
    encode = model._encode
    channels = model.image_channels

    def encode_with_swaps(unet_input: torch.Tensor, timesteps: torch.Tensor) -> list[torch.Tensor]:
        features = encode(unet_input, timesteps)
        if not maps:
            return features
        target = torch.cat([unet_input[:, :channels], target_inputs], dim=1)
        swapped = encode(target, timesteps)
        return [swapped[i] if i in maps else feature for i, feature in enumerate(features)]

    model._encode = encode_with_swaps
    try:
        return model(inputs)
    finally:
        del model._encode


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", type=Path, default=ROOT / ".bench_cache" / "classes-full-all-5_7_9",
                        help="the class benchmark's cache (its diffusion base, classifier and data)")
    parser.add_argument("--diffusion-eval-per-class", type=int, default=30)
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args(argv)
    command = shlex.join(["python", "scripts/benchmark_diffusion_maps.py", *(argv if argv is not None else sys.argv[1:])])
    base_dir = args.cache_dir / f"base-{family_key('diffusion')}"
    if not (base_dir / "config.json").is_file():
        raise SystemExit(f"{base_dir}: no diffusion base; run scripts/benchmark_classes.py --curve-only "
                         "--families diffusion first")
    data_args = argparse.Namespace(forget_classes=[5, 7, 9], per_class=None, data_root=None,
                                   diffusion_eval_per_class=args.diffusion_eval_per_class)
    images, labels = family_sets(prepare_data(data_args, args.cache_dir), "diffusion", "val", data_args)["forget"]
    classifier = load_classifier(args.cache_dir / "classifier")
    base = load_generator(base_dir).eval()
    coarsest = base.sample_size // base.downsampling_factor
    sizes = [(channels, fold * coarsest) for channels, fold in base._layout()]
    # Maps k and deeper, for every k: how deep the change must reach for the class to go.
    groups = {"none (the base)": set()}
    groups.update({f"{k} and deeper": set(range(k, len(sizes))) for k in range(len(sizes))})
    groups["the input convolution only"] = {0}
    noise = noise_target_images(images)
    rows = []
    with torch.no_grad():
        for task_name in TASKS:
            task = Task(task_name)
            for name, maps in groups.items():
                out = swapped_maps_sampling(base, task(images, base), task(noise, base), maps)
                rows.append((task_name, name, classifier_accuracy(out, labels, classifier)))
                print(rows[-1], flush=True)
    lines = ["## Diffusion: which encoder maps carry a class to the output",
             "", f"`{command}`", "",
             f"The class benchmark's tiny-diffusion base, {len(labels)} val forget images (Sandal, Sneaker, Ankle boot). "
             "At every DDIM step the listed maps come from the encoder's pass on the noise target's input "
             "(what perfect forgetting would give them); the others from the forget image's. Forget accuracy: "
             "the benchmark's classifier on the outputs (lower: less of the class came through). The maps "
             "(channels × side): " + ", ".join(f"{i}: {channels}×{side}" for i, (channels, side) in enumerate(sizes)) + ".",
             "",
             "| task | maps replaced | forget acc |", "|---|---|---|"]
    lines += [f"| {task} | {name} | {acc:.1%} |" for task, name, acc in rows]
    table = "\n".join(lines)
    print("\n" + table)
    if not args.no_doc:
        write_section("diffusion-maps", table)


if __name__ == "__main__":
    main()
