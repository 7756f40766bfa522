"""The ladder runtime (profilers.ladder): controller decisions on a fake clock, refusing bad manifests,
and serving a real manifest of s_cnn_small on ONNX Runtime."""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time

import numpy as np
import pytest
from ladder_helpers import deploy_ladder

from profilers.errors import ProfilerError
from profilers.ladder import (
    Controller,
    ControllerSettings,
    Ladder,
    measure_memory,
    read_manifest,
    record_memory,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


SETTINGS = ControllerSettings(
    window_s=1.0, min_samples=5, down_dwell_s=0.3, up_dwell_s=2.0, headroom=0.8, check_every_s=0.0
)


def feed(controller: Controller, clock: FakeClock, latency_ms: float, count: int, step_s: float = 0.01):
    """`count` inferences of `latency_ms` on the current rung, `step_s` apart; the decisions made."""
    decisions = []
    for _ in range(count):
        clock.now += step_s
        decision = controller.observe(controller.current, latency_ms)
        if decision is not None:
            decisions.append(decision)
    return decisions


def test_controller_starts_on_the_widest_rung_that_fits_and_steps_down_under_load():
    clock = FakeClock()
    controller = Controller([1.0, 2.0, 4.0, 8.0], budget_ms=5.0, settings=SETTINGS, clock=clock)
    assert controller.current == 2  # 8 ms does not fit 5 ms
    assert feed(controller, clock, 4.2, 100) == []  # within the budget: stays, not enough headroom to go up
    clock.now += 1.0  # a window later, every inference is 2.1x slower (a window mixing both reads the
    decisions = []  # slow ones as waiting: see the tail test below)
    for _ in range(100):
        decisions += feed(controller, clock, 2.25 * controller.expected[controller.current], 1)
    # 9 ms on the 4-ms rung predicts 4.5 ms on the 2-ms rung: straight there, one decision
    assert [(d.source, d.target) for d in decisions] == [(2, 1)]
    assert "> budget 5.000 ms" in decisions[0].reason


def test_controller_waits_out_the_dwell_before_stepping_down_again():
    clock = FakeClock()
    controller = Controller([1.0, 2.0, 4.0], budget_ms=5.0, settings=SETTINGS, clock=clock)
    (first,) = feed(controller, clock, 6.0, 10)  # -> rung 1 (predicted 3 ms)
    assert controller.current == 1
    switched_at = first.at
    decisions = feed(controller, clock, 6.0, 100, step_s=0.005)  # still too slow on rung 1
    assert [(d.source, d.target) for d in decisions] == [(1, 0)]
    assert decisions[0].at - switched_at >= SETTINGS.down_dwell_s


def test_controller_steps_up_only_with_headroom_and_after_the_dwell():
    clock = FakeClock()
    controller = Controller([1.0, 2.0, 4.0], budget_ms=5.0, settings=SETTINGS, clock=clock, start=0)
    # a load that makes every rung 1.9x slower: 3.8 ms predicted on rung 1 is within 0.8 x 5 ms, up;
    # 7.6 ms on rung 2 is not, so it stays on rung 1
    decisions = []
    for _ in range(400):  # 4 s
        decisions += feed(controller, clock, 1.9 * controller.expected[controller.current], 1)
    assert [(d.source, d.target) for d in decisions] == [(0, 1)]
    switched_at = decisions[0].at
    # the load eases to 0.9x: rung 2 is predicted at 3.6 ms, but the step waits out the 2-s dwell
    decisions = feed(controller, clock, 0.9 * 2.0, 400)
    assert [(d.source, d.target) for d in decisions] == [(1, 2)]
    assert decisions[0].at - switched_at >= SETTINGS.up_dwell_s


def test_controller_hysteresis_does_not_oscillate_near_the_budget():
    clock = FakeClock()
    controller = Controller([2.0, 4.0], budget_ms=5.0, settings=SETTINGS, clock=clock)
    # 4.9 ms on rung 1 is within the budget; on rung 0 it would be 2.45 ms: stepping up would predict 4.9,
    # which is over the 4-ms headroom, so after one step down it stays down
    assert feed(controller, clock, 5.5, 50) and controller.current == 0
    assert feed(controller, clock, 2.45, 2000) == []


def test_a_tail_of_waiting_for_the_cpu_is_not_scaled_with_the_width():
    clock = FakeClock()
    controller = Controller([1.0, 2.0, 4.0], budget_ms=25.0, settings=SETTINGS, clock=clock, start=0)
    # every fifth inference waits 17 ms for a CPU: p90 18 ms, median 1 ms. Scaled by the width ratio the
    # next rung would take 36 ms; it takes 18 + 1 = 19 ms, within 0.8 x 25 ms: step up
    (up,) = [d for i in range(20) for d in feed(controller, clock, 18.0 if i % 5 == 0 else 1.0, 1)]
    assert (up.source, up.target) == (0, 1)
    # on the widest rung the same wait makes p90 30 ms: over the budget, and no narrower rung sheds the
    # wait, so it goes straight to the fastest
    controller = Controller([1.0, 2.0, 4.0], budget_ms=25.0, settings=SETTINGS, clock=clock, start=2)
    (down,) = [d for i in range(20) for d in feed(controller, clock, 30.0 if i % 5 == 0 else 4.0, 1)]
    assert (down.source, down.target) == (2, 0)


def test_the_compute_estimate_is_the_fastest_inference_seen():
    clock = FakeClock()
    controller = Controller([1.0, 2.0], budget_ms=5.0, settings=SETTINGS, clock=clock, start=0)
    controller.calibrate([1.0, 3.0])  # the wide rung's warm-up was slow (the device was busy)
    controller.current = 1
    feed(controller, clock, 2.0, 3)
    assert controller.scale == [1.0, 2.0]


def test_a_step_up_that_fails_is_retried_ever_later():
    clock = FakeClock()
    controller = Controller([1.0, 2.0], budget_ms=5.0, settings=SETTINGS, clock=clock, start=0)
    decisions = []
    for _ in range(8000):  # 80 s: 2 ms on the narrow rung predicts 4 ms on the wide one, which takes 8 ms
        decisions += feed(controller, clock, 2.0 if controller.current == 0 else 8.0, 1)
    ups = [d.at for d in decisions if d.target == 1]
    downs = [d.at for d in decisions if d.target == 0]
    waits = [up - down for down, up in zip(downs, ups[1:], strict=False)]
    assert waits == pytest.approx([4.0, 8.0, 16.0, 32.0], abs=0.05)  # 2 s dwell, doubled after each failure
    assert controller.backoff == SETTINGS.max_backoff


def test_a_step_up_that_holds_resets_the_backoff():
    clock = FakeClock()
    controller = Controller([1.0, 2.0], budget_ms=5.0, settings=SETTINGS, clock=clock, start=0)
    feed(controller, clock, 2.0, 10)  # up
    feed(controller, clock, 8.0, 40)  # down: the probe failed
    assert controller.backoff == 2.0
    feed(controller, clock, 2.0, 500)  # up again after 4 s
    feed(controller, clock, 3.0, 500)  # 3 ms on the wide rung: within the budget, it holds
    assert controller.current == 1 and controller.backoff == 1.0


def test_controller_ignores_inferences_from_the_previous_rung():
    clock = FakeClock()
    controller = Controller([1.0, 2.0], budget_ms=5.0, settings=SETTINGS, clock=clock)
    feed(controller, clock, 8.0, 10)
    assert controller.current == 0
    before = controller.window_stats()
    for _ in range(20):  # late results of the wide rung, still in flight during the switch
        assert controller.observe(1, 50.0) is None
    assert controller.window_stats() == before


def test_controller_on_the_fastest_rung_over_budget_says_so(caplog):
    clock = FakeClock()
    controller = Controller([1.0, 2.0], budget_ms=0.5, settings=SETTINGS, clock=clock)
    assert controller.budget_unmet and controller.current == 0
    with caplog.at_level(logging.WARNING, logger="profilers.ladder"):
        assert feed(controller, clock, 1.0, 50) == []
    assert controller.over_budget
    assert sum("exceeds the budget" in record.message for record in caplog.records) == 1


def test_controller_only_switches_to_allowed_rungs():
    clock = FakeClock()
    controller = Controller([1.0, 2.0, 4.0], budget_ms=5.0, settings=SETTINGS, clock=clock)
    for _ in range(20):
        clock.now += 0.01
        decision = controller.observe(2, 20.0, allowed=lambda index: index == 1)
        if decision:
            break
    assert decision.target == 1  # rung 0 is predicted to fit, but only rung 1 is loaded


# -- a real manifest ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """A cpu manifest of s_cnn_small (8x8) whose ladder is 0.25x -> 0.5x -> 0.75x (p90 1.2, 2.4, 3.6 ms)."""
    return deploy_ladder(tmp_path_factory.mktemp("ladder"))


@pytest.fixture
def copy(deployed, tmp_path):
    """A private copy of the deployment, to break."""
    return shutil.copytree(deployed, tmp_path / "cpu")


def test_memory_is_measured_and_recorded_in_a_manifest_that_still_validates(copy):
    from planner.deploy.manifest import load_manifest

    memory = measure_memory(copy, threads=1)
    assert memory["all_rungs_bytes"] > 0 and memory["widest_bytes"] > 0
    record_memory(copy, memory)
    assert read_manifest(copy)[0]["ladder_memory"]["all_rungs_bytes"] == memory["all_rungs_bytes"]
    assert load_manifest(copy)["ladder_memory"] == memory
    with pytest.raises(ProfilerError, match="use keep='neighbours'"):
        Ladder.from_manifest(copy, max_memory_bytes=1)


def test_a_real_ladder_serves_and_switches(deployed):
    settings = ControllerSettings(window_s=0.5, min_samples=5, down_dwell_s=0, up_dwell_s=0, check_every_s=0)
    # the rungs take microseconds here, far below the 3-ms budget: from 0.5x the controller steps up
    with Ladder.from_manifest(deployed, budget_ms=3.0, settings=settings, threads=1, start=1) as ladder:
        state = ladder.state()
        assert [rung["label"] for rung in state["rungs"]] == ["0.25x", "0.5x", "0.75x"]
        assert state["label"] == "0.5x" and state["loaded"] == ["0.25x", "0.5x", "0.75x"]
        # RSS growth in this process may be 0 where earlier sessions left the memory mapped (fresh
        # processes measure it: test_memory_is_measured_and_recorded_in_a_manifest_that_still_validates)
        assert state["memory_bytes"] >= 0 and all(rung["warm_ms"] > 0 for rung in state["rungs"])
        x = np.random.default_rng(0).random(ladder.input_shape, dtype=np.float32)
        y = ladder.infer(x)
        assert y.shape == (1, 10) and np.isfinite(y).all()
        deadline = time.monotonic() + 10  # a few ms on a quiet machine; this one is shared
        while not ladder.switches and time.monotonic() < deadline:
            ladder.infer(x)
        ladder.infer(x)
        state = ladder.state()
        switch = state["last_switches"][0]
        assert (switch["from"], switch["to"], switch["direction"]) == ("0.5x", "0.75x", "up")
        assert switch["to_first_inference_ms"] >= 0 and switch["first_inference_ms"] > 0
        assert state["served"]["0.75x"] >= 1
        json.dumps(state)  # plain data


def test_with_every_rung_loaded_it_starts_where_the_rungs_timed_here_fit(deployed):
    with Ladder.from_manifest(deployed, budget_ms=3.0, threads=1) as ladder:
        state = ladder.state()  # each rung takes microseconds here, far below the manifest's made-up ms
        assert state["label"] == "0.75x" and not state["budget_unmet"]


def test_the_same_input_gives_each_rung_its_own_output(deployed):
    outputs = []
    for index in range(3):
        with Ladder.from_manifest(deployed, rungs=[index], threads=1) as ladder:
            outputs.append(ladder.infer(np.ones(ladder.input_shape, dtype=np.float32)))
    assert not np.allclose(outputs[0], outputs[2])


def test_concurrent_callers_and_pinning(deployed):
    with Ladder.from_manifest(deployed, threads=1) as ladder:
        ladder.pin(0)
        x = np.zeros(ladder.input_shape, dtype=np.float32)
        served = []

        def call() -> None:
            for _ in range(50):
                served.append(ladder.serve(x).rung)

        threads = [threading.Thread(target=call) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert served == [0] * 200 and ladder.state()["served"]["0.25x"] == 200


def test_keep_neighbours_loads_only_the_neighbours(deployed):
    with Ladder.from_manifest(deployed, keep="neighbours", budget_ms=1.3, threads=1) as ladder:
        state = ladder.state()
        assert state["label"] == "0.25x" and state["loaded"] == ["0.25x", "0.5x"]


def test_a_budget_no_rung_meets_serves_the_fastest_and_says_so(deployed, caplog):
    with caplog.at_level(logging.WARNING, logger="profilers.ladder"):
        with Ladder.from_manifest(deployed, budget_ms=1e-4, threads=1) as ladder:  # 100 ns
            assert ladder.state()["budget_unmet"] and ladder.state()["label"] == "0.25x"
    assert any("no rung meets the budget" in record.message for record in caplog.records)


def test_an_openvino_ladder_serves_the_same_outputs(deployed, tmp_path):
    pytest.importorskip("openvino")
    openvino = deploy_ladder(tmp_path, "openvino-cpu")
    x = np.random.default_rng(1).random((1, 1, 8, 8), dtype=np.float32)
    with Ladder.from_manifest(openvino, threads=1) as served, Ladder.from_manifest(deployed) as ort:
        assert served.manifest["target"]["backend"] == "openvino" and served.state()["label"] == "0.75x"
        assert ort.state()["label"] == "0.75x"
        np.testing.assert_allclose(served.infer(x), ort.infer(x), rtol=1e-4, atol=1e-4)


def test_a_wrong_input_shape_is_refused(deployed):
    with Ladder.from_manifest(deployed, threads=1) as ladder:
        with pytest.raises(ProfilerError, match="input shape"):
            ladder.infer(np.zeros((1, 3, 8, 8), dtype=np.float32))


def _rung_file(directory, index=0):
    manifest = json.loads((directory / "manifest.json").read_text())
    return manifest, directory / manifest["ladder"][index]["artifact"]["files"][0]["path"]


def test_a_changed_artifact_is_refused(copy):
    _, artifact = _rung_file(copy, 1)
    artifact.write_bytes(artifact.read_bytes() + b"\0")
    with pytest.raises(ProfilerError, match="does not match its sha256"):
        Ladder.from_manifest(copy)


def test_a_missing_artifact_is_refused(copy):
    _, artifact = _rung_file(copy, 2)
    artifact.unlink()
    with pytest.raises(ProfilerError, match="is missing"):
        Ladder.from_manifest(copy)


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (lambda m: m["ladder"][0].pop("artifact"), "missing key 'ladder\\[0\\].artifact'"),
        (lambda m: m["budget"].update(max_latency_ms=-1), "key 'budget.max_latency_ms'"),
        (lambda m: m.update(schema_version=7), "schema_version 7"),
        (lambda m: m["ladder"][0]["artifact"]["files"][0].update(path="../../etc/passwd"), "leaves"),
    ],
)
def test_a_manifest_that_fails_its_schema_is_refused(copy, break_it, message):
    manifest, _ = _rung_file(copy)
    break_it(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ProfilerError, match=message):
        Ladder.from_manifest(copy)


