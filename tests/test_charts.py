"""The report's SVG charts parse, keep hostile names as text, draw gaps as gaps, and build fast."""

from __future__ import annotations

import io
import math
import time
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from toolkit.calibration import top_label_ece
from toolkit.report.charts import (
    ZOOM_HINT,
    ZOOM_SCRIPT,
    Series,
    heatmap_png,
    line_chart,
    reliability_chart,
)

SVG = "{http://www.w3.org/2000/svg}"
HOSTILE = "<img src=x onerror=alert(1)>"


def parse(svg: object) -> ET.Element:
    return ET.fromstring(str(svg))


def polylines(root: ET.Element) -> list[ET.Element]:
    return list(root.iter(f"{SVG}polyline"))


def texts(root: ET.Element) -> list[str]:
    """The shown texts, without the hover text of a legend entry's ``<title>``."""
    return [(t.text or "") + "".join(child.tail or "" for child in t) for t in root.iter(f"{SVG}text")]


def y_tick_labels(root: ET.Element) -> list[str]:
    return [t.text or "" for t in root.iter(f"{SVG}text") if t.get("text-anchor") == "end"]


def numeric_labels(root: ET.Element) -> list[str]:
    """The tick labels: texts that are numbers."""
    out = []
    for text in texts(root):
        try:
            float(text)
        except ValueError:
            continue
        out.append(text)
    return out


def test_line_chart_is_a_zoomable_svg_with_one_polyline_per_series():
    svg = line_chart([Series("train", [1, 2, 3], [0.9, 0.5, 0.3]), Series("val", [1, 2, 3], [1.0, 0.7, 0.6], dashed=True)],
                     title="loss", x_label="epoch", y_label="loss")
    root = parse(svg)
    assert root.tag == f"{SVG}svg"
    assert root.get("class") == "chart" and root.get("role") == "img" and root.get("data-zoom") == "1"
    assert root.get("viewBox", "").startswith("0 0 520 ")
    assert root.find(f"{SVG}title").text == "loss"
    lines = polylines(root)
    assert len(lines) == 2
    assert lines[1].get("stroke-dasharray") and not lines[0].get("stroke-dasharray")
    assert len(list(root.iter(f"{SVG}circle"))) == 6  # markers on short series
    assert {"epoch", "train", "val"} <= set(texts(root))


def test_coordinates_have_at_most_one_decimal():
    svg = line_chart([Series("a", [0.123456, 1.987654, 3.3333333], [1 / 3, 2 / 3, 1.0])], title="t", x_label="x", y_label="y")
    points = polylines(parse(svg))[0].get("points", "")
    numbers = [n for pair in points.split() for n in pair.split(",")]
    assert len(numbers) == 6
    assert all(len(n.partition(".")[2]) <= 1 for n in numbers)


def test_hostile_series_name_title_and_labels_stay_text():
    svg = line_chart([Series(HOSTILE, [0, 1], [0, 1])], title=f"t {HOSTILE}", x_label=HOSTILE, y_label="<b>y</b>")
    html = str(svg)
    assert "<img" not in html and "<b>" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    root = parse(svg)
    assert root.find(f"{SVG}title").text == f"t {HOSTILE}"
    assert HOSTILE in texts(root) and "<b>y</b>" in texts(root)
    assert not list(root.iter("img")) and not list(root.iter(f"{SVG}img"))


def test_nan_and_none_break_the_line_into_segments():
    y = [1.0, 2.0, math.nan, 3.0, 4.0, None, None, 5.0, 6.0, 7.0]
    root = parse(line_chart([Series("gappy", list(range(10)), y)], title="t", x_label="x", y_label="y"))
    segments = [p.get("points", "").split() for p in polylines(root)]
    assert [len(s) for s in segments] == [2, 2, 3]


def test_a_lone_point_between_gaps_keeps_its_marker_on_a_long_series():
    y = [float(i) for i in range(40)]
    y[19] = y[21] = math.nan
    root = parse(line_chart([Series("long", list(range(40)), y)], title="t", x_label="x", y_label="y"))
    assert len(polylines(root)) == 3
    assert len(list(root.iter(f"{SVG}circle"))) == 1  # > 30 points: only the isolated one


