"""Bring your own network: an ordinary torch CNN converted by `planner.slimmable` behaves like a zoo model."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import planner
from planner.errors import PlannerError
from planner.models.convert import ConvertedConv2d, ConvertedLinear, analyse, slimmable
from planner.nn.counting import count
from planner.nn.materialize import materialize


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial norm statistics and affine parameters, so slicing or permutation errors show."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d | nn.GroupNorm | nn.LayerNorm):
                n = module.weight.shape[0]
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
                if getattr(module, "running_mean", None) is not None:
                    module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                    module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
    return model.eval()


class Residual(nn.Module):
    """Stem, two residual blocks (one with a projection), global pooling by mean, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.a1, self.n1 = nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.a2, self.n2 = nn.Conv2d(16, 24, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(24)
        self.proj = nn.Sequential(nn.Conv2d(16, 24, 1, stride=2, bias=False), nn.BatchNorm2d(24))
        self.fc = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = F.relu(self.n1(self.a1(x)) + x)
        x = F.relu(self.n2(self.a2(x)) + self.proj(x))
        return self.fc(x.mean((2, 3)))


class Mobile(nn.Module):
    """Inverted residual with a depthwise conv and squeeze-and-excitation; returns a tuple."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.Hardswish())
        self.expand = nn.Sequential(nn.Conv2d(16, 48, 1, bias=False), nn.BatchNorm2d(48), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(48, 48, 3, 1, 1, groups=48, bias=False), nn.BatchNorm2d(48))
        self.se = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(48, 12, 1), nn.ReLU(), nn.Conv2d(12, 48, 1), nn.Hardsigmoid()
        )
        self.project = nn.Sequential(nn.Conv2d(48, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.head = nn.Linear(16, 7)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.stem(x)
        y = self.dw(self.expand(x))
        y = y * self.se(y)
        x = x + self.project(y)
        pooled = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        logits = self.head(pooled)
        return logits, logits.log_softmax(dim=1)


class Concat(nn.Module):
    """Two branches concatenated, a BN over the concatenation, a grouped conv, GroupNorm, a flatten into
    a linear layer over a 2x2 map; returns a dict."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.left = nn.Conv2d(16, 8, 1)
        self.right = nn.Conv2d(16, 12, 3, padding=1)
        self.norm = nn.BatchNorm2d(20)
        self.grouped = nn.Conv2d(20, 32, 3, padding=1)
        self.g2 = nn.Conv2d(32, 32, 3, padding=1, groups=4)
        self.gn = nn.GroupNorm(4, 32)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(32 * 4, 5)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = F.relu(self.stem(x))
        x = F.relu(self.norm(torch.cat([self.left(x), self.right(x)], dim=1)))
        x = F.relu(self.gn(self.g2(F.relu(self.grouped(x)))))
        features = self.pool(x)
        logits = self.fc(features.view(features.size(0), -1))
        return {"logits": logits, "probabilities": logits.softmax(dim=1)}


NETS = [Residual, Mobile, Concat]


def _outputs(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    return list(value.values()) if isinstance(value, dict) else list(value)


def _max_diff(a, b) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(_outputs(a), _outputs(b), strict=True))


@pytest.mark.parametrize("build", NETS, ids=[n.__name__ for n in NETS])
@pytest.mark.parametrize("reorder", [False, True])
def test_full_width_reproduces_the_original(build, reorder):
    torch.manual_seed(0)
    model = _randomize(build())
    x = torch.randn(2, 3, 16, 16)
    net = slimmable(model, x, reorder=reorder).eval()
    with torch.no_grad():
        assert _max_diff(model(x), net(x)) <= 1e-5
    assert bool(net.permutation) == reorder
    assert model.stem is not None and not any(isinstance(m, ConvertedConv2d) for m in model.modules())


@pytest.mark.parametrize("build", NETS, ids=[n.__name__ for n in NETS])
def test_every_width_materialises_to_the_same_function_with_only_sliced_weights(build):
    torch.manual_seed(0)
    model = _randomize(build())
    x = torch.randn(2, 3, 16, 16)
    net = slimmable(model, x, widths=[0.25, 0.5, 1.0]).eval()
    previous = None
    for width in net.widths:
        config = net.config(width)
        dense = materialize(net, config)
        net.set_config(config)
        with torch.no_grad():
            assert _max_diff(net(x), dense(x)) <= 1e-5
        assert not any(hasattr(m, "activate") for m in dense.modules())
        weights = sum(
            m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)
            for m in dense.modules()
            if isinstance(m, nn.Conv2d | nn.Linear)
        )
        cost = count(net, config)
        assert weights == cost.params
        # MACs from the traced shapes agree with torch's own FLOP counter (2 FLOPs per MAC)
        with FlopCounterMode(display=False) as flops, torch.no_grad():
            dense(torch.zeros(net.input_shape))
        pools = sum(1 for m in dense.modules() if isinstance(m, nn.AvgPool2d | nn.AdaptiveAvgPool2d))
        if not pools:
            assert cost.macs == flops.get_total_flops() // 2
        assert previous is None or cost.macs > previous
        previous = cost.macs


