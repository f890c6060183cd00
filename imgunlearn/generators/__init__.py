"""Generator families and the small factory that resolves names, directories and hub ids."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from ..errors import InvalidSettingError
from .base import CARD_FILENAME, FAMILIES, Generator, TrainingOutput, fast_dtype, fast_layout, inference_layout
from .diffusion import DiffusionGenerator
from .kl import KLGenerator  # each family module registers itself in FAMILIES
from .mae import MAEGenerator
from .vq import VQGenerator

_BY_MODEL_CLASS = {cls.model_class.__name__: cls for cls in FAMILIES.values()}


def generator_class(family: str) -> type[Generator]:
    try:
        return FAMILIES[family]
    except KeyError:
        raise InvalidSettingError(f"unknown generator family {family!r}; choose one of {sorted(FAMILIES)}") from None


def build_generator(family: str, config: dict[str, Any]) -> Generator:
    """A randomly initialised generator of ``family`` from its model config."""
    return generator_class(family).from_config(config)


def load_generator(path_or_id: str | Path, **kwargs: Any) -> Generator:
    """Load a generator from a local model directory or a hub id.

    The family is read from its ``config.json``: diffusers' ``_class_name`` or transformers'
    ``architectures``; extra keyword arguments (``subfolder``, ``revision``,
    ``local_files_only``...) go to the library's ``from_pretrained``.
    """
    path = Path(path_or_id)
    if path.exists() and not (path / kwargs.get("subfolder", "") / "config.json").is_file():
        raise FileNotFoundError(f"{path}: not a generator directory (no config.json)")
    if not path.exists() and (path.is_absolute() or str(path_or_id).startswith(".")
                              or str(path_or_id).count("/") != 1 or path.parent.is_dir()):
        # Not a hub id ("owner/name") either, or a typo in a local path ("runs/nope" where
        # runs/ exists): say so at once instead of a hub lookup with its retries.
        raise FileNotFoundError(f"{path_or_id}: no such generator directory")
    if not path.exists() and not kwargs.get("local_files_only"):
        _check_hub_id(str(path_or_id), kwargs)
    try:
        with warnings.catch_warnings():
            # diffusers passes huggingface_hub an argument that it ignores and warns about.
            warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
            # Any diffusers ModelMixin subclass reads a config.json, transformers' too.
            config = VQGenerator.model_class.load_config(str(path_or_id), **_config_kwargs(kwargs))
    except OSError as error:
        if path.exists():
            raise InvalidSettingError(f"{path / 'config.json'}: not a readable generator config ({error})") from None
        raise FileNotFoundError(
            f"{path_or_id}: neither a local generator directory nor a reachable hub id ({error})"
        ) from error
    if not isinstance(config, dict):
        raise InvalidSettingError(f"{path_or_id}: config.json holds a JSON {type(config).__name__}, not the object of "
                                  "settings a diffusers model config is")
    architectures = config.get("architectures")
    class_name = config.get("_class_name") or (architectures[0] if isinstance(architectures, list) and architectures
                                                else None)
    if class_name not in _BY_MODEL_CLASS:
        raise InvalidSettingError(
            f"{path_or_id}: unsupported model class {class_name!r}; supported: "
            f"{sorted(_BY_MODEL_CLASS)}"
        )
    try:
        return _BY_MODEL_CLASS[class_name].from_pretrained(path_or_id, **kwargs)
    except (RuntimeError, OSError) as error:
        # diffusers says "size mismatch ..." (weights of another architecture or class) or
        # "Unable to load weights" (a truncated file) over many lines; one is enough.
        lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
        first = next((line for line in lines if line.startswith(("size mismatch", "Missing key", "Unexpected key"))),
                     lines[0])[:200]
        raise InvalidSettingError(f"{path_or_id}: the weights do not load into the {class_name} its config.json names "
                                  f"({first}); is config.json from another model, or the weights file damaged?") from None


def _config_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    keys = ("subfolder", "revision", "cache_dir", "local_files_only", "token")
    return {k: v for k, v in kwargs.items() if k in keys}


__all__ = [
    "CARD_FILENAME",
    "DiffusionGenerator",
    "FAMILIES",
    "Generator",
    "KLGenerator",
    "MAEGenerator",
    "TrainingOutput",
    "VQGenerator",
    "build_generator",
    "fast_dtype",
    "fast_layout",
    "generator_class",
    "inference_layout",
    "load_generator",
]


def _check_hub_id(repo_id: str, kwargs: dict[str, Any]) -> None:
    """Fail at once when ``repo_id`` is no model on the hub, or the hub cannot be reached: one
    metadata request, where loading would retry a download for half a minute first (a typo such
    as ``runs/nope`` on a machine without internet). Anything else (a gated or private model, a
    hub that answers oddly) is left for ``from_pretrained`` to report."""
    from huggingface_hub import model_info
    from huggingface_hub.errors import OfflineModeIsEnabled, RepositoryNotFoundError

    try:
        model_info(repo_id, revision=kwargs.get("revision"), token=kwargs.get("token"), timeout=10)
    except OfflineModeIsEnabled:
        return  # HF_HUB_OFFLINE: from_pretrained looks in the local cache
    except RepositoryNotFoundError:
        raise FileNotFoundError(f"{repo_id}: no such generator directory, and no such model on the hub") from None
    except Exception as error:  # the HTTP client's connection errors are no OSError
        if "connect" in type(error).__name__.lower() or "timeout" in type(error).__name__.lower():
            raise FileNotFoundError(f"{repo_id}: no such generator directory, and the hub cannot be reached to look "
                                    f"it up as a hub id ({error})") from None
