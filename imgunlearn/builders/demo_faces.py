"""The faces demo set: small faces composited into aerial tiles, split by region and identity.

The demo generator has to forget faces seen at drone-like scale, box by box, and keep the rest
of each tile. Everything here comes from offline sources (docs/design.md §4):

- backgrounds: Debian opencv-doc's oblique aerial photos ``aero1.jpg`` and ``aero3.jpg``;
  a fallback that always exists (scikit-image's ``grass`` and ``gravel`` textures, grey
  photographs of ground taken from above, given a mild vegetation/soil tint) keeps the
  builder and its tests working where opencv-doc is not installed;
- faces: the 100 face crops of ``skimage.data.lfw_subset()`` plus crops of
  ``skimage.data.astronaut()`` and matplotlib's ``grace_hopper.jpg``, framed with MTCNN.

Split rules, so that no test pixel or test face was seen in training:

- region: each background photo is cut at ``region_split`` of its width; train tiles are
  windows inside the left part, test tiles windows inside the right part, so a test window
  never shares a source pixel with a train window;
- identity: the LFW subset carries no names, so LFW faces are split by index (the first
  ``face_train_fraction`` go to train). That the index split is an identity split is an
  *assumption*: the subset may hold one person more than once. Near-duplicate crops (the
  same photo twice) are caught with a pixel-correlation test and kept on one side. The
  astronaut and Grace Hopper crops go to test only.

Each forget tile carries 1..``max_faces`` non-overlapping faces pasted as ``s``×``s`` squares
(``face_min`` ≤ s ≤ ``face_max``) under a feathered elliptical alpha, brightness and tint pulled
toward the local background; retain tiles carry none. Real MTCNN then checks, per face,
whether a detection's centre falls inside the pasted square (``detectable``): the faces
benchmark only counts faces that are detectable in the input.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from PIL import Image

from ..data.images import Box, open_rgb
from ..errors import ImgUnlearnError, InvalidSettingError
from ..fileio import atomic_write_text, write_json_atomic
from ..geometry import centres_inside
from . import system_path

__all__ = [
    "AERIAL_DIR",
    "AERIAL_FILES",
    "BUILDER",
    "Background",
    "DemoDataConfig",
    "FaceSource",
    "MissingSourceError",
    "build_demo_data",
    "composite_face",
    "elliptical_alpha",
    "load_aerial_backgrounds",
    "load_fallback_backgrounds",
    "load_face_sources",
    "make_detector",
    "near_duplicate_groups",
]

AERIAL_DIR = system_path("doc", "opencv-doc", "examples", "data")
AERIAL_FILES: tuple[str, ...] = ("aero1.jpg", "aero3.jpg")
# Written into meta.json; an existing output folder is only replaced when it carries this mark.
BUILDER = "imgunlearn.data.demo_faces"  # the mark meta.json carries; kept when the module moved

# The LFW subset's crops are framed so that MTCNN's box covers about 75% of the crop's width
# and 97% of its height (measured on the subset); astronaut/Grace Hopper crops copy that.
_LFW_BOX_WIDTH_SHARE = 0.75
_LFW_BOX_HEIGHT_SHARE = 0.97
# Relative R, G, B of a light skin tone, mean 1: grey LFW crops get it so they do not look
# like grey stickers on a colour photo.
_SKIN_TINT = np.array([1.12, 0.98, 0.90])
_SKIN_TINT = _SKIN_TINT / _SKIN_TINT.mean()
_COLOUR_KEPT = 0.4  # share of a colour face's saturation kept when composited
_DETECT_BATCH = 32


class MissingSourceError(ImgUnlearnError, FileNotFoundError):
    """An offline source file or package needed for the demo set is missing."""


@dataclass(frozen=True)
class Background:
    """One background photo: ``name`` is recorded per tile, ``origin`` in meta.json."""

    name: str
    image: Image.Image
    origin: str


@dataclass(frozen=True)
class FaceSource:
    """One face crop: float RGB pixels in [0, 1] (grey crops repeat one channel)."""

    identity: str
    pixels: np.ndarray
    grey: bool
    origin: str


@dataclass(frozen=True)
class DemoDataConfig:
    """Everything that decides the demo set's contents (together with the source files)."""

    seed: int = 0
    tile: int = 128
    # About 31 kB per 128 px aerial PNG tile: 240 tiles keep the folder under the 8 MB budget.
    train_tiles: int = 160
    test_tiles: int = 80
    retain_fraction: float = 0.3  # share of tiles left without faces (retain images)
    max_faces: int = 2
    face_min: int = 16
    face_max: int = 48
    # Sizes are drawn as face_min + (face_max - face_min) * u**face_size_power, u uniform:
    # 1.0 is uniform, < 1 leans toward large (more detectable) faces.
    face_size_power: float = 1.0
    region_split: float = 0.6  # left share of each photo for train, the rest for test
    face_train_fraction: float = 0.7  # LFW faces by index: the first 70 train, the rest test
    duplicate_threshold: float = 0.9  # Pearson correlation counting two crops as one photo
    window_scale: tuple[float, float] = (1.0, 1.5)  # source window side / tile side
    feather: float = 0.3  # share of the ellipse radius over which alpha fades to zero
    background: str = "aerial"  # "aerial" (opencv-doc) or "fallback" (scikit-image textures)
    detect: bool = True
    # How a face is fitted to its background: the share of a colour face's saturation kept, how
    # far its brightness moves toward the background's, and how much of the background's tint
    # it takes (ranges drawn per face).
    colour_kept: float = _COLOUR_KEPT
    light_pull: tuple[float, float] = (0.3, 0.6)
    tint_blend: tuple[float, float] = (0.15, 0.35)
    suffix: str = ".png"  # ".png" or ".jpg" (quality 92) tiles

    def check(self) -> None:
        """Raise ``ValueError`` for settings that cannot produce a valid set."""
        if self.tile < 32:
            raise InvalidSettingError(f"tile must be at least 32 px, got {self.tile}")
        if not 1 <= self.face_min <= self.face_max:
            raise InvalidSettingError(f"need 1 <= face_min <= face_max, got {self.face_min}, {self.face_max}")
        if self.face_max > self.tile // 2:
            raise InvalidSettingError(f"face_max {self.face_max} too large for a {self.tile} px tile")
        if self.train_tiles < 1 or self.test_tiles < 1:
            raise InvalidSettingError("train_tiles and test_tiles must be at least 1")
        if not 0.0 <= self.retain_fraction <= 1.0:
            raise InvalidSettingError(f"retain_fraction must lie in [0, 1], got {self.retain_fraction}")
        if self.max_faces < 1:
            raise InvalidSettingError(f"max_faces must be at least 1, got {self.max_faces}")
        if not 0.0 < self.region_split < 1.0:
            raise InvalidSettingError(f"region_split must lie in (0, 1), got {self.region_split}")
        if not 0.0 < self.face_train_fraction < 1.0:
            raise InvalidSettingError(f"face_train_fraction must lie in (0, 1), got {self.face_train_fraction}")
        low, high = self.window_scale
        if not 0.0 < low <= high:
            raise InvalidSettingError(f"window_scale must be (low, high) with 0 < low <= high, got {self.window_scale}")
        if self.face_size_power <= 0.0:
            raise InvalidSettingError(f"face_size_power must be positive, got {self.face_size_power}")
        if not 0.0 < self.feather <= 1.0:
            raise InvalidSettingError(f"feather must lie in (0, 1], got {self.feather}")
        if self.suffix not in (".png", ".jpg"):
            raise InvalidSettingError(f"suffix must be '.png' or '.jpg', got {self.suffix!r}")
        if self.background not in ("aerial", "fallback"):
            raise InvalidSettingError(f"background must be 'aerial' or 'fallback', got {self.background!r}")


