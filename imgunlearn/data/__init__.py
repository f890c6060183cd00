"""Image loading, image sources (folders/manifests) and Lightning data modules."""

from .datasets import ImageFolderDataModule, ImageRecordDataset, UnlearningDataModule
from .images import (
    IMAGE_EXTENSIONS,
    ImageLoadError,
    fit_to_square,
    image_to_tensor,
    load_image_tensor,
    open_rgb,
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
    "read_manifest",
    "resolve_records",
    "save_png_atomic",
    "tensor_to_image",
    "validate_records",
]
