"""Reading checkpoint files, and the trainer's checkpointer.

:func:`load_checkpoint` is the one reader of checkpoint files (training, inference, evaluation,
``pretrained/preprocess.py``): ``torch.load(weights_only=True)``, which rebuilds only tensors and
plain containers. A file that pickles other objects is loaded only when the caller trusts it
(``--trust-checkpoint`` on the command lines, ``trusted=True`` in Python), since unpickling
those objects runs code stored in the file. A ``.safetensors`` file (``pretrained/convert.py``)
holds tensors only and is read as a bare state dict. A checkpoint with a ``.sha256`` file next to
it (the :class:`Checkpointer` writes one for every checkpoint, in ``sha256sum`` format) is checked
against it first, so a corrupt file is an error instead of silently wrong weights.
:func:`check_weights` is the one check of the values every loading path (training, inference,
conversion) applies to a state dict: finite floating-point tensors, integers only where the model
holds integer buffers (BatchNorm's ``num_batches_tracked``), so NaN, Inf or integer weights are an
error naming the key instead of a matte of zeros. :func:`clean_state_dict` is the one place that
removes DDP's ``module.`` key prefix and, for inference, the distillation teacher's weights. A
checkpoint of another model size is summarised (:func:`describe_shape_mismatches`), naming the
shipped configs it fits.

References: fvcore ``fvcore/common/checkpoint.py``; detectron2 ``DetectionCheckpointer``.
"""

import contextlib
import logging
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import safetensors.torch
import torch
from fvcore.common.checkpoint import Checkpointer as _FvcoreCheckpointer
from fvcore.common.checkpoint import _IncompatibleKeys
from torch import Tensor, nn

from engine.known_configs import CONFIG_DIR, fitting_configs
from modeling.meta_arch.mematte import TEACHER_PREFIX
from utils import comm
from utils.arguments import TRUST_CHECKPOINT_FLAG
from utils.file_io import atomic_write, sha256_of_file

__all__ = [
    "CHECKSUM_SUFFIX",
    "DDP_PREFIX",
    "SAFETENSORS_SUFFIX",
    "CheckpointError",
    "Checkpointer",
    "CorruptCheckpointError",
    "IncompatibleCheckpointError",
    "InvalidWeightsError",
    "UntrustedCheckpointError",
    "check_weights",
    "clean_state_dict",
    "describe_shape_mismatches",
    "load_checkpoint",
    "non_floating_keys",
    "shape_mismatches",
]

logger = logging.getLogger(__name__)

LAST_CHECKPOINT_FILE = "last_checkpoint"
# Key prefix of a state dict saved from a DistributedDataParallel-wrapped model.
DDP_PREFIX = "module."
# Files with this suffix are read with safetensors (tensors only, nothing to unpickle).
SAFETENSORS_SUFFIX = ".safetensors"
# How torch's weights-only unpickler names a refused object in its error ("... GLOBAL a.b ...").
_REFUSED_GLOBAL = re.compile(r"GLOBAL (\S+)")
# The SHA-256 of a checkpoint file is kept in "{file}.sha256" as "<64 hex digits>  <file name>".
CHECKSUM_SUFFIX = ".sha256"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# The iteration in a periodic checkpoint's file name ("model_0001234.pth").
_PERIODIC_NAME = re.compile(r"_(\d+)\.pth$")
# Tensors of other shapes named in a message; the rest are counted (a checkpoint of another
# model size differs in about a hundred).
MAX_LISTED_MISMATCHES = 3

Value = TypeVar("Value")


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint: corrupt, foreign, or of an unexpected structure."""


class CorruptCheckpointError(CheckpointError):
    """A file whose bytes do not match its SHA-256 file, or that cannot be read at all."""


class IncompatibleCheckpointError(CheckpointError):
    """A checkpoint whose tensors have other shapes than the model's (with ``strict_shapes``)."""


class InvalidWeightsError(CheckpointError):
    """A state dict with a value that cannot be a weight: NaN or Inf, an integer or bool tensor
    where the model holds floating-point values, or no tensor at all."""


class UntrustedCheckpointError(CheckpointError):
    """A checkpoint that pickles objects other than tensors and plain containers: loading it runs
    code stored in the file, so it needs the caller's explicit trust."""


def _unreadable(path: Path, error: Exception) -> CorruptCheckpointError:
    return CorruptCheckpointError(f"{path}: not a readable PyTorch checkpoint ({error!r})")