# ---------------------------------------------------------------------------------------------
# Sources


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_aerial_backgrounds(
    folder: str | os.PathLike[str] = AERIAL_DIR, names: Sequence[str] = AERIAL_FILES
) -> list[Background]:
    """The opencv-doc aerial photos; ``MissingSourceError`` names any absent file."""
    backgrounds = []
    for name in names:
        path = Path(folder) / name
        if not path.is_file():
            raise MissingSourceError(
                f"aerial background {path} is missing; install it with "
                "`apt-get install opencv-doc` (or use the fallback background: --background fallback)"
            )
        backgrounds.append(Background(name, open_rgb(path), f"{path} sha256:{_sha256(path)}"))
    return backgrounds


def _import_skimage_data() -> Any:
    try:
        import skimage.data
    except ImportError as exc:
        raise MissingSourceError(
            "scikit-image is needed for the demo faces and fallback backgrounds; "
            "install it with `pip install scikit-image`"
        ) from exc
    return skimage.data


def load_fallback_backgrounds() -> list[Background]:
    """scikit-image's ``grass`` and ``gravel``: ground seen from above, present wherever
    scikit-image is. They are grey, so each gets a mild tint (vegetation green, soil brown)
    to give the colour matching of faces something to match; this is a stand-in for CI, not
    a substitute for the aerial photos."""
    data = _import_skimage_data()
    tints = {"grass": (0.85, 1.05, 0.80), "gravel": (1.05, 0.98, 0.90)}
    backgrounds = []
    for name, tint in tints.items():
        grey = np.asarray(getattr(data, name)(), dtype=np.float64)
        rgb = np.clip(grey[..., None] * np.asarray(tint), 0, 255)
        image = Image.fromarray(np.rint(rgb).astype(np.uint8), "RGB")
        backgrounds.append(Background(f"skimage:{name}", image, f"skimage.data.{name}() tinted {tint}"))
    return backgrounds


