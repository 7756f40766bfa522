"""MACs and params reproduce the published per-width figures (reference counting convention)."""

import json
from pathlib import Path

import pytest

import planner
from planner.nn.counting import count

REFERENCE = json.loads(
    (Path(__file__).resolve().parents[2] / "shared" / "reference" / "slimmable_results.json").read_text()
)
CASES = [
    (name, float(width), figures)
    for name in ("s_mobilenet_v1", "s_mobilenet_v2", "s_resnet50")
    for width, figures in REFERENCE[name]["widths"].items()
]


@pytest.fixture(scope="module")
def models():
    return {name: planner.create_model(name) for name in ("s_mobilenet_v1", "s_mobilenet_v2", "s_resnet50")}


@pytest.mark.parametrize(("name", "width", "figures"), CASES, ids=[f"{n}-{w}" for n, w, _ in CASES])
def test_published_macs_and_params_are_reproduced(models, name, width, figures):
    model = models[name]
    cost = count(model, model.config(width))
    assert cost.macs / 1e6 == pytest.approx(figures["macs_exact_m"], rel=0.005)
    assert cost.params / 1e6 == pytest.approx(figures["params_m"], rel=0.005)


def test_us_mobilenet_v2_macs_match_the_published_floor():
    model = planner.create_model("us_mobilenet_v2")
    for width, floored in REFERENCE["us_mobilenet_v2_macs_m_floored"].items():
        assert int(count(model, model.config(float(width))).macs / 1e6) == floored, width


def test_per_layer_config_costs_less_than_full_width(models):
    model = models["s_mobilenet_v2"]
    full = model.config(1.0)
    halved = model.config_from_channels({g: max(1, c // 2) for g, c in full.channels.items()})
    assert count(model, halved).macs < count(model, full).macs
