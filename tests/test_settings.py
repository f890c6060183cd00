"""One source of truth for run settings: the dataclasses in imgunlearn.settings reach the
CLI, the configs, the LightningModules and the model card without being listed anywhere else."""

from __future__ import annotations

import copy
import dataclasses
import inspect
from pathlib import Path

import pytest
import yaml

from imgunlearn import train_generator, unlearn
from imgunlearn.cli import build_parser
from imgunlearn.demo import DEMO_TARGET_SETTINGS, DEMO_UNLEARN, FIRST_DEMO_SET_UNLEARN
from imgunlearn.errors import InvalidSettingError
from imgunlearn.settings import TrainSettings, UnlearnSettings
from imgunlearn.training.module import GeneratorTrainingModule
from imgunlearn.unlearning.module import UnlearningModule

from conftest import TINY_CONFIGS

ROOT = Path(__file__).resolve().parent.parent


def names(settings: type) -> set[str]:
    return {f.name for f in dataclasses.fields(settings)}


def flags_of(command: str) -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return {a.dest for a in sub._actions}


@pytest.mark.parametrize("command,settings", [("train", TrainSettings), ("unlearn", UnlearnSettings)])
def test_every_setting_is_a_flag(command, settings):
    assert names(settings) <= flags_of(command)


@pytest.mark.parametrize("module,settings", [(GeneratorTrainingModule, TrainSettings),
                                             (UnlearningModule, UnlearnSettings)])
def test_every_module_parameter_is_a_setting(module, settings):
    """The settings reach the LightningModule by name: a parameter that is not a setting
    would silently keep its default."""
    parameters = set(inspect.signature(module.__init__).parameters) - {"self", "generator"}
    assert parameters <= names(settings)


def test_demo_settings_and_shipped_config_name_only_settings():
    assert set(DEMO_UNLEARN) <= names(UnlearnSettings)
    assert all(set(overrides) <= names(UnlearnSettings) for overrides in DEMO_TARGET_SETTINGS.values())
    assert set(FIRST_DEMO_SET_UNLEARN) <= names(UnlearnSettings)
    config = yaml.safe_load((ROOT / "configs" / "unlearn" / "default.yaml").read_text())
    assert set(config) - {"trainer"} <= names(UnlearnSettings)


def test_every_setting_reaches_the_card(trained, toy_data):
    result = unlearn(copy.deepcopy(trained["kl"]), forget=toy_data["round"], retain=toy_data["angular"],
                     max_steps=1, batch_size=4, progress=False, settings=UnlearnSettings(alpha=0.5), seed=3)
    stage = result.card["history"][-1]
    assert names(UnlearnSettings) <= set(stage)
    assert (stage["alpha"], stage["seed"], stage["max_steps"]) == (0.5, 3, 1)  # settings, then keywords on top
    generator = train_generator({"family": "kl", "config": TINY_CONFIGS["kl"]}, toy_data["round"],
                                max_steps=1, batch_size=4, progress=False, tasks="outpaint")
    stage = generator.card["history"][-1]
    assert names(TrainSettings) <= set(stage) and stage["tasks"] == ["outpaint"]


def test_an_unknown_setting_is_refused_by_name(trained, toy_data):
    with pytest.raises(InvalidSettingError, match=r"unknown setting\(s\) \['alhpa'\].*'alpha'"):
        unlearn(trained["kl"], forget=toy_data["round"], retain=toy_data["angular"], alhpa=1.0)
