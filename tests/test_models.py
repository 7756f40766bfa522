"""The model zoo: registry, reference-compatible state-dict layout, checkpoints."""

import pytest
import torch

import planner
from planner.errors import PlannerError
from planner.nn.checkpoint import save_checkpoint
from planner.nn.counting import count

REFERENCE_SHAPES = {
    "s_mobilenet_v2": {
        "features.0.0.weight": (32, 3, 3, 3),
        "features.0.1.bn.0.running_mean": (16,),
        "features.1.body.0.weight": (32, 1, 3, 3),
        "features.2.body.0.weight": (96, 16, 1, 1),
        "features.2.body.1.bn.0.weight": (48,),
        "features.17.body.6.weight": (320, 960, 1, 1),
        "features.18.0.weight": (1280, 320, 1, 1),
        "features.18.1.running_var": (1280,),
        "classifier.0.weight": (1000, 1280),
    },
    "s_mobilenet_v1": {
        "features.0.0.weight": (32, 3, 3, 3),
        "features.1.body.0.weight": (32, 1, 3, 3),
        "features.1.body.3.weight": (64, 32, 1, 1),
        "features.13.body.3.weight": (1024, 1024, 1, 1),
        "classifier.0.weight": (1000, 1024),
    },
    "s_resnet50": {
        "features.0.0.weight": (64, 3, 7, 7),
        "features.1.body.0.weight": (64, 64, 1, 1),
        "features.1.shortcut.0.weight": (256, 64, 1, 1),
        "features.1.shortcut.1.bn.0.running_mean": (64,),
        "features.16.body.6.weight": (2048, 512, 1, 1),
        "classifier.0.weight": (1000, 2048),
    },
    "us_mobilenet_v2": {
        "features.0.1.weight": (32,),
        "features.0.1.bn.26.running_mean": (32,),
        "features.0.1.bn.0.running_mean": (16,),
        "features.2.body.0.weight": (96, 16, 1, 1),
    },
}


def test_registry_lists_every_model():
    assert {
        "s_mobilenet_v1",
        "s_mobilenet_v2",
        "s_resnet50",
        "us_mobilenet_v2",
        "s_cnn_small",
        "us_cnn_small",
    } <= set(planner.list_models())
    assert planner.list_models("s_mobilenet*") == ["s_mobilenet_v1", "s_mobilenet_v2"]


def test_unknown_model_suggests_near_matches():
    with pytest.raises(PlannerError, match="did you mean s_mobilenet_v2"):
        planner.create_model("s_mobilenetv2")


@pytest.mark.parametrize("name", sorted(REFERENCE_SHAPES))
def test_state_dict_matches_the_reference_layout(name):
    state = planner.create_model(name).state_dict()
    for key, shape in REFERENCE_SHAPES[name].items():
        assert tuple(state[key].shape) == shape, key


def test_s_mobilenet_v2_has_the_reference_key_count():
    assert len(planner.create_model("s_mobilenet_v2").state_dict()) == 1079


def test_small_cnn_takes_8_to_32_pixel_inputs():
    for size in (8, 16, 32):
        model = planner.create_model("s_cnn_small", input_size=size).eval()
        assert model(torch.zeros(2, 1, size, size)).shape == (2, 10)
    with pytest.raises(PlannerError, match="8x8 to 32x32"):
        planner.create_model("s_cnn_small", input_size=64)


def test_us_cnn_small_is_the_small_cnn_at_any_width_and_per_layer_mix():
    s_model, us = planner.create_model("s_cnn_small"), planner.create_model("us_cnn_small")
    assert us.universal and us.width_range == (0.25, 1.0) and len(us.widths) == 31
    assert list(us.groups) == list(s_model.groups)
    for width in s_model.widths:
        assert us.config(width).channels == s_model.config(width).channels
        assert count(us, us.config(width)) == count(s_model, s_model.config(width))
    assert us.config(0.6).channels == {
        "features.0.0": 24,
        "features.1.0": 40,
        "features.2.0": 40,
        "features.3.0": 80,
    }
    mix = us.config_from_channels(
        {"features.0.0": 9, "features.1.0": 64, "features.2.0": 17, "features.3.0": 33}
    )
    us.set_config(mix)
    assert us.eval()(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    assert us.needs_calibration(mix) and not us.needs_calibration(us.config(0.6))
    with pytest.raises(PlannerError, match=r"outside us_cnn_small's range \[0.25, 1\]"):
        us.config(0.2)


def test_set_width_changes_the_computation():
    model = planner.create_model("s_cnn_small").eval()
    x = torch.randn(1, 1, 8, 8)
    outputs = []
    for width in model.widths:
        model.set_width(width)
        outputs.append(model(x))
    assert not torch.allclose(outputs[0], outputs[-1])


def test_reference_checkpoint_with_module_prefix_loads(tmp_path):
    source = planner.create_model("s_mobilenet_v2")
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    torch.save({"model": state}, tmp_path / "reference.pt")
    target = planner.load_checkpoint(planner.create_model("s_mobilenet_v2"), tmp_path / "reference.pt")
    assert torch.equal(target.features[0][0].weight, source.features[0][0].weight)


def test_plain_state_dict_and_planner_checkpoints_load(tmp_path):
    source = planner.create_model("s_cnn_small")
    torch.save(source.state_dict(), tmp_path / "plain.pt")
    save_checkpoint(source, tmp_path / "planner.pt")
    for file in ("plain.pt", "planner.pt"):
        target = planner.load_checkpoint(planner.create_model("s_cnn_small"), tmp_path / file)
        assert torch.equal(target.classifier[0].weight, source.classifier[0].weight)


def test_mismatched_checkpoint_names_keys_and_shapes(tmp_path):
    state = planner.create_model("s_cnn_small", num_classes=5).state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["features.0.0.weight"]
    torch.save(state, tmp_path / "other.pt")
    with pytest.raises(PlannerError) as raised:
        planner.load_checkpoint(planner.create_model("s_cnn_small"), tmp_path / "other.pt")
    message = str(raised.value)
    assert "missing keys (first: features.0.0.weight)" in message
    assert "unexpected keys (first: extra.weight)" in message
    assert "classifier.0.weight is [5, 128] in the checkpoint, [10, 128] in the model" in message


def test_corrupt_or_missing_checkpoint_is_a_user_error(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    model = planner.create_model("s_cnn_small")
    with pytest.raises(PlannerError, match="weights_only"):
        planner.load_checkpoint(model, tmp_path / "bad.pt")
    with pytest.raises(PlannerError, match="does not exist"):
        planner.load_checkpoint(model, tmp_path / "missing.pt")
