"""Unlearning with real Lightning runs on tiny real diffusers generators."""

from __future__ import annotations

import copy
import json
import re

import lightning as L
import pytest
import torch

from imgunlearn import unlearn
from imgunlearn.data import EmptyImageSetError, list_image_files, load_image_tensor
from imgunlearn.errors import InvalidSettingError
from imgunlearn.runner import ResumeError, checkpoint_step
from imgunlearn.unlearning import objectives as obj

from conftest import state_copy, states_equal

FAST = {"batch_size": 8, "lr": 2e-3, "progress": False}
# The tiny MAE's 2 px patches barely tell round from angular shapes apart without context, and
# its attention learns that context slowly; diffusion sees each image at one random timestep a
# step: both get more steps at a higher rate.
FAMILY_BUDGET = {"mae": {"max_steps": 100, "lr": 1e-2}, "diffusion": {"max_steps": 100, "lr": 1e-2}}
# How far the forget side must move. Diffusion's embedding includes the input convolution's and
# the first level's feature maps, 3-7 px receptive fields that see round and angular strokes
# alike: that share cannot move without the retain side, so the whole embedding moves less.
FORGET_MOVES = {"diffusion": 0.9}
FORGET_ERROR_GROWS = {"diffusion": 1.05}


def _images(folder, count=8) -> torch.Tensor:
    return torch.stack([load_image_tensor(p, 16)[0] for p in list_image_files(folder)[:count]])