def near_duplicate_groups(crops: np.ndarray, threshold: float) -> list[list[int]]:
    """Groups (size ≥ 2) of crops whose Pearson correlation, also against the mirror image,
    reaches ``threshold``: the same photo cropped twice. Groups are closed transitively."""
    count = len(crops)
    flat = crops.reshape(count, -1).astype(np.float64)
    mirrored = crops[:, :, ::-1].reshape(count, -1).astype(np.float64)

    def normalise(values: np.ndarray) -> np.ndarray:
        centred = values - values.mean(axis=1, keepdims=True)
        return centred / np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), 1e-12)

    a, b = normalise(flat), normalise(mirrored)
    correlation = np.maximum(a @ a.T, a @ b.T)
    parent = list(range(count))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(np.triu(correlation >= threshold, k=1))):
        parent[root(int(j))] = root(int(i))
    groups: dict[int, list[int]] = {}
    for i in range(count):
        groups.setdefault(root(i), []).append(i)
    return sorted(g for g in groups.values() if len(g) > 1)


def crop_face(image: Image.Image, detector: Any, identity: str, origin: str) -> FaceSource:
    """Find the most confident face with MTCNN and crop a square framed like LFW's crops."""
    boxes, probs = detector.detect(image)
    if boxes is None or len(boxes) == 0:
        raise RuntimeError(f"MTCNN found no face in {origin}")
    x0, y0, x1, y1 = (float(v) for v in np.asarray(boxes, dtype=np.float64)[int(np.argmax(probs))])
    side = max((x1 - x0) / _LFW_BOX_WIDTH_SHARE, (y1 - y0) / _LFW_BOX_HEIGHT_SHARE)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    box = (round(cx - side / 2), round(cy - side / 2), round(cx + side / 2), round(cy + side / 2))
    crop = np.asarray(image.crop(box), dtype=np.float64) / 255.0
    return FaceSource(identity, crop, False, f"{origin} crop {list(box)}")


