"""Latency lookup tables: built on the local CPU target with the profilers, checked, refused when foreign."""

import dataclasses
import json
import time
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from spinners import spinning

import planner
from planner.cli import main
from planner.errors import PlannerError
from planner.measure.targets import load_target
from planner.models.space import calibration_widths
from planner.nn.checkpoint import save_checkpoint
from planner.search.layers import layer_ops, write_layer_onnx
from planner.search.legr import Coefficients, LearnedRanking, WidthPlanner
from planner.search.lut import Calibration, Entry, LatencyTable, fit_calibration, table_path
from planner.search.lut_runs import (
    END_TO_END_SETTINGS,
    GROUP_RETRIES,
    anchored_latency,
    measure_anchored,
    steady_groups,
)
from planner.widths import WidthConfig

SIZE = 16
# measurements short enough for a test: these check what the table holds and says, not its accuracy
# (results/legr_lut_error*.md measure that); a table's layer groups each start a worker per layer
QUICK = ["--max-seconds", "0.3", "--min-queries", "16"]


def run(argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One small table, built through the CLI: 2 grid points per side, calibrated on the 2 trained widths."""
    out = tmp_path_factory.mktemp("lut")
    model = planner.create_model("s_cnn_small", widths=[0.5, 1.0], input_size=SIZE)
    checkpoint = save_checkpoint(model, out / "model.pt")
    code = run(["lut", "build", "--target", "cpu", "--model", "s_cnn_small", "--checkpoint", str(checkpoint),
                "--points", "2", "--calibration-samples", "0", "--out", str(out), *QUICK])  # fmt: skip
    assert code in (0, None)
    return out, table_path(out, "cpu", "s_cnn_small"), model, checkpoint


@pytest.mark.slow  # measures layers and whole models with the profilers
def test_built_table_names_target_model_and_runtime(built):
    _, path, model, _ = built
    data = json.loads(path.read_text())
    assert data["target"]["name"] == "cpu" and data["target"]["backend"] == "onnxruntime"
    assert data["model"] == "s_cnn_small" and data["input_shape"] == [1, 1, SIZE, SIZE]
    assert data["runtime"] == "onnxruntime" and data["runtime_version"]
    assert len(data["calibration"]["points"]) == len(model.widths)
    # the calibration was measured before and after the layers, each time beside the full width
    work = path.parent / "cpu-s_cnn_small"
    assert [*(work / "anchored").iterdir()] and [*(work / "anchored-after").iterdir()]
    assert {layer["path"] for layer in data["layers"]} == {op.path for op in layer_ops(model)}


@pytest.mark.slow  # measures layers and whole models with the profilers
def test_every_group_of_layers_is_measured_beside_the_heaviest_layer(built):
    from profilers.results import load_latency

    out, path, _, _ = built
    runs = sorted((out / "lut" / "cpu-s_cnn_small" / "layers-anchored").iterdir())
    groups = [load_latency(run) for run in runs if "-retry" not in run.name]
    assert len(groups) >= 2  # more layer grid points than one group of max_workers holds
    (anchor,) = set.intersection(*(set(rows["config_id"]) for rows in groups))  # only it is in every group
    assert all((rows["ref_config_id"] == anchor).all() for rows in groups)  # and is every group's reference
    table = json.loads(path.read_text())
    signature, grid = anchor.rsplit("-", 1)
    cin, cout = map(int, grid.split("x"))
    entry = table["entries"][signature]
    anchor_entry = (
        entry["ms"][0][entry["out"].index(cout)]
        if entry["depthwise"]
        else (entry["ms"][entry["in"].index(cin)][entry["out"].index(cout)])
    )
    kept = pd.concat([load_latency(run) for run in runs])
    bursts = [
        m for text in kept.loc[kept["config_id"] == anchor, "round_ms"] for m in json.loads(text)["median"]
    ]
    assert min(bursts) <= anchor_entry <= max(bursts)  # the median of its steady bursts over the groups


@pytest.mark.slow  # measures layers and whole models with the profilers
def test_prediction_grows_with_width(built):
    _, path, model, _ = built
    table = LatencyTable.load(path).check(model, load_target("cpu"))
    narrow, wide = (table.layer_sum_ms(model.config(w).channels) for w in (model.widths[0], model.widths[-1]))
    assert 0 < narrow < wide
    assert table.predict_ms(model.config(1.0)) > table.predict_ms(model.config(model.widths[0]))


@pytest.mark.slow  # measures layers and whole models with the profilers
def test_table_of_another_target_or_model_version_is_refused(built, capsys):
    out, path, model, checkpoint = built
    table = LatencyTable.load(path)
    with pytest.raises(PlannerError, match="measured on target 'cpu'"):
        table.check(model, load_target("openvino-cpu"))
    with pytest.raises(PlannerError, match="another version"):
        table.check(planner.create_model("s_cnn_small", widths=[0.5, 1.0], input_size=8))
    cases = [
        ["lut", "check", "--target", "openvino-cpu", "--checkpoint", str(checkpoint),
         "--lut", str(path), "--out", str(out)],
        ["lut", "check", "--target", "cpu", "--checkpoint", str(checkpoint), "--input-size", "8",
         "--lut", str(path), "--out", str(out)],
    ]  # fmt: skip
    for argv in cases:
        capsys.readouterr()
        assert run(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: latency table") and len(err.splitlines()) == 1


@pytest.mark.slow  # measures layers and whole models with the profilers
def test_check_reports_error_against_measurements(built, capsys):
    out, _, _, checkpoint = built
    capsys.readouterr()
    code = run(["lut", "check", "--target", "cpu", "--checkpoint", str(checkpoint), "--samples", "1",
                "--out", str(out), *QUICK])  # fmt: skip
    assert code in (0, None)
    assert "1 configurations:" in capsys.readouterr().out


@pytest.mark.slow  # measures layers and whole models with the profilers
def test_legr_config_for_a_latency_budget(built, tmp_path, capsys):
    out, path, model, checkpoint = built
    widths = WidthPlanner(model, LatencyTable.load(path).predict_ms)
    coefficients = LearnedRanking("s_cnn_small", Coefficients.identity(widths.layers), 1).save(
        tmp_path / "c.json"
    )
    base = ["legr", "config", "s_cnn_small", "--coefficients", str(coefficients),
            "--checkpoint", str(checkpoint), "--target", "cpu", "--out", str(out)]  # fmt: skip
    # between the smallest and the full model: planned from the table alone
    middle = (widths.smallest_cost() + widths.full_cost()) / 2
    planned = tmp_path / "planned.json"
    assert run([*base, "--max-latency", f"{middle}ms", "--no-verify", "-o", str(planned)]) in (0, None)
    config = WidthConfig.load(planned)
    assert widths.cost(config.channels) <= middle and config.channels != model.config(1.0).channels
    # a generous budget gives the full model, verified by its measurement in OUT (taken by the build)
    verified = tmp_path / "verified.json"
    assert run([*base, "--max-latency", "10s", "-o", str(verified)]) in (0, None)
    said = capsys.readouterr().out
    assert "measured p50" in said and "(1 measured)" in said  # the full model fits: nothing wider to try
    # with --data the widest uniform width is fitted too (from the measurements in OUT): the plan itself
    assert run([*base, "--max-latency", "10s", "--data", "digits", "-o", str(verified)]) in (0, None)
    said = capsys.readouterr().out
    assert "the plan is the uniform width 1x" in said and "(1 measured)" in said
    assert WidthConfig.load(verified) == model.config(1.0)
    # below the smallest configuration: one line, exit 2
    assert run([*base, "--max-latency", "1ns", "-o", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "below the smallest possible configuration" in err and len(err.splitlines()) == 1
    assert run([*base, "--max-latency", "10s", "--plans", "0", "-o", str(tmp_path / "x.json")]) == 2
    assert "at least one plan must be measured" in capsys.readouterr().err


@pytest.mark.slow  # measures whole models with the profilers
def test_anchored_measurement_puts_every_group_beside_the_full_width(tmp_path):
    model = planner.create_model("s_cnn_small", widths=[0.25, 0.5, 1.0], input_size=SIZE)
    configs = [model.config(0.25), model.config(0.5)]
    settings = dataclasses.replace(END_TO_END_SETTINGS, max_workers=2, max_seconds=1, min_queries=16)
    frame = measure_anchored(model, configs, load_target("cpu"), tmp_path, settings)
    assert list(frame["config_id"]) == [model.config(1.0).id, *(c.id for c in configs)]  # the anchor first
    assert (frame["anchored_ms"] > 0).all() and (frame["p50_ms"] > 0).all()
    assert frame["contended"].dtype == bool  # says which measurements a busy machine may have moved
    # one configuration per group (max_workers 2): each group ran its own copy of the full width, and a
    # group whose copy ran more than 10% slower than the other's was measured again beside its first try
    runs = [path.name for path in (tmp_path / "lut" / "cpu-s_cnn_small" / "anchored").iterdir()]
    assert len([name for name in runs if "-retry" not in name]) == 2
    assert frame["tries"].between(1, 1 + GROUP_RETRIES).all() and len(runs) <= 2 * (1 + GROUP_RETRIES)
    assert frame["steady_rounds"].iloc[0] > 0  # the full width's bursts at its fastest speed set the level


def measured(
    name: str, rounds: dict[str, list[float]], ratios: dict[str, float] | None = None
) -> pd.DataFrame:
    """One try of a group as the profiler writes it: per job its bursts' minima by round (the medians are
    taken equal), measured beside the anchor "full"; `ratios` overrides the profiler's own ratio."""
    rows = []
    for config_id, minima in rounds.items():
        ratio = (ratios or {}).get(config_id, float(np.median(np.array(minima) / np.array(rounds["full"]))))
        series = {"round": list(range(len(minima))), "median": minima, "min": minima}
        rows.append(
            {
                "config_id": config_id,
                "status": "ok",
                "p50_ms": float(np.median(minima)),
                "ref_config_id": "full",
                "ratio_to_ref": np.nan if config_id == "full" else ratio,
                "round_ms": json.dumps(series),
                "contended": False,
                "group": name,
            }
        )
    return pd.DataFrame(rows)


