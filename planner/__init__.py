"""planner: profile slimmable networks on devices and pick the width to ship.

The torch-side API (models, configurations, export) is imported lazily, so the commands that only read
results (select, report, targets) work on an install without torch; `profilers` never imports torch.
"""

from importlib import import_module

_LAZY = {
    "Cost": "planner.nn.counting",
    "count": "planner.nn.counting",
    "create_model": "planner.models",
    "list_models": "planner.models",
    "SlimmableNetwork": "planner.models",
    "load_checkpoint": "planner.nn.checkpoint",
    "load_manifest": "planner.deploy.manifest",
    "save_checkpoint": "planner.nn.checkpoint",
    "slimmable": "planner.models.convert",
    "materialize": "planner.nn.materialize",
    "WidthConfig": "planner.widths",
}

__all__ = sorted(_LAZY)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'planner' has no attribute {name!r}")