def load_face_sources(detector: Any, config: DemoDataConfig) -> dict[str, Any]:
    """Train and test faces (``"train"``, ``"test"``: lists of ``FaceSource``) and the
    near-duplicate groups found in the LFW subset (``"duplicate_groups"``)."""
    data = _import_skimage_data()
    crops = np.asarray(data.lfw_subset()[:100], dtype=np.float64)  # the first 100 are faces
    groups = near_duplicate_groups(crops, config.duplicate_threshold)
    cut = round(len(crops) * config.face_train_fraction)
    side = {i: ("train" if i < cut else "test") for i in range(len(crops))}
    for group in groups:
        # A duplicate pair across the cut would put one photo on both sides: move the group
        # to the side of its first member.
        for i in group:
            side[i] = side[group[0]]
    faces: dict[str, list[FaceSource]] = {"train": [], "test": []}
    for i, crop in enumerate(crops):
        rgb = np.repeat(crop[..., None], 3, axis=-1)
        faces[side[i]].append(FaceSource(f"lfw{i:03d}", rgb, True, f"skimage.data.lfw_subset()[{i}]"))

    try:
        import matplotlib.cbook
    except ImportError as exc:
        raise MissingSourceError(
            "matplotlib is needed for grace_hopper.jpg; install it with `pip install matplotlib`"
        ) from exc
    try:
        with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as handle:
            hopper = Image.open(handle).convert("RGB")
    except (OSError, ValueError) as exc:
        raise MissingSourceError(
            f"matplotlib's sample image grace_hopper.jpg cannot be read ({exc}); "
            "reinstall it with `pip install --force-reinstall matplotlib`"
        ) from exc
    astronaut = Image.fromarray(np.asarray(data.astronaut(), dtype=np.uint8), "RGB")
    faces["test"].append(crop_face(astronaut, detector, "astronaut", "skimage.data.astronaut()"))
    faces["test"].append(crop_face(hopper, detector, "grace_hopper", "matplotlib grace_hopper.jpg"))
    return {"train": faces["train"], "test": faces["test"], "duplicate_groups": groups}


# ---------------------------------------------------------------------------------------------
# Compositing


def elliptical_alpha(size: int, feather: float) -> np.ndarray:
    """``size``×``size`` alpha in [0, 1]: an upright ellipse inscribed in the square (a bit
    narrower than tall, like a face), 1 inside, fading smoothly to 0 at its rim."""
    centres = (np.arange(size) + 0.5) / size - 0.5  # pixel centres in [-0.5, 0.5]
    semi_x, semi_y = 0.46, 0.5
    radius = np.sqrt((centres[None, :] / semi_x) ** 2 + (centres[:, None] / semi_y) ** 2)
    ramp = np.clip((1.0 - radius) / feather, 0.0, 1.0)
    return ramp * ramp * (3.0 - 2.0 * ramp)  # smoothstep: no visible ring where the fade starts