def test_constant_series_and_single_point_get_a_padded_range():
    for series in (Series("flat", [0, 1, 2, 3], [0.5] * 4), Series("one", [3], [7.0]), Series("zero", [0, 1], [0, 0])):
        root = parse(line_chart([series], title="t", x_label="x", y_label="y"))
        assert len(polylines(root)) == 1
        labels = numeric_labels(root)
        assert 8 <= len(labels) <= 12  # 4 to 6 ticks on each axis
        for value in ("nan", "inf"):
            assert value not in str(root.attrib) and value not in "".join(texts(root)).lower()


def test_ticks_are_few_and_round():
    root = parse(line_chart([Series("a", [0, 100], [0.31, 2.3])], title="t", x_label="x", y_label="y"))
    labels = numeric_labels(root)
    assert labels == ["0", "20", "40", "60", "80", "100", "0.0", "0.5", "1.0", "1.5", "2.0", "2.5"]


def test_empty_list_of_series_and_series_without_data():
    root = parse(line_chart([], title="nothing", x_label="x", y_label="y"))
    assert polylines(root) == []
    assert "no data" in texts(root)
    root = parse(line_chart([Series("ghost", [1, 2], [math.nan, None]), Series("none", [], [])],
                            title="t", x_label="x", y_label="y"))
    assert polylines(root) == []
    assert {"ghost (no data)", "none (no data)"} <= set(texts(root))


def test_series_of_unequal_length_is_refused():
    with pytest.raises(ValueError, match="as long as"):
        line_chart([Series("bad", [1, 2, 3], [1, 2])], title="t", x_label="x", y_label="y")


def test_eleven_series_reuse_the_colour_cycle():
    series = [Series(f"s{k}", [0, 1], [k, k + 1]) for k in range(11)]
    root = parse(line_chart(series, title="t", x_label="x", y_label="y"))
    colours = [g.get("stroke") for g in root.iter(f"{SVG}g")]
    assert len(set(colours[:10])) == 10 and colours[10] == colours[0]


def test_log_y_labels_original_units_and_drops_non_positive_values():
    y = [1000.0, 100.0, 0.0, 10.0, -5.0, 1.0]
    root = parse(line_chart([Series("loss", list(range(6)), y)], title="t", x_label="x", y_label="y", log_y=True))
    assert [len(p.get("points", "").split()) for p in polylines(root)] == [2, 1, 1]
    labels = set(numeric_labels(root))
    assert {"1", "10", "100", "1000"} <= labels
    narrow = parse(line_chart([Series("acc", [0, 1, 2], [0.91, 0.92, 0.93])], title="t", x_label="x", y_label="y",
                              log_y=True))
    y_labels = [float(s) for s in y_tick_labels(narrow)]
    assert 4 <= len(y_labels) <= 6
    assert y_labels[0] <= 0.91 and y_labels[-1] >= 0.93


def test_ece_numbers():
    # Every bin's accuracy equals its confidence: perfectly calibrated.
    conf = np.array([0.25] * 4 + [0.75] * 4)
    correct = np.array([1, 0, 0, 0, 1, 1, 1, 0], dtype=bool)
    assert top_label_ece(conf, correct) == pytest.approx(0.0, abs=1e-12)
    # Sure of everything, right half the time.
    assert top_label_ece(np.ones(10), np.arange(10) % 2 == 0) == pytest.approx(0.5)
    # By hand, 2 bins: (0.5·|0.5 − 0.3|) + (0.5·|1 − 0.85|) = 0.1 + 0.075.
    ece = top_label_ece(np.array([0.2, 0.4, 0.9, 0.8]), np.array([0, 1, 1, 1], dtype=bool), bins=2)
    assert ece == pytest.approx(0.175)
    assert math.isnan(top_label_ece(np.array([]), np.array([], dtype=bool)))


