from pathlib import Path

import pytest
import torch


def randomize_batch_norms(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every BN non-trivial statistics and affine parameters, so slicing errors show in outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                if module.affine:
                    module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                    module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
            if hasattr(module, "bias") and isinstance(getattr(module, "weight", None), torch.nn.Parameter):
                if module.__class__.__name__ == "USBatchNorm2d":
                    module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
                    module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
    return model


# Run in a pytest process of their own (README, .ci/run): after these tests open ONNX Runtime and
# OpenVINO sessions in-process, the next process start of a long run crashed the test process
# (SIGSEGV; cause not found).
OWN_PROCESS_MODULES = {"test_ladder.py", "test_loadtest.py", "test_demo.py"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in OWN_PROCESS_MODULES:
            item.add_marker(pytest.mark.own_process)


@pytest.fixture(scope="session", autouse=True)
def own_profiler_cache(tmp_path_factory: pytest.TempPathFactory):
    """Artifacts and run history of this test session only (child processes inherit it): a developer's
    own profiling runs must not widen the tests' intervals, nor the tests' runs theirs."""
    patch = pytest.MonkeyPatch()
    patch.setenv("PROFILERS_CACHE_DIR", str(tmp_path_factory.mktemp("profilers-cache")))
    yield
    patch.undo()


@pytest.fixture(scope="module")
def single_thread():
    """One torch thread: tiny convs run as fast on one, and far faster when other jobs load the machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def randomize():
    return randomize_batch_norms


@pytest.fixture(scope="session")
def exports(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every width of s_cnn_small exported once per test session (shared by the profiling test files)."""
    from planner.measure.artifacts import export_artifacts
    from planner.measure.targets import load_target
    from planner.nn.build import build_model, configurations

    out = tmp_path_factory.getbasetemp() / "s_cnn_small-8x8-exports"
    if not out.is_dir():
        partial = tmp_path_factory.mktemp("exporting")
        model = build_model("s_cnn_small", in_channels=1, num_classes=10, input_size=8)
        export_artifacts(model, configurations(model), partial, load_target("cpu"))
        partial.rename(out)
    return out