def composite_face(
    tile: np.ndarray, face: FaceSource, box: tuple[int, int, int], rng: np.random.Generator, feather: float,
    colour_kept: float = _COLOUR_KEPT, light_pull: tuple[float, float] = (0.3, 0.6),
    tint_blend: tuple[float, float] = (0.15, 0.35),
) -> None:
    """Paste ``face`` into float RGB ``tile`` (H, W, 3 in [0, 1]) in place as the square
    ``box = (x, y, side)``, brightness and tint pulled toward the background under it."""
    x, y, side = box
    image = Image.fromarray(np.rint(face.pixels * 255).astype(np.uint8), "RGB")
    # Bicubic when enlarging (LFW crops are 25 px), antialiased Lanczos when shrinking.
    method = Image.Resampling.BICUBIC if side > image.width else Image.Resampling.LANCZOS
    resized = np.asarray(image.resize((side, side), method), dtype=np.float64) / 255.0
    if rng.random() < 0.5:
        resized = resized[:, ::-1]
    margin = side // 2
    patch = tile[max(0, y - margin): y + side + margin, max(0, x - margin): x + side + margin]
    background = patch.reshape(-1, 3).mean(axis=0)
    background_level = float(background.mean())
    chroma = np.clip(background / max(background_level, 1e-3), 0.7, 1.3)

    luma = resized.mean(axis=-1, keepdims=True)
    level = float(luma.mean())
    # Move the face's mean brightness part of the way to the background's but keep its
    # contrast (deviations from its mean), or it stops reading as a face.
    pull = rng.uniform(*light_pull)
    target = (1.0 - pull) * level + pull * background_level
    blend = rng.uniform(*tint_blend)
    if face.grey:
        tint = (1.0 - blend) * _SKIN_TINT + blend * chroma
        coloured = (luma - level + target) * tint
    else:
        # Shift brightness on the luma only and keep part of the colour: shifting each channel
        # would clip the weak ones and turn warm portraits orange, and aerial haze desaturates.
        colour = luma - level + target + colour_kept * (resized - luma)
        coloured = colour * ((1.0 - blend) + blend * chroma)
    coloured = np.clip(coloured, 0.0, 1.0)
    alpha = elliptical_alpha(side, feather)[..., None]
    region = tile[y: y + side, x: x + side]
    tile[y: y + side, x: x + side] = alpha * coloured + (1.0 - alpha) * region


def draw_face_sizes(rng: np.random.Generator, count: int, config: DemoDataConfig) -> list[int]:
    span = config.face_max - config.face_min
    draws = rng.random(count) ** config.face_size_power
    return [int(min(config.face_max, config.face_min + math.floor(d * (span + 1)))) for d in draws]


def place_squares(rng: np.random.Generator, sizes: Iterable[int], tile: int) -> list[tuple[int, int, int]]:
    """Non-overlapping squares (x, y, side), at least 2 px apart; a face that finds no room
    after 100 tries is dropped."""
    placed: list[tuple[int, int, int]] = []
    for side in sizes:
        for _ in range(100):
            x, y = (int(v) for v in rng.integers(0, tile - side + 1, size=2))
            clear = all(
                x + side + 2 <= px or px + ps + 2 <= x or y + side + 2 <= py or py + ps + 2 <= y
                for px, py, ps in placed
            )
            if clear:
                placed.append((x, y, side))
                break
    return placed


def _split_regions(backgrounds: Sequence[Background], config: DemoDataConfig) -> dict[str, list[tuple[int, Box]]]:
    """Per split, (background index, region x0, y0, x1, y1) with a disjoint column range."""
    regions: dict[str, list[tuple[int, Box]]] = {"train": [], "test": []}
    for index, background in enumerate(backgrounds):
        width, height = background.image.size
        cut = round(width * config.region_split)
        regions["train"].append((index, (0.0, 0.0, float(cut), float(height))))
        regions["test"].append((index, (float(cut), 0.0, float(width), float(height))))
    return regions


def random_window(
    rng: np.random.Generator, region: Box, config: DemoDataConfig
) -> tuple[int, int, int]:
    """A square source window (x, y, side) inside ``region``."""
    x0, y0, x1, y1 = (int(v) for v in region)
    largest = min(x1 - x0, y1 - y0)
    low, high = config.window_scale
    side = int(round(config.tile * rng.uniform(low, high)))
    side = max(8, min(side, largest))
    x = int(rng.integers(x0, x1 - side + 1))
    y = int(rng.integers(y0, y1 - side + 1))
    return x, y, side


# ---------------------------------------------------------------------------------------------
# Detection


def detect_boxes(detector: Any, tiles: Sequence[np.ndarray]) -> list[np.ndarray]:
    """MTCNN boxes per tile as float (N, 4) arrays (N may be 0)."""
    found: list[np.ndarray] = []
    for start in range(0, len(tiles), _DETECT_BATCH):
        batch = [Image.fromarray(t) for t in tiles[start: start + _DETECT_BATCH]]
        boxes, _ = detector.detect(batch)
        for item in boxes:
            # facenet-pytorch gives None for no face and object arrays for batches.
            found.append(np.zeros((0, 4)) if item is None else np.asarray(list(item), dtype=np.float64).reshape(-1, 4))
    return found


