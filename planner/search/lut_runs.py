"""Building and checking latency tables on a target: per-layer measurements, whole configurations measured
beside the full width (so that the machine's drift cancels), the calibration fit and the check."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from planner.errors import PlannerError
from planner.measure.targets import Target
from planner.models.base import SlimmableNetwork
from planner.models.space import calibration_widths, random_configs
from planner.search.layers import DEFAULT_POINTS, LayerOp, layer_ops, model_fingerprint, write_layer_onnx
from planner.search.lut import (
    METRIC,
    Calibration,
    Entry,
    LatencyTable,
    fit_calibration,
    target_identity,
    work_dir,
)
from planner.widths import WidthConfig
from profilers.jobs import Job, Settings

# Per-layer measurements are short and many: fewer queries and a looser interval than a whole model.
LAYER_SETTINGS = Settings(
    ci_rel=0.05, min_queries=32, max_seconds=3.0, warmup_s=0.2, burst_size=64, burst_seconds=0.1
)
END_TO_END_SETTINGS = Settings(ci_rel=0.03, min_queries=48, max_seconds=10.0, warmup_s=0.5)
# Jobs measured group after group beside an anchor see the host in different states. This host switches,
# unseen in /proc, between speeds that last minutes (the full width at 1.8-1.9, 2.1-2.2 or 2.7-3.2 ms, others'
# CPU 0.00-0.03 cores), within a group as well as between groups, and in the slow ones the small
# configurations slow more, so the paired ratios do not cancel it: a quiet check scored 100% within 10% on its
# groups in the fast state and 54% on those in the slow one (results/legr_lut_error_spanning_steady.md).
# Nothing makes a machine faster than undisturbed, so a round counts only when the anchor's burst in it ran
# within STEADY_BAND of the anchor's fastest median in any group. Replayed on the raw rows of eight quiet
# checks, this scored as well or better in every one (75% -> 96% on the worst); beside a spinner, where every
# round is slow alike, 67% -> 62% and 46% -> 62% (results/lut_rounds_replay.md). Round medians move 5-10% on a
# steady host; the slow states are 50-70% slower. A group in which a job shared fewer than STEADY_ROUNDS such
# rounds with the anchor is measured again, at most GROUP_RETRIES times.
STEADY_BAND = 0.15
STEADY_ROUNDS = 3
GROUP_RETRIES = 2
Log = Callable[[str], None]


def measure_layers(
    ops: Sequence[LayerOp],
    target: Target,
    model_name: str,
    directory: Path,
    settings: Settings = LAYER_SETTINGS,
) -> tuple[dict[str, Entry], pd.DataFrame]:
    """Measure each distinct layer shape at its grid points on the target; rows land in `directory`.

    The host's speed moves between groups of layer jobs as it does between groups of whole configurations,
    so layers are measured as those are (`measure_beside_anchor`): every group beside the layer with the
    most weights, which the profiler makes each group's reference. Returns the entries and the rows of the
    groups kept."""
    from profilers.modelfile import ModelFile

    layers_dir = directory / "layers"
    layers_dir.mkdir(parents=True, exist_ok=True)
    unique = {op.signature: op for op in ops}
    jobs = []
    for signature, op in unique.items():
        for cin, cout in op.grid():
            onnx = write_layer_onnx(op, cin, cout, layers_dir / f"{signature}-{cin}x{cout}.onnx")
            jobs.append(
                Job(
                    onnx,
                    target.backend,
                    target.device,
                    target.precision,
                    target.threads,
                    target.batch,
                    metadata={
                        "model": f"{model_name}:layer",
                        "config_id": f"{signature}-{cin}x{cout}",
                        "target": target.name,
                    },
                )
            )
    # The first of the heaviest, as the profiler picks a group's reference.
    anchor = max(jobs, key=lambda job: ModelFile.inspect(job.onnx, job.batch).weight_bytes)
    others = [job for job in jobs if job is not anchor]
    rows = measure_beside_anchor(anchor, others, directory / "layers-anchored", settings)
    anchor_id = anchor.identity()["config_id"]
    measured = anchored_latency(rows, anchor_id, f"measuring the reference layer {anchor_id} failed")
    latency = dict(zip(measured["config_id"], measured["anchored_ms"], strict=True))
    entries = {}
    for signature, op in unique.items():
        missing = [
            f"{signature}-{cin}x{cout}"
            for cin, cout in op.grid()
            if f"{signature}-{cin}x{cout}" not in latency
        ]
        if missing:
            raise PlannerError(f"measuring layer {op.path} failed ({_first_error(rows, missing[0])})")
        if op.depthwise:
            ms = np.array([[latency[f"{signature}-{c}x{c}"] for c in op.out_axis]])
        else:
            ms = np.array([[latency[f"{signature}-{i}x{o}"] for o in op.out_axis] for i in op.in_axis])
        entries[signature] = Entry(op.in_axis, op.out_axis, ms, op.depthwise)
    return entries, rows


def _ok_rows(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[rows["status"] == "ok"]


def _first_error(rows: pd.DataFrame, config_id: str) -> str:
    failed = rows[rows["config_id"] == config_id]
    return str(failed["error"].iloc[0]) if len(failed) else "no row"


def measure_configs(
    model: SlimmableNetwork,
    configs: Sequence[WidthConfig],
    target: Target,
    out_dir: Path,
    settings: Settings = END_TO_END_SETTINGS,
) -> dict[str, float]:
    """End-to-end latency (the table's metric) of whole configurations, exported and measured as `planner
    profile` does; the rows land in OUT like any other (a configuration OUT already holds is not re-measured).
    """
    from planner.measure.profile import profile_configs

    rows = profile_configs(model, list(configs), [target], out_dir, settings=settings)
    measured = _ok_rows(rows)
    return dict(zip(measured["config_id"], measured[METRIC].astype(float), strict=True))


def measure_anchored(
    model: SlimmableNetwork,
    configs: Sequence[WidthConfig],
    target: Target,
    out_dir: Path,
    settings: Settings = END_TO_END_SETTINGS,
) -> pd.DataFrame:
    """End-to-end latency of whole configurations, each measured beside the full width
    (`measure_beside_anchor`); `anchored_latency`'s columns, the full width's row first. Rows land in the
    table's work dir."""
    anchor_job, *jobs = anchored_jobs(model, configs, target, out_dir)
    directory = work_dir(out_dir, target.name, model.name) / "anchored"
    rows = measure_beside_anchor(anchor_job, jobs, directory, settings)
    return anchored_latency(rows, anchor_job.identity()["config_id"], _full_width_failed(model, target))


def anchored_jobs(
    model: SlimmableNetwork, configs: Sequence[WidthConfig], target: Target, out_dir: Path
) -> list[Job]:
    """The full width's profiler job, then one for every other configuration, exported for the target."""
    from planner.measure.artifacts import export_artifacts, make_jobs

    anchor = model.config(model.widths[-1])
    others = list({c.id: c for c in configs if c.id != anchor.id}.values())
    return make_jobs(export_artifacts(model, [anchor, *others], out_dir, target), target)


def _full_width_failed(model: SlimmableNetwork, target: Target) -> str:
    return f"measuring {model.name} at its full width failed on {target.name}"


def measure_beside_anchor(
    anchor: Job, jobs: Sequence[Job], directory: Path, settings: Settings
) -> pd.DataFrame:
    """Jobs measured group after group, each group beside `anchor`, which must weigh the most so that the
    profiler makes it every group's reference; the rows of every try of every group, with `group` (the
    try's directory) and `tries` (how often its group was measured).

    The profiler interleaves at most `max_workers` jobs, so a long list is measured group after group, and a
    slow minute moves one group's medians alike (measured here: one group of 8 ran 40% slow in a
    50-configuration check). The paired per-round ratios to the anchor cancel a drift that slows every job
    alike, not one that slows small jobs more, so only the rounds in which the host ran at its fastest count
    (`anchored_latency`), and a group with too few of them is measured again (`steady_groups`). Each set of
    jobs and each try has its own directory under `directory`: a re-run resumes it, and another set never
    shares its anchor row.
    """
    from profilers.scheduler import run_jobs

    size = max(1, settings.max_workers - 1)
    chunks = [jobs[start : start + size] for start in range(0, max(1, len(jobs)), size)]

    def measure(index: int, attempt: int) -> pd.DataFrame:
        chunk = chunks[index]
        digest = hashlib.sha256(" ".join(j.identity()["config_id"] for j in chunk).encode()).hexdigest()
        name = digest[:12] + (f"-retry{attempt}" if attempt else "")
        return run_jobs([anchor, *chunk], directory / name, settings).assign(group=name)

    anchor_id = anchor.identity()["config_id"]
    groups = steady_groups([measure(index, 0) for index in range(len(chunks))], anchor_id, measure)
    return pd.concat(groups, ignore_index=True)


def steady_groups(
    groups: list[pd.DataFrame],
    anchor_id: str,
    measure: Callable[[int, int], pd.DataFrame],
    band: float = STEADY_BAND,
    retries: int = GROUP_RETRIES,
) -> list[pd.DataFrame]:
    """Each group's rows over all its tries, with `tries`: a group in which a job shared fewer than
    STEADY_ROUNDS steady rounds with the anchor (`steady_ratios`) is measured again by
    `measure(index, attempt)`, up to `retries` times. Rows carry `group`, the try they came from."""
    tried = [[rows] for rows in groups]
    for index, group_tries in enumerate(tried):
        while len(group_tries) <= retries:
            everything = pd.concat([rows for tries in tried for rows in tries], ignore_index=True)
            ceiling = _steady_ceiling(everything, anchor_id, band)
            counts = steady_ratios(pd.concat(group_tries, ignore_index=True), anchor_id, ceiling)
            if counts.empty or counts.groupby("config_id")["steady_rounds"].max().min() >= STEADY_ROUNDS:
                break
            group_tries.append(measure(index, len(group_tries)))
    return [pd.concat(tries, ignore_index=True).assign(tries=len(tries)) for tries in tried]


def _steady_ceiling(rows: pd.DataFrame, anchor_id: str, band: float) -> float:
    """The slowest burst of the anchor that still counts: `band` above its fastest median in any try."""
    anchors = _ok_rows(rows)
    anchors = anchors[anchors["config_id"] == anchor_id]
    return float(anchors["p50_ms"].min()) * (1 + band) if len(anchors) else math.inf


def _rounds(row: pd.Series) -> tuple[dict[int, float], dict[int, float]]:
    """A row's burst medians and minima by round (empty for a row without them)."""
    try:
        data = json.loads(row["round_ms"])
        return dict(zip(data["round"], data["median"], strict=True)), dict(
            zip(data["round"], data["min"], strict=True)
        )
    except (KeyError, TypeError, ValueError):
        return {}, {}


def steady_ratios(rows: pd.DataFrame, anchor_id: str, ceiling_ms: float) -> pd.DataFrame:
    """For every measured job beside the anchor: the rounds it shared with its try's anchor while the anchor's
    burst median stayed within `ceiling_ms` (steady_rounds), and its median ratio of burst minima to the
    anchor's over them (steady_ratio; NaN without such rounds). Columns: config_id, group, steady_rounds,
    steady_ratio, and the row's own index."""
    ok = _ok_rows(rows)
    anchors = {row["group"]: _rounds(row) for _, row in ok[ok["config_id"] == anchor_id].iterrows()}
    found = []
    for index, row in ok[ok["config_id"] != anchor_id].iterrows():
        anchor_medians, anchor_minima = anchors.get(row["group"], ({}, {}))
        _, minima = _rounds(row)
        steady = [r for r in minima if r in anchor_minima and anchor_medians[r] <= ceiling_ms]
        ratios = [minima[r] / anchor_minima[r] for r in steady]
        found.append(
            {
                "row": index,
                "config_id": row["config_id"],
                "group": row["group"],
                "steady_rounds": len(steady),
                "steady_ratio": float(np.median(ratios)) if ratios else math.nan,
            }
        )
    columns = ["row", "config_id", "group", "steady_rounds", "steady_ratio"]
    return pd.DataFrame(found, columns=columns)


def anchored_latency(
    rows: pd.DataFrame, anchor_id: str, failure: str, band: float = STEADY_BAND
) -> pd.DataFrame:
    """Each job's latency on the host at its fastest: its ratio to the anchor over the steady rounds of its
    try with the most of them, times the anchor's median burst over all steady rounds.

    A job whose tries had no steady round keeps the profiler's ratio over all rounds of its try whose anchor
    ran fastest. Columns: config_id, p50_ms (as measured), anchored_ms, contended, tries (how often its group
    was measured), steady_rounds; the first row is the anchor's (p50_ms its median p50 over the tries,
    contended if it was in any). A job without a ratio to the anchor (its group's anchor failed) is left out;
    `failure` is the error when every anchor failed.
    """
    ok = _ok_rows(rows)
    anchor_rows = ok[ok["config_id"] == anchor_id]
    if anchor_rows.empty:
        raise PlannerError(failure)
    ceiling = _steady_ceiling(ok, anchor_id, band)
    steady_bursts = [
        median
        for _, row in anchor_rows.iterrows()
        for median in _rounds(row)[0].values()
        if median <= ceiling
    ]
    level = float(np.median(steady_bursts)) if steady_bursts else float(anchor_rows["p50_ms"].min())
    anchor_speed = dict(zip(anchor_rows["group"], anchor_rows["p50_ms"], strict=True))
    ratios = steady_ratios(ok, anchor_id, ceiling)
    ratios["anchor_ms"] = ratios["group"].map(anchor_speed)
    ratios = ratios.sort_values(["steady_rounds", "anchor_ms"], ascending=[False, True], kind="stable")
    counted = ratios.drop_duplicates("config_id").sort_values("row").set_index("row")  # in measured order
    chosen = ok.loc[counted.index]
    ratio = counted["steady_ratio"].where(counted["steady_rounds"] > 0, chosen["ratio_to_ref"])
    paired = chosen.assign(ratio=ratio.astype(float), steady_rounds=counted["steady_rounds"])
    paired = paired[(paired["ref_config_id"] == anchor_id) & paired["ratio"].notna()]
    return pd.DataFrame(
        {
            "config_id": [anchor_id, *paired["config_id"]],
            "p50_ms": [float(anchor_rows["p50_ms"].median()), *paired["p50_ms"].astype(float)],
            "anchored_ms": [level, *(paired["ratio"] * level)],
            "contended": [bool(anchor_rows["contended"].any()), *paired["contended"].astype(bool)],
            "tries": [int(anchor_rows["tries"].max()), *paired["tries"].astype(int)],
            "steady_rounds": [len(steady_bursts), *paired["steady_rounds"].astype(int)],
        }
    )


def build_table(
    model: SlimmableNetwork,
    target: Target,
    out_dir: str | Path,
    points: int = DEFAULT_POINTS,
    calibration_configs: Sequence[WidthConfig] | None = None,
    granularity: int | None = None,
    layer_settings: Settings = LAYER_SETTINGS,
    end_to_end_settings: Settings = END_TO_END_SETTINGS,
    log: Log | None = None,
    calibration_samples: int = 2,
) -> LatencyTable:
    """Measure the layers of `model` on `target`, calibrate on end-to-end runs, return the table.

    The calibration configurations default to `calibration_widths` plus `calibration_samples` random
    per-layer ones.
    """
    say = log or (lambda line: None)
    if target.is_remote:
        raise PlannerError(
            f"target {target.name} is remote; latency tables are built on local targets for now"
        )
    if points < 2:
        raise PlannerError(f"a latency table needs at least 2 grid points per layer, got {points}")
    if calibration_samples < 0:
        raise PlannerError(f"--calibration-samples must be >= 0, got {calibration_samples}")
    directory = work_dir(out_dir, target.name, model.name)
    ops = layer_ops(model, points, granularity)
    unique = {op.signature: op for op in ops}
    points_total = sum(len(op.grid()) for op in unique.values())
    if calibration_configs is None:
        rng = np.random.default_rng(0)
        calibration_configs = [model.config(w) for w in calibration_widths(model)] + random_configs(
            model, calibration_samples, rng, granularity
        )
    # The calibration is one group beside the full width, so a slow spell of the host during it has no
    # faster group to be told from (a build whose full width ran at 3.18 ms, against 1.85-1.95 ms a minute
    # later, fitted scale 1.39 and scored 50%, results/legr_lut_error_spanning_rounds4.md). It is measured
    # before and after the layers, minutes apart, and each configuration's steady rounds are counted against
    # the faster of the two.
    say(f"measuring {len(calibration_configs)} whole configurations to calibrate the sum, before the layers")
    anchor_job, *jobs = anchored_jobs(model, calibration_configs, target, Path(out_dir))
    before = measure_beside_anchor(anchor_job, jobs, directory / "anchored", end_to_end_settings)
    say(f"measuring {len(unique)} distinct layers of {len(ops)} at {points_total} grid points")
    entries, rows = measure_layers(ops, target, model.name, directory, layer_settings)
    say("measuring the whole configurations again, after the layers")
    after = measure_beside_anchor(anchor_job, jobs, directory / "anchored-after", end_to_end_settings)
    both = pd.concat([before, after.assign(group="after/" + after["group"])], ignore_index=True)
    anchored = anchored_latency(both, anchor_job.identity()["config_id"], _full_width_failed(model, target))
    layers = tuple(
        {
            "path": op.path,
            "entry": op.signature,
            "in_group": op.in_group,
            "out_group": op.out_group,
            "in_fixed": op.in_axis[0],
            "out_fixed": op.out_axis[0],
        }
        for op in ops
    )
    ok = _ok_rows(rows)
    table = LatencyTable(
        target=target_identity(target),
        model=model.name,
        fingerprint=model_fingerprint(model),
        input_shape=(1, model.in_channels, model.input_size, model.input_size),
        runtime=str(ok["env_runtime"].iloc[0]) if len(ok) else target.backend,
        runtime_version=str(ok["env_runtime_version"].iloc[0]) if len(ok) else "",
        layers=layers,
        entries=entries,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    measured = dict(zip(anchored["config_id"], anchored["anchored_ms"], strict=True))
    anchor_ms = float(anchored["anchored_ms"].iloc[0])
    used = [c for c in calibration_configs if c.id in measured]
    if not used:
        raise PlannerError(f"no end-to-end measurement of {model.name} succeeded on {target.name}")
    _warn_busy(say, ok, anchored)
    sums = [table.layer_sum_ms(c.channels) for c in used]
    scale, offset = fit_calibration(sums, [measured[c.id] for c in used])
    points_used = tuple(
        {"config_id": c.id, "label": c.label, "layer_sum_ms": s, "measured_ms": measured[c.id]}
        for c, s in zip(used, sums, strict=True)
    )
    return replace(table, calibration=Calibration(scale, offset, points_used, anchor_ms))


def _warn_busy(say: Log, layer_rows: pd.DataFrame, anchored: pd.DataFrame) -> None:
    """One line when the table rests on measurements a busy machine took: a layer alone and the same layer
    inside a network slow down by different factors beside another process, so such a table mispredicts
    (built beside one spinner: 67% within +-10% against 96% on a quiet machine,
    results/legr_lut_error_spanning_busy1.md)."""
    busy_layers = int(layer_rows["contended"].fillna(False).astype(bool).sum()) if len(layer_rows) else 0
    busy_whole = int(anchored["contended"].sum())
    if busy_layers or busy_whole:
        say(
            f"warning: {busy_layers} of {len(layer_rows)} layer measurements and {busy_whole} of "
            f"{len(anchored)} whole-network runs were taken on a busy machine; a table built so mispredicts "
            "(67% within 10% beside one spinner, 96% quiet): build it again on a quiet machine "
            "(--wait-quiet waits for one)"
        )


def check_table(
    table: LatencyTable,
    model: SlimmableNetwork,
    target: Target,
    out_dir: str | Path,
    samples: int = 20,
    seed: int = 1,
    granularity: int | None = None,
    settings: Settings = END_TO_END_SETTINGS,
) -> pd.DataFrame:
    """Prediction against end-to-end measurement on random per-layer configurations.

    The table is first re-anchored (`LatencyTable.reanchored`) on the full width measured with them.
    Columns: config_id, predicted_ms (re-anchored), built_predicted_ms (the table as built), measured_ms
    (drift-corrected, see `measure_anchored`), p50_ms (as measured), full_width_ms (the full width now, the
    same in every row), error (relative, signed: predicted_ms against measured_ms).
    """
    if samples < 1:
        raise PlannerError(f"--samples must be at least 1, got {samples}")
    table.check(model, target)
    configs = random_configs(model, samples, np.random.default_rng(seed), granularity)
    measured = measure_anchored(model, configs, target, Path(out_dir), settings)
    full_width_ms = float(measured["anchored_ms"].iloc[0])
    now = table.reanchored(full_width_ms)
    measured = measured.set_index("config_id")
    rows = [
        {
            "config_id": c.id,
            "predicted_ms": now.predict_ms(c),
            "built_predicted_ms": table.predict_ms(c),
            "measured_ms": measured.loc[c.id, "anchored_ms"],
            "p50_ms": measured.loc[c.id, "p50_ms"],
            "full_width_ms": full_width_ms,
        }
        for c in configs
        if c.id in measured.index
    ]
    if not rows:
        raise PlannerError(f"no end-to-end measurement of {model.name} succeeded on {target.name}")
    frame = pd.DataFrame(rows)
    frame["error"] = frame["predicted_ms"] / frame["measured_ms"] - 1.0
    return frame


def speed_warning(table: LatencyTable, full_width_ms: float) -> str | None:
    """One line when the machine runs the full width at another speed than at the build (beyond the band
    inside which the LUT's rounds count as steady): the re-anchored predictions then err by width."""
    change = table.speed_change(full_width_ms)
    if change is None or abs(change) <= STEADY_BAND:
        return None
    built_ms = table.calibration.anchor_ms
    return (
        f"the full width ran at {full_width_ms:.3f} ms, {change:+.0%} against {built_ms:.3f} ms when the "
        "table was built; predictions are rescaled, but a machine whose speed changed does not change every "
        "width alike: check again when it runs as at the build, or build the table again"
    )
