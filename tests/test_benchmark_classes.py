"""The targets line under each table of scripts/benchmark_classes.py (issue 13's targets)."""

from __future__ import annotations

import argparse

import pytest
from conftest import load_script


def row(retain_acc: float, retain_fd: float, forget_acc: float = 0.9, seconds: float = 100.0) -> dict:
    return {"retain_acc": retain_acc, "retain_fd": retain_fd, "forget_acc": forget_acc, "seconds": seconds}


def test_target_line_marks_each_target_met_or_missed_with_its_margin():
    bench = load_script("benchmark_classes")
    noise = {"forget_acc": 0.02}
    table = {"original": row(0.80, 1.00), "retrain": row(0.80, 0.95, seconds=1000.0),
             "random_encoder": row(0.785, 1.10), "max_loss": row(0.10, 30.0),
             "ours": row(0.79, 1.08, forget_acc=0.05, seconds=40.0)}
    line = bench.target_check(table, noise)
    assert "retain acc -1.0 points ✓" in line and "retain FD +8.0% ✓" in line
    assert "forget acc +3.0 points from the noise target's ✓" in line and "cost 4.0% of RETRAIN ✓" in line
    assert "no baseline better on the retain side ✓" in line and "✗" not in line

    failing = {**table, "ours": row(0.77, 1.11, forget_acc=0.08, seconds=60.0), "random_encoder": row(0.78, 1.05)}
    line = bench.target_check(failing, noise)
    assert "retain acc -3.0 points ✗" in line and "retain FD +11.0% ✗" in line
    assert "+6.0 points from the noise target's ✗" in line and "cost 6.0% of RETRAIN ✗" in line
    assert "better on the retain side: random_encoder (FD -0.060, acc +1.00 points) ✗" in line


def test_with_several_seeds_a_margin_inside_the_spread_is_not_a_win():
    bench = load_script("benchmark_classes")
    runs = [{"method": "ours", "retain_acc": acc, "retain_fd": fd, "forget_acc": 0.03, "forget_fd": 9.0,
             "retain_psnr": 20.0, "retain_psnr_vs_original": 30.0, "seconds": 40.0, "seed": seed}
            for seed, (acc, fd) in enumerate([(0.79, 1.00), (0.80, 1.04), (0.78, 1.08)])]
    ours = bench.over_seeds(runs)
    assert ours["retain_fd"] == 1.04 and abs(ours["retain_fd_std"] - 0.04) < 1e-9 and ours["seeds"] == 3
    assert bench.cell(ours, "retain_fd", ".3f") == "1.040 ± 0.040" and bench.cell(runs[0], "retain_fd", ".3f") == "1.000"
    table = {"original": row(0.80, 1.00), "retrain": row(0.80, 0.95, seconds=1000.0), "ours": ours,
             "random_encoder": {**row(0.795, 1.01), "retain_fd_std": 0.02, "retain_acc_std": 0.01}}
    line = bench.target_check(table, {"forget_acc": 0.02})
    assert ("no baseline better on the retain side (within the seed spread: random_encoder "
            "(FD -0.030 ≤ 0.040, acc +0.50 ≤ 1.00 points)) ✓") in line
    table["random_encoder"] = {**row(0.82, 0.90), "retain_fd_std": 0.02, "retain_acc_std": 0.005}
    assert "better on the retain side: random_encoder (FD -0.140, acc +3.00 points) ✗" in bench.target_check(
        table, {"forget_acc": 0.02})


def test_a_base_trained_longer_gets_its_own_cache_names():
    bench = load_script("benchmark_classes")
    args = argparse.Namespace(quick=False)
    args.train_steps = bench.per_family(["mae=12000"], 3000, int, "--train-steps")
    plain = bench.family_key("kl")
    assert bench.model_key(args, "kl") == plain
    assert bench.model_key(args, "mae") == bench.family_key("mae") + "-t12000"
    args.train_steps = bench.per_family(["5000"], 3000, int, "--train-steps")
    assert bench.model_key(args, "kl") == plain + "-t5000"