def match_detections(detected: np.ndarray, boxes: Sequence[Box]) -> tuple[list[bool], int]:
    """Per box: does a detection's centre lie inside it; plus detections that hit no box."""
    inside = centres_inside(boxes, detected)  # (boxes, detections)
    return [bool(hit) for hit in inside.any(axis=1)], int((~inside.any(axis=0)).sum())


def make_detector() -> Any:
    """The real MTCNN at the settings of the faces protocol (min face 12 px, default thresholds)."""
    from facenet_pytorch import MTCNN

    return MTCNN(keep_all=True, min_face_size=12, device="cpu")


# ---------------------------------------------------------------------------------------------
# Building


@dataclass
class Tile:
    split: str
    index: int
    pixels: np.ndarray  # uint8 (tile, tile, 3)
    source: str
    source_box: list[int]
    flipped: bool
    boxes: list[list[float]] = field(default_factory=list)
    identities: list[str] = field(default_factory=list)
    detectable: list[bool] | None = None  # None until check_detectability has run
    extra_detections: int = 0
    suffix: str = ".png"

    @property
    def kind(self) -> str:
        return "forget" if self.boxes else "retain"

    @property
    def relpath(self) -> str:
        return f"{self.kind}/{self.split}_{self.index:05d}{self.suffix}"

    def manifest_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {"path": self.relpath, "split": self.kind, "boxes": self.boxes,
                               "identities": self.identities, "source": self.source,
                               "source_box": self.source_box, "flipped": self.flipped}
        if self.detectable is not None:
            row["detectable"] = self.detectable
            row["extra_detections"] = self.extra_detections
        return row


def make_tiles(
    split: str,
    count: int,
    rng: np.random.Generator,
    backgrounds: Sequence[Background],
    regions: Sequence[tuple[int, Box]],
    faces: Sequence[FaceSource],
    config: DemoDataConfig,
) -> list[Tile]:
    tiles = []
    for index in range(count):
        which, region = regions[index % len(regions)]  # round robin: every photo contributes
        x, y, side = random_window(rng, region, config)
        crop = backgrounds[which].image.crop((x, y, x + side, y + side))
        method = Image.Resampling.LANCZOS if side > config.tile else Image.Resampling.BICUBIC
        crop = crop.resize((config.tile, config.tile), method)
        flipped = bool(rng.random() < 0.5)
        if flipped:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        pixels = np.asarray(crop, dtype=np.float64) / 255.0
        tile = Tile(split, index, pixels, backgrounds[which].name, [x, y, x + side, y + side], flipped,
                    suffix=config.suffix)
        if rng.random() >= config.retain_fraction:
            wanted = int(rng.integers(1, config.max_faces + 1))
            for fx, fy, fs in place_squares(rng, draw_face_sizes(rng, wanted, config), config.tile):
                face = faces[int(rng.integers(len(faces)))]
                composite_face(pixels, face, (fx, fy, fs), rng, config.feather, config.colour_kept,
                               config.light_pull, config.tint_blend)
                tile.boxes.append([float(fx), float(fy), float(fx + fs), float(fy + fs)])
                tile.identities.append(face.identity)
        tile.pixels = np.rint(np.clip(pixels, 0.0, 1.0) * 255).astype(np.uint8)
        tiles.append(tile)
    return tiles


def _rate(hits: int, total: int) -> float | None:
    return round(hits / total, 4) if total else None