def _refused_globals(path: Path, error: Exception) -> list[str]:
    """The pickled objects that made ``weights_only=True`` refuse ``path`` ([] if none: then the
    file is corrupt or foreign). Read from the pickle's opcodes, not by unpickling."""
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # the legacy (non-zip) format: read the names from the unpickler's error
        return _REFUSED_GLOBAL.findall(str(error))


def _load_pickled_objects(path: Path, error: pickle.UnpicklingError, trusted: bool) -> Any:
    """Full unpickling (the one unsafe ``torch.load`` of the code base) of a file the weights-only
    unpickler refused, if the caller trusts it."""
    if not trusted:
        names = _refused_globals(path, error)
        if not names:
            raise CorruptCheckpointError(
                f"{path}: not a readable PyTorch checkpoint (corrupt, or not written by torch.save)"
            ) from error
        raise UntrustedCheckpointError(
            f"{path} pickles objects other than tensors ({', '.join(names)}); loading it would "
            "run code stored in the file. If the file comes from a trusted source, pass "
            f"{TRUST_CHECKPOINT_FLAG} on the command line (trusted=True in Python)"
        ) from error
    logger.warning("%s pickles objects other than tensors; loading it as trusted", path)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # corrupt or foreign files raise many different types
        raise _unreadable(path, exc) from exc


def checksum_path(path: str | os.PathLike) -> Path:
    """The SHA-256 file that goes with a checkpoint: ``{path}.sha256``."""
    return Path(f"{path}{CHECKSUM_SUFFIX}")


def write_checksum(path: str | os.PathLike) -> None:
    """Write ``{path}.sha256`` (``sha256sum -c`` checks it) atomically."""
    path = Path(path)
    line = f"{sha256_of_file(path)}  {path.name}\n"
    atomic_write(checksum_path(path), lambda file: file.write(line.encode()))


def verify_checksum(path: str | os.PathLike) -> None:
    """Check a checkpoint against its ``.sha256`` file, if it has one.

    Raises:
        CorruptCheckpointError: the digests differ, or the ``.sha256`` file is malformed.
    """
    sidecar = checksum_path(path)
    if not sidecar.is_file():
        return
    fields = sidecar.read_text(encoding="utf-8", errors="replace").split()
    if not fields or not _SHA256_HEX.fullmatch(fields[0]):
        raise CorruptCheckpointError(f"{sidecar}: not a SHA-256 line (<64 hex digits>  <file>)")
    actual = sha256_of_file(path)
    if actual != fields[0]:
        raise CorruptCheckpointError(
            f"{path} is corrupt: its SHA-256 is {actual[:16]}..., {sidecar.name} records "
            f"{fields[0][:16]}..."
        )


def load_checkpoint(path: str | os.PathLike, *, trusted: bool = False) -> dict[str, Any]:
    """Read a checkpoint file onto the CPU as ``{"model": state_dict, ...}``.

    Official (``{"model": ...}``), trainer (model, trainer state, iteration) and bare state-dict
    files are accepted; a bare state dict, and a ``.safetensors`` file, come back as
    ``{"model": state_dict}``.

    Args:
        path: the checkpoint file.
        trusted: also load a file that pickles objects other than tensors and plain containers
            (full unpickling: runs code stored in the file).

    Returns:
        The checkpoint dict; its ``"model"`` entry is a mapping.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        CorruptCheckpointError: the file does not match its ``.sha256`` file, or is not a
            readable PyTorch checkpoint.
        UntrustedCheckpointError: the file pickles other objects and ``trusted`` is False.
        CheckpointError: the file is not a dict of the expected structure.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    verify_checksum(path)
    if path.suffix == SAFETENSORS_SUFFIX:
        return {"model": _load_safetensors(path)}
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        loaded = _load_pickled_objects(path, exc, trusted)
    except Exception as exc:  # corrupt or foreign files raise many different types
        raise _unreadable(path, exc) from exc
    if not isinstance(loaded, Mapping):
        raise CheckpointError(
            f"{path}: expected a state dict or a dict with a 'model' entry, got a "
            f"{type(loaded).__name__}"
        )
    checkpoint = dict(loaded) if "model" in loaded else {"model": dict(loaded)}
    if not isinstance(checkpoint["model"], Mapping):
        raise CheckpointError(
            f"{path}: the 'model' entry is a {type(checkpoint['model']).__name__}, not a state dict"
        )
    return checkpoint


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, on the CPU."""
    try:
        return safetensors.torch.load_file(path, device="cpu")
    except Exception as exc:  # safetensors raises its own error type, and OSError
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc


