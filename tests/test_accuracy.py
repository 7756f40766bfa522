"""The accuracy table: importing the paper's ImageNet numbers, upserts, atomic files, bad CSVs."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from cli_helpers import run_cli

from planner.accuracy.evaluate import ConfigAccuracy
from planner.accuracy.table import COLUMNS, accuracy_rows, load_accuracy, write_accuracy
from planner.models import create_model

REPO = Path(__file__).resolve().parents[1]
REFERENCE_CSV = REPO / "results" / "reference_imagenet_accuracy.csv"
REFERENCE_JSON = Path("/work/shared/reference/slimmable_results.json")


def test_reference_csv_holds_the_papers_top1(tmp_path: Path) -> None:
    table = pd.read_csv(REFERENCE_CSV)
    assert {"model", "width", "metric", "value"} <= set(table.columns)
    v2 = table[table["model"] == "s_mobilenet_v2"].set_index("width")["value"]
    assert v2.to_dict() == {0.35: 59.7, 0.5: 64.4, 0.75: 68.9, 1.0: 70.5}
    if REFERENCE_JSON.is_file():
        reference = json.loads(REFERENCE_JSON.read_text())
        for model in ("s_mobilenet_v1", "s_resnet50"):
            rows = table[table["model"] == model].set_index("width")["value"]
            for width, entry in reference[model]["widths"].items():
                assert rows[float(width)] == pytest.approx(100 - entry["top1_err"])
        assert len(table[table["model"] == "us_mobilenet_v2"]) == len(reference["us_mobilenet_v2_top1_err"])


def test_import_reference_accuracy_joins_on_profiles_config_ids(tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(["accuracy", "import", str(REFERENCE_CSV), "--out", str(tmp_path)], capsys)
    assert code == 0, err
    table = load_accuracy(tmp_path)
    assert list(table.columns) == COLUMNS
    assert len(table) == len(pd.read_csv(REFERENCE_CSV))
    assert set(table["source"]) == {"imported"} and set(table["dataset"]) == {"imagenet"}
    model = create_model("s_mobilenet_v2")
    row = table[(table["model"] == "s_mobilenet_v2") & (table["width"] == 0.35)].iloc[0]
    assert row["config_id"] == model.config(0.35).id and row["value"] == pytest.approx(59.7)
    assert json.loads(row["config"])["channels"] == model.config(0.35).channels
    csv = pd.read_csv(tmp_path / "accuracy.csv", dtype={"config_id": str})
    assert csv["config_id"].tolist() == table["config_id"].tolist()

    run_cli(["accuracy", "import", str(REFERENCE_CSV), "--out", str(tmp_path)], capsys)
    assert len(load_accuracy(tmp_path)) == len(table)  # importing again replaces, never duplicates
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_import_by_config_id_and_measured_rows_coexist(tmp_path: Path, capsys) -> None:
    model = create_model("s_cnn_small")
    config = model.config_from_channels(
        {"features.0.0": 8, "features.1.0": 16, "features.2.0": 64, "features.3.0": 8}
    )
    measured = accuracy_rows("s_cnn_small", [ConfigAccuracy(config, 91.0, 99.0, 360, True)], "digits", "val")
    write_accuracy(tmp_path, measured)
    (tmp_path / "in.csv").write_text(
        f"model,config_id,metric,value,dataset\ns_cnn_small,{config.id},top1,88.5,other\n"
    )
    code, _, err = run_cli(["accuracy", "import", str(tmp_path / "in.csv"), "--out", str(tmp_path)], capsys)
    assert code == 0, err
    table = load_accuracy(tmp_path)
    assert len(table) == 3 and set(table["config_id"]) == {config.id}
    assert table.set_index(["source", "metric"]).loc[("imported", "top1"), "value"] == 88.5


def test_load_accuracy_of_an_empty_directory_has_the_columns(tmp_path: Path) -> None:
    table = load_accuracy(tmp_path)
    assert table.empty and list(table.columns) == COLUMNS


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model,metric,value\ns_cnn_small,top1,50\n", "width or config_id"),
        ("model,width,metric,value\ns_cnn_small,0.5,top1,150\n", "percentage from 0 to 100"),
        ("model,width,metric,value\ns_cnn_small,0.5,top3,50\n", "metric must be one of top1, top5"),
        ("model,width,metric,value\ns_cnn_small,0.6,top1,50\n", "not one of s_cnn_small's trained widths"),
        ("model,width,metric,value\nno_such_model,0.5,top1,50\n", "unknown model"),
        ("model,width,metric,value\n", "no rows"),
    ],
)
def test_bad_csv_is_one_line_and_exit_2(text: str, message: str, tmp_path: Path, capsys) -> None:
    (tmp_path / "bad.csv").write_text(text)
    code, _, err = run_cli(["accuracy", "import", str(tmp_path / "bad.csv"), "--out", str(tmp_path)], capsys)
    assert code == 2 and err.startswith("error:") and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "accuracy.parquet").exists()


def test_missing_csv_is_an_error(tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(["accuracy", "import", str(tmp_path / "none.csv"), "--out", str(tmp_path)], capsys)
    assert code == 2 and "cannot read" in err
