import json
import time

import pytest
import torch
from diffusers import AutoencoderKL, VQModel

import imgunlearn
from imgunlearn.generators import (CARD_FILENAME, KLGenerator, VQGenerator, build_generator, fast_dtype, fast_layout,
                                   inference_layout, load_generator)

from conftest import TINY_CONFIG, tiny_generator


def test_protocol_shapes_and_encoder_split(generator):
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    embedding = generator.embed(images)
    assert embedding.shape[0] == 2 and embedding.shape[-2:] == (8, 8)
    assert generator.decode(embedding).shape == images.shape
    encoder = {id(p) for p in generator.encoder_parameters()}
    decoder = {id(p) for p in generator.decoder_parameters()}
    assert encoder and decoder and not encoder & decoder
    assert encoder | decoder == {id(p) for p in generator.parameters()}
    output = generator.training_output(images)
    assert output.sample.shape == images.shape and output.family_loss.ndim == 0


def test_vq_embedding_is_the_latent_before_quantization():
    generator = build_generator("vq", {**TINY_CONFIG, "num_vq_embeddings": 8})
    images = torch.rand(1, 3, 16, 16)
    embedding = generator.embed(images)
    quantized, _, _ = generator.model.quantize(embedding)
    assert not torch.allclose(embedding, quantized)  # continuous, not yet snapped to the codebook


def test_kl_embedding_is_the_posterior_mean():
    generator = build_generator("kl", TINY_CONFIG)
    images = torch.rand(1, 3, 16, 16)
    posterior = generator.model.encode(images).latent_dist
    assert torch.equal(generator.embed(images), posterior.mean)


def test_save_load_round_trip_gives_identical_outputs(generator, tmp_path):
    generator.card = {"history": [{"stage": "unlearn", "objective": "ours", "forget": "faces",
                                   "forget_images": 3, "retain": "rest", "retain_images": 5}]}
    generator.save_pretrained(tmp_path / "model")
    loaded = load_generator(tmp_path / "model")
    assert type(loaded) is type(generator)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(generator.eval()(images), loaded.eval()(images))
    # Plain diffusers (transformers for MAE) loads it too, and the card says what was forgotten.
    plain = generator.model_class.from_pretrained(tmp_path / "model")
    assert type(plain) is generator.model_class
    card = json.loads((tmp_path / "model" / CARD_FILENAME).read_text())
    assert card["family"] == generator.family and card["history"][0]["objective"] == "ours"
    readme = (tmp_path / "model" / "README.md").read_text()
    assert "What was forgotten" in readme and "faces" in readme
    assert f"library_name: {generator.library}" in readme and generator.model_class.__name__ in readme
    weights = "model.safetensors" if generator.library == "transformers" else "diffusion_pytorch_model.safetensors"
    assert (tmp_path / "model" / weights).is_file() and not list((tmp_path / "model").glob("*.bin"))


def test_inference_layout_is_channels_last_on_a_cpu_and_restored_after(tmp_path):
    assert fast_layout("cpu") == torch.channels_last and fast_layout("cuda") == torch.contiguous_format
    generator = build_generator("kl", TINY_CONFIG).eval()
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        expected = generator(images)
        with inference_layout(generator, "cpu"):
            weight = generator.model.encoder.conv_in.weight
            assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
            assert torch.allclose(generator(images), expected, atol=1e-5)
        with pytest.raises(RuntimeError, match="inside"), inference_layout(generator, "cpu"):
            raise RuntimeError("inside")
    assert all(p.is_contiguous() for p in generator.parameters())
    # A generator left channels-last (a Sanitizer's, say) still saves: safetensors wants contiguous tensors.
    generator.to(memory_format=torch.channels_last).save_pretrained(tmp_path / "model")
    with torch.no_grad():
        assert torch.equal(load_generator(tmp_path / "model").eval()(images), generator(images))


def test_fast_dtype_is_bf16_only_on_a_cpu_that_runs_it_natively(monkeypatch):
    assert fast_dtype("cuda") == torch.float32 and fast_dtype(torch.device("cuda", 1)) == torch.float32
    for amx, avx512_bf16, expected in [(False, False, torch.float32), (True, False, torch.bfloat16),
                                       (False, True, torch.bfloat16)]:
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda value=amx: value, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda value=avx512_bf16: value, raising=False)
        assert fast_dtype("cpu") == expected
    # A torch without these checks (an older or newer release) falls back to float32.
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    assert fast_dtype("cpu") == torch.float32