FAST, SLOW = [1.8] * 6, [2.8] * 6


def test_a_group_measured_while_the_host_ran_slow_is_measured_again():
    # the first group ran in the host's slow state throughout: no round of it is steady
    first = [
        measured("a", {"full": SLOW, "small": [1.3] * 6}),
        measured("b", {"full": FAST, "other": [0.6] * 6}),
        measured("c", {"full": [1.8, 2.8, 1.85, 2.8, 1.82, 2.8], "third": [0.7, 1.4, 0.7, 1.4, 0.7, 1.4]}),
    ]
    tries = []

    def measure(index: int, attempt: int) -> pd.DataFrame:
        tries.append((index, attempt))
        return measured(f"a-retry{attempt}", {"full": FAST, "small": [0.62] * 6})

    groups = steady_groups(first, "full", measure)
    # only the slow group, once: the mixed one had 3 steady rounds, enough
    assert tries == [(0, 1)]
    assert list(groups[0]["group"].unique()) == ["a", "a-retry1"] and (groups[0]["tries"] == 2).all()
    assert (groups[1]["tries"] == 1).all() and (groups[2]["tries"] == 1).all()

    tries.clear()
    slow_again = steady_groups(
        first, "full", lambda index, attempt: tries.append(attempt) or measured(f"x{attempt}", {"full": SLOW})
    )
    assert tries == [1, 2] and (slow_again[0]["tries"] == 3).all()  # at most GROUP_RETRIES more
    (alone,) = steady_groups(first[:1], "full", measure)  # alone, its own speed is the fastest seen
    assert (alone["tries"] == 1).all()