@pytest.mark.parametrize("objective", ["ours", "random_encoder"])
def test_teacher_and_decoder_bitwise_unchanged(family, trained, toy_data, objective):
    base = trained[family]
    before = state_copy(base)
    decoder_before = [p.detach().clone() for p in base.decoder_parameters()]
    encoder_before = [p.detach().clone() for p in base.encoder_parameters()]
    result = unlearn(base, forget=toy_data["round"], retain=toy_data["angular"], objective=objective,
                     max_steps=4, **FAST)
    assert states_equal(before, state_copy(base)), "the teacher (the caller's generator) changed"
    assert all(torch.equal(a, b) for a, b in zip(decoder_before, result.decoder_parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(encoder_before, result.encoder_parameters()))


def test_encoder_modules_are_stages_without_a_shared_parameter(family, trained):
    generator = trained[family]
    stage_ids = [id(p) for stage in generator.encoder_modules() for p in stage.parameters()]
    assert len(generator.encoder_modules()) >= 3
    assert len(stage_ids) == len(set(stage_ids))  # no parameter in two stages
    assert set(stage_ids) == {id(p) for p in generator.encoder_parameters()}


@pytest.mark.parametrize("objective", ["ours", "noisy_label"])
def test_frozen_encoder_stages_keep_the_originals_weights(family, trained, toy_data, objective):
    base = trained[family]
    frozen = len(base.encoder_modules()) - 2
    result = unlearn(base, forget=toy_data["round"], retain=toy_data["angular"], objective=objective,
                     max_steps=3, frozen_encoder_stages=frozen, **FAST)
    stages = list(zip(base.encoder_modules(), result.encoder_modules()))
    for before, after in stages[:frozen]:
        assert all(torch.equal(a, b) for a, b in zip(before.parameters(), after.parameters()))
    assert any(not torch.equal(a, b) for before, after in stages[frozen:]
               for a, b in zip(before.parameters(), after.parameters()))
    assert result.card["history"][-1]["frozen_encoder_stages"] == frozen


def test_freezing_every_encoder_stage_is_refused(trained, toy_data):
    stages = len(trained["kl"].encoder_modules())
    with pytest.raises(InvalidSettingError, match=rf"frozen_encoder_stages must be in 0\.\.{stages - 1}.*got {stages}"):
        unlearn(trained["kl"], forget=toy_data["round"], retain=toy_data["angular"],
                frozen_encoder_stages=stages, max_steps=1, **FAST)


def _run(base, toy_data, objective, steps=25, **options):
    return unlearn(copy.deepcopy(base), forget=toy_data["round"], retain=toy_data["angular"],
                   objective=objective, **{"alpha": 1.0, **FAST, "max_steps": steps,
                                           **FAMILY_BUDGET.get(base.family, {}), **options})


def _output_error(model, inputs, targets, draws: int = 4) -> torch.Tensor:
    """How far the model's output for ``inputs`` is from ``targets``, the family's way
    (``prediction``: the output itself for the autoencoders; for diffusion the noise
    prediction, at the same seeded timesteps and noise for every model)."""
    errors = []
    for seed in range(draws if model.draw_probe(inputs) is not None else 1):
        torch.manual_seed(seed)
        errors.append(obj.reconstruction_loss(*model.prediction(inputs, targets, model.draw_probe(inputs))))
    return torch.stack(errors).mean()


def _error_ratios(base, result, x_f, x_r) -> tuple[float, float]:
    """How much the reconstruction error grew on the forget and on the retain images."""
    ratio = lambda x: _output_error(result, x, x) / _output_error(base, x, x)  # noqa: E731
    return float(ratio(x_f)), float(ratio(x_r))


@torch.no_grad()
def test_ours_sends_forget_embeddings_to_the_noise_target_and_keeps_retain(family, trained, toy_data):
    base = trained[family].eval()
    x_f, x_r = _images(toy_data["round"]), _images(toy_data["angular"])
    torch.manual_seed(0)
    target = base.embed(obj.noise_images(x_f))
    result = _run(base, toy_data, "ours", alpha=0.5).eval()
    forget_before = obj.masked_mse(base.embed(x_f), target)
    forget_after = obj.masked_mse(result.embed(x_f), target)
    retain_drift = obj.masked_mse(result.embed(x_r), base.embed(x_r))
    assert forget_after < FORGET_MOVES.get(family, 0.75) * forget_before
    assert retain_drift < 0.25 * forget_before  # retain stays close while forget moves


@torch.no_grad()
def test_max_loss_raises_forget_error_more_than_retain(family, trained, toy_data):
    base = trained[family].eval()
    x_f, x_r = _images(toy_data["round"]), _images(toy_data["angular"])
    result = _run(base, toy_data, "max_loss", alpha=0.5).eval()
    forget_ratio, retain_ratio = _error_ratios(base, result, x_f, x_r)
    assert forget_ratio > FORGET_ERROR_GROWS.get(family, 1.2)
    assert forget_ratio > retain_ratio


@torch.no_grad()
def test_noisy_label_moves_forget_outputs_toward_noise(family, trained, toy_data):
    base = trained[family].eval()
    x_f, x_r = _images(toy_data["round"]), _images(toy_data["angular"])
    torch.manual_seed(1)
    noise = obj.noise_images(x_f)
    result = _run(base, toy_data, "noisy_label").eval()
    assert _output_error(result, x_f, noise) < _output_error(base, x_f, noise)
    # The forget side moved away from the truth more than the retain side did.
    forget_ratio, retain_ratio = _error_ratios(base, result, x_f, x_r)
    assert forget_ratio > retain_ratio


@torch.no_grad()
def test_retain_label_moves_forget_outputs_toward_retain_images(family, trained, toy_data):
    base = trained[family].eval()
    x_f, x_r = _images(toy_data["round"]), _images(toy_data["angular"])
    result = _run(base, toy_data, "retain_label").eval()
    mean_retain = x_r.mean(0, keepdim=True).expand_as(x_f)  # what matching random retain images tends to
    assert _output_error(result, x_f, mean_retain) < _output_error(base, x_f, mean_retain)
    forget_ratio, retain_ratio = _error_ratios(base, result, x_f, x_r)
    assert forget_ratio > retain_ratio


@torch.no_grad()
def test_random_encoder_moves_forget_embeddings_toward_random_vectors(family, trained, toy_data):
    base = trained[family].eval()
    x_f, x_r = _images(toy_data["round"]), _images(toy_data["angular"])
    teacher = base.embed(x_f)
    draws = torch.stack([obj.random_embeddings_like(teacher, torch.Generator().manual_seed(s)) for s in range(16)])
    result = _run(base, toy_data, "random_encoder").eval()
    distance_before = ((teacher - draws) ** 2).mean()
    distance_after = ((result.embed(x_f) - draws) ** 2).mean()
    assert distance_after < distance_before
    forget_change = obj.masked_mse(result.embed(x_f), teacher)
    retain_change = obj.masked_mse(result.embed(x_r), base.embed(x_r))
    assert forget_change > retain_change


class _Layouts(L.Callback):
    """Records whether the teacher's and the student's convolution weights are channels-last."""

    def __init__(self) -> None:
        self.seen: list[tuple[bool, bool]] = []

    def on_train_batch_start(self, trainer, module, *args) -> None:
        def channels_last(model) -> bool:
            weight = next(p for p in model.parameters() if p.ndim == 4)
            return weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
        self.seen.append((channels_last(module.teacher), channels_last(module.student)))


def test_the_teacher_runs_channels_last_on_a_cpu_and_comes_back_contiguous(trained, toy_data, tmp_path):
    base, layouts = copy.deepcopy(trained["kl"]), _Layouts()
    unlearn(base, forget=toy_data["round"], retain=toy_data["angular"], max_steps=2,
            trainer_options={"callbacks": [layouts]}, **FAST)
    # Forward only, the teacher is faster channels-last on a CPU; the student trains contiguous.
    assert layouts.seen == [(True, False), (True, False)]
    assert all(p.is_contiguous() for p in base.parameters())  # the caller's generator, as it came
    base.save_pretrained(tmp_path / "base")  # safetensors takes contiguous tensors only


def test_same_seed_gives_the_same_weights(trained, toy_data):
    base = trained["kl"]
    run = lambda seed: state_copy(unlearn(base, forget=toy_data["round"], retain=toy_data["angular"],  # noqa: E731
                                          max_steps=3, seed=seed, **FAST))
    first, second, other = run(7), run(7), run(8)
    assert states_equal(first, second)
    assert not states_equal(first, other)


class _CrashAt(L.Callback):
    """Stands in for a kill: the process dies after a checkpoint was written."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.step:
            raise RuntimeError("killed")


def test_resume_after_a_crash_and_refuse_zero_step_resume(trained, toy_data, tmp_path):
    base, out = trained["vq"], tmp_path / "run"
    sets = {"forget": toy_data["round"], "retain": toy_data["angular"]}
    with pytest.raises(RuntimeError, match="killed"):
        unlearn(base, **sets, max_steps=6, output_dir=out, trainer_options={"callbacks": [_CrashAt(3)]}, **FAST)
    last = out / "checkpoints" / "last.ckpt"
    assert 0 < checkpoint_step(last) < 6
    result = unlearn(base, **sets, max_steps=6, output_dir=out, resume=out, **FAST)
    assert checkpoint_step(last) == 6
    assert result.card["history"][-1]["max_steps"] == 6
    with pytest.raises(ResumeError, match="zero more steps"):
        unlearn(base, **sets, max_steps=6, output_dir=out, resume=last, **FAST)
    with pytest.raises(ResumeError, match="no checkpoint"):
        unlearn(base, **sets, max_steps=6, output_dir=out, resume=tmp_path / "nothing.ckpt", **FAST)


class _CtrlCAt(L.Callback):
    """Ctrl-C as Lightning sees it: a KeyboardInterrupt inside the training loop."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.step:
            raise KeyboardInterrupt


def test_ctrl_c_says_how_to_resume_and_the_resumed_run_finishes(trained, toy_data, tmp_path):
    """Lightning answers Ctrl-C with sys.exit(1); unlearn() turns that back into a
    KeyboardInterrupt that names the folder to resume from (the CLI prints it, exit 130)."""
    base, out = trained["kl"], tmp_path / "run"
    sets = {"forget": toy_data["round"], "retain": toy_data["angular"]}
    with pytest.raises(KeyboardInterrupt, match=re.escape(f"interrupted; go on with the same command and --resume (from {out})")):
        unlearn(base, **sets, max_steps=6, output_dir=out, trainer_options={"callbacks": [_CtrlCAt(3)]},
                **FAST)
    result = unlearn(base, **sets, max_steps=6, output_dir=out, resume=out, **FAST)
    assert checkpoint_step(out / "checkpoints" / "last.ckpt") == 6 and result.card["history"][-1]["max_steps"] == 6


def test_empty_forget_set_fails_before_training(trained, toy_data, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmptyImageSetError, match="forget"):
        unlearn(trained["kl"], forget=tmp_path / "empty", retain=toy_data["angular"], max_steps=2,
                output_dir=tmp_path / "out", **FAST)
    assert not (tmp_path / "out" / "checkpoints").exists()


def _box_manifest(toy_data, folder, box) -> tuple:
    """A manifest of 8 round forget images, each with ``box``, and 8 angular retain images;
    and the forget files."""
    forget_files = list_image_files(toy_data["round"])[:8]
    rows = [{"path": str(p), "split": "forget", "boxes": [box]} for p in forget_files]
    rows += [{"path": str(p), "split": "retain"} for p in list_image_files(toy_data["angular"])[:8]]
    manifest = folder / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return manifest, forget_files


@torch.no_grad()
def test_region_level_forgets_under_boxes_and_keeps_the_rest(trained, toy_data, tmp_path):
    base = trained["kl"].eval()
    manifest, forget_files = _box_manifest(toy_data, tmp_path, [0, 0, 6, 6])
    result = unlearn(copy.deepcopy(base), manifest=manifest, max_steps=25, alpha=1.0, **FAST).eval()
    assert result.card["history"][-1]["region_level"] is True
    x_f = torch.stack([load_image_tensor(p, 16)[0] for p in forget_files])
    change = ((result.embed(x_f) - base.embed(x_f)) ** 2).mean(dim=(0, 1))  # (8, 8) latent grid
    box_cells = change[:3, :3].mean()  # the box covers cells 0..2, and a dilation cell
    far_cells = change[5:, 5:].mean()
    assert box_cells > 5 * far_cells


@torch.no_grad()
def test_the_fill_target_turns_boxes_into_their_own_colour(trained, toy_data, tmp_path):
    """Region-level, target ``fill``: box cells go to the original's embedding of the image with
    each box filled with its mean colour; cells far from the box stay."""
    base = trained["kl"].eval()
    manifest, forget_files = _box_manifest(toy_data, tmp_path, [0, 0, 8, 8])
    result = unlearn(copy.deepcopy(base), manifest=manifest, max_steps=25, alpha=1.0, target="fill", **FAST).eval()
    assert result.card["history"][-1]["target"] == "fill"
    x_f = torch.stack([load_image_tensor(p, 16)[0] for p in forget_files])
    region = torch.zeros(len(x_f), 1, 16, 16)
    region[..., :8, :8] = 1
    target = base.embed(x_f * (1 - region) + obj.region_mean_images(x_f, region) * region)
    box = lambda e: ((e - target) ** 2).mean(dim=(0, 1))[:4, :4].mean()  # noqa: E731  the box's cells
    assert box(result.embed(x_f)) < 0.75 * box(base.embed(x_f))
    far_change = ((result.embed(x_f) - base.embed(x_f)) ** 2).mean(dim=(0, 1))[6:, 6:].mean()
    assert far_change < 0.25 * box(base.embed(x_f))


# Each extra retain term, its weight in the test, and what it should pull in: the retained cells
# that move most (what the forget map's threshold is calibrated on), or the decoded retain images.
EXTRA_RETAIN_TERMS = {
    "retain_tail": (5.0, lambda result, base, x_r: obj.retain_tail_loss(result.embed(x_r), base.embed(x_r), share=0.01)),
    "retain_output": (50.0, lambda result, base, x_r: ((result(x_r) - base(x_r)) ** 2).mean()),
}


@torch.no_grad()
@pytest.mark.parametrize("option", sorted(EXTRA_RETAIN_TERMS))
def test_extra_retain_terms_pull_in_what_they_measure(trained, toy_data, option):
    base = trained["kl"].eval()
    x_r = _images(toy_data["angular"])
    weight, measure = EXTRA_RETAIN_TERMS[option]
    with torch.enable_grad():
        plain = _run(base, toy_data, "ours", steps=30, alpha=2.0).eval()
        extra = _run(base, toy_data, "ours", steps=30, alpha=2.0, **{option: weight}).eval()
    assert extra.card["history"][-1][option] == weight
    assert f"{option}_loss" in extra.card["history"][-1]["final_losses"]
    assert measure(extra, base, x_r) < 0.8 * measure(plain, base, x_r)


@torch.no_grad()
def test_forget_margin_moves_the_forget_cells_that_stayed_close(trained, toy_data):
    """With ``forget_margin``, fewer forget cells stay under ``margin_level`` of change from the
    original's embedding (what the forget map needs to find them) than without it."""
    base = trained["kl"].eval()
    x_f = _images(toy_data["round"])
    with torch.enable_grad():
        plain = _run(base, toy_data, "ours", steps=30, alpha=2.0).eval()
    level = float(obj.cell_change(plain.embed(x_f), base.embed(x_f)).quantile(0.75))  # most cells fall short
    shortfall = lambda model: obj.forget_margin_loss(model.embed(x_f), base.embed(x_f), level)  # noqa: E731
    with torch.enable_grad():
        margin = _run(base, toy_data, "ours", steps=30, alpha=2.0, forget_margin=5.0, margin_level=level).eval()
    record = margin.card["history"][-1]
    assert record["forget_margin"] == 5.0 and record["margin_level"] == pytest.approx(level)
    assert "forget_margin_loss" in record["final_losses"]
    assert shortfall(margin) < 0.8 * shortfall(plain)


def test_unlearn_without_an_output_dir_leaves_nothing_behind(trained, toy_data, tmp_path, monkeypatch):
    """Checkpoints and logs of a Python run that asked for no output go to a temporary folder
    that is removed when the run ends (the test suite once left ~22 of them in /tmp)."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    result = unlearn(copy.deepcopy(trained["kl"]), forget=toy_data["round"], retain=toy_data["angular"],
                     max_steps=2, **FAST)
    assert result.card["history"][-1]["stage"] == "unlearn"
    assert list(tmp_path.iterdir()) == []


def test_diffusion_is_unlearned_on_the_hidden_pixels_it_samples_over():
    """At an unlearning step the diffusion UNet's noisy target holds the whole image, hidden
    pixels included, as in base training and sampling: forget images that differ only inside
    the inpainting hole (same pixels, flipped, so the noise target's statistics are the same)
    give another forget loss at the same seed."""
    from conftest import tiny_generator

    from imgunlearn.unlearning.module import UnlearningModule

    module = UnlearningModule(tiny_generator("diffusion"), task="center_inpaint")
    torch.manual_seed(1)
    images, retain = torch.rand(2, 2, 3, 16, 16) * 2 - 1
    flipped = images.clone()
    flipped[:, :, 4:12, 4:12] = images[:, :, 4:12, 4:12].flip(-1)  # the centre hole of a 16 px image
    losses = []
    with torch.no_grad():
        for forget in (images, flipped):
            torch.manual_seed(0)
            losses.append(module.compute_losses({"image": forget}, {"image": retain}))
    assert torch.equal(losses[0]["retain_loss"], losses[1]["retain_loss"])
    assert abs(losses[0]["forget_loss"] - losses[1]["forget_loss"]) > 1e-3 * losses[0]["forget_loss"]
