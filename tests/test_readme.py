"""The README's examples run as written (in a scratch copy of the project's configs)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from imgunlearn.demo import DEMO_UNLEARN

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def _run(command: list[str], cwd: Path, env: dict[str, str]) -> None:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


def test_first_lines_give_the_two_fresh_machine_commands():
    first, tests = _blocks("bash")[:2]
    assert "pip install torch==2.14.1 torchvision==0.29.1" in first and "pip install -e ." in first
    assert "pip install -e '.[test]'" in tests and "pytest" in tests
    ci = (ROOT / ".ci" / "run").read_text()
    assert "<!-- tests -->" in ci and "<!-- tests -->" in README


def test_cli_and_python_examples_run_as_written(tmp_path):
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    venv_bin = tmp_path / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    # The examples call .venv/bin/...: point that at the interpreter running the tests.
    for name, target in [("python", sys.executable), ("imgunlearn", Path(sys.executable).parent / "imgunlearn")]:
        wrapper = venv_bin / name
        wrapper.write_text(f'#!/bin/sh\nexec "{target}" "$@"\n')
        wrapper.chmod(0o755)
    cli = _blocks("bash")[2]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    _run(["bash", "-euo", "pipefail", "-c", cli], tmp_path, env)
    assert len(list((tmp_path / "runs" / "out").glob("*.png"))) == 64
    python = _blocks("python")[0]
    _run([sys.executable, "-c", python], tmp_path, env)
    assert (tmp_path / "runs" / "unlearned-py" / "config.json").is_file()


def test_faces_block_runs_as_written_on_photos_it_makes(tmp_path):
    """The "Faces in survey photos" block, every command as written, on scikit-image's and
    matplotlib's sample photos, with one change: unlearning takes 10 steps, not the demo's
    (scripts/check_readme_faces.py runs the full budget and measures the outcome)."""
    from conftest import load_script

    check = load_script("check_readme_faces")
    check.make_photos(tmp_path / "photos")
    (tmp_path / "assets").mkdir()
    shutil.copytree(ROOT / "assets" / "demo_base", tmp_path / "assets" / "demo_base")
    venv_bin = tmp_path / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    wrapper = venv_bin / "imgunlearn"
    wrapper.write_text(f'#!/bin/sh\nexec "{Path(sys.executable).parent / "imgunlearn"}" "$@"\n')
    wrapper.chmod(0o755)
    block = README[README.index("## Faces in survey photos"):]
    block = re.findall(r"```bash\n(.*?)```", block, flags=re.S)[0]
    # The block unlearns with the demo's settings.
    demo = DEMO_UNLEARN
    for flag in (f"--alpha {demo['alpha']:g}", f"--frozen-encoder-stages {demo['frozen_encoder_stages']}",
                 f"--batch-size {demo['batch_size']}", f"--lr {demo['lr']:g}", f"--augment {demo['augment']}",
                 f"--map-dilation {demo['map_dilation']}",
                 "--trainer.precision bf16-mixed"):  # the demo's where the CPU runs bfloat16 natively
        assert flag in block, flag
    steps = f"--max-steps {demo['max_steps']}"
    assert block.count(steps) == 1
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2"}
    _run(["bash", "-euo", "pipefail", "-c", block.replace(steps, "--max-steps 10")], tmp_path, env)
    assert (tmp_path / "runs" / "faces.jsonl").read_text().count("\n") == 3  # one line per photo
    assert (tmp_path / "runs" / "survey" / "manifest.jsonl").is_file()
    assert (tmp_path / "runs" / "no-faces" / "config.json").is_file()
    clean = tmp_path / "runs" / "clean"
    assert sorted(p.name for p in clean.iterdir() if p.suffix in (".png", ".jpg") and ".forget-map" not in p.name) == [
        "astronaut.png", "coffee.png", "grace_hopper.jpg"]
    assert len(list(clean.glob("*.forget-map.png"))) == 3 and (clean / "audit.jsonl").is_file()
