"""The command line end to end on images generated into a tmp dir, and its promised errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from imgunlearn.cli import build_parser, main
from imgunlearn.data.augment import Augmentation
from imgunlearn.generators import load_generator

from conftest import TINY_CONFIGS


def write_config(path: Path, family: str = "kl") -> Path:
    config = {"generator": {"family": family, "config": TINY_CONFIGS[family]},
              "batch_size": 8, "lr": 3e-3, "warmup_steps": 2, "trainer": {"enable_progress_bar": False}}
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def base_model(toy_data, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("cli-base")
    out = tmp / "base"
    assert main(["train", "--config", str(write_config(tmp / "tiny.yaml")), "--data", str(toy_data["round"].parent),
                 "--output", str(out), "--max-steps", "6", "--seed", "1"]) == 0
    return out


def test_train_unlearn_generate_end_to_end(base_model, toy_data, tmp_path, capsys):
    assert (base_model / "config.json").is_file()
    assert load_generator(base_model).card["history"][0]["stage"] == "train"
    out = tmp_path / "unlearned"
    assert main(["unlearn", "--generator", str(base_model), "--forget", str(toy_data["round"]),
                 "--retain", str(toy_data["angular"]), "--output", str(out), "--objective", "ours",
                 "--target", "blank", "--alpha", "0.25", "--task", "center_inpaint,outpaint", "--max-steps", "4",
                 "--batch-size", "4", "--lr", "1e-3", "--no-progress"]) == 0
    assert "saved unlearned generator" in capsys.readouterr().out
    card = json.loads((out / "imgunlearn_card.json").read_text())
    stage = card["history"][-1]
    assert (stage["objective"], stage["target"], stage["alpha"], stage["task"], stage["max_steps"]) == \
        ("ours", "blank", 0.25, ["center_inpaint", "outpaint"], 4)
    assert [s["stage"] for s in card["history"]] == ["train", "unlearn"]

    generated = tmp_path / "generated"
    assert main(["generate", "--generator", str(out), "--input", str(toy_data["round"]),
                 "--output", str(generated), "--task", "outpaint", "--no-progress"]) == 0
    inputs = sorted(p.stem for p in toy_data["round"].iterdir())
    outputs = sorted(generated.iterdir())
    assert [p.stem for p in outputs] == inputs and all(p.suffix == ".png" for p in outputs)
    with Image.open(outputs[0]) as image:
        assert image.mode == "RGB" and image.size == (16, 16)


def test_trainer_options_pass_through(base_model, toy_data, tmp_path):
    out = tmp_path / "u"
    assert main(["unlearn", "--generator", str(base_model), "--forget", str(toy_data["round"]),
                 "--retain", str(toy_data["angular"]), "--output", str(out), "--max-steps", "2",
                 "--batch-size", "4", "--trainer.precision", "bf16-mixed", "--trainer.accelerator=cpu",
                 "--trainer.enable_progress_bar", "false"]) == 0
    assert (out / "config.json").is_file()
    assert json.loads((out / "imgunlearn_card.json").read_text())["history"][-1]["precision"] == "bf16-mixed"


def test_config_file_sets_unlearning_options_and_flags_override(base_model, toy_data, tmp_path):
    config = tmp_path / "unlearn.yaml"
    config.write_text(yaml.safe_dump({"objective": "random_encoder", "alpha": 0.5, "max_steps": 2,
                                      "batch_size": 4, "augment": {"min_scale": 0.8},
                                      "trainer": {"enable_progress_bar": False}}))
    out = tmp_path / "u"
    assert main(["unlearn", "--config", str(config), "--alpha", "0.1", "--generator", str(base_model),
                 "--forget", str(toy_data["round"]), "--retain", str(toy_data["angular"]), "--output", str(out)]) == 0
    stage = json.loads((out / "imgunlearn_card.json").read_text())["history"][-1]
    assert stage["objective"] == "random_encoder" and stage["alpha"] == 0.1
    assert stage["augment"] == Augmentation(min_scale=0.8).to_dict()


def test_resume_continues_and_refuses_zero_steps(base_model, toy_data, tmp_path, capsys):
    out = tmp_path / "u"
    common = ["unlearn", "--generator", str(base_model), "--forget", str(toy_data["round"]),
              "--retain", str(toy_data["angular"]), "--output", str(out), "--batch-size", "4", "--no-progress"]
    assert main(common + ["--max-steps", "2"]) == 0
    assert main(common + ["--max-steps", "3", "--resume", str(out / "checkpoints" / "last.ckpt")]) == 0
    capsys.readouterr()
    assert main(common + ["--max-steps", "3", "--resume", str(out)]) == 2
    assert "zero more steps" in capsys.readouterr().err


def _sets_with(tmp_path: Path, toy_data, extra: dict[str, bytes | Image.Image]) -> Path:
    forget = tmp_path / "forget"
    shutil.copytree(toy_data["round"], forget)
    for name, content in extra.items():
        if isinstance(content, Image.Image):
            content.save(forget / name)
        else:
            (forget / name).write_bytes(content)
    return forget


def _unlearn(base_model, forget, retain, out, *extra) -> int:
    return main(["unlearn", "--generator", str(base_model), "--forget", str(forget), "--retain", str(retain),
                 "--output", str(out), "--max-steps", "2", "--batch-size", "4", "--no-progress", *extra])


def test_corrupt_file_stops_the_run_naming_it_unless_skip_bad(base_model, toy_data, tmp_path, capsys):
    forget = _sets_with(tmp_path, toy_data, {"broken.png": b"\x89PNG\r\n\x1a\nnot really a png"})
    assert _unlearn(base_model, forget, toy_data["angular"], tmp_path / "a") == 2
    err = capsys.readouterr().err
    assert "broken.png" in err and "--skip-bad" in err
    assert not (tmp_path / "a" / "config.json").exists()
    assert _unlearn(base_model, forget, toy_data["angular"], tmp_path / "b", "--skip-bad") == 0
    assert "skipped 1 bad file" in capsys.readouterr().out


def test_odd_image_modes_are_accepted(base_model, toy_data, tmp_path):
    rgba = Image.new("RGBA", (20, 20), (255, 0, 0, 128))
    grey16 = Image.fromarray(np.full((20, 24), 40000, dtype=np.uint16))
    palette = Image.new("P", (18, 18))
    forget = _sets_with(tmp_path, toy_data, {"grey.png": Image.new("L", (17, 17), 90), "rgba.png": rgba,
                                             "grey16.png": grey16, "palette.gif": palette,
                                             "cmyk.jpg": Image.new("CMYK", (16, 16), (0, 255, 0, 0))})
    assert _unlearn(base_model, forget, toy_data["angular"], tmp_path / "out") == 0


def test_empty_folder_and_missing_path_errors(base_model, toy_data, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert _unlearn(base_model, tmp_path / "empty", toy_data["angular"], tmp_path / "a") == 2
    err = capsys.readouterr().err
    assert "empty" in err and "forget" in err
    assert not (tmp_path / "a" / "checkpoints").exists()  # refused before any training
    assert _unlearn(base_model, tmp_path / "nowhere", toy_data["angular"], tmp_path / "b") == 2
    assert "nowhere" in capsys.readouterr().err
    assert main(["generate", "--generator", str(tmp_path / "no-model"), "--input", str(toy_data["round"]),
                 "--output", str(tmp_path / "g")]) == 2
    assert "no-model" in capsys.readouterr().err


def test_manifest_with_wrong_column_names_it(base_model, toy_data, tmp_path, capsys):
    manifest = tmp_path / "sets.csv"
    first = next(toy_data["round"].iterdir())
    manifest.write_text(f"file,split\n{first},forget\n")
    assert main(["unlearn", "--generator", str(base_model), "--manifest", str(manifest),
                 "--output", str(tmp_path / "o"), "--max-steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "sets.csv" in err and "path" in err


def test_manifest_runs(base_model, toy_data, tmp_path):
    rows = ["path,split,boxes"]
    rows += [f"{p},forget,\"[[0,0,8,8]]\"" for p in sorted(toy_data["round"].iterdir())[:4]]
    rows += [f"{p},retain," for p in sorted(toy_data["angular"].iterdir())[:4]]
    manifest = tmp_path / "sets.csv"
    manifest.write_text("\n".join(rows) + "\n")
    assert main(["unlearn", "--generator", str(base_model), "--manifest", str(manifest), "--output",
                 str(tmp_path / "o"), "--max-steps", "2", "--batch-size", "4", "--augment", "--no-progress"]) == 0
    stage = json.loads((tmp_path / "o" / "imgunlearn_card.json").read_text())["history"][-1]
    assert stage["region_level"] is True and stage["forget_images"] == 4
    assert stage["augment"] == Augmentation().to_dict()
    assert main(["unlearn", "--generator", str(base_model), "--manifest", str(manifest), "--output",
                 str(tmp_path / "s"), "--max-steps", "1", "--batch-size", "4", "--augment", "survey",
                 "--no-progress"]) == 0
    stage = json.loads((tmp_path / "s" / "imgunlearn_card.json").read_text())["history"][-1]
    assert stage["augment"] == Augmentation.survey().to_dict()


def test_usage_errors(base_model, toy_data, tmp_path, capsys):
    assert main(["unlearn", "--generator", str(base_model), "--forget", str(toy_data["round"]),
                 "--output", str(tmp_path / "o")]) == 2
    assert "--retain" in capsys.readouterr().err
    assert _unlearn(base_model, toy_data["round"], toy_data["angular"], tmp_path / "o", "--trainer.bogus", "1") == 2
    assert "--trainer.bogus" in capsys.readouterr().err
    assert main(["train", "--data", str(toy_data["round"]), "--output", str(tmp_path / "t")]) == 2
    assert "--config" in capsys.readouterr().err


def test_every_flag_is_explained_in_help():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert set(commands) == {"train", "unlearn", "generate", "evaluate", "find-faces", "split-survey", "preprocess",
                             "demo"}
    for name, sub in commands.items():
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings} has no help"
        # Only the commands that train or preprocess take Lightning options, and their help says how.
        assert ("--trainer." in sub.format_help()) == (name in ("train", "unlearn", "preprocess")), name


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "imgunlearn"
    result = subprocess.run([str(script), "unlearn", "--help"], capture_output=True, text=True, check=True)
    for flag in ("--generator", "--forget", "--retain", "--output", "--objective", "--target", "--alpha",
                 "--task", "--max-steps", "--batch-size", "--lr", "--resume", "--seed", "--config"):
        assert flag in result.stdout


def test_train_resume_and_same_seed_same_weights(toy_data, tmp_path, capsys):
    from conftest import state_copy, states_equal

    config = str(write_config(tmp_path / "tiny.yaml", family="vq"))
    train = ["train", "--config", config, "--data", str(toy_data["angular"]), "--seed", "3"]
    assert main(train + ["--output", str(tmp_path / "a"), "--max-steps", "3"]) == 0
    assert main(train + ["--output", str(tmp_path / "b"), "--max-steps", "3"]) == 0
    assert states_equal(state_copy(load_generator(tmp_path / "a")), state_copy(load_generator(tmp_path / "b")))
    # The seconds the first (here: finished, as if killed) run trained, as its checkpoint holds them.
    checkpoint = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    trained = checkpoint["callbacks"]["RunClock"]["seconds"]
    started = time.perf_counter()
    assert main(train + ["--output", str(tmp_path / "a"), "--max-steps", "5", "--resume", str(tmp_path / "a")]) == 0
    wall = time.perf_counter() - started
    resumed = load_generator(tmp_path / "a").card["history"][-1]
    assert resumed["max_steps"] == 5
    # The card counts the killed run's seconds and this run's own (at most its wall time).
    assert trained > 0 and trained < resumed["seconds"] <= trained + wall + 0.01
    # A bare --resume goes on in --output, as preprocess's does.
    assert main(train + ["--output", str(tmp_path / "a"), "--max-steps", "6", "--resume"]) == 0
    assert load_generator(tmp_path / "a").card["history"][-1]["max_steps"] == 6
    capsys.readouterr()
    assert main(train + ["--output", str(tmp_path / "a"), "--max-steps", "5", "--resume", str(tmp_path / "a")]) == 2
    assert "zero more steps" in capsys.readouterr().err


def test_train_with_survey_augmentation_records_it(toy_data, tmp_path):
    config = str(write_config(tmp_path / "tiny.yaml", family="kl"))
    train = ["train", "--config", config, "--data", str(toy_data["angular"]), "--max-steps", "2", "--no-progress"]
    assert main(train + ["--output", str(tmp_path / "a"), "--augment", "survey"]) == 0
    assert main(train + ["--output", str(tmp_path / "b")]) == 0
    augmented, plain = load_generator(tmp_path / "a"), load_generator(tmp_path / "b")
    assert augmented.card["history"][-1]["augment"] == Augmentation.survey().to_dict()
    assert plain.card["history"][-1]["augment"] is None
    assert any(not torch.equal(a, b) for a, b in zip(augmented.parameters(), plain.parameters()))


def test_help_builds_without_loading_torch():
    """`imgunlearn --help` used to take ~6.5 s: the parser imported torch. The parser and the
    package's top level now load it only when a command runs."""
    code = ("import sys, imgunlearn, imgunlearn.cli; imgunlearn.cli.build_parser(); "
            "print(sorted(m for m in ('torch', 'lightning', 'diffusers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_every_help_line_states_its_default():
    import argparse

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, command in commands.items():
        formatter = command._get_formatter()
        for action in command._actions:
            if (action.option_strings and not action.required and action.help
                    and action.default not in (None, False, True, argparse.SUPPRESS)):
                assert "default" in formatter._get_help_string(action).lower(), (name, action.option_strings)
    assert "tiles per forward pass (default 4)" in " ".join(commands["preprocess"].format_help().split())
