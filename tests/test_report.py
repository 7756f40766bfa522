"""`planner report`: Pareto plots that open offline and a table that marks the front."""

from __future__ import annotations

import pandas as pd
from PIL import Image
from selection_tables import four_widths

from planner.deploy.report import Panel, write_report
from planner.plan.pareto import candidates


def panels():
    _, latency, accuracy = four_widths(latencies=(1.0, 2.2, 1.9, 4.0), accuracies=(80, 86, 92, 94))
    latency["peak_rss_bytes"] = [2_000_000, 5_000_000, 3_000_000, 9_000_000]
    _, fast, _ = four_widths("openvino-cpu", latencies=(0.8, 1.5, 2.5, 3.1))
    return [
        Panel("cpu", candidates(latency, accuracy, "cpu"), 2.5),
        Panel("openvino-cpu", candidates(fast, accuracy, "openvino-cpu"), None),
    ]


def test_report_files(tmp_path):
    paths = write_report(panels(), tmp_path / "report", "s_cnn_small")
    assert sorted(path.name for path in paths) == ["pareto.csv", "pareto.html", "pareto.md", "pareto.png"]

    with Image.open(tmp_path / "report" / "pareto.png") as image:
        assert image.format == "PNG" and image.width > 1000 and image.height > 400

    html = (tmp_path / "report" / "pareto.html").read_text()
    assert "<script src=" not in html.replace('<script src="data:', "")  # plotly.js inline: works offline
    assert "Plotly.newPlot" in html and "openvino-cpu" in html and "0.75x" in html

    table = pd.read_csv(tmp_path / "report" / "pareto.csv")
    front = table.groupby("target").apply(
        lambda t: sorted(t.loc[t["Pareto"], "config"]), include_groups=False
    )
    # on cpu 0.5x is slower, less accurate and larger than 0.75x; on openvino-cpu every width is optimal
    assert front["cpu"] == ["0.25x", "0.75x", "1x"]
    assert front["openvino-cpu"] == ["0.25x", "0.5x", "0.75x", "1x"]
    markdown = (tmp_path / "report" / "pareto.md").read_text()
    assert markdown.count("\n| cpu |") == 4 and "| top-1 % |" in markdown


def test_memory_alone_can_put_a_configuration_on_the_front(tmp_path):
    _, latency, accuracy = four_widths(latencies=(1.0, 2.2, 1.9, 4.0), accuracies=(80, 86, 92, 94))
    latency["peak_rss_bytes"] = [2_000_000, 1_000_000, 3_000_000, 9_000_000]  # 0.5x is now the smallest
    write_report([Panel("cpu", candidates(latency, accuracy, "cpu"))], tmp_path, "s_cnn_small")
    table = pd.read_csv(tmp_path / "pareto.csv")
    assert table.set_index("config").loc["0.5x", "Pareto"]