def test_reorder_puts_the_strongest_filters_first_and_records_the_permutation():
    torch.manual_seed(0)
    model = _randomize(Residual())
    net = slimmable(model, torch.randn(1, 3, 16, 16))
    stem = net.stem[0].weight.detach()
    scores = (stem.reshape(16, -1) ** 2).sum(1) + (net.a1.weight.detach().reshape(16, -1) ** 2).sum(1)
    assert torch.all(scores[:-1] >= scores[1:])  # the residual group's summed score, descending
    order = net.permutation["stem.0"]
    assert sorted(order) == list(range(16))
    assert torch.equal(net.stem[0].weight, model.stem[0].weight[order])
    # the recorded permutation rebuilds the same network from the original weights
    from planner.nn.reorder import permute_groups

    again = slimmable(model, torch.randn(1, 3, 16, 16), reorder=False)
    permute_groups(again, net.permutation)
    expected, got = net.state_dict(), again.state_dict()
    assert list(expected) == list(got) and all(torch.equal(expected[k], got[k]) for k in expected)
    with pytest.raises(PlannerError, match="does not fit"):
        permute_groups(again, {"stem.0": [0, 1]})


def test_groups_couple_residual_adds_depthwise_convs_and_squeeze_excitation():
    net = slimmable(Mobile(), torch.randn(1, 3, 16, 16), reorder=False)
    assert net.expand[0].out_group is net.dw[0].out_group is net.se[3].out_group
    assert net.stem[0].out_group is net.project[0].out_group  # residual add
    assert net.head.in_group is net.stem[0].out_group  # classifier input
    assert not net.head.out_group.slimmable  # the network output is fixed
    config = net.config(0.5)
    net.set_config(config)
    assert net.dw[0].active_weight()[2] == config.channels["expand.0"]  # depthwise: groups follow


def test_grouped_convs_keep_their_group_count_and_counts_are_multiples(tmp_path):
    model = _randomize(Concat())
    net = slimmable(model, torch.randn(1, 3, 16, 16), reorder=False).eval()
    group = net.g2.out_group
    assert group.divisor == 4 and net.grouped.out_group.divisor == 4
    assert all(net.config(w).channels["g2"] % 4 == 0 for w in net.widths)
    with pytest.raises(PlannerError, match="multiple of 4"):
        net.config_from_channels({**net.config(1.0).channels, "g2": 30})
    # per-block prefixes: a narrower width is a sub-network of the original grouped conv
    net.set_config(net.config_from_channels({**net.config(1.0).channels, "grouped": 16}))
    weight, _, groups = net.g2.active_weight()
    assert groups == 4 and weight.shape == (32, 4, 3, 3)
    assert torch.equal(weight[:, :4], model.g2.weight[:, :4])
    from planner.models.space import allowed_counts
    from planner.search.layers import layer_ops, write_layer_onnx

    assert all(c % 4 == 0 for c in allowed_counts(net, group, 1))
    # the latency table measures the grouped conv as grouped, at counts its groups allow
    op = next(op for op in layer_ops(net) if op.path == "g2")
    assert op.groups == 4 and all(c % 4 == 0 for c in (*op.in_axis, *op.out_axis))
    import onnx

    written = onnx.load(str(write_layer_onnx(op, op.in_axis[0], op.out_axis[0], tmp_path / "g2.onnx")))
    conv = next(n for n in written.graph.node if n.op_type == "Conv")
    assert next(a.i for a in conv.attribute if a.name == "group") == 4