def test_public_api_loads_plain_diffusers_directories(tmp_path):
    AutoencoderKL(**TINY_CONFIG).save_pretrained(tmp_path / "kl")
    VQModel(**TINY_CONFIG).save_pretrained(tmp_path / "vq")
    assert isinstance(imgunlearn.load_generator(tmp_path / "kl"), KLGenerator)
    assert isinstance(imgunlearn.load_generator(str(tmp_path / "vq")), VQGenerator)


def test_load_errors_name_the_path(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="no such generator directory"):
        load_generator(tmp_path / "missing")
    # A typo under an existing folder reads like a hub id ("owner/name"); it is refused at once,
    # not looked up on the hub (which took 31 s of retries).
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(FileNotFoundError, match="runs/nope: no such generator directory"):
        load_generator("runs/nope")
    # Where no such folder exists it may be a hub id: one metadata request says at once that
    # there is no such model, or (offline, as here and in CI) that the hub cannot be reached.
    started = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="nobody-here/no-such-model: no such generator directory, and"):
        load_generator("nobody-here/no-such-model")
    assert time.perf_counter() - started < 15  # not half a minute of download retries
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_generator(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    with pytest.raises(ValueError, match="UNet2DConditionModel"):
        load_generator(tmp_path / "other")
    with pytest.raises(ValueError, match="unknown generator family"):
        build_generator("mae2", TINY_CONFIG)


def test_unreachable_hub_id_gives_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # so "someone/model" is not a local folder
    with pytest.raises(FileNotFoundError, match="neither a local generator directory nor a reachable hub id"):
        load_generator("someone/model", local_files_only=True)


def test_the_contract_owns_the_family_knowledge(family):
    """Factor, latent mask and how a task's input is hidden come from the generator, and the
    family registers itself: nothing outside generators/ reads a family's config."""
    from imgunlearn.generators import FAMILIES
    from imgunlearn.tasks import Task

    generator = tiny_generator(family)
    assert FAMILIES[family] is type(generator) and generator.description
    factor = generator.downsampling_factor
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    assert generator.embed(images).shape[-2:] == (16 // factor, 16 // factor)
    mask = torch.zeros(2, 1, 16, 16)
    mask[0, :, 0:factor, 0:factor] = 1  # cell (0, 0) only
    cells = generator.latent_mask(mask)
    assert cells.shape == (2, 1, 16 // factor, 16 // factor) and cells.sum() == 1 and cells[0, 0, 0, 0] == 1
    assert generator.latent_mask(mask, dilate=1).sum() == 4
    hidden = Task("center_inpaint")(images, generator)
    assert torch.equal(hidden, generator.hide(images, Task("center_inpaint").mask(16, 16)))
    assert torch.equal(Task("reconstruct")(images, generator), images)


def test_mae_drops_hidden_patches_exactly_as_mae_does():
    """A task's hidden patches are left out of the encoder: the kept tokens come out as if the
    hidden ones had been removed from the sequence (MAE), and their grid cells are empty."""
    from imgunlearn.generators.mae import _positions
    from imgunlearn.tasks import Task

    generator = tiny_generator("mae").eval()
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    hidden = Task("center_inpaint")(images, generator)
    assert hidden.shape == (2, 4, 16, 16)  # the mask travels as a fourth channel
    embedding = generator.embed(hidden)
    kept = embedding[:, -1].flatten(1) > 0.5
    assert kept[0].tolist() == kept[1].tolist() and int((~kept[0]).sum()) == 16  # the centre 4x4 patches
    assert torch.equal(embedding[:, :-1].flatten(2).transpose(1, 2)[~kept], torch.zeros(32, 16))

    # The same tokens by removing the hidden patches from the sequence, with transformers' layers.
    vit = generator.model.vit
    tokens = vit.embeddings.patch_embeddings.projection(images).flatten(2).transpose(1, 2)
    positions = _positions(vit.embeddings.position_embeddings, 8, 8)
    cls = (vit.embeddings.cls_token + positions[:, :1]).expand(2, -1, -1)
    sequence = torch.cat([cls, (tokens + positions[:, 1:])[kept].reshape(2, 48, 16)], dim=1)
    for layer in vit.layers:
        sequence = layer(sequence)
    dropped_for_real = vit.layernorm(sequence)[:, 1:].reshape(96, 16)
    ours = embedding[:, :-1].flatten(2).transpose(1, 2)[kept]
    assert torch.allclose(ours, dropped_for_real, atol=1e-5)
    # Nothing under the hidden pixels reaches the output.
    changed = images.clone()
    changed[:, :, 4:12, 4:12] = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(generator(hidden), generator(Task("center_inpaint")(changed, generator)))


@pytest.mark.parametrize("padded", [False, True], ids=["grouped", "padded"])
def test_mae_batches_mixing_tasks_embed_each_image_as_alone(padded):
    """A batch whose samples keep different numbers of patches (tasks mixed per sample, or
    base training's random drop) gives every sample the tokens it gets alone, where its kept
    patches are its whole sequence: in groups of equal size (few sizes) or padded and masked
    (many sizes)."""
    from imgunlearn.generators import mae
    from imgunlearn.tasks import Task

    generator = tiny_generator("mae").eval()
    images = torch.rand(6, 3, 16, 16) * 2 - 1
    tasks = ["reconstruct", "center_inpaint", "outpaint"] * 2
    masks = torch.stack([Task(name).mask(16, 16) for name in tasks])
    if padded:  # hide a different extra number of patches in each sample
        for i in range(6):
            masks[i, 0, 6:8, : 2 * i] = 1.0
    inputs = generator.hide(images, masks)
    sizes = len(generator._kept_patches(inputs)[1].flatten(1).sum(dim=1).unique())
    assert (sizes > mae.MAX_TOKEN_GROUPS) == padded
    together = generator.embed(inputs)
    for i in range(6):
        assert torch.allclose(together[i], generator.embed(inputs[i:i + 1])[0], atol=1e-5), tasks[i]
    together[:, :-1].square().sum().backward()
    assert generator.model.vit.embeddings.patch_embeddings.projection.weight.grad.abs().sum() > 0


def test_mae_loads_plain_transformers_directories_and_other_tile_sizes(tmp_path):
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    from conftest import TINY_MAE_CONFIG

    ViTMAEForPreTraining(ViTMAEConfig(**TINY_MAE_CONFIG)).save_pretrained(tmp_path / "mae")
    generator = imgunlearn.load_generator(tmp_path / "mae")
    assert generator.family == "mae" and generator.sample_size == 16 and generator.downsampling_factor == 2
    # Sanitizer tiles need not be the training size: the position tables are resampled.
    with torch.no_grad():
        assert generator(torch.rand(1, 3, 24, 40)).shape == (1, 3, 24, 40)
    with pytest.raises(ValueError, match="multiple of the patch size 2"):
        generator.embed(torch.rand(1, 3, 15, 16))


def test_mae_position_tables_train_and_survive_save_and_load(tmp_path):
    """A built and a loaded MAE train the same parameters (transformers builds the sin-cos
    tables frozen but loads them trainable), and trained tables come back as saved."""
    from imgunlearn.tasks import Task

    generator = tiny_generator("mae")
    frozen = [name for name, parameter in generator.named_parameters() if not parameter.requires_grad]
    assert frozen == []
    table = generator.model.vit.embeddings.position_embeddings
    sincos = table.detach().clone()
    optimizer = torch.optim.SGD(generator.parameters(), lr=0.5)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    generator.training_output(Task("outpaint")(images, generator)).sample.square().mean().backward()
    optimizer.step()
    assert not torch.equal(table.detach(), sincos)
    generator.save_pretrained(tmp_path)
    loaded = load_generator(tmp_path)
    assert all(parameter.requires_grad for parameter in loaded.parameters())
    for name, value in generator.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name


def test_mae_training_drops_random_patches_up_to_the_mask_ratio():
    generator = tiny_generator("mae").eval()
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        generator.model.config.mask_ratio = 0.0
        assert torch.equal(generator.training_output(images).sample, generator(images))
        generator.model.config.mask_ratio = 0.9
        torch.manual_seed(0)
        assert not torch.equal(generator.training_output(images).sample, generator(images))
        generator.model.config.mask_ratio = 1.0  # never every patch: one is always kept
        assert torch.isfinite(generator.training_output(images).sample).all()


def test_diffusion_encoder_and_decoder_are_the_unet_split_at_the_mid_block():
    """The embedding holds every feature map the encoder passes on (skips and mid block),
    folded losslessly onto one grid and weighted so its mean square is the maps' mean MSE."""
    from imgunlearn.tasks import Task

    generator = tiny_generator("diffusion").eval()
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    inputs = Task("center_inpaint")(images, generator)
    assert inputs.shape == (2, 7 - 3, 16, 16)  # the input image and its mask; the noisy target is added inside
    torch.manual_seed(0)
    probe = generator.draw_probe(images)
    noisy = generator.scheduler.add_noise(images, probe.noise, probe.timesteps)
    unet_input = torch.cat([noisy, inputs], dim=1)
    with torch.no_grad():
        whole = generator.model(unet_input, probe.timesteps).sample
        features = generator._encode(unet_input, probe.timesteps)
        assert torch.equal(generator._decode(features, probe.timesteps), whole)
        unfolded = generator._unfold(generator._fold(features))
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(features, unfolded))
        assert len(features) == 5  # conv_in, two level-1 maps, one level-2 map, the mid block
        other = [f + 0.1 * torch.randn_like(f) for f in features]
        per_map = torch.stack([((a - b) ** 2).mean() for a, b in zip(features, other)]).mean()
        assert torch.allclose(((generator._fold(features) - generator._fold(other)) ** 2).mean(), per_map)
        # The prediction the baselines compare is this same split UNet on the targets' noisy version.
        predicted, noise = generator.prediction(inputs, images, probe)
        assert torch.equal(noise, probe.noise) and torch.allclose(predicted, generator.model(
            torch.cat([noisy, inputs], dim=1), probe.timesteps).sample)


def test_diffusion_probes_samples_and_round_trips(tmp_path):
    from imgunlearn.tasks import Task

    generator = tiny_generator("diffusion").eval()
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        # Without a probe the embedding is a fixed function of the input (the forget map's).
        assert torch.equal(generator.embed(images), generator.embed(images))
        probe = generator.draw_probe(images)
        assert probe.timesteps.shape == (2,) and probe.noise.shape == images.shape
        assert not torch.equal(generator.embed(images, probe), generator.embed(images))
        # At a training probe the noisy target is the whole image, hidden pixels included (as in
        # base training and sampling); probe_on puts a forget target's image there instead.
        inputs = Task("center_inpaint")(images, generator)
        noisy = generator.scheduler.add_noise(images, probe.noise, probe.timesteps)
        assert torch.equal(generator.embed(inputs, probe), generator._fold(
            generator._encode(torch.cat([noisy, inputs], dim=1), probe.timesteps)))
        target_probe = generator.probe_on(probe, torch.zeros_like(images))
        assert torch.equal(target_probe.noise, probe.noise) and torch.equal(target_probe.timesteps, probe.timesteps)
        assert not torch.equal(generator.embed(inputs, target_probe), generator.embed(inputs, probe))
        # Sampling is seeded and conditioned on the input; hidden pixels never reach it.
        changed = images.clone()
        changed[:, :, 4:12, 4:12] = torch.rand(2, 3, 8, 8)
        assert torch.equal(generator(inputs), generator(Task("center_inpaint")(changed, generator)))
        assert not torch.equal(generator(inputs), generator(images))
    generator.sampling["steps"] = 3
    generator.save_pretrained(tmp_path / "d")
    loaded = load_generator(tmp_path / "d").eval()
    assert loaded.sampling["steps"] == 3 and loaded.scheduler.config.num_train_timesteps == 100
    with torch.no_grad():
        assert torch.equal(loaded(inputs), generator(inputs))


def test_diffusion_configs_that_cannot_work_are_refused():
    from conftest import TINY_DIFFUSION_CONFIG

    with pytest.raises(ValueError, match="in_channels must be 2 \\* out_channels \\+ 1 = 7"):
        build_generator("diffusion", {**TINY_DIFFUSION_CONFIG, "in_channels": 6})
    with pytest.raises(ValueError, match="unknown sampling setting"):
        build_generator("diffusion", {**TINY_DIFFUSION_CONFIG, "sampling": {"stpes": 3}})
