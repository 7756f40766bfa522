"""Issue 18 benchmark: `planner train` on 2 gloo ranks (DistributedDataParallel) against 1 process.

    python benchmarks/train_ranks.py [--repeats 3] [--out results]

Each run is `planner train MODEL -d digits --epochs E --batch-size 128 --threads 1`, alone or with
`--nproc 2` (torchrun, gloo, each rank one thread and half of each global batch): the same work, so the
ratio of throughputs is what the second process buys on this CPU. Throughput = training images of the run
/ the trainer's own wall time, read from its "wrote ... (N steps in S s)" line (process start, model
building and data loading left out; E is chosen so that S is several seconds, its 0.1 s rounding < 2%).
Runs alternate order (1-2, 2-1, ...) because other sessions load this machine; the load average and the
busiest processes before and after go into the report.
Writes OUT/train_ranks.csv and OUT/train_ranks.md.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
from machine import machine_state

from planner.accuracy.data import load_dataset
from profilers.files import replacing

ROOT = Path(__file__).resolve().parents[1]
CASES = [("us_cnn_small", 8, 6), ("s_mobilenet_v2", 32, 1)]  # model, input size, epochs
BATCH = 128
WROTE = re.compile(r"wrote .* \((\d+) steps in ([0-9.]+) s\)")


def trainer_seconds(model: str, size: int, epochs: int, nproc: int, work: Path) -> float:
    """The trainer's wall time of one `planner train` run (rank 0's)."""
    command = [sys.executable, "-m", "planner", "train", model, "-d", "digits", "--input-size", str(size),
               "--epochs", str(epochs), "--batch-size", str(BATCH), "--threads", "1", "--device", "cpu",
               "-o", str(work / f"{model}-{nproc}.pt")]  # fmt: skip
    if nproc > 1:
        command += ["--nproc", str(nproc)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    found = WROTE.search(done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return float(found.group(2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args()
    before = machine_state()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model, size, epochs in CASES:
            images = epochs * load_dataset("digits").size("train")
            for repeat in range(args.repeats):
                order = (1, 2) if repeat % 2 == 0 else (2, 1)
                seconds = {n: trainer_seconds(model, size, epochs, n, Path(tmp)) for n in order}
                rows.append({"model": model, "input": size, "repeat": repeat, "images": images,
                             "one_s": seconds[1], "two_s": seconds[2],
                             "speedup": seconds[1] / seconds[2]})  # fmt: skip
                print(rows[-1], flush=True)
    after = machine_state()
    table = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    with replacing(args.out / "train_ranks.csv") as path:
        table.to_csv(path, index=False)
    with replacing(args.out / "train_ranks.md") as path:
        path.write_text(report(table, before, after), encoding="utf-8")
    print(report(table, before, after))


def report(table: pd.DataFrame, before: str, after: str) -> str:
    command = " ".join(["python", "benchmarks/train_ranks.py", *sys.argv[1:]])
    lines = [
        "# Training on 2 gloo ranks against 1 process (issue 18)",
        "",
        f"Command: `{command}` (PYTHONPATH at the repository root). Machine before: {before}. "
        f"Machine after: {after}.",
        "",
        "This machine has 2 cores shared with other sessions: 2 ranks compete with them for the same 2 "
        "cores, so these numbers say what DDP costs and buys here, not what it does on free cores, let "
        "alone on GPUs. Same global batch (128) in both; each rank 1 thread. Speedup = 1-process seconds / "
        "2-rank seconds of each pair (run back to back, order alternating); median and range over the pairs.",
        "",
        "| model | input | images | 1 process img/s | 2 ranks img/s | speedup (range) |",
        "|---|---|---|---|---|---|",
    ]
    for (model, size), group in table.groupby(["model", "input"], sort=False):
        images = group["images"].iloc[0]
        one, two = statistics.median(group["one_s"]), statistics.median(group["two_s"])
        lines.append(
            f"| {model} | {size}x{size} | {images} | {images / one:.0f} | {images / two:.0f} "
            f"| {statistics.median(group['speedup']):.2f} ({group['speedup'].min():.2f}-"
            f"{group['speedup'].max():.2f}) |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
