"""Mixed precision: bf16 autocast trains on the CPU; what a device cannot run is refused up front."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cli_helpers import run_cli

from planner.accuracy.data import load_dataset
from planner.accuracy.precision import select_precision
from planner.accuracy.train import RunOptions, train
from planner.errors import PlannerError
from planner.models import create_model

CPU = torch.device("cpu")


def test_the_cpu_runs_fp32_and_bf16_and_refuses_fp16() -> None:
    assert select_precision("fp32", CPU).dtype is None
    bf16 = select_precision("bf16", CPU)
    assert bf16.dtype == torch.bfloat16 and not bf16.scaler(CPU).is_enabled()
    with bf16.autocast(CPU):
        assert torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3)).dtype == torch.bfloat16
    with pytest.raises(PlannerError, match="fp16 needs a CUDA device"):
        select_precision("fp16", CPU)
    with pytest.raises(PlannerError, match="unknown precision 'fp8'"):
        select_precision("fp8", CPU)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 with a GradScaler needs a CUDA device")
def test_fp16_on_cuda_scales_the_loss() -> None:
    fp16 = select_precision("fp16", torch.device("cuda"))
    assert fp16.scaler(torch.device("cuda")).is_enabled()


def test_bf16_training_on_the_cpu_learns_like_fp32(tmp_path: Path, single_thread) -> None:
    digits = load_dataset("digits")
    losses = {}
    for name in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = create_model("s_cnn_small", in_channels=1, num_classes=10, input_size=8)
        state = tmp_path / f"{name}.resume.pt"
        result = train(model, digits, epochs=2, batch_size=128, run=RunOptions(state, precision=name))
        losses[name] = result.epoch_losses[-1][1.0]
        assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast: weights stay fp32
    assert losses["bf16"] < 1.0 and abs(losses["bf16"] - losses["fp32"]) < 0.1
    with pytest.raises(PlannerError, match="precision = bf16, this run has fp32"):
        train(model, digits, epochs=2, batch_size=128, run=RunOptions(resume=tmp_path / "bf16.resume.pt"))


def test_the_cli_refuses_fp16_on_the_cpu_before_reading_data(tmp_path: Path, capsys) -> None:
    argv = ["train", "s_cnn_small", "-d", str(tmp_path / "absent"), "-o", str(tmp_path / "m.pt")]
    code, _, err = run_cli([*argv, "--precision", "fp16", "--device", "cpu"], capsys)
    assert code == 2
    assert (
        err.strip()
        == "error: --precision fp16 needs a CUDA device (autocast on the CPU runs bf16): use bf16 or fp32"
    )
