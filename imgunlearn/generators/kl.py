"""KL autoencoder family: a diffusers ``AutoencoderKL``. The embedding is the posterior mean,
as in docs/design.md §1; base training samples from the posterior and adds its KL divergence."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL
from torch import nn

from .base import Generator, TrainingOutput, conv_encoder_modules


class KLGenerator(Generator):
    family = "kl"
    model_class = AutoencoderKL
    description = "KL autoencoder (diffusers AutoencoderKL)"
    # Per-element KL; small so the posterior mean still carries the image.
    default_family_loss_weight = 1e-3

    def embed(self, images: torch.Tensor, probe: None = None) -> torch.Tensor:
        return self.model.encode(images).latent_dist.mean

    def decode(self, embedding: torch.Tensor, probe: None = None) -> torch.Tensor:
        return self.model.decode(embedding).sample

    def encoder_modules(self) -> list[nn.Module]:
        return conv_encoder_modules(self.model.encoder, self.model.quant_conv)

    def training_output(self, inputs: torch.Tensor, images: torch.Tensor | None = None) -> TrainingOutput:
        posterior = self.model.encode(inputs).latent_dist
        sample = self.decode(posterior.sample())
        # Per-element mean so the weight does not depend on the latent size.
        kl = posterior.kl().mean() / posterior.mean[0].numel()
        return TrainingOutput(sample, kl)
