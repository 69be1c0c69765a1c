"""Start one training process per GPU (or per CPU worker), or join a ``torchrun`` job.

References: detectron2 ``detectron2/engine/launch.py`` and ``engine/defaults.py``
``create_ddp_model`` (interface only).
"""

import datetime
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel

from utils import comm

__all__ = ["DEFAULT_TIMEOUT", "create_ddp_model", "launch"]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = datetime.timedelta(minutes=30)
_LOCALHOST = "127.0.0.1"


def _find_free_port() -> int:
    """A TCP port that is free now (it may be taken again before use; fine for local runs)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_LOCALHOST, 0))
        return sock.getsockname()[1]


def _backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def _bind_device(local_rank: int) -> None:
    """Record the local rank and, with CUDA, make ``cuda:{local_rank}`` the current device."""
    comm._set_local_rank(local_rank)
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)


def launch(
    main_func: Callable[..., Any],
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str = "auto",
    args: tuple[Any, ...] = (),
    timeout: datetime.timedelta = DEFAULT_TIMEOUT,
) -> None:
    """Run ``main_func(*args)`` in every process of a (possibly distributed) job.

    * Under ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` set): join its process group
      (``env://``) and call ``main_func`` in this process; the other arguments are ignored.
    * World size 1: call ``main_func`` directly, without a process group.
    * Otherwise spawn ``num_gpus_per_machine`` processes on this machine, one per GPU with NCCL,
      or, without CUDA, that many CPU processes with gloo.

    Args:
        main_func: the function to run; must be importable (pickled by name) when spawning.
        num_gpus_per_machine: processes per machine (GPUs, or CPU workers without CUDA).
        num_machines: number of machines.
        machine_rank: rank of this machine.
        dist_url: rendezvous URL such as ``tcp://host:port``; ``"auto"`` picks a free local port
            (single machine only).
        args: positional arguments of ``main_func``.
        timeout: timeout of collective operations.

    Raises:
        ValueError: ``dist_url="auto"`` with several machines, or an empty world.
        SystemExit: a spawned process exited with a non-zero status (``sys.exit``): the same
            status, without the spawn traceback.
    """
    if comm.under_torchrun():
        _run_under_torchrun(main_func, args, timeout)
        return
    world_size = num_machines * num_gpus_per_machine
    if world_size < 1:
        raise ValueError(f"Need at least one process: {num_machines} x {num_gpus_per_machine}")
    if world_size == 1:
        main_func(*args)
        return
    if dist_url == "auto":
        if num_machines != 1:
            raise ValueError("dist_url='auto' only works on one machine; pass tcp://host:port")
        dist_url = f"tcp://{_LOCALHOST}:{_find_free_port()}"
    try:
        mp.start_processes(
            _distributed_worker,
            nprocs=num_gpus_per_machine,
            args=(
                main_func,
                world_size,
                num_gpus_per_machine,
                machine_rank,
                dist_url,
                args,
                timeout,
            ),
            start_method="spawn",
        )
    except mp.ProcessExitedException as error:
        if error.exit_code is None or error.exit_code <= 0:  # killed by a signal
            raise
        # A process that ended with an exit status (sys.exit) has said why: end with its status.
        raise SystemExit(error.exit_code) from None


def _run_under_torchrun(
    main_func: Callable[..., Any], args: tuple[Any, ...], timeout: datetime.timedelta
) -> None:
    """Join the process group torchrun describes in the environment, then run ``main_func``."""
    _bind_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(_backend(), init_method="env://", timeout=timeout)
    logger.info("Joined torchrun job: rank %d of %d", comm.get_rank(), comm.get_world_size())
    try:
        main_func(*args)
    finally:
        dist.destroy_process_group()


def _distributed_worker(
    local_rank: int,
    main_func: Callable[..., Any],
    world_size: int,
    num_gpus_per_machine: int,
    machine_rank: int,
    dist_url: str,
    args: tuple[Any, ...],
    timeout: datetime.timedelta,
) -> None:
    """Entry point of a spawned process: init the process group, run ``main_func``, clean up."""
    if torch.cuda.is_available() and num_gpus_per_machine > torch.cuda.device_count():
        raise ValueError(
            f"{num_gpus_per_machine} processes per machine but only "
            f"{torch.cuda.device_count()} GPUs"
        )
    _bind_device(local_rank)
    dist.init_process_group(
        _backend(),
        init_method=dist_url,
        world_size=world_size,
        rank=machine_rank * num_gpus_per_machine + local_rank,
        timeout=timeout,
    )
    try:
        # Fail early, together, if a rank cannot reach the others.
        comm.synchronize()
        main_func(*args)
    finally:
        dist.destroy_process_group()


def create_ddp_model(
    model: nn.Module,
    *,
    find_unused_parameters: bool = False,
    broadcast_buffers: bool = True,
    fp16_compression: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Wrap ``model`` in ``DistributedDataParallel`` when the world size is above 1.

    Frozen parameters (``requires_grad=False``, e.g. the distillation teacher) are not synchronized.

    Args:
        model: the model, already on its device.
        find_unused_parameters: see ``DistributedDataParallel``.
        broadcast_buffers: see ``DistributedDataParallel``.
        fp16_compression: all-reduce gradients in fp16 (halves the traffic).
        **kwargs: other ``DistributedDataParallel`` arguments.

    Returns:
        The DDP-wrapped model, or ``model`` itself in a single process.
    """
    if comm.get_world_size() == 1:
        return model
    if next(model.parameters()).device.type == "cuda" and "device_ids" not in kwargs:
        kwargs["device_ids"] = [comm.get_local_rank()]
    ddp = DistributedDataParallel(
        model,
        find_unused_parameters=find_unused_parameters,
        broadcast_buffers=broadcast_buffers,
        **kwargs,
    )
    if fp16_compression:
        ddp.register_comm_hook(state=None, hook=default_hooks.fp16_compress_hook)
    return ddp
