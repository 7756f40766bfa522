"""Model sources: torchvision/timm names, a user's file or module, and the torchvision import workaround."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from torch import nn

from planner.errors import PlannerError
from planner.models.sources import build_source, is_source, load_original, load_source

ROOT = Path(__file__).resolve().parents[1]
needs_torchvision = pytest.mark.skipif(
    importlib.util.find_spec("torchvision") is None, reason="torchvision is not installed"
)
needs_timm = pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm is not installed")

USER_NET = """
from torch import nn

def build(num_classes=10, in_channels=3):
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, num_classes))

def broken():
    raise ValueError("no weights here\\nsecond line")

def not_a_module():
    return 42
"""


def _run(code: str, path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(path), str(ROOT)])}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=120
    )


def _fake_torchvision(root: Path, message: str) -> None:
    """A torchvision that fails like the CUDA wheel does unless the nms schema exists."""
    package = root / "torchvision"
    package.mkdir()
    (package / "__init__.py").write_text(
        textwrap.dedent(f"""
        import torch
        try:
            torch.ops.torchvision.nms.default
        except (AttributeError, RuntimeError):
            raise RuntimeError({message!r})
        __version__ = "fake"
        """)
    )


def test_the_workaround_defines_the_missing_ops_and_imports(tmp_path: Path) -> None:
    _fake_torchvision(tmp_path, "operator torchvision::nms does not exist")
    result = _run(
        """
        from planner.models.sources import import_torchvision
        print(import_torchvision().__version__)
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "fake"


