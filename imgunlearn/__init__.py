"""imgunlearn: make image-to-image generators forget (Li et al., ICLR 2024).

    >>> import imgunlearn
    >>> generator = imgunlearn.load_generator("runs/base")
    >>> unlearned = imgunlearn.unlearn(generator, forget="data/forget", retain="data/retain")
    >>> unlearned.save_pretrained("runs/unlearned")
"""

__version__ = "0.1.0"

from .evaluation import evaluate  # noqa: E402
from .generators import Generator, build_generator, load_generator  # noqa: E402
from .tasks import Task  # noqa: E402
from .training import train_generator  # noqa: E402
from .unlearning import unlearn  # noqa: E402

__all__ = ["Generator", "Task", "__version__", "build_generator", "evaluate", "load_generator",
           "train_generator", "unlearn"]
