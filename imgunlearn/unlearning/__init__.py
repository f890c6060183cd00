"""Unlearning: the paper's objective and its baselines (pure losses), the LightningModule
that applies them, and the ``unlearn`` function."""

from .._lazy import lazy_exports
from . import objectives

__all__ = ["UnlearningModule", "objectives", "paper_lr", "unlearn"]

# The Lightning parts load on first use: the sanitizer only needs the forget map.
__getattr__, __dir__ = lazy_exports(
    __name__, {"paper_lr": "api", "unlearn": "api", "UnlearningModule": "module"}, globals())
