"""The inference model of a config and its weights: the MEMatte (or ViTMatte) of a LazyConfig file
without its distillation teacher, and an official or trainer checkpoint loaded into it.

References: detectron2 ``DefaultPredictor`` (config + checkpoint -> model).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from engine.checkpoint import (
    IncompatibleCheckpointError,
    check_weights,
    clean_state_dict,
    describe_shape_mismatches,
    load_checkpoint,
    non_floating_keys,
    shape_mismatches,
)
from engine.config import LazyConfig, instantiate
from engine.known_configs import fitting_configs

__all__ = ["build_inference_model", "inference_config", "load_inference_weights"]

logger = logging.getLogger(__name__)

# Keys listed in an error message before the rest is elided.
_MAX_LISTED_KEYS = 8


def inference_config(config_file: str | Path, overrides: Sequence[str] = ()) -> Any:
    """A LazyConfig file with ``overrides`` (checked) and without the distillation teacher.

    Raises:
        FileNotFoundError, ValueError: a missing config file, or an override that does not fit.
    """
    cfg = LazyConfig.load(str(config_file))
    return LazyConfig.apply_overrides(cfg, [*overrides, "model.teacher_backbone=None"])


def build_inference_model(config_file: str | Path, overrides: Sequence[str] = ()) -> nn.Module:
    """Instantiate ``cfg.model`` from a LazyConfig file without the distillation teacher."""
    return instantiate(inference_config(config_file, overrides).model)


def load_inference_weights(model: nn.Module, path: str | Path, *, trusted: bool = False) -> None:
    """Load an official (``{"model": ...}`` or bare) or trainer checkpoint for inference.

    ``teacher_backbone.*`` and a DDP ``module.`` prefix are dropped. Every value must be a
    finite floating-point tensor, except the model's integer buffers
    (:func:`engine.checkpoint.check_weights`); every model weight must be present; unexpected
    keys are logged.

    Args:
        model: the inference model (no teacher).
        path: the checkpoint file, read by :func:`engine.checkpoint.load_checkpoint`.
        trusted: also load a file that pickles objects other than tensors.

    Raises:
        FileNotFoundError, ValueError: unreadable or untrusted file, a value that is not a
            finite floating-point tensor (``InvalidWeightsError``, naming the key), tensors of
            other shapes than the model's (``IncompatibleCheckpointError``: a summary, and the
            shipped configs the checkpoint fits), or weights missing for the model.
    """
    path = Path(path)
    state = clean_state_dict(load_checkpoint(path, trusted=trusted)["model"], drop_teacher=True)
    model_state = model.state_dict()
    check_weights(state, path, integer_keys=non_floating_keys(model_state))
    mismatches = shape_mismatches(state, model_state)
    if mismatches:  # another model size
        raise IncompatibleCheckpointError(
            f"{path} does not fit the configured model: "
            f"{describe_shape_mismatches(mismatches, state)}. Give the config the checkpoint "
            "was trained with (--config-file)"
        )
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys:
        listed = ", ".join(result.missing_keys[:_MAX_LISTED_KEYS])
        fits = fitting_configs(state, complete=True)
        hint = f"its shapes fit {', '.join(fits)}" if fits else "wrong config?"
        raise ValueError(
            f"{path} lacks {len(result.missing_keys)} weights of the configured model "
            f"({hint}): {listed}"
        )
    if result.unexpected_keys:
        logger.warning(
            "%s: %d unused keys: %s",
            path,
            len(result.unexpected_keys),
            ", ".join(result.unexpected_keys[:_MAX_LISTED_KEYS]),
        )
