"""Issue 15 benchmark: S-MobileNetV2 latency per width and precision, onnxruntime and OpenVINO on this CPU.

Every width of S-MobileNetV2 (224x224, untrained weights: latency depends on the structure) is exported
once, quantized to int8 for each backend the way `planner profile` does (onnxruntime quantize_static QDQ
per-channel; NNCF for OpenVINO) and all 4 widths x {fp32, int8} x {onnxruntime, openvino} = 16 jobs are
measured in ONE profiler run, interleaved round by round, so machine drift hits them alike.

Calibration images: digits-distorted's calibration split upscaled to 224 and repeated over 3 channels
(the model wants 3x224x224; the images set activation ranges, and latency does not depend on them).

    python benchmarks/precision_latency.py --out results
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from machine import machine_state

from planner.accuracy.data import load_dataset
from planner.measure.artifacts import export_artifacts, make_jobs, quantize_artifacts
from planner.measure.quantize import Calibration
from planner.measure.targets import load_target
from planner.nn.build import build_model, configurations
from profilers import Settings, run_jobs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--calibration-size", type=int, default=32)
    parser.add_argument("--max-seconds", type=float, default=20.0)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="precision-latency-"))
    before = machine_state()

    model = build_model("s_mobilenet_v2")
    configs = configurations(model)
    images = load_dataset("digits-distorted", image_size=model.input_size).splits["calibration"][0]
    images = images[: args.calibration_size].repeat(1, 3, 1, 1).numpy().astype(np.float32)
    calibration = Calibration(images, f"digits-distorted:calibration[:{len(images)}] at 224, 3 channels")

    jobs = []
    for name in ("cpu-int8", "openvino-cpu-int8"):
        target = load_target(name)
        target = dataclasses.replace(target, threads=args.threads)
        artifacts = export_artifacts(model, configs, work, target)
        quantized, failures = quantize_artifacts(artifacts, target, calibration)
        if failures:
            raise SystemExit("; ".join(failures))
        jobs += make_jobs(artifacts, target.at_precision("fp32")) + make_jobs(
            quantized, target.at_precision("int8")
        )
    settings = Settings(max_seconds=args.max_seconds, max_workers=len(jobs))
    table = run_jobs(jobs, work / "measured", settings, force=True)
    table = table[
        [
            "target",
            "backend",
            "width",
            "precision",
            "status",
            "p50_ms",
            "ci_low_ms",
            "ci_high_ms",
            "min_ms",
            "n",
            "converged",
            "macs",
            "artifact_bytes",
        ]
    ]
    table = table.sort_values(["backend", "width", "precision"]).reset_index(drop=True)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "precision_latency.csv", index=False)

    lines = [
        "# S-MobileNetV2 latency per width and precision (issue 15)",
        "",
        f"Command: `{' '.join(shlex.quote(a) for a in ['python', *sys.argv])}`",
        "",
        f"16 jobs measured in one interleaved profiler run (max {args.max_seconds:g} s each, threads = "
        f"{args.threads or 'all cores'}), 224x224 input, batch 1, untrained weights; int8 calibrated on "
        f"{calibration.source}. Table: precision_latency.csv.",
        "",
        "| backend | width | fp32 p50 ms (95% CI) | int8 p50 ms (95% CI) | int8 speed-up | fp32 min "
        "| int8 min |",
        "|---|---|---|---|---|---|---|",
    ]
    for (backend, width), rows in table.groupby(["backend", "width"]):
        by = rows.set_index("precision")
        if not {"fp32", "int8"} <= set(by.index):
            continue
        f, i = by.loc["fp32"], by.loc["int8"]
        lines.append(
            f"| {backend} | {width:g}x | {f.p50_ms:.2f} ({f.ci_low_ms:.2f}-{f.ci_high_ms:.2f}) | "
            f"{i.p50_ms:.2f} ({i.ci_low_ms:.2f}-{i.ci_high_ms:.2f}) | {f.p50_ms / i.p50_ms:.2f}x | "
            f"{f.min_ms:.2f} | {i.min_ms:.2f} |"
        )
    lines += [
        "",
        "## Machine state",
        "",
        "This machine is shared with other sessions: the figures were measured "
        "under their load, not on a quiet machine.",
        "",
        "Before:",
        "",
        before,
        "",
        "After:",
        "",
        machine_state(),
        "",
    ]
    (args.out / "precision_latency.md").write_text("\n".join(lines))
    print("\n".join(lines))
    print(pd.DataFrame(table).to_string())


if __name__ == "__main__":
    main()
