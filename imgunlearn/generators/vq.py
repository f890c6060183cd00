"""VQ-GAN family: a diffusers ``VQModel``. The embedding is the continuous latent before
quantization (encoder + quant_conv), as in docs/design.md §1."""

from __future__ import annotations

import torch
from diffusers import VQModel
from torch import nn

from .base import Generator, TrainingOutput, conv_encoder_modules


class VQGenerator(Generator):
    family = "vq"
    model_class = VQModel
    description = "VQ-GAN (diffusers VQModel)"

    def embed(self, images: torch.Tensor, probe: None = None) -> torch.Tensor:
        return self.model.encode(images).latents

    def decode(self, embedding: torch.Tensor, probe: None = None) -> torch.Tensor:
        return self.model.decode(embedding).sample

    def encoder_modules(self) -> list[nn.Module]:
        return conv_encoder_modules(self.model.encoder, self.model.quant_conv)

    def training_output(self, inputs: torch.Tensor, images: torch.Tensor | None = None) -> TrainingOutput:
        decoded = self.model.decode(self.embed(inputs))
        return TrainingOutput(decoded.sample, decoded.commit_loss.mean())
