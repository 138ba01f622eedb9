"""Callbacks: sample grids and generation pictures, FID/IS evaluation, run-directory lock and preemption; the schedule
search's gradient steps between epochs (its algorithm lives in lit_nat.search)."""

from lit_nat.callbacks.evaluation import GenerativeEvaluation
from lit_nat.callbacks.reliability import Preemption, RunDirectoryLock
from lit_nat.callbacks.run_health import RunHealth
from lit_nat.callbacks.sample_grid import SampleGrid
from lit_nat.callbacks.schedule_search import ScheduleSearch

__all__ = ["GenerativeEvaluation", "Preemption", "RunDirectoryLock", "RunHealth", "SampleGrid", "ScheduleSearch"]
