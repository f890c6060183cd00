"""The card saved beside a generator's weights: what it was trained on, what it was made to
forget, how, and with what settings. JSON for machines, README.md for people."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..fileio import atomic_write_text, write_json_atomic
from .base import CARD_FILENAME, FAMILIES

if TYPE_CHECKING:
    from .base import Generator


def write_card(directory: Path, generator: Generator) -> None:
    from .. import __version__

    card = {"imgunlearn_version": __version__, "family": generator.family, **generator.card}
    card.setdefault("history", [])
    write_json_atomic(card, directory / CARD_FILENAME)
    atomic_write_text(directory / "README.md", render_card(card))


def render_card(card: dict[str, Any]) -> str:
    family = FAMILIES.get(card["family"])
    library = family.library if family else "diffusers"
    lines = [
        "---",
        f"library_name: {library}",
        "tags: [imgunlearn, machine-unlearning]",
        "---",
        "",
        f"# {family.description if family else card['family']}",
        "",
        f"Loads with plain {library} (`{family.model_class.__name__ if family else 'the model class'}"
        ".from_pretrained(this_dir)`)",
        "or with `imgunlearn.load_generator(this_dir)`.",
        "",
    ]
    history = card.get("history", [])
    forgotten = [stage for stage in history if stage.get("stage") == "unlearn"]
    if forgotten:
        lines += ["## What was forgotten", ""]
        for stage in forgotten:
            lines.append(
                f"- the **{stage.get('forget')}** set ({stage.get('forget_images')} images) with "
                f"objective `{stage.get('objective')}`, target `{stage.get('target')}`, "
                f"alpha {stage.get('alpha')}, task `{stage.get('task')}`, "
                f"{stage.get('max_steps')} steps; retain set **{stage.get('retain')}** "
                f"({stage.get('retain_images')} images)."
            )
        lines.append("")
        lines.append(
            "Method: Li, Hsu, Chen, Marculescu, *Machine Unlearning for Image-to-Image "
            "Generative Models*, ICLR 2024 — the encoder is fine-tuned so forget-set "
            "embeddings match the original encoder's embedding of the target, while retain-set "
            "embeddings stay where they were; the decoder is unchanged."
        )
        lines.append("")
    if history:
        lines += ["## History", ""]
        for stage in history:
            lines += [f"### {stage.get('stage', '?')}", "", "```json",
                      json.dumps(stage, indent=2, default=str), "```", ""]
    return "\n".join(lines)