def test_anchored_latency_counts_only_the_rounds_in_which_the_host_ran_at_its_fastest():
    mixed = [1.8, 2.8, 1.8, 2.8, 1.85, 2.8]  # the anchor's bursts: the host switched speed every round
    rows = pd.concat(
        [
            measured(
                "a",
                {
                    "full": mixed,
                    "small": [0.6, 1.4, 0.6, 1.4, 0.6, 1.4],
                    "never": [0.9, 1.6, 0.9, 1.6, 0.9, 1.6],
                },
            ),
            measured("a-retry1", {"full": SLOW, "small": [1.4] * 6}),  # a try with no steady round
            measured("b", {"full": SLOW, "never": [1.5] * 6}, ratios={"never": 0.55}),
            measured("c", {"full": SLOW, "lost": [1.0] * 6}).assign(ref_config_id="lost"),
            measured("d", {"full": FAST, "late": [0.5] * 6}),  # more steady rounds, measured last
        ],
        ignore_index=True,
    ).assign(tries=1)
    rows.loc[rows["group"] == "a-retry1", "contended"] = True
    frame = anchored_latency(rows, "full", "the anchor failed").set_index("config_id")
    # "lost": its group's anchor failed (another job became its reference): left out
    assert list(frame.index) == ["full", "small", "never", "late"]  # the anchor first, then measured order
    # the level: the anchor's steady bursts (1.8, 1.8, 1.85), not its slow ones
    assert frame.loc["full", "anchored_ms"] == pytest.approx(1.8)
    assert frame.loc["small", "anchored_ms"] == pytest.approx(0.6)  # the ratio 1/3 of the steady rounds
    assert frame.loc["small", "steady_rounds"] == 3
    # "never" had steady rounds too, in group a: 0.9/1.8 = 0.5
    assert frame.loc["never", "anchored_ms"] == pytest.approx(0.9)
    # contended: the anchor if any of its tries was, a job as the try its figure came from
    assert frame.loc["full", "contended"] and not frame.loc["small", "contended"]
    # without any steady round, the profiler's own ratio over all rounds of its try
    fast_elsewhere = pd.concat([measured("e", {"full": FAST}), rows[rows["group"] == "b"]]).assign(tries=1)
    fallback = anchored_latency(fast_elsewhere, "full", "x").set_index("config_id")
    assert fallback.loc["never", "anchored_ms"] == pytest.approx(0.55 * 1.8)
    assert fallback.loc["never", "steady_rounds"] == 0
    with pytest.raises(PlannerError, match="the anchor failed"):
        anchored_latency(rows[rows["config_id"] != "full"], "full", "the anchor failed")


