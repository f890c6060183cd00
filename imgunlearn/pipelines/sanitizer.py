"""The Sanitizer: run an (unlearned) generator over images of any size, then check its work.

tile → generator → blended stitch (``imgunlearn.data.tiling``) → post-check: faces are
re-detected in the output; with ``fail_closed`` every face still found is blanked, so a
generator that failed to forget never leaks a face into what the pipeline hands on.

With a ``reference`` (the base the model was unlearned from) the Sanitizer composites
(docs/design.md §1b): both encoders see every tile, the cells where they disagree by more
than the card's threshold form the forget map, the decoder runs only on the tiles the map
reaches (or crops around it, with ``map_context``), and every pixel outside the map is the
input's own.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Sequence, Union

import numpy as np
import torch
from PIL import Image

from ..data.images import rgb_array, to_rgb
from ..data.tiling import match_tile_tone, pad_to, tile_edge_mask, tile_positions
from ..errors import InvalidSettingError, is_whole_number
from ..generators import Generator, fast_dtype, fast_layout, load_generator
from ..geometry import blurred_box, box_pixels, grow_boxes
from ..settings import DEFAULT_FORGET_PASSES, DEFAULT_MAP_BLUR, DEFAULT_MAP_CONTEXT, DEFAULT_MAP_DILATION
from ..unlearning import forget_map as fmap
from .streaming import Position, blend_rows, make_canvas

if TYPE_CHECKING:  # faces.py pulls in facenet-pytorch; only import it when a check is built
    from ..concepts.faces import FaceDetections, FaceFinder

__all__ = ["Action", "ForgetMap", "SanitizeReport", "Sanitizer", "check_reference"]

Action = Literal["passed", "blanked", "flagged", "no-check"]
PRECISIONS = {"32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ImageLike = Union[Image.Image, torch.Tensor]
# The most a tile's tone is shifted toward its input's (8 levels of 255; images are in [-1, 1]).
# The shifts measured on a dark flat photo were at most 3.2 levels; the bound keeps what a
# shift can bring back of a tile the generator changed everywhere (a face filling it) to a tint.
TONE_LIMIT = 16 / 255
# Crops around the forget map are rounded up to this many latent cells a side, so that crops
# of one shape recur and go through the generator in batches (a small crop costs a CPU almost
# what a call costs: 4 ms for 32x32 px against 24 ms for 256x256 here).
CROP_MULTIPLE = 8
# What the choice between crops and whole tiles counts a generator call as, in shares of a
# tile's pixels (measured at the default 256 px tile: a call about 4 ms, the tile 24 ms).
CALL_COST_SHARE = 0.25
# Tiles whose map-pass embedding is kept for the first forget pass (the rest are encoded again):
# a 12 MP photo's at the default tile. All 2 200 tiles of a 108 MP photo held 0.2 GiB more at
# the peak (docs/benchmarks.md, peak memory).
KEPT_EMBEDDINGS = 256


@dataclass
class SanitizeReport:
    """What the post-check saw and did for one image.

    ``action``: ``"passed"`` (no face in the output), ``"blanked"`` (faces found and filled,
    fail-closed), ``"flagged"`` (faces found but left, fail-closed off) or ``"no-check"``
    (the Sanitizer has no face finder). Boxes are ``(x0, y0, x1, y1)`` output pixels.
    """

    faces_before: FaceDetections | None
    faces_after: FaceDetections | None
    action: Action
    blanked_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.int64))
    forget_map: ForgetMap | None = None  # with a reference: what was re-synthesised

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (counts and boxes) for audit logs."""
        changed = self.forget_map
        return {
            "faces_before": None if self.faces_before is None else len(self.faces_before),
            "faces_after": None if self.faces_after is None else len(self.faces_after),
            "action": self.action,
            "blanked_boxes": self.blanked_boxes.astype(int).tolist(),
            "mode": "whole" if changed is None else "forget-map",
            "changed_boxes": None if changed is None else changed.boxes,
            "changed_share": None if changed is None else round(changed.share, 6),
        }


@dataclass
class ForgetMap:
    """Where a composited output differs from its input.

    ``cells`` is the (h, w) bool map over the latent grid (one cell = ``factor`` px); at
    pixel resolution, :attr:`weight` is 1 inside, fades over ``feather`` px at the edge, and
    is exactly 0 outside, where the output is the input. ``boxes`` are ``[x0, y0, x1, y1]``
    of the changed regions; ``share`` is the fraction of pixels changed; ``decoded_tiles``
    crops around the map or whole tiles (``passes_on``) went through the decoder, and the map
    itself was taken over ``tiles`` tiles.
    """

    cells: torch.Tensor
    factor: int
    feather: int
    height: int
    width: int
    boxes: list[list[int]]
    share: float
    decoded_tiles: int
    tiles: int
    passes_on: str = "tiles"  # "crops" around the map, or whole "tiles"

    @property
    def weight(self) -> torch.Tensor:
        """The (H, W) compositing weight: output = weight × generated + (1 − weight) × input."""
        return fmap.pixel_weight(self.cells, self.factor, self.height, self.width, self.feather)

    def to_image(self) -> Image.Image:
        """The map as an 8-bit greyscale image (255 = fully re-synthesised), built band by band."""
        rows = []
        for top in range(0, self.height, 1024):
            bottom = min(self.height, top + 1024)
            weight = fmap.pixel_weight_rows(self.cells, self.factor, top, bottom, self.width, self.height, self.feather)
            rows.append((weight.clamp(0, 1) * 255).round().to(torch.uint8).numpy())
        return Image.fromarray(np.concatenate(rows))  # 2-D uint8: greyscale ("L")


