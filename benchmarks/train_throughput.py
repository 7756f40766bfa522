"""Issue 18 benchmark: what slimmable training costs per step, and what the slimmable ops cost.

    python benchmarks/train_throughput.py [--repeats 7] [--steps 10] [--threads 1] [--out results]

1. Slimmable training (`planner.accuracy.train`, every width per step) against the same trainer on the
   same architecture built at full width only (the plain network), per optimizer step on the bundled
   digits: the measured factor beside the MAC-predicted one (sum over the step's widths of MACs(w) /
   MACs(1.0)), which is the paper's cost model (all widths forward and backward per step), and the
   paper's own figure for its ImageNet models from ../shared/reference/slimmable_results.json.
2. The slimmable ops against plain torch layers at the same width: one training step (forward, backward,
   SGD) of the slimmable model set to a width against `planner.nn.materialize` of it (nn.Conv2d,
   nn.BatchNorm2d, nn.Linear holding the same sliced weights), same batch.

Models: s_cnn_small on 8x8 digits (batch 128) and s_mobilenet_v2 on digits resized to 32x32 (batch 64).
Timings run the variants in pairs of alternating order and report the median paired ratio with its
range, because other sessions load this machine; the load average before and after goes into the report.
Writes OUT/train_throughput.csv and OUT/train_throughput.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from machine import machine_state

from planner.accuracy.data import Dataset, load_dataset
from planner.accuracy.train import train
from planner.models import create_model
from planner.nn.counting import count
from planner.nn.materialize import materialize

CASES = [("s_cnn_small", 8, 128), ("s_mobilenet_v2", 32, 64)]
WIDTHS = [0.25, 0.5, 0.75, 1.0]
ROOT = Path(__file__).resolve().parents[1]
# ../shared beside the integration tree; a helper's worktree sits one level deeper
REFERENCES = [
    up / "shared" / "reference" / "slimmable_results.json" for up in (ROOT.parent, ROOT.parent.parent)
]


def subset(dataset: Dataset, images: int) -> Dataset:
    x, y = dataset.splits["train"]
    return Dataset(dataset.name, dataset.classes, {**dataset.splits, "train": (x[:images], y[:images])})


def trainer_step_s(name: str, size: int, batch: int, widths: list[float], data: Dataset) -> float:
    """Seconds per optimizer step of `planner.accuracy.train` (data loading included)."""
    torch.manual_seed(0)
    model = create_model(name, widths=widths, in_channels=1, num_classes=10, input_size=size)
    result = train(model, data, epochs=1, batch_size=batch, lr=0.05)
    return result.wall_s / result.steps


def raw_step_s(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    """Median seconds of one forward + backward + SGD step, after one warm-up step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def paired(a, b, repeats: int) -> tuple[list[float], list[float]]:
    """`repeats` timings of each, run in pairs whose order alternates (A B, B A, ...): a load change
    during the run hits both sides of most pairs."""
    first, second = [], []
    for i in range(repeats):
        if i % 2:
            second.append(b())
            first.append(a())
        else:
            first.append(a())
            second.append(b())
    return first, second


