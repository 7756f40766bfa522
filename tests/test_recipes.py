"""Training recipes: TOML data for the published setups, checked key by key, runnable with --recipe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import run_cli

from planner.accuracy.recipes import COSINE, Schedule, load_recipe, lr_factor, recipe_names
from planner.accuracy.train import TrainOptions, resolve_options
from planner.errors import PlannerError
from planner.nn.checkpoint import read_checkpoint

REFERENCE = Path("/work/shared/reference/slimmable_results.json")


def test_the_published_setups_are_built_in() -> None:
    assert recipe_names() == ["s_mobilenet_v1", "s_mobilenet_v2", "s_resnet50", "us_mobilenet_v2"]
    resnet = load_recipe("s_resnet50")
    assert (resnet.epochs, resnet.batch_size, resnet.lr, resnet.weight_decay) == (100, 256, 0.1, 1e-4)
    assert resnet.schedule == Schedule("multistep", (30, 60, 90), 0.1) and resnet.augment
    us = load_recipe("us_mobilenet_v2")
    assert len(us.widths) == 27 and us.schedule.kind == "linear" and us.batch_size == 1024


@pytest.mark.skipif(not REFERENCE.is_file(), reason="the shared reference results are not on this machine")
def test_the_recipes_quote_the_published_errors() -> None:
    published = json.loads(REFERENCE.read_text())
    for name in ("s_mobilenet_v1", "s_mobilenet_v2", "s_resnet50"):
        widths = published[name]["widths"]
        assert load_recipe(name).paper["top1_err"] == {w: v["top1_err"] for w, v in widths.items()}
    us = published["us_mobilenet_v2_top1_err"]
    assert all(us[w] == err for w, err in load_recipe("us_mobilenet_v2").paper["top1_err"].items())


def test_schedules() -> None:
    steps = dict(steps_per_epoch=10, total_steps=100)
    assert lr_factor(Schedule("cosine"), 50, **steps) == pytest.approx(0.5)
    assert lr_factor(Schedule("linear"), 25, **steps) == pytest.approx(0.75)
    multistep = Schedule("multistep", (3, 6), 0.1)
    assert [lr_factor(multistep, s, **steps) for s in (29, 30, 60)] == pytest.approx([1, 0.1, 0.01])
    assert lr_factor(Schedule("exponential", gamma=0.98), 25, **steps) == pytest.approx(0.98**2)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[train]\nmodel = 's'\n", "train.widths is missing"),
        (
            GOOD := "[train]\nmodel='s_cnn_small'\nwidths=[0.5,1.0]\nepochs=1\nbatch_size=8\nlr=0.1\n"
            "weight_decay=0.0\n",
            None,
        ),  # fmt: skip
        (GOOD + "lr_warmup = 5\n", "unknown key train.lr_warmup"),
        (GOOD.replace("epochs=1", "epochs='1'"), "train.epochs = '1' is not a int"),
        (GOOD + "schedule = { kind = 'step' }\n", "train.schedule.kind = 'step'"),
        (GOOD + "schedule = { kind = 'multistep' }\n", "needs train.schedule.milestones"),
        (GOOD + "label_smoothing = 1.5\n", "label_smoothing must be in"),
        ("[train\n", "is not valid TOML"),
        ("import os\n", "is not valid TOML"),
    ],
)
def test_a_wrong_recipe_names_the_file_and_the_key(tmp_path: Path, text: str, message: str | None) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(text)
    if message is None:
        assert load_recipe(path).model == "s_cnn_small"
        return
    with pytest.raises(PlannerError, match=message) as error:
        load_recipe(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_train_runs_a_recipe_and_given_options_win(tmp_path: Path, capsys) -> None:
    recipe = tmp_path / "digits.toml"
    recipe.write_text(
        "[train]\nmodel = 's_cnn_small'\nwidths = [0.5, 1.0]\nepochs = 3\nbatch_size = 256\nlr = 0.2\n"
        "weight_decay = 1e-4\nlabel_smoothing = 0.1\nschedule = { kind = 'multistep', milestones = [1] }\n"
    )
    out = tmp_path / "m.pt"
    argv = ["train", "s_cnn_small", "-d", "digits", "-o", str(out), "--recipe", str(recipe), "--epochs", "2"]
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    assert "loss 1x:" in err and "0.5x:" in err and " img/s" in err  # the progress line
    info = read_checkpoint(out)["planner"]
    assert (info["epochs"], info["batch_size"], info["widths"]) == (2, 256, [0.5, 1.0])
    code, _, err = run_cli(["train", "s_mobilenet_v2", *argv[2:]], capsys)
    assert code == 2 and err.strip() == "error: recipe digits trains s_cnn_small, not s_mobilenet_v2"


def test_options_left_out_take_the_recipes_values_then_the_defaults(tmp_path: Path) -> None:
    recipe = tmp_path / "digits.toml"
    recipe.write_text(
        "[train]\nmodel = 's_cnn_small'\nwidths = [0.5, 1.0]\nepochs = 3\nbatch_size = 256\nlr = 0.3\n"
        "weight_decay = 1e-4\nlabel_smoothing = 0.1\nschedule = { kind = 'multistep', milestones = [1] }\n"
    )
    given = TrainOptions("s_cnn_small", "digits", tmp_path / "m.pt", recipe=recipe, epochs=2, lr=0.1)
    resolved = resolve_options(given)
    assert (resolved.epochs, resolved.lr, resolved.batch_size, resolved.weight_decay) == (2, 0.1, 256, 1e-4)
    assert (resolved.widths, resolved.label_smoothing) == ([0.5, 1.0], 0.1)
    assert resolved.schedule == Schedule("multistep", (1,))
    plain = resolve_options(TrainOptions("s_cnn_small", "digits", tmp_path / "m.pt"))
    assert (plain.epochs, plain.batch_size, plain.lr, plain.weight_decay) == (15, 128, 0.2, 5e-4)
    assert (plain.widths, plain.augment, plain.schedule, plain.label_smoothing) == (None, False, COSINE, 0.0)
    with pytest.raises(PlannerError, match="recipe digits trains s_cnn_small, not us_cnn_small"):
        resolve_options(TrainOptions("us_cnn_small", "digits", tmp_path / "m.pt", recipe=recipe))