class Sanitizer:
    """Run ``generator`` over images of any size in overlapping tiles, then post-check faces.

    Args:
        generator: an ``imgunlearn`` generator (put in eval mode and moved to ``device``).
        face_finder: a ``FaceFinder`` for the post-check, or ``None`` for no check.
        tile, overlap: tile side and overlap in pixels; both multiples of the generator's
            downsampling factor so every tile's latent grid lines up with its neighbours'.
        batch_size: tiles per generator call.
        fail_closed: blank every face still detected in the output (needs a face finder).
        blank_value: fill value for blanked boxes, in [-1, 1] (0 is mid grey).
        blank_margin: blanked boxes grow by this share of their longer side (at least 2 px)
            each way, since detector boxes are tight and hair or an ear can still identify.
        reference: the generator ``generator`` was unlearned from; turns on compositing
            through the forget map (refused unless its weights are the ones the card names).
        forget_threshold: τ of the forget map; default the one calibrated into the card.
        map_percentile: take τ at this percentile of the retain cells' divergence instead,
            from the table the card records (``forget_map.CARD_PERCENTILES``) times its
            margin: the map's sensitivity chosen again, e.g. on a val split of one's own data,
            without unlearning again. Excludes ``forget_threshold``.
        map_dilation: cells added around the map each way (default: the card's, recorded with
            the threshold when unlearning ended; ``DEFAULT_MAP_DILATION`` for older cards).
        feather: pixels over which the map's edge fades from generated to input (default 4).
        forget_passes: how many times each re-synthesised crop or tile goes through the
            generator, each pass taking the last one's output: what one pass of the unlearned
            generator leaves of a face, the next pushes further. Default with a reference: the
            card's (``map_passes`` when unlearning; ``DEFAULT_FORGET_PASSES``, 4, for older
            cards), where only the map's tiles or crops pay for it and pixels outside the map
            are the input's anyway; 1 without, where every pixel
            would be re-synthesised again and each pass blurs (the base itself, passed 4 times,
            keeps 48.5% of the face corpus's val faces against 79.4% after one). Each pass
            costs what one does: for a diffusion generator, a whole sampling run.
        map_context: with a reference, the forget passes run on crops around the map that
            carry this many pixels of surroundings each way (rounded up to whole cells, at most
            a quarter of the tile; crops never exceed the tile), not on the whole tiles the map
            reaches, wherever the crops cost less (their pixels, and each generator call
            counted as ``CALL_COST_SHARE`` of a tile): a sparse map's crops are a fraction of
            its tiles, while a small image that is one tile is cheaper whole. ``None`` (the
            default, ``DEFAULT_MAP_CONTEXT``) runs them on whole tiles: the val split could not
            tell the two apart, and every later check let one or two more faces through crops.
        map_blur: with a reference, fill the map with the input Gaussian-blurred with this
            sigma in pixels instead of the generator's output: the unlearned encoder still
            decides where (the map), and no decoder runs. The sigma is in pixels, so it suits
            faces of one range of sizes (16 px on the face corpus's 16-48 px faces); raise it
            for larger ones. 0 re-synthesises the map with the generator (``forget_passes``).
            Default: the card's (``map_blur`` when unlearning; 0 for older cards).
        precision: ``"32"``, ``"bf16"`` or ``"fp16"``: the generators' weights and tiles in
            that type (the map's divergence is still taken in float32). ``None`` (default)
            picks the faster for the device (``generators.fast_dtype``: bf16 on a CPU that runs
            it natively, where the forget map's pass ran 2.5–2.9× faster, 32 elsewhere).
        channels_last: keep the generators' convolutions in channels-last memory layout;
            ``None`` (default) picks the faster for the device (``generators.fast_layout``:
            channels-last on a CPU, where the KL generators ran up to 1.6–1.8× faster, contiguous
            on a GPU, where the KL family's group norms ran slower).
        compile: run the generators through ``torch.compile`` (fuses the normalisations and
            activations; pays a compilation on the first photo and on each new batch shape).
        match_tone: when the whole image is re-synthesised in more than one tile, shift each
            tile's output by the median of its input minus its output (at most ``TONE_LIMIT``),
            so flat areas do not show tile-sized blocks of different tone (see
            :func:`~imgunlearn.data.tiling.match_tile_tone`). With a reference, pixels outside
            the forget map are the input's and this does not apply.
    """

    def __init__(
        self,
        generator: Generator,
        face_finder: FaceFinder | None = None,
        tile: int = 256,
        overlap: int = 32,
        batch_size: int = 4,
        fail_closed: bool = False,
        blank_value: float = 0.0,
        device: str | torch.device = "cpu",
        blank_margin: float = 0.1,
        reference: Generator | None = None,
        forget_threshold: float | None = None,
        map_percentile: float | None = None,
        map_dilation: int | None = None,
        feather: int = 4,
        forget_passes: int | None = None,
        map_context: int | None = DEFAULT_MAP_CONTEXT,
        map_blur: float | None = None,
        precision: str | None = None,
        channels_last: bool | None = None,
        compile: bool = False,
        match_tone: bool = True,
    ) -> None:
        if precision is None:
            precision = next(name for name, dtype in PRECISIONS.items() if dtype == fast_dtype(device))
        if precision not in PRECISIONS:
            raise InvalidSettingError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        self.factor = generator.downsampling_factor
        if tile <= 0 or tile % self.factor:
            raise InvalidSettingError(
                f"tile {tile} must be a positive multiple of the generator's downsampling "
                f"factor {self.factor}"
            )
        if overlap < 0 or overlap >= tile:
            raise InvalidSettingError(f"overlap {overlap} must be at least 0 and smaller than the tile ({tile})")
        if overlap % self.factor:
            raise InvalidSettingError(
                f"overlap {overlap} must be a multiple of the generator's downsampling factor {self.factor}")
        if batch_size < 1:
            raise InvalidSettingError(f"batch_size must be at least 1, got {batch_size}")
        if not -1.0 <= blank_value <= 1.0:
            raise InvalidSettingError(f"blank_value must be in [-1, 1], got {blank_value}")
        if fail_closed and face_finder is None:
            raise InvalidSettingError("fail_closed=True needs a face_finder to re-detect faces in the output")
        map_entry = generator.card.get(fmap.CARD_KEY) or {}
        if map_dilation is None:
            map_dilation = map_entry.get("dilation", DEFAULT_MAP_DILATION)
        if not is_whole_number(map_dilation) or feather < 0:
            raise InvalidSettingError(f"map_dilation and feather must be >= 0, got {map_dilation} and {feather}")
        if map_context is not None and not is_whole_number(map_context):
            raise InvalidSettingError(f"map_context must be a whole number of pixels >= 0 or None, got {map_context!r}")
        for name, value in (("forget_threshold", forget_threshold), ("map_percentile", map_percentile)):
            if reference is None and value is not None:
                raise InvalidSettingError(f"{name} needs a reference generator (the forget map compares against it)")
        if map_blur is not None and reference is None:
            raise InvalidSettingError("map_blur needs a reference generator (it fills the forget map)")
        map_blur = fmap.check_map_blur(map_entry.get("blur", DEFAULT_MAP_BLUR) if map_blur is None else map_blur)
        if reference is None:
            map_blur = 0.0  # no map to fill: the whole image is re-synthesised
        if map_blur > 0 and map_context is not None:
            raise InvalidSettingError("map_context runs the generator on crops around the map; with map_blur the "
                                      "map is blurred, not generated: give one of them")
        if forget_threshold is not None and map_percentile is not None:
            raise InvalidSettingError("give forget_threshold or map_percentile, not both (both set the map's "
                                      "threshold)")
        self.forget_threshold = (
            None if reference is None else check_reference(generator, reference, forget_threshold, map_percentile)
        )
        self.map_dilation, self.feather = int(map_dilation), int(feather)
        self.map_context = map_context
        self.map_blur = float(map_blur)
        if forget_passes is None:
            forget_passes = 1 if reference is None else map_entry.get("passes", DEFAULT_FORGET_PASSES)
        if not is_whole_number(forget_passes, 1):
            raise InvalidSettingError(f"forget_passes must be a whole number >= 1, got {forget_passes!r}")
        self.forget_passes = forget_passes
        self.device = torch.device(device)
        self.precision = precision
        layout = (fast_layout(self.device) if channels_last is None else
                  torch.channels_last if channels_last else torch.contiguous_format)
        self.generator = _on_device(generator, self.device, PRECISIONS[precision], layout)
        self.reference = None if reference is None else _on_device(reference, self.device, PRECISIONS[precision], layout)
        # What the tile loops call: the generators themselves, or their compiled versions.
        reconstruct, embed, decode = self.generator, self.generator.embed, self.generator.decode
        reference_embed = None if self.reference is None else self.reference.embed
        if compile:
            reconstruct, embed, decode = torch.compile(reconstruct), torch.compile(embed), torch.compile(decode)
            reference_embed = None if reference_embed is None else torch.compile(reference_embed)
        self._embed, self._reference_embed, self._decode = embed, reference_embed, decode
        self._reconstruct = _repeated(reconstruct, self.forget_passes)
        # The passes after the first, when the first decodes the map pass's embedding.
        self._later_passes = _repeated(reconstruct, self.forget_passes - 1)
        # The map pass already encodes every tile with the unlearned encoder: where the output is
        # decode(embed(x)), the first forget pass decodes that embedding (a third of a pass saved).
        self._reuse_embedding = (self.reference is not None and self.generator.output_from_embedding
                                 and self.map_blur == 0)
        self._float32_copies: tuple[Generator, Generator | None] | None = None
        # Half precisions can overflow or cancel: bf16 group norms on a 1 px wide photo gave
        # NaN here. A batch with a value that is not finite runs again in float32, rather than
        # be written as garbage, or, in the map pass, hide what was forgotten.
        if PRECISIONS[precision] != torch.float32:
            self._reconstruct = _finite_or_float32(
                self._reconstruct, lambda: _repeated(self._float32()[0], self.forget_passes))
        self.face_finder = face_finder
        self.tile, self.overlap, self.batch_size = tile, overlap, batch_size
        self.match_tone = bool(match_tone)
        self.fail_closed = fail_closed
        self.blank_value = float(blank_value)
        self.blank_margin = float(blank_margin)
        self.source: dict[str, str | None] = {"generator": None, "reference": None}  # folders, when loaded

    def settings(self) -> dict[str, Any]:
        """What decides this sanitizer's outputs: the weights (SHA-256) of the generator and
        the reference, the folders they came from, and every setting that changes a pixel.
        ``preprocess`` records it and refuses to resume a run made with other settings."""
        return {
            "generator": self.source["generator"],
            "generator_sha256": fmap.weights_digest(self.generator),
            "reference": self.source["reference"],
            "reference_sha256": None if self.reference is None else fmap.weights_digest(self.reference),
            "forget_threshold": self.forget_threshold, "map_dilation": self.map_dilation, "feather": self.feather,
            "forget_passes": self.forget_passes, "map_context": self.map_context,
            "tile": self.tile, "overlap": self.overlap, "precision": self.precision, "match_tone": self.match_tone,
            "face_check": None if self.face_finder is None else repr(self.face_finder),
            "fail_closed": self.fail_closed, "blank_value": self.blank_value, "blank_margin": self.blank_margin,
            # Named only when on, so that a run recorded before the option existed still resumes.
            **({"map_blur": self.map_blur} if self.map_blur else {}),
        }

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | Path,
        face_finder: FaceFinder | None | Literal[False] = None,
        *,
        device: str | torch.device = "cpu",
        generator_kwargs: dict[str, Any] | None = None,
        reference: str | Path | Generator | None = None,
        **kwargs: Any,
    ) -> Sanitizer:
        """Load the generator saved at ``path_or_id``; unless ``face_finder=False``, build a
        default ``FaceFinder`` for the post-check (``None``; it looks at 0, 90, 180 and 270
        degrees) or use the one given. With a
        post-check, ``fail_closed`` defaults to ``True``: a face still found is blanked.
        ``reference`` (a directory or a loaded generator: the base the model was unlearned
        from) turns on compositing through the forget map."""
        generator = load_generator(path_or_id, **(generator_kwargs or {}))
        reference_path = None
        if reference is not None and not isinstance(reference, Generator):
            reference_path = reference
            reference = load_generator(reference_path, **(generator_kwargs or {}))
        if face_finder is None:
            from ..concepts.faces import FaceFinder

            face_finder = FaceFinder(device=str(device), rotations=(0, 90, 180, 270))
        kwargs.setdefault("fail_closed", face_finder is not False)  # secure by default
        try:
            sanitizer = cls(generator, face_finder=face_finder or None, device=device, reference=reference, **kwargs)
        except ValueError as error:
            if reference_path is None:
                raise
            # The reference check runs once, in the constructor; name the folders here.
            raise InvalidSettingError(f"{path_or_id} with reference {reference_path}: {error}") from None
        sanitizer.source = {"generator": str(path_or_id),
                            "reference": None if reference_path is None else str(reference_path)}
        return sanitizer

    # -- the generator over tiles ---------------------------------------------------------
    @torch.inference_mode()
    def generate(self, image: torch.Tensor) -> torch.Tensor:
        """The output for one ``(3, H, W)`` image in [-1, 1], any H and W: the generator's
        everywhere, or, with a reference, only inside the forget map (the input elsewhere)."""
        return self.generate_with_map(image)[0]

    @torch.inference_mode()
    def generate_with_map(self, image: torch.Tensor | np.ndarray, *, in_place: bool = False,
                          on_tiles: Callable[[int, int], None] | None = None) -> tuple[Any, ForgetMap | None]:
        """:meth:`generate` plus the forget map it composited with (``None`` without a reference).

        ``image`` is a ``(3, H, W)`` float tensor in [-1, 1] (the output is one too) or an
        ``(H, W, 3)`` uint8/uint16 array (the output is the same type; tiles are read from it
        and written back band by band, so memory stays near two copies of the array, or one
        with ``in_place``, which writes the output into the array itself).
        ``on_tiles(done, total)`` is told after each batch how many tile passes are done of
        how many (with a forget map: the map pass over every tile, then the decoder's).
        """
        if isinstance(image, torch.Tensor):
            _check_tensor(image)
        canvas = make_canvas(image, self.factor, keep_input=self.reference is not None,
                             in_place=in_place and isinstance(image, np.ndarray), device=self.device)
        tile = (min(self.tile, canvas.padded_height), min(self.tile, canvas.padded_width))
        positions = tile_positions(canvas.padded_height, canvas.padded_width, tile, self.overlap)
        passes = {"done": 0, "total": len(positions)}

        def counted(run: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
            if on_tiles is None:
                return run

            def counting(tiles: torch.Tensor, *where: list[Position]) -> torch.Tensor:
                out = run(tiles, *where)
                passes["done"] += tiles.shape[0]
                on_tiles(passes["done"], passes["total"])
                return out
            return counting

        options = {"batch_size": self.batch_size, "device": self.device,
                   "dtype": next(self.generator.parameters()).dtype}
        if self.reference is None:
            reconstruct = self._reconstruct
            if self.match_tone and len(positions) > 1:
                reconstruct = lambda tiles: match_tile_tone(tiles, self._reconstruct(tiles), TONE_LIMIT)  # noqa: E731
            blend_rows(canvas, positions, tile, self.overlap, counted(reconstruct),
                       lambda top, rows: canvas.write(top, rows, None), **options)
            return canvas.result(), None

        f = self.factor
        divergence = torch.zeros(canvas.padded_height // f, canvas.padded_width // f, device=self.device)

        def keep_divergence(top: int, rows: torch.Tensor) -> None:
            divergence[top : top + rows.shape[1]] = rows[0]

        # The unlearned encoder's embeddings of the tiles with a cell over τ, for the first pass.
        embeddings: dict[Position, torch.Tensor] = {}
        blend_rows(canvas, positions, tile, self.overlap,
                   counted(lambda tiles, where: self._map_pass(tiles, where, embeddings)),
                   keep_divergence, channels=1, scale=f, with_positions=True, **options)
        cells = fmap.cell_mask(divergence[None, None], self.forget_threshold, self.map_dilation)[0, 0]
        host_cells = cells.cpu()
        # The map is looked up on the host: one transfer, not one device sync per tile.
        touched = [(top, left) for top, left in positions
                   if bool(host_cells[top // f : (top + tile[0]) // f, left // f : (left + tile[1]) // f].any())]
        bands = None if self.map_context is None else self._crop_bands(host_cells, tile)
        if bands is not None and _crops_cost(bands, f, tile) > _tiles_cost(touched, tile, self.batch_size):
            bands = None  # a map so spread that its crops would cost more than its tiles
        if self.map_blur > 0:
            # Each tile blurred whole; the map's weight keeps only its cells, blended over the overlaps.
            def blurred(tiles: torch.Tensor, where: list[Position]) -> torch.Tensor:
                # The batch's channels side by side: the blur treats each channel alone anyway.
                box = (0, 0, tiles.shape[-1], tiles.shape[-2])
                return blurred_box(tiles.float().flatten(0, 1), box, self.map_blur).view(tiles.shape).to(tiles.dtype)

            _, changed_pixels = self._passes_on_tiles(canvas, touched, tile, cells, passes, counted, options, blurred)
            decoded = 0
        elif bands is None:
            decoded, changed_pixels = self._passes_on_tiles(
                canvas, touched, tile, cells, passes, counted, options,
                lambda tiles, where: self._forget_passes(tiles, where, embeddings))
        else:
            decoded, changed_pixels = self._passes_on_crops(canvas, bands, host_cells, passes, counted, options)
        changed = ForgetMap(cells=host_cells, factor=f, feather=self.feather, height=canvas.height, width=canvas.width,
                            boxes=fmap.mask_boxes(host_cells, f, canvas.height, canvas.width),
                            share=changed_pixels / (canvas.height * canvas.width),
                            decoded_tiles=decoded, tiles=len(positions),
                            passes_on="tiles" if bands is None else "crops")
        return canvas.result(), changed

    def _map_pass(self, tiles: torch.Tensor, where: list[Position],
                  embeddings: dict[Position, torch.Tensor]) -> torch.Tensor:
        """The per-cell divergence of ``tiles`` (the forget map before blending); keeps in
        ``embeddings`` the unlearned encoder's embedding of each tile with a cell over τ."""
        embedding = self._embed(tiles)
        divergence = fmap.cell_divergence(embedding, self._reference_embed(tiles))
        keep = self._reuse_embedding and len(embeddings) < KEPT_EMBEDDINGS
        # One transfer a batch: whether it is finite and, when embeddings are kept, which tiles pass τ.
        flags = torch.isfinite(divergence).all()[None]
        if keep:
            flags = torch.cat([flags, (divergence > self.forget_threshold).flatten(1).any(1)])
        finite, *over = flags.tolist()
        if not finite:
            generator, reference = self._float32()
            tiles = tiles.float()
            return _finite(fmap.cell_divergence(generator.embed(tiles), reference.embed(tiles)), tiles)
        if keep:
            kept = [i for i in range(len(where)) if over[i]][:KEPT_EMBEDDINGS - len(embeddings)]
            # Copies: a view would hold its whole batch's encoder output (a KL's mean and log-variance).
            embeddings.update((where[i], embedding[i].clone()) for i in kept)
        return divergence

    def _forget_passes(self, tiles: torch.Tensor, where: list[Position],
                       embeddings: dict[Position, torch.Tensor]) -> torch.Tensor:
        """``tiles`` through the unlearned generator ``forget_passes`` times; the first pass
        decodes the map pass's embedding where it kept one (the same output, an encoder saved)."""
        kept = [i for i, position in enumerate(where) if position in embeddings]
        if not kept:
            return self._reconstruct(tiles)
        first = self._decode(torch.stack([embeddings.pop(where[i]) for i in kept]))
        outputs = self._later_passes(first.clamp(-1, 1)) if self.forget_passes > 1 else first
        if not bool(torch.isfinite(outputs).all()):
            outputs = self._reconstruct(tiles[kept])  # in float32 where the half precision failed
        if len(kept) == len(where):
            return outputs
        result = torch.empty(tiles.shape[0], *outputs.shape[1:], dtype=outputs.dtype, device=outputs.device)
        result[kept] = outputs
        rest = sorted(set(range(len(where))) - set(kept))
        result[rest] = self._reconstruct(tiles[rest]).to(outputs.dtype)
        return result

    def _passes_on_tiles(self, canvas: Any, touched: list[tuple[int, int]], tile: tuple[int, int],
                         cells: torch.Tensor, passes: dict[str, int], counted: Callable,
                         options: dict[str, Any], content: Callable[..., torch.Tensor]) -> tuple[int, int]:
        """``content(tiles, positions)`` (the forget passes, or the blur) on the whole tiles the
        map reaches, blended over the overlaps and composited; returns (tiles, pixels changed)."""
        f = self.factor
        changed_pixels = 0

        def composite(top: int, rows: torch.Tensor) -> None:
            nonlocal changed_pixels
            bottom = min(canvas.height, top + rows.shape[1])
            if bottom <= top:
                return
            weight = fmap.pixel_weight_rows(cells, f, top, bottom, canvas.width, canvas.height, self.feather)
            changed_pixels += int((weight > 0).sum())
            canvas.write(top, rows, weight)

        passes["total"] += len(touched)
        blend_rows(canvas, touched, tile, self.overlap, counted(content), composite, with_positions=True, **options)
        return len(touched), changed_pixels

    def _crop_bands(self, host_cells: torch.Tensor, tile: tuple[int, int]) -> list[list[list[fmap.MapWindow]]]:
        """The map's crops (``fmap.map_windows``) in bands of tops within a tile's height, each
        band's crops grouped by shape into batches: what :meth:`_passes_on_crops` runs."""
        f = self.factor
        limit = (tile[0] // f, tile[1] // f)
        # Context beyond a quarter of the tile would leave cores too small to be worth a crop.
        context = min(math.ceil(self.map_context / f), min(limit) // 4)
        windows = fmap.map_windows(host_cells, context, limit, multiple=CROP_MULTIPLE)
        bands, start = [], 0
        while start < len(windows):
            stop = start
            while stop < len(windows) and windows[stop].window[0] < windows[start].window[0] + limit[0]:
                stop += 1
            by_shape: dict[tuple[int, int], list[fmap.MapWindow]] = {}
            for window in windows[start:stop]:
                by_shape.setdefault(window.shape, []).append(window)
            bands.append([group[first : first + self.batch_size] for group in by_shape.values()
                          for first in range(0, len(group), self.batch_size)])
            start = stop
        return bands

    def _passes_on_crops(self, canvas: Any, bands: list[list[list[fmap.MapWindow]]], host_cells: torch.Tensor,
                         passes: dict[str, int], counted: Callable, options: dict[str, Any]) -> tuple[int, int]:
        """The forget passes on crops around the map, band by band (:meth:`_crop_bands`), each
        crop writing only its own cells; returns (crops decoded, pixels changed)."""
        f = self.factor
        windows = [window for band in bands for batch in band for window in batch]
        passes["total"] += len(windows)
        reconstruct = counted(self._reconstruct)
        pending: list[tuple[fmap.MapWindow, torch.Tensor]] = []
        changed_pixels = 0

        def commit(before_row: int | None) -> None:
            # A crop's cells are written only once no crop still to run reads them: crops run
            # in order of their top row, so cells above the next one's top are safe. Written
            # earlier, they would reach later crops (read from the output when in place) as
            # surroundings, and the result would depend on the order and the canvas.
            nonlocal changed_pixels, pending
            keep = []
            for window, output in pending:
                if before_row is not None and window.core[2] > before_row:
                    keep.append((window, output))
                    continue
                r0, c0, r1, c1 = window.core
                top, left = r0 * f, c0 * f
                bottom, right = min(canvas.height, r1 * f), min(canvas.width, c1 * f)
                if bottom <= top or right <= left:
                    continue
                own = torch.from_numpy(window.cells).repeat_interleave(f, 0).repeat_interleave(f, 1)
                weight = fmap.pixel_weight_box(host_cells, f, (top, left, bottom, right), canvas.height,
                                               canvas.width, self.feather) * own[: bottom - top, : right - left]
                changed_pixels += int((weight > 0).sum())
                canvas.write(top, output, weight.to(output.device), left=left)
            pending = keep

        for band in bands:
            # Every crop of a band is read before any of its cells is written: cells above the
            # band's top are safe (every crop still to run starts at or below it).
            commit(band[0][0].window[0])
            for batch in band:
                shape = batch[0].shape
                tiles = canvas.tiles([(w.window[0] * f, w.window[1] * f) for w in batch], (shape[0] * f, shape[1] * f))
                outputs = reconstruct(tiles.to(options["device"], options["dtype"])).float()
                for window, output in zip(batch, outputs):
                    r0, c0, r1, c1 = window.core
                    top, left = window.window[0], window.window[1]
                    core = output[:, (r0 - top) * f : (r1 - top) * f, (c0 - left) * f : (c1 - left) * f]
                    pending.append((window, core))
        commit(None)
        return len(windows), changed_pixels

    def _float32(self) -> tuple[Generator, Generator | None]:
        """float32 copies of the generators, made the first time a batch needs them."""
        if self._float32_copies is None:
            generator, reference = (None if g is None else copy.deepcopy(g).to(torch.float32).eval()
                                    for g in (self.generator, self.reference))
            self._float32_copies = (generator, reference)
        return self._float32_copies

    @torch.inference_mode()
    def seam_gap(self, image: torch.Tensor, strip: int = 4) -> float:
        """PSNR near tile edges minus PSNR in tile interiors (dB), both of the tiled output against
        the generator run on the whole (padded) image at once: about 0 when stitching leaves no
        seams, negative when tile borders are worse."""
        from ..metrics import masked_psnr

        _check_tensor(image)
        height, width = image.shape[-2:]
        padded_h = math.ceil(height / self.factor) * self.factor
        padded_w = math.ceil(width / self.factor) * self.factor
        dtype = next(self.generator.parameters()).dtype
        whole = self.generator(pad_to(image.detach().to("cpu", torch.float32), padded_h, padded_w)[None]
                               .to(self.device, dtype)).float().cpu()[..., :height, :width].clamp(-1, 1)
        tiled = self.generate(image)[None]
        tile = (min(self.tile, padded_h), min(self.tile, padded_w))
        edges = tile_edge_mask(padded_h, padded_w, tile, self.overlap, strip)[:height, :width].float()[None, None]
        return masked_psnr(tiled, whole, edges) - masked_psnr(tiled, whole, 1 - edges)

    # -- the post-check -------------------------------------------------------------------
    def post_check(
        self,
        image: ImageLike | None,
        output: ImageLike,
        *,
        fail_closed: bool | None = None,
        in_place: bool = False,
    ) -> tuple[ImageLike, SanitizeReport]:
        """Re-detect faces in ``output`` and, fail-closed, blank them.

        ``image`` is the input the output came from (its faces are counted for the report;
        ``None`` skips that). Returns the (possibly blanked) output, of ``output``'s kind;
        ``in_place`` blanks an array or tensor output itself instead of a copy (no second
        copy of a large photo).
        """
        fail_closed = self.fail_closed if fail_closed is None else fail_closed
        if fail_closed and self.face_finder is None:
            raise InvalidSettingError("fail_closed needs a face_finder to re-detect faces in the output")
        _check_image(output)
        if self.face_finder is None:
            return output, SanitizeReport(None, None, "no-check")
        faces_before = None if image is None else self.face_finder.detect(_detectable(image))
        faces_after = self.face_finder.detect(_detectable(output))
        if len(faces_after) == 0:
            return output, SanitizeReport(faces_before, faces_after, "passed")
        if not fail_closed:
            return output, SanitizeReport(faces_before, faces_after, "flagged")
        blanked, boxes = self._blank(output, faces_after.boxes, in_place)
        return blanked, SanitizeReport(faces_before, faces_after, "blanked", boxes)

    def _blank(self, image: ImageLike | np.ndarray, boxes: np.ndarray, in_place: bool = False
               ) -> tuple[Any, np.ndarray]:
        """``image`` (a copy unless ``in_place``; same kind) with each (dilated) box filled;
        returns the filled pixel boxes."""
        if isinstance(image, Image.Image):
            blanked, filled = self._blank(np.array(to_rgb(image)), boxes, in_place=True)
            return Image.fromarray(blanked), filled
        if isinstance(image, np.ndarray):
            blanked = image if in_place else image.copy()
            height, width = image.shape[:2]
            value = round((self.blank_value + 1.0) * np.iinfo(image.dtype).max / 2.0)
        else:
            blanked = image if in_place else image.clone()
            height, width = image.shape[-2:]
            value = self.blank_value
        filled = []
        for box in grow_boxes(boxes, share=self.blank_margin, at_least=2.0):
            c0, r0, c1, r1 = box_pixels(box, height, width)
            if c1 > c0 and r1 > r0:
                if isinstance(blanked, np.ndarray):
                    blanked[r0:r1, c0:c1] = value
                else:
                    blanked[:, r0:r1, c0:c1] = value
                filled.append((c0, r0, c1, r1))
        return blanked, np.asarray(filled, dtype=np.int64).reshape(-1, 4)

    # -- entry points ---------------------------------------------------------------------
    def sanitize_with_report(
        self,
        image: ImageLike,
        *,
        fail_closed: bool | None = None,
        detect_input: bool = True,
        on_tiles: Callable[[int, int], None] | None = None,
    ) -> tuple[ImageLike, SanitizeReport]:
        """Sanitize one image and say what the check found: a PIL image, a ``(3, H, W)`` float
        tensor in [-1, 1] or an ``(H, W, 3)`` uint8/uint16 array; the output is of the same kind.
        PIL images and arrays are processed as integer arrays, tile by tile, so a large
        photo is never held as floats.

        ``detect_input`` also counts the faces in the input (``report.faces_before``), at the
        cost of a second detection pass. ``on_tiles`` follows the generator's progress (see
        :meth:`generate_with_map`).
        """
        _check_image(image)
        if isinstance(image, Image.Image):
            work: Any = rgb_array(image if image.mode == "RGB" else to_rgb(image))
        elif isinstance(image, torch.Tensor):
            work = image.detach().to("cpu", torch.float32)
        else:
            work = image
        output, changed = self.generate_with_map(work, on_tiles=on_tiles)
        checked, report = self.post_check(work if detect_input else None, output, fail_closed=fail_closed)
        report.forget_map = changed
        if isinstance(image, Image.Image):
            return Image.fromarray(checked), report
        if isinstance(image, torch.Tensor):
            return checked.to(image.device), report
        return checked, report

    def __call__(
        self,
        images: ImageLike | Sequence[ImageLike],
        *,
        fail_closed: bool | None = None,
    ) -> ImageLike | list[ImageLike]:
        """Sanitize a PIL image, a ``(3, H, W)`` or ``(B, 3, H, W)`` tensor in [-1, 1], or a
        list of these; returns the same kind. Faces in the input are not counted here (use
        :meth:`sanitize_with_report` for that)."""
        if isinstance(images, torch.Tensor) and images.ndim == 4:
            outputs = [self(one, fail_closed=fail_closed) for one in images]
            return torch.stack(outputs)  # type: ignore[arg-type]
        if isinstance(images, (list, tuple)):
            return [self(one, fail_closed=fail_closed) for one in images]  # type: ignore[misc]
        if not isinstance(images, (Image.Image, torch.Tensor, np.ndarray)):
            raise TypeError(
                "expected a PIL image, a (3, H, W) or (B, 3, H, W) tensor, an (H, W, 3) uint8 array, "
                f"or a list of them; got {type(images).__name__}"
            )
        output, _ = self.sanitize_with_report(images, fail_closed=fail_closed, detect_input=False)
        return output


def _crops_cost(bands: list[list[list[fmap.MapWindow]]], factor: int, tile: tuple[int, int]) -> float:
    """Pixels through the generator for these crops, each call counted as ``CALL_COST_SHARE`` of a tile."""
    batches = [batch for band in bands for batch in band]
    pixels = sum(w.shape[0] * w.shape[1] * factor * factor for batch in batches for w in batch)
    return pixels + len(batches) * CALL_COST_SHARE * tile[0] * tile[1]


def _tiles_cost(touched: list[tuple[int, int]], tile: tuple[int, int], batch_size: int) -> float:
    """The same for whole tiles, batched a row of tiles at a time as ``blend_rows`` does."""
    rows: dict[int, int] = {}
    for top, _ in touched:
        rows[top] = rows.get(top, 0) + 1
    calls = sum(math.ceil(count / batch_size) for count in rows.values())
    return (len(touched) + calls * CALL_COST_SHARE) * tile[0] * tile[1]


def _finite_or_float32(run: Callable[[torch.Tensor], torch.Tensor],
                       float32_run: Callable[[], Callable[[torch.Tensor], torch.Tensor]]
                       ) -> Callable[[torch.Tensor], torch.Tensor]:
    """``run``, except that a batch whose output is not all finite goes through
    ``float32_run()`` instead (in float32); not finite there either is an error."""
    def checked(tiles: torch.Tensor) -> torch.Tensor:
        out = run(tiles)
        if bool(torch.isfinite(out).all()):
            return out
        return _finite(float32_run()(tiles.float()), tiles).to(out.dtype)
    return checked


def _finite(out: torch.Tensor, tiles: torch.Tensor) -> torch.Tensor:
    """``out``, the float32 run of ``tiles``, refused if a value is still not finite."""
    if not bool(torch.isfinite(out).all()):
        raise InvalidSettingError("the generator gave values that are not finite, in float32 too "
                                  f"(a batch of {tuple(tiles.shape)} tiles)")
    return out


def _repeated(reconstruct: Callable[[torch.Tensor], torch.Tensor], passes: int
              ) -> Callable[[torch.Tensor], torch.Tensor]:
    """``reconstruct`` applied ``passes`` times, each output clamped to the images' range
    before it goes in again (as a saved and reloaded output would be); itself for one pass."""
    if passes == 0:
        return lambda tiles: tiles
    if passes == 1:
        return reconstruct

    def again(tiles: torch.Tensor) -> torch.Tensor:
        for _ in range(passes):
            tiles = reconstruct(tiles).clamp(-1, 1)
        return tiles
    return again


def check_reference(generator: Generator, reference: Generator, forget_threshold: float | None = None,
                    map_percentile: float | None = None) -> float:
    """τ for compositing ``generator`` against ``reference`` (``forget_threshold``, else the
    card's ``map_percentile``, else the card's threshold); raises ValueError when the pair
    cannot give a trustworthy forget map (no calibrated threshold, another base, several
    unlearning stages)."""
    entry = generator.card.get(fmap.CARD_KEY) or {}
    stages = [h for h in generator.card.get("history", []) if h.get("stage") == "unlearn"]
    if not stages:
        raise InvalidSettingError("the generator was never unlearned (its card has no unlearn stage): "
                                  "there is no forget map to composite with")
    if len(stages) > 1:
        raise InvalidSettingError(f"the generator was unlearned in {len(stages)} stages; the forget map compares "
                                  "against one base and would miss what earlier stages forgot. Unlearn the base once "
                                  "with every forget set instead")
    expected = entry.get("reference_digest")
    if expected is None:
        raise InvalidSettingError("the generator's card records no forget map (unlearned by an older imgunlearn?); "
                                  "unlearn again to calibrate one")
    actual = fmap.weights_digest(reference)
    if actual != expected:
        raise InvalidSettingError(f"the reference is not the generator this model was unlearned from (weights digest "
                                  f"{actual[:12]}, the card records {expected[:12]}): against another base the map "
                                  "would keep or change the wrong pixels")
    if map_percentile is not None:
        return fmap.threshold_at(entry, map_percentile)
    threshold = entry.get("threshold") if forget_threshold is None else forget_threshold
    if threshold is None or not math.isfinite(float(threshold)) or float(threshold) < 0:
        raise InvalidSettingError(f"forget threshold must be a finite number >= 0, got {threshold!r}")
    return float(threshold)


def _on_device(generator: Generator, device: torch.device, dtype: torch.dtype,
               layout: torch.memory_format) -> Generator:
    """``generator`` on ``device`` in ``dtype`` and ``layout``, for inference. A copy when the
    type changes, so that the caller's float32 generator still takes float32 images after a
    Sanitizer (bf16 by default on some CPUs) was built from it; moved in place otherwise."""
    if next(generator.parameters()).dtype != dtype:
        generator = copy.deepcopy(generator)
    return generator.to(device, dtype).to(memory_format=layout).eval()


def _check_tensor(image: torch.Tensor) -> None:
    if image.ndim != 3 or image.shape[0] != 3:
        raise InvalidSettingError(f"expected an image tensor of shape (3, H, W), got {tuple(image.shape)}")
    if not image.is_floating_point():
        raise InvalidSettingError(f"expected a float image tensor in [-1, 1], got dtype {image.dtype}")


def _check_image(image: Any) -> None:
    if isinstance(image, torch.Tensor):
        _check_tensor(image)
    elif isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype not in (np.uint8, np.uint16):
            raise InvalidSettingError(f"expected an (H, W, 3) uint8 or uint16 array, got {image.shape} {image.dtype}")
    elif not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image, a (3, H, W) tensor or an (H, W, 3) array, got {type(image).__name__}")


def _detectable(image: Any) -> Any:
    """What FaceFinder takes: 16-bit arrays are brought to 8 bits, the rest pass as they are."""
    if isinstance(image, np.ndarray) and image.dtype == np.uint16:
        return (image.astype(np.float32) / 257.0).round().astype(np.uint8)
    return image
