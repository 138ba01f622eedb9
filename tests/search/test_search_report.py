"""The search report: FID curves read back from ``state.json`` and drawn with matplotlib; clear errors."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET

import pytest

from lit_nat.search.gradient import UpdateRecord
from lit_nat.search.report import line_plot, search_curve


def test_line_plot_writes_a_reproducible_svg_with_every_series(tmp_path):
    series = {"T=4": [(0, 15.5), (1, 13.4), (2, 11.7)], "T=8 <b>": [(0, 14.0), (1, 12.0)]}
    path = line_plot(series, tmp_path / "plots" / "fid.svg", title="FID & updates", xlabel="update", ylabel="FID")
    root = ET.parse(path).getroot()  # well-formed XML
    assert root.tag.endswith("svg")
    first = path.read_bytes()
    assert line_plot(series, path, title="FID & updates", xlabel="update", ylabel="FID").read_bytes() == first
    assert not list(path.parent.glob(".*tmp"))  # written atomically, no temp file left
    png = line_plot(series, tmp_path / "fid.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_line_plot_and_search_curve_errors(tmp_path):
    with pytest.raises(ValueError, match="no points"):
        line_plot({"empty": []}, tmp_path / "x.svg")
    (tmp_path / "state.json").write_text("{}")
    with pytest.raises(ValueError, match="not a search state file"):
        search_curve(tmp_path)


def write_history(folder, records) -> None:
    (folder / "state.json").write_text(json.dumps({"search": {"history": [r.to_dict() for r in records]}}))


def test_search_curve_of_fit_and_of_the_search_command(tmp_path):
    """Inside fit each update's base FID is the curve (its records carry ``fid_after: null``); the search command's
    records carry the new point's FID, and a skipped update adds no point."""
    fit = [UpdateRecord(k, [0.0], fid, 1.0, 7, 1.0) for k, fid in enumerate([9.0, 8.5, 8.0])]
    write_history(tmp_path, fit)
    assert search_curve(tmp_path, offset=2) == [(2, 9.0), (3, 8.5), (4, 8.0)]
    command = [UpdateRecord(0, [0.0], 9.0, 1.0, 7, 1.0, fid_after=8.4),
               UpdateRecord(1, [0.0], 8.4, math.nan, 7, 1.0, skipped=True, reason="non-finite"),
               UpdateRecord(1, [0.0], 8.4, 1.0, 7, 1.0, fid_after=7.9)]  # fmt: skip
    write_history(tmp_path, command)
    assert search_curve(tmp_path) == [(0, 9.0), (1, 8.4), (2, 7.9)]
