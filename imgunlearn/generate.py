"""Run a generator over a folder of images: one RGB PNG out per image in, same stem."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .data import ImageLoadError, list_image_files, load_image_tensor, save_png_atomic, tensor_to_image
from .errors import InvalidSettingError
from .fileio import refuse_writes_into_inputs
from .generators import Generator
from .tasks import Task

log = logging.getLogger("imgunlearn")


@torch.no_grad()
def generate_folder(generator: Generator, input_dir: str | Path, output_dir: str | Path, *,
                    task: Task | str = "reconstruct", batch_size: int = 16, device: str = "cpu",
                    skip_bad: bool = False, progress: bool = True) -> list[Path]:
    """Write ``D(E(T(x)))`` for every image under ``input_dir`` as PNGs under ``output_dir``.

    Sub-folders are mirrored; each image is resized and centre-cropped to the generator's
    size first. A bad file stops the run unless ``skip_bad`` (then it is logged and skipped).
    """
    task = Task(task) if isinstance(task, str) else task
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    refuse_writes_into_inputs([output_dir], [input_dir])
    files = list_image_files(input_dir)
    if not files:
        raise FileNotFoundError(f"{input_dir}: no images found")
    seen: dict[Path, Path] = {}
    for path in files:
        target = path.relative_to(input_dir).with_suffix(".png")
        if target in seen:
            raise InvalidSettingError(f"{seen[target]} and {path} would both be written as {output_dir / target}")
        seen[target] = path
    generator = generator.to(device).eval()
    written: list[Path] = []
    bar = tqdm(total=len(files), desc="generate", unit="img", disable=not progress)
    for start in range(0, len(files), batch_size):
        images, targets = [], []
        for path in files[start : start + batch_size]:
            try:
                image, _ = load_image_tensor(path, generator.sample_size)
            except (ImageLoadError, OSError) as error:  # OSError: a dangling link, a file gone meanwhile
                if not skip_bad:
                    raise
                log.warning("skipping %s", error if str(path) in str(error) else f"{path}: {error}")
                continue
            images.append(image)
            targets.append(output_dir / path.relative_to(input_dir).with_suffix(".png"))
        if images:
            outputs = generator(task(torch.stack(images).to(device), generator)).cpu()
            for output, target in zip(outputs, targets):
                refuse_writes_into_inputs([target], [input_dir])  # no link in the output leads into the input
                save_png_atomic(tensor_to_image(output), target)
                written.append(target)
        bar.update(min(batch_size, len(files) - start))
    bar.close()
    return written
