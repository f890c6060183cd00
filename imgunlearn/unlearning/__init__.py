"""Unlearning: the paper's objective and its baselines (pure losses), the LightningModule
that applies them, and the ``unlearn`` function."""

from . import objectives
from .api import paper_lr, unlearn
from .module import UnlearningModule

__all__ = ["UnlearningModule", "objectives", "paper_lr", "unlearn"]
