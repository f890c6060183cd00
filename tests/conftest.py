"""Shared fixtures: tiny real diffusers and transformers generators and a small synthetic image set on disk."""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from pathlib import Path
from types import ModuleType

import pytest
import torch

from imgunlearn import train_generator
from imgunlearn.builders.toy import make_toy_dataset
from imgunlearn.generators import Generator, build_generator

torch.set_num_threads(min(2, os.cpu_count() or 1))
warnings.filterwarnings("ignore", message=".*does not have many workers.*")

# 16 px images, one downsampling: an 8x8 embedding. Real diffusers models, just small.
TINY_CONFIG = {
    "sample_size": 16,
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
    "block_out_channels": [8, 16],
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "latent_channels": 4,
    "mid_block_add_attention": False,
}
# The same 8x8 embedding grid from a transformers ViT-MAE: 2 px patches of 16 px images.
TINY_MAE_CONFIG = {
    "image_size": 16, "patch_size": 2, "num_channels": 3, "hidden_size": 16, "num_hidden_layers": 2,
    "num_attention_heads": 2, "intermediate_size": 32, "decoder_hidden_size": 16, "decoder_num_hidden_layers": 1,
    "decoder_num_attention_heads": 2, "decoder_intermediate_size": 32, "mask_ratio": 0.5,
}
# And from a diffusers UNet2DModel (Palette-like): noisy target + input + mask in, noise out.
TINY_DIFFUSION_CONFIG = {
    "sample_size": 16, "in_channels": 7, "out_channels": 3, "block_out_channels": [8, 16],
    "down_block_types": ["DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"],
    "layers_per_block": 1, "norm_num_groups": 8, "scheduler": {"num_train_timesteps": 100}, "sampling": {"steps": 4},
}
TINY_CONFIGS = {"kl": TINY_CONFIG, "vq": {**TINY_CONFIG, "num_vq_embeddings": 32, "vq_embed_dim": 4},
                "mae": TINY_MAE_CONFIG, "diffusion": TINY_DIFFUSION_CONFIG}
FAMILIES = tuple(TINY_CONFIGS)


def tiny_generator(family: str, seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    return build_generator(family, TINY_CONFIGS[family])


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models and MTCNN run faster on one intra-op thread than fighting another job for two
    on a busy 2-core machine; use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture
def generator(family) -> Generator:
    return tiny_generator(family)


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory) -> dict[str, Path]:
    """16 px round shapes (the forget concept) and angular shapes (the retain concept)."""
    return make_toy_dataset(tmp_path_factory.mktemp("toy"), per_concept=24, size=16, seed=0)


@pytest.fixture(scope="session")
def trained(toy_data, tmp_path_factory) -> dict:
    """A briefly trained base per family, so the baselines act on a working generator."""
    bases = {}
    for family in FAMILIES:
        spec = {"family": family, "config": TINY_CONFIGS[family]}
        bases[family] = train_generator(spec, toy_data["round"].parent, max_steps=60, batch_size=16,
                                        lr=3e-3, warmup_steps=5, progress=False,
                                        output_dir=tmp_path_factory.mktemp(f"base-{family}"))
    return bases


def state_copy(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def load_script(name: str) -> ModuleType:
    """``scripts/NAME.py`` as a module (registered, so its dataclasses can find it)."""
    path = Path(__file__).resolve().parent.parent / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def astronaut_with_unlearned_pair(folder: Path, toy_data: dict[str, Path]) -> Path:
    """A tiny KL base (``folder/base``) and its unlearned model (``folder/model``), briefly
    unlearned on the toy shapes, and the manifest of two tiles of scikit-image's astronaut
    (her face, and a plain corner) that the forget-map benchmarks measure on."""
    from PIL import Image
    from skimage import data as skimage_data

    from imgunlearn import unlearn

    base = tiny_generator("kl")
    base.save_pretrained(folder / "base")
    unlearn(base, toy_data["round"], toy_data["angular"], max_steps=2, batch_size=4, progress=False,
            trainer_options={"logger": False, "enable_model_summary": False}).save_pretrained(folder / "model")
    photo = Image.fromarray(skimage_data.astronaut())
    return face_tile_manifest(folder, photo, (100, 0, 356, 256), [81, 62, 168, 172], (256, 256, 512, 512))


def face_tile_manifest(folder: Path, photo, face_window: tuple, face_box: list, plain_window: tuple) -> Path:
    """A manifest of two tiles cut from ``photo`` (a PIL image): ``face.png`` (forget, one face
    box in tile pixels) and ``plain.png`` (retain, no face)."""
    import json

    photo.crop(face_window).save(folder / "face.png")
    photo.crop(plain_window).save(folder / "plain.png")
    rows = [{"path": "face.png", "split": "forget", "boxes": [face_box]},
            {"path": "plain.png", "split": "retain", "boxes": []}]
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest
