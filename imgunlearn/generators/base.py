"""The one small protocol every generator family sits behind.

A generator is an encoder E and a decoder D over images in [-1, 1]: ``output = D(E(x))``.
Unlearning needs exactly four things from a family: the embedding E(x) (docs/design.md §1 says which
tensor that is per family), the decoder from that embedding, which modules form the encoder,
and the family's own training term (VQ commitment, KL). Everything else is diffusers'.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn

from ..geometry import latent_cells

CARD_FILENAME = "imgunlearn_card.json"
# Every family, by name: a subclass that names its ``family`` registers itself, so a new
# family is one file (imported by the package) plus a config.
FAMILIES: dict[str, type[Generator]] = {}


class TrainingOutput(NamedTuple):
    """What a family returns for one base-training forward pass."""

    sample: torch.Tensor
    family_loss: torch.Tensor  # VQ commitment + codebook, or KL divergence


class Generator(nn.Module):
    """An encoder-decoder image generator wrapping one diffusers (or transformers) model."""

    family: ClassVar[str]
    model_class: ClassVar[type[nn.Module]]  # a diffusers ModelMixin or a transformers PreTrainedModel
    library: ClassVar[str] = "diffusers"  # whose from_pretrained/save_pretrained the weights use
    description: ClassVar[str]  # for people: the model card's title
    # Weight of training_output's family_loss in base training, per family.
    default_family_loss_weight: ClassVar[float] = 1.0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "family" in cls.__dict__:
            FAMILIES[cls.family] = cls

    def __init__(self, model: nn.Module, card: dict[str, Any] | None = None) -> None:
        super().__init__()
        if not isinstance(model, self.model_class):
            raise TypeError(
                f"{type(self).__name__} wraps a {self.library} {self.model_class.__name__}, "
                f"got {type(model).__name__}"
            )
        self.model = model
        # What this generator has been through (training, unlearning); written next to the
        # weights by save_pretrained so a user can tell what was forgotten and how.
        self.card: dict[str, Any] = dict(card or {})

    # -- construction and I/O -------------------------------------------------------------
    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Generator:
        """Build a randomly initialised generator from a model config (the keyword arguments of
        the diffusers model class, or of the transformers model's config class)."""
        config = {k: v for k, v in config.items() if not k.startswith("_")}
        return cls(cls._build_model(config))

    @classmethod
    def _build_model(cls, config: dict[str, Any]) -> nn.Module:
        return cls.model_class(**config)

    @classmethod
    def from_pretrained(cls, path_or_id: str | Path, **kwargs: Any) -> Generator:
        """Load from a local model directory or a hub id (kwargs go to diffusers or transformers)."""
        if cls.library == "diffusers":
            # low_cpu_mem_usage=False: without `accelerate` diffusers would warn on every load.
            kwargs.setdefault("low_cpu_mem_usage", False)
        model = cls.model_class.from_pretrained(str(path_or_id), **kwargs)
        card_path = Path(path_or_id) / kwargs.get("subfolder", "") / CARD_FILENAME
        card = json.loads(card_path.read_text()) if card_path.is_file() else {}
        return cls(model, card=card)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Save in the library's format (config.json + safetensors) plus the card files."""
        from .card import write_card  # local import: card.py imports this module

        directory = Path(directory)
        # transformers writes safetensors only; diffusers is told to.
        self.model.save_pretrained(directory, **({"safe_serialization": True} if self.library == "diffusers" else {}))
        write_card(directory, self)
        return directory

    @property
    def sample_size(self) -> int:
        size = self.model.config.sample_size
        return int(size[0] if isinstance(size, (list, tuple)) else size)

    @property
    def config(self) -> dict[str, Any]:
        config = self.model.config
        return config.to_dict() if hasattr(config, "to_dict") else dict(config)

    # -- the protocol ---------------------------------------------------------------------
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The embedding the unlearning losses compare (docs/design.md §1)."""
        raise NotImplementedError

    def decode(self, embedding: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] from an embedding."""
        raise NotImplementedError

    def encoder_modules(self) -> list[nn.Module]:
        """The modules that map images to the embedding (the part unlearning trains)."""
        raise NotImplementedError

    def training_output(self, images: torch.Tensor) -> TrainingOutput:
        """Forward pass for base training, with the family's own loss term."""
        raise NotImplementedError

    @property
    def downsampling_factor(self) -> int:
        """Pixels per embedding cell along each side. Tiles and their overlaps are multiples
        of it so neighbouring tiles' grids line up. The diffusers autoencoders halve the
        resolution in every down block but the last; a family built otherwise overrides this."""
        return 2 ** (len(self.config["block_out_channels"]) - 1)

    def hide(self, images: torch.Tensor, mask: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """How this family takes an I2I task's input: the pixels under the (B or 1, 1, H, W)
        ``mask`` hidden. Pixel-space families fill them with ``fill`` (0 = mid grey); a family
        that drops masked patches instead (MAE) overrides this."""
        from ..tasks import apply_mask

        return apply_mask(images, mask, fill)

    def latent_mask(self, pixel_mask: torch.Tensor, dilate: int = 0) -> torch.Tensor:
        """A (B, 1, H, W) pixel mask on the embedding's grid: a cell counts as soon as a pixel
        under it is masked, then ``dilate`` cells are added around (the encoder's receptive
        field spills over a box's edge)."""
        f = self.downsampling_factor
        return latent_cells(pixel_mask, (pixel_mask.shape[-2] // f, pixel_mask.shape[-1] // f), dilate)

    # -- derived --------------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode(self.embed(images))

    def encoder_parameters(self) -> list[nn.Parameter]:
        return [p for module in self.encoder_modules() for p in module.parameters()]

    def decoder_parameters(self) -> list[nn.Parameter]:
        encoder_ids = {id(p) for p in self.encoder_parameters()}
        return [p for p in self.parameters() if id(p) not in encoder_ids]
