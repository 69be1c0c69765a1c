"""Small helpers over ``torch.distributed`` that also work when it is not initialized.

Every function degrades to the single-process answer (rank 0 of 1) when no process group exists
(or PyTorch is not installed: an onnxruntime deployment runs without it), so library code can
call them unconditionally.

References: detectron2 ``detectron2/utils/comm.py`` (interface only).
"""

import os
from collections.abc import Mapping
from typing import Any

try:
    import torch
    import torch.distributed as dist
except ImportError:  # without PyTorch a process is always the only rank
    torch = dist = None

__all__ = [
    "TORCHRUN_ENV",
    "all_gather",
    "get_local_rank",
    "get_rank",
    "get_world_size",
    "is_main_process",
    "reduce_dict",
    "synchronize",
    "under_torchrun",
]

# torchrun (and torch.distributed.launch --use-env) export these to every worker.
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")

# Local rank of this process, set by engine.launch; torchrun exports it as LOCAL_RANK instead.
_LOCAL_RANK: int | None = None


def _set_local_rank(local_rank: int) -> None:
    """Record this process's rank within its machine (called by :mod:`engine.launch`)."""
    global _LOCAL_RANK
    _LOCAL_RANK = local_rank


def _is_distributed() -> bool:
    return dist is not None and dist.is_available() and dist.is_initialized()


def under_torchrun() -> bool:
    """Whether this process is a worker of a ``torchrun`` job (its environment says so)."""
    return all(name in os.environ for name in TORCHRUN_ENV)


def get_world_size() -> int:
    """Number of processes in the default process group (1 when not distributed)."""
    return dist.get_world_size() if _is_distributed() else 1


def get_rank() -> int:
    """Global rank of this process (0 when not distributed)."""
    return dist.get_rank() if _is_distributed() else 0


def get_local_rank() -> int:
    """Rank of this process within its machine: the index of the GPU it drives."""
    if not _is_distributed():
        return 0
    if _LOCAL_RANK is not None:
        return _LOCAL_RANK
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    """Whether this is global rank 0, the process that writes files and logs."""
    return get_rank() == 0


def synchronize() -> None:
    """Barrier across all processes; a no-op when not distributed."""
    if get_world_size() == 1:
        return
    if dist.get_backend() == dist.Backend.NCCL:
        # Name the device so NCCL does not guess one from the rank.
        dist.barrier(device_ids=[get_local_rank()])
    else:
        dist.barrier()


def all_gather(data: Any) -> list[Any]:
    """Gather a picklable object from every rank.

    Args:
        data: any small picklable object.

    Returns:
        The objects of all ranks, indexed by rank.
    """
    world_size = get_world_size()
    if world_size == 1:
        return [data]
    gathered: list[Any] = [None] * world_size
    dist.all_gather_object(gathered, data)
    return gathered


def reduce_dict(
    input_dict: Mapping[str, "torch.Tensor"], average: bool = True
) -> dict[str, "torch.Tensor"]:
    """All-reduce a small dict of scalar tensors so that every rank gets the result.

    All ranks must pass the same keys, with tensors on the device the backend communicates on.

    Args:
        input_dict: name -> scalar tensor.
        average: divide the sum by the world size.

    Returns:
        A new dict with the same keys holding the summed (or averaged) values.
    """
    world_size = get_world_size()
    if world_size == 1 or not input_dict:
        return dict(input_dict)
    names = sorted(input_dict)
    # One collective for all entries: stack the scalars into a [len(names)] vector.
    values = torch.stack([input_dict[name].detach().float().reshape(()) for name in names])
    dist.all_reduce(values)
    if average:
        values /= world_size
    return dict(zip(names, values.unbind(0)))
