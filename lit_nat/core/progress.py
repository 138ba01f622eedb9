"""Progress bars with ETA for the long waits outside Lightning's loops (FID generation, search updates, reference
statistics, shard verification): tqdm on stderr, on rank 0 only, off when ``enabled`` is False (a Trainer built with
``enable_progress_bar=False``, tests). Lightning's own bars use tqdm too, so the styles match."""

from __future__ import annotations

import sys
from typing import Any

from tqdm.auto import tqdm


def progress(total: int | None, desc: str, unit: str = "it", enabled: bool = True, **kwargs: Any) -> tqdm:
    """A bar of ``total`` ``unit``s (None: a counter without ETA); use as a context manager and ``update(n)``."""
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, file=sys.stderr, dynamic_ncols=True,
                mininterval=1.0, leave=kwargs.pop("leave", False), **kwargs)  # fmt: skip


def trainer_shows_progress(trainer: Any) -> bool:
    """Rank 0 of a Trainer whose progress bar is on (so ``enable_progress_bar=False`` silences ours too)."""
    return bool(trainer.is_global_zero and getattr(trainer, "progress_bar_callback", None) is not None)
