"""LeGR on slimmable networks: ranking, budget -> configuration, evolution, coefficients files, CLI."""

import json
from functools import partial

import numpy as np
import pytest
import torch

import planner
from planner.accuracy.data import load_dataset
from planner.cli import main
from planner.errors import PlannerError
from planner.nn.checkpoint import save_checkpoint
from planner.nn.counting import count
from planner.search.legr import (
    Coefficients,
    Fitness,
    LearnedRanking,
    SearchSettings,
    WidthPlanner,
    accuracy,
    evolve,
    filter_scores,
    macs_cost,
    plan_measured,
    prefer_uniform,
)
from planner.widths import WidthConfig

TINY = SearchSettings(population=6, sample=3, generations=6)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A digits-sized model and its checkpoint (the ranking needs weights, not accuracy)."""
    torch.manual_seed(0)  # the same weights whichever tests ran before
    model = planner.create_model("s_cnn_small")
    path = save_checkpoint(model, tmp_path_factory.mktemp("legr") / "digits.pt")
    return model, path


def run(argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code


def test_filter_scores_are_squared_l2_norms_of_output_filters():
    model = planner.create_model("s_cnn_small")
    scores = filter_scores(model)
    weight = model.features[1][0].weight.detach().numpy()
    np.testing.assert_allclose(scores["features.1.0"], (weight.reshape(64, -1) ** 2).sum(axis=1), rtol=1e-6)
    assert "classifier.0" not in scores  # the classes are not slimmable


def test_mobilenet_groups_sum_coupled_layers_and_ranking_respects_prefix_and_granularity():
    model = planner.create_model("s_mobilenet_v2", input_size=32)
    widths = WidthPlanner(model, macs_cost(model))
    assert widths.granularity == 8
    identity = Coefficients.identity(widths.layers)
    groups = widths.group_scores(identity)
    # a depthwise conv and the expansion feeding it are one group: the group sums both layers' scores
    scores = filter_scores(model)
    np.testing.assert_allclose(
        groups["features.2.body.0"], scores["features.2.body.0"] + scores["features.2.body.3"]
    )
    order = widths.removal_order(identity)
    seen: dict[str, int] = {}
    for group, kept in order:
        assert kept < seen.get(group, model.groups[group].max_channels), "removed out of prefix order"
        assert kept % 8 == 0 or kept == widths.smallest[group]
        seen[group] = kept
    assert seen == widths.smallest  # walking the whole ranking leaves every group at its floor


def test_budget_walk_meets_macs_budget_and_keeps_floor(trained):
    model, _ = trained
    widths = WidthPlanner(model, macs_cost(model))
    identity = Coefficients.identity(widths.layers)
    full = widths.full_cost()
    previous = None
    for share in (0.9, 0.6, 0.3):
        config = widths.config_for(identity, share * full)
        assert count(model, config).macs <= share * full
        for name, kept in config.channels.items():
            assert kept >= widths.smallest[name] >= 0.1 * model.groups[name].max_channels
        if previous is not None:
            assert all(config.channels[n] <= previous.channels[n] for n in config.channels)
        previous = config
    with pytest.raises(PlannerError, match="below the smallest possible configuration"):
        widths.config_for(identity, 0.5 * widths.smallest_cost())
    assert widths.config_for(identity, 2 * full) == model.config(1.0)  # a trained width keeps its id


def test_coefficients_change_which_layers_lose_channels(trained):
    model, _ = trained
    widths = WidthPlanner(model, macs_cost(model))
    identity = Coefficients.identity(widths.layers)
    budget = 0.5 * widths.full_cost()
    base = widths.config_for(identity, budget)
    protect = "features.3.0"
    kappa = np.array([1e6 if layer == protect else 0.0 for layer in widths.layers])
    protected = widths.config_for(Coefficients(widths.layers, np.ones(len(kappa)), kappa), budget)
    assert protected.channels[protect] == model.groups[protect].max_channels
    assert protected.channels != base.channels


@pytest.mark.parametrize("device_over_table", [0.6, 1.5])
def test_measured_plan_uses_the_budget_the_table_misjudges(trained, device_over_table):
    """A device measuring 0.6x (or 1.5x) the table's prediction: the table-only plan wastes (or breaks)
    the budget; the measured plan fits and is at least as wide as any fitting plan it measured."""
    model, _ = trained
    widths = WidthPlanner(model, macs_cost(model))
    identity = Coefficients.identity(widths.layers)
    budget = 0.5 * widths.full_cost()
    measured = []

    def device(config: WidthConfig) -> float:
        return device_over_table * widths.cost(config.channels)

    def measure(config: WidthConfig) -> float:
        measured.append(device(config))
        return measured[-1]

    plan = plan_measured(partial(widths.config_for, identity), budget, measure, max_plans=6)
    table_only = widths.config_for(identity, budget)
    assert plan.fits and plan.measured <= budget and 1 <= plan.plans == len(measured) <= 6
    assert plan.measured == max(m for m in measured if m <= budget)
    if device_over_table < 1:  # the table-only plan left budget unused; the measured one takes it
        assert widths.cost(plan.config.channels) > widths.cost(table_only.channels)
        assert plan.measured > 0.9 * budget
    else:  # the table-only plan measured over budget
        assert device(table_only) > budget


def test_measured_plan_that_never_fits_says_so(trained):
    model, _ = trained
    widths = WidthPlanner(model, macs_cost(model))
    identity = Coefficients.identity(widths.layers)
    budget = 0.5 * widths.full_cost()
    never = 2 * widths.full_cost()
    plan = plan_measured(partial(widths.config_for, identity), budget, lambda config: never, max_plans=3)
    assert not plan.fits and plan.plans <= 3
    with pytest.raises(PlannerError, match="below the smallest possible configuration"):
        plan_measured(partial(widths.config_for, identity), 0.5 * widths.smallest_cost(), lambda config: 0.0)


def test_uniform_rival_is_the_widest_width_that_fits_and_fits_by_measurement(trained):
    model, _ = trained
    widths = WidthPlanner(model, macs_cost(model))
    cost = {w: widths.cost(model.config(w).channels) for w in model.widths}
    assert widths.uniform_for(cost[0.75]) == model.config(0.75)
    assert widths.uniform_for(cost[0.75] - 1) == model.config(0.5)
    with pytest.raises(PlannerError, match="below s_cnn_small's narrowest uniform width 0.25x"):
        widths.uniform_for(cost[0.25] - 1)
    # a device 1.3x slower than the table: 0.75x's predicted cost only fits 0.5x, found by measuring
    plan = plan_measured(widths.uniform_for, cost[0.75], lambda config: 1.3 * widths.cost(config.channels))
    assert plan.fits and plan.config == model.config(0.5)


def test_a_plan_must_beat_the_uniform_width_to_be_kept(trained):
    model, _ = trained
    plan, uniform = (
        model.config_from_channels({**model.config(0.5).channels, "features.0.0": 8}),
        model.config(0.5),
    )
    for plan_loss, kept in ((0.1, plan), (0.2, uniform), (0.3, uniform)):  # a tie goes to the uniform width
        losses = {plan.id: plan_loss, uniform.id: 0.2}
        assert prefer_uniform(plan, uniform, lambda config, losses=losses: losses[config.id]) == kept


def test_standardized_transform_thins_layers_more_evenly_than_raw_norms(trained):
    model, _ = trained
    widths = WidthPlanner(model, macs_cost(model))
    budget = 0.4 * widths.full_cost()

    def kept_shares(coefficients: Coefficients) -> np.ndarray:
        config = widths.config_for(coefficients, budget)
        return np.array([config.channels[n] / model.groups[n].max_channels for n in config.channels])

    raw, standardized = kept_shares(Coefficients.identity(widths.layers)), kept_shares(widths.standardized())
    assert standardized.max() - standardized.min() < raw.max() - raw.min()
    transformed = widths.group_scores(widths.standardized())
    for scores in transformed.values():
        assert abs(scores.mean()) < 1e-6 and abs(scores.std() - 1) < 1e-6


def test_evolution_is_reproducible_and_really_random(trained, digits):
    model, _ = trained
    widths = WidthPlanner(model, macs_cost(model))
    fitness = Fitness(model, digits.batches("calibration", 64), digits.batches("val", 128))
    budget = 0.5 * widths.full_cost()
    first = evolve(widths, budget, fitness, np.random.default_rng(3), TINY)
    second = evolve(widths, budget, fitness, np.random.default_rng(3), TINY)
    np.testing.assert_array_equal(first.coefficients.alpha, second.coefficients.alpha)
    assert first.loss == second.loss and len(first.history) == TINY.generations
    assert all(a >= b for a, b in zip(first.history, first.history[1:], strict=False))
    # one generator drives the whole search: the random members differ (NNCF re-seeds and copies)
    rng = np.random.default_rng(3)
    drawn = [np.exp(rng.normal(0.0, 1.0, len(widths.layers))) for _ in range(2)]
    assert not np.allclose(drawn[0], drawn[1])
    assert count(model, first.config).macs <= budget
    # the identity and the standardized transform are in the initial population, so the result is never
    # worse than plain L2 ranking or than thinning every layer about equally
    identity_loss = fitness(widths.config_for(Coefficients.identity(widths.layers), budget))
    standardized_loss = fitness(widths.config_for(widths.standardized(), budget))
    assert first.loss <= min(identity_loss, standardized_loss)
    assert 0 < accuracy(model, digits.batches("val", 128)) <= 100


def test_fitness_with_finetune_restores_the_weights(trained, digits):
    model, _ = trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fitness = Fitness(
        model,
        digits.batches("calibration", 64),
        digits.batches("val", 128),
        finetune_steps=2,
        train=digits.batches("train", 64),
    )
    loss = fitness(model.config(0.5))
    assert np.isfinite(loss)
    for key, value in model.state_dict().items():
        assert (value == before[key]).all(), key


def test_learn_and_config_cli_with_macs(trained, tmp_path):
    model, checkpoint = trained
    coefficients = tmp_path / "coeffs.json"
    code = run(
        ["legr", "learn", "s_cnn_small", "--checkpoint", str(checkpoint), "--data", "digits",
         "--generations", "4", "--population", "4", "--sample", "2", "--seed", "1", "-o", str(coefficients)]
    )  # fmt: skip
    assert code in (0, None)
    saved = json.loads(coefficients.read_text())
    assert saved["model"] == "s_cnn_small" and saved["search"]["generations"] == 4
    assert set(saved["layers"]) == set(filter_scores(model))
    ranking = LearnedRanking.load(coefficients)
    macs = count(model, model.config(0.5)).macs
    config_path = tmp_path / "config.json"
    # the checkpoint is found from the coefficients file; the same coefficients serve every budget
    for budget in (macs, 2 * macs):
        assert run(["legr", "config", "s_cnn_small", "--coefficients", str(coefficients),
                    "--max-macs", str(budget), "-o", str(config_path)]) in (0, None)  # fmt: skip
        config = WidthConfig.load(config_path)
        assert count(model, model.validate(config)).macs <= budget
    assert ranking.coefficients.layers == WidthPlanner(model, macs_cost(model)).layers


def test_config_with_data_keeps_the_plan_only_if_its_validation_loss_is_lower(
    trained, digits, tmp_path, capsys
):
    model, checkpoint = trained
    widths = WidthPlanner(model, macs_cost(model))
    identity = Coefficients.identity(widths.layers)
    path = LearnedRanking("s_cnn_small", identity, 1).save(tmp_path / "c.json")
    base = ["legr", "config", "s_cnn_small", "--coefficients", str(path), "--checkpoint", str(checkpoint),
            "--data", "digits", "-o", str(tmp_path / "config.json")]  # fmt: skip
    fitness = Fitness(model, digits.batches("calibration", 64), digits.batches("val", 64))
    budget = widths.cost(model.config(0.75).channels) - 1  # the rival is 0.5x
    plan = widths.config_for(identity, budget)
    capsys.readouterr()
    assert run([*base, "--max-macs", str(budget)]) in (0, None)
    said = capsys.readouterr().out
    expected = plan if fitness(plan) < fitness(model.config(0.5)) else model.config(0.5)
    assert WidthConfig.load(tmp_path / "config.json") == expected
    assert f"plan {fitness(plan):.4f}, uniform 0.5x {fitness(model.config(0.5)):.4f}" in said


def test_config_budget_below_smallest_is_one_line_exit_2(trained, tmp_path, capsys):
    model, checkpoint = trained
    widths = WidthPlanner(model, macs_cost(model))
    path = LearnedRanking("s_cnn_small", Coefficients.identity(widths.layers), 1).save(tmp_path / "c.json")
    capsys.readouterr()
    code = run(["legr", "config", "s_cnn_small", "--coefficients", str(path), "--checkpoint", str(checkpoint),
                "--max-macs", "1000", "-o", str(tmp_path / "x.json")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "smallest possible configuration" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "x.json").exists()


def test_bad_inputs_are_one_line_errors(trained, tmp_path, capsys):
    _, checkpoint = trained
    other = LearnedRanking("s_mobilenet_v2", Coefficients.identity(["a"]), 8).save(tmp_path / "m.json")
    cases = [
        ["legr", "config", "s_cnn_small", "--coefficients", str(other), "--checkpoint", str(checkpoint),
         "--max-macs", "1e6", "-o", str(tmp_path / "x.json")],
        ["legr", "config", "s_cnn_small", "--coefficients", str(tmp_path / "missing.json"),
         "--max-macs", "1e6", "-o", str(tmp_path / "x.json")],
        ["legr", "config", "s_cnn_small", "--coefficients", str(other), "--max-latency", "20ms",
         "-o", str(tmp_path / "x.json")],
        ["legr", "learn", "s_cnn_small", "--checkpoint", str(checkpoint), "--data", "digits",
         "--budget", "1.5", "-o", str(tmp_path / "c.json")],
        ["legr", "learn", "s_cnn_small", "--checkpoint", str(checkpoint), "--data", "digits",
         "--sample", "100", "-o", str(tmp_path / "c.json")],
    ]  # fmt: skip
    for argv in cases:
        capsys.readouterr()
        assert run(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and len(err.splitlines()) == 1, err