def test_ece_of_sampled_calibrated_predictions_is_small():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.1, 1.0, 20000)
    assert top_label_ece(conf, rng.uniform(size=conf.size) < conf) < 0.02


def test_ece_refuses_bad_input():
    with pytest.raises(ValueError):
        top_label_ece(np.array([0.5, 0.6]), np.array([True]))
    with pytest.raises(ValueError):
        top_label_ece(np.array([1.5]), np.array([True]))
    # A float32 softmax may overshoot 1 by a rounding error.
    assert top_label_ece(np.array([1.0000001]), np.array([True])) == pytest.approx(0.0, abs=1e-6)


def test_reliability_chart_bars_and_ece():
    conf = np.array([0.95, 0.9, 0.85, 0.6, 0.55, 0.2])
    correct = np.array([1, 1, 0, 1, 0, 0], dtype=bool)
    svg, ece = reliability_chart(conf, correct, bins=5, title=f"calibration {HOSTILE}")
    assert ece == pytest.approx(top_label_ece(conf, correct, bins=5))
    root = parse(svg)
    assert root.get("data-zoom") == "1" and "<img" not in str(svg)
    bars = [r for r in root.iter(f"{SVG}rect") if r.find(f"{SVG}title") is not None]
    assert len(bars) == 2 * 3  # three non-empty bins: a share bar and an accuracy bar each
    assert any(t.startswith("ECE ") for t in texts(root))


def test_reliability_chart_without_rows():
    svg, ece = reliability_chart(np.array([]), np.array([], dtype=bool), title="empty")
    assert math.isnan(ece)
    assert "no rows" in texts(parse(svg))


@pytest.mark.parametrize(("n", "expected_side"), [(3, 600), (500, 500)])
def test_heatmap_png_sizes(n, expected_side):
    matrix = np.random.default_rng(1).uniform(-0.2, 1.2, (n, n))
    image = Image.open(io.BytesIO(heatmap_png(matrix)))
    assert image.format == "PNG" and image.size == (expected_side, expected_side)
    assert max(image.size) <= 600


def test_heatmap_png_colours_and_explicit_cell():
    matrix = np.array([[0.0, 1.0], [math.nan, 2.0]])
    image = Image.open(io.BytesIO(heatmap_png(matrix, cell=4))).convert("RGB")
    assert image.size == (8, 8)
    assert image.getpixel((0, 0)) == (255, 255, 255)
    assert image.getpixel((4, 0)) == image.getpixel((4, 4))  # 2.0 is clipped to 1.0
    assert image.getpixel((4, 0))[2] > image.getpixel((4, 0))[0]  # dark blue
    assert image.getpixel((0, 4)) == (200, 200, 200)  # NaN
    # More rows than max_side: never under one pixel per cell.
    assert Image.open(io.BytesIO(heatmap_png(np.zeros((700, 10)), max_side=600))).size == (10, 700)
    with pytest.raises(ValueError):
        heatmap_png(np.zeros(3))


def test_zoom_script_and_hint():
    assert isinstance(ZOOM_SCRIPT, str) and ZOOM_SCRIPT.strip()
    for needed in ("viewBox", "dblclick", "wheel", "{passive:false}", "svg[data-zoom]", "addEventListener"):
        assert needed in ZOOM_SCRIPT
    assert "</script" not in ZOOM_SCRIPT.lower()  # it is inlined in a <script> tag
    assert len(ZOOM_SCRIPT.splitlines()) < 60
    assert ZOOM_HINT.endswith(".") and "zoom" in ZOOM_HINT.lower()


def test_many_charts_build_quickly():
    rng = np.random.default_rng(2)
    x = list(range(30))
    start = time.perf_counter()
    for run in range(150):
        line_chart([Series(f"train {run}", x, rng.uniform(size=30).tolist()),
                    Series(f"val {run}", x, rng.uniform(size=30).tolist(), dashed=True)],
                   title=f"run {run}", x_label="epoch", y_label="loss")
    elapsed = time.perf_counter() - start
    assert elapsed < 3.0, f"150 charts took {elapsed:.2f} s"
