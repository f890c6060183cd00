"""End-to-end pipelines: the tiled, post-checked Sanitizer and whole survey folders."""

from .sanitizer import SanitizeReport, Sanitizer
from .survey import SURVEY_EXTENSIONS, SurveySummary, preprocess_folder

__all__ = ["SURVEY_EXTENSIONS", "SanitizeReport", "Sanitizer", "SurveySummary", "preprocess_folder"]
