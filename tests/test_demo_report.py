"""The demo report's pieces that need no model: loss curves from Lightning's CSV logs."""

from __future__ import annotations

from pathlib import Path

from imgunlearn.demo import _loss_curves


def _log(folder: Path, version: int, steps: range) -> None:
    path = folder / f"version_{version}" / "metrics.csv"
    path.parent.mkdir(parents=True)
    lines = ["step,retain_loss,forget_loss"] + [f"{step},{1.0 / (step + 1)},{2.0}" for step in steps]
    path.write_text("\n".join(lines) + "\n")


def test_a_resumed_run_continues_the_curve(tmp_path):
    _log(tmp_path, 0, range(9, 100, 10))
    _log(tmp_path, 1, range(109, 300, 10))  # resumed at step 100
    steps = [step for step, _ in _loss_curves(tmp_path)["retain_loss"]]
    assert steps == list(range(9, 300, 10))


def test_a_second_run_into_the_same_folder_replaces_the_curve(tmp_path):
    """Running the demo twice into one folder joined both runs into one line that ran from
    step 299 back to step 9; the report shows the latest run."""
    _log(tmp_path, 0, range(9, 300, 10))
    _log(tmp_path, 1, range(9, 300, 10))
    _log(tmp_path, 2, range(9, 50, 10))  # a third run, killed early
    curves = _loss_curves(tmp_path)
    assert [step for step, _ in curves["forget_loss"]] == list(range(9, 50, 10))
    assert sorted(curves) == ["forget_loss", "retain_loss"]
