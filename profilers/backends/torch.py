"""torch eager, as a reference: runs the `torch.export` program saved beside the ONNX file (X.pt2).

torch is imported only here. The program comes from the model side (`planner export`, which calls
torch.export.export and torch.export.save); the device side never unpickles arbitrary objects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from profilers.backends import Backend, Session
from profilers.errors import ProfilerError, first_line
from profilers.jobs import Job
from profilers.modelfile import ModelFile


class TorchBackend(Backend):
    name = "torch"
    sdk_module = "torch"
    install_hint = "pip install torch (CPU wheels: --index-url https://download.pytorch.org/whl/cpu)"
    artifact_name = None
    precisions = ("fp32",)

    def devices(self) -> list[str]:
        torch = self.sdk()
        return ["CPU"] + (["CUDA"] if torch.cuda.is_available() else [])

    def artifact_for(self, model: ModelFile, job: Job) -> Path:
        program = model.path.with_suffix(".pt2")
        if not program.is_file():
            raise ProfilerError(
                f"the torch backend needs {program.name} beside {model.path.name}: save it with "
                "torch.export.save(torch.export.export(module, (example,)), path) (planner export does)"
            )
        return program

    def open(self, artifact: Path, model: ModelFile, job: Job, feed: np.ndarray) -> Session:
        return TorchSession(self, artifact, job, feed)


class TorchSession(Session):
    def __init__(self, backend: TorchBackend, artifact: Path, job: Job, feed: np.ndarray) -> None:
        self.backend, self.artifact, self.job, self.feed = backend, artifact, job, feed
        self.module: Any = None

    def activate(self) -> None:
        torch = self.backend.sdk()
        torch.set_num_threads(self.job.resolved_threads)
        self.device = "cuda" if self.job.device == "CUDA" else "cpu"
        try:
            self.module = torch.export.load(str(self.artifact)).module().to(self.device)
        except Exception as error:
            raise ProfilerError(
                f"cannot load the torch.export program {self.artifact}: {first_line(error)}"
            ) from None
        self.input = torch.from_numpy(self.feed).to(self.device)
        self.torch = torch

    def infer(self) -> None:
        with self.torch.inference_mode():
            self.module(self.input)
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def release(self) -> None:
        self.module = None
