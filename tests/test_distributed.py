"""Several processes through Lightning: `preprocess`, `train` and `unlearn` with 2 CPU processes
(gloo), run as a user runs them (the console script, `--trainer.devices 2 --trainer.strategy ddp`).

Lightning's DDP launcher starts the second process by running the same command again, so these
tests run the CLI in subprocesses; each costs a few seconds of start-up per process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imgunlearn import load_generator
from imgunlearn.data import list_image_files, load_image_tensor
from imgunlearn.fileio import TMP_SUFFIX
from imgunlearn.pipelines.survey import AUDIT_FILENAME, SHARD_PATTERN, merge_audit_shards
from imgunlearn.unlearning.objectives import masked_mse, noise_images, reconstruction_loss

from conftest import tiny_generator

SCRIPT = Path(sys.executable).parent / "imgunlearn"
TWO_PROCESSES = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]


def run_cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes on a 2-core machine
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env=env)


def write_survey(folder: Path, count: int, size: int, bad: bool = True) -> Path:
    """``count`` smooth random photos (PNG and JPEG, in two folders), and a broken JPEG."""
    rng = np.random.default_rng(0)
    for index in range(count):
        coarse = rng.integers(0, 256, (size // 8, size // 8 + 2, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((size + 16, size), Image.BICUBIC)
        sub = folder / ("north" if index % 2 else "south")
        sub.mkdir(parents=True, exist_ok=True)
        image.save(sub / f"p{index:03d}.{'png' if index % 3 else 'jpg'}", quality=90)
    if bad:
        (folder / "south" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return folder


def audit_records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / AUDIT_FILENAME).read_text().splitlines() if line.strip()]


def outputs(folder: Path) -> dict[str, np.ndarray]:
    return {p.relative_to(folder).as_posix(): np.asarray(Image.open(p))
            for p in sorted(folder.rglob("*")) if p.suffix in (".png", ".jpg")}


@pytest.fixture(scope="module")
def generator_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("generator")
    tiny_generator("kl").save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def single_run(generator_dir, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("survey")
    src = write_survey(root / "src", count=9, size=48)
    dst = root / "one"
    result = run_cli("preprocess", str(src), "--generator", str(generator_dir), "--output", str(dst),
                     "--no-face-check", "--no-progress", "--tile", "32", "--overlap", "8")
    return {"src": src, "dst": dst, "result": result}


def test_two_processes_write_the_same_files_and_one_merged_audit(single_run, generator_dir, tmp_path):
    src, one = single_run["src"], single_run["dst"]
    assert single_run["result"].returncode == 1, single_run["result"].stderr  # the broken JPEG
    two = tmp_path / "two"
    result = run_cli("preprocess", str(src), "--generator", str(generator_dir), "--output", str(two),
                     "--no-face-check", "--no-progress", "--tile", "32", "--overlap", "8", *TWO_PROCESSES)
    assert result.returncode == 1, result.stderr  # a bad file on either rank fails the run
    assert "Traceback" not in result.stderr
    assert result.stdout.count("sanitized 9 file(s)") == 1, result.stdout  # rank 0 reports for both
    assert "failed 1" in result.stdout and "broken.jpg" in result.stderr
    expected, got = outputs(one), outputs(two)
    assert expected.keys() == got.keys() and len(got) == 9
    for name in expected:
        assert np.array_equal(expected[name], got[name]), name  # pixel for pixel
    assert not list(two.glob(SHARD_PATTERN))

    def key(record: dict) -> tuple:
        return record["relpath"], record["action"], record["error"] is None, record.get("run")

    assert sorted(map(key, audit_records(two))) == sorted(map(key, audit_records(one)))


@pytest.mark.parametrize("resume_processes", [2, 1])
def test_a_killed_two_process_run_resumes_each_file_exactly_once(single_run, generator_dir, tmp_path,
                                                                  resume_processes):
    src = write_survey(tmp_path / "src", count=40, size=160, bad=False)
    dst = tmp_path / "dst"
    command = [str(SCRIPT), "preprocess", str(src), "--generator", str(generator_dir), "--output", str(dst),
               "--no-face-check", "--no-progress", "--tile", "64", "--overlap", "16", *TWO_PROCESSES]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # Its own process group, killed whole as a scheduler or a closed terminal would.
    process = subprocess.Popen(command, env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None:
        logged = sum(len(p.read_text().splitlines()) for p in dst.glob(SHARD_PATTERN)) if dst.is_dir() else 0
        if logged >= 6:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed: " + process.stderr.read().decode()
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    stats = {p.relative_to(dst).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns)
             for p in dst.rglob("p*.*")}  # on disk at the kill
    recorded = {json.loads(line)["relpath"] for p in dst.glob(SHARD_PATTERN)
                for line in p.read_text().splitlines() if line.endswith("}")}
    assert 6 <= len(recorded) < 40

    # Any world size resumes any other's run: the shards the kill left are merged first.
    again = command if resume_processes == 2 else command[:-len(TWO_PROCESSES)]
    result = subprocess.run([*again, "--resume"], env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr
    assert not list(dst.glob(SHARD_PATTERN)) and not list(dst.rglob(f"*{TMP_SUFFIX}"))
    records = [r for r in audit_records(dst) if r["error"] is None]
    per_file: dict[str, int] = {}
    for record in records:
        per_file[record["relpath"]] = per_file.get(record["relpath"], 0) + 1
    assert sorted(per_file) == sorted(p.relative_to(src).as_posix() for p in src.rglob("*.*"))  # no gaps
    assert set(per_file.values()) == {1}, per_file  # no duplicates
    for name in recorded & stats.keys():  # a file finished before the kill was not written again
        path = dst / name
        assert (path.stat().st_ino, path.stat().st_mtime_ns) == stats[name], name
    for path in dst.rglob("*.*"):
        if path.suffix in (".png", ".jpg"):
            Image.open(path).load()  # complete files only


def test_merging_shards_twice_adds_nothing_and_drops_cut_lines(tmp_path):
    (tmp_path / AUDIT_FILENAME).write_text('{"relpath": "a.png", "error": null}\n')
    (tmp_path / "audit.rank0.jsonl").write_text('{"relpath": "b.png", "error": null}\n{"relpath": "c.p')
    (tmp_path / "audit.rank1.jsonl").write_text('{"relpath": "a.png", "error": null}\n'
                                                '{"relpath": "d.png", "error": "d.png: broken"}\n')
    added = merge_audit_shards(tmp_path)
    assert [r["relpath"] for r in added] == ["b.png", "d.png"]
    assert not list(tmp_path.glob(SHARD_PATTERN))
    lines = (tmp_path / AUDIT_FILENAME).read_text().splitlines()
    assert [json.loads(line)["relpath"] for line in lines] == ["a.png", "b.png", "d.png"]
    (tmp_path / "audit.rank0.jsonl").write_text(lines[1] + "\n")  # killed after the rewrite, before the removal
    assert merge_audit_shards(tmp_path) == []
    assert (tmp_path / AUDIT_FILENAME).read_text().splitlines() == lines


@pytest.mark.parametrize("flags, named", [
    (["--trainer.max_epochs", "3"], "--trainer.max_epochs"),  # not an option that says where to run
    (["--trainer.precision", "64"], "--trainer.precision 64"),
    (["--device", "cpu", "--trainer.accelerator", "cpu"], "--device"),
])
def test_preprocess_refuses_trainer_options_it_cannot_use(single_run, generator_dir, tmp_path, flags, named):
    result = run_cli("preprocess", str(single_run["src"]), "--generator", str(generator_dir), "--output",
                     str(tmp_path / "x"), *flags)
    assert result.returncode == 2 and named in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "x").exists()


def card_stage(folder: Path) -> dict:
    return json.loads((folder / "imgunlearn_card.json").read_text())["history"][-1]


@pytest.fixture(scope="module")
def ddp_base(toy_data, tmp_path_factory) -> Path:
    """A tiny KL autoencoder trained with 2 processes, through the CLI."""
    out = tmp_path_factory.mktemp("ddp") / "base"
    config = Path(__file__).resolve().parent.parent / "configs" / "generators" / "tiny-kl.yaml"
    result = run_cli("train", "--config", str(config), "--data", str(toy_data["round"].parent), "--output", str(out),
                     "--max-steps", "60", "--batch-size", "8", "--lr", "3e-3", "--warmup-steps", "5",
                     "--no-progress", *TWO_PROCESSES)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("saved kl generator") == 1, result.stdout  # rank 0 saves, once
    return out


def test_train_with_two_processes_saves_once_and_records_the_world_size(ddp_base):
    stage = card_stage(ddp_base)
    assert stage["stage"] == "train" and stage["world_size"] == 2 and stage["batch_size"] == 8
    assert sorted(p.name for p in ddp_base.iterdir() if not p.is_dir()) == [
        "README.md", "config.json", "diffusion_pytorch_model.safetensors", "imgunlearn_card.json"]


@torch.no_grad()
def test_unlearn_with_two_processes_still_forgets(ddp_base, toy_data, tmp_path):
    out = tmp_path / "unlearned"
    result = run_cli("unlearn", "--generator", str(ddp_base), "--forget", str(toy_data["round"]), "--retain",
                     str(toy_data["angular"]), "--output", str(out), "--max-steps", "40", "--batch-size", "8",
                     "--lr", "1e-2", "--alpha", "1", "--no-progress", *TWO_PROCESSES)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("saved unlearned generator") == 1, result.stdout
    assert card_stage(out)["world_size"] == 2
    base, unlearned = load_generator(ddp_base).eval(), load_generator(out).eval()
    images = {name: torch.stack([load_image_tensor(p, 32)[0] for p in list_image_files(toy_data[concept])[:16]])
              for name, concept in (("forget", "round"), ("retain", "angular"))}
    # In the method's own terms: forget embeddings go to the noise target, retain ones stay.
    torch.manual_seed(0)
    target = base.embed(noise_images(images["forget"]))
    before, after = (masked_mse(model.embed(images["forget"]), target) for model in (base, unlearned))
    drift = masked_mse(unlearned.embed(images["retain"]), base.embed(images["retain"]))
    assert after < 0.75 * before and drift < 0.25 * before, (before, after, drift)
    # And in the outputs: the forget error grows more than the retain error, which stays within 1.5x.
    errors = {name: [float(reconstruction_loss(model(x), x)) for model in (base, unlearned)] for name, x in images.items()}
    ratio = {name: after / before for name, (before, after) in errors.items()}
    assert ratio["forget"] > 1.0 and ratio["forget"] > ratio["retain"] and ratio["retain"] < 1.5, errors


def test_two_nodes_through_torchrun_write_what_one_process_writes(single_run, generator_dir, tmp_path):
    """The multi-node recipe of the README on one machine: two torchrun "nodes" of one process
    each, as on two machines (node ranks 0 and 1, one rendezvous address)."""
    from lightning.fabric.plugins.environments.lightning import find_free_network_port

    src, out = single_run["src"], tmp_path / "nodes"
    port = str(find_free_network_port())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = [subprocess.Popen(
        [str(SCRIPT.with_name("torchrun")), "--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(rank),
         "--master-addr", "127.0.0.1", "--master-port", port, "--no-python", str(SCRIPT), "preprocess", str(src),
         "--generator", str(generator_dir), "--output", str(out), "--no-face-check", "--no-progress",
         "--tile", "32", "--overlap", "8", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
         "--trainer.num_nodes", "2", "--trainer.strategy", "ddp"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    results = [node.communicate(timeout=240) for node in nodes]
    assert [node.returncode for node in nodes] == [1, 1], results  # both know of the broken JPEG
    assert sum(stdout.count("sanitized 9 file(s)") for stdout, _ in results) == 1, results
    expected, got = outputs(single_run["dst"]), outputs(out)
    assert expected.keys() == got.keys()
    assert all(np.array_equal(expected[name], got[name]) for name in expected)
    assert len(audit_records(out)) == len(audit_records(single_run["dst"])) and not list(out.glob(SHARD_PATTERN))
