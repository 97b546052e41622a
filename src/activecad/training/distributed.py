"""Data-parallel training across processes and machines (``torchrun``), and its no-op default.

``torchrun --nproc_per_node N -m activecad train detector ...`` starts N processes with
``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` set; :func:`setup` joins them into one process
group (NCCL on GPUs, gloo on CPUs). Without those variables everything here is a no-op and
training runs in one process.

Conventions the engine follows (see :mod:`activecad.training.engine`): every rank draws its
own patches (its seed mixes in the rank), gradients are averaged by
:class:`torch.nn.parallel.DistributedDataParallel`, and only rank 0 validates and writes
checkpoints, metrics and the model folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistContext", "broadcast_object", "context", "setup", "teardown"]


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a (possibly one-process) training job.

    Attributes:
        rank: this process's index, 0..world_size-1.
        world_size: number of processes.
        local_rank: index on this machine (picks the GPU).
        backend: ``nccl``, ``gloo`` or ``""`` when not distributed.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def distributed(self) -> bool:
        """True when more than one process trains."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on the process that validates and writes files (rank 0)."""
        return self.rank == 0


def setup(device: str | None = None) -> DistContext:
    """Join the process group described by torchrun's environment, if there is one.

    Args:
        device: the requested device; ``cpu`` forces gloo even when GPUs exist.

    Returns:
        the context; a one-process context when ``WORLD_SIZE`` is unset or 1.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
        backend = "nccl" if use_cuda else "gloo"
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return context()


def context() -> DistContext:
    """The current process group's context (one process when none is initialised)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistContext()
    return DistContext(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        backend=str(dist.get_backend()),
    )


def device_for(ctx: DistContext, device: str | None) -> str:
    """The torch device this rank trains on: its own GPU under NCCL, else ``device``."""
    if ctx.backend == "nccl":
        return f"cuda:{ctx.local_rank}"
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def broadcast_object(obj: object, ctx: DistContext) -> object:
    """``obj`` of rank 0 on every rank (picklable objects only; a no-op in one process)."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def teardown() -> None:
    """Leave the process group (if this process joined one), once every rank is here.

    Why the barrier: a rank that destroys its group while a peer is still finishing its
    last collective closes the gloo connection under it, and the peer aborts (SIGABRT,
    "terminate called without an active exception"), seen on a loaded 2-core machine.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
