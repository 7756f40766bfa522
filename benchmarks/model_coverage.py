"""Issue 13 benchmark: which torchvision and timm classifiers planner converts, beside Torch-Pruning.

For every classification model in `torchvision.models.list_models(module=torchvision.models)` and a set
of timm models from different families, each in its own subprocess with a time limit:
  planner  - `slimmable(model, x, widths=(0.5, 1.0))`: converted? full width equal to the original
             (max abs diff, eval mode)? the 0.5 width exported to ONNX and matching in onnxruntime?
             MACs at 0.5 and 1.0, time to convert, the reason for a failure;
  tp       - Torch-Pruning's DependencyGraph through its MagnitudePruner removing 50% of the channels
             (L2 magnitude, classifier kept), then a forward pass: pruned? MACs after, time.
Random weights (nothing is downloaded; a weight the library initialises to zeros, as torchvision's ViT head,
is drawn from N(0, 0.02^2) so that outputs can be compared), 1000 classes, the smallest input of 64, 70,
96, 112, 128, 224 at which the original runs. Rows are written as they come (each update re-reads the CSV
under a lock, so a second run on the same directory, e.g. a `--redo`, loses nothing); a re-run resumes and
tries timeouts again; `--redo` runs only the named models, again. The Markdown keeps every run's command
and machine state.

    python benchmarks/model_coverage.py --out results [--timeout 180] [--tools planner,tp] [--only resnet]
        [--redo torchvision:convnext_tiny,swin_t]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import machine_state  # noqa: E402

from profilers.files import locked, replacing  # noqa: E402

SIZES = (64, 70, 96, 112, 128, 224)
TIMM = (
    "resnet18",
    "resnext26ts",
    "res2net50_26w_4s",
    "cspresnet50",
    "dpn68",
    "dla34",
    "densenet121",
    "mobilenetv3_large_100",
    "mobilenetv4_conv_small",
    "efficientnet_b0",
    "mixnet_s",
    "mnasnet_100",
    "ghostnet_100",
    "lcnet_050",
    "rexnet_100",
    "regnetx_002",
    "regnety_002",
    "repvgg_a0",
    "convnext_atto",
    "edgenext_xx_small",
    "mobilevit_xxs",
    "vit_tiny_patch16_224",
    "deit_tiny_patch16_224",
)
PLANNER_COLUMNS = [
    "converted",
    "full_width_diff",
    "output_max",
    "onnx_0.5_diff",
    "macs_1.0",
    "macs_0.5",
    "convert_s",
    "planner_error",
]
TP_COLUMNS = ["tp_pruned", "tp_macs_before", "tp_macs_after", "tp_s", "tp_error"]
MEMORY_VARIABLE, DEFAULT_MEMORY_GIB = "MODEL_COVERAGE_MEMORY_GIB", 8.0  # a worker's address-space cap
LOCK = ".model_coverage.lock"  # in OUT: serialises the updates of two runs (e.g. a --redo beside a run)


def sources() -> list[str]:
    from planner.models.sources import import_torchvision

    torchvision = import_torchvision()
    names = torchvision.models.list_models(module=torchvision.models)
    return [f"torchvision:{n}" for n in names] + [f"timm:{n}" for n in TIMM]


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:240]


def _smallest(source: str):
    """The original network and an input at the smallest size it runs at."""
    import torch

    from planner.models.sources import load_source

    last = None
    for size in SIZES:
        try:
            torch.manual_seed(0)
            model = load_source(source, input_size=size)
            with torch.no_grad():  # a zero-initialised weight (torchvision ViT's head) would zero the output
                for weight in model.parameters():
                    if weight.dim() >= 2 and not weight.any():
                        weight.normal_(std=0.02)
            x = torch.randn(1, 3, size, size)
            with torch.no_grad():
                model(x)
            return model, x
        except Exception as error:  # the size is too small for this network: try the next
            last = error
    raise RuntimeError(f"runs at none of {SIZES}: {_reason(last)}")


def _macs(model, x) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() // 2


def run_planner(source: str) -> dict:
    import numpy as np
    import onnxruntime as ort
    import torch

    from planner.models.convert import slimmable
    from planner.nn.counting import count
    from planner.nn.export import export_onnx

    model, x = _smallest(source)
    row: dict = {"input": x.shape[-1]}
    original = copy.deepcopy(model).eval()
    start = time.perf_counter()
    try:
        net = slimmable(model, x, widths=(0.5, 1.0)).eval()
    except Exception as error:
        return {**row, "converted": False, "planner_error": _reason(error)}
    row.update(converted=True, convert_s=round(time.perf_counter() - start, 2))
    with torch.no_grad():
        net.set_width(1.0)
        expected = original(x)
        row["full_width_diff"] = float((net(x) - expected).abs().max())
        row["output_max"] = float(expected.abs().max())  # random weights: some outputs are huge
        try:
            row["macs_1.0"] = count(net, net.config(1.0)).macs
            row["macs_0.5"] = count(net, net.config(0.5)).macs
        except Exception as error:
            row["planner_error"] = f"count: {_reason(error)}"
        try:
            config = net.config(0.5)
            with tempfile.TemporaryDirectory() as tmp:
                path = export_onnx(net, config, Path(tmp) / "half.onnx")
                session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
            net.set_config(config)
            row["onnx_0.5_diff"] = float(np.abs(got - net(x).numpy()).max())
        except Exception as error:
            row["planner_error"] = f"export 0.5: {_reason(error)}"
    return row


def run_tp(source: str) -> dict:
    import torch
    import torch_pruning as tp
    from torch import nn

    model, x = _smallest(source)
    row: dict = {"input": x.shape[-1], "tp_macs_before": _macs(model, x)}
    with torch.no_grad():
        classes = model(x).shape[-1]
    kept = [
        m
        for m in model.modules()
        if (isinstance(m, nn.Linear) and m.out_features == classes)
        or (isinstance(m, nn.Conv2d) and m.out_channels == classes)
    ]
    start = time.perf_counter()
    try:
        pruner = tp.pruner.MagnitudePruner(
            model,
            x,
            importance=tp.importance.MagnitudeImportance(p=2),
            pruning_ratio=0.5,
            ignored_layers=kept,
        )
        pruner.step()
        with torch.no_grad():
            out = model(x)
        if out.shape[-1] != classes:
            raise RuntimeError(f"pruned network gives {out.shape[-1]} outputs, not {classes}")
    except Exception as error:
        return {**row, "tp_pruned": False, "tp_error": _reason(error)}
    row.update(tp_pruned=True, tp_s=round(time.perf_counter() - start, 2), tp_macs_after=_macs(model, x))
    return row


def _worker(tool: str, source: str) -> None:
    """One tool on one model, under a memory cap: on a shared machine a model that needs more (Torch-
    Pruning took 19 GB on swin_v2_t) fails here with its reason instead of pushing other jobs out."""
    gib = float(os.environ.get(MEMORY_VARIABLE, DEFAULT_MEMORY_GIB))
    resource.setrlimit(resource.RLIMIT_AS, (int(gib * 2**30), int(gib * 2**30)))
    import torch

    torch.set_num_threads(1)
    try:
        row = run_planner(source) if tool == "planner" else run_tp(source)
    except Exception as error:
        column = "planner_error" if tool == "planner" else "tp_error"
        row = {column: _reason(error), ("converted" if tool == "planner" else "tp_pruned"): False}
    for key in ("planner_error", "tp_error"):
        if isinstance(error := row.get(key), str) and ("MemoryError" in error or "allocate memory" in error):
            row[key] = f"over the {gib:g} GiB memory cap: {error}"[:240]
    print("ROW " + json.dumps(row))


def _in_subprocess(tool: str, source: str, timeout: float, memory_gib: float = DEFAULT_MEMORY_GIB) -> dict:
    """The worker's row; on a timeout its whole process group is killed (a child holding the output
    pipes would otherwise keep the runner waiting past the limit)."""
    command = [sys.executable, __file__, "--worker", tool, source]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", MEMORY_VARIABLE: f"{memory_gib:g}"}
    flag, error = ("converted", "planner_error") if tool == "planner" else ("tp_pruned", "tp_error")
    start = time.perf_counter()
    worker = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    try:
        stdout, stderr = worker.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.communicate()
        return {flag: False, error: f"timeout after {timeout:g} s"}
    finally:
        if worker.poll() is None:  # the runner itself is interrupted: take the worker down with it
            os.killpg(worker.pid, signal.SIGKILL)
    for line in stdout.splitlines():
        if line.startswith("ROW "):
            return json.loads(line[4:])
    tail = (stderr.strip().splitlines() or ["no output"])[-1][:200]
    return {
        flag: False,
        error: f"worker died (rc {worker.returncode}, {time.perf_counter() - start:.0f} s): {tail}",
    }


def _load(path: Path) -> pd.DataFrame:
    if not path.is_file():
        return pd.DataFrame(columns=["source", "input", *PLANNER_COLUMNS, *TP_COLUMNS])
    table = pd.read_csv(path)
    for flag, error in (("converted", "planner_error"), ("tp_pruned", "tp_error")):
        stale = table[flag].map(_yes) & table[error].astype(str).str.startswith("timeout")
        table.loc[stale, error] = None  # a retry succeeded after an earlier timeout
    return table


def _done(table: pd.DataFrame, source: str, tool: str) -> bool:
    """A model is done for a tool once it has a result; a timeout (a busy machine) is tried again."""
    rows = table[table["source"] == source]
    column, error = ("converted", "planner_error") if tool == "planner" else ("tp_pruned", "tp_error")
    if not len(rows) or pd.isna(rows.iloc[0][column]):
        return False
    return not str(rows.iloc[0][error]).startswith("timeout")


def _store(source: str, row: dict, path: Path) -> None:
    """Put one tool's result into the CSV as it is on disk now (another run may have written to it)."""
    with locked(path.parent / LOCK):
        table = _load(path)
        if not (table["source"] == source).any():
            table = pd.concat([table, pd.DataFrame([{"source": source}])], ignore_index=True)
        index = table.index[table["source"] == source][0]
        columns = PLANNER_COLUMNS if any(key in PLANNER_COLUMNS for key in row) else TP_COLUMNS
        for key in columns:  # a retry replaces the tool's whole result
            if key in table.columns:
                table[key] = table[key].astype(object)
                table.at[index, key] = None
        for key, value in row.items():
            if key not in table.columns:
                table[key] = None
            table[key] = table[key].astype(object)
            table.at[index, key] = value
        with replacing(path) as tmp:
            table.to_csv(tmp, index=False)


