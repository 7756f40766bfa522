"""Issue 2 benchmark: does the sliced export run as fast as a network built natively at that width?

For each width of S-MobileNetV2 on onnxruntime CPU, measured interleaved in one profiler run:
  sliced  - planner's materialised export of the slimmable model at that width
  native  - a plain MobileNetV2 written with ordinary layers at that width (same channel counts)
  zeroed  - the full-width network with the dropped channels zeroed (what mask-based pruning exports)
and the latency ratio 1.0x/0.35x beside the MACs ratio.

    python benchmarks/export_latency.py --out results
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path

import pandas as pd
import torch
from torch import nn

import planner
from planner.models.ops import make_divisible
from planner.models.s_mobilenet_v2 import BLOCK_SETTING, TAIL_CHANNELS
from planner.nn.counting import count
from planner.nn.export import export_module, export_onnx
from profilers import Job, Settings, run_jobs


def _conv_bn(
    cin: int, cout: int, kernel: int, stride: int, groups: int = 1, relu: bool = True
) -> list[nn.Module]:
    layers = [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    return layers + ([nn.ReLU6(inplace=True)] if relu else [])


class NativeBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers = _conv_bn(cin, hidden, 1, 1) if expand != 1 else []
        layers += _conv_bn(hidden, hidden, 3, stride, groups=hidden) + _conv_bn(
            hidden, cout, 1, 1, relu=False
        )
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


def native_mobilenet_v2(width: float, num_classes: int = 1000) -> nn.Module:
    """MobileNetV2 at one width, written the ordinary way (channel rule as in torchvision)."""
    cin = make_divisible(32 * width)
    layers: list[nn.Module] = [nn.Sequential(*_conv_bn(3, cin, 3, 2))]
    for t, c, n, s in BLOCK_SETTING:
        cout = make_divisible(c * width)
        for i in range(n):
            layers.append(NativeBlock(cin, cout, s if i == 0 else 1, t))
            cin = cout
    layers += [nn.Sequential(*_conv_bn(cin, TAIL_CHANNELS, 1, 1)), nn.AvgPool2d(7), nn.Flatten(1)]
    return nn.Sequential(*layers, nn.Linear(TAIL_CHANNELS, num_classes)).eval()


def zero_dropped_channels(model: planner.SlimmableNetwork, width: float) -> None:
    """Zero every conv filter and BN channel that `width` drops, in place, at full width."""
    keep = model.config(width).channels
    with torch.no_grad():
        for layer in model.sliced_layers():
            group = layer.out_group
            if group.slimmable:
                layer.weight[keep[group.name] :] = 0
        for norm in model.batch_norms():
            if norm.group.slimmable:
                norm.bn[-1].weight[keep[norm.group.name] :] = 0
                norm.bn[-1].bias[keep[norm.group.name] :] = 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: all cores)")
    parser.add_argument("--max-seconds", type=float, default=40.0)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = planner.create_model("s_mobilenet_v2").eval()
    work = Path(tempfile.mkdtemp(prefix="export-latency-"))
    jobs, macs = [], {}
    for width in model.widths:
        config = model.config(width)
        macs[width] = count(model, config).macs
        zeroed = planner.create_model("s_mobilenet_v2").eval()
        zeroed.load_state_dict(model.state_dict())
        zero_dropped_channels(zeroed, width)
        files = {
            "sliced": export_onnx(model, config, work / f"sliced-{width}.onnx"),
            "native": export_module(
                native_mobilenet_v2(width), torch.zeros(1, 3, 224, 224), work / f"native-{width}.onnx"
            ),
            "zeroed": export_onnx(zeroed, zeroed.config(1.0), work / f"zeroed-{width}.onnx"),
        }
        for variant, path in files.items():
            meta = {"model": f"s_mobilenet_v2-{variant}", "config_id": f"{variant}-{width}", "width": width}
            jobs.append(Job(path, backend="onnxruntime", threads=args.threads, metadata=meta))

    # all 12 files in one group, so every one takes turns in the same rounds (the default is 8 a group)
    settings = Settings(max_seconds=args.max_seconds, max_workers=len(jobs))
    table = run_jobs(jobs, work / "profile", settings)
    table["variant"] = table["model"].str.split("-").str[-1]
    p50 = table.pivot_table(index="width", columns="variant", values="p50_ms")
    ci = table.pivot_table(index="width", columns="variant", values="ci_high_ms") - p50
    summary = pd.DataFrame(
        {
            "width": p50.index,
            "macs_m": [macs[w] / 1e6 for w in p50.index],
            "sliced_p50_ms": p50["sliced"].values,
            "sliced_ci_ms": ci["sliced"].values,
            "native_p50_ms": p50["native"].values,
            "zeroed_p50_ms": p50["zeroed"].values,
            "sliced_over_native": (p50["sliced"] / p50["native"]).values,
            "zeroed_over_sliced": (p50["zeroed"] / p50["sliced"]).values,
        }
    )
    full, narrow = max(model.widths), min(model.widths)
    latency_ratio = p50.loc[full, "sliced"] / p50.loc[narrow, "sliced"]
    macs_ratio = macs[full] / macs[narrow]

    args.out.mkdir(parents=True, exist_ok=True)
    summary.to_csv(args.out / "export_latency.csv", index=False)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    lines = [
        "# Sliced export vs native and zero-masked networks (S-MobileNetV2, onnxruntime CPU)",
        "",
        f"Command: `{command}`  ",
        f"Threads: {int(table['env_threads'].iloc[0])}, CPU: {table['env_cpu'].iloc[0]}, "
        f"onnxruntime {table['env_runtime_version'].iloc[0]}. All 12 files measured interleaved in one run "
        "(p50 with the half-width of its 95% CI).",
        "",
        summary.to_markdown(index=False, floatfmt=".3f"),
        "",
        f"Latency ratio {full:g}x / {narrow:g}x: **{latency_ratio:.2f}** (MACs ratio {macs_ratio:.2f}).",
        f"Goal sliced/native <= 1.03: worst {summary['sliced_over_native'].max():.3f}.",
    ]
    (args.out / "export_latency.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
