"""A synthetic two-concept image set: round shapes (discs, rings, ellipses) and angular shapes
(squares, triangles, crosses) on varied backgrounds. Used by the toy benchmark and the tests,
so both run anywhere without downloads."""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

from ..errors import InvalidSettingError

CONCEPTS = {"round": ("disc", "ring", "ellipse"), "angular": ("square", "triangle", "cross")}


def draw_shape(kind: str, size: int, rng: random.Random) -> Image.Image:
    """One ``size``×``size`` RGB image holding one shape of ``kind``."""
    scale = 4  # draw large, then downsample, for antialiased edges
    big = size * scale
    background = tuple(rng.randint(0, 255) for _ in range(3))
    colour = tuple((c + rng.randint(80, 175)) % 256 for c in background)  # stays visible
    image = Image.new("RGB", (big, big), background)
    draw = ImageDraw.Draw(image)
    radius = rng.uniform(0.22, 0.36) * big
    cx, cy = (rng.uniform(radius, big - radius) for _ in range(2))
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    width = max(1, int(radius * 0.35))
    if kind == "disc":
        draw.ellipse(box, fill=colour)
    elif kind == "ring":
        draw.ellipse(box, outline=colour, width=width)
    elif kind == "ellipse":
        squash = rng.uniform(0.45, 0.7) * radius
        draw.ellipse((cx - radius, cy - squash, cx + radius, cy + squash), fill=colour)
    elif kind == "square":
        draw.rectangle(box, fill=colour)
    elif kind == "triangle":
        draw.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=colour)
    elif kind == "cross":
        draw.rectangle((cx - radius, cy - width, cx + radius, cy + width), fill=colour)
        draw.rectangle((cx - width, cy - radius, cx + width, cy + radius), fill=colour)
    else:
        raise InvalidSettingError(f"unknown shape {kind!r}")
    return image.resize((size, size), Image.Resampling.LANCZOS)


def make_toy_dataset(root: str | Path, per_concept: int = 200, size: int = 32, seed: int = 0,
                     concepts: tuple[str, ...] = ("round", "angular")) -> dict[str, Path]:
    """Write ``per_concept`` PNGs of each concept under ``root/<concept>/``; return the folders."""
    rng = random.Random(seed)
    folders = {}
    for concept in concepts:
        folder = Path(root) / concept
        folder.mkdir(parents=True, exist_ok=True)
        kinds = CONCEPTS[concept]
        for index in range(per_concept):
            draw_shape(kinds[index % len(kinds)], size, rng).save(folder / f"{concept}_{index:05d}.png")
        folders[concept] = folder
    return folders
