"""Converted networks' channel counts rounded to 8 against scaled exactly: latency of each width, per target.

For each torchvision network, `planner profile` measures in one run (so both rules share the machine's
state, interleaved within each group of jobs) the uniform widths as planner now builds them (every
group's count a multiple of 8 where the group is two or more 8s wide) and, as per-layer configurations
of the same network, the widths as planner built them before (width x channels, rounded to 1). Random
weights; 224x224; nothing is downloaded. The Markdown gives every p50, its ratio to 1x (the profiler's
paired ratio) and the MACs, with the command and the machine's state.

    python benchmarks/channel_multiple.py [--models torchvision:mobilenet_v3_small,...]
        [--targets cpu,openvino-cpu] [--max-seconds 3] [--work /tmp/channel-multiple]
        [--out results] [--name channel_multiple]
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import machine_state  # noqa: E402

WIDTHS = (0.25, 0.5, 0.75)


def exact_configs(source: str, folder: Path) -> dict[str, float]:
    """Write each width's exactly scaled configuration as a per-layer file; config id -> width."""
    from planner.models.sources import build_source

    exact = build_source(source, channel_multiple=1)
    ids = {}
    for width in WIDTHS:
        channels = exact.config(width).channels
        config = exact.config_from_channels(channels)
        config.save(folder / f"exact-{width:g}.json")
        ids[config.id] = width
    return ids


def profile(source: str, targets: list[str], folder: Path, max_seconds: float) -> float:
    """Run `planner profile` on the rounded widths and the exact files; its wall time in seconds."""
    configs = sorted(folder.glob("exact-*.json"))
    command = [sys.executable, "-m", "planner", "profile", "--model", source, "--out", str(folder)]
    command += [arg for target in targets for arg in ("--target", target)]
    command += [arg for path in configs for arg in ("--config", str(path))]
    command += ["--widths", ",".join(f"{w:g}" for w in (*WIDTHS, 1.0)), "--max-seconds", f"{max_seconds:g}"]
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT)
    return time.perf_counter() - start


def rows(source: str, folder: Path, exact_ids: dict[str, float]) -> pd.DataFrame:
    table = pd.read_parquet(folder / "latency.parquet")
    table = table[table["status"] == "ok"].copy()
    table["rule"] = table["config_id"].map(lambda c: "exact" if c in exact_ids else "rounded to 8")
    table["width"] = table.apply(lambda r: exact_ids.get(r["config_id"], r["width"]), axis=1)
    table["model"] = source
    keep = ["model", "target", "width", "rule", "p50_ms", "ci_low_ms", "ci_high_ms", "ratio_to_ref", "macs"]
    return table[[*keep, "contended", "other_cores"]].sort_values(["target", "width", "rule"])


def report(frame: pd.DataFrame, command: str, started: str, before: str, after: str, walls: dict) -> str:
    lines = [
        "# Channel counts rounded to 8 against scaled exactly (converted torchvision networks)",
        "",
        f"Command: `{command}`",
        "",
        f"Run {started} UTC. Machine before: {before}. After: {after}.",
        "",
        "Each network's rows come from one `planner profile` run: the widths as planner builds them now "
        "(`rounded to 8`) and, as per-layer configurations, as it built them before (`exact`). Ratio: the "
        "profiler's paired ratio to 1x (both rules share the 1x reference, so exact/rounded of the ratios "
        "is the speed-up with the machine's drift taken out). Random weights, 224x224, batch 1.",
        "",
        "| model | target | width | exact p50 ms | rounded p50 ms | exact/rounded | ratio to 1x exact | "
        "rounded | exact/rounded (ratios) | MMACs exact | rounded | contended |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (model, target, width), group in frame.groupby(["model", "target", "width"]):
        if width == 1.0:
            continue
        by = {row["rule"]: row for _, row in group.iterrows()}
        if set(by) != {"exact", "rounded to 8"}:
            continue
        a, b = by["exact"], by["rounded to 8"]
        contended = int(a["contended"]) + int(b["contended"])
        lines.append(
            f"| {model} | {target} | {width:g}x | {a['p50_ms']:.3f} | {b['p50_ms']:.3f} | "
            f"{a['p50_ms'] / b['p50_ms']:.2f} | {a['ratio_to_ref']:.3f} | {b['ratio_to_ref']:.3f} | "
            f"{a['ratio_to_ref'] / b['ratio_to_ref']:.2f} | "
            f"{a['macs'] / 1e6:.1f} | {b['macs'] / 1e6:.1f} | {contended} of 2 |"
        )
    lines += ["", "1x (the same configuration under both rules):", ""]
    for _, row in frame[frame["width"] == 1.0].iterrows():
        lines.append(f"- {row['model']} on {row['target']}: p50 {row['p50_ms']:.3f} ms")
    lines += ["", "Wall time of each profile run: " + ", ".join(f"{m} {s:.0f} s" for m, s in walls.items())]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="torchvision:mobilenet_v3_small,torchvision:mobilenet_v2")
    parser.add_argument("--targets", default="cpu,openvino-cpu")
    parser.add_argument("--max-seconds", type=float, default=3.0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/channel-multiple"))
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    parser.add_argument("--name", default="channel_multiple")
    args = parser.parse_args()
    command = "python benchmarks/channel_multiple.py " + shlex.join(sys.argv[1:])
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M")
    before = machine_state()
    frames, walls = [], {}
    for source in args.models.split(","):
        folder = args.work / source.replace(":", "_")
        folder.mkdir(parents=True, exist_ok=True)
        exact_ids = exact_configs(source, folder)
        walls[source] = profile(source, args.targets.split(","), folder, args.max_seconds)
        frames.append(rows(source, folder, exact_ids))
    frame = pd.concat(frames, ignore_index=True)
    args.out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out / f"{args.name}.csv", index=False)
    text = report(frame, command, started, before, machine_state(), walls)
    (args.out / f"{args.name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
