"""A universally slimmable model: the widest width predicted to fit is measured before it is accepted."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from cli_helpers import run
from selection_tables import accuracy_row, accuracy_table, latency_row, latency_table, write_results

import planner


@pytest.fixture
def universal_results(tmp_path):
    """US-MobileNetV2 at 32x32 measured at four widths (p90 = 1.2 x p50: 1.2, 2.4, 3.6, 4.8 ms)."""
    model = planner.create_model("us_mobilenet_v2", input_size=32)
    configs = [model.config(width) for width in (0.35, 0.5, 0.75, 1.0)]
    latency = latency_table(
        latency_row(config, "cpu", p50, input_shape="1x3x32x32")
        for config, p50 in zip(configs, (1.0, 2.0, 3.0, 4.0), strict=True)
    )
    accuracy = accuracy_table(accuracy_row(c, a) for c, a in zip(configs, (60, 65, 70, 72), strict=True))
    return write_results(tmp_path / "out", latency, accuracy)


def test_proposal_without_measuring_says_what_to_run(capsys, universal_results):
    code, out, _ = run(capsys, "select", "-t", "cpu", "--max-latency", "3ms", "--out", universal_results,
                       "--no-measure", "--json")  # fmt: skip
    answer = json.loads(out)
    assert code == 0 and answer["choice"]["width"] == 0.5  # measured choices stay as measured
    proposal = answer["proposal"]
    assert 0.5 < proposal["width"] < 0.75 and proposal["status"] == "needs measurement"
    assert proposal["predicted_bound_ms"] <= 3.0
    assert any(command.startswith("planner profile --target cpu") for command in proposal["commands"])


@pytest.mark.timeout(300)
def test_proposal_is_measured_on_the_target_before_acceptance(capsys, universal_results):
    code, out, err = run(capsys, "select", "-t", "cpu", "--max-latency", "3ms", "--out", universal_results,
                         "--max-seconds", "2", "--json")  # fmt: skip
    assert code == 0, err
    proposal = json.loads(out)["proposal"]
    assert "measuring the proposed width" in err
    assert proposal["measured_bound_ms"] > 0
    # measured for real, but never scored: it cannot be the choice until `planner evaluate` has run
    assert proposal["status"].startswith("measured")
    assert json.loads(out)["choice"]["width"] in (0.35, 0.5)
    latency = pd.read_parquet(universal_results / "latency.parquet")
    row = latency[latency["config_id"] == proposal["config_id"]]
    assert len(row) == 1 and row["status"].iloc[0] == "ok" and row["width"].iloc[0] == proposal["width"]
