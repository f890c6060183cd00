"""Base-generator training."""

from .api import train_generator
from .module import GeneratorTrainingModule

__all__ = ["GeneratorTrainingModule", "train_generator"]
