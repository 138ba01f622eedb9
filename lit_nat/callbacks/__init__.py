"""Callbacks: sample grids now; the schedule search lives in lit_nat.search."""

from lit_nat.callbacks.sample_grid import SampleGrid

__all__ = ["SampleGrid"]