@pytest.mark.slow  # measures layers and whole models with the profilers
def test_a_table_built_on_a_busy_machine_says_so(tmp_path, capsys):
    model = planner.create_model("s_cnn_small", widths=[0.5, 1.0], input_size=SIZE)
    checkpoint = save_checkpoint(model, tmp_path / "model.pt")
    argv = ["lut", "build", "--target", "cpu", "--model", "s_cnn_small", "--checkpoint", str(checkpoint)]
    # shorter than QUICK: beside spinners most groups are measured again, each after its second's wait
    argv += ["--points", "2", "--calibration-samples", "0", "--out", str(tmp_path)]
    argv += ["--max-seconds", "0.3", "--min-queries", "8"]
    with spinning(2):  # both cores: every measurement sees another process, however long it waits
        started = time.perf_counter()
        assert run([*argv, "--wait-quiet", "1s"]) in (0, None)
        waited_s = time.perf_counter() - started
    printed = capsys.readouterr()
    said = " ".join((printed.out + printed.err).split())  # the console wraps long lines
    assert "were taken on a busy machine" in said and "--wait-quiet waits for one" in said
    assert table_path(tmp_path, "cpu", "s_cnn_small").is_file()  # warned, not refused
    groups = [*(tmp_path / "lut" / "cpu-s_cnn_small").glob("*anchored/*")]
    assert waited_s >= len(groups)  # it waited its second for quiet before each group


