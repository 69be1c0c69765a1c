"""Checkpointer that saves atomically and loads official (``{"model": ...}``) or bare state dicts.

References: fvcore ``fvcore/common/checkpoint.py``; detectron2 ``DetectionCheckpointer``.
"""

import logging
import os
from collections.abc import Mapping
from typing import Any

import torch
from fvcore.common.checkpoint import Checkpointer as _FvcoreCheckpointer
from fvcore.common.checkpoint import _IncompatibleKeys
from torch import nn

from engine import comm
from utils.file_io import atomic_write

__all__ = ["Checkpointer"]

logger = logging.getLogger(__name__)

LAST_CHECKPOINT_FILE = "last_checkpoint"


def _format_keys(keys: list[str]) -> str:
    return "\n".join(f"  {key}" for key in sorted(keys))


class Checkpointer(_FvcoreCheckpointer):
    """Save and load a model with extra checkpointables (e.g. ``trainer=trainer``, whose state
    holds the iteration, optimizer, lr scheduler and grad scaler).

    Differences from fvcore's: files and the ``last_checkpoint`` tag are written atomically;
    only the main process saves by default; a checkpoint may be a bare state dict; incompatible
    keys are logged as full lists. ``DistributedDataParallel`` models are unwrapped, and a
    ``module.`` prefix in the checkpoint is stripped. Files load with ``weights_only=True``.

    Args:
        model: the model (DDP-wrapped or not).
        save_dir: where checkpoints and ``last_checkpoint`` live; empty disables saving.
        save_to_disk: defaults to ``comm.is_main_process()``.
        **checkpointables: objects with ``state_dict()`` / ``load_state_dict()``.
    """

    def __init__(
        self,
        model: nn.Module,
        save_dir: str = "",
        *,
        save_to_disk: bool | None = None,
        **checkpointables: Any,
    ) -> None:
        if save_to_disk is None:
            save_to_disk = comm.is_main_process()
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)

    def save(self, name: str, **kwargs: Any) -> None:
        """Write ``{save_dir}/{name}.pth`` (model, checkpointables, ``kwargs``) and tag it as the
        last checkpoint; a failure midway leaves the previous files untouched."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, checkpointable in self.checkpointables.items():
            data[key] = checkpointable.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        os.makedirs(self.save_dir, exist_ok=True)
        logger.info("Saving checkpoint to %s", path)
        atomic_write(path, lambda file: torch.save(data, file))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        """Atomically point ``last_checkpoint`` at ``last_filename_basename``."""
        path = os.path.join(self.save_dir, LAST_CHECKPOINT_FILE)
        atomic_write(path, lambda file: file.write(last_filename_basename.encode()))

    def resume_or_load(self, path: str, *, resume: bool = True) -> dict[str, Any]:
        """Resume from ``last_checkpoint`` in ``save_dir`` if ``resume`` and it exists (model and
        all checkpointables); otherwise load only the model weights from ``path`` (nothing if
        ``path`` is empty).

        Returns:
            The checkpoint entries that were not consumed (e.g. ``iteration``).
        """
        if resume and self.has_checkpoint():
            last = self.get_checkpoint_file()
            logger.info("Resuming from %s", last)
            return self.load(last)
        return self.load(path, checkpointables=[])

    def _load_file(self, f: str) -> dict[str, Any]:
        """Read a checkpoint; a bare state dict is treated as ``{"model": state_dict}``."""
        loaded = torch.load(f, map_location="cpu", weights_only=True)
        if isinstance(loaded, Mapping) and "model" in loaded:
            return dict(loaded)
        return {"model": loaded}

    def _log_incompatible_keys(self, incompatible: _IncompatibleKeys) -> None:
        """Log shape mismatches, missing and unexpected keys at WARNING, one key per line."""
        for key, shape_checkpoint, shape_model in incompatible.incorrect_shapes:
            logger.warning(
                "Skipped %s: shape %s in the checkpoint, %s in the model",
                key,
                shape_checkpoint,
                shape_model,
            )
        if incompatible.missing_keys:
            logger.warning(
                "%d model keys are not in the checkpoint (left as initialized):\n%s",
                len(incompatible.missing_keys),
                _format_keys(incompatible.missing_keys),
            )
        if incompatible.unexpected_keys:
            logger.warning(
                "%d checkpoint keys are not used by the model:\n%s",
                len(incompatible.unexpected_keys),
                _format_keys(incompatible.unexpected_keys),
            )
