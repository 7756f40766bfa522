"""Networks planner does not ship: `torchvision:NAME`, `timm:NAME`, `net.py:FUNCTION`, `pkg.mod:FUNCTION`.

A source names a plain `nn.Module`; `build_source` converts it into a slimmable network
(planner.models.convert). Nothing is downloaded: torchvision and timm models are built with random
weights (`weights=None`, `pretrained=False`), and pretrained weights come in through `--checkpoint`.
A user's own Python code runs only when the user names its file or module.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import inspect
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from planner.errors import PlannerError

if TYPE_CHECKING:
    from torch import nn

    from planner.models.base import SlimmableNetwork

LIBRARIES = ("torchvision", "timm")
# The torchvision wheel built for this torch links CUDA kernels; with a CPU torch its C++ ops fail to
# register and `import torchvision` stops at the first fake-kernel registration, `torchvision::nms`.
_MISSING_OPS = ("torchvision::nms", "torchvision::qnms")
_OP_SCHEMA = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"


def is_source(name: str) -> bool:
    """True for a source (`library:name`, `file.py:function`, `module:function`), False for a zoo name."""
    return ":" in name


def file_name(name: str) -> str:
    """A model name usable in a file name: a source such as `nets/my.py:build` holds `/` and `:`."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def import_torchvision() -> ModuleType:
    """`import torchvision`, working around a wheel whose C++ ops do not load with this torch.

    Classification models need none of torchvision's C++ ops. When (and only when) the import fails
    because `torchvision::nms` is missing, the two op schemas its fake kernels register against are
    defined and the import retried; any other import error is raised as it is.
    """
    try:
        import torchvision
    except RuntimeError as error:
        if not any(f"operator {op} does not exist" in str(error) for op in _MISSING_OPS):
            raise
        _forget("torchvision")
        _define_missing_ops()
        import torchvision
    return torchvision


def import_timm() -> ModuleType:
    """`import timm` (it imports torchvision: the workaround above comes first)."""
    import_torchvision()
    try:
        import timm
    except ImportError:
        raise PlannerError("timm is not installed: pip install 'planner[timm]'") from None
    return timm


def _forget(package: str) -> None:
    for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
        del sys.modules[name]


def _define_missing_ops() -> None:
    import torch

    for op in _MISSING_OPS:
        namespace, name = op.split("::")
        if not _has_schema(namespace, name):
            torch.library.define(op, _OP_SCHEMA)


def _has_schema(namespace: str, name: str) -> bool:
    import torch

    try:
        getattr(getattr(torch.ops, namespace), name).default  # noqa: B018  (raises when undefined)
    except (AttributeError, RuntimeError):
        return False
    return True


def load_source(
    source: str,
    num_classes: int | None = None,
    input_size: int | None = None,
    in_channels: int | None = None,
) -> nn.Module:
    """The plain network a source names, freshly initialised (no pretrained weights)."""
    kind, _, entry = source.partition(":")
    if not kind or not entry:
        raise PlannerError(
            f"model source {source!r} must be LIBRARY:NAME, FILE.py:FUNCTION or MODULE:FUNCTION"
        )
    if kind == "torchvision":
        model = _torchvision(entry, num_classes, input_size, in_channels)
    elif kind == "timm":
        model = _timm(entry, num_classes, input_size, in_channels)
    else:
        function = _user_function(kind, entry)
        model = _call_user(source, function, num_classes, input_size, in_channels)
    from torch import nn

    if not isinstance(model, nn.Module):
        raise PlannerError(f"{source} returned a {type(model).__name__}, not a torch nn.Module")
    return model.eval()


def build_source(
    source: str,
    widths: list[float] | None = None,
    num_classes: int | None = None,
    input_size: int | None = None,
    in_channels: int | None = None,
    universal: bool = False,
    reorder: bool = True,
    state: dict[str, Any] | None = None,
    channel_multiple: int | None = None,
) -> SlimmableNetwork:
    """The slimmable network of a source; `state` is the original network's weights (loaded first)."""
    import torch

    size, channels = input_size or 224, in_channels or 3
    network = load_source(source, num_classes, size, channels)
    if state is not None:
        load_original(network, state, source)
    from planner.models.convert import slimmable

    # two images: the train-mode trace runs BatchNorm on batch statistics, which one 1x1 map lacks
    example = torch.randn(2, channels, size, size)
    kwargs: dict[str, Any] = {"universal": universal, "reorder": reorder, "name": source}
    if widths is not None:
        kwargs["widths"] = tuple(widths)
    if channel_multiple is not None:
        kwargs["channel_multiple"] = channel_multiple
    converted = slimmable(network, example, **kwargs)
    converted.source = {
        "source": source,
        "input_size": size,
        "in_channels": channels,
        "num_classes": num_classes,
    }
    return converted