def non_floating_keys(state_dict: Mapping[str, Any]) -> frozenset[str]:
    """The keys of a model's state dict whose tensors are not floating point: its integer
    buffers (BatchNorm's ``num_batches_tracked``), the only entries a checkpoint may hold as
    integers (:func:`check_weights`).

    Args:
        state_dict: the model's own ``state_dict()`` (a model on the meta device will do).
    """
    return frozenset(
        key
        for key, value in state_dict.items()
        if isinstance(value, Tensor) and not value.is_floating_point()
    )


def _weight_problem(value: Any, integer_allowed: bool) -> str | None:
    """What makes ``value`` unusable as a state-dict entry, or None."""
    if not isinstance(value, Tensor):
        return f"is a {type(value).__name__}, not a tensor"
    if not value.is_floating_point():
        if integer_allowed:
            return None
        dtype = str(value.dtype).removeprefix("torch.")
        return f"is {dtype}, not floating point (the model holds floating-point values there)"
    if value.is_meta:
        return None
    counts = {"NaN": int(torch.isnan(value).sum()), "Inf": int(torch.isinf(value).sum())}
    found = [f"{count:,} {kind}" for kind, count in counts.items() if count]
    if not found:
        return None
    return f"holds {' and '.join(found)} of its {value.numel():,} values"


def check_weights(
    state_dict: Mapping[str, Any], source: str | os.PathLike, *, integer_keys: frozenset[str]
) -> None:
    """Refuse a state dict whose values are not all finite floating-point tensors, except the
    integer buffers of the model it is for.

    A NaN or Inf weight, or integer or bool weights, make every unknown pixel of a matte the
    same value (0, 127 or 255) without any other sign; loading, conversion and training call
    this before using the weights.

    Args:
        state_dict: key -> tensor, as read from ``source`` (cleaned of a ``module.`` prefix).
        source: the file (or folder) the state dict comes from, for the message.
        integer_keys: the keys where the model holds integer tensors (:func:`non_floating_keys`
            of its state dict); there any dtype is accepted (floats must be finite).

    Raises:
        InvalidWeightsError: naming ``source``, the first bad key in the state dict's order and
            what is wrong with it.
    """
    for key, value in state_dict.items():
        problem = _weight_problem(value, key in integer_keys)
        if problem is not None:
            raise InvalidWeightsError(
                f"{source}: {key} {problem}: not usable weights (a damaged file, or saved from "
                "a run that diverged; use another checkpoint)"
            )


def clean_state_dict(
    state_dict: Mapping[str, Value], *, drop_teacher: bool = False
) -> dict[str, Value]:
    """``state_dict`` without DDP's ``module.`` key prefix and, with ``drop_teacher``, without the
    distillation teacher's ``teacher_backbone.*`` entries (an inference model has no teacher).

    Args:
        state_dict: parameter name -> value.
        drop_teacher: drop the teacher's entries.

    Returns:
        A new dict, in the same order.
    """
    cleaned = {}
    for key, value in state_dict.items():
        key = key.removeprefix(DDP_PREFIX)
        if not (drop_teacher and key.startswith(TEACHER_PREFIX)):
            cleaned[key] = value
    return cleaned


def _format_keys(keys: list[str]) -> str:
    return "\n".join(f"  {key}" for key in sorted(keys))


def shape_mismatches(
    checkpoint: Mapping[str, Any], model_state: Mapping[str, Any]
) -> list[tuple[str, tuple[int, ...], tuple[int, ...]]]:
    """``(key, checkpoint shape, model shape)`` of the tensors whose shapes differ, in the
    checkpoint's order."""
    return [
        (key, tuple(value.shape), tuple(model_state[key].shape))
        for key, value in checkpoint.items()
        if key in model_state
        and hasattr(value, "shape")
        and tuple(value.shape) != tuple(model_state[key].shape)
    ]