def test_a_target_and_frozen_stages_are_chosen_per_family_and_named_in_the_unlearned_models_cache():
    bench = load_script("benchmark_classes")
    args = argparse.Namespace(batch_size=32)
    args.lr, args.alpha = bench.per_family([], 0.01, float, "--lr"), bench.per_family([], 0.2, float, "--alpha")
    args.unlearn_batch_size = bench.per_family([], 32, int, "--unlearn-batch-size")
    args.target = bench.per_family(["mae=blank"], "noise", str, "--target")
    args.frozen_stages = bench.per_family(["mae=2"], 0, int, "--frozen-stages")
    assert bench.unlearn_tag(args, "kl", 100) == "s100-lr0.01-a0.2"  # the names cached before the options
    assert bench.unlearn_tag(args, "mae", 100, seed=1) == "s100-lr0.01-a0.2-blank-f2-seed1"
    with pytest.raises(SystemExit, match="--target nope=blank"):
        bench.per_family(["nope=blank"], "noise", str, "--target")


def test_rerunning_one_family_keeps_the_others_tables_under_their_own_command(tmp_path):
    import json

    bench = load_script("benchmark_classes")

    def rows(family: str, acc: float) -> list[dict]:
        return [{"generator": f"tiny-{family}", "task": task, "method": method, "split": "test", "forget_fd": 9.0,
                 "retain_psnr": 20.0, **row(acc, 1.0, seconds=1000.0 if method in ("original", "retrain") else 40.0)}
                for task in bench.TASKS for method in ("original", "ours", "retrain")]

    def noise(family: str) -> list[dict]:
        return [{"generator": f"tiny-{family}", "task": task, "split": "test", "forget_fd": 9.0, "forget_acc": 0.01}
                for task in bench.TASKS]

    per_family = {key: {"kl": 3, "mae": 3} for key in bench.PER_FAMILY_META}
    previous = {"command": "python scripts/benchmark_classes.py --seeds kl=3", "quick": False,
                "classifier_clean_accuracy": {"forget": 0.95, "retain": 0.827}, "forget_classes": ["Sandal"],
                "batch_size": 32, "per_class": None, "classifier": "SmallClassifier", **per_family,
                "diffusion_eval_per_class": 30, "noise_target": noise("kl") + noise("mae"),
                "results": rows("kl", 0.8) + rows("mae", 0.7), "curve": []}
    path = tmp_path / "classes.json"
    path.write_text(json.dumps(previous))
    command = "python scripts/benchmark_classes.py --families mae"
    payload = {**previous, "runs": [{"families": ["mae"], "command": command,
                                     "classifier_clean_accuracy": {"forget": 0.951, "retain": 0.823}}],
               **{key: {"mae": 5} for key in bench.PER_FAMILY_META}, "noise_target": noise("mae"),
               "results": rows("mae", 0.75), "curve": []}
    del payload["command"], payload["classifier_clean_accuracy"]
    merged = bench.merge_previous(payload, path)

    assert [r["retain_acc"] for r in merged["results"] if r["generator"] == "tiny-kl"] == [0.8] * 6
    assert [r["retain_acc"] for r in merged["results"] if r["generator"] == "tiny-mae"] == [0.75] * 6
    assert len(merged["noise_target"]) == 4 and merged["lr"] == {"kl": 3, "mae": 5}
    assert [run["families"] for run in merged["runs"]] == [["kl"], ["mae"]]
    text = bench.render(merged["results"], merged, merged["curve"])
    assert "Command (tiny-kl): `python scripts/benchmark_classes.py --seeds kl=3`" in text
    assert f"Command (tiny-mae): `{command}`" in text and "retain 82.3%" in text
    assert text.count("### tiny-kl") == 2 and text.count("### tiny-mae") == 2
    # The next rerun of mae keeps kl under its first command, and a run of every family keeps nothing.
    path.write_text(json.dumps(merged))
    assert [run["command"] for run in bench.merge_previous(payload, path)["runs"]] == [previous["command"], command]
    everything = {**payload, "runs": [{**payload["runs"][0], "families": ["kl", "mae"]}]}
    assert bench.merge_previous(everything, path) == everything
    other_classes = {**payload, "forget_classes": ["Bag"]}  # tables of another protocol are not mixed in
    assert bench.merge_previous(other_classes, path) == other_classes
