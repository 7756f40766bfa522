"""planner: profile slimmable networks on devices and pick the width to ship.

The public API, one stage after another (see docs/ARCHITECTURE.md):

    model = planner.build_model("s_cnn_small", in_channels=1, num_classes=10, input_size=8)
    configs = planner.configurations(model)                   # every trained width
    rows = planner.profile_configs(model, configs, [planner.load_target("cpu")], "out")
    latency, accuracy = planner.read_tables("out")
    selection = planner.select_for_target(target, planner.budget_for(target, "20ms"), "out")

Names are imported lazily, so the torch-free stages (targets, tables, selection, manifests) work on an
install without torch, and `import planner` is cheap; `profilers` never imports torch.
"""

from importlib import import_module

_LAZY = {
    # models and configurations
    "SlimmableNetwork": "planner.models",
    "create_model": "planner.models",
    "list_models": "planner.models",
    "WidthConfig": "planner.widths",
    "slimmable": "planner.models.convert",
    "PlannerError": "planner.errors",
    # torch-side surgery
    "build_model": "planner.nn.build",
    "configurations": "planner.nn.build",
    "load_checkpoint": "planner.nn.build",
    "save_checkpoint": "planner.nn.checkpoint",
    "Cost": "planner.nn.counting",
    "count": "planner.nn.counting",
    "materialize": "planner.nn.materialize",
    "export_onnx": "planner.nn.export",
    "calibrate": "planner.nn.calibrate",
    # accuracy
    "load_dataset": "planner.accuracy.data",
    "train": "planner.accuracy.train",
    "TrainOptions": "planner.accuracy.train",
    "train_checkpoint": "planner.accuracy.train",
    "evaluate": "planner.accuracy.evaluate",
    # measurement
    "Target": "planner.measure.targets",
    "load_target": "planner.measure.targets",
    "list_targets": "planner.measure.targets",
    "profile_configs": "planner.measure.profile",
    "estimate_configs": "planner.measure.profile",
    # per-layer search
    "build_table": "planner.search.lut_runs",
    "learn_ranking": "planner.search.budget",
    "config_for_budget": "planner.search.budget",
    # planning (no torch)
    "read_tables": "planner.plan.pareto",
    "candidates": "planner.plan.pareto",
    "Budget": "planner.plan.select",
    "select": "planner.plan.select",
    "budget_for": "planner.plan.budgets",
    "select_for_target": "planner.plan.budgets",
    # deployment (no torch)
    "write_manifest": "planner.deploy.manifest",
    "load_manifest": "planner.deploy.manifest",
    "build_report": "planner.deploy.report",
    # across stages
    "select_on_target": "planner.workflows",
    "write_manifests": "planner.workflows",
}

__all__ = sorted(_LAZY)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'planner' has no attribute {name!r}")


def __dir__() -> list[str]:
    return [*globals(), *__all__]
