"""The SVG line plot of the search report: valid SVG, one line and one marker per point per series, clear errors."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from lit_nat.search.report import search_curve, svg_line_plot

SVG = "{http://www.w3.org/2000/svg}"


def test_svg_line_plot_draws_every_series_and_point(tmp_path):
    series = {"T=4": [(0, 15.5), (1, 13.4), (2, 11.7)], "T=8 <b>": [(0, 14.0), (1, 12.0)]}
    path = svg_line_plot(series, tmp_path / "plots" / "fid.svg", title="FID & updates", xlabel="update", ylabel="FID")
    root = ET.parse(path).getroot()  # well-formed XML: names with '<' and '&' are escaped
    lines = root.findall(f"{SVG}polyline")
    assert len(lines) == 2 and len(root.findall(f"{SVG}circle")) == 5
    first = [tuple(map(float, p.split(","))) for p in lines[0].get("points").split()]
    xs, ys = zip(*first)
    assert xs[0] < xs[1] < xs[2] and ys[0] < ys[1] < ys[2]  # a falling FID is drawn falling (SVG y grows down)
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "T=8 <b>" in texts and "FID & updates" in texts


def test_svg_line_plot_and_search_curve_errors(tmp_path):
    with pytest.raises(ValueError, match="no points"):
        svg_line_plot({"empty": []}, tmp_path / "x.svg")
    (tmp_path / "state.json").write_text("{}")
    with pytest.raises(ValueError, match="not a search state file"):
        search_curve(tmp_path)