def describe_shape_mismatches(
    mismatches: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
    state_dict: Mapping[str, Any] | None = None,
) -> str:
    """One paragraph on the :func:`shape_mismatches` of a checkpoint: their count, the first
    :data:`MAX_LISTED_MISMATCHES`, and the shipped configs whose shapes the checkpoint fits
    (:func:`engine.known_configs.fitting_configs`), if ``state_dict`` is given and one does.

    Returns:
        e.g. ``"107 tensors have other shapes than in the model (backbone.pos_embed: [1, 1025,
        768] in the checkpoint, [1, 1025, 384] in the model; ...; and 104 more); its shapes fit
        configs/MEMatte_B_topk0.25_win_global_long.py"``.
    """
    listed = "; ".join(
        f"{key}: {list(ours)} in the checkpoint, {list(model)} in the model"
        for key, ours, model in mismatches[:MAX_LISTED_MISMATCHES]
    )
    if len(mismatches) > MAX_LISTED_MISMATCHES:
        listed += f"; and {len(mismatches) - MAX_LISTED_MISMATCHES} more"
    text = f"{len(mismatches)} tensors have other shapes than in the model ({listed})"
    fits = fitting_configs(state_dict) if state_dict is not None else []
    if fits:
        text += f"; its shapes fit {', '.join(fits)}"
    elif state_dict is not None:
        text += f"; its shapes fit none of the configs in {CONFIG_DIR.name}/"
    return text


