"""What to forget (docs/design.md §2): faces found by MTCNN, optionally filtered by an open_clip
zero-shot classifier, and surveys that turn photo folders into forget/retain manifests."""

from .clip_filter import DEFAULT_PROMPTS, ClipFilter, crop_boxes, filter_detections
from .faces import FaceDetections, FaceFinder, merge_boxes
from .survey import find_faces_in_folder, split_survey

__all__ = [
    "DEFAULT_PROMPTS", "ClipFilter", "FaceDetections", "FaceFinder", "crop_boxes", "filter_detections",
    "find_faces_in_folder", "merge_boxes", "split_survey",
]
