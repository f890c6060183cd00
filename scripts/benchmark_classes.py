"""Class forgetting on Fashion-MNIST, the paper's protocol scaled to a CPU.

Trains (or reuses from --cache-dir) a base of every family's tiny config (configs/generators/
tiny-FAMILY.yaml) on Fashion-MNIST at 32 px, forgets 3 of the 10 classes with ours and the four
baselines, ours again with a proxy retain set, and RETRAIN from scratch on the retain classes
with the base's step budget; then ours at a few smaller step budgets (the steps-vs-quality
curve). Every model is evaluated on held-out test images for centre inpainting and
outpainting: Fréchet distance in the features of a classifier we train on the dataset, that
classifier's accuracy on the outputs, PSNR; wall time per run. The test images are split in
two halves, alternating within each class: "val" for the steps-vs-quality curve the budget is
chosen from, "test" for the tables. Diffusion samples every output (DDIM), so it is measured on
fewer images (--diffusion-eval-per-class). With --seeds, every unlearning method of the tables
runs with several seeds and its row is their mean and spread; --train-steps trains a family's
base and RETRAIN longer where the default budget leaves it short of converged.

    python scripts/benchmark_classes.py --quick   # under 10 minutes on 2 cores
    python scripts/benchmark_classes.py           # the full run (about an hour on 2 cores)

Each finished part (exported data, classifier, models, per-model results) is cached, so a
killed run resumes. Writes docs/benchmarks/classes.json and a section of docs/benchmarks.md.
A run of some families (--families mae) replaces their tables and keeps the others' from the
results file, each family's under the command that made it.
Needs the Debian package dataset-fashion-mnist (or --data-root with the IDX files).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchdoc import write_section  # noqa: E402

from imgunlearn import load_generator, train_generator, unlearn  # noqa: E402
from imgunlearn.builders.fashion_mnist import (CLASSES, export_split_folders, load_fashion_mnist,  # noqa: E402
                                           split_classes, to_float_images)
from imgunlearn.evaluation import batched_outputs  # noqa: E402
from imgunlearn.fileio import write_json_atomic  # noqa: E402
from imgunlearn.generators import FAMILIES, Generator  # noqa: E402
from imgunlearn.metrics import (ClassifierFeatures, classifier_accuracy, frechet_distance,  # noqa: E402
                                load_classifier, psnr, save_classifier, train_classifier)
from imgunlearn.tasks import Task  # noqa: E402
from imgunlearn.unlearning.objectives import noise_images  # noqa: E402
from imgunlearn.vocabulary import TARGETS  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("original", "max_loss", "noisy_label", "retain_label", "random_encoder", "ours", "ours_proxy", "retrain")
TASKS = ("center_inpaint", "outpaint")


def prepare_data(args: argparse.Namespace, cache: Path) -> dict:
    train_images, train_labels = load_fashion_mnist("train", root=args.data_root, as_uint8=True)
    test_images, test_labels = load_fashion_mnist("test", root=args.data_root, as_uint8=True)
    split = split_classes(train_labels.numpy(), test_labels.numpy(), forget_classes=args.forget_classes,
                          proxy_fraction=0.1, seed=0, max_per_class=args.per_class)
    folders = {"forget": cache / "train" / "forget", "retain": cache / "train" / "retain", "proxy": cache / "proxy"}
    for name, indices in (("forget", split.train_forget), ("retain", split.train_retain), ("proxy", split.proxy_retain)):
        if not (folders[name] / ".done").exists():
            print(f"exporting {len(indices)} {name} images", flush=True)
            export_split_folders(train_images, train_labels, indices, folders[name])
            (folders[name] / ".done").write_text("ok\n")
    # The test images in two halves, alternating within each class: "val" chooses settings
    # (the steps-vs-quality curve), "test" is reported. No training step sees either.
    evaluation: dict[str, dict] = {"val": {}, "test": {}}
    for name, indices in (("forget", split.test_forget), ("retain", split.test_retain)):
        labels = test_labels[indices]
        order = torch.cat([torch.nonzero(labels == c).flatten() for c in labels.unique()])
        for half, chosen in (("val", order[0::2]), ("test", order[1::2])):
            chosen = chosen.sort().values.numpy()
            evaluation[half][name] = (to_float_images(test_images[indices[chosen]]), labels[chosen])
    train_idx = np.concatenate([split.train_forget, split.train_retain])
    return {"split": split, "folders": folders, "val": evaluation["val"], "test": evaluation["test"],
            "train_all": cache / "train",
            "classifier_data": (train_images[train_idx], train_labels[train_idx])}


def ensure_classifier(cache: Path, data: dict, epochs: int):
    directory = cache / "classifier"
    if (directory / "config.json").exists():
        return load_classifier(directory)
    images, labels = data["classifier_data"]
    print(f"training the classifier on {len(labels)} images", flush=True)
    classifier = train_classifier(to_float_images(images), labels, num_classes=10, epochs=epochs, seed=0)
    save_classifier(classifier, directory)
    return load_classifier(directory)


def family_key(family: str) -> str:
    """The family and a digest of its tiny config: every cached model and result of a family is
    named with it, so editing configs/generators/tiny-FAMILY.yaml never reuses a stale model."""
    text = (ROOT / "configs" / "generators" / f"tiny-{family}.yaml").read_bytes()
    return f"{family}-{hashlib.sha256(text).hexdigest()[:8]}"


def model_key(args: argparse.Namespace, family: str) -> str:
    """The name every cached model and result of a family's base starts with: its config's
    digest, and its training steps where they are not the default (so a base trained longer
    never reuses another's unlearned models or results)."""
    steps = setting(args.train_steps, family)
    return family_key(family) + (f"-t{steps}" if steps != default_train_steps(args) else "")


def default_train_steps(args: argparse.Namespace) -> int:
    return 200 if args.quick else 3000


def ensure_trained(cache: Path, name: str, family: str, data_dir: Path, steps: int, batch_size: int) -> Generator:
    directory = cache / name
    if (directory / "config.json").exists():
        return load_generator(directory)
    config = yaml.safe_load((ROOT / "configs" / "generators" / f"tiny-{family}.yaml").read_text())
    options = {k: config[k] for k in ("lr", "warmup_steps", "tasks", "mask_area", "family_loss_weight", "seed")}
    print(f"training {name} ({steps} steps on {data_dir})", flush=True)
    model = train_generator(config["generator"], data_dir, max_steps=steps, batch_size=batch_size,
                            output_dir=cache / "runs" / name, **options)
    model.save_pretrained(directory)
    return model


def ensure_unlearned(cache: Path, base: Generator, family: str, method: str, data: dict,
                     args: argparse.Namespace, steps: int | None = None, seed: int = 0) -> Generator:
    steps = steps or steps_for(args, family)
    # The settings are part of the name, so a rerun with other settings never reuses a stale model.
    directory = cache / f"{method}-{model_key(args, family)}-{unlearn_tag(args, family, steps, seed)}"
    if (directory / "config.json").exists():
        return load_generator(directory)
    print(f"unlearning: {method} on tiny-{family}, {steps} steps", flush=True)
    retain = data["folders"]["proxy" if method == "ours_proxy" else "retain"]
    objective = "ours" if method == "ours_proxy" else method
    model = unlearn(base, forget=data["folders"]["forget"], retain=retain, objective=objective,
                    target=setting(args.target, family), alpha=setting(args.alpha, family), task=list(TASKS),
                    max_steps=steps, batch_size=setting(args.unlearn_batch_size, family), lr=setting(args.lr, family),
                    frozen_encoder_stages=setting(args.frozen_stages, family), seed=seed,
                    output_dir=cache / "runs" / directory.name)
    model.save_pretrained(directory)
    return model


def unlearn_tag(args: argparse.Namespace, family: str, steps: int, seed: int = 0) -> str:
    batch = setting(args.unlearn_batch_size, family)
    target, frozen = setting(args.target, family), setting(args.frozen_stages, family)
    return (f"s{steps}-lr{setting(args.lr, family):g}-a{setting(args.alpha, family):g}"
            + (f"-b{batch}" if batch != args.batch_size else "") + (f"-{target}" if target != "noise" else "")
            + (f"-f{frozen}" if frozen else "")
            + (f"-seed{seed}" if seed else ""))


SEEDED_METRICS = ("retain_fd", "retain_acc", "forget_fd", "forget_acc", "retain_psnr", "retain_psnr_vs_original",
                  "seconds")


def over_seeds(records: list[dict]) -> dict:
    """One table row for an unlearning method run with several seeds: the mean of each metric,
    its standard deviation over the seeds (``METRIC_std``) and the seeds' own rows."""
    if len(records) == 1:
        return records[0]
    row = {k: v for k, v in records[0].items() if k != "seed"} | {"seeds": len(records), "per_seed": records}
    for key in SEEDED_METRICS:
        values = np.array([r[key] for r in records], dtype=float)
        row[key], row[f"{key}_std"] = float(values.mean()), float(values.std(ddof=1))
    return row


def per_family(values: list[str], default: Any, kind: type, flag: str) -> dict[str | None, Any]:
    """``VALUE`` / ``FAMILY=VALUE`` arguments as {family: value}, ``None`` for every other family."""
    chosen: dict[str | None, Any] = {None: default}
    for value in values:
        family, _, number = value.rpartition("=")
        try:
            parsed = kind(number)
        except ValueError:
            parsed = None
        if family and family not in FAMILIES or parsed is None or (kind is not str and parsed <= 0):
            raise SystemExit(f"{flag} {value}: expected a {'' if kind is str else 'positive '}VALUE or FAMILY=VALUE, "
                             f"FAMILY in {sorted(FAMILIES)}")
        chosen[family or None] = parsed
    return chosen


def setting(values: dict[str | None, Any], family: str) -> Any:
    return values.get(family, values[None])


def steps_for(args: argparse.Namespace, family: str) -> int:
    return setting(args.unlearn_steps, family)


def outputs_of(model: Generator, images: torch.Tensor, task: Task) -> torch.Tensor:
    return batched_outputs(model, task(images, model), batch_size=500)


def per_class(images: torch.Tensor, labels: torch.Tensor, count: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``count`` test images of every class (all of them for None)."""
    if count is None:
        return images, labels
    keep = torch.cat([torch.nonzero(labels == c).flatten()[:count] for c in labels.unique()]).sort().values
    return images[keep], labels[keep]


def family_sets(data: dict, family: str, half: str, args: argparse.Namespace) -> dict:
    """The forget and retain images of ``half`` (val or test) a family is measured on: all of
    them, or for diffusion, whose every output costs a full DDIM run,
    ``--diffusion-eval-per-class`` per class."""
    sets = data[half]
    if family != "diffusion":
        return sets
    return {name: per_class(*pair, args.diffusion_eval_per_class) for name, pair in sets.items()}


def measure(model: Generator, original_retain_outputs: torch.Tensor, task_name: str, sets: dict,
            classifier) -> dict:
    task, features = Task(task_name), ClassifierFeatures(classifier)
    record = {}
    for name in ("retain", "forget"):
        images, labels = sets[name]
        out = outputs_of(model, images, task)
        record[f"{name}_fd"] = frechet_distance(images, out, features)
        record[f"{name}_acc"] = classifier_accuracy(out, labels, classifier)
        record[f"{name}_psnr"] = psnr(out, images)
        if name == "retain":
            record["retain_psnr_vs_original"] = psnr(out, original_retain_outputs)
    return record


def noise_target_images(images: torch.Tensor) -> torch.Tensor:
    """One seeded noise image per image, with the statistics of unlearning batches (32 images)."""
    generator = torch.Generator().manual_seed(0)
    return torch.cat([noise_images(chunk, generator) for chunk in images.split(32)])


def noise_target(base: Generator, task_name: str, sets: dict, classifier) -> dict:
    """What perfect forgetting looks like: the original's outputs for the noise target itself.

    The classifier's accuracy on these (scored against the forget labels) is the floor ours can
    reach; it need not be 10%, since decoded noise may look like one class more than another.
    """
    images, labels = sets["forget"]
    out = outputs_of(base, noise_target_images(images), Task(task_name))
    return {"forget_fd": frechet_distance(images, out, ClassifierFeatures(classifier)),
            "forget_acc": classifier_accuracy(out, labels, classifier)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="subsampled data and small budgets (< 10 minutes)")
    parser.add_argument("--families", nargs="+", default=sorted(FAMILIES), choices=sorted(FAMILIES))
    parser.add_argument("--curve-steps", type=int, nargs="*",
                        help="also unlearn (ours) with these step budgets: the steps-vs-quality curve the "
                             "default budget is chosen from (default 50 100 200; quick: none)")
    parser.add_argument("--curve-only", action="store_true",
                        help="train the bases and RETRAIN and measure the steps-vs-quality curve on the val "
                             "half only (to choose --unlearn-steps); no tables, docs left alone")
    parser.add_argument("--diffusion-eval-per-class", type=int, default=30,
                        help="test images per class for the diffusion family, whose every output is a "
                             "DDIM run (default 30)")
    parser.add_argument("--forget-classes", type=int, nargs="+", default=[5, 7, 9],
                        help="classes to forget (default: the footwear, Sandal, Sneaker, Ankle boot)")
    parser.add_argument("--train-steps", nargs="+", metavar="[FAMILY=]N",
                        help="base and RETRAIN steps, as --lr (default 3000, quick 200)")
    parser.add_argument("--unlearn-steps", nargs="+", metavar="[FAMILY=]N",
                        help="unlearning steps of every method: N for every family, FAMILY=N for one (e.g. 400 "
                             "mae=100; default 400, quick 60)")
    parser.add_argument("--per-class", type=int, help="images per class, train and test (default all, quick 100)")
    parser.add_argument("--classifier-epochs", type=int, help="default 4, quick 3")
    parser.add_argument("--seeds", nargs="+", metavar="[FAMILY=]N",
                        help="run every unlearning method of the tables with seeds 0..N-1 and report the mean "
                             "and the spread, as --lr (default 1); a baseline beats ours on the retain side "
                             "only by more than the spread")
    parser.add_argument("--batch-size", type=int, default=32, help="base training, and unlearning unless set below")
    parser.add_argument("--unlearn-batch-size", nargs="+", metavar="[FAMILY=]N",
                        help="forget and retain images per unlearning step, as --lr (default: --batch-size)")
    parser.add_argument("--lr", nargs="+", metavar="[FAMILY=]LR",
                        help="unlearning learning rate of every method: LR for every family, FAMILY=LR for one "
                             "(default 0.01)")
    parser.add_argument("--alpha", nargs="+", metavar="[FAMILY=]ALPHA",
                        help="forget-loss weight, as --lr (default 0.2, the paper's for VQ-GAN)")
    parser.add_argument("--target", nargs="+", metavar="[FAMILY=]TARGET",
                        help="what ours maps the forget images to (noise or blank), as --lr (default noise)")
    parser.add_argument("--frozen-stages", nargs="+", metavar="[FAMILY=]N",
                        help="encoder stages, from the input, that keep the original's weights in every "
                             "unlearning method (unlearn's frozen_encoder_stages), as --lr (default 0)")
    parser.add_argument("--data-root", help="Fashion-MNIST IDX folder or torchvision root (default: Debian's)")
    parser.add_argument("--cache-dir", type=Path)
    parser.add_argument("--json", type=Path, help="results file (default docs/benchmarks/classes.json; "
                        "a --quick run writes into its cache dir and leaves the docs alone)")
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args(argv)
    args.train_steps = per_family(args.train_steps or [], default_train_steps(args), int, "--train-steps")
    args.unlearn_steps = per_family(args.unlearn_steps or [], 60 if args.quick else 400, int, "--unlearn-steps")
    args.lr = per_family(args.lr or [], 1e-2, float, "--lr")
    args.alpha = per_family(args.alpha or [], 0.2, float, "--alpha")
    args.target = per_family(args.target or [], "noise", str, "--target")
    if bad := sorted({t for t in args.target.values() if t not in TARGETS}):
        parser.error(f"--target: unknown target(s) {bad}; choose from {list(TARGETS)}")
    args.seeds = per_family(args.seeds or [], 1, int, "--seeds")
    args.frozen_stages = per_family(args.frozen_stages or [], 0, int, "--frozen-stages")
    args.unlearn_batch_size = per_family(args.unlearn_batch_size or [], args.batch_size, int, "--unlearn-batch-size")
    args.per_class = args.per_class or (100 if args.quick else None)
    args.classifier_epochs = args.classifier_epochs or (3 if args.quick else 4)
    if args.curve_steps is None:
        args.curve_steps = [] if args.quick else [50, 100, 200]
    tag = f"{'quick' if args.quick else 'full'}-{args.per_class or 'all'}-{'_'.join(map(str, args.forget_classes))}"
    cache = args.cache_dir or ROOT / ".bench_cache" / f"classes-{tag}"
    if args.quick or args.curve_only:
        args.no_doc = True  # the committed figures are a full run's tables; these only print
    args.json = args.json or (cache / "classes-quick.json" if args.quick else
                              cache / "classes-curve.json" if args.curve_only else
                              ROOT / "docs" / "benchmarks" / "classes.json")
    command = shlex.join(["python", "scripts/benchmark_classes.py", *(argv if argv is not None else sys.argv[1:])])
    torch.manual_seed(0)

    data = prepare_data(args, cache)
    classifier = ensure_classifier(cache, data, args.classifier_epochs)
    clean_acc = {name: classifier_accuracy(images, labels, classifier) for name, (images, labels) in data["test"].items()}
    references: list[dict] = []
    print(f"classifier accuracy on clean test images: {clean_acc}", flush=True)
    results, curve = [], []
    for family in args.families:
        key, train_steps = model_key(args, family), setting(args.train_steps, family)
        base = ensure_trained(cache, f"base-{key}", family, data["train_all"], train_steps, args.batch_size)
        models = {"original": base}
        for method in () if args.curve_only else METHODS[1:-1]:
            models[method] = [ensure_unlearned(cache, base, family, method, data, args, seed=seed)
                              for seed in range(setting(args.seeds, family))]
        models["retrain"] = ensure_trained(cache, f"retrain-{key}", family, data["folders"]["retain"],
                                           train_steps, args.batch_size)
        sets = {half: family_sets(data, family, half, args) for half in ("val", "test")}
        for task in TASKS:
            for half in ("val", "test"):
                path = cache / "results" / f"{key}-noise_target-{task}-{half}.json"
                if not path.exists():
                    write_json_atomic({"generator": f"tiny-{family}", "task": task, "split": half,
                                       **noise_target(base, task, sets[half], classifier)}, path)
                references.append(json.loads(path.read_text()))
        original_outputs: dict[tuple[str, str], torch.Tensor] = {}  # the original's retain outputs, computed once

        def record_of(model: Generator, method: str, task: str, name: str, half: str, **extra) -> dict:
            path = cache / "results" / f"{key}-{name}-{task}-{half}.json"
            if path.exists():
                return json.loads(path.read_text())
            if (task, half) not in original_outputs:
                original_outputs[task, half] = outputs_of(base, sets[half]["retain"][0], Task(task))
            record = {"generator": f"tiny-{family}", "task": task, "method": method, "split": half, **extra,
                      **measure(model, original_outputs[task, half], task, sets[half], classifier),
                      "seconds": round(model.card["history"][-1]["seconds"], 1)}
            write_json_atomic(record, path)
            return record

        for method, model in () if args.curve_only else models.items():
            if method in ("original", "retrain"):
                for task in TASKS:
                    results.append(record_of(model, method, task, method, "test"))
                    print(json.dumps(results[-1]), flush=True)
                continue
            steps = steps_for(args, family)
            for task in TASKS:
                results.append(over_seeds([
                    record_of(seeded, method, task, f"{method}-{unlearn_tag(args, family, steps, seed)}", "test",
                              unlearn_steps=steps, seed=seed)
                    for seed, seeded in enumerate(model)]))
                print(json.dumps({k: v for k, v in results[-1].items() if k != "per_seed"}), flush=True)
        # The steps-vs-quality curve the default budget is chosen from, on the val half.
        for steps in sorted({*args.curve_steps, steps_for(args, family)}) if args.curve_steps else ():
            model = ensure_unlearned(cache, base, family, "ours", data, args, steps)
            for task in TASKS:
                curve.append(record_of(model, "ours", task, f"ours-{unlearn_tag(args, family, steps)}", "val", steps=steps))
                print(json.dumps(curve[-1]), flush=True)
        for task in TASKS if args.curve_steps else ():
            curve.append(record_of(models["original"], "original", task, "original", "val"))
            curve.append(record_of(models["retrain"], "retrain", task, "retrain", "val"))

    meta = {"forget_classes": [CLASSES[c] for c in args.forget_classes],
            "runs": [{"families": list(args.families), "command": command, "classifier_clean_accuracy": clean_acc}],
            "train_steps": {family: setting(args.train_steps, family) for family in args.families},
            "seeds": {family: setting(args.seeds, family) for family in args.families}, "batch_size": args.batch_size,
            "unlearn_steps": {family: steps_for(args, family) for family in args.families}, "per_class": args.per_class,
            "lr": {family: setting(args.lr, family) for family in args.families},
            "alpha": {family: setting(args.alpha, family) for family in args.families},
            "target": {family: setting(args.target, family) for family in args.families},
            "unlearn_batch_size": {family: setting(args.unlearn_batch_size, family) for family in args.families},
            "frozen_stages": {family: setting(args.frozen_stages, family) for family in args.families},
            "classifier": "SmallClassifier trained here (imgunlearn.metrics), features for FD",
            "noise_target": references, "diffusion_eval_per_class": args.diffusion_eval_per_class}
    payload = {"quick": args.quick, **meta, "results": results, "curve": curve}
    if not (args.quick or args.curve_only):
        payload = merge_previous(payload, args.json)
    write_json_atomic(payload, args.json)
    table = render(payload["results"], payload, payload["curve"])
    print("\n" + table)
    if not args.no_doc:
        write_section("classes", table)


PER_FAMILY_META = ("train_steps", "seeds", "unlearn_steps", "lr", "alpha", "target", "unlearn_batch_size",
                   "frozen_stages")


def family_of(row: dict) -> str:
    return row["generator"].removeprefix("tiny-")


def merge_previous(payload: dict, path: Path) -> dict:
    """This run's results plus, from the results file at ``path`` it replaces, those of the
    families it did not run (with the settings, command and classifier they were made with):
    rerunning one family leaves the others' tables as they were."""
    if not path.exists():
        return payload
    previous = json.loads(path.read_text())
    ran = set(payload["runs"][0]["families"])
    kept = sorted({family_of(r) for r in previous["results"]} - ran)
    if not kept:
        return payload
    protocol = ("forget_classes", "per_class", "batch_size")
    if any(previous.get(key) != payload.get(key) for key in protocol):
        print(f"{path}: the tables of {', '.join(kept)} were made with other {', '.join(protocol)}; not kept",
              flush=True)
        return payload
    earlier_runs = previous.get("runs") or [{  # results files from before runs were recorded
        "families": sorted({family_of(r) for r in previous["results"]}), "command": previous["command"],
        "classifier_clean_accuracy": previous["classifier_clean_accuracy"]}]
    merged = {**payload, "runs": [{**run, "families": [f for f in run["families"] if f in kept]}
                                  for run in earlier_runs if set(run["families"]) & set(kept)] + payload["runs"]}
    for key in ("results", "curve", "noise_target"):
        merged[key] = [r for r in previous.get(key, []) if family_of(r) in kept] + payload[key]
    for key in PER_FAMILY_META:
        merged[key] = {**{f: v for f, v in previous.get(key, {}).items() if f in kept}, **payload[key]}
    return merged


def command_line(run: dict, name_families: bool) -> str:
    """What one command made: the tables of its families, with its own classifier."""
    families = f" (tiny-{', tiny-'.join(run['families'])})" if name_families else ""
    accuracy = run["classifier_clean_accuracy"]
    return (f"Command{families}: `{run['command']}` (2-core CPU, torch {torch.__version__}); its classifier's "
            f"accuracy on clean test images: forget {accuracy['forget']:.1%}, retain {accuracy['retain']:.1%}.")


def render(results: list[dict], meta: dict, curve: list[dict] = ()) -> str:
    seeded = {family: n for family, n in meta.get("seeds", {}).items() if n > 1}
    lines = [
        "## Classes: forget 3 Fashion-MNIST classes",
        "",
        *(part for run in meta["runs"] for part in (command_line(run, len(meta["runs"]) > 1), "")),
        f"Forget classes: {', '.join(meta['forget_classes'])}; base and RETRAIN "
        + ", ".join(f"{family} {steps}" for family, steps in meta["train_steps"].items()) + " steps of "
        f"{meta.get('batch_size', 32)} images; "
        "unlearning (every method; steps and lr chosen per family on the val half): "
        + "; ".join(f"{family} {steps} steps of {meta['unlearn_batch_size'][family]} + "
                    f"{meta['unlearn_batch_size'][family]} images, lr {meta['lr'][family]:g}, "
                    f"alpha {meta['alpha'][family]:g}, target {meta.get('target', {}).get(family, 'noise')}"
                    + frozen_note(meta.get("frozen_stages", {}).get(family, 0))
                    for family, steps in meta["unlearn_steps"].items())
        + "; one unlearned model "
        "per method serving both tasks; images per class: "
        f"{meta['per_class'] or 'all'} (test images for the diffusion family: "
        f"{meta['diffusion_eval_per_class']} per class, {meta['diffusion_eval_per_class'] * 10} in all). FD is measured in the features of {meta['classifier']}; accuracy is that "
        "classifier's on the outputs (chance 10%; each command trains its own, so compare rows within a table). "
        "PSNR is against the ground truth. "
        "Fashion-MNIST's test images are split into two halves, alternating within each class: the tables below "
        "are the test half; the val half chose the unlearning steps (the curve under each table). "
        "Seconds: training time for original and retrain, unlearning time for the rest."
        + (" Seeds: every unlearning method of "
           + ", ".join(f"{family} ran with {n} seeds" for family, n in seeded.items())
           + "; its row is their mean ± the standard deviation over the seeds, and a baseline counts as better "
           "than ours on the retain side only by more than the larger of the two deviations." if seeded else ""),
    ]
    for generator in sorted({r["generator"] for r in [*results, *curve]}):
        for task in TASKS:
            rows = [r for r in results if r["generator"] == generator and r["task"] == task]
            lines += ["", f"### {generator}, {task}"]
            if rows:
                lines += ["", "| method | retain FD | retain acc | forget FD | forget acc | retain PSNR | seconds |",
                          "|---|---|---|---|---|---|---|"]
            for r in sorted(rows, key=lambda r: METHODS.index(r["method"])):
                cells = [cell(r, "retain_fd", ".3f"), cell(r, "retain_acc", ".1%"), cell(r, "forget_fd", ".3f"),
                         cell(r, "forget_acc", ".1%"), cell(r, "retain_psnr", ".2f"), f"{r['seconds']:.0f}"]
                lines.append(f"| {r['method']} | {' | '.join(cells)} |")
            noise = next((ref for ref in meta["noise_target"] if ref["generator"] == generator
                          and ref["task"] == task and ref.get("split", "test") == "test"), None)
            if rows and noise is not None:
                lines.append(f"| *(noise target: the original's output for noise)* | | | {noise['forget_fd']:.3f} | "
                             f"{noise['forget_acc']:.1%} | | |")
            by_method = {r["method"]: r for r in rows}
            val = [r for r in curve if r["generator"] == generator and r["task"] == task]
            retrain = by_method.get("retrain") or next((r for r in val if r["method"] == "retrain"), None)
            if "ours" in by_method and "retrain" in by_method:
                lines += ["", f"Unlearning (ours) took {by_method['ours']['seconds'] / by_method['retrain']['seconds']:.1%} "
                          "of RETRAIN's wall time."]
                if "original" in by_method and noise is not None:
                    lines += ["", target_check(by_method, noise)]
            points = sorted((r for r in val if "steps" in r), key=lambda r: r["steps"])
            if points and retrain is not None:
                retrain_seconds = retrain["seconds"]
                lines += ["", "Steps vs quality of ours on the val half (the budget is chosen here, the table above is "
                          "the test half):", "",
                          "| model | seconds | share of RETRAIN | retain FD | retain acc | forget FD | forget acc |",
                          "|---|---|---|---|---|---|---|"]
                others = [r for r in val if "steps" not in r]
                for r in [*others, *points]:
                    label = f"ours, {r['steps']} steps" if "steps" in r else r["method"]
                    share = f"{r['seconds'] / retrain_seconds:.1%}" if "steps" in r else "—"  # training, for the others
                    lines.append(f"| {label} | {r['seconds']:.0f} | {share} | "
                                 f"{r['retain_fd']:.3f} | {r['retain_acc']:.1%} | {r['forget_fd']:.3f} | "
                                 f"{r['forget_acc']:.1%} |")
                for ref in meta["noise_target"]:
                    if ref["generator"] == generator and ref["task"] == task and ref.get("split") == "val":
                        lines.append(f"| *(noise target)* | | | | | {ref['forget_fd']:.3f} | {ref['forget_acc']:.1%} |")
    return "\n".join(lines)


def frozen_note(stages: int) -> str:
    return f", the first {stages} encoder stages frozen" if stages else ""


def cell(row: dict, key: str, spec: str) -> str:
    """A table cell: the value, and its spread over seeds where the row has one."""
    spread = row.get(f"{key}_std")
    return f"{row[key]:{spec}}" + (f" ± {spread:{spec}}" if spread is not None else "")


def target_check(by_method: dict[str, dict], noise: dict) -> str:
    """One line per table: ours against the targets of the class benchmark (docs/benchmarks.md)."""
    ours, original = by_method["ours"], by_method["original"]
    acc_drop = (original["retain_acc"] - ours["retain_acc"]) * 100
    fd_rise = ours["retain_fd"] / original["retain_fd"] - 1
    forget_gap = (ours["forget_acc"] - noise["forget_acc"]) * 100
    cost = ours["seconds"] / by_method["retrain"]["seconds"]
    baselines = [m for m in METHODS if m not in ("original", "ours", "ours_proxy", "retrain") and m in by_method]
    beaten, ties = [], []  # baselines better than ours on the retain side, and by how much
    for m in baselines:
        other = by_method[m]
        margins, within = [], []
        # (label, the baseline's lead over ours, the seeds' spread, format, unit); with several
        # seeds, a lead inside the spread is no evidence either way.
        for label, lead, noise_level, form, unit in (
                ("FD -", ours["retain_fd"] - other["retain_fd"], spread(ours, other, "retain_fd"), ".3f", ""),
                ("acc +", (other["retain_acc"] - ours["retain_acc"]) * 100,
                 spread(ours, other, "retain_acc") * 100, ".2f", " points")):
            if lead > noise_level:
                margins.append(f"{label}{lead:{form}}{unit}")
            elif lead > 0:
                within.append(f"{label}{lead:{form}} ≤ {noise_level:{form}}{unit}")
        if margins:
            beaten.append(f"{m} ({', '.join(margins)})")
        if within:
            ties.append(f"{m} ({', '.join(within)})")
    checks = [
        (f"retain acc {-acc_drop:+.1f} points", acc_drop <= 2),
        (f"retain FD {fd_rise:+.1%}", fd_rise <= 0.10),
        (f"forget acc {forget_gap:+.1f} points from the noise target's", forget_gap <= 5),
        (f"cost {cost:.1%} of RETRAIN", cost <= 0.05),
        (("no baseline better on the retain side" if not beaten else
          f"better on the retain side: {'; '.join(beaten)}")
         + (f" (within the seed spread: {'; '.join(ties)})" if ties else ""), not beaten),
    ]
    return ("Targets (within 2 points, 10%, 5 points, 5%; retain side at least every baseline's): "
            + "; ".join(f"{text} {'✓' if ok else '✗'}" for text, ok in checks) + ".")


def spread(ours: dict, other: dict, key: str) -> float:
    """The larger of two rows' standard deviations over seeds (0 for single runs)."""
    return max(ours.get(f"{key}_std", 0.0), other.get(f"{key}_std", 0.0))


if __name__ == "__main__":
    main()