def test_truncated_and_absent_manifests(copy, tmp_path):
    text = (copy / "manifest.json").read_text()
    (copy / "manifest.json").write_text(text[: len(text) // 2])
    with pytest.raises(ProfilerError, match="not valid JSON"):
        Ladder.from_manifest(copy)
    with pytest.raises(ProfilerError, match="does not exist: write one with planner manifest"):
        Ladder.from_manifest(tmp_path / "nowhere" / "manifest.json")


def test_a_runtime_that_is_not_installed_is_refused_before_loading(copy, monkeypatch):
    from profilers.backends.onnxruntime import OnnxRuntimeBackend

    monkeypatch.setattr(OnnxRuntimeBackend, "sdk_module", "onnxruntime_not_here")
    with pytest.raises(ProfilerError, match="onnxruntime_not_here is not installed"):
        Ladder.from_manifest(copy)


def test_a_rung_that_cannot_load_releases_the_others(copy, monkeypatch):
    from profilers.backends.onnxruntime import OnnxRuntimeSession

    released, activate, release = [], OnnxRuntimeSession.activate, OnnxRuntimeSession.release

    def failing(self):
        if "0.75x" in str(self.artifact):
            raise ProfilerError(f"onnxruntime cannot load {self.artifact}")
        activate(self)

    def recorded(self):  # really released too: a session left to the garbage collector crashed later tests
        released.append(self.artifact)
        release(self)

    monkeypatch.setattr(OnnxRuntimeSession, "activate", failing)
    monkeypatch.setattr(OnnxRuntimeSession, "release", recorded)
    with pytest.raises(ProfilerError, match="cannot load"):
        Ladder.from_manifest(copy, threads=1)
    assert len(released) == 3  # the two rungs that did load are closed again, and the one that failed
