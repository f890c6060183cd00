"""Palette-like inpainting diffusion family: a diffusers ``UNet2DModel`` that sees the noisy
target, the task's input image and its mask, concatenated (``in_channels = 2 * out_channels + 1``);
a diffusers ``DDPMScheduler`` for training and ``DDIMScheduler`` (same betas) for sampling.

How the paper's pieces map onto it (docs/design.md §1d):

- The encoder is the UNet's input convolution, down blocks and mid block; the decoder its up
  blocks and output layers, and the timestep embedding, which both halves use and unlearning
  leaves frozen.
- The embedding is every feature map the encoder passes on: each skip connection and the mid
  block's output, at one timestep t and one noise draw. So that it is one grid like the other
  families', each map is folded onto the coarsest grid (``pixel_unshuffle``, lossless) and
  the maps are concatenated along channels, each scaled so that the mean squared difference
  over the grid is the mean of the per-map MSEs (the authors' code sums per-map MSEs).
- (t, noise, x) is a *probe*: :meth:`DiffusionGenerator.draw_probe` draws t and the noise per
  sample for a training step (student and teacher share them) and keeps the whole image x,
  which is what gets noised into the noisy target ``y_t``, as in base training and as sampling
  approaches it (the authors' code noises the ground truth too). A forget target's probe holds the target
  image instead (:meth:`DiffusionGenerator.probe_on`).
- Without a probe (the forget map, the Sanitizer: only the input is known) a fixed one
  (``probe_timestep``, seeded noise) noises the *visible* input (the task's hidden pixels
  filled), so the embedding is a deterministic function of ``T(x)``; for reconstruction that
  is the clean image, as in training.
- Output (:meth:`DiffusionGenerator.forward`) is DDIM sampling from seeded noise, conditioned on
  the input: ``sampling["steps"]`` UNet passes per image.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, NamedTuple

import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from torch import nn
from torch.nn import functional as F

from ..errors import InvalidSettingError
from ..fileio import write_json_atomic
from .base import Generator, TrainingOutput

SAMPLING_FILENAME = "imgunlearn_sampling.json"
DEFAULT_SAMPLING = {"steps": 20, "seed": 0, "probe_timestep": None}  # None: a quarter of the training steps


class Probe(NamedTuple):
    """Where a diffusion embedding is taken: per-sample timesteps (B,), noise like the image, and
    the whole images noised into the noisy target (None: the task's visible input)."""

    timesteps: torch.Tensor
    noise: torch.Tensor
    images: torch.Tensor | None = None


class DiffusionGenerator(Generator):
    family = "diffusion"
    model_class = UNet2DModel
    description = "Palette-like inpainting diffusion (diffusers UNet2DModel, DDPM training, DDIM sampling)"
    takes_mask = True
    default_family_loss_weight = 0.0

    def __init__(self, model: nn.Module, card: dict[str, Any] | None = None,
                 scheduler: DDPMScheduler | None = None, sampling: dict[str, Any] | None = None) -> None:
        super().__init__(model, card)
        config = model.config
        if config.in_channels != 2 * config.out_channels + 1:
            raise InvalidSettingError(
                f"a diffusion generator's UNet sees the noisy target, the input and its mask: in_channels must be "
                f"2 * out_channels + 1 = {2 * config.out_channels + 1}, got {config.in_channels}")
        unsupported = [name for name in (*config.down_block_types, *config.up_block_types) if "Skip" in name]
        if unsupported or model.class_embedding is not None or config.time_embedding_type != "positional":
            raise InvalidSettingError(
                "the diffusion family takes UNet2DModel's plain and attention blocks with positional timestep "
                f"embeddings, without class conditioning (got {unsupported or config.time_embedding_type})")
        self.scheduler = scheduler or DDPMScheduler()
        unknown = set(sampling or {}) - set(DEFAULT_SAMPLING)
        if unknown:
            raise InvalidSettingError(f"unknown sampling setting(s) {sorted(unknown)}; known: {sorted(DEFAULT_SAMPLING)}")
        self.sampling = {**DEFAULT_SAMPLING, **(sampling or {})}

    # -- construction and I/O -------------------------------------------------------------
    @classmethod
    def from_config(cls, config: dict[str, Any]) -> DiffusionGenerator:
        """The UNet2DModel's keyword arguments, plus ``scheduler`` (DDPMScheduler's) and
        ``sampling`` (``steps``, ``seed``, ``probe_timestep``)."""
        config = {k: v for k, v in config.items() if not k.startswith("_")}
        scheduler, sampling = config.pop("scheduler", None) or {}, config.pop("sampling", None) or {}
        return cls(UNet2DModel(**config), scheduler=DDPMScheduler(**scheduler), sampling=sampling)

    @classmethod
    def from_pretrained(cls, path_or_id: str | Path, **kwargs: Any) -> DiffusionGenerator:
        generator = super().from_pretrained(path_or_id, **kwargs)
        folder = Path(path_or_id) / kwargs.get("subfolder", "")
        if (folder / DDPMScheduler.config_name).is_file():
            generator.scheduler = DDPMScheduler.from_pretrained(folder)
        if (folder / SAMPLING_FILENAME).is_file():
            generator.sampling = {**DEFAULT_SAMPLING, **json.loads((folder / SAMPLING_FILENAME).read_text())}
        return generator

    def save_pretrained(self, directory: str | Path) -> Path:
        directory = super().save_pretrained(directory)
        self.scheduler.save_pretrained(directory)
        write_json_atomic(self.sampling, directory / SAMPLING_FILENAME)
        return directory

    @property
    def image_channels(self) -> int:
        return int(self.model.config.out_channels)

    @property
    def probe_timestep(self) -> int:
        fixed = self.sampling["probe_timestep"]
        return int(self.scheduler.config.num_train_timesteps // 4 if fixed is None else fixed)

    # -- the protocol ---------------------------------------------------------------------
    def draw_probe(self, images: torch.Tensor) -> Probe:
        """A timestep and a noise draw per sample for one training step, on the whole ``images``."""
        batch, (height, width) = images.shape[0], images.shape[-2:]
        timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (batch,), device=images.device)
        noise = torch.randn(batch, self.image_channels, height, width, device=images.device, dtype=images.dtype)
        return Probe(timesteps, noise, images)

    def probe_on(self, probe: Probe, images: torch.Tensor) -> Probe:
        return probe._replace(images=images)

    def fixed_probe(self, inputs: torch.Tensor) -> Probe:
        """The probe of :meth:`embed` without one: ``probe_timestep`` and seeded noise, the same
        for every image of a size."""
        batch, (height, width) = inputs.shape[0], inputs.shape[-2:]
        seeded = torch.Generator().manual_seed(int(self.sampling["seed"]))
        noise = torch.randn(1, self.image_channels, height, width, generator=seeded)
        timesteps = torch.full((batch,), self.probe_timestep, dtype=torch.long, device=inputs.device)
        return Probe(timesteps, noise.to(inputs.device, inputs.dtype).expand(batch, -1, -1, -1))

    def embed(self, inputs: torch.Tensor, probe: Probe | None = None) -> torch.Tensor:
        probe = probe or self.fixed_probe(inputs)
        image = self.split_input(inputs)[0] if probe.images is None else probe.images
        noisy = self.scheduler.add_noise(image, probe.noise, probe.timesteps)
        return self._fold(self._encode(self._unet_input(noisy, inputs), probe.timesteps))

    def decode(self, embedding: torch.Tensor, probe: Probe | None = None) -> torch.Tensor:
        """The up blocks on an embedding: the predicted noise of that one step (not an image;
        :meth:`forward` samples images)."""
        batch = embedding.shape[0]
        timesteps = (probe.timesteps if probe is not None
                     else torch.full((batch,), self.probe_timestep, dtype=torch.long, device=embedding.device))
        return self._decode(self._unfold(embedding), timesteps)

    def encoder_modules(self) -> list[nn.Module]:
        unet = self.model
        return [unet.conv_in, *unet.down_blocks] + ([unet.mid_block] if unet.mid_block is not None else [])

    def training_output(self, inputs: torch.Tensor, images: torch.Tensor | None = None) -> TrainingOutput:
        """DDPM's loss: the noise added to the *whole* image at a random timestep, predicted
        from the noisy image and the task's input."""
        images = self.split_input(inputs)[0] if images is None else images
        prediction, noise = self.prediction(inputs, images, self.draw_probe(images))
        return TrainingOutput(prediction, prediction.new_zeros(()), target=noise)

    def prediction(self, inputs: torch.Tensor, targets: torch.Tensor,
                   probe: Probe | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        probe = probe or self.draw_probe(targets)
        noisy = self.scheduler.add_noise(targets, probe.noise, probe.timesteps)
        unet_input = self._unet_input(noisy, inputs)
        return self._decode(self._encode(unet_input, probe.timesteps), probe.timesteps), probe.noise

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Images: DDIM sampling conditioned on ``inputs``, from noise seeded by ``sampling["seed"]``."""
        image, _ = self.split_input(inputs)
        sampler = DDIMScheduler.from_config(self.scheduler.config)
        sampler.set_timesteps(int(self.sampling["steps"]), device=inputs.device)
        seeded = torch.Generator().manual_seed(int(self.sampling["seed"]))
        sample = torch.randn(image.shape, generator=seeded).to(image)
        for t in sampler.timesteps:
            timesteps = t.expand(image.shape[0]).to(inputs.device)
            noise = self._decode(self._encode(self._unet_input(sample, inputs), timesteps), timesteps)
            sample = sampler.step(noise, t, sample).prev_sample
        return sample.clamp(-1, 1)

    # -- glue: UNet2DModel.forward split at the mid block -----------------------------------
    def _unet_input(self, noisy: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        image, mask = self.split_input(inputs)
        return torch.cat([noisy, image, mask], dim=1)

    def _time(self, timesteps: torch.Tensor) -> torch.Tensor:
        unet = self.model
        return unet.time_embedding(unet.time_proj(timesteps).to(unet.dtype))

    def _encode(self, sample: torch.Tensor, timesteps: torch.Tensor) -> list[torch.Tensor]:
        unet, emb = self.model, self._time(timesteps)
        if unet.config.center_input_sample:
            sample = 2 * sample - 1.0
        sample = unet.conv_in(sample)
        features = [sample]
        for block in unet.down_blocks:
            sample, skips = block(hidden_states=sample, temb=emb)
            features.extend(skips)
        if unet.mid_block is not None:
            sample = unet.mid_block(sample, emb)
        return features + [sample]

    def _decode(self, features: list[torch.Tensor], timesteps: torch.Tensor) -> torch.Tensor:
        unet, emb = self.model, self._time(timesteps)
        skips, sample = features[:-1], features[-1]
        for block in unet.up_blocks:
            used, skips = skips[-len(block.resnets):], skips[:-len(block.resnets)]
            sample = block(sample, tuple(used), emb)
        return unet.conv_out(unet.conv_act(unet.conv_norm_out(sample)))

    def _layout(self) -> list[tuple[int, int]]:
        """(channels, fold) of each feature map the encoder passes on, fold being its side over
        the coarsest grid's."""
        unet, fold = self.model, self.downsampling_factor
        layout = [(unet.conv_in.out_channels, fold)]
        for block in unet.down_blocks:
            channels = block.resnets[-1].out_channels
            layout += [(channels, fold)] * len(block.resnets)
            if block.downsamplers is not None:
                fold //= 2
                layout.append((channels, fold))
        if unet.mid_block is not None:
            layout.append((unet.mid_block.resnets[-1].out_channels, fold))
        return layout

    def _scales(self) -> list[float]:
        """Per map, the factor that makes the grid's mean square the mean of per-map means."""
        sizes = [channels * fold ** 2 for channels, fold in self._layout()]
        return [math.sqrt(sum(sizes) / (len(sizes) * size)) for size in sizes]

    def _fold(self, features: list[torch.Tensor]) -> torch.Tensor:
        layout = self._layout()
        return torch.cat([F.pixel_unshuffle(feature, fold) * scale
                          for feature, (_, fold), scale in zip(features, layout, self._scales())], dim=1)

    def _unfold(self, embedding: torch.Tensor) -> list[torch.Tensor]:
        features, start = [], 0
        for (channels, fold), scale in zip(self._layout(), self._scales()):
            width = channels * fold ** 2
            features.append(F.pixel_shuffle(embedding[:, start:start + width] / scale, fold))
            start += width
        return features
