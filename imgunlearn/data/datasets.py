"""Torch datasets and Lightning data modules built on image records."""

from __future__ import annotations

import os
from typing import Any, Sequence

import lightning
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import InvalidSettingError
from .images import load_image_tensor
from .sources import ImageRecord, RecordSource, read_manifest, resolve_records, validate_records

__all__ = ["ImageRecordDataset", "ImageFolderDataModule", "UnlearningDataModule"]


def _origin(source: Any) -> str | None:
    # Only folder paths make a useful "where did this come from" hint.
    return os.fspath(source) if isinstance(source, (str, os.PathLike)) else None


def _check_positive(**values: int) -> None:
    for key, value in values.items():
        if value <= 0:
            raise InvalidSettingError(f"{key} must be positive, got {value}")


class ImageRecordDataset(Dataset):
    """Lazily loads records as ``{"image": (3,S,S) in [-1,1], "mask": (1,S,S)}``."""

    def __init__(self, records: Sequence[ImageRecord], image_size: int) -> None:
        _check_positive(image_size=image_size)
        self.records = list(records)
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        record = self.records[index]
        image, mask = load_image_tensor(record.path, self.image_size, record.boxes)
        return {"image": image, "mask": mask}


class ImageFolderDataModule(lightning.LightningDataModule):
    """Training images from one folder (or anything ``resolve_records`` takes)."""

    def __init__(
        self,
        data: RecordSource,
        image_size: int,
        batch_size: int = 32,
        num_workers: int = 0,
        skip_bad: bool = False,
    ) -> None:
        super().__init__()
        _check_positive(image_size=image_size, batch_size=batch_size)
        self.data = data
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.skip_bad = skip_bad
        self.records: list[ImageRecord] = []
        self.skipped: list[tuple[ImageRecord, str]] = []
        self.dataset: ImageRecordDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        # Lightning may call setup more than once; validating is expensive.
        if self.dataset is not None:
            return
        records = resolve_records(self.data)
        self.records, self.skipped = validate_records(
            records, name="training", skip_bad=self.skip_bad, origin=_origin(self.data)
        )
        self.dataset = ImageRecordDataset(self.records, self.image_size)

    def train_dataloader(self) -> DataLoader:
        self.setup()
        assert self.dataset is not None
        return DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            shuffle=True,
            # Dropping the only (short) batch of a tiny set would leave nothing.
            drop_last=len(self.dataset) >= self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )


class UnlearningDataModule(lightning.LightningDataModule):
    """Paired forget/retain sets from two folders or one manifest.

    ``train_dataloader`` returns ``{"forget": ..., "retain": ...}``, which
    Lightning combines in ``max_size_cycle`` mode (the shorter one repeats).
    """

    def __init__(
        self,
        forget: RecordSource | None = None,
        retain: RecordSource | None = None,
        manifest: str | os.PathLike[str] | None = None,
        image_size: int = 32,
        batch_size: int = 16,
        num_workers: int = 0,
        skip_bad: bool = False,
    ) -> None:
        super().__init__()
        if manifest is not None and (forget is not None or retain is not None):
            raise InvalidSettingError(
                "give either a manifest or forget/retain folders, not both "
                "(the manifest already says which images are forget and retain)"
            )
        if manifest is None and (forget is None or retain is None):
            missing = " and ".join(
                name for name, value in (("forget", forget), ("retain", retain)) if value is None
            )
            raise InvalidSettingError(
                f"missing the {missing} set: give both forget and retain folders, or a manifest"
            )
        _check_positive(image_size=image_size, batch_size=batch_size)
        self.forget = forget
        self.retain = retain
        self.manifest = manifest
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.skip_bad = skip_bad
        self.forget_records: list[ImageRecord] = []
        self.retain_records: list[ImageRecord] = []
        self.skipped: list[tuple[ImageRecord, str]] = []
        self._ready = False

    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        if self.manifest is not None:
            splits = read_manifest(self.manifest)
            sources = {
                name: (splits[name], f"manifest {os.fspath(self.manifest)} (split '{name}')")
                for name in ("forget", "retain")
            }
        else:
            sources = {
                "forget": (resolve_records(self.forget), _origin(self.forget)),
                "retain": (resolve_records(self.retain), _origin(self.retain)),
            }
        skipped: list[tuple[ImageRecord, str]] = []
        validated: dict[str, list[ImageRecord]] = {}
        # Forget first: it is usually small and most likely to be wrong.
        for name in ("forget", "retain"):
            records, origin = sources[name]
            validated[name], bad = validate_records(
                records, name=name, skip_bad=self.skip_bad, origin=origin
            )
            skipped.extend(bad)
        self.forget_records = validated["forget"]
        self.retain_records = validated["retain"]
        self.skipped = skipped
        self._ready = True

    def _loader(self, records: list[ImageRecord]) -> DataLoader:
        return DataLoader(
            ImageRecordDataset(records, self.image_size),
            batch_size=min(self.batch_size, len(records)),
            shuffle=True,
            drop_last=True,  # keeps forget/retain batches the same size every step
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> dict[str, DataLoader]:
        self.setup()
        return {
            "forget": self._loader(self.forget_records),
            "retain": self._loader(self.retain_records),
        }
