"""Train the demo's base generator on the demo training tiles and check that it keeps faces.

    python scripts/train_demo_base.py --max-steps 6000  # trains into assets/demo_base (resumable)
    python scripts/train_demo_base.py --evaluate-only # re-measure the shipped model

The base must keep faces, or forgetting them cannot be shown: at least 80% of the faces MTCNN
finds in the held-out test tiles must still be found in the base's outputs. Writes the model
(diffusers safetensors + config + card) to --output, its figures to --output/metrics.json and a
section of docs/benchmarks.md with this command.
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

from imgunlearn import load_generator, train_generator  # noqa: E402
from imgunlearn.concepts.faces import FaceFinder  # noqa: E402
from imgunlearn.evaluation import evaluate_faces  # noqa: E402
from imgunlearn.fileio import write_json_atomic  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
KEEP_TARGET = 0.8


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "generators" / "demo-kl.yaml")
    parser.add_argument("--data", type=Path, default=ROOT / "assets" / "demo_data")
    parser.add_argument("--output", type=Path, default=ROOT / "assets" / "demo_base")
    parser.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "demo_base_training",
                        help="checkpoints and loss log; a killed run resumes from here")
    parser.add_argument("--max-steps", type=int, help="override the config's step budget")
    parser.add_argument("--init", type=Path, help="start from this generator's weights instead of the config's fresh ones")
    parser.add_argument("--augment", choices=("default", "survey"), help="augment training batches with this preset")
    parser.add_argument("--lr", type=float, help="override the config's learning rate")
    parser.add_argument("--evaluate-only", action="store_true", help="measure the model already in --output")
    parser.add_argument("--no-doc", action="store_true", help="leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    command = shlex.join(["python", "scripts/train_demo_base.py", *(argv if argv is not None else sys.argv[1:])])

    earlier = args.output / "metrics.json"
    if args.evaluate_only:
        generator = load_generator(args.output)
        previous = json.loads(earlier.read_text()) if earlier.exists() else {}
        training_info = {k: previous.get(k) for k in ("train_command", "train_device", "train_seconds")}
    else:
        config = yaml.safe_load(args.config.read_text())
        options = {k: v for k, v in config.items() if k not in ("generator", "trainer")}
        if args.max_steps:
            options["max_steps"] = args.max_steps
        if args.augment:
            options["augment"] = args.augment
        if args.lr:
            options["lr"] = args.lr
        last = args.run_dir / "checkpoints" / "last.ckpt"
        # A resumed run's card counts only its own seconds: add those of the runs before it.
        earlier_seconds = 0.0
        if last.exists() and earlier.exists():
            earlier_seconds = json.loads(earlier.read_text()).get("train_seconds") or 0.0
        started = time.perf_counter()
        start = load_generator(args.init) if args.init else config["generator"]
        generator = train_generator(start, args.data / "train", output_dir=args.run_dir,
                                    resume=last if last.exists() else None,
                                    trainer_options=config.get("trainer"), **options)
        print(f"trained in {time.perf_counter() - started:.0f} s", flush=True)
        generator.card["history"][-1]["seconds"] = round(generator.card["history"][-1]["seconds"] + earlier_seconds, 1)
        generator.save_pretrained(args.output)
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
        training_info = {"train_command": command, "train_device": device,
                         "train_seconds": generator.card["history"][-1]["seconds"]}

    finder = FaceFinder(tile_size=None)
    report = evaluate_faces(generator, args.data / "test" / "manifest.jsonl", finder=finder)
    stages = [h for h in generator.card.get("history", []) if h.get("stage") == "train"]
    trained = "; then ".join(
        f"{h.get('max_steps')} steps on `{Path(str(h.get('data'))).parent.name}/train`"
        + (f" with augmentation {h['augment']}" if h.get("augment") else "") for h in stages)
    metrics = {"command": command, **training_info, "face_keep_rate": report["face_survival"], "target": KEEP_TARGET,
               "input_faces": report["input_faces"], "kept_faces": report["surviving_faces"],
               "non_face_psnr_vs_input": report["non_face_psnr_vs_input"],
               "non_face_ssim_vs_input": report["non_face_ssim_vs_input"],
               "parameters": sum(p.numel() for p in generator.parameters()),
               "train_stages": trained}
    write_json_atomic(metrics, args.output / "metrics.json")
    ok = report["face_survival"] >= KEEP_TARGET
    table = "\n".join([
        "## Demo base generator",
        "",
        f"Trained by `{metrics['train_command']}` on {metrics['train_device']} in {metrics['train_seconds']:.0f} s; "
        f"measured by `{command}` (torch {torch.__version__}). Config `configs/generators/demo-kl.yaml`: "
        f"AutoencoderKL, {metrics['parameters'] / 1e6:.2f} M parameters, trained {metrics['train_stages']} (tiles "
        f"with and without faces); measured on the {report['images']} test tiles of `{args.data.name}`. A face is "
        "kept when MTCNN finds it in the input and, again, in the output.",
        "",
        "| faces MTCNN finds in the inputs | still found in the outputs | keep rate (target ≥ 80%) | "
        "non-face PSNR vs input | non-face SSIM vs input |",
        "|---|---|---|---|---|",
        f"| {report['input_faces']} | {report['surviving_faces']} | {report['face_survival']:.1%} | "
        f"{report['non_face_psnr_vs_input']:.2f} dB | {report['non_face_ssim_vs_input']:.3f} |",
    ])
    print("\n" + table)
    if not args.no_doc:
        write_section("demo-base", table)
    if not ok:
        print(f"the base keeps {report['face_survival']:.1%} of faces, below the {KEEP_TARGET:.0%} needed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
