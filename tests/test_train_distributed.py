"""Data-parallel training: N torchrun ranks compute what one process does on the same global batch."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from planner.accuracy.distributed import ShardSampler, from_environment, reports_errors, without_option
from planner.errors import PlannerError
from planner.nn.checkpoint import read_checkpoint

ROOT = Path(__file__).resolve().parents[1]
ENV = {
    **{k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")},
    "PYTHONPATH": str(ROOT),
    "OMP_NUM_THREADS": "1",
}


def planner(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "planner", *args],
        env=env or ENV,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """96 training images (6 steps of 16, no partial batch, so no rank pads) and a small val split."""
    generator = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    y = np.arange(96) % 4
    x = generator.random((96, 1, 8, 8), dtype=np.float32) * 0.5 + y[:, None, None, None] / 8
    np.savez(path, x_train=x, y_train=y, x_val=x[:16], y_val=y[:16])
    return path


@pytest.mark.slow
@pytest.mark.parametrize("name", ["us_cnn_small", "s_cnn_small"])
def test_two_gloo_ranks_train_the_weights_of_one_process_on_the_same_global_batch(
    name: str, data: Path, tmp_path: Path
) -> None:
    """2 ranks x 8 images against one process stepping on the same 16 images as 2 micro-batches (BN
    statistics are not synchronised within a step): the same weights after 6 steps, within float tolerance.

    us_cnn_small: the sandwich and inplace distillation. s_cnn_small: each width has BN parameters of its
    own, and the narrowest width runs last, so every other width's BN gets its gradient only in backward
    passes run under DDP's no_sync: they match only if DDP averages what the last pass did not use."""
    common = ["train", name, "-d", str(data), "--epochs", "1", "--batch-size", "16", "--lr", "0.1"]
    ddp = planner(*common, "-o", str(tmp_path / "ddp.pt"), "--nproc", "2")
    assert ddp.returncode == 0, ddp.stderr
    assert ddp.stderr.count(f"training {name}") == 1  # rank 0 alone prints
    assert "Warning" not in ddp.stderr
    one = planner(*common, "-o", str(tmp_path / "one.pt"), "--accumulate", "2")
    assert one.returncode == 0, one.stderr
    got, expected = (read_checkpoint(tmp_path / f"{n}.pt")["model"] for n in ("ddp", "one"))
    untrained = planner(*common, "-o", str(tmp_path / "zero.pt"), "--epochs", "1", "--lr", "1e-12")
    assert untrained.returncode == 0
    zero = read_checkpoint(tmp_path / "zero.pt")["model"]
    weights = [k for k in expected if k.endswith(("weight", "bias"))]
    for key in weights:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-5, msg=key)
    assert any(not torch.allclose(expected[k], zero[k], atol=1e-3) for k in weights)  # it did train
    if name == "s_cnn_small":  # BN parameters of the widths before the last (.bn.0 is the narrowest's)
        before_last = [k for k in weights if re.search(r"\.bn\.[1-9]\.(weight|bias)$", k)]
        assert len(before_last) == 4 * 3 * 2  # 4 BN layers x 3 wider widths x weight and bias
        assert all(not torch.allclose(expected[k], zero[k], atol=1e-4) for k in before_last)


@pytest.mark.slow
def test_two_ranks_killed_together_resume_to_the_uninterrupted_weights(data: Path, tmp_path: Path) -> None:
    """kill -9 of the launcher and both ranks mid-run, then --resume on 2 ranks: the final checkpoint
    equals that of a 2-rank run never interrupted (rank 0 wrote the state, both ranks read it)."""
    common = ["train", "us_cnn_small", "-d", str(data), "--epochs", "4", "--batch-size", "8", "--nproc", "2",
              "--save-every", "5"]  # fmt: skip
    whole = planner(*common, "-o", str(tmp_path / "whole.pt"))
    assert whole.returncode == 0, whole.stderr
    state = tmp_path / "cut.resume.pt"
    command = [sys.executable, "-m", "planner", *common, "-o", str(tmp_path / "cut.pt")]
    run = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while not state.exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(run.pid, signal.SIGKILL)  # the launcher and its ranks, at once
    run.wait()
    assert run.returncode == -signal.SIGKILL and not (tmp_path / "cut.pt").exists()
    resumed = planner(*common, "-o", str(tmp_path / "cut.pt"), "--resume", str(state))
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stderr.count("resuming from") == 1
    expected, got = (read_checkpoint(tmp_path / f"{n}.pt")["model"] for n in ("whole", "cut"))
    for key, value in expected.items():
        assert torch.equal(value, got[key]), key


@pytest.mark.slow
def test_bad_input_under_torchrun_is_one_line_from_rank_0_and_every_rank_exits(tmp_path: Path) -> None:
    run = planner("train", "s_cnn_small", "-d", str(tmp_path / "none.npz"), "-o", str(tmp_path / "m.pt"),
                  "--nproc", "2")  # fmt: skip
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [f"error: dataset {tmp_path / 'none.npz'} does not exist "
                      "(give a directory, an .npz file, 'digits' or 'digits-distorted')"]  # fmt: skip


def test_missing_torchrun_variables_are_one_line_exit_2(tmp_path: Path) -> None:
    run = planner(
        "train", "s_cnn_small", "-d", "digits", "-o", str(tmp_path / "m.pt"),
        env={**ENV, "RANK": "0", "WORLD_SIZE": "2"},
    )  # fmt: skip
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "error: torchrun variables incomplete: RANK, WORLD_SIZE set but LOCAL_RANK, MASTER_ADDR, "
        "MASTER_PORT missing (start with torchrun or planner train --nproc N)"
    ]


def test_torchrun_variables_are_checked() -> None:
    full = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1"}
    assert from_environment({}) is None
    world = from_environment(full)
    assert (world.rank, world.size, world.local_rank, world.leader) == (1, 2, 1, False)
    with pytest.raises(PlannerError, match="RANK=2 is not below WORLD_SIZE=2"):
        from_environment({**full, "RANK": "2"})
    with pytest.raises(PlannerError, match="WORLD_SIZE='two' is not an integer"):
        from_environment({**full, "WORLD_SIZE": "two"})
    with pytest.raises(PlannerError, match="LOCAL_RANK=3 with RANK=1"):
        from_environment({**full, "LOCAL_RANK": "3"})
    assert not reports_errors(full)  # rank 1 stays quiet; rank 0 and a broken rank speak
    assert reports_errors({**full, "RANK": "0"}) and reports_errors({**full, "RANK": "5"})


def test_ranks_share_each_global_batch_and_a_resumed_epoch_skips_what_ran() -> None:
    data = list(range(20))
    ranks = [ShardSampler(data, num_replicas=2, rank=r, shuffle=True, seed=7) for r in range(2)]
    for sampler in ranks:
        sampler.set_epoch(3)
    local = [list(s) for s in ranks]
    order = torch.randperm(20, generator=torch.Generator().manual_seed(7 + 3)).tolist()
    assert local[0][:4] + local[1][:4] == order[0:8:2] + order[1:8:2]  # global batch 0 of 8, interleaved
    ranks[0].skip = 4
    assert list(ranks[0]) == local[0][4:] and len(ranks[0]) == 6


def test_the_launcher_passes_every_other_option_on() -> None:
    argv = ["train", "m", "--nproc", "2", "-d", "digits", "--nproc=3", "--epochs", "1"]
    assert without_option(argv, "--nproc") == ["train", "m", "-d", "digits", "--epochs", "1"]