def test_a_concatenation_is_read_as_one_prefix_per_segment():
    net = slimmable(Concat(), torch.randn(1, 3, 16, 16), reorder=False)
    side = net.norm.side
    assert [g.name for g in side.segments] == ["left", "right"]
    config = net.config_from_channels({**net.config(1.0).channels, "left": 3, "right": 5})
    net.set_config(config)
    assert net.norm.active_channels == 8
    assert net.norm._index.tolist() == [0, 1, 2, 8, 9, 10, 11, 12]
    assert net.grouped.active_in == 8
    # flatten into a linear layer: each kept channel keeps its whole 2x2 block of features
    assert isinstance(net.fc, ConvertedLinear) and net.fc.in_side.spatial == 4


def test_fixed_groups_are_reported_with_their_reason():
    class Shuffle(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 8, 1)
            self.b = nn.Conv2d(8, 8, 1)
            self.c = nn.Conv2d(8, 4, 1)

        def forward(self, x):
            x = self.a(x)
            n, c, h, w = x.shape
            x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)  # channel shuffle
            return self.c(F.relu(self.b(x)))

    report = analyse(Shuffle(), torch.randn(1, 3, 8, 8))
    assert "splits or moves the channels" in report.fixed["a"]
    assert report.fixed["input"] == "network input" and report.fixed["c"] == "network output"
    assert [g.name for g in report.groups if g.slimmable] == ["b"]


def test_keep_pins_a_module_and_rescues_an_untraceable_forward():
    class Dynamic(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1))
            self.gate = Gate()
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            return self.fc(self.gate(self.body(x)).mean((2, 3)))

    class Gate(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x  # data-dependent control flow

    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(PlannerError, match="module 'gate'.*keep="):
        slimmable(Dynamic(), x)
    net = slimmable(Dynamic(), x, keep=["gate"])
    assert net.body[0].out_group.slimmable and not net.body[2].out_group.slimmable
    assert "kept module gate" in net.conversion_report.fixed["body.2"]
    with pytest.raises(PlannerError, match="nothing to slim"):
        slimmable(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), torch.randn(1, 3, 2, 2))
    with pytest.raises(PlannerError, match="keep names 'head'"):
        slimmable(Dynamic(), x, keep=["head"])


@pytest.mark.parametrize("widths", [[0.0, 1.0], [0.5, 1.5], []])
def test_widths_out_of_range_are_refused(widths):
    with pytest.raises(PlannerError, match=r"widths must be in \(0, 1\]"):
        slimmable(Residual(), torch.randn(1, 3, 8, 8), widths=widths)


def _plain_net(channels: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for c_in, c_out in zip((3, *channels), channels, strict=False):
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels[-1], 10))


def test_a_width_rounds_each_group_to_multiples_of_8_unless_told_not_to():
    """Fast CPU kernels block channels by 8 (0.75x of MobileNetV3-Small ran as slowly as 1x with 54, 66
    ... channels); a group of a single 8 would never slim, so it scales exactly."""
    model, x = _plain_net((72, 88, 8)), torch.randn(1, 3, 8, 8)
    net = slimmable(model, x, reorder=False)
    assert net.channel_multiple == 8
    by_size = {net.groups[name].max_channels: count for name, count in net.config(0.75).channels.items()}
    assert by_size == {72: 56, 88: 64, 8: 6}
    by_size = {net.groups[name].max_channels: count for name, count in net.config(0.25).channels.items()}
    assert by_size == {72: 16, 88: 24, 8: 2}
    exact = slimmable(model, x, reorder=False, channel_multiple=1)
    by_size = {exact.groups[name].max_channels: count for name, count in exact.config(0.75).channels.items()}
    assert by_size == {72: 54, 88: 66, 8: 6}
    # a grouped conv's 4 groups and the multiple: its 32 channels go 8 at a time
    grouped = slimmable(Concat(), torch.randn(1, 3, 16, 16))
    assert [grouped.config(w).channels["g2"] for w in grouped.widths] == [8, 16, 24, 32]
    for bad in (0, -8, 2.5, True):
        with pytest.raises(PlannerError, match="channel_multiple must be a positive integer"):
            slimmable(model, x, channel_multiple=bad)


def test_planner_exposes_slimmable_lazily():
    assert planner.slimmable is slimmable


