"""Width configurations: frozen values with stable ids, JSON round trips, coupled layers checked."""

import json

import pytest

import planner
from planner.errors import PlannerError
from planner.widths import WidthConfig


@pytest.fixture(scope="module")
def mobilenet():
    return planner.create_model("s_mobilenet_v2")


def test_uniform_config_round_trips_through_json_with_a_stable_id(mobilenet, tmp_path):
    config = mobilenet.config(0.5)
    assert config.width == 0.5
    assert config == WidthConfig.from_json(config.to_json())
    assert config.id == WidthConfig.load(config.save(tmp_path / "c.json")).id
    assert config.id == planner.create_model("s_mobilenet_v2").config(0.5).id  # same on a new model
    assert config.id != mobilenet.config(0.75).id
    with pytest.raises(AttributeError):
        config.width = 1.0


def test_untrained_width_is_refused_for_switchable_models(mobilenet):
    with pytest.raises(PlannerError, match="not one of s_mobilenet_v2's trained widths: 0.35, 0.5, 0.75, 1"):
        mobilenet.config(0.6)


def test_universal_model_takes_any_width_in_range():
    model = planner.create_model("us_mobilenet_v2")
    config = model.config(0.61)
    model.set_config(config)
    assert model.features[0][0].active_out == 24  # make_divisible(32 * 0.61)
    with pytest.raises(PlannerError, match="outside"):
        model.config(0.2)


def test_per_layer_config_by_layer_names_keeps_coupled_layers_together(mobilenet):
    groups = mobilenet.layer_groups()
    channels = {layer: max(1, mobilenet.groups[group].max_channels // 2) for layer, group in groups.items()}
    config = mobilenet.config_from_channels(channels)
    assert config.width is None and set(config.channels) == set(mobilenet.groups)
    # a depthwise conv shares its producer's group, a residual block its stage's: giving them different
    # counts is refused, naming both layers
    residual_a, residual_b = "features.2.body.6", "features.3.body.6"
    assert groups[residual_a] == groups[residual_b]
    channels[residual_b] = channels[residual_a] + 8
    with pytest.raises(PlannerError, match="coupled layers 'features.2.body.6' .* and 'features.3.body.6'"):
        mobilenet.config_from_channels(channels)


def test_depthwise_conv_is_coupled_to_its_producer(mobilenet):
    groups = mobilenet.layer_groups()
    assert groups["features.2.body.3"] == groups["features.2.body.0"]  # depthwise after the expansion


def test_malformed_configs_are_user_errors(mobilenet):
    full = mobilenet.config(1.0).channels
    with pytest.raises(PlannerError, match="misses"):
        mobilenet.config_from_channels(dict(list(full.items())[:-1]))
    with pytest.raises(PlannerError, match="takes 1 to 32 channels"):
        mobilenet.config_from_channels({**full, "features.0.0": 64})
    with pytest.raises(PlannerError, match="no slimmable layer"):
        mobilenet.config_from_channels({**full, "features.99": 8})
    with pytest.raises(PlannerError, match="malformed"):
        WidthConfig.from_json("{not json")
    with pytest.raises(PlannerError, match="key 'channels.a'"):
        WidthConfig.from_json(json.dumps({"model": "m", "channels": {"a": "8"}}))
    with pytest.raises(PlannerError, match="not 's_mobilenet_v2'"):
        mobilenet.set_config(planner.create_model("s_cnn_small").config(1.0))