def summarise_tiles(tiles: Sequence[Tile], config: DemoDataConfig) -> dict[str, Any]:
    faces = [(b, d) for t in tiles for b, d in zip(t.boxes, t.detectable or [False] * len(t.boxes))]
    summary: dict[str, Any] = {
        "tiles": len(tiles),
        "forget_tiles": sum(t.kind == "forget" for t in tiles),
        "retain_tiles": sum(t.kind == "retain" for t in tiles),
        "faces": sum(len(t.boxes) for t in tiles),
        "identities": len({i for t in tiles for i in t.identities}),
    }
    if config.detect:
        detectable = sum(d for _, d in faces)
        summary["detectable_faces"] = detectable
        summary["detectability"] = _rate(detectable, len(faces))
        bins: dict[str, list[int]] = {}
        width = max(1, math.ceil((config.face_max - config.face_min + 1) / 4))
        for box, hit in faces:
            side = int(box[2] - box[0])
            low = config.face_min + (side - config.face_min) // width * width
            key = f"{low}-{min(low + width - 1, config.face_max)}"
            bins.setdefault(key, [0, 0])
            bins[key][0] += int(hit)
            bins[key][1] += 1
        summary["detectability_by_size"] = {
            k: {"faces": n, "detectable": h, "rate": _rate(h, n)}
            for k, (h, n) in sorted(bins.items(), key=lambda kv: int(kv[0].split("-")[0]))
        }
        retain = [t for t in tiles if t.kind == "retain"]
        summary["retain_tiles_with_false_detections"] = sum(t.extra_detections > 0 for t in retain)
        summary["false_detections"] = sum(t.extra_detections for t in tiles)
    return summary


def claim_output(output: Path) -> None:
    """Refuse to replace a non-empty folder that this builder did not write."""
    if not output.exists():
        return
    if not output.is_dir():
        raise FileExistsError(f"{output} exists and is not a folder")
    if not any(output.iterdir()):
        return
    meta = output / "meta.json"
    try:
        ours = json.loads(meta.read_text()).get("builder") == BUILDER
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours:
        raise FileExistsError(
            f"{output} is not empty and holds no demo-data meta.json; choose another --output"
        )


def build_demo_data(
    output: str | os.PathLike[str],
    config: DemoDataConfig = DemoDataConfig(),
    *,
    backgrounds: Sequence[Background] | None = None,
    detector: Any = None,
) -> dict[str, Any]:
    """Build the demo set into ``output`` and return its ``meta.json`` contents.

    The set is written to a temporary sibling folder and swapped in at the end, so
    ``output`` holds either the old complete set or the new one. Same sources, same
    config → identical bytes.
    """
    config.check()
    output = Path(output)
    claim_output(output)
    if backgrounds is None:
        backgrounds = load_aerial_backgrounds() if config.background == "aerial" else load_fallback_backgrounds()
    if detector is None:
        detector = make_detector()
    faces = load_face_sources(detector, config)
    regions = _split_regions(backgrounds, config)

    # Independent streams per split: changing the test count leaves the train tiles alone.
    train_seq, test_seq = np.random.SeedSequence(config.seed).spawn(2)
    counts = {"train": config.train_tiles, "test": config.test_tiles}
    streams = {"train": np.random.default_rng(train_seq), "test": np.random.default_rng(test_seq)}
    tiles = {
        split: make_tiles(split, counts[split], streams[split], backgrounds, regions[split], faces[split], config)
        for split in ("train", "test")
    }
    if config.detect:
        check_detectability(detector, tiles)
    return write_tile_set(output, tiles, lambda png_bytes: _meta(config, backgrounds, faces, regions, tiles, png_bytes))


def check_detectability(detector: Any, tiles: dict[str, list[Tile]]) -> None:
    """Record per face whether MTCNN finds it (a detection centre in its box), and stray detections."""
    for split_tiles in tiles.values():
        for tile, detected in zip(split_tiles, detect_boxes(detector, [t.pixels for t in split_tiles])):
            tile.detectable, tile.extra_detections = match_detections(detected, [tuple(b) for b in tile.boxes])


