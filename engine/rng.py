"""The states of a process's global random generators, as plain data for checkpoints.

Training draws from torch's global generator (the routers' gumbel noise); a run resumed from a
checkpoint restores each rank's states so that it continues the uninterrupted run's draws. The
states are plain containers and tensors, so checkpoints still load with ``weights_only=True``.
"""

import random
from typing import Any

import numpy as np
import torch

__all__ = ["get_rng_state", "set_rng_state"]


def get_rng_state() -> dict[str, Any]:
    """The states of Python's, numpy's and torch's global generators in this process (CUDA: the
    current device's, once CUDA is initialized)."""
    numpy_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {**numpy_state, "state": {**numpy_state["state"]}},
        "torch": torch.get_rng_state(),
    }
    state["numpy"]["state"]["key"] = numpy_state["state"]["key"].tolist()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned (the CUDA state on the current device)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = {**state["numpy"], "state": {**state["numpy"]["state"]}}
    numpy_state["state"]["key"] = np.asarray(numpy_state["state"]["key"], dtype=np.uint32)
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
