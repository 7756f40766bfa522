"""Mixed-precision training: which autocast type a device can run, and whether gradients need scaling.

    precision = select_precision("bf16", device)     # PlannerError where the device cannot
    with precision.autocast(device): loss = ...
    scaler = precision.scaler(device)                # a disabled GradScaler unless fp16

fp32 runs everywhere. bf16 autocasts on the CPU and on CUDA GPUs that support it; its exponent range is
fp32's, so no scaling. fp16 is CUDA only (CPU autocast has no fp16 kernels to speak of) and needs a
GradScaler, whose state a resume file keeps. Only the CPU paths have run (this project has no GPU in CI).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

from planner.errors import PlannerError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Precision:
    name: str

    @property
    def dtype(self) -> torch.dtype | None:
        return PRECISIONS[self.name]

    def autocast(self, device: torch.device) -> AbstractContextManager:
        """Forward passes and losses in the lower precision (weights and optimizer stay fp32)."""
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(device.type, dtype=self.dtype)

    def scaler(self, device: torch.device) -> torch.amp.GradScaler:
        """fp16's loss scaling (small gradients would underflow); a pass-through otherwise."""
        return torch.amp.GradScaler(device.type, enabled=self.name == "fp16")


def select_precision(name: str, device: torch.device) -> Precision:
    """The precision `name` on `device`, or a PlannerError saying why this device cannot run it."""
    if name not in PRECISIONS:
        raise PlannerError(f"unknown precision {name!r}; choose {', '.join(PRECISIONS)}")
    if name == "fp16" and device.type != "cuda":
        raise PlannerError(
            "--precision fp16 needs a CUDA device (autocast on the CPU runs bf16): use bf16 or fp32"
        )
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise PlannerError(
            f"--precision bf16: {torch.cuda.get_device_name(device)} has no bf16 support; use fp16"
        )
    return Precision(name)