def _now() -> str:
    """To the second: a run's log entry is found by its start time (two runs may start in one minute)."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())


def _runs(path: Path, tag: str, lines: list[str]) -> list[str]:
    """The run log of the Markdown at `path` with this run's entry (first line starts with `tag`) put in or
    replaced: every run that wrote to the table keeps its command and machine state."""
    old = path.read_text().splitlines() if path.is_file() else []
    start = next((i + 1 for i, line in enumerate(old) if line.startswith(("Machine", "Runs"))), len(old))
    entries: list[list[str]] = []
    for line in old[start:]:
        if not line.startswith(("- ", "  - ")):
            break
        if line.startswith("- "):
            entries.append([line])
        elif entries:
            entries[-1].append(line)
    entries = [e for e in entries if not e[0].startswith(f"- {tag}")] + ([lines] if lines else [])
    entries.sort(key=lambda entry: (entry[0][2:3].isdigit(), entry[0]))  # undated first, then by start
    return [line for entry in entries for line in entry]


def _yes(value) -> bool:
    return str(value).lower() == "true"


def write_markdown(
    table: pd.DataFrame,
    path: Path,
    runs: list[str],
    timeout: float,
    listed: list[str],
    memory_gib: float = DEFAULT_MEMORY_GIB,
) -> None:
    def count(prefix: str, column: str) -> str:
        rows = table[table["source"].str.startswith(prefix)]
        tried = rows[column].notna().sum()
        total = sum(source.startswith(prefix) for source in listed)
        return f"{sum(_yes(v) for v in rows[column])} of {tried} tried, {total} listed"

    lines = [
        "# Model coverage: planner's conversion beside Torch-Pruning",
        "",
        "Random weights (a weight initialised to zeros, as torchvision ViT's head, drawn from N(0, 0.02^2)), "
        f"1000 classes, batch 1, one subprocess per model and tool, {timeout:g} s and "
        f"{memory_gib:g} GiB of address space each, torch on one thread. Input: the smallest of 64, 70, 96, "
        "112, 128, 224 at which the original runs.",
        "",
        "Runs, each resuming the table the one before left (the command, its niceness, the machine: 2 cores "
        "shared with other sessions' jobs, so times are not quiet-machine figures):",
        *runs,
        "",
        "| | planner converted | Torch-Pruning 50% pruned |",
        "|---|---|---|",
        f"| torchvision | {count('torchvision:', 'converted')} | {count('torchvision:', 'tp_pruned')} |",
        f"| timm | {count('timm:', 'converted')} | {count('timm:', 'tp_pruned')} |",
        "",
        "full = max abs difference of the converted network at full width from the original (eval mode), "
        "max out = the original's largest output (random weights make some huge: compare full to it); "
        "onnx 0.5 = max abs difference of the 0.5 width's ONNX in onnxruntime from the slimmable network "
        "at 0.5; MACs in millions at the input size: planner's count of the converted network (MMACs: "
        "convs, linear layers at every position they apply to, average pooling, found by hooking modules) "
        "beside torch's FlopCounterMode on the original (TP MMACs before; it also counts matrix products). "
        "Where they differ, planner's count leaves out work that is no module call: attention's matrix "
        "products (MaxViT, Swin, ViT) and projections that call F.linear with a module's weights (the qkv "
        "and output projections of torchvision's Swin, nn.MultiheadAttention's).",
        "",
        "| model | input | converted | full | max out | onnx 0.5 | MMACs 1.0 | MMACs 0.5 | convert s "
        "| planner failure "
        "| TP pruned | TP MMACs before | TP MMACs after | TP s | TP failure |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(value, scale: float = 1.0, digits: int = 1) -> str:
        """A number scaled and rounded (digits=0: scientific), a flag or a failure reason."""
        if value is None or (isinstance(value, float) and pd.isna(value)) or value == "":
            return ""
        try:
            number = float(value) / scale
        except (TypeError, ValueError):
            return str(value).replace("|", "/")
        if isinstance(value, bool) or str(value) in ("True", "False"):
            return "yes" if _yes(value) else "no"
        if digits == 0:
            return f"{number:.1e}"
        return f"{number:.{digits}f}"

    for _, r in table.iterrows():
        lines.append(
            f"| {r['source']} | {'' if pd.isna(r.get('input')) else int(float(r['input']))} "
            f"| {cell(r.get('converted'))} | {cell(r.get('full_width_diff'), digits=0)} "
            f"| {cell(r.get('output_max'), digits=0)} "
            f"| {cell(r.get('onnx_0.5_diff'), digits=0)} | {cell(r.get('macs_1.0'), 1e6)} "
            f"| {cell(r.get('macs_0.5'), 1e6)} | {cell(r.get('convert_s'))} | {cell(r.get('planner_error'))} "
            f"| {cell(r.get('tp_pruned'))} | {cell(r.get('tp_macs_before'), 1e6)} "
            f"| {cell(r.get('tp_macs_after'), 1e6)} | {cell(r.get('tp_s'))} | {cell(r.get('tp_error'))} |"
        )
    with replacing(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--timeout", type=float, default=180.0)
    parser.add_argument(
        "--memory-gib", type=float, default=DEFAULT_MEMORY_GIB, help="Each worker's memory cap."
    )
    parser.add_argument("--tools", default="planner,tp")
    parser.add_argument("--only", default="", help="Run only sources containing this text.")
    parser.add_argument(
        "--redo", default="", help="Run only these models, again (e.g. convnext_tiny,swin_t)."
    )
    parser.add_argument("--worker", nargs=2, metavar=("TOOL", "SOURCE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(*args.worker)
        return
    tools = [t for t in args.tools.split(",") if t]
    csv, md = args.out / "model_coverage.csv", args.out / "model_coverage.md"
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/model_coverage.py " + shlex.join(sys.argv[1:])
    tag = _now()
    head = f"- {tag}: `{command}` at niceness {os.nice(0)}; start: {machine_state()}"
    redo = {name for name in args.redo.split(",") if name}
    listed = sources()
    unknown = sorted(redo - set(listed) - {s.partition(":")[2] for s in listed})
    if unknown:
        parser.error(f"--redo: not listed: {', '.join(unknown)}")

    def publish(last: str) -> None:
        with locked(args.out / LOCK):
            runs = _runs(md, tag, [head, f"  - {last}"])
            write_markdown(_load(csv), md, runs, args.timeout, listed, args.memory_gib)

    for source in listed:
        if args.only and args.only not in source:
            continue
        again = source in redo or source.partition(":")[2] in redo
        if redo and not again:
            continue
        for tool in tools:
            if not again and _done(_load(csv), source, tool):
                continue
            row = _in_subprocess(tool, source, args.timeout, args.memory_gib)
            _store(source, row, csv)
            print(source, tool, json.dumps(row), flush=True)
            publish(f"running at {_now()} ({source} {tool} just done): {machine_state()}")
    publish(f"end {_now()}: {machine_state()}")


if __name__ == "__main__":
    main()