def summary(measured: list[float], reference: list[float]) -> dict[str, float]:
    """Medians, and the median, lowest and highest of the paired ratios."""
    ratios = [m / r for m, r in zip(measured, reference, strict=True)]
    return {
        "seconds": statistics.median(measured),
        "reference_seconds": statistics.median(reference),
        "factor": statistics.median(ratios),
        "factor_min": min(ratios),
        "factor_max": max(ratios),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10, help="Trainer steps per measurement.")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    before = machine_state()
    rows = []
    for name, size, batch in CASES:
        data = subset(load_dataset("digits", image_size=size), args.steps * batch)
        model = create_model(name, widths=WIDTHS, in_channels=1, num_classes=10, input_size=size)
        full = count(model, model.config(1.0)).macs
        predicted = sum(count(model, model.config(w)).macs for w in WIDTHS) / full
        slim, plain = paired(
            partial(trainer_step_s, name, size, batch, WIDTHS, data),
            partial(trainer_step_s, name, size, batch, [1.0], data),
            args.repeats,
        )
        rows.append({"model": name, "input": size, "batch": batch, "measure": "trainer step, all widths",
                     "width": "all", **summary(slim, plain), "mac_factor": predicted})  # fmt: skip
        x, y = data.splits["train"][0][:batch], data.splits["train"][1][:batch]
        for width in (0.5, 1.0):
            torch.manual_seed(0)
            model = create_model(name, widths=WIDTHS, in_channels=1, num_classes=10, input_size=size)
            config = model.config(width)
            plain_model = materialize(model, config)
            model.set_config(config)
            ops, dense = paired(
                partial(raw_step_s, model, x, y, 2 * args.steps),
                partial(raw_step_s, plain_model, x, y, 2 * args.steps),
                args.repeats,
            )
            rows.append({"model": name, "input": size, "batch": batch, "width": width,
                         "measure": "slimmable ops vs plain layers", **summary(ops, dense),
                         "mac_factor": 1.0})  # fmt: skip
    after = machine_state()
    args.out.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(rows)
    table.to_csv(args.out / "train_throughput.csv", index=False)
    (args.out / "train_throughput.md").write_text(report(table, before, after), encoding="utf-8")
    print(table.to_string(index=False))


def paper_factors() -> str:
    found = [path for path in REFERENCES if path.is_file()]
    if not found:
        return "(the shared reference results were not found)"
    published = json.loads(found[0].read_text())
    parts = []
    for name in ("s_mobilenet_v1", "s_mobilenet_v2", "s_resnet50"):
        macs = {w: v["macs_m"] for w, v in published[name]["widths"].items()}
        parts.append(f"{name} {sum(macs.values()) / macs['1.0']:.2f}")
    return ", ".join(parts)


def report(table: pd.DataFrame, before: str, after: str) -> str:
    command = " ".join(["python", "benchmarks/train_throughput.py", *sys.argv[1:]])
    lines = [
        "# Training throughput: slimmable vs plain (issue 18)",
        "",
        f"Command: `{command}` (PYTHONPATH at the repository root).",
        "",
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, torch {torch.__version__}.",
        "",
        f"Machine before: {before}",
        "",
        f"Machine after: {after}",
        "",
        "This machine is shared with other sessions running test suites: the numbers below were measured "
        "under that load, not on a quiet machine. Seconds are medians over repeats; the factor is the median "
        "of the paired ratios (each pair run back to back, order alternating), with their range.",
        "",
        "| model | input | batch | measure | width | s/step | reference s/step | factor (range) "
        "| MAC factor |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table.itertuples():
        lines.append(
            f"| {r.model} | {r.input}x{r.input} | {r.batch} | {r.measure} | {r.width} "
            f"| {r.seconds * 1e3:.1f} ms | {r.reference_seconds * 1e3:.1f} ms "
            f"| {r.factor:.2f} ({r.factor_min:.2f}-{r.factor_max:.2f}) | {r.mac_factor:.2f} |"
        )
    lines += [
        "",
        "Trainer rows: reference = the same trainer on the network built at full width only (one forward "
        "and backward per step); factor = slimmable / plain per step. MAC factor = the paper's cost model, "
        "sum over the widths 0.25, 0.5, 0.75, 1.0 of MACs(w) / MACs(1.0). The paper's own ImageNet models "
        f"by the same model (published MACs): {paper_factors()}.",
        "",
        "Ops rows: reference = `planner.nn.materialize` of the same configuration (plain nn.Conv2d, "
        "nn.BatchNorm2d, nn.Linear with the same weights); factor = slimmable ops / plain layers for one "
        "forward + backward + SGD step on the same batch. Goal: <= 1.10.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
