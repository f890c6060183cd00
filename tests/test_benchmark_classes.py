"""The targets line under each table of scripts/benchmark_classes.py (issue 13's targets)."""

from __future__ import annotations

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
