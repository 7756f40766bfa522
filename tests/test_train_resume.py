"""Resumable training: a run stopped anywhere and resumed ends with the weights of one never stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_helpers import run_cli

from planner.accuracy.data import load_dataset
from planner.accuracy.resume import load_state
from planner.accuracy.train import RunOptions, train
from planner.errors import PlannerError
from planner.models import create_model
from planner.nn.checkpoint import read_checkpoint

ROOT = Path(__file__).resolve().parents[1]


class Stop(Exception):
    """Raised from the progress callback: the run dies between two steps, as a kill would leave it."""


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


pytestmark = pytest.mark.usefixtures("single_thread")


def fresh(name: str):
    torch.manual_seed(0)
    return create_model(name, in_channels=1, num_classes=10, input_size=8)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (key, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), key


@pytest.mark.parametrize("name", ["s_cnn_small", "us_cnn_small"])
def test_a_run_stopped_mid_epoch_resumes_to_the_same_weights(digits, tmp_path: Path, name: str) -> None:
    settings = {"epochs": 2, "batch_size": 128, "lr": 0.1, "seed": 3}
    whole = fresh(name)
    expected = train(whole, digits, **settings)

    state = tmp_path / "run.resume.pt"

    def stop_at_13(step) -> None:
        if step.epoch == 1 and step.step == 3:  # 10 steps per epoch: one step past the save at step 12
            raise Stop

    with pytest.raises(Stop):
        train(fresh(name), digits, on_step=stop_at_13, run=RunOptions(state, save_every=4), **settings)
    assert load_state(state, {})["step"] == 2  # epoch 1 at step 2 (12 steps done): 1 step is lost

    seen = []
    resumed = fresh(name)
    got = train(resumed, digits, run=RunOptions(state, 4, resume=state, on_resume=seen.append), **settings)
    assert (seen[0].epoch, seen[0].step) == (1, 2)
    same_weights(whole, resumed)
    assert got.steps == expected.steps == 20
    assert got.epoch_losses == expected.epoch_losses


def test_resume_refuses_another_model_or_recipe(digits, tmp_path: Path) -> None:
    state = tmp_path / "run.resume.pt"
    train(fresh("s_cnn_small"), digits, epochs=1, batch_size=256, run=RunOptions(state))
    with pytest.raises(PlannerError, match="batch_size = 256, this run has 128"):
        train(fresh("s_cnn_small"), digits, epochs=1, batch_size=128, run=RunOptions(resume=state))
    with pytest.raises(PlannerError, match="written for model = name=s_cnn_small"):
        train(fresh("us_cnn_small"), digits, epochs=1, batch_size=256, run=RunOptions(resume=state))
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(PlannerError, match="truncated"):
        train(fresh("s_cnn_small"), digits, epochs=1, batch_size=256, run=RunOptions(resume=state))


def test_cli_resume_errors_are_one_line(tmp_path: Path, capsys) -> None:
    model = tmp_path / "model.pt"
    code, _, _ = run_cli(
        ["train", "s_cnn_small", "-d", "digits", "-o", str(model), "--epochs", "1", "--batch-size", "512"],
        capsys,
    )
    assert code == 0 and (tmp_path / "model.resume.pt").is_file()
    args = ["train", "s_cnn_small", "-d", "digits", "-o", str(tmp_path / "again.pt"), "--epochs", "2"]
    code, _, err = run_cli(
        [*args, "--batch-size", "512", "--resume", str(tmp_path / "model.resume.pt")], capsys
    )
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'model.resume.pt'} was written for epochs = 1, this run has 2"
    )
    code, _, err = run_cli([*args, "--resume", str(model)], capsys)
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"error: {model} is not a planner resume checkpoint")


@pytest.mark.slow
def test_kill_9_mid_run_then_resume_ends_with_the_uninterrupted_weights(tmp_path: Path) -> None:
    """A real kill -9 of `planner train` between checkpoints; the resumed run's final checkpoint equals
    that of a run never interrupted (deterministic CPU: one thread, fixed seeds)."""
    args = ["s_cnn_small", "-d", "digits", "--epochs", "3", "--batch-size", "32", "--save-every", "7"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}

    def planner(*extra: str) -> subprocess.Popen:
        command = [sys.executable, "-m", "planner", "train", *args, *extra]
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    whole = planner("-o", str(tmp_path / "whole.pt"))
    killed = planner("-o", str(tmp_path / "killed.pt"))
    state = tmp_path / "killed.resume.pt"
    deadline = time.monotonic() + 120
    while not state.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (tmp_path / "killed.pt").exists()
    assert whole.wait() == 0, whole.stderr.read()

    resumed = subprocess.run(
        [
            sys.executable,
            "-m",
            "planner",
            "train",
            *args,
            "-o",
            str(tmp_path / "killed.pt"),
            "--resume",
            str(state),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr
    expected = read_checkpoint(tmp_path / "whole.pt")["model"]
    got = read_checkpoint(tmp_path / "killed.pt")["model"]
    for key, value in expected.items():
        assert torch.equal(value, got[key]), key