class Checkpointer(_FvcoreCheckpointer):
    """Save and load a model with extra checkpointables (e.g. ``trainer=trainer``, whose state
    holds the iteration, optimizer, lr scheduler, grad scaler, data position and random states).

    Differences from fvcore's: files and the ``last_checkpoint`` tag are written atomically, each
    checkpoint with a ``.sha256`` file checked when it is read; only the main process writes (but
    :meth:`save` is collective: every rank calls it); files are read by :func:`load_checkpoint`
    (a bare state dict is accepted, pickled objects only when ``trusted``); tensors whose shapes
    differ from the model's are an error with ``strict_shapes``; missing and unexpected keys are
    logged as full lists; :meth:`resume_or_load` falls back to the previous intact checkpoint
    when the last one is corrupt. ``DistributedDataParallel`` models are unwrapped, and a
    ``module.`` prefix in the checkpoint is stripped (:func:`clean_state_dict`).

    Args:
        model: the model (DDP-wrapped or not).
        save_dir: where checkpoints and ``last_checkpoint`` live; empty disables saving.
        save_to_disk: defaults to ``comm.is_main_process()``.
        trusted: also load files that pickle objects other than tensors (see
            :func:`load_checkpoint`).
        strict_shapes: a checkpoint tensor whose shape differs from the model's is an error
            listing every such key; False skips them with a warning (they keep their values).
        **checkpointables: objects with ``state_dict()`` / ``load_state_dict()``.
    """

    def __init__(
        self,
        model: nn.Module,
        save_dir: str = "",
        *,
        save_to_disk: bool | None = None,
        trusted: bool = False,
        strict_shapes: bool = True,
        **checkpointables: Any,
    ) -> None:
        if save_to_disk is None:
            save_to_disk = comm.is_main_process()
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.trusted = trusted
        self.strict_shapes = strict_shapes

    def save(self, name: str, **kwargs: Any) -> None:
        """Write ``{save_dir}/{name}.pth`` (model, checkpointables, ``kwargs``) and its
        ``.sha256``, and tag it as the last checkpoint; a failure midway leaves the previous
        files usable.

        Collective: every rank gathers the checkpointables' states (a trainer's state holds
        every rank's random generators); the main process writes.
        """
        data = {"model": self.model.state_dict()}
        for key, checkpointable in self.checkpointables.items():
            data[key] = checkpointable.state_dict()
        data.update(kwargs)
        if not self.save_dir or not self.save_to_disk:
            return
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        os.makedirs(self.save_dir, exist_ok=True)
        logger.info("Saving checkpoint to %s", path)
        # A stale checksum must never describe the new file (a crash before the new one).
        checksum_path(path).unlink(missing_ok=True)
        atomic_write(path, lambda file: torch.save(data, file))
        write_checksum(path)
        self.tag_last_checkpoint(basename)

    def delete(self, name: str) -> None:
        """Remove ``{save_dir}/{name}.pth`` and its ``.sha256`` (main process only)."""
        if not self.save_dir or not self.save_to_disk:
            return
        path = os.path.join(self.save_dir, f"{name}.pth")
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
        checksum_path(path).unlink(missing_ok=True)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        """Atomically point ``last_checkpoint`` at ``last_filename_basename``."""
        path = os.path.join(self.save_dir, LAST_CHECKPOINT_FILE)
        atomic_write(path, lambda file: file.write(last_filename_basename.encode()))

    def load(self, path: str, checkpointables: list[str] | None = None) -> dict[str, Any]:
        """Load ``path`` (nothing if empty) into the model and the checkpointables.

        Returns:
            The checkpoint entries that were not consumed (e.g. ``iteration``).

        Raises:
            FileNotFoundError: ``path`` is not a file.
            CheckpointError: see :func:`load_checkpoint`; also an
                :class:`IncompatibleCheckpointError` with ``strict_shapes``.
        """
        if path and not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such checkpoint file")
        return super().load(path, checkpointables)

    def resume_or_load(self, path: str, *, resume: bool = True) -> dict[str, Any]:
        """Resume from ``last_checkpoint`` in ``save_dir`` if ``resume`` and it exists (model and
        all checkpointables); otherwise load only the model weights from ``path`` (nothing if
        ``path`` is empty).

        A last checkpoint that is missing or corrupt (see :class:`CorruptCheckpointError`) is
        reported with a warning, and the newest intact periodic checkpoint before it is resumed
        instead.

        Returns:
            The checkpoint entries that were not consumed (e.g. ``iteration``).

        Raises:
            CorruptCheckpointError: the last checkpoint and every earlier one are unusable.
        """
        if not (resume and self.has_checkpoint()):
            return self.load(path, checkpointables=[])
        last = self.get_checkpoint_file()
        logger.info("Resuming from %s", last)
        try:
            return self.load(last)
        except (CorruptCheckpointError, FileNotFoundError) as error:
            logger.warning("Cannot resume from the last checkpoint: %s", error)
            for previous in self._earlier_checkpoints(last):
                try:
                    extra = self.load(previous)
                except (CorruptCheckpointError, FileNotFoundError) as previous_error:
                    logger.warning("Cannot resume from %s either: %s", previous, previous_error)
                    continue
                logger.warning("Resumed from the previous intact checkpoint %s instead", previous)
                return extra
            raise CorruptCheckpointError(
                f"Cannot resume: {error}; and no earlier checkpoint in {self.save_dir} is intact"
            ) from error

    def _earlier_checkpoints(self, last: str) -> list[str]:
        """The periodic checkpoints of ``save_dir`` before ``last`` (all of them when ``last``
        has no iteration in its name, e.g. ``model_final.pth``), newest first."""
        match = _PERIODIC_NAME.search(os.path.basename(last))
        before = int(match.group(1)) if match else None
        found = []
        for name in os.listdir(self.save_dir):
            number = _PERIODIC_NAME.search(name)
            if number and (before is None or int(number.group(1)) < before):
                found.append((int(number.group(1)), os.path.join(self.save_dir, name)))
        return [path for _, path in sorted(found, reverse=True)]

    def _load_file(self, f: str) -> dict[str, Any]:
        """Read a checkpoint with :func:`load_checkpoint`; the model keys lose a ``module.``; the
        weights are checked with :func:`check_weights`.

        Raises:
            InvalidWeightsError: a weight that is NaN, Inf, or not floating point where the
                model's is, before anything is loaded.
            IncompatibleCheckpointError: with ``strict_shapes``, tensors whose shapes differ from
                the model's (listed), before anything is loaded.
        """
        checkpoint = load_checkpoint(f, trusted=self.trusted)
        checkpoint["model"] = clean_state_dict(checkpoint["model"])
        model_state = self.model.state_dict()
        check_weights(checkpoint["model"], f, integer_keys=non_floating_keys(model_state))
        mismatches = shape_mismatches(checkpoint["model"], model_state)
        if mismatches and self.strict_shapes:
            summary = describe_shape_mismatches(mismatches, checkpoint["model"])
            raise IncompatibleCheckpointError(
                f"{f}: a checkpoint of another configuration? {summary}. Use the config it was "
                "trained with, or pass strict_shapes=False (train.init_strict=False) to skip "
                "these tensors"
            )
        return checkpoint

    def _log_incompatible_keys(self, incompatible: _IncompatibleKeys) -> None:
        """Log shape mismatches (summarised), missing and unexpected keys (one key per line) at
        WARNING."""
        if incompatible.incorrect_shapes:
            logger.warning(
                "Skipped the checkpoint's tensors of other shapes (they keep their initial "
                "values): %s",
                describe_shape_mismatches(incompatible.incorrect_shapes),
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
