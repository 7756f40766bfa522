"""Issue 13 section 5: from a pretrained torchvision network to a slimmable one, on bundled data.

1. The data: scikit-learn's digits at 16x16, grey repeated to 3 channels (torchvision takes RGB), as .npz.
2. The "pretrained" original: torchvision's resnet18 (10 classes) trained plainly on the train split and
   saved as a plain state dict, as a user's pretrained weights would be.
3. Pruned by prefix without fine-tuning: `planner evaluate torchvision:resnet18 --checkpoint ORIGINAL`
   converts the original (channels reordered by importance) and scores each width as it is.
4. Fine-tuned: `planner.train_checkpoint` (what `planner train torchvision:resnet18 --checkpoint ORIGINAL
   --widths ...` runs; the original teaches every width), then `planner evaluate` of the result.
Goal: the full width within 0.5 points of the original; every narrower width above its prefix-pruned score.

    python benchmarks/finetune_pretrained.py --out results [--epochs 6] [--finetune-epochs 3]
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import machine_state  # noqa: E402

from planner.accuracy.data import load_dataset  # noqa: E402
from planner.accuracy.train import TrainOptions, train_checkpoint  # noqa: E402
from planner.models.sources import load_source  # noqa: E402
from profilers.files import replacing  # noqa: E402

SOURCE = "torchvision:resnet18"
SIZE = 16


def write_data(path: Path) -> None:
    dataset = load_dataset("digits", image_size=SIZE)
    arrays = {}
    for split in ("train", "val", "calibration"):
        x, y = dataset.splits[split]
        arrays[f"x_{split}"] = x.repeat(1, 3, 1, 1).numpy()
        arrays[f"y_{split}"] = y.numpy()
    np.savez(path, **arrays)


def train_original(data: Path, path: Path, epochs: int, seed: int) -> float:
    """Plain training of the original network; its val top-1 (%)."""
    dataset = load_dataset(data)
    torch.set_num_threads(1)  # as planner train: a second thread only waits on a busy machine
    torch.manual_seed(seed)
    model = load_source(SOURCE, num_classes=10, input_size=SIZE)
    steps = epochs * len(dataset.batches("train", 64))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    model.train()
    for epoch in range(epochs):
        for images, labels in dataset.batches("train", 64, shuffle=True, seed=seed * 1000 + epoch):
            optimizer.zero_grad()
            F.cross_entropy(model(images), labels).backward()
            optimizer.step()
            schedule.step()
    model.eval()
    torch.save(model.state_dict(), path)
    correct = total = 0
    with torch.no_grad():
        for images, labels in dataset.batches("val", 256):
            correct += int((model(images).argmax(1) == labels).sum())
            total += len(labels)
    return 100.0 * correct / total


def recalibrated(original: Path, data: Path, widths: list[float]) -> dict[float, float]:
    """Prefix-pruned top-1 with each width's BN statistics re-estimated on the calibration split: the
    strongest no-training baseline (stale full-width statistics put narrow prefixes near chance)."""
    from planner.accuracy.evaluate import evaluate
    from planner.nn.build import build_model
    from planner.nn.calibrate import calibrate

    dataset = load_dataset(data)
    model = build_model(SOURCE, original, widths=widths, num_classes=10, input_size=SIZE, in_channels=3)
    batches = dataset.batches("calibration", 64, shuffle=True)
    scores = {}
    for width in widths:
        config = model.config(width)
        stored = calibrate(model, config, batches, len(batches))
        (result,) = evaluate(model, [config], dataset.batches("val", 256), calibrations={config.id: stored})
        scores[width] = result.top1
    return scores


def planner_cli(*args: str) -> str:
    command = [sys.executable, "-m", "planner", *args]
    done = subprocess.run(command, capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": ""})
    if done.returncode != 0:
        raise SystemExit(f"{shlex.join(args)} failed:\n{done.stderr[-2000:]}")
    return done.stdout


def evaluate(checkpoint: Path, data: Path, widths: str, out: Path) -> dict[float, float]:
    stdout = planner_cli(
        "evaluate", SOURCE, "--checkpoint", str(checkpoint), "--data", str(data), "--widths", widths,
        "--out", str(out), "--json",
    )  # fmt: skip
    return {r["width"]: r["top1"] for r in json.loads(stdout)["results"]}


def _percent(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--epochs", type=int, default=6, help="Plain training of the original.")
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=0.02, help="Peak learning rate of the fine-tuning.")
    parser.add_argument("--widths", default="0.25,0.5,0.75,1.0")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    command = "python benchmarks/finetune_pretrained.py " + shlex.join(sys.argv[1:])
    widths = [float(w) for w in args.widths.split(",")]
    before = machine_state()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data, original, slim = work / "digits3.npz", work / "resnet18.pth", work / "slim.pt"
        write_data(data)
        val_images = load_dataset(data).size("val")
        start = time.perf_counter()
        original_top1 = train_original(data, original, args.epochs, args.seed)
        original_s = time.perf_counter() - start
        pruned = evaluate(original, data, args.widths, work / "out")
        pruned_calibrated = recalibrated(original, data, widths)
        start = time.perf_counter()
        train_checkpoint(
            TrainOptions(
                SOURCE, data, slim, checkpoint=original, widths=widths, epochs=args.finetune_epochs,
                lr=args.lr, batch_size=64, seed=args.seed,
            )
        )  # fmt: skip
        finetune_s = time.perf_counter() - start
        tuned = evaluate(slim, data, args.widths, work / "out")
    rows = [
        {
            "width": w,
            "original_top1": original_top1 if w == 1.0 else None,
            "prefix_pruned_top1": pruned[w],
            "prefix_recalibrated_top1": pruned_calibrated[w],
            "finetuned_top1": tuned[w],
        }
        for w in sorted(tuned)
    ]
    table = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    with replacing(args.out / "finetune_pretrained.csv") as path:
        table.to_csv(path, index=False)
    full = tuned[1.0] - original_top1
    narrower = all(tuned[w] > max(pruned[w], pruned_calibrated[w]) for w in tuned if w < 1.0)
    lines = [
        "# From a pretrained torchvision network to a slimmable one (issue 13, section 5)",
        "",
        f"Command: `{command}`",
        "",
        f"{SOURCE} (10 classes) on digits at {SIZE}x{SIZE}, grey repeated to 3 channels; val split "
        f"({val_images} images). The original was trained plainly "
        f"for {args.epochs} epochs ({original_s:.0f} s); fine-tuning: `planner.train_checkpoint` for "
        f"{args.finetune_epochs} epochs at lr {args.lr:g}, the original teaching every width "
        f"({finetune_s:.0f} s). Prefix-pruned = the converted original (channels reordered by importance) at "
        "that width, its BN statistics as converted, no training; recalibrated = the same with each width's "
        "BN statistics re-estimated on the calibration split (all of its batches). One seed; one val image "
        "is 0.28 points.",
        "",
        f"Machine: {before} at the start, {machine_state()} at the end; times are not quiet-machine figures.",
        "",
        "| width | original top-1 % | prefix-pruned top-1 % | prefix-pruned, recalibrated % "
        "| fine-tuned top-1 % |",
        "|---|---|---|---|---|",
        *[
            f"| {r['width']:g} | {_percent(r['original_top1'])} "
            f"| {r['prefix_pruned_top1']:.2f} | {r['prefix_recalibrated_top1']:.2f} "
            f"| {r['finetuned_top1']:.2f} |"
            for r in rows
        ],
        "",
        f"Full width: {full:+.2f} points from the original (goal: no more than 0.5 below it). "
        f"Every narrower width above both prefix-pruned scores: {'yes' if narrower else 'no'}.",
    ]
    with replacing(args.out / "finetune_pretrained.md") as path:
        path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
