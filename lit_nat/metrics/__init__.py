"""Evaluation metrics: FID against reference statistics, Inception Score, pluggable offline feature extractors."""

from lit_nat.metrics.extractors import (
    EXTRACTORS,
    DigitsExtractor,
    FeatureExtractor,
    InceptionV3Extractor,
    build_extractor,
    register_extractor,
)
from lit_nat.metrics.fid import FeatureStatistics, InceptionScore, ReferenceFID, frechet_distance
from lit_nat.metrics.reference import (
    ReferenceStats,
    compute_reference_stats,
    folder_images,
    load_reference_stats,
    save_reference_stats,
    shard_images,
)

__all__ = [
    "EXTRACTORS",
    "DigitsExtractor",
    "FeatureExtractor",
    "FeatureStatistics",
    "InceptionScore",
    "InceptionV3Extractor",
    "ReferenceFID",
    "ReferenceStats",
    "build_extractor",
    "compute_reference_stats",
    "folder_images",
    "frechet_distance",
    "load_reference_stats",
    "register_extractor",
    "save_reference_stats",
    "shard_images",
]