def test_export_at_a_configuration_matches_in_onnxruntime(tmp_path):
    import onnx
    import onnxruntime as ort

    from planner.nn.export import export_onnx

    torch.manual_seed(0)
    net = slimmable(_randomize(Concat()), torch.randn(1, 3, 16, 16), widths=[0.5, 1.0]).eval()
    config = net.config(0.5)
    path = export_onnx(net, config, tmp_path / "half.onnx")
    session = ort.InferenceSession(str(path))
    x = torch.randn(1, 3, 16, 16)
    outputs = session.run(None, {"input": x.numpy()})
    assert [o.name for o in session.get_outputs()] == ["logits", "probabilities"]
    net.set_config(config)
    with torch.no_grad():
        expected = net(x)
    for got, want in zip(outputs, expected.values(), strict=True):
        assert np.abs(got - want.numpy()).max() <= 1e-4
    stored = sum(int(np.prod(t.dims)) for t in onnx.load(str(path)).graph.initializer)
    dense = materialize(net, config)
    sliced = sum(p.numel() for p in dense.parameters()) + sum(b.numel() for b in dense.buffers())
    assert stored <= sliced + 64  # the sliced weights, plus the exporter's shape constants
    assert stored < 0.5 * sum(p.numel() for p in net.parameters())


def test_universal_network_calibrates_an_untracked_width():
    from planner.nn.calibrate import calibrate

    net = slimmable(_randomize(Mobile()), torch.randn(1, 3, 16, 16), widths=[0.5, 0.75, 1.0], universal=True)
    config = net.config(0.6)
    assert net.needs_calibration(config)
    batches = [torch.randn(8, 3, 16, 16) * 2 + 1 for _ in range(2)]
    calibration = calibrate(net, config, batches, num_batches=2)
    with torch.no_grad():
        stem = net.stem[0](torch.cat(batches))
    first = calibration.mean["stem.1"]
    assert first.shape == (config.channels["stem.0"],)
    assert torch.allclose(first, stem.mean((0, 2, 3)), atol=1e-4)
    dense = materialize(net, config)
    assert torch.allclose(dense.stem[1].running_mean, first)


@pytest.mark.parametrize("universal", [False, True], ids=["switchable", "universal-per-layer"])
def test_training_planning_and_search_accept_a_converted_network(universal):
    from planner.accuracy.data import Dataset
    from planner.accuracy.train import train
    from planner.models.space import random_configs
    from planner.search.layers import layer_ops
    from planner.search.legr import WidthPlanner, macs_cost

    widths = [0.35, 0.5, 0.75, 1.0] if universal else [0.5, 1.0]
    net = slimmable(Residual(), torch.randn(1, 3, 8, 8), widths=widths, universal=universal)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(32, 3, 8, 8, generator=generator)
    labels = torch.randint(0, 10, (32,), generator=generator)
    empty = (images[:0], labels[:0])
    dataset = Dataset(
        "toy", tuple(str(i) for i in range(10)), {"train": (images, labels), "val": empty, "test": empty}
    )
    before = net.a1.weight.detach().clone()
    train(net, dataset, epochs=1, batch_size=16, lr=0.05, per_layer=universal)
    assert not torch.equal(before, net.a1.weight)
    configs = random_configs(net, 3, np.random.default_rng(0))
    assert all(net.validate(c) is c for c in configs)
    assert {op.path for op in layer_ops(net)} >= {"stem.0", "a1", "a2", "proj.0", "fc"}
    plan = WidthPlanner(net, macs_cost(net))
    full = count(net, net.config(1.0)).macs
    config = plan.config_for(plan.standardized(), 0.6 * full)
    assert count(net, config).macs <= 0.6 * full


_TORCHVISION_OPS = []


