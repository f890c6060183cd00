"""Metrics of docs/design.md §3: Fréchet distance in a pluggable feature space, Inception score, CLIP
cosine, PSNR/SSIM (also over a pixel mask), the accuracy of our own small classifier on generator
outputs, face survival and identity leak (``identity`` imports dlib only when a FaceIdentity is made)."""

from .classifier import SmallClassifier, load_classifier, save_classifier, train_classifier
from .features import (
    ClassifierFeatures,
    FeatureExtractor,
    InceptionFeatures,
    MobileNetV2Features,
    OpenClipFeatures,
    get_feature_extractor,
    load_state_dict_file,
)
from .faces import face_survival, faces_found, matched_faces, surviving_faces
from .identity import IDENTITY_THRESHOLD, FaceIdentity, IdentityModelsMissing, identity_matched
from .image_metrics import (
    classifier_accuracy,
    clip_cosine,
    evaluate_outputs,
    extractor_name,
    frechet_distance,
    inception_score,
    masked_psnr,
    masked_ssim,
    psnr,
    ssim,
)

__all__ = [
    "IDENTITY_THRESHOLD", "ClassifierFeatures", "FaceIdentity", "FeatureExtractor", "IdentityModelsMissing",
    "InceptionFeatures", "MobileNetV2Features", "OpenClipFeatures", "SmallClassifier", "classifier_accuracy",
    "clip_cosine", "evaluate_outputs", "extractor_name", "face_survival", "faces_found", "frechet_distance",
    "get_feature_extractor", "identity_matched", "inception_score", "load_classifier", "load_state_dict_file",
    "masked_psnr", "masked_ssim", "matched_faces", "surviving_faces", "psnr", "save_classifier", "ssim", "train_classifier",
]