def load_original(network: nn.Module, state: dict[str, Any], source: str) -> None:
    """Load an original (unconverted) state dict strictly; a mismatch names the first bad key and shape."""
    expected = network.state_dict()
    for key, value in expected.items():
        if key not in state:
            raise PlannerError(f"checkpoint does not match {source}: missing key {key}")
        if tuple(state[key].shape) != tuple(value.shape):
            raise PlannerError(
                f"checkpoint does not match {source}: {key} is {list(state[key].shape)} in the checkpoint, "
                f"{list(value.shape)} in the model"
            )
    extra = [key for key in state if key not in expected]
    if extra:
        raise PlannerError(f"checkpoint does not match {source}: unexpected key {extra[0]}")
    network.load_state_dict(state, strict=True)


def _torchvision(name: str, num_classes: int | None, input_size: int | None, in_channels: int | None):
    torchvision = import_torchvision()
    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        raise PlannerError(f"unknown torchvision model {name!r}{_near(name, known)}")
    if in_channels not in (None, 3):
        raise PlannerError(f"torchvision:{name} takes 3 input channels, not {in_channels}")
    options: dict[str, Any] = {"weights": None}
    if num_classes is not None:
        options["num_classes"] = num_classes
    if input_size is not None and name.startswith("vit_"):
        options["image_size"] = input_size
    if input_size is not None and name.startswith("maxvit"):
        options["input_size"] = (input_size, input_size)
    if name.startswith(("googlenet", "inception")):
        options["init_weights"] = True  # silences the slow-init warning; weights stay random
        options["aux_logits"] = False
    try:
        return torchvision.models.get_model(name, **options)
    except (ValueError, TypeError, AssertionError) as error:
        raise PlannerError(f"cannot build torchvision:{name}: {error}") from None


def _timm(name: str, num_classes: int | None, input_size: int | None, in_channels: int | None):
    timm = import_timm()
    known = timm.list_models()
    if name not in known:
        raise PlannerError(f"unknown timm model {name!r}{_near(name, known)}")
    options: dict[str, Any] = {"pretrained": False}
    if num_classes is not None:
        options["num_classes"] = num_classes
    if in_channels is not None:
        options["in_chans"] = in_channels
    try:
        if input_size is not None:
            try:
                return timm.create_model(name, img_size=input_size, **options)
            except TypeError as error:  # convolutional networks take any size and no img_size
                if "img_size" not in str(error):
                    raise
        return timm.create_model(name, **options)
    except (ValueError, TypeError, AssertionError, RuntimeError) as error:
        raise PlannerError(f"cannot build timm:{name}: {error}") from None


def _near(name: str, known: list[str]) -> str:
    near = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    return f"; did you mean {', '.join(near)}?" if near else ""


def _user_function(location: str, function: str):
    """The named function of a user's file or module; importing it runs the user's code (they named it)."""
    if location.endswith(".py") or "/" in location or "\\" in location:
        path = Path(location)
        if not path.is_file():
            raise PlannerError(f"model file {path} does not exist")
        module_name = f"planner_user_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise PlannerError(f"{path} is not a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses and typing look their module up there
        try:
            spec.loader.exec_module(module)
        except Exception as error:
            del sys.modules[module_name]
            raise PlannerError(f"importing {path} failed: {type(error).__name__}: {error}") from None
    else:
        try:
            module = importlib.import_module(location)
        except ModuleNotFoundError as error:
            raise PlannerError(f"cannot import module {location}: {error}") from None
        except Exception as error:
            raise PlannerError(f"importing {location} failed: {type(error).__name__}: {error}") from None
    target = getattr(module, function, None)
    if target is None or not callable(target):
        public = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        raise PlannerError(f"{location} has no function {function!r}{_near(function, public)}")
    return target


def _call_user(source: str, function, num_classes, input_size, in_channels):
    """Call the user's builder with the options it declares (num_classes, input_size, in_channels)."""
    given = {"num_classes": num_classes, "input_size": input_size, "in_channels": in_channels}
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        parameters = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    options = {k: v for k, v in given.items() if v is not None and (takes_any or k in parameters)}
    try:
        return function(**options)
    except Exception as error:
        message = str(error).splitlines()[0] if str(error) else ""
        raise PlannerError(f"{source} raised {type(error).__name__}: {message}") from None
