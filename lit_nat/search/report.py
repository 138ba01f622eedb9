"""Reading search results back: FID-vs-update curves from a search's ``state.json`` and a dependency-free SVG plot.

The plot is plain SVG (no matplotlib in our dependencies) so a README can embed it and GitHub renders it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from xml.sax.saxutils import escape

from lit_nat.search.standalone import STATE_FILE

Curve = list[tuple[float, float]]

#: distinguishable on white and for the common colour-vision deficiencies (Okabe-Ito)
COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")


def search_curve(search_dir: str | Path, offset: int = 0) -> Curve:
    """``[(update, FID)]`` of a search: the FID at the starting point (update 0) and after each applied update.

    Read from ``search_dir/state.json`` (written by ``python -m lit_nat search`` and the ``autonat`` driver's rounds).
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
    for record in history:
        if not curve and record.get("fid") is not None:
            curve.append((offset, float(record["fid"])))  # the starting point
        if record.get("skipped"):
            continue
        applied += 1
        if record.get("fid_after") is not None:  # each applied update evaluates its new point
            curve.append((offset + applied, float(record["fid_after"])))
    return curve


def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering [lo, hi]."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def svg_line_plot(
    series: Mapping[str, Sequence[tuple[float, float]]],
    path: str | Path,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    size: tuple[int, int] = (640, 360),
) -> Path:
    """Write a line plot of ``{name: [(x, y), ...]}`` (markers at the points, a legend) to an SVG file."""
    points = [p for curve in series.values() for p in curve]
    if not points:
        raise ValueError("svg_line_plot: no points to draw")
    width, height = size
    left, right, top, bottom = 58, 16, 34 if title else 14, 44
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x_lo, x_hi = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    pad = 0.05 * (max(ys) - min(ys) or 1.0)
    y_lo, y_hi = min(ys) - pad, max(ys) + pad

    def sx(x: float) -> float:
        return left + (x - x_lo) / (x_hi - x_lo) * (width - left - right)

    def sy(y: float) -> float:
        return top + (y_hi - y) / (y_hi - y_lo) * (height - top - bottom)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>']  # fmt: skip
    if title:
        out.append(f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14">{escape(title)}</text>')
    for y in _ticks(y_lo, y_hi):
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:g}</text>')
    for x in _ticks(x_lo, x_hi, count=min(10, int(x_hi - x_lo) or 1)):
        out.append(f'<text x="{sx(x):.1f}" y="{height - bottom + 16}" text-anchor="middle">{x:g}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" '
               f'fill="none" stroke="#333"/>')  # fmt: skip
    out.append(f'<text x="{(left + width - right) / 2}" y="{height - 8}" text-anchor="middle">{escape(xlabel)}</text>')
    out.append(f'<text transform="translate(14 {(top + height - bottom) / 2}) rotate(-90)" '
               f'text-anchor="middle">{escape(ylabel)}</text>')  # fmt: skip
    for i, (name, curve) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in curve)
        out.append(f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="2"/>')
        out += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{colour}"/>' for x, y in curve]
        legend_y = top + 14 + 16 * i
        out.append(f'<line x1="{width - right - 200}" x2="{width - right - 180}" y1="{legend_y - 4}" '
                   f'y2="{legend_y - 4}" stroke="{colour}" stroke-width="2"/>')  # fmt: skip
        out.append(f'<text x="{width - right - 174}" y="{legend_y}">{escape(name)}</text>')
    out.append("</svg>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out) + "\n")
    return path
