"""The one small protocol every generator family sits behind.

A generator is an encoder E and a decoder D over images in [-1, 1]: ``output = D(E(x))``.
Unlearning needs exactly four things from a family: the embedding E(x) (docs/design.md §1 says which
tensor that is per family), the decoder from that embedding, which modules form the encoder,
and the family's own training term (VQ commitment, KL). Everything else is diffusers'.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn

from ..geometry import latent_cells

CARD_FILENAME = "imgunlearn_card.json"
# Every family, by name: a subclass that names its ``family`` registers itself, so a new
# family is one file (imported by the package) plus a config.
FAMILIES: dict[str, type[Generator]] = {}


def fast_layout(device: torch.device | str) -> torch.memory_format:
    """The memory layout convolutions run fastest in, forward only, on ``device``.

    Channels-last on a CPU: oneDNN's convolutions ran the demo's KL generator 1.6–1.8× faster
    on one 2-core CPU, encoder and decoder alike, and no slower on another (docs/benchmarks.md).
    Contiguous elsewhere: on an H100 the KL family's group norms made channels-last slower.
    Training keeps the contiguous layout, since a forward and backward pass was slower
    channels-last on the first CPU.
    """
    return torch.channels_last if torch.device(device).type == "cpu" else torch.contiguous_format


def fast_dtype(device: torch.device | str) -> torch.dtype:
    """The floating-point type the generators run fastest in, forward only, on ``device``.

    bfloat16 on a CPU whose oneDNN runs it natively (AMX or AVX-512 BF16): the forget map's
    pass over a photo ran 2.5–2.9× faster on such a 2-core CPU and let the same faces through
    on the face corpus's cross-source test (docs/benchmarks.md). float32 elsewhere: a CPU
    without those instructions emulates bfloat16 slowly, and the GPU default stays the type
    the CUDA figures were measured in (``--precision bf16`` asks for it there).
    """
    if torch.device(device).type != "cpu":
        return torch.float32
    native = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    return torch.bfloat16 if any(check is not None and check() for check in native) else torch.float32


@contextmanager
def inference_layout(module: nn.Module, device: torch.device | str) -> Iterator[nn.Module]:
    """``module`` in :func:`fast_layout` for ``device`` inside the block, contiguous after it
    (the layout training and saving expect)."""
    module.to(memory_format=fast_layout(device))
    try:
        yield module
    finally:
        module.to(memory_format=torch.contiguous_format)


def conv_encoder_modules(encoder: nn.Module, *after: nn.Module | None) -> list[nn.Module]:
    """The stages of a diffusers ``Encoder`` (KL and VQ): the input convolution, each down
    block, the mid block, and the output head together with ``after`` (e.g. ``quant_conv``)."""
    head = [encoder.conv_norm_out, encoder.conv_out, *(module for module in after if module is not None)]
    return [encoder.conv_in, *encoder.down_blocks, encoder.mid_block, nn.ModuleList(head)]


class TrainingOutput(NamedTuple):
    """What a family returns for one base-training forward pass."""

    sample: torch.Tensor
    family_loss: torch.Tensor  # VQ commitment + codebook, or KL divergence
    # What ``sample`` is compared with: the whole images when None (autoencoders); the drawn
    # noise for diffusion, whose sample is a noise prediction.
    target: torch.Tensor | None = None


class Generator(nn.Module):
    """An encoder-decoder image generator wrapping one diffusers (or transformers) model."""

    family: ClassVar[str]
    model_class: ClassVar[type[nn.Module]]  # a diffusers ModelMixin or a transformers PreTrainedModel
    library: ClassVar[str] = "diffusers"  # whose from_pretrained/save_pretrained the weights use
    description: ClassVar[str]  # for people: the model card's title
    # Weight of training_output's family_loss in base training, per family.
    default_family_loss_weight: ClassVar[float] = 1.0
    # Whether a task's mask reaches the model as an extra input channel (MAE drops the masked
    # patches, diffusion conditions on the mask); otherwise the hidden pixels are just filled.
    takes_mask: ClassVar[bool] = False

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
        # safetensors stores contiguous tensors only; a generator used channels-last is put back.
        self.to(memory_format=torch.contiguous_format)
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

    @property
    def image_channels(self) -> int:
        return 3

    # -- the protocol ---------------------------------------------------------------------
    def embed(self, inputs: torch.Tensor, probe: Any = None) -> torch.Tensor:
        """The embedding the unlearning losses compare (docs/design.md §1), of a task's input
        (images, or what :meth:`hide` made of them). ``probe`` is what :meth:`draw_probe` drew
        (diffusion: a timestep and noise); without one the embedding is deterministic."""
        raise NotImplementedError

    def decode(self, embedding: torch.Tensor, probe: Any = None) -> torch.Tensor:
        """The decoder on an embedding: images in [-1, 1] for the autoencoders."""
        raise NotImplementedError

    def encoder_modules(self) -> list[nn.Module]:
        """The modules that map images to the embedding (the part unlearning trains), in the
        order an image passes them: the stages unlearning's ``frozen_encoder_stages`` counts
        from the input."""
        raise NotImplementedError

    def training_output(self, inputs: torch.Tensor, images: torch.Tensor | None = None) -> TrainingOutput:
        """Forward pass for base training on a task's ``inputs`` (``images``: the whole images
        it should give back), with the family's own loss term."""
        raise NotImplementedError

    def draw_probe(self, images: torch.Tensor) -> Any:
        """Randomness the embedding depends on, drawn once per training step for the whole
        ``images`` (before the task hides anything) so the student and the teacher see the same
        (diffusion: timesteps, noise, and the images it noises). None for the autoencoders."""
        return None

    def probe_on(self, probe: Any, images: torch.Tensor) -> Any:
        """``probe``'s randomness on other whole images (a forget target's): diffusion noises the
        whole image into its UNet's input; the autoencoders' embedding sees the task's input only."""
        return probe

    def prediction(self, inputs: torch.Tensor, targets: torch.Tensor,
                   probe: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """What the whole-model baselines compare: the model's output for ``inputs`` and what it
        would be if the model gave back ``targets`` (the output and the targets themselves for
        the autoencoders; diffusion's predicted and true noise)."""
        return self(inputs), targets

    @property
    def downsampling_factor(self) -> int:
        """Pixels per embedding cell along each side. Tiles and their overlaps are multiples
        of it so neighbouring tiles' grids line up. The diffusers autoencoders halve the
        resolution in every down block but the last; a family built otherwise overrides this."""
        return 2 ** (len(self.config["block_out_channels"]) - 1)

    def hide(self, images: torch.Tensor, mask: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """How this family takes an I2I task's input: the pixels under the (B or 1, 1, H, W)
        ``mask`` filled with ``fill`` (0 = mid grey), and for a family that ``takes_mask`` the
        mask as one more channel (nothing hidden is passed on, whatever the family does with it)."""
        from ..tasks import apply_mask

        hidden = apply_mask(images, mask, fill)
        if not self.takes_mask:
            return hidden
        return torch.cat([hidden, mask.to(hidden).expand(hidden.shape[0], 1, *hidden.shape[-2:])], dim=1)

    def split_input(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image and (B, 1, H, W) mask of a task's input; images alone have an empty mask."""
        channels = self.image_channels
        if inputs.shape[1] == channels:
            return inputs, inputs.new_zeros(inputs.shape[0], 1, *inputs.shape[-2:])
        return inputs[:, :channels], inputs[:, channels:channels + 1]

    def latent_mask(self, pixel_mask: torch.Tensor, dilate: int = 0) -> torch.Tensor:
        """A (B, 1, H, W) pixel mask on the embedding's grid: a cell counts as soon as a pixel
        under it is masked, then ``dilate`` cells are added around (the encoder's receptive
        field spills over a box's edge)."""
        f = self.downsampling_factor
        return latent_cells(pixel_mask, (pixel_mask.shape[-2] // f, pixel_mask.shape[-1] // f), dilate)

    # -- derived --------------------------------------------------------------------------
    @property
    def output_from_embedding(self) -> bool:
        """Whether the output is ``decode(embed(x))``, so that an embedding already taken (the
        forget map's) can be decoded instead of encoding the image again; False for a family
        whose output samples (diffusion)."""
        return type(self).forward is Generator.forward

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """The family's I2I output for a task's input (a family that samples overrides this)."""
        return self.decode(self.embed(inputs))

    def encoder_parameters(self) -> list[nn.Parameter]:
        return [p for module in self.encoder_modules() for p in module.parameters()]

    def decoder_parameters(self) -> list[nn.Parameter]:
        encoder_ids = {id(p) for p in self.encoder_parameters()}
        return [p for p in self.parameters() if id(p) not in encoder_ids]
