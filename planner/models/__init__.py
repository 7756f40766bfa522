"""The model zoo. Importing this package registers every model."""

from planner.models import s_cnn_small, s_mobilenet_v1, s_mobilenet_v2, s_resnet  # noqa: F401  (registers)
from planner.models.base import SlimmableNetwork
from planner.models.registry import create_model, list_models, register_model

__all__ = ["SlimmableNetwork", "create_model", "list_models", "register_model"]