def write_tile_set(output: Path, tiles: dict[str, list[Tile]], meta: Callable[[int], dict[str, Any]],
                   quality: int = 92) -> dict[str, Any]:
    """Write ``split/{forget,retain}/*`` tiles, ``split/manifest.jsonl`` per split and
    ``meta.json`` (``meta(bytes of the images)``) to a temporary sibling of ``output`` and swap
    it in, so ``output`` holds either the old complete set or the new one. JPEG tiles are
    written at ``quality``."""
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.building-"))
    try:
        image_bytes = 0
        for split, split_tiles in tiles.items():
            for kind in ("forget", "retain"):
                # Always present, so consumers can rely on the layout even for tiny sets.
                (staging / split / kind).mkdir(parents=True, exist_ok=True)
            lines = []
            for tile in split_tiles:
                path = staging / split / tile.relpath
                # The staging folder is swapped in whole: its files need no atomic write of their own.
                Image.fromarray(tile.pixels, "RGB").save(path, **({"quality": quality} if tile.suffix == ".jpg" else {}))
                image_bytes += path.stat().st_size
                lines.append(json.dumps(tile.manifest_row()))
            atomic_write_text(staging / split / "manifest.jsonl", "\n".join(lines) + "\n")
            os.chmod(staging / split / "manifest.jsonl", 0o644)  # the atomic writer's temp files are 0600
        write_json_atomic(meta(image_bytes), staging / "meta.json")
        os.chmod(staging / "meta.json", 0o644)
        swap_in(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return json.loads((output / "meta.json").read_text())


def swap_in(staging: Path, output: Path) -> None:
    old = None
    if output.exists():
        old = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.old-"))
        os.rmdir(old)
        os.replace(output, old)
    os.replace(staging, output)
    os.chmod(output, 0o755)  # mkdtemp makes 0700
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _meta(
    config: DemoDataConfig,
    backgrounds: Sequence[Background],
    faces: dict[str, Any],
    regions: dict[str, list[tuple[int, Box]]],
    tiles: dict[str, list[Tile]],
    png_bytes: int,
) -> dict[str, Any]:
    per_split = {split: summarise_tiles(split_tiles, config) for split, split_tiles in tiles.items()}
    everything = [t for split_tiles in tiles.values() for t in split_tiles]
    return {
        "builder": BUILDER,
        "config": asdict(config),
        "sources": {
            "backgrounds": [b.origin for b in backgrounds],
            "faces": "skimage.data.lfw_subset()[:100] (grey 25x25 LFW face crops, ids lfwNNN = index)",
            "face_crops": {f.identity: f.origin for split in ("train", "test") for f in faces[split] if not f.grey},
        },
        "split_rule": {
            "background": (
                f"each photo is cut at {config.region_split:.0%} of its width: train windows lie in the "
                "left part, test windows in the right part, so no test tile shares a source pixel "
                "with a train tile"
            ),
            "regions": {
                split: {backgrounds[i].name: list(box) for i, box in items} for split, items in regions.items()
            },
            "faces": (
                f"LFW subset faces by index (first {config.face_train_fraction:.0%} train, rest test); "
                "ASSUMPTION: the index split is an identity split (the subset has no names and may "
                "hold one person twice). Near-duplicate crops (Pearson correlation, also mirrored, "
                f">= {config.duplicate_threshold}) are kept on one side. astronaut and grace_hopper: test only"
            ),
            "duplicate_groups": [[f"lfw{i:03d}" for i in g] for g in faces["duplicate_groups"]],
            "identities": {split: sorted({f.identity for f in faces[split]}) for split in ("train", "test")},
        },
        "box_format": "x0, y0, x1, y1 float pixels of the tile: the pasted square of each face",
        "detector": "facenet-pytorch MTCNN(keep_all=True, min_face_size=12), default thresholds; "
        "a face is detectable when a detection's centre lies inside its box",
        "counts": per_split,
        "detectability": _rate(
            sum(sum(t.detectable) for t in everything), sum(len(t.boxes) for t in everything)
        ) if config.detect else None,
        "png_bytes": png_bytes,
    }
