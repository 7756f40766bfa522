"""ONNX export: one file, static shapes, only the sliced weights, same outputs as torch."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import planner
from planner.nn.counting import count
from planner.nn.export import export_onnx
from planner.nn.materialize import materialize


@pytest.mark.parametrize(
    ("name", "width"), [("s_cnn_small", 0.25), ("s_mobilenet_v2", 0.35), ("us_cnn_small", 0.4)]
)
def test_onnx_matches_torch_and_holds_only_the_sliced_weights(tmp_path, name, width, randomize):
    model = randomize(planner.create_model(name)).eval()
    config = model.config(width)
    path = export_onnx(model, config, tmp_path / "model.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # weights inside, no .data file
    onnx.checker.check_model(str(path))
    graph = onnx.load(str(path)).graph
    dims = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, model.in_channels, model.input_size, model.input_size]
    stored = sum(int(np.prod(t.dims)) for t in graph.initializer)
    dense_params = sum(p.numel() for p in materialize(model, config).parameters())
    assert stored <= dense_params + sum(b.numel() for b in materialize(model, config).buffers())
    assert stored < sum(p.numel() for p in model.parameters()) * 0.8
    assert stored >= count(model, config).params
    x = torch.randn(*dims)
    model.set_config(config)
    with torch.no_grad():
        expected = model(x).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})[0]
    assert np.abs(got - expected).max() <= 1e-4
