"""A real manifest of s_cnn_small (cpu or openvino-cpu) for the ladder runtime and load-test tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from selection_tables import four_widths, small_checkpoint, write_results

from planner.accuracy.table import checkpoint_digest
from planner.cli import main


def deploy_ladder(root: Path, target: str = "cpu") -> Path:
    """s_cnn_small (8x8) with a 4-ms budget: the ladder is 0.25x -> 0.5x -> 0.75x (p90 1.2, 2.4, 3.6 ms,
    made-up numbers; accuracy 80, 88, 92%), each rung's artifact built from an ONNX with real weights."""
    checkpoint = small_checkpoint(root / "weights.pt")
    _, latency, accuracy = four_widths(target)
    accuracy["checkpoint"] = checkpoint_digest(checkpoint)
    results = write_results(root / "out", latency, accuracy)
    with pytest.raises(SystemExit) as exit_info:
        main(["manifest", "-t", target, "--max-latency", "4ms", "--checkpoint", str(checkpoint),
              "--out", str(results), "-o", str(root / "deploy")])  # fmt: skip
    assert exit_info.value.code == 0
    return root / "deploy" / target
