"""Issue 16 benchmark: does the ladder runtime hold a latency budget while the CPU gets busy?

S-MobileNetV2 (224x224 unless --input-size, 1000 classes, seed-0 random weights: latency does not depend
on the weights) on the cpu target (ONNX Runtime). Accuracy per width is the slimmable-networks paper's
ImageNet top-1 (results/reference_imagenet_accuracy.csv, imported): what each width would serve with
trained weights.

1. profile the four widths and write a manifest whose ladder holds all four;
2. calibrate: each rung pinned for a few quiet seconds; the budget is halfway between the narrowest and
   the widest rung's p90 (a budget the widest cannot hold);
3. planner loadtest with quiet 20 s / two spinners 20 s / quiet 20 s, the adaptive ladder and each rung.

    python benchmarks/runtime_ladder.py --out results [--work /tmp/runtime_ladder]

Writes OUT/runtime_ladder.md, .csv (1-s windows of every run), .json (the load test's report), .png.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
from machine import machine_state

from planner.deploy.loadtest import run_loadtest

MODEL = "s_mobilenet_v2"
SCHEDULE = "quiet:20s,spin2:20s,quiet:20s"
CALIBRATION = "quiet:4s"


def planner_command(*args: str) -> None:
    command = [sys.executable, "-m", "planner", *args]
    print("$", shlex.join(command[1:]), flush=True)
    subprocess.run(command, check=True)


def prepare(work: Path, input_size: int) -> Path:
    """Checkpoint, imported accuracy, profile, manifest (each step skipped when already done)."""
    import torch

    import planner

    work = work / f"{input_size}px"
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = work / f"{MODEL}-seed0.pt"
    if not checkpoint.is_file():
        torch.manual_seed(0)
        planner.save_checkpoint(planner.create_model(MODEL, input_size=input_size), checkpoint)
    results = work / "out"
    if not (results / "accuracy.parquet").is_file():
        reference = pd.read_csv(Path(__file__).parent.parent / "results" / "reference_imagenet_accuracy.csv")
        reference[reference["model"] == MODEL].to_csv(work / "reference.csv", index=False)
        planner_command("accuracy", "import", str(work / "reference.csv"), "--out", str(results))
    if not (results / "latency.parquet").is_file():
        planner_command("profile", "-t", "cpu", "--checkpoint", str(checkpoint), "--out", str(results),
                        "--max-seconds", "10")  # fmt: skip
    latency = pd.read_parquet(results / "latency.parquet")
    generous = float(latency["p90_ms"].max()) * 1.5  # every width in the ladder
    deploy = work / "deploy"
    if not (deploy / "cpu" / "manifest.json").is_file():
        planner_command("manifest", "-t", "cpu", "--checkpoint", str(checkpoint), "--out", str(results),
                        "--max-latency", f"{generous:.1f}ms", "-o", str(deploy))  # fmt: skip
    return deploy / "cpu" / "manifest.json"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/runtime_ladder"))
    parser.add_argument("--budget-ms", type=float, default=None, help="skip the calibration, use this budget")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the target's)")
    parser.add_argument("--name", default="runtime_ladder", help="stem of the result files")
    parser.add_argument(
        "--input-size",
        type=int,
        default=224,
        help="input height and width: the compute per inference, against the scheduler's 4-ms tick",
    )
    parser.add_argument(
        "--rate", type=float, default=None, help="open loop: requests/s (default: closed loop)"
    )
    arguments = parser.parse_args()
    manifest = prepare(arguments.work, arguments.input_size)
    before = machine_state()

    budget = arguments.budget_ms
    calibration = None
    if budget is None:
        calibration = run_loadtest(manifest, arguments.work / "calibration", CALIBRATION, budget_ms=1e6,
                                   memory=False, threads=arguments.threads, rate=arguments.rate,
                                   say=print)  # fmt: skip
        fixed = calibration.summary.iloc[1:]
        budget = float((fixed["p90_ms"].iloc[0] + fixed["p90_ms"].iloc[-1]) / 2)
    print(f"budget: p90 <= {budget:.2f} ms", flush=True)
    result = run_loadtest(
        manifest,
        arguments.work / "loadtest",
        SCHEDULE,
        budget_ms=budget,
        rate=arguments.rate,
        threads=arguments.threads,
        say=print,
    )
    after = machine_state()

    out = arguments.out
    out.mkdir(parents=True, exist_ok=True)
    name = arguments.name
    result.windows.to_csv(out / f"{name}.csv", index=False, float_format="%.4f")
    (out / f"{name}.json").write_text(json.dumps(result.report, indent=2) + "\n")
    shutil.copyfile(arguments.work / "loadtest" / "loadtest.png", out / f"{name}.png")
    command = shlex.join(["python", "benchmarks/runtime_ladder.py", *sys.argv[1:]])
    size = arguments.input_size
    write_markdown(out / f"{name}.md", name, command, result.report, calibration, budget, before, after, size)


def write_markdown(
    path: Path,
    name: str,
    command: str,
    report: dict,
    calibration,
    budget: float,
    before: str,
    after: str,
    input_size: int,
) -> None:
    runs = pd.DataFrame(report["runs"])
    table = runs[["run", "requests", "p50_ms", "p90_ms", "windows_within_pct", "quiet_within_pct",
                  "busy_within_pct", "accuracy", "switches"]]  # fmt: skip
    verdict, cost, memory = report["verdict"], report["switching_cost"], report.get("memory", {})
    rungs = pd.DataFrame(report["rungs"])[
        ["label", "accuracy", "expected_ms", "warm_ms", "rss_bytes", "load_ms"]
    ]
    lines = [
        "# Ladder runtime under CPU interference (issue 16)",
        "",
        f"    {command}",
        "",
        f"{MODEL} ({input_size}x{input_size}, random seed-0 weights; accuracy = the paper's ImageNet top-1, "
        "imported), target "
        f"cpu (ONNX Runtime, {report['threads']} intra-op threads: 0 = every core), {_load(report['load'])}, "
        f"schedule {SCHEDULE}, p90 budget {budget:.2f} ms (halfway between the narrowest and the "
        "widest rung's p90 in a 4-s pinned calibration run just before).",
        "",
        "## Runs (1-s windows; within = the window's p90 <= budget)",
        "",
        table.to_markdown(index=False, floatfmt=".2f"),
        "",
        "## Criteria",
        "",
        f"- adaptive within budget in {verdict['adaptive_within_pct']:.1f}% of windows "
        f"(goal >= 95%: {'met' if verdict['adaptive_holds'] else 'MISSED'});",
        f"- widest fixed rung ({verdict['widest_fixed']}) within budget in "
        f"{verdict['widest_fixed_busy_within_pct']:.0f}% of the busy windows;",
        f"- most accurate fixed rung holding the budget in >= 95% of windows: "
        f"{verdict['best_fixed_holding'] or 'none'}"
        + (
            f" ({verdict['best_fixed_holding_accuracy']:.2f}%); "
            f"adaptive served {verdict['adaptive_accuracy']:.2f}% "
            f"({'at least as accurate' if verdict['adaptive_at_least_as_accurate'] else 'LESS accurate'})"
            if verdict["best_fixed_holding"]
            else f"; adaptive served {verdict['adaptive_accuracy']:.2f}%"
        )
        + ";",
        f"- switching cost over {cost['switches']} switches: decision to the start of the first inference on "
        f"the new rung median {_ms(cost['decision_to_first_inference_ms']['median'])}, max "
        f"{_ms(cost['decision_to_first_inference_ms']['max'])}; that first inference took median "
        f"{_ms(cost['first_inference_ms']['median'])} (the rungs are warmed when loaded);",
    ]
    if "all_rungs_bytes" in memory:
        lines.append(
            f"- memory (RSS growth while the sessions open, each in a fresh process): all four rungs "
            f"{memory['all_rungs_bytes'] / 2**20:.1f} MiB, neighbours only "
            f"{memory['neighbours_bytes'] / 2**20:.1f} MiB, the widest rung alone "
            f"{memory['widest_bytes'] / 2**20:.1f} MiB."
        )
    lines += [
        "",
        "## Rungs (expected = the manifest's p90; warm = fastest warm-up inference when loaded)",
        "",
        rungs.to_markdown(index=False, floatfmt=".3f"),
        "",
        f"![latency and rung over time]({name}.png)",
        "",
        "## Machine state",
        "",
        "A 2-core machine shared with other sessions: their tests and benchmarks ran during this run, so a",
        "'quiet' phase is only quiet of this test's own spinners. Before and after:",
        "",
        "```",
        before,
        "",
        after,
        "```",
        "",
    ]
    if calibration is not None:
        calibration_table = calibration.summary[["run", "p50_ms", "p90_ms"]].to_markdown(
            index=False, floatfmt=".2f"
        )
        lines += ["Calibration (pinned, no spinners):", "", calibration_table, ""]
    path.write_text("\n".join(lines))


def _load(load: dict) -> str:
    if "rate" in load:
        return f"open loop at {load['rate']:g} requests/s (latency from the scheduled arrival)"
    return f"closed loop with {load['concurrency']} caller(s) back to back"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} ms"


if __name__ == "__main__":
    main()
