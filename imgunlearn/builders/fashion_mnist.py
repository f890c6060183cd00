"""Fashion-MNIST, read offline from its IDX files, and class-level forget/retain splits.

The data normally comes from the Debian package ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist/``); a torchvision root
(``ROOT/FashionMNIST/raw/``) or a folder named by ``$FASHION_MNIST_ROOT`` works
too. Nothing is downloaded unless ``download=True`` is passed explicitly.

Images are 28x28 greyscale. :func:`load_fashion_mnist` returns them the way the
rest of the project expects pixels: float RGB tensors in [-1, 1], *resized*
(bilinear, antialiased) to ``size``. Resizing rather than zero-padding 28 -> 32
keeps the garment filling the frame at any ``size`` and avoids a constant black
border the generator would otherwise have to learn. Callers who want the exact
pixels, or who cannot afford the float copy of the training set
(60000 x 3 x 32 x 32 float32 = 737 MB), pass ``as_uint8=True`` to get the raw
uint8 (N, 1, 28, 28) array (47 MB) and convert batches lazily with
:func:`to_float_images`.
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..data.images import save_png_atomic, tensor_to_image
from ..errors import InvalidSettingError
from . import system_path

__all__ = [
    "CLASSES",
    "DEBIAN_DIR",
    "DEFAULT_CACHE_DIR",
    "ENV_VAR",
    "ClassSplit",
    "export_split_folders",
    "find_fashion_mnist",
    "load_fashion_mnist",
    "read_idx",
    "split_classes",
    "to_float_images",
]

CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
NUM_CLASSES = len(CLASSES)

DEBIAN_DIR = system_path("datasets", "fashion-mnist")
ENV_VAR = "FASHION_MNIST_ROOT"
# Where download=True puts the data when no root is given (torchvision layout).
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "imgunlearn" / "fashion-mnist"

IMAGE_MAGIC = 0x00000803  # uint8, 3 dims (N, rows, cols)
LABEL_MAGIC = 0x00000801  # uint8, 1 dim (N,)

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_ALL_FILES = _FILES["train"] + _FILES["test"]

# IDX type byte -> element type; multi-byte types are stored big-endian.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_CONVERT_CHUNK = 4096  # images per interpolate call: bounds the temporary memory

PathLike = Union[str, os.PathLike[str]]
ArrayLike = Union[np.ndarray, torch.Tensor]


# --------------------------------------------------------------------------- finding


def _idx_file(directory: Path, base: str) -> Path | None:
    # Prefer the uncompressed file (torchvision keeps both; raw reads faster).
    for name in (base, base + ".gz"):
        candidate = directory / name
        if candidate.is_file():
            return candidate
    return None


def _missing_files(directory: Path) -> list[str]:
    return [base for base in _ALL_FILES if _idx_file(directory, base) is None]


def _layouts(base: Path) -> list[Path]:
    """A folder holding the files directly, or a torchvision root above them."""
    return [base, base / "FashionMNIST" / "raw", base / "raw"]


def find_fashion_mnist(root: PathLike | None = None) -> Path:
    """Return the directory that holds the four Fashion-MNIST IDX files.

    With ``root``, only ``root`` is searched: either it holds the files itself
    or it is a torchvision root (``root/FashionMNIST/raw/``). Without it the
    search order is ``$FASHION_MNIST_ROOT``, the Debian package directory
    :data:`DEBIAN_DIR`, then :data:`DEFAULT_CACHE_DIR` (where ``download=True``
    stores the data). Each file may be uncompressed or ``.gz``.

    Raises ``FileNotFoundError`` listing every place looked and how to get the data.
    """
    if root is not None:
        bases = [Path(root).expanduser()]
    else:
        bases = []
        env = os.environ.get(ENV_VAR, "").strip()
        if env:
            bases.append(Path(env).expanduser())
        # Read the module globals at call time so tests/callers can redirect them.
        bases += [DEBIAN_DIR, DEFAULT_CACHE_DIR]

    looked: list[str] = []
    for base in bases:
        for directory in _layouts(base):
            if not directory.is_dir():
                looked.append(f"  - {directory} (no such directory)")
                continue
            missing = _missing_files(directory)
            if not missing:
                return directory
            looked.append(f"  - {directory} (missing: {', '.join(missing)})")

    wanted = ", ".join(f"{base}[.gz]" for base in _ALL_FILES)
    raise FileNotFoundError(
        "Fashion-MNIST not found. Looked for "
        f"{wanted} in:\n" + "\n".join(looked) + "\n"
        "Install it with `apt-get install dataset-fashion-mnist`, set "
        f"${ENV_VAR} to the folder holding the files, pass a torchvision root "
        "(a folder containing FashionMNIST/raw/), or pass download=True."
    )


# --------------------------------------------------------------------------- reading


def _read_bytes(path: Path) -> bytes:
    with open(path, "rb") as handle:
        head = handle.read(2)
    # Detect gzip by content, not name: files get renamed/extracted by hand.
    if head != b"\x1f\x8b":
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as handle:
            return handle.read()
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise InvalidSettingError(f"{path}: corrupt or truncated gzip data ({exc})") from exc


def read_idx(path: PathLike, expect_magic: int | None = None) -> np.ndarray:
    """Parse an IDX file (plain or gzip) into a native-endian numpy array.

    ``expect_magic`` (e.g. ``0x803`` for uint8 images, ``0x801`` for uint8
    labels) additionally pins the element type and number of dimensions.
    Any malformed header, wrong magic, or data size that disagrees with the
    header raises ``ValueError`` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    data = _read_bytes(path)
    if len(data) < 4:
        raise InvalidSettingError(f"{path}: truncated IDX file ({len(data)} bytes, no header)")
    magic = int.from_bytes(data[:4], "big")
    type_code, ndim = data[2], data[3]
    if data[0] != 0 or data[1] != 0 or type_code not in _IDX_DTYPES or ndim == 0:
        raise InvalidSettingError(f"{path}: not an IDX file (bad magic number 0x{magic:08x})")
    if expect_magic is not None and magic != expect_magic:
        raise InvalidSettingError(
            f"{path}: unexpected IDX magic 0x{magic:08x} (expected 0x{expect_magic:08x})"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise InvalidSettingError(f"{path}: truncated IDX header ({len(data)} of {header} bytes)")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[type_code]
    expected = int(np.prod(dims, dtype=object)) * dtype.itemsize
    actual = len(data) - header
    if actual < expected:
        raise InvalidSettingError(
            f"{path}: truncated IDX data ({actual} of {expected} bytes for shape {dims})"
        )
    if actual > expected:
        raise InvalidSettingError(
            f"{path}: {actual - expected} unexpected trailing bytes after shape {dims}"
        )
    array = np.frombuffer(data, dtype=dtype, count=expected // dtype.itemsize, offset=header)
    # astype copies into a writable, native-endian array (torch rejects big-endian).
    return array.astype(dtype.newbyteorder("="), copy=True).reshape(dims)


# --------------------------------------------------------------------------- loading


def _download(target: Path) -> Path:
    try:
        from torchvision.datasets import FashionMNIST
    except ImportError as exc:
        raise RuntimeError(
            "download=True needs torchvision; install it or use "
            "`apt-get install dataset-fashion-mnist`"
        ) from exc
    target.mkdir(parents=True, exist_ok=True)
    try:
        # torchvision fetches all four files into target/FashionMNIST/raw/.
        FashionMNIST(str(target), train=True, download=True)
    except Exception as exc:  # URLError, HTTPError, RuntimeError, checksum failures...
        raise RuntimeError(
            f"could not download Fashion-MNIST into {target / 'FashionMNIST' / 'raw'} "
            f"({type(exc).__name__}: {exc}). Without network access, install "
            "`apt-get install dataset-fashion-mnist`, or copy the four IDX files "
            f"into a folder and set ${ENV_VAR} to it."
        ) from exc
    return find_fashion_mnist(target)


def to_float_images(images: ArrayLike, size: int = 32) -> torch.Tensor:
    """uint8 images (N, H, W) or (N, 1, H, W) -> float32 RGB (N, 3, size, size) in [-1, 1].

    Resizing is bilinear with antialiasing (which matters when shrinking); the
    grey channel is copied to R, G and B. Work is chunked so converting a
    whole split never holds more than one extra chunk of temporaries.
    """
    if size <= 0:
        raise InvalidSettingError(f"size must be positive, got {size}")
    tensor = torch.as_tensor(images)
    if tensor.ndim == 3:
        tensor = tensor.unsqueeze(1)
    if tensor.ndim != 4 or tensor.shape[1] != 1:
        raise InvalidSettingError(
            f"expected uint8 images of shape (N, H, W) or (N, 1, H, W), got {tuple(tensor.shape)}"
        )
    if tensor.dtype != torch.uint8:
        raise InvalidSettingError(f"expected uint8 images, got {tensor.dtype}")
    count = tensor.shape[0]
    out = torch.empty((count, 3, size, size), dtype=torch.float32)
    for start in range(0, count, _CONVERT_CHUNK):
        chunk = tensor[start : start + _CONVERT_CHUNK].to(torch.float32)
        if chunk.shape[-2:] != (size, size):
            chunk = F.interpolate(
                chunk, size=(size, size), mode="bilinear", align_corners=False, antialias=True
            )
        chunk = (chunk / 127.5 - 1.0).clamp_(-1.0, 1.0)
        # A real copy per channel (not expand) so callers may modify in place.
        out[start : start + chunk.shape[0]] = chunk
    return out


def load_fashion_mnist(
    split: str = "train",
    root: PathLike | None = None,
    download: bool = False,
    size: int = 32,
    as_uint8: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one split (``"train"``: 60000 images, ``"test"``: 10000) as tensors.

    Returns ``(images, labels)``. By default images are float32
    (N, 3, size, size) in [-1, 1], resized from 28x28 (see the module
    docstring for why resizing rather than padding). With ``as_uint8=True``
    they are the raw uint8 (N, 1, 28, 28) pixels and ``size`` is ignored;
    convert later with :func:`to_float_images`. Labels are int64 (N,) in 0..9,
    indexing :data:`CLASSES`.

    The files are located with :func:`find_fashion_mnist`. Only with
    ``download=True`` and no local copy found does torchvision download the
    data, into ``root`` or :data:`DEFAULT_CACHE_DIR`; a failed download raises
    ``RuntimeError`` explaining the offline alternatives.
    """
    if split not in _FILES:
        raise InvalidSettingError(f"split must be 'train' or 'test', got {split!r}")
    if not as_uint8 and size <= 0:
        raise InvalidSettingError(f"size must be positive, got {size}")

    if download:
        try:
            directory = find_fashion_mnist(root)
        except FileNotFoundError:
            target = Path(root).expanduser() if root is not None else DEFAULT_CACHE_DIR
            directory = _download(target)
    else:
        directory = find_fashion_mnist(root)

    image_base, label_base = _FILES[split]
    image_path = _idx_file(directory, image_base)
    label_path = _idx_file(directory, label_base)
    assert image_path is not None and label_path is not None  # find_* checked both
    images = read_idx(image_path, expect_magic=IMAGE_MAGIC)
    labels = read_idx(label_path, expect_magic=LABEL_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise InvalidSettingError(
            f"{image_path} holds {images.shape[0]} images but {label_path} holds "
            f"{labels.shape[0]} labels"
        )
    if labels.size and int(labels.max()) >= NUM_CLASSES:
        raise InvalidSettingError(f"{label_path}: label {int(labels.max())} is outside 0..{NUM_CLASSES - 1}")

    label_tensor = torch.from_numpy(labels.astype(np.int64))
    raw = torch.from_numpy(images).unsqueeze(1)  # (N, 1, H, W) uint8
    if as_uint8:
        return raw, label_tensor
    return to_float_images(raw, size), label_tensor


# --------------------------------------------------------------------------- splitting


@dataclass(frozen=True, eq=False)  # eq=False: element-wise array == has no truth value
class ClassSplit:
    """Indices for class-level unlearning (all sorted int64, read-only).

    ``train_*`` and ``proxy_retain`` index the TRAIN set; ``test_*`` index the
    TEST set. ``proxy_retain`` holds retain-class training images withheld from
    ``train_retain``: same-domain images the retain objective never sees.
    """

    forget_classes: tuple[int, ...]
    retain_classes: tuple[int, ...]
    train_forget: np.ndarray
    train_retain: np.ndarray
    proxy_retain: np.ndarray
    test_forget: np.ndarray
    test_retain: np.ndarray


def _as_label_array(labels: ArrayLike, name: str) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    array = np.asarray(labels)
    if array.ndim != 1:
        raise InvalidSettingError(f"{name} must be 1-D, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise InvalidSettingError(f"{name} must hold integers, got dtype {array.dtype}")
    if array.size and (array.min() < 0 or array.max() >= NUM_CLASSES):
        raise InvalidSettingError(f"{name} holds labels outside 0..{NUM_CLASSES - 1}")
    return array.astype(np.int64, copy=False)


def _class_rng(seed: int, cls: int, stream: int) -> np.random.Generator:
    # One generator per (class, purpose): changing forget_classes or
    # proxy_fraction does not reshuffle the other classes' choices.
    return np.random.default_rng([seed, cls, stream])


def _frozen(indices: Iterable[np.ndarray]) -> np.ndarray:
    parts = list(indices)
    array = np.sort(np.concatenate(parts)) if parts else np.empty(0, dtype=np.int64)
    array = array.astype(np.int64, copy=False)
    array.setflags(write=False)
    return array


def _subsample(indices: np.ndarray, limit: int | None, rng: np.random.Generator) -> np.ndarray:
    if limit is None or indices.size <= limit:
        return indices
    return np.sort(rng.choice(indices, size=limit, replace=False))


def split_classes(
    train_labels: ArrayLike,
    test_labels: ArrayLike,
    forget_classes: Sequence[int] = (0, 1, 2),
    proxy_fraction: float = 0.1,
    seed: int = 0,
    max_per_class: int | None = None,
) -> ClassSplit:
    """Split train/test indices into forget classes and retain classes.

    For every retain class a random ``proxy_fraction`` of its training indices
    (at least one when the fraction is positive and the class has two or more
    images, never all of them) becomes ``proxy_retain`` and is removed from
    ``train_retain``. ``max_per_class`` first subsamples every class, in both
    the train and the test set, to at most that many images (for CPU-sized
    runs). All random choices are deterministic given ``seed``. Test indices
    are drawn from ``test_labels`` only, so they never refer to training images.
    """
    train = _as_label_array(train_labels, "train_labels")
    test = _as_label_array(test_labels, "test_labels")

    given = list(forget_classes)
    if any(isinstance(c, bool) or not isinstance(c, (int, np.integer)) for c in given):
        raise InvalidSettingError(f"forget_classes must be integer class indices, got {given!r}")
    requested = [int(c) for c in given]
    if not requested:
        raise InvalidSettingError("forget_classes is empty: name at least one class to forget")
    bad = [c for c in requested if not 0 <= c < NUM_CLASSES]
    if bad:
        raise InvalidSettingError(f"forget_classes {bad} are outside 0..{NUM_CLASSES - 1}")
    forget = tuple(sorted(set(requested)))
    if len(forget) == NUM_CLASSES:
        raise InvalidSettingError("forget_classes covers every class: nothing would be retained")
    retain = tuple(c for c in range(NUM_CLASSES) if c not in forget)
    if not 0.0 <= proxy_fraction < 1.0:
        raise InvalidSettingError(f"proxy_fraction must be in [0, 1), got {proxy_fraction}")
    if max_per_class is not None and max_per_class <= 0:
        raise InvalidSettingError(f"max_per_class must be positive or None, got {max_per_class}")

    train_by_class = {
        c: _subsample(np.flatnonzero(train == c), max_per_class, _class_rng(seed, c, 0))
        for c in range(NUM_CLASSES)
    }
    test_by_class = {
        c: _subsample(np.flatnonzero(test == c), max_per_class, _class_rng(seed, c, 1))
        for c in range(NUM_CLASSES)
    }

    kept: list[np.ndarray] = []
    proxy: list[np.ndarray] = []
    for c in retain:
        indices = train_by_class[c]
        n = indices.size
        k = int(round(proxy_fraction * n))
        if proxy_fraction > 0 and n >= 2:
            k = min(max(k, 1), n - 1)
        else:
            k = 0
        chosen = _class_rng(seed, c, 2).permutation(n)[:k]
        mask = np.zeros(n, dtype=bool)
        mask[chosen] = True
        proxy.append(indices[mask])
        kept.append(indices[~mask])

    result = ClassSplit(
        forget_classes=forget,
        retain_classes=retain,
        train_forget=_frozen(train_by_class[c] for c in forget),
        train_retain=_frozen(kept),
        proxy_retain=_frozen(proxy),
        test_forget=_frozen(test_by_class[c] for c in forget),
        test_retain=_frozen(test_by_class[c] for c in retain),
    )
    if result.train_forget.size == 0:
        raise InvalidSettingError(f"train_labels holds no images of forget classes {forget}")
    if result.train_retain.size == 0:
        raise InvalidSettingError(f"train_labels holds no images of retain classes {retain}")
    return result


# --------------------------------------------------------------------------- exporting


def _images_for_export(images: ArrayLike, picked: np.ndarray, size: int) -> torch.Tensor:
    """The selected images as float RGB (k, 3, size, size) in [-1, 1]."""
    tensor = torch.as_tensor(images)
    batch = tensor[torch.from_numpy(picked)]
    if batch.dtype == torch.uint8:
        return to_float_images(batch, size)
    if not batch.is_floating_point() or batch.ndim != 4 or batch.shape[1] not in (1, 3):
        raise InvalidSettingError(
            "images must be uint8 (N, [1,] H, W) or float (N, 1|3, H, W) in [-1, 1], "
            f"got {tensor.dtype} {tuple(tensor.shape)}"
        )
    batch = batch.detach().to("cpu", torch.float32)
    if batch.shape[-2:] != (size, size):
        batch = F.interpolate(
            batch, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
    if batch.shape[1] == 1:
        batch = batch.repeat(1, 3, 1, 1)
    return batch


def export_split_folders(
    images: ArrayLike,
    labels: ArrayLike,
    indices: ArrayLike,
    directory: PathLike,
    size: int = 32,
) -> Path:
    """Write ``images[i]`` for each ``i`` in ``indices`` as ``{i:05d}_c{label}.png``.

    ``images`` is what :func:`load_fashion_mnist` returns, either form (uint8
    or float in [-1, 1]); PNGs are RGB, ``size`` x ``size``. Files are written
    atomically and existing ones are skipped, so rerunning an interrupted
    export only writes what is missing. Returns ``directory``.
    """
    if size <= 0:
        raise InvalidSettingError(f"size must be positive, got {size}")
    directory = Path(directory)
    label_array = _as_label_array(labels, "labels")
    count = len(images)
    if label_array.shape[0] != count:
        raise InvalidSettingError(f"{count} images but {label_array.shape[0]} labels")
    if isinstance(indices, torch.Tensor):
        indices = indices.detach().cpu().numpy()
    index_array = np.asarray(indices).reshape(-1)
    if index_array.size and not np.issubdtype(index_array.dtype, np.integer):
        raise InvalidSettingError(f"indices must be integers, got dtype {index_array.dtype}")
    index_array = index_array.astype(np.int64, copy=False)
    if index_array.size and (index_array.min() < 0 or index_array.max() >= count):
        raise InvalidSettingError(f"indices must lie in 0..{count - 1}")

    directory.mkdir(parents=True, exist_ok=True)
    # Deduplicate and keep only what is not on disk yet (resume support).
    todo = [
        (int(i), directory / f"{int(i):05d}_c{int(label_array[i])}.png")
        for i in np.unique(index_array)
    ]
    todo = [(i, path) for i, path in todo if not path.exists()]
    for start in range(0, len(todo), _CONVERT_CHUNK):
        chunk = todo[start : start + _CONVERT_CHUNK]
        picked = np.array([i for i, _ in chunk], dtype=np.int64)
        batch = _images_for_export(images, picked, size)
        for tensor, (_, path) in zip(batch, chunk):
            save_png_atomic(tensor_to_image(tensor), path)
    return directory
