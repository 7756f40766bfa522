"""Slimmable training: every width learns, widest first, US models follow the sandwich rule, runs repeat."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cli_helpers import run_cli

from planner.accuracy.data import load_dataset
from planner.accuracy.evaluate import evaluate
from planner.accuracy.train import (
    PER_LAYER,
    iteration_configs,
    iteration_widths,
    per_layer_domains,
    soft_cross_entropy,
    train,
)
from planner.errors import PlannerError
from planner.models import create_model
from planner.models.space import allowed_counts, random_configs
from planner.nn.checkpoint import read_checkpoint


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def trained(digits, single_thread):
    torch.manual_seed(0)
    model = create_model("s_cnn_small", in_channels=1, num_classes=10, input_size=8)
    result = train(model, digits, epochs=2, batch_size=64, lr=0.2, seed=0)
    return model, result


def test_every_width_of_one_network_learns_digits(trained, digits) -> None:
    model, result = trained
    scores = evaluate(model, [model.config(w) for w in model.widths], digits.batches("val", 512))
    assert [s.config.width for s in scores] == [0.25, 0.5, 0.75, 1.0]
    assert all(s.top1 > 80 for s in scores), [s.top1 for s in scores]
    assert result.steps == 2 * 20
    first, last = result.epoch_losses
    assert list(first) == [1.0, 0.75, 0.5, 0.25]
    assert all(last[w] < first[w] for w in model.widths)


def test_s_model_runs_all_widths_widest_first_every_iteration() -> None:
    model = create_model("s_cnn_small", widths=[0.5, 0.25, 1.0])
    generator = torch.Generator().manual_seed(0)
    assert iteration_widths(model, generator) == [1.0, 0.5, 0.25]


def test_us_model_sandwich_takes_max_min_and_two_seeded_random_tracked_widths() -> None:
    model = create_model("us_mobilenet_v2", num_classes=10, input_size=32)
    draws = [iteration_widths(model, torch.Generator().manual_seed(s)) for s in range(20)]
    for widths in draws:
        assert len(widths) == 4 and widths[0] == 1.0 and widths[-1] == 0.35
        assert widths == sorted(widths, reverse=True) and len(set(widths)) == 4
        assert set(widths) <= set(model.widths)
    assert len({tuple(w) for w in draws}) > 5
    again = [iteration_widths(model, torch.Generator().manual_seed(s)) for s in range(20)]
    assert again == draws


def test_per_layer_sandwich_takes_max_min_and_two_seeded_per_layer_configs() -> None:
    model = create_model("us_cnn_small")
    domains = per_layer_domains(model)
    assert domains == {n: allowed_counts(model, g, 8) for n, g in model.groups.items()}  # its planning step
    draws = [iteration_configs(model, torch.Generator().manual_seed(s), domains) for s in range(20)]
    for members in draws:
        assert [key for key, _ in members] == [1.0, PER_LAYER, PER_LAYER, 0.25]
        assert members[0][1] == model.config(1.0) and members[-1][1] == model.config(0.25)
        for _, config in members[1:3]:
            assert config.width is None
            assert all(count in domains[group] for group, count in config.channels.items())
    randoms = {config.id: config for members in draws for _, config in members[1:3]}
    assert len(randoms) == 40  # every draw is a new mix
    # each group is drawn on its own: a mix is not a uniform width (its layers keep different shares)
    shares = [
        {round(c / model.groups[g].max_channels, 2) for g, c in config.channels.items()}
        for config in randoms.values()
    ]
    assert sum(len(s) > 1 for s in shares) >= 38
    again = [iteration_configs(model, torch.Generator().manual_seed(s), domains) for s in range(20)]
    assert again == draws


@pytest.fixture(scope="module")
def per_layer_trained(digits, single_thread):
    torch.manual_seed(0)
    model = create_model("us_cnn_small", in_channels=1, num_classes=10, input_size=8)
    result = train(model, digits, epochs=2, batch_size=64, seed=0, per_layer=True)
    return model, result


def test_per_layer_training_makes_per_layer_mixes_accurate(per_layer_trained, digits) -> None:
    model, result = per_layer_trained
    assert [list(losses) for losses in result.epoch_losses] == [[1.0, PER_LAYER, 0.25]] * 2
    first, last = result.epoch_losses
    assert all(last[key] < first[key] for key in first)
    mixes = random_configs(model, 6, np.random.default_rng(0))
    scores = evaluate(model, mixes, digits.batches("val", 512), digits.batches("calibration", 64))
    assert all(s.calibrated for s in scores)
    assert all(s.top1 > 80 for s in scores), [s.top1 for s in scores]  # chance is 10%


def test_per_layer_training_leaves_every_tracked_width_usable_without_calibration(
    per_layer_trained, digits
) -> None:
    """The tracked widths between the two ends never run in per-layer training: their statistics are
    re-estimated after it, so evaluating them needs no calibration data."""
    model, _ = per_layer_trained
    configs = [model.config(w) for w in (0.25, 0.5, 0.625, 0.8, 1.0)]
    scores = evaluate(model, configs, digits.batches("val", 512))
    assert not any(s.calibrated for s in scores)
    assert all(s.top1 > 80 for s in scores), [s.top1 for s in scores]


def test_per_layer_training_repeats_exactly_with_a_seed(tmp_path: Path, single_thread) -> None:
    dataset = load_dataset(_tiny_npz(tmp_path / "tiny.npz"), image_size=16)

    def run(seed: int):
        torch.manual_seed(0)
        model = create_model("us_cnn_small", num_classes=3, input_size=16, in_channels=1)
        train(model, dataset, epochs=2, batch_size=7, lr=0.05, seed=seed, per_layer=True, granularity=4)
        return model.state_dict()

    first, second, other = run(0), run(0), run(1)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_per_layer_training_refuses_what_it_cannot_do(digits) -> None:
    with pytest.raises(PlannerError, match="universally slimmable"):
        train(create_model("s_cnn_small"), digits, epochs=1, per_layer=True)
    us = create_model("us_cnn_small")
    with pytest.raises(PlannerError, match="at least 1 channel"):
        train(us, digits, epochs=1, per_layer=True, granularity=0)
    with pytest.raises(PlannerError, match="per-layer training only"):
        train(us, digits, epochs=1, granularity=8)


def test_inplace_distillation_loss_is_cross_entropy_against_the_soft_target() -> None:
    logits = torch.randn(6, 5)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    one_hot = F.one_hot(labels, 5).float()
    assert torch.allclose(soft_cross_entropy(logits, one_hot), F.cross_entropy(logits, labels))
    teacher = F.softmax(torch.randn(6, 5), dim=1)
    assert soft_cross_entropy(logits, teacher) > soft_cross_entropy(teacher.log(), teacher) - 1e-6


def _tiny_npz(path: Path) -> Path:
    rng = np.random.default_rng(0)
    y = np.arange(30) % 3
    x = rng.normal(size=(30, 1, 32, 32)).astype(np.float32) * 0.1 + y[:, None, None, None] / 3
    np.savez(path, x=x.clip(0, 1), y=y)
    return path


def test_us_training_repeats_exactly_with_a_seed(tmp_path: Path, single_thread) -> None:
    dataset = load_dataset(_tiny_npz(tmp_path / "tiny.npz"))

    def run(seed: int):
        torch.manual_seed(0)
        model = create_model("us_mobilenet_v2", num_classes=3, input_size=32, in_channels=1)
        result = train(model, dataset, epochs=1, batch_size=21, lr=0.05, seed=seed)
        return model.state_dict(), result

    (first, result), (second, _) = run(0), run(0)
    assert result.steps == 1 and list(result.epoch_losses[0])[0] == 1.0
    assert len(result.epoch_losses[0]) == 4 and 0.35 in result.epoch_losses[0]
    assert all(torch.equal(first[k], second[k]) for k in first)
    untrained = create_model("us_mobilenet_v2", num_classes=3, input_size=32, in_channels=1).state_dict()
    assert not torch.equal(first["features.0.0.weight"], untrained["features.0.0.weight"])


def test_training_errors_are_plain(trained, digits) -> None:
    model, _ = trained
    with pytest.raises(PlannerError, match="epochs"):
        train(model, digits, epochs=0)
    small = create_model("s_cnn_small", num_classes=5)
    with pytest.raises(PlannerError, match="10 classes"):
        train(small, digits, epochs=1)


def test_train_command_writes_a_reference_layout_checkpoint(tmp_path: Path, capsys, single_thread) -> None:
    output = tmp_path / "digits.pt"
    argv = [
        "train",
        "s_cnn_small",
        "--data",
        "digits",
        "--epochs",
        "1",
        "--widths",
        "0.5,1.0",
        "-o",
        str(output),
    ]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    assert "1x:" in err and "0.5x:" in err  # the progress bar's loss per width
    raw = torch.load(output, weights_only=True)
    assert all(key.startswith("module.") for key in raw["model"])
    info = read_checkpoint(output)["planner"]
    assert (info["name"], info["widths"], info["num_classes"], info["input_size"]) == (
        "s_cnn_small",
        [0.5, 1.0],
        10,
        8,
    )
    assert "top-1" in out and "0.5x" in out


def test_train_command_per_layer(tmp_path: Path, capsys, single_thread) -> None:
    output = tmp_path / "us.pt"
    argv = ["train", "us_cnn_small", "--data", "digits", "--epochs", "1", "--per-layer", "-o", str(output)]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    assert "per-layer random" in err and "per-layer:" in err  # the progress bar's loss of the mixes
    info = read_checkpoint(output)["planner"]
    assert info["name"] == "us_cnn_small" and info["per_layer"] == {"granularity": 8}
    assert "top-1" in out and "0.25x" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["s_cnn_small", "--per-layer"], "needs a universally slimmable model"),
        (["us_cnn_small", "--per-layer", "--granularity", "0"], "granularity must be at least 1"),
        (["us_cnn_small", "--granularity", "8"], "per-layer training only"),
    ],
)
def test_train_command_bad_per_layer_options_exit_2(argv, message, tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(["train", *argv, "--data", "digits", "-o", str(tmp_path / "x.pt")], capsys)
    assert code == 2
    assert err.strip().startswith("error:") and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--data", "/nonexistent/dir"], "does not exist"),
        (["--data", "digits", "--num-classes", "5"], "10 classes but --num-classes has 5"),
        (["--data", "digits", "--input-size", "16", "--epochs", "0"], "epochs must be at least 1"),
        (["--data", "digits", "--widths", "0.5,x"], "--widths takes numbers"),
    ],
)
def test_train_command_bad_input_exits_2_with_one_line(argv, message, tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(["train", "s_cnn_small", *argv, "-o", str(tmp_path / "x.pt")], capsys)
    assert code == 2
    assert err.strip().startswith("error:") and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.pt").exists()


def test_train_checkpoint_from_python_writes_what_the_command_writes(
    tmp_path: Path, capsys, single_thread
) -> None:
    import planner

    starts, steps = [], []
    options = planner.TrainOptions("s_cnn_small", "digits", tmp_path / "py.pt", epochs=1, widths=[0.5, 1.0])
    done = planner.train_checkpoint(options, on_start=starts.append, on_step=steps.append)
    argv = ["train", "s_cnn_small", "-d", "digits", "--epochs", "1", "--widths", "0.5,1.0"]
    code, out, err = run_cli([*argv, "-o", str(tmp_path / "cli.pt")], capsys)
    assert code == 0, err
    python, cli = read_checkpoint(tmp_path / "py.pt"), read_checkpoint(tmp_path / "cli.pt")
    assert python["planner"] == cli["planner"]
    for key, value in cli["model"].items():
        assert torch.equal(value, python["model"][key]), key
    assert done.path == tmp_path / "py.pt" and (tmp_path / "py.resume.pt").is_file()
    assert [score.config.width for score in done.scores] == [0.5, 1.0]
    assert f"{done.scores[0].top1:.2f}" in out  # the command prints the same val scores
    assert starts[0].options.batch_size == 128
    assert starts[0].steps_per_epoch == len(steps) == done.result.steps
