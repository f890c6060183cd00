"""imgunlearn: make image-to-image generators forget (Li et al., ICLR 2024).

    >>> import imgunlearn
    >>> generator = imgunlearn.load_generator("runs/base")
    >>> unlearned = imgunlearn.unlearn(generator, forget="data/forget", retain="data/retain")
    >>> unlearned.save_pretrained("runs/unlearned")
"""

from ._lazy import lazy_exports

__version__ = "0.1.0"

# Loaded on first use (PEP 562), so that `imgunlearn --help` and `import imgunlearn.cli` do
# not pay for torch, Lightning and diffusers.
_EXPORTS = {
    "evaluate": "evaluation", "Generator": "generators", "build_generator": "generators",
    "load_generator": "generators", "Task": "tasks", "train_generator": "training", "unlearn": "unlearning",
}
__all__ = ["Generator", "Task", "__version__", "build_generator", "evaluate", "load_generator",
           "train_generator", "unlearn"]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