def test_another_import_error_is_not_hidden(tmp_path: Path) -> None:
    _fake_torchvision(tmp_path, "libcudart.so.13: cannot open shared object file")
    result = _run(
        """
        import torch
        from planner.models.sources import import_torchvision
        try:
            import_torchvision()
        except RuntimeError as error:
            print("raised:", error)
        print("schema defined:", hasattr(torch.ops.torchvision, "nms"))
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "raised: libcudart.so.13: cannot open shared object file",
        "schema defined: False",
    ]


@needs_torchvision
def test_torchvision_model_at_small_input() -> None:
    import torch

    model = load_source("torchvision:resnet18", num_classes=7, input_size=32)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


@needs_torchvision
def test_unknown_torchvision_model_names_near_matches() -> None:
    with pytest.raises(PlannerError, match="unknown torchvision model 'resnet5'; did you mean resnet50"):
        load_source("torchvision:resnet5")
    with pytest.raises(PlannerError, match="3 input channels"):
        load_source("torchvision:resnet18", in_channels=1)


@needs_timm
def test_timm_model_and_unknown_name() -> None:
    import torch

    model = load_source("timm:mobilenetv3_small_050", num_classes=5, input_size=32, in_channels=1)
    assert model(torch.randn(1, 1, 32, 32)).shape == (1, 5)
    with pytest.raises(PlannerError, match="did you mean mobilenetv3_large_100"):
        load_source("timm:mobilenetv3_large_10")


def test_user_file_and_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    (tmp_path / "mynet.py").write_text(USER_NET)
    model = load_source(f"{tmp_path}/mynet.py:build", num_classes=4, input_size=16, in_channels=1)
    assert model(torch.randn(1, 1, 16, 16)).shape == (1, 4)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert isinstance(load_source("mynet:build"), nn.Module)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("missing.py:build", "model file .*missing.py does not exist"),
        ("mynet.py:buld", "has no function 'buld'; did you mean build"),
        ("mynet.py:broken", r"mynet.py:broken raised ValueError: no weights here$"),
        ("mynet.py:not_a_module", "returned a int, not a torch nn.Module"),
        ("no_such_module_xyz:build", "cannot import module no_such_module_xyz"),
        (":build", "must be LIBRARY:NAME"),
    ],
)
def test_bad_sources_are_one_line_errors(tmp_path: Path, entry: str, message: str) -> None:
    (tmp_path / "mynet.py").write_text(USER_NET)
    source = f"{tmp_path}/{entry}" if ".py" in entry else entry
    with pytest.raises(PlannerError, match=message) as raised:
        load_source(source)
    assert "\n" not in str(raised.value)


def test_zoo_names_are_not_sources() -> None:
    assert not is_source("s_resnet18")
    assert is_source("torchvision:resnet18") and is_source("net.py:build")


def test_original_weights_of_another_architecture_name_the_first_mismatch() -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 1))
    other = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 6, 1)).state_dict()
    with pytest.raises(PlannerError, match=r"1.weight is \[6, 8, 1, 1\] in the checkpoint, \[4, 8, 1, 1\]"):
        load_original(net, other, "net.py:build")
    with pytest.raises(PlannerError, match="missing key 1.bias"):
        load_original(net, {k: v for k, v in net.state_dict().items() if k != "1.bias"}, "net.py:build")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["info", "torchvision:resnet5"], "unknown torchvision model 'resnet5'; did you mean resnet50"),
        (["profile", "-t", "cpu", "-m", "timm:mobilenetv3_large_10"], "did you mean mobilenetv3_large_100"),
        (["export", "{dir}/mynet.py:buld", "--width", "0.5", "-o", "{dir}/a.onnx"], "has no function 'buld'"),
        (["info", "{dir}/mynet.py:broken"], "raised ValueError: no weights here"),
        (["info", "{dir}/missing.py:build"], "missing.py does not exist"),
        (["info", "{dir}/mynet.py:build", "--widths", "0.5,1.5"], "widths must be in (0, 1], got [0.5, 1.5]"),
        (["train", "s_cnn_small", "--data", "digits", "--checkpoint", "{dir}/x.pt", "-o", "{dir}/o.pt"],
         "--checkpoint and --universal are for"),
        (["train", "torchvision:resnet18", "--data", "digits", "-o", "{dir}/o.pt"], "3 input channels"),
        (["profile", "-t", "cpu", "-m", "s_cnn_small", "--channel-multiple", "4", "--estimate"],
         "--channel-multiple is for converted networks"),
        (["profile", "-t", "cpu", "-m", "{dir}/mynet.py:build", "--channel-multiple", "0", "--estimate"],
         "--channel-multiple must be a positive integer, got 0"),
        (["train", "s_cnn_small", "--data", "digits", "--channel-multiple", "4", "-o", "{dir}/o.pt"],
         "--channel-multiple is for converted networks"),
    ],
)  # fmt: skip
def test_cli_bad_sources_are_one_line_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], args, message
) -> None:
    from cli_helpers import run_cli

    (tmp_path / "mynet.py").write_text(USER_NET)
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli([a.format(dir=tmp_path) for a in args], capsys)
    assert code == 2, err
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.pt").exists() and not (tmp_path / "a.onnx").exists()


needs_converter = pytest.mark.skipif(
    importlib.util.find_spec("planner.models.convert") is None, reason="needs planner.models.convert"
)


@needs_converter
def test_original_weights_convert_and_planner_checkpoints_rebuild(tmp_path: Path) -> None:
    import torch

    from planner.nn.build import build_model
    from planner.nn.checkpoint import save_checkpoint

    (tmp_path / "mynet.py").write_text(USER_NET)
    source = f"{tmp_path}/mynet.py:build"
    torch.manual_seed(0)
    original = load_source(source, num_classes=4, input_size=8)
    torch.save(original.state_dict(), tmp_path / "original.pth")
    net = build_model(source, tmp_path / "original.pth", num_classes=4, input_size=8, widths=[0.5, 1.0])
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        assert (net(x) - original(x)).abs().max() < 1e-5
    save_checkpoint(net, tmp_path / "slim.pt")
    info = torch.load(tmp_path / "slim.pt", weights_only=True)["planner"]
    assert info["source"] == source and info["widths"] == [0.5, 1.0] and info["universal"] is False
    assert set(info["permutation"]) <= set(net.groups)
    rebuilt = build_model(checkpoint=tmp_path / "slim.pt")  # the file alone rebuilds it
    for width in (0.5, 1.0):
        net.set_width(width)
        rebuilt.set_width(width)
        with torch.no_grad():
            assert torch.equal(net(x), rebuilt(x))


WIDE_NET = """
from torch import nn

def build(num_classes=10, in_channels=3):
    return nn.Sequential(nn.Conv2d(in_channels, 24, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(24, num_classes))
"""


@needs_converter
def test_a_checkpoint_rebuilds_with_the_channel_rounding_it_was_trained_with(tmp_path: Path) -> None:
    """Channel counts round to 8 since planner chose that; a checkpoint saved before (no record) was
    built with exact counts and must load as such, not fail on its BN statistics' shapes."""
    import torch

    from planner.nn.build import build_model
    from planner.nn.checkpoint import save_checkpoint

    (tmp_path / "widenet.py").write_text(WIDE_NET)
    source = f"{tmp_path}/widenet.py:build"
    rounded = build_model(source, num_classes=4, input_size=8)
    assert rounded.config(0.75).channels == {"0": 16}  # 24 channels at 0.75x: 18, rounded to 8s
    save_checkpoint(rounded, tmp_path / "now.pt")
    assert torch.load(tmp_path / "now.pt", weights_only=True)["planner"]["channel_multiple"] == 8
    assert build_model(checkpoint=tmp_path / "now.pt").config(0.75).channels == {"0": 16}

    older = build_source(source, num_classes=4, input_size=8, channel_multiple=1)
    save_checkpoint(older, tmp_path / "older.pt")
    saved = torch.load(tmp_path / "older.pt", weights_only=True)
    del saved["planner"]["channel_multiple"]  # as written before the rounding was recorded
    torch.save(saved, tmp_path / "older.pt")
    assert build_model(checkpoint=tmp_path / "older.pt").config(0.75).channels == {"0": 18}

    saved["planner"]["channel_multiple"] = "eight"
    torch.save(saved, tmp_path / "bad.pt")
    with pytest.raises(PlannerError, match=r"checkpoint .*bad.pt records channel_multiple 'eight'"):
        build_model(checkpoint=tmp_path / "bad.pt")


@needs_converter
def test_the_channel_rounding_is_chosen_at_training_and_kept_by_the_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--channel-multiple 1` scales a converted network's channels exactly; the checkpoint keeps that,
    so later commands rebuild it without the option, and one that asks for another rounding is refused."""
    from cli_helpers import run_cli

    from planner.nn.build import build_model

    (tmp_path / "widenet.py").write_text(WIDE_NET)
    source, checkpoint = f"{tmp_path}/widenet.py:build", tmp_path / "exact.pt"
    train = ["train", source, "--data", "digits", "--epochs", "1", "--widths", "0.75,1.0"]
    train += ["-o", str(checkpoint)]
    code, _, err = run_cli([*train, "--channel-multiple", "1"], capsys)
    assert code == 0, err
    assert build_model(checkpoint=checkpoint).config(0.75).channels == {"0": 18}  # 24 x 0.75, not 16

    estimate = ["profile", "-t", "raspberry-pi-5", "--estimate", "--checkpoint", str(checkpoint)]
    estimate += ["--out", str(tmp_path)]
    code, out, err = run_cli(estimate, capsys)
    assert code == 0 and "0.75x" in out, err
    code, _, err = run_cli([*estimate, "--channel-multiple", "8"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "was trained with --channel-multiple 1" in err and "exact.pt" in err


@needs_converter
def test_original_weights_of_another_network_are_one_line(tmp_path: Path) -> None:
    import torch

    from planner.nn.build import build_model

    (tmp_path / "mynet.py").write_text(USER_NET)
    other = nn.Sequential(nn.Conv2d(3, 6, 3)).state_dict()
    torch.save(other, tmp_path / "other.pth")
    with pytest.raises(PlannerError, match=r"0.weight is \[6, 3, 3, 3\] in the checkpoint, \[8, 3, 3, 3\]"):
        build_model(f"{tmp_path}/mynet.py:build", tmp_path / "other.pth", num_classes=4, input_size=8)


@needs_converter
def test_fine_tuning_with_the_original_as_teacher(tmp_path: Path) -> None:
    """The teacher's outputs are every width's target: a student equal to its teacher starts at its loss."""
    import torch

    from planner.accuracy.data import Dataset
    from planner.accuracy.train import start_from_source, train

    (tmp_path / "mynet.py").write_text(USER_NET)
    source = f"{tmp_path}/mynet.py:build"
    torch.manual_seed(0)
    x, y = torch.rand(64, 3, 8, 8), torch.arange(64) % 4
    dataset = Dataset("tiny", ("a", "b", "c", "d"), {"train": (x, y), "val": (x, y), "calibration": (x, y)})
    torch.save(load_source(source, num_classes=4, input_size=8).state_dict(), tmp_path / "original.pth")
    model, teacher = start_from_source(source, dataset, str(tmp_path / "original.pth"), [0.5, 1.0])
    assert teacher is not None and not any(p is q for p in model.parameters() for q in teacher.parameters())
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    result = train(model, dataset, epochs=2, batch_size=32, lr=0.05, teacher=teacher)
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())  # the teacher is frozen
    first, last = result.epoch_losses[0], result.epoch_losses[-1]
    assert set(first) == {0.5, 1.0} and last[0.5] < first[0.5]
    model.set_width(0.5)
    with torch.no_grad():
        gap = torch.nn.functional.kl_div(
            model(x).log_softmax(1), teacher(x).softmax(1), reduction="batchmean"
        )
    assert gap < 0.05


FLAT_NET = """
from torch import nn

def build(num_classes=10, input_size=8):
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * input_size * input_size, num_classes))
"""


@needs_converter
def test_a_target_input_size_rebuilds_a_converted_network(tmp_path: Path, capsys) -> None:
    """A target's input_shape resizes a converted network as it does a zoo one: same weights, same groups."""
    import torch
    from cli_helpers import run

    from planner.measure.artifacts import model_for_target
    from planner.measure.targets import Target
    from planner.models.convert import slimmable
    from planner.nn.build import build_model
    from profilers.results import load_latency

    (tmp_path / "mynet.py").write_text(USER_NET)
    source = f"{tmp_path}/mynet.py:build"
    net = build_model(source, num_classes=4, input_size=8, widths=[0.5, 1.0])
    net.calibrations = {"marker": {}}
    resized = model_for_target(net, Target("cpu16", "onnxruntime", input_shape=(1, 3, 16, 16)))
    assert resized.input_shape == (1, 3, 16, 16) and resized.source["input_size"] == 16
    assert resized.calibrations is net.calibrations and resized.permutation == net.permutation
    x = torch.randn(2, 3, 16, 16)
    for width in (0.5, 1.0):
        net.set_width(width)
        resized.set_width(width)
        with torch.no_grad():
            assert torch.equal(net(x), resized(x))  # conv + global pooling: any size, the same function

    targets = tmp_path / "targets"
    targets.mkdir()
    (targets / "cpu16.toml").write_text(
        'backend = "onnxruntime"\nthreads = 1\ninput_shape = [1, 3, 16, 16]\n'
    )
    out = tmp_path / "out"
    code, _, err = run(
        capsys, "profile", "-t", "cpu16", "--targets-dir", targets, "-m", source, "--num-classes", 4,
        "--input-size", 8, "--widths", "0.5", "--out", out, "--max-seconds", 0.2, "--min-queries", 8,
    )  # fmt: skip
    assert code == 0, err
    assert list(load_latency(out)["input_shape"]) == ["1x3x16x16"]

    (tmp_path / "flatnet.py").write_text(FLAT_NET)
    flat = build_model(f"{tmp_path}/flatnet.py:build", num_classes=4, input_size=8, widths=[0.5, 1.0])
    with pytest.raises(PlannerError, match=r"target cpu16 \(16x16\): .* cannot be resized from 8 to 16: "):
        model_for_target(flat, Target("cpu16", "onnxruntime", input_shape=(1, 3, 16, 16)))
    python_only = slimmable(load_source(source, num_classes=4), torch.randn(2, 3, 8, 8), widths=[0.5, 1.0])
    with pytest.raises(PlannerError, match="converted in Python .* records no source to rebuild it at 16x16"):
        model_for_target(python_only, Target("cpu16", "onnxruntime", input_shape=(1, 3, 16, 16)))
