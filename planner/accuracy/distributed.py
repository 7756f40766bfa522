"""Data-parallel training over processes started by torchrun (torch.distributed).

    torchrun --nproc-per-node N -m planner train ...      # or: planner train --nproc N ...
    world = from_environment()      # None outside torchrun; PlannerError when its variables are wrong
    with process_group(world, device): ...                # gloo on CPU, nccl on CUDA
    net = data_parallel(model, world, device, find_unused)  # DistributedDataParallel under torchrun
    with synchronized(net, last): net(x) ... backward()   # no_sync for all but a step's last backward
    average_values(values, world)
    launch(nproc, argv) -> exit code                      # torch.distributed.run, no shell

Every rank runs every sandwich member on its shard of the global batch (the same members: the sandwich
generator is seeded alike on all ranks). A slimmable step is several forward/backward passes, one per
member and micro-batch, before one optimizer step: all but the last run under DDP's `no_sync`, so the
gradients accumulate locally and DDP all-reduces the sums once, in the last backward. Switchable BN
gives each trained width its own affine parameters, which the last member (the narrowest) does not use:
with `find_unused_parameters`, DDP marks parameters used anywhere in the `no_sync` passes as used
(torch >= 2.4, pytorch/pytorch#124193) and averages their accumulated gradients too
(tests/test_train_distributed.py checks exactly that). BN statistics are not synchronised within a step
(no SyncBatchNorm), so a 2-rank run computes the weights of one process accumulating the same two
half-batches (`accumulate=2`), not those of one process on the whole batch at once.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta

import torch
from torch.utils.data import DistributedSampler

from planner.errors import PlannerError

VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
TIMEOUT = timedelta(minutes=10)  # a rank that died before a collective does not hold the others forever


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int
    size: int
    local_rank: int

    @property
    def leader(self) -> bool:
        """Rank 0 alone writes files and prints."""
        return self.rank == 0


def from_environment(environ: dict[str, str] | None = None) -> World | None:
    """The torchrun variables, checked: None when none is set (a single process)."""
    env = os.environ if environ is None else environ
    present = [name for name in VARIABLES if name in env]
    if not present:
        return None
    missing = [name for name in VARIABLES if name not in env]
    if missing:
        raise PlannerError(
            f"torchrun variables incomplete: {', '.join(present)} set but {', '.join(missing)} missing "
            "(start with torchrun or planner train --nproc N)"
        )
    numbers = {}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
        try:
            numbers[name] = int(env[name])
        except ValueError:
            raise PlannerError(f"torchrun variable {name}={env[name]!r} is not an integer") from None
    rank, size, local = numbers["RANK"], numbers["WORLD_SIZE"], numbers["LOCAL_RANK"]
    if size < 1:
        raise PlannerError(f"torchrun variable WORLD_SIZE={size} must be at least 1")
    if not 0 <= rank < size:
        raise PlannerError(f"torchrun variables inconsistent: RANK={rank} is not below WORLD_SIZE={size}")
    if not 0 <= local <= rank:
        raise PlannerError(f"torchrun variables inconsistent: LOCAL_RANK={local} with RANK={rank}")
    return World(rank, size, local)


def reports_errors(environ: dict[str, str] | None = None) -> bool:
    """Whether this process prints errors: rank 0, or any process whose rank is unknown or invalid."""
    env = os.environ if environ is None else environ
    try:
        rank, size = int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1"))
    except ValueError:
        return True
    return not 0 < rank < size


def pick_device(name: str, world: World | None) -> torch.device:
    """`auto` is CUDA when there is one; each rank takes the GPU of its local rank."""
    if name not in ("auto", "cpu", "cuda"):
        raise PlannerError(f"unknown device {name!r}; choose auto, cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise PlannerError("--device cuda but torch sees no CUDA device (this torch build or machine)")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", world.local_rank if world else 0)


@contextmanager
def process_group(world: World | None, device: torch.device) -> Iterator[None]:
    """Join the process group for the block (nothing for a single process): gloo on CPU, nccl on CUDA."""
    import torch.distributed as dist

    if world is None:
        yield
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, rank=world.rank, world_size=world.size, timeout=TIMEOUT)
    try:
        yield
    finally:
        dist.destroy_process_group()


def data_parallel(
    model: torch.nn.Module, world: World | None, device: torch.device, find_unused: bool
) -> torch.nn.Module:
    """`model` in DistributedDataParallel under torchrun, `model` itself for one process.

    DDP starts every rank from rank 0's parameters and buffers, and broadcasts rank 0's buffers (BN
    statistics) again before the first forward of each step; within a step each rank updates its own
    on its shard, and rank 0's are the ones saved. `find_unused`: the step's last backward leaves some
    parameters without a gradient of its own (`planner.accuracy.train.leaves_parameters_unused`); DDP must
    then not wait for them. It costs a traversal of the autograd graph per step (and a warning from DDP
    when nothing is unused), so it is off when the last backward uses every parameter.
    """
    if world is None:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=find_unused)


def synchronized(net: torch.nn.Module, last: bool) -> AbstractContextManager:
    """Around one forward and its backward: all-reduce the gradients in the step's last backward only;
    the earlier ones accumulate locally (DDP's `no_sync`). Nothing for one process."""
    from torch.nn.parallel import DistributedDataParallel

    if last or not isinstance(net, DistributedDataParallel):
        return nullcontext()
    return net.no_sync()


def average_values(values: list[float], world: World | None, device: torch.device) -> list[float]:
    """The mean over the ranks of each value (the losses shown and recorded); nccl reduces on `device`."""
    if world is None or world.size == 1 or not values:
        return values
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return (tensor / world.size).tolist()


def launch(nproc: int, argv: list[str]) -> int:
    """Run `python -m planner ARGV` in `nproc` processes on this machine under torchrun (its own free
    port, `--standalone`); the exit code is the workers' (2 when they stopped on bad input)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    if nproc < 1:
        raise PlannerError(f"--nproc must be at least 1, got {nproc}")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # The workers print their own errors (rank 0, one line); the agent's report of their exit repeats it.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    args = get_args_parser().parse_args(
        ["--standalone", "--nproc-per-node", str(nproc), "--module", "planner", *argv]
    )
    try:
        run(args)
    except ChildFailedError as error:
        codes = {failure.exitcode for failure in error.failures.values()}
        return 2 if codes == {2} else max(codes, default=1) or 1
    return 0


def without_option(argv: list[str], name: str) -> list[str]:
    """`argv` without `name VALUE` / `name=VALUE` (the launcher passes everything else on)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(f"{name}="):
            kept.append(arg)
    return kept


class ShardSampler(DistributedSampler):
    """DistributedSampler (rank r takes every world-th index of the epoch's seeded permutation, so
    global batch i is split across the ranks) that can start `skip` indices in, for a resumed epoch."""

    skip = 0

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.skip, None)

    def __len__(self) -> int:
        return self.num_samples - self.skip


@contextmanager
def training_session(device_name: str = "auto") -> Iterator[tuple[World | None, torch.device]]:
    """The torchrun world (None for one process) and device for the block, in the process group.

    A PlannerError leaves every rank with exit code 2, printed by rank 0 only: the other ranks exit
    quietly (SystemExit(2)), and all of them reach the same error on the same input, so none waits on a
    collective the others never join.
    """
    try:
        world = from_environment()
        device = pick_device(device_name, world)
        with process_group(world, device):
            yield world, device
    except PlannerError:
        if reports_errors():
            raise
        raise SystemExit(2) from None