def _torchvision():
    """torchvision, importable here although its C++ ops are built for CUDA torch (the shim of
    planner.models.sources when present: classification needs none of the detection ops)."""
    try:
        from planner.models.sources import import_torchvision

        return import_torchvision()
    except ImportError:
        pass
    try:
        library = torch.library.Library("torchvision", "DEF")
        library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        library.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
        _TORCHVISION_OPS.append(library)
    except RuntimeError:
        pass  # already defined in this process
    try:
        import torchvision
    except Exception as error:
        pytest.skip(f"torchvision does not import here: {error}")
    return torchvision


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_torchvision_networks_convert_export_and_count(name, tmp_path):
    import onnxruntime as ort

    from planner.nn.export import export_onnx

    torchvision = _torchvision()
    torch.manual_seed(0)
    model = _randomize(torchvision.models.get_model(name, num_classes=10))
    x = torch.randn(2, 3, 32, 32)
    net = slimmable(model, x[:1]).eval()
    with torch.no_grad():
        assert _max_diff(model(x), net(x)) <= 1e-5
    assert len(net.conversion_report.fixed) == 2  # the input and the classes only
    config = net.config(0.5)
    dense = materialize(net, config)
    pooled = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: pooled.append(i[0][0].numel()))
        for m in dense.modules()
        if isinstance(m, nn.AdaptiveAvgPool2d)
    ]
    with FlopCounterMode(display=False) as flops, torch.no_grad():
        dense(torch.zeros(net.input_shape))
    for hook in hooks:
        hook.remove()
    assert count(net, config).macs == flops.get_total_flops() // 2 + sum(pooled)
    path = export_onnx(net, config, tmp_path / f"{name}.onnx")
    net.set_config(config)
    with torch.no_grad():
        expected = net(x[:1]).numpy()
    got = ort.InferenceSession(str(path)).run(None, {"input": x[:1].numpy()})[0]
    assert np.abs(got - expected).max() <= 1e-4


def test_a_learned_token_concatenated_along_the_sequence_pins_the_channels():
    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Conv2d(3, 8, 2, stride=2)
            self.token = nn.Parameter(torch.randn(1, 1, 8))
            self.norm = nn.LayerNorm(8)
            self.mlp = nn.Linear(8, 16)
            self.fc = nn.Linear(16, 3)

        def forward(self, x):
            x = self.embed(x).flatten(2).transpose(1, 2)  # (N, tokens, channels)
            x = torch.cat([self.token.expand(x.shape[0], -1, -1), x], dim=1)
            return self.fc(F.gelu(self.mlp(self.norm(x)))[:, 0])

    model = _randomize(Tokens())
    x = torch.randn(2, 3, 8, 8)
    net = slimmable(model, x[:1]).eval()
    assert "does not track" in net.conversion_report.fixed["embed"]
    assert list(net.groups) == ["mlp"]
    with torch.no_grad():
        assert _max_diff(model(x), net(x)) <= 1e-5
        net.set_width(0.5)
        dense = materialize(net, net.config(0.5))
        assert _max_diff(dense(x), net(x)) <= 1e-5
    # a linear layer over tokens costs in * out per token
    with FlopCounterMode(display=False) as flops, torch.no_grad():
        dense(torch.zeros(net.input_shape))
    assert count(net, net.config(0.5)).macs == flops.get_total_flops() // 2


def test_the_original_model_keeps_its_modes_and_weights():
    model = Residual().train()
    model.stem[1].eval()  # a frozen BN inside a training model
    state = {k: v.clone() for k, v in model.state_dict().items()}
    net = slimmable(model, torch.randn(2, 3, 8, 8))
    assert model.training and not model.stem[1].training and model.a1.training
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert net.training


class BatchNormAct(nn.BatchNorm2d):
    """timm's BatchNormAct2d pattern: a BatchNorm2d subclass whose own forward normalises with
    `F.batch_norm` on its weights, then runs `drop` and `act`."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels)
        self.drop, self.act = nn.Identity(), nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.training)
        return self.act(self.drop(x))


def test_a_batch_norm_with_an_activation_tail_slims_like_a_batch_norm():
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False),
        BatchNormAct(16),
        nn.Conv2d(16, 8, 1),
        nn.AdaptiveAvgPool2d(1),
    )
    model = _randomize(model)
    x = torch.randn(2, 3, 8, 8)
    net = slimmable(model, x, widths=[0.5, 1.0]).eval()
    assert "0" in net.groups and not net.conversion_report.fixed.get("0")
    with torch.no_grad():
        assert _max_diff(model(x), net(x)) <= 1e-5
        net.set_width(0.5)
        dense = materialize(net, net.config(0.5))
        assert _max_diff(dense(x), net(x)) <= 1e-5
    assert any(isinstance(m, nn.SiLU) for m in dense.modules())  # the tail survives densification
    assert next(m for m in dense.modules() if isinstance(m, nn.Conv2d)).out_channels == 8
