"""The names the CLI, configs and code share, in a module that imports nothing heavy, so that
``imgunlearn --help`` builds its parser without loading torch."""

from __future__ import annotations

__all__ = ["DEFAULT_MASK_AREA", "ENCODER_ONLY_OBJECTIVES", "OBJECTIVES", "TARGETS", "TASK_NAMES"]

# The I2I tasks (imgunlearn.tasks builds their masks).
TASK_NAMES = ("reconstruct", "center_inpaint", "outpaint")
# Share of the image center_inpaint hides (outpaint hides the border of that area).
DEFAULT_MASK_AREA = 0.25
# Unlearning objectives: the paper's ("ours") and its baselines (imgunlearn.unlearning.objectives).
OBJECTIVES = ("ours", "max_loss", "noisy_label", "retain_label", "random_encoder")
# What forget content is pushed towards: the original encoder's embedding of noise, of a blank,
# or of the forget region filled with its own mean colour.
TARGETS = ("noise", "blank", "fill")
# Objectives that fine-tune only the encoder; the others train the whole model.
ENCODER_ONLY_OBJECTIVES = ("ours", "random_encoder")
