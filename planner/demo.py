"""`planner demo`: the whole pipeline on this machine's CPU in one command, with no network.

Trains s_cnn_small on digits-distorted (scikit-learn's digits, rotated, scaled, shifted and noisy: data
on which accuracy grows with width), evaluates every width in torch, quantizes every width to int8 with
the data's calibration split, profiles every width in FP32 and INT8 on ONNX Runtime and OpenVINO,
scores each shipped artifact through its runtime, selects under a budget in the middle of each target's
measured range (so the budget actually excludes something; differences within noise go to the faster),
writes the manifests and the Pareto report, and ends with a short load test of the cpu manifest's ladder
(a few seconds, one CPU-spinning process in the middle).
Every stage is the same function the individual commands call. A re-run resumes: the checkpoint is
reused and measured configurations are not measured again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from planner.deploy.loadtest import LoadtestResult, run_loadtest
from planner.deploy.manifest import write_manifest
from planner.deploy.report import Panel, write_report
from planner.errors import PlannerError
from planner.measure.targets import load_target
from planner.plan.pareto import candidates, read_tables
from planner.plan.select import Budget, Selection, select

MODEL = "s_cnn_small"
DATASET = "digits-distorted"
TARGETS = ("cpu-int8", "openvino-cpu-int8")
METRIC = "p90"
LOADTEST_TARGET = TARGETS[0]  # its ladder mixes FP32 and INT8 rungs
LOADTEST_SCHEDULE = "quiet:1s,spin1:2s,quiet:1s"


@dataclass(frozen=True)
class DemoResult:
    """Where the demo put things, and what it chose per target."""

    checkpoint: Path
    results_dir: Path
    selections: dict[str, Selection]
    manifests: dict[str, Path]
    report: list[Path]
    loadtest: LoadtestResult


def middle_budget(table: pd.DataFrame) -> Budget:
    """Halfway between the fastest and the slowest measured configuration: a budget that bites."""
    latency = table["bound_ms"]
    return Budget(float((latency.min() + latency.max()) / 2), METRIC)


def run_demo(
    out_dir: Path,
    epochs: int = 6,
    max_seconds: float = 8.0,
    say: Callable[[str], None] = print,
) -> DemoResult:
    """Run every stage into `out_dir` (checkpoint, results/, deploy/<target>/, report/)."""
    import torch

    # The model is tiny: one intra-op thread trains it as fast as two, and several times faster when
    # other processes compete for the cores (two spinning threads then wait on each other).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(out_dir, epochs, max_seconds, say)
    finally:
        torch.set_num_threads(threads)


def _run(out_dir: Path, epochs: int, max_seconds: float, say: Callable[[str], None]) -> DemoResult:
    import torch

    import planner
    from planner.accuracy.data import load_dataset
    from planner.accuracy.evaluate import evaluate
    from planner.accuracy.runtime import evaluate_target
    from planner.accuracy.table import accuracy_rows, checkpoint_digest, write_accuracy
    from planner.accuracy.train import train
    from planner.measure.artifacts import export_ladder, weights_key
    from planner.measure.profile import busy_rows_note, profile_configs
    from planner.measure.quantize import calibration_from
    from profilers.jobs import Settings

    out_dir.mkdir(parents=True, exist_ok=True)
    results_dir = out_dir / "results"
    checkpoint = out_dir / f"{MODEL}-{DATASET}.pt"
    dataset = load_dataset(DATASET)
    options = {"in_channels": dataset.in_channels, "num_classes": dataset.num_classes}
    model = planner.create_model(MODEL, input_size=dataset.input_size, **options)
    if checkpoint.is_file():
        say(f"reusing the trained weights in {checkpoint}")
        planner.load_checkpoint(model, checkpoint)
    else:
        say(f"training {MODEL} at widths {model.widths} on {DATASET} ({dataset.size('train')} images)")
        torch.manual_seed(0)
        result = train(model, dataset, epochs=epochs, seed=0)
        say(f"  trained in {result.wall_s:.0f} s")
        planner.save_checkpoint(model, checkpoint)
    model.eval()

    configs = [model.config(width) for width in model.widths]
    say(f"evaluating {len(configs)} widths on the validation split ({dataset.size('val')} images)")
    scores = evaluate(model, configs, dataset.batches("val", 256))
    write_accuracy(results_dir, accuracy_rows(MODEL, scores, DATASET, "val", checkpoint_digest(checkpoint)))
    say("  top-1: " + ", ".join(f"{score.config.label} {score.top1:.1f}%" for score in scores))

    targets = [load_target(name) for name in TARGETS]
    say(
        f"profiling {len(configs)} widths in fp32 and int8 on {', '.join(TARGETS)} "
        f"(to a 95% CI of +-2%, at most {max_seconds:g} s each)"
    )
    settings = dataclasses.replace(Settings(), max_seconds=max_seconds)
    shape = (1, model.in_channels, model.input_size, model.input_size)
    calibration = calibration_from(dataset, shape)
    weights = weights_key(checkpoint)
    measured = profile_configs(
        model, configs, targets, results_dir, settings=settings, weights=weights, calibration=calibration
    )
    busy = busy_rows_note(measured)
    if busy:  # the selection below uses them all the same: say so, once
        say(f"  warning: {busy}: run the demo again with another --out when the machine is idle")
    for target in targets:
        batch = target.planned_batches[0]
        scored = evaluate_target(model, configs, target, dataset, "val", results_dir, weights, batch=batch)
        for precision, results in scored.items():
            rows = accuracy_rows(
                MODEL,
                results,
                DATASET,
                "val",
                checkpoint_digest(checkpoint),
                target=target.name,
                precision=precision,
                runtime=target.backend,
                batch=batch,
            )
            write_accuracy(results_dir, rows)
            say(
                f"  {target.name} {precision} through {target.backend}: "
                + ", ".join(f"{r.config.label} {r.top1:.1f}%" for r in results)
            )

    latency, accuracy = read_tables(results_dir)
    selections, manifests, panels = {}, {}, []
    for target in targets:
        table = candidates(
            latency, accuracy, target.name, metric=METRIC, model=MODEL, results_dir=results_dir
        )
        selection = select(table, middle_budget(table))
        if not selection.fits:  # the fastest configuration is always within the middle budget
            raise PlannerError(f"no configuration fits {selection.budget.describe()} on {target.name}")
        selections[target.name] = selection
        exports = export_ladder(selection.ladder, target, checkpoint, results_dir)
        manifests[target.name] = write_manifest(
            selection, target, exports.model, checkpoint, exports.onnx, out_dir / "deploy" / target.name
        )
        panels.append(Panel(target.name, table, selection.budget.max_latency_ms))
    report = write_report(panels, out_dir / "report", f"{MODEL} on {DATASET}: accuracy vs latency")
    say(f"load test of the {LOADTEST_TARGET} ladder under interference ({LOADTEST_SCHEDULE})")
    manifest, where = manifests[LOADTEST_TARGET], out_dir / "loadtest"
    loadtest = run_loadtest(manifest, where, LOADTEST_SCHEDULE, fixed=False, memory=False, say=say)
    return DemoResult(checkpoint, results_dir, selections, manifests, report, loadtest)