def test_lut_build_refuses_a_bad_wait_in_one_line(capsys):
    for wait in ("0s", "3d", "soon"):
        assert run(["lut", "build", "--target", "cpu", "--model", "s_cnn_small", "--wait-quiet", wait]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and "wait" in err and len(err.splitlines()) == 1


def test_layer_onnx_runs_with_the_grid_shapes(tmp_path):
    import onnxruntime

    model = planner.create_model("s_mobilenet_v2", input_size=32)
    op = next(op for op in layer_ops(model) if op.depthwise)
    cin, cout = op.grid()[0]
    path = write_layer_onnx(op, cin, cout, tmp_path / "layer.onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {"input": np.ones((1, cin, op.size, op.size), np.float32)})
    assert output.shape == (1, cout, op.size // op.stride, op.size // op.stride)
    assert output.min() >= 0 and output.max() <= 6  # ReLU6 follows MobileNet's depthwise conv


def test_reanchoring_scales_predictions_by_the_full_widths_drift():
    entry = Entry((8,), (8,), np.array([[1.0]]))
    layer = {"path": "a", "entry": "e", "in_group": None, "out_group": None, "in_fixed": 8, "out_fixed": 8}
    layers = (layer,)
    table = LatencyTable({}, "m", "f", (1,), "onnxruntime", "1", layers, {"e": entry}, Calibration(2.0, 0.5))
    assert table.reanchored(9.0).predict_ms({}) == table.predict_ms({}) == 2.5  # no anchor: unchanged
    anchored = replace(table, calibration=Calibration(2.0, 0.5, (), anchor_ms=3.0))
    assert anchored.reanchored(3.3).predict_ms({}) == pytest.approx(2.5 * 1.1)  # 10% slower now


def test_lut_check_says_when_the_machine_runs_at_another_speed_than_at_the_build():
    from planner.search.lut_runs import speed_warning

    layer = {"path": "a", "entry": "e", "in_group": None, "out_group": None, "in_fixed": 8, "out_fixed": 8}
    entries = {"e": Entry((8,), (8,), np.array([[1.0]]))}
    table = LatencyTable({}, "m", "f", (1,), "ort", "1", (layer,), entries, Calibration(1.0, 0.0, (), 2.15))
    assert table.speed_change(3.2) == pytest.approx(3.2 / 2.15 - 1)
    assert speed_warning(table, 2.2) is None  # within the band in which rounds count as steady
    slower = speed_warning(table, 3.2)
    assert "+49% against 2.150 ms when the table was built" in slower and "\n" not in slower
    assert "-30%" in speed_warning(table, 1.5)  # faster counts too: the table was built slowed
    old = replace(table, calibration=Calibration(1.0, 0.0))  # a table that predates the anchor
    assert old.speed_change(3.2) is None and speed_warning(old, 3.2) is None


def test_a_us_model_calibrates_on_four_uniform_widths_not_all_it_tracks():
    assert calibration_widths(planner.create_model("s_cnn_small")) == [0.25, 0.5, 0.75, 1.0]
    us = planner.create_model("us_cnn_small")
    assert len(us.widths) == 31
    picked = calibration_widths(us)
    assert len(picked) == 4 and picked[0] == 0.25 and picked[-1] == 1.0


def test_interpolation_and_calibration_fit():
    entry = Entry((8, 16), (4, 12), np.array([[1.0, 3.0], [2.0, 6.0]]))
    assert entry.at(8, 4) == 1.0 and entry.at(16, 12) == 6.0
    assert entry.at(12, 8) == pytest.approx((1 + 3 + 2 + 6) / 4)
    scale, offset = fit_calibration([1.0, 2.0, 4.0], [2.5, 4.5, 8.5])
    assert scale == pytest.approx(2.0) and offset == pytest.approx(0.5)
    assert fit_calibration([3.0], [4.0]) == (1.0, 1.0)
