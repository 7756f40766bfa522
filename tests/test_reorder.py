"""Reordering a plain network's channels by priority keeps its outputs and puts the best channels first."""

import pytest
import torch
from torch import nn

from planner.errors import PlannerError
from planner.nn.reorder import filter_priority, reorder


def _randomize(model: nn.Module) -> nn.Module:
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator))
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator))
    return model.eval()


def plain_cnn() -> nn.Module:
    torch.manual_seed(0)
    return _randomize(
        nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 2 * 2, 10),
        )
    )


class InvertedResidual(nn.Module):
    """MobileNetV2-like: stem, expand -> depthwise -> project with a residual add, head, classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.expand = nn.Sequential(nn.Conv2d(16, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU6())
        self.depthwise = nn.Sequential(
            nn.Conv2d(64, 64, 3, padding=1, groups=64, bias=False), nn.BatchNorm2d(64), nn.ReLU6()
        )
        self.project = nn.Sequential(nn.Conv2d(64, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.head = nn.Sequential(nn.Conv2d(16, 40, 1, bias=False), nn.BatchNorm2d(40), nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(40, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.project(self.depthwise(self.expand(x)))
        return self.classifier(torch.flatten(self.pool(self.head(x)), 1))


def test_plain_cnn_outputs_unchanged_and_best_channels_first():
    model = plain_cnn()
    x = torch.randn(4, 3, 8, 8)
    before = model(x)
    report = reorder(model)
    assert set(report.reordered) == {"0", "3"}
    torch.testing.assert_close(model(x), before, atol=1e-5, rtol=1e-5)
    for layer in (model[0], model[3]):
        scores = filter_priority(layer)
        assert torch.all(scores[:-1] >= scores[1:]), "channels are not in descending priority"
    assert report.reordered["0"] != list(range(16)), "a random init is not already sorted"


def test_inverted_residual_outputs_unchanged_and_coupled_layers_left_alone():
    torch.manual_seed(1)
    model = _randomize(InvertedResidual())
    x = torch.randn(2, 3, 8, 8)
    before = model(x)
    report = reorder(model)
    torch.testing.assert_close(model(x), before, atol=1e-5, rtol=1e-5)
    assert set(report.reordered) == {"expand.0", "head.0"}
    # the stem's and the projection's outputs meet in the residual add: one coupled group, kept as is
    assert "add" in report.skipped["stem.0"] and "add" in report.skipped["project.0"]
    # the expansion and the depthwise conv after it form one group, ranked by their summed scores
    group = filter_priority(model.expand[0]) + filter_priority(model.depthwise[0])
    assert torch.all(group[:-1] >= group[1:])


def test_learned_coefficients_change_the_ranking():
    model = plain_cnn()
    plain = reorder(plain_cnn()).reordered["0"]
    flipped = reorder(model, coefficients={"0": (-1.0, 0.0)}).reordered["0"]
    assert flipped == plain[::-1]


def test_untraceable_model_is_a_planner_error():
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return self.conv(x) if x.sum() > 0 else x

    with pytest.raises(PlannerError, match="cannot trace"):
        reorder(Branchy())
