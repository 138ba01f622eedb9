"""Reading search results back: FID-vs-update curves from a search's ``state.json`` and their line plot.

The plot is drawn with matplotlib (an SVG a README can embed, or a PNG).
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure

from lit_nat.core.io import atomic_write_bytes
from lit_nat.search.session import STATE_FILE

Curve = list[tuple[float, float]]

#: distinguishable on white and for the common colour-vision deficiencies (Okabe-Ito)
COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")

#: a reproducible file: no creation date or version in the metadata (so an unchanged plot is an unchanged file)
_NO_DATE = {".svg": {"Date": None}, ".png": {"Software": None}, ".pdf": {"CreationDate": None}}

def search_curve(search_dir: str | Path, offset: int = 0) -> Curve:
    """``[(update, FID)]`` of a search: the FID at the starting point (update 0) and after each applied update.

    Read from ``search_dir/state.json`` (written by ``python -m lit_nat search``, the ``autonat`` driver's rounds and
    the ``ScheduleSearch`` callback's ``searched_strategies/``).
    A skipped update (non-finite evaluation) leaves the point unchanged and adds no new value. ``offset`` shifts the
    update numbers, to draw consecutive searches (the rounds of Algorithm 1) on one axis.
    """
    path = Path(search_dir) / STATE_FILE
    try:
        history = json.loads(path.read_text())["search"]["history"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a search state file ({err})") from err
    curve: Curve = []
    applied = 0
    # every record has the key (None inside fit, where no new point is evaluated unless backtracking measured it)
    evaluates_new_points = any(record.get("fid_after") is not None for record in history)
    for record in history:
        if record.get("fid") is not None and (not curve or not evaluates_new_points):
            # the starting point; inside fit (no new-point evaluations) each update's base FID, measured on the
            # model of that epoch, is the point at the number of updates applied before it
            curve.append((offset + applied, float(record["fid"])))
        if record.get("skipped"):
            continue
        applied += 1
        if record.get("fid_after") is not None:  # the search command evaluates each new point
            curve.append((offset + applied, float(record["fid_after"])))
    return curve


def line_plot(
    series: Mapping[str, Sequence[tuple[float, float]]],
    path: str | Path,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    size: tuple[float, float] = (6.4, 3.6),
) -> Path:
    """Write a line plot of ``{name: [(x, y), ...]}`` (markers at the points, a legend) with matplotlib; the format
    follows the suffix (``.svg`` renders on GitHub, ``.png`` anywhere). Written atomically."""
    if not any(series.values()):
        raise ValueError("line_plot: no points to draw")
    fig = Figure(figsize=size, layout="constrained")  # no pyplot: no global state, no display backend
    ax = fig.add_subplot()
    for i, (name, curve) in enumerate(series.items()):
        xs, ys = zip(*curve) if curve else ((), ())
        ax.plot(xs, ys, marker="o", markersize=4, linewidth=2, color=COLOURS[i % len(COLOURS)], label=name)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.xaxis.get_major_locator().set_params(integer=True)  # updates are whole numbers
    ax.grid(True, color="#ddd")
    ax.legend(frameon=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    with matplotlib.rc_context({"svg.hashsalt": "lit_nat"}):  # fixed SVG element ids
        fig.savefig(buffer, format=path.suffix.lstrip(".") or "svg", metadata=_NO_DATE.get(path.suffix, None))
    return atomic_write_bytes(path, buffer.getvalue())
