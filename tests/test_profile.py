"""`planner profile` on this machine: configurations -> cached exports -> measured rows in OUT."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
from cli_helpers import fresh_out, run_cli
from spinners import row_state, spinning

import planner
from planner.cli import main
from planner.measure.artifacts import weights_key
from planner.nn.build import build_model, configurations
from planner.nn.checkpoint import save_checkpoint
from profilers.results import load_latency

SMALL = ["--model", "s_cnn_small", "--in-channels", "1", "--num-classes", "10", "--input-size", "8"]
QUICK = ["--max-seconds", "0.3", "--min-queries", "16"]


@pytest.fixture(scope="module")
def exported(exports: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """OUT with 2 widths of s_cnn_small measured on cpu: tests copy it instead of measuring again."""
    out = tmp_path_factory.mktemp("measured") / "out"
    shutil.copytree(exports, out)
    with pytest.raises(SystemExit) as done:
        main(["profile", "--target", "cpu", *SMALL, "--widths", "0.25,1.0", "--out", str(out), *QUICK])
    assert done.value.code == 0
    return out


def copy_out(exported: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(exported, out)
    return out


def test_profile_measures_each_width_and_stores_rows(exported: Path, capsys) -> None:
    table = load_latency(exported)
    model = build_model("s_cnn_small", in_channels=1, num_classes=10, input_size=8)
    assert sorted(table["width"]) == [0.25, 1.0]
    assert set(table["target"]) == {"cpu"} and set(table["backend"]) == {"onnxruntime"}
    assert set(table["status"]) == {"ok"} and not table["estimated"].any()
    assert set(table["input_shape"]) == {"1x1x8x8"}
    for _, row in table.iterrows():
        config = model.config(row["width"])
        cost = planner.count(model, config)
        assert row["config_id"] == config.id
        assert (row["macs"], row["params"]) == (cost.macs, cost.params)
        assert json.loads(row["config"])["channels"] == config.channels
        assert row["n"] >= 16 and 0 < row["min_ms"] <= row["p50_ms"] <= row["p90_ms"]
    # The wide network does far more work; the table says so.
    by_width = table.set_index("width")
    assert by_width.loc[1.0, "macs"] > 4 * by_width.loc[0.25, "macs"]
    # Exports are cached by configuration id: the pre-exported files were used, none written twice.
    artifacts = sorted((exported / "artifacts").glob("*.onnx"))
    assert len(artifacts) == len(model.widths)
    assert set(table["config_id"]) <= {path.name.split("-")[1] for path in artifacts}


def test_rerun_resumes_and_force_measures_again(exported: Path, tmp_path: Path, capsys) -> None:
    out = copy_out(exported, tmp_path)
    before = load_latency(out)
    argv = ["profile", "--target", "cpu", *SMALL, "--widths", "0.25,1.0", "--out", str(out), *QUICK]
    code, stdout, err = run_cli(argv, capsys)
    assert code == 0, err
    assert list(load_latency(out)["run_id"]) == list(before["run_id"])  # nothing measured again
    assert "0.25x" in stdout and "1x" in stdout

    mtimes = {path: path.stat().st_mtime_ns for path in (out / "artifacts").glob("*.onnx")}
    code, _, err = run_cli([*argv, "--force"], capsys)
    assert code == 0, err
    after = load_latency(out)
    assert len(after) == 2 and not set(after["run_id"]) & set(before["run_id"])
    assert {path: path.stat().st_mtime_ns for path in (out / "artifacts").glob("*.onnx")} == mtimes  # cached


def test_a_first_run_assumes_the_run_to_run_spread_and_a_rerun_measures_it(
    exported: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("PROFILERS_CACHE_DIR", str(tmp_path / "cache"))  # a machine with no history yet
    out = copy_out(exported, tmp_path)
    argv = ["profile", "--target", "cpu", *SMALL, "--widths", "0.25", "--out", str(out), *QUICK, "--force"]
    code, _, err = run_cli(argv, capsys)
    assert code == 0 and "note: 1 of 1 intervals assume how far whole runs move apart" in err
    first = load_latency(out).set_index("width").loc[0.25]
    assert first["ci_low_ms"] < first["p50_ms"] / 1.09 and first["ci_high_ms"] > first["p50_ms"] * 1.09
    code, _, err = run_cli(argv, capsys)
    second = load_latency(out).set_index("width").loc[0.25]
    if row_state(first) == row_state(second):  # a busy run is compared with busy runs only
        assert code == 0 and "intervals assume" not in err
        assert second["spread_runs"] == 2 and second["ci_low_ms"] <= first["p50_ms"] <= second["ci_high_ms"]
    else:
        assert second["spread_runs"] == 0 and "intervals assume" in err


def test_a_second_target_appends_to_the_table(exported: Path, tmp_path: Path, capsys) -> None:
    out = copy_out(exported, tmp_path)
    before = load_latency(out)
    argv = ["profile", "--target", "cpu", "--target", "openvino", *SMALL, "--widths", "0.25"]
    code, _, err = run_cli([*argv, "--out", str(out), *QUICK], capsys)
    assert code == 0, err
    table = load_latency(out)
    assert sorted(zip(table["target"], table["width"], strict=True)) == [
        ("cpu", 0.25),
        ("cpu", 1.0),
        ("openvino-cpu", 0.25),
    ]
    old = table[table["run_id"].isin(before["run_id"])]
    assert len(old) == 2  # the earlier rows are still there, untouched


def test_per_layer_configuration_file(tmp_path: Path, capsys) -> None:
    model = build_model("s_cnn_small", in_channels=1, num_classes=10, input_size=8)
    channels = dict(model.config(1.0).channels)
    first = next(iter(channels))
    channels[first] = 8
    config = model.config_from_channels(channels)
    path = config.save(tmp_path / "layers.json")
    out = tmp_path / "out"
    code, stdout, err = run_cli(
        ["profile", "--target", "cpu", *SMALL, "--config", str(path), "--out", str(out), *QUICK], capsys
    )
    assert code == 0, err
    table = load_latency(out)
    assert list(table["config_id"]) == [config.id]
    assert math.isnan(table["width"].iloc[0])
    assert f"layers:{config.id}" in stdout


def test_checkpoint_gives_the_model_and_its_options(tmp_path: Path, capsys) -> None:
    model = planner.create_model("s_cnn_small", in_channels=1, num_classes=10, input_size=8)
    checkpoint = save_checkpoint(model, tmp_path / "small.pt")
    out = tmp_path / "out"
    argv = ["profile", "--target", "cpu", "--checkpoint", str(checkpoint), "--widths", "0.5"]
    code, _, err = run_cli([*argv, "--out", str(out), *QUICK], capsys)
    assert code == 0, err
    table = load_latency(out)
    assert list(table["model"]) == ["s_cnn_small"] and list(table["input_shape"]) == ["1x1x8x8"]
    assert (out / "artifacts").glob(f"*-{weights_key(checkpoint)}.onnx")
    assert len(list((out / "artifacts").glob(f"*-{weights_key(checkpoint)}.onnx"))) == 1

    code, _, err = run_cli([*argv, "--model", "s_mobilenet_v2", "--out", str(out)], capsys)
    assert code == 2 and "s_cnn_small" in err


def test_target_input_shape_override(tmp_path: Path, capsys) -> None:
    targets = tmp_path / "targets"
    targets.mkdir()
    (targets / "cpu16.toml").write_text(
        'backend = "onnxruntime"\nthreads = 1\ninput_shape = [1, 1, 16, 16]\n'
    )
    out = tmp_path / "out"
    argv = ["profile", "--target", "cpu16", "--targets-dir", str(targets), *SMALL, "--widths", "0.25"]
    code, _, err = run_cli([*argv, "--out", str(out), *QUICK], capsys)
    assert code == 0, err
    table = load_latency(out)
    assert list(table["input_shape"]) == ["1x1x16x16"]
    small = planner.create_model("s_cnn_small", in_channels=1, num_classes=10, input_size=16)
    assert table["macs"].iloc[0] == planner.count(small, small.config(0.25)).macs


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--target", "tpu-v9", *SMALL], "known targets: cpu"),
        (["--target", "cpu", *SMALL, "--widths", "0.3"], "not one of s_cnn_small's trained widths"),
        (["--target", "cpu", *SMALL, "--widths", "half"], "--widths takes numbers"),
        (["--target", "cpu", "--model", "resnet9000"], "unknown model"),
        (["--target", "cpu", "--target", "openvino", "--host", "pi@rpi", *SMALL], "--host names one device"),
        (["--target", "cpu", *SMALL, "--checkpoint", "missing.pt"], "does not exist"),
        (["--target", "cpu", *SMALL, "--wait-quiet", "0s"], "out of bounds: give between 1s and 24h"),
        (["--target", "cpu", *SMALL, "--wait-quiet", "3h", "--wait-quiet", "9e9h"], "out of bounds"),
        (["--target", "cpu", *SMALL, "--wait-quiet", "5"], "malformed wait '5'"),
        (["--target", "cpu", *SMALL, "--wait-quiet", "-2min"], "out of bounds"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv: list[str], message: str, tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(["profile", *argv, "--out", str(tmp_path / "out")], capsys)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1
    assert message in err


def test_configuration_of_another_model_is_refused(tmp_path: Path) -> None:
    other = planner.create_model("s_mobilenet_v1")
    path = other.config(0.5).save(tmp_path / "v1.json")
    model = build_model("s_cnn_small", in_channels=1, num_classes=10, input_size=8)
    with pytest.raises(planner.errors.PlannerError, match="not of s_cnn_small"):
        configurations(model, config_files=[path])
    assert [config.width for config in configurations(model)] == model.widths


@pytest.fixture
def spinners():
    """Two processes spinning on the CPUs for the length of a test: a busy machine."""
    with spinning(2):
        yield


@pytest.mark.parametrize("require", [False, True])
def test_a_machine_that_never_gets_quiet_is_measured_anyway_and_said(
    exports: Path, tmp_path: Path, capsys, spinners, require: bool
) -> None:
    out = fresh_out(exports, tmp_path)
    argv = ["profile", "--target", "cpu", *SMALL, "--widths", "0.25", "--out", str(out), *QUICK]
    code, stdout, err = run_cli(
        [*argv, "--wait-quiet", "2s", *(["--require-quiet"] if require else [])], capsys
    )
    assert code == (1 if require else 0)
    (line,) = [line for line in err.splitlines() if line.startswith("warning:")]
    assert (
        "1 of 1 rows measured on a busy machine" in line
        and "did not stay quiet within --wait-quiet 2s" in line
    )
    table = load_latency(out)  # nothing measured is lost
    assert list(table["status"]) == ["ok"] and table["contended"].all()
    assert 0 < table["quiet_wait_s"].iloc[0] <= 3
    assert "measured latency" in stdout


def test_keep_cpus_awake_holds_the_request_while_measuring(
    exports: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    request = tmp_path / "cpu_dma_latency"  # a stand-in for /dev/cpu_dma_latency, which needs root
    request.write_bytes(b"\xff" * 4)
    monkeypatch.setattr("profilers.load.CPU_DMA_LATENCY", request)
    out = fresh_out(exports, tmp_path)
    argv = ["profile", "--target", "cpu", *SMALL, "--widths", "0.25", "--out", str(out), *QUICK]
    code, _, err = run_cli([*argv, "--keep-cpus-awake"], capsys)
    assert code == 0, err
    assert load_latency(out)["cpus_awake"].tolist() == [True] and request.read_bytes() == bytes(4)


def test_a_busy_machine_is_one_warning_line_suggesting_wait_quiet(
    exports: Path, tmp_path: Path, capsys, spinners
) -> None:
    out = fresh_out(exports, tmp_path)
    argv = ["profile", "--target", "cpu", *SMALL, "--widths", "0.25", "--out", str(out), *QUICK]
    code, _, err = run_cli(argv, capsys)
    assert code == 0
    (line,) = [line for line in err.splitlines() if line.startswith("warning:")]
    assert "--wait-quiet" in line and "(for example: other processes used" in line


def test_the_busy_warning_names_the_reason_a_row_was_flagged_for(capsys) -> None:
    """A row flagged by the speed index alone had next to no other processes: the warning must not say
    "other processes used up to 0.0 cores", the opposite of why it warns."""

    from planner.cli.profile import _warn_contended

    rows = pd.DataFrame(
        {
            "contended": [False, True, True],
            "contention": ["", "speed index moved x1.46", "speed index moved x1.35"],
            "other_cores": [0.01, 0.008, 0.012],
        }
    )
    assert not _warn_contended(rows, None)
    line = " ".join(capsys.readouterr().err.split())
    assert "2 of 3 rows measured on a busy machine (for example: speed index moved x1.35)" in line
    assert "cores" not in line and "latencies likely too high" in line


def test_a_machine_that_sped_up_is_not_said_to_give_too_high_latencies(capsys) -> None:
    """A row flagged because the speed index got faster ran partly slow, partly fast: "too high" would be
    a guess; the warning says the latencies may be off."""
    from planner.cli.profile import _warn_contended

    rows = pd.DataFrame(
        {
            "contended": [True, True],
            "contention": ["steal 7%", "speed index moved x0.70"],
            "other_cores": [0.02, 0.01],
        }
    )
    assert not _warn_contended(rows, None)
    line = " ".join(capsys.readouterr().err.split())
    assert "2 of 2 rows measured on a busy machine" in line and "latencies may be off" in line
    assert "too high" not in line

    rows["contention"] = ["steal 7%", "speed index moved x?"]  # a table from another version: no traceback
    assert not _warn_contended(rows, None)
    assert "latencies likely too high" in " ".join(capsys.readouterr().err.split())


def test_rows_far_from_their_earlier_runs_are_one_warning_line(capsys) -> None:
    from planner.cli.profile import _warn_off_history

    rows = pd.DataFrame(
        {
            "p50_ms": [1.0, 2.5, 1.7, 9.0],
            "history_p50_ms": [1.0, 2.0, 1.0, math.nan],
            "off_history": pd.array([False, True, True, pd.NA], dtype="boolean"),
        }
    )
    _warn_off_history(rows)
    line = " ".join(capsys.readouterr().err.split())
    assert line.startswith("warning: 2 of 4 rows ran 25-70% slower than this machine's earlier runs")
    assert "re-run (--force)" in line
    rows.loc[1, "p50_ms"] = 1.5  # one faster, one slower
    _warn_off_history(rows)
    assert "2 of 4 rows ran -25% to +70% off" in " ".join(capsys.readouterr().err.split())
    _warn_off_history(rows.assign(off_history=False))  # none off, or a table from before the column
    _warn_off_history(rows.drop(columns="off_history"))
    assert capsys.readouterr().err == ""


def test_the_summary_fits_80_columns_without_cutting_a_number(tmp_path: Path) -> None:
    import io

    from rich.console import Console

    from planner.cli.profile import _summary

    rows = pd.DataFrame(
        [
            {"target": "openvino-cpu", "width": 0.35, "config_id": "a", "status": "ok", "contended": False,
             "precision": "int8", "batch": 4,
             "p50_ms": 1234.567, "p90_ms": 1301.25, "ci_low_ms": 1200.111, "ci_high_ms": 1260.999,
             "n": 12345, "macs": 300.5e6, "peak_rss_bytes": 123.4 * 2**20},
            {"target": "openvino-cpu", "width": float("nan"), "config_id": "3f9a0c1d2e", "status": "ok",
             "contended": True, "p50_ms": 3.158, "p90_ms": 3.301, "ci_low_ms": 3.101, "ci_high_ms": 3.26,
             "n": 640, "macs": 1.5e6, "peak_rss_bytes": 2**20},
            {"target": "cpu", "width": 1.0, "config_id": "b", "status": "error", "contended": None,
             "error": "worker exited with code 1: RuntimeError: something long went wrong in the runtime",
             "macs": 3e8},
        ]
    )  # fmt: skip
    screen = io.StringIO()
    _summary(rows, tmp_path, estimated=False, output=Console(file=screen, width=80, color_system=None))
    text = screen.getvalue()
    table = [line for line in text.splitlines() if "latency.parquet" not in line]  # a path may be long
    assert "…" not in text and max(map(len, table)) <= 80
    assert "+-2.5%" in text and "1235" in text and "layers:3f9a0c1d2e" in text
    assert "busy" in text and "cpu 1x: error: worker exited with code 1" in text
