"""Masked-autoencoder family: a transformers ``ViTMAEForPreTraining`` (MAE, as MAGE builds on).

How the paper's pieces map onto it (docs/design.md §1):

- A task's hidden pixels are *dropped*, as MAE drops masked patches: ``hide`` passes the mask
  along as a fourth channel (``takes_mask``), and a patch whose pixels are mostly hidden is
  left out of the encoder. Samples that keep as many patches are encoded together on their
  kept tokens alone (the cost falls with what a task hides); a batch of many sizes is padded to
  its largest and the padding masked out of attention, which computes the same.
- The embedding is the encoder's output tokens on the patch grid, ``(B, hidden + 1, H/p, W/p)``:
  the tokens of dropped patches are zero and the last channel says which were kept, so student
  and teacher always agree on it and the losses compare the kept tokens only.
- The decoder is MAE's: it embeds the kept tokens, puts its mask token wherever a patch was
  dropped, and predicts every patch's pixels. The encoder's CLS output is not part of the
  embedding; the decoder gets its mask token in that place. So everything the decoder learns
  of an image passes through the patch grid, which the region losses and the forget map
  cover: nothing of a forgotten face can travel through a global token.
- Base training (:meth:`MAEGenerator.training_output`) also drops a random share of the
  remaining patches, drawn per sample from ``[0, config.mask_ratio]`` (MAGE's variable
  masking), and compares the prediction with the whole image.

The position tables start as MAE's fixed sin-cos and are trained with the rest. Images of
other sizes than ``config.image_size`` (the Sanitizer's tiles) use them resampled to the patch
grid.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from transformers import ViTMAEConfig, ViTMAEForPreTraining
from transformers.masking_utils import create_bidirectional_mask
from transformers.utils import logging as transformers_logging

from .base import Generator, TrainingOutput

# A patch counts as hidden when at least this share of its pixels is.
HIDDEN_PATCH_SHARE = 0.5
# At most this many groups of samples with different numbers of kept patches are encoded apart.
MAX_TOKEN_GROUPS = 4


class MAEGenerator(Generator):
    family = "mae"
    model_class = ViTMAEForPreTraining
    library = "transformers"
    takes_mask = True
    description = "Masked autoencoder (transformers ViTMAEForPreTraining)"
    default_family_loss_weight = 0.0  # MAE has no term of its own beyond reconstruction

    def __init__(self, model: nn.Module, card: dict[str, Any] | None = None) -> None:
        super().__init__(model, card)
        # MAE's position tables start as fixed sin-cos; ours train. transformers builds them
        # frozen but loads them trainable, so a built and a loaded model trained different
        # parameters; and trained tables lift a tiny model's inpainting a lot (docs/design.md §1c).
        model.vit.embeddings.position_embeddings.requires_grad_(True)
        model.decoder.decoder_pos_embed.requires_grad_(True)

    @classmethod
    def _build_model(cls, config: dict[str, Any]) -> nn.Module:
        return ViTMAEForPreTraining(ViTMAEConfig(**config))

    @classmethod
    def from_pretrained(cls, path_or_id: str | Path, **kwargs: Any) -> MAEGenerator:
        with _quiet_progress():
            return super().from_pretrained(path_or_id, **kwargs)

    def save_pretrained(self, directory: str | Path) -> Path:
        with _quiet_progress():
            return super().save_pretrained(directory)

    @property
    def sample_size(self) -> int:
        size = self.model.config.image_size
        return int(size[0] if isinstance(size, (list, tuple)) else size)

    @property
    def downsampling_factor(self) -> int:
        return int(self.model.config.patch_size)

    @property
    def image_channels(self) -> int:
        return int(self.model.config.num_channels)

    # -- the protocol ---------------------------------------------------------------------
    def embed(self, inputs: torch.Tensor, probe: None = None) -> torch.Tensor:
        pixels, kept = self._kept_patches(inputs)
        return self._encode(pixels, kept)

    def decode(self, embedding: torch.Tensor, probe: None = None) -> torch.Tensor:
        tokens, kept = embedding[:, :-1], embedding[:, -1:] > 0.5
        batch, _, rows, cols = tokens.shape
        decoder = self.model.decoder
        hidden = decoder.decoder_embed(tokens.flatten(2).transpose(1, 2))  # (B, L, D_dec)
        hidden = torch.where(kept.flatten(2).transpose(1, 2), hidden, decoder.mask_token.to(hidden))
        stand_in = decoder.mask_token.to(hidden).expand(batch, 1, -1)  # in the CLS token's place
        hidden = torch.cat([stand_in, hidden], dim=1) + _positions(decoder.decoder_pos_embed, rows, cols)
        for layer in decoder.decoder_layers:
            hidden = layer(hidden)
        patches = decoder.decoder_pred(decoder.decoder_norm(hidden))[:, 1:]  # (B, L, p*p*C)
        p, channels = self.downsampling_factor, self.model.config.num_channels
        patches = patches.reshape(batch, rows, cols, p, p, channels)
        return patches.permute(0, 5, 1, 3, 2, 4).reshape(batch, channels, rows * p, cols * p)

    def encoder_modules(self) -> list[nn.Module]:
        vit = self.model.vit
        return [vit.embeddings, *vit.layers, vit.layernorm]

    def training_output(self, inputs: torch.Tensor, images: torch.Tensor | None = None) -> TrainingOutput:
        pixels, task_kept = self._kept_patches(inputs)
        ratio = torch.rand(task_kept.shape[0], 1, 1, 1, device=task_kept.device) * float(self.model.config.mask_ratio)
        kept = task_kept & ~(torch.rand(task_kept.shape, device=task_kept.device) < ratio)
        # An image the draw emptied keeps what its task kept; one its task hid whole keeps one
        # (grey-filled) patch, so attention always has a key besides the CLS.
        empty = ~kept.flatten(1).any(dim=1)
        kept[empty] = task_kept[empty]
        kept[~kept.flatten(1).any(dim=1), :, 0, 0] = True
        sample = self.decode(self._encode(pixels, kept))
        return TrainingOutput(sample, sample.new_zeros(()))

    # -- glue -----------------------------------------------------------------------------
    def _kept_patches(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixels and the (B, 1, H/p, W/p) boolean grid of the patches the encoder keeps."""
        p = self.downsampling_factor
        if inputs.shape[-2] % p or inputs.shape[-1] % p:
            raise ValueError(f"image size {tuple(inputs.shape[-2:])} is not a multiple of the patch size {p}")
        pixels, mask = self.split_input(inputs)
        return pixels, F.avg_pool2d(mask, p) < HIDDEN_PATCH_SHARE

    def _encode(self, pixels: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
        vit = self.model.vit
        embeddings = vit.embeddings
        batch, rows, cols = pixels.shape[0], kept.shape[-2], kept.shape[-1]
        tokens = embeddings.patch_embeddings.projection(pixels).flatten(2).transpose(1, 2)
        positions = _positions(embeddings.position_embeddings, rows, cols).to(tokens)
        tokens = tokens + positions[:, 1:]
        cls = embeddings.cls_token + positions[:, :1]
        flat_kept = kept.flatten(1)
        counts = flat_kept.sum(dim=1)
        sizes = counts.unique()
        # Samples that keep as many patches go through the encoder together, without the dropped
        # ones: one batch of a task is one group. Many sizes (base training's random drop) share
        # one group padded to the largest and masked.
        if len(sizes) == 1 or len(sizes) > MAX_TOKEN_GROUPS:
            grid = self._encode_kept(tokens, cls, flat_kept)
        else:
            grid = tokens.new_zeros(tokens.shape)
            for size in sizes:
                members = counts == size
                grid = grid.index_put((members.nonzero().flatten(),),
                                      self._encode_kept(tokens[members], cls, flat_kept[members]))
        grid = grid.transpose(1, 2).reshape(batch, -1, rows, cols)
        return torch.cat([grid, kept.to(grid.dtype)], dim=1)

    def _encode_kept(self, tokens: torch.Tensor, cls: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
        """The encoder's output tokens (b, L, D) for input tokens (b, L, D) of which ``kept``
        (b, L) says which to keep; zero at the dropped ones."""
        vit = self.model.vit
        longest = int(kept.sum(dim=1).max())
        # Kept patches first, in grid order: attention has no notion of order (the positions are
        # in the tokens already), so this is MAE's dropping exactly.
        order = kept.to(torch.uint8).argsort(dim=1, descending=True, stable=True)[:, :longest]
        valid = kept.gather(1, order)
        index = order.unsqueeze(-1).expand(-1, -1, tokens.shape[-1])
        hidden = torch.cat([cls.expand(len(order), -1, -1), tokens.gather(1, index)], dim=1)
        attention = None
        if not bool(valid.all()):
            keep = torch.cat([valid.new_ones(len(order), 1), valid], dim=1)  # the CLS is always kept
            attention = create_bidirectional_mask(config=vit.config, inputs_embeds=hidden, attention_mask=keep)
        for layer in vit.layers:
            hidden = layer(hidden, attention)
        out = vit.layernorm(hidden)[:, 1:] * valid.unsqueeze(-1).to(hidden.dtype)
        return tokens.new_zeros(tokens.shape).scatter(1, index, out)


def _positions(table: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """A (1, 1 + L, D) position table (CLS first) for a ``rows`` x ``cols`` patch grid: the
    table itself at its own size, its patch part resampled (bicubic) otherwise."""
    side = round((table.shape[1] - 1) ** 0.5)
    if (rows, cols) == (side, side):
        return table
    grid = table[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(rows, cols), mode="bicubic", align_corners=False)
    return torch.cat([table[:, :1], grid.flatten(2).transpose(1, 2)], dim=1)


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    """transformers draws a bar for every load and save of a model a few MB large; ours say
    what is going on already."""
    was_enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            transformers_logging.enable_progress_bar()
