"""The errors this package raises for what a user gave it: a bad file, a setting out of range,
a folder that is not what it should be. The CLI prints any of them as one line naming the
file and the problem; anything else is a bug and keeps its traceback."""

from __future__ import annotations

from typing import Any

__all__ = ["ImgUnlearnError", "InvalidSettingError", "is_whole_number"]


class ImgUnlearnError(Exception):
    """Base of every error raised for a user's input or settings."""


class InvalidSettingError(ImgUnlearnError, ValueError):
    """An argument, option or configuration value out of range or inconsistent with another.
    A ValueError too, so callers that caught ValueError still do."""


def is_whole_number(value: Any, minimum: int = 0) -> bool:
    """Whether ``value`` is an ``int`` (not a bool, which is one to Python) of at least ``minimum``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum
