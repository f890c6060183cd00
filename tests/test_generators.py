import json

import pytest
import torch
from diffusers import AutoencoderKL, VQModel

import imgunlearn
from imgunlearn.generators import CARD_FILENAME, KLGenerator, VQGenerator, build_generator, load_generator

from conftest import TINY_CONFIG, tiny_generator


def test_protocol_shapes_and_encoder_split(generator):
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    embedding = generator.embed(images)
    assert embedding.shape == (2, 4, 8, 8)
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
    # Plain diffusers loads it too, and the card says what was forgotten.
    plain = {"kl": AutoencoderKL, "vq": VQModel}[generator.family].from_pretrained(tmp_path / "model")
    assert isinstance(plain, generator.model_class)
    card = json.loads((tmp_path / "model" / CARD_FILENAME).read_text())
    assert card["family"] == generator.family and card["history"][0]["objective"] == "ours"
    readme = (tmp_path / "model" / "README.md").read_text()
    assert "What was forgotten" in readme and "faces" in readme
    assert (tmp_path / "model" / "diffusion_pytorch_model.safetensors").is_file()


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
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_generator(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(ValueError, match="UNet2DModel"):
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
