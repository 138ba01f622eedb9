"""Callbacks: sample grids and generation pictures, FID/IS evaluation; the schedule search lives in lit_nat.search."""

from lit_nat.callbacks.evaluation import GenerativeEvaluation
from lit_nat.callbacks.sample_grid import SampleGrid

__all__ = ["GenerativeEvaluation", "SampleGrid"]
