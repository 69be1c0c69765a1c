"""The model configs that ship in ``configs/``, seen as state-dict shapes: which of them a
checkpoint fits, so that a checkpoint of another config is named, not only refused.

Each config's model is built on the meta device (shapes and dtypes only: no memory, no
initialisation), once per process and only when asked.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from engine.config import LazyConfig, instantiate
from modeling.meta_arch.mematte import TEACHER_PREFIX

__all__ = [
    "CONFIG_DIR",
    "config_state",
    "fitting_configs",
    "shipped_configs",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "configs"
# The folder of configs/ that holds the parts configs are made of, not configs.
PARTS_DIR = "common"


def shipped_configs() -> list[Path]:
    """The config files of ``configs/`` (its sub-folders included, ``configs/common`` not)."""
    return sorted(
        path
        for path in CONFIG_DIR.rglob("*.py")
        if PARTS_DIR not in path.relative_to(CONFIG_DIR).parts and path.name != "__init__.py"
    )


@functools.cache
def config_state(config_file: Path) -> dict[str, Tensor]:
    """The state dict of a config's model, as meta tensors (shapes and dtypes)."""
    cfg = LazyConfig.load(str(config_file))
    with torch.device("meta"):
        return instantiate(cfg.model).state_dict()


def _fit(state_dict: Mapping[str, Any], model: Mapping[str, Tensor]) -> int | None:
    """How many of the model's weights (the teacher's aside) ``state_dict`` lacks, if every
    tensor of it is a weight of the model with the same shape; None if not."""
    for key, value in state_dict.items():
        if key not in model:
            if key.startswith(TEACHER_PREFIX):
                continue  # a training checkpoint fits the inference model of its config too
            return None
        if tuple(getattr(value, "shape", ())) != tuple(model[key].shape):
            return None
    return sum(1 for key in model if key not in state_dict and not key.startswith(TEACHER_PREFIX))


def fitting_configs(state_dict: Mapping[str, Any], *, complete: bool = False) -> list[str]:
    """The shipped configs whose model holds every tensor of ``state_dict`` with its shape.

    Args:
        state_dict: a checkpoint's model state dict (without a DDP ``module.`` prefix).
        complete: only the configs whose weights (the teacher's aside) ``state_dict`` all holds.

    Returns:
        Paths relative to the repository (``configs/ViTMatte_S_Com.py``), those whose weights the
        checkpoint holds all (the teacher's aside) first.
    """
    fits = []
    for config_file in shipped_configs():
        missing = _fit(state_dict, config_state(config_file))
        if missing is not None and not (complete and missing):
            fits.append((missing, str(config_file.relative_to(REPO_ROOT))))
    return [name for _, name in sorted(fits)]
