"""Materialised dense networks compute what the slimmable model computes, with ordinary layers only."""

import pytest
import torch
from torch import nn

import planner
from planner.nn.counting import count
from planner.nn.materialize import materialize

# small inputs keep the suite fast; the layer structure is the same as at 224
MODELS = [
    ("s_cnn_small", {}),
    ("s_mobilenet_v1", {"input_size": 64}),
    ("s_mobilenet_v2", {"input_size": 64}),
    ("s_resnet50", {"input_size": 64}),
    ("us_mobilenet_v2", {"input_size": 64}),
    ("us_cnn_small", {}),
]
DENSE_LEAVES = (
    nn.Conv2d,
    nn.BatchNorm2d,
    nn.Linear,
    nn.ReLU,
    nn.ReLU6,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.MaxPool2d,
    nn.Identity,
)


@pytest.mark.parametrize(("name", "options"), MODELS, ids=[m for m, _ in MODELS])
def test_dense_network_equals_the_slimmable_model_at_every_width(name, options, randomize):
    model = randomize(planner.create_model(name, **options)).eval()
    x = torch.randn(2, model.in_channels, model.input_size, model.input_size)
    widths = model.widths if not model.universal else [0.35, 0.6, 1.0]
    for width in widths:
        config = model.config(width)
        dense = materialize(model, config)
        model.set_config(config)
        with torch.no_grad():
            expected, got = model(x), dense(x)
        assert (expected - got).abs().max() <= 1e-5, width
        leaves = [m for m in dense.modules() if not list(m.children())]
        assert all(type(m) in DENSE_LEAVES for m in leaves)
        weights = sum(
            m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)
            for m in dense.modules()
            if isinstance(m, (nn.Conv2d, nn.Linear))
        )
        assert weights == count(model, config).params


def test_per_layer_config_and_bn_folding(randomize):
    model = randomize(planner.create_model("s_mobilenet_v2", input_size=64)).eval()
    full = model.config(1.0)
    config = model.config_from_channels({g: max(1, (c * 3) // 5) for g, c in full.channels.items()})
    x = torch.randn(2, 3, 64, 64)
    model.set_config(config)
    with torch.no_grad():
        expected = model(x)
        assert (materialize(model, config)(x) - expected).abs().max() <= 1e-5
        folded = materialize(model, config, fold_bn=True)
        assert not any(
            isinstance(m, nn.BatchNorm2d)
            for m in folded.features.modules()
            if m is not folded.features[18][1]
        )
        assert (folded(x) - expected).abs().max() <= 1e-4


def test_materialize_leaves_the_model_as_it_was():
    model = planner.create_model("s_cnn_small")
    model.set_width(0.5)
    materialize(model, model.config(1.0))
    assert model.active_config == model.config(0.5)
    assert model.features[0][0].active_out == 16


def test_calibration_replaces_borrowed_statistics_for_a_per_layer_config():
    model = planner.create_model("s_cnn_small").eval()
    config = model.config_from_channels({g: c - 4 for g, c in model.config(1.0).channels.items()})
    model.set_config(config)
    assert model.needs_calibration(config) and not model.needs_calibration(model.config(0.5))
    x = torch.randn(64, 1, 8, 8) * 3 + 1
    before = materialize(model, config).features[0][1].running_mean.clone()
    model.reset_calibration()
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(x)
    model.eval()
    after = materialize(model, config).features[0][1].running_mean
    assert not torch.allclose(before, after)
    # statistics of the first BN are the batch statistics of its input, up to the cumulative average
    with torch.no_grad():
        conv_out = model.features[0][0](x)
    assert torch.allclose(after, conv_out.mean(dim=(0, 2, 3)), atol=1e-4)


def test_export_uses_the_statistics_a_calibrate_checkpoint_carries(tmp_path):
    from planner.nn.build import build_model
    from planner.nn.calibrate import calibrate, save_calibrated_checkpoint

    model = planner.create_model("s_cnn_small").eval()
    config = model.config_from_channels({g: c - 4 for g, c in model.config(1.0).channels.items()})
    batches = [torch.randn(32, 1, 8, 8) * 2 + 1 for _ in range(3)]
    calibration = calibrate(model, config, batches, num_batches=3)
    path = save_calibrated_checkpoint(model, tmp_path / "calibrated.pt", [calibration])

    rebuilt = build_model(checkpoint=path)
    assert config.id in rebuilt.calibrations
    dense = materialize(rebuilt, config)
    stored = calibration.mean["features.0.1"]
    assert torch.allclose(dense.features[0][1].running_mean, stored)
    borrowed = materialize(planner.create_model("s_cnn_small"), config).features[0][1].running_mean
    assert not torch.allclose(borrowed, stored)
