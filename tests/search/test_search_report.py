"""The search report: FID curves read back from ``state.json`` and drawn with matplotlib; clear errors."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

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
