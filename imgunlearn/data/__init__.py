"""Image loading, image sources (folders/manifests) and Lightning data modules."""

from .._lazy import lazy_exports
from .images import (
    IMAGE_EXTENSIONS,
    ImageLoadError,
    fit_to_square,
    image_to_tensor,
    load_image_tensor,
    open_rgb,
    image_from_array,
    open_rgb_array,
    save_png_atomic,
    tensor_to_image,
)
from .sources import (
    EmptyImageSetError,
    ImageRecord,
    ManifestError,
    list_image_files,
    read_manifest,
    resolve_records,
    validate_records,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "EmptyImageSetError",
    "ImageFolderDataModule",
    "ImageLoadError",
    "ImageRecord",
    "ImageRecordDataset",
    "ManifestError",
    "UnlearningDataModule",
    "fit_to_square",
    "image_to_tensor",
    "list_image_files",
    "load_image_tensor",
    "open_rgb",
    "image_from_array",
    "open_rgb_array",
    "read_manifest",
    "resolve_records",
    "save_png_atomic",
    "tensor_to_image",
    "validate_records",
]

# The data modules load on first use: they bring in Lightning, which preprocess never needs.
__getattr__, __dir__ = lazy_exports(__name__, dict.fromkeys(
    ["ImageFolderDataModule", "ImageRecordDataset", "UnlearningDataModule"], "datasets"), globals())
