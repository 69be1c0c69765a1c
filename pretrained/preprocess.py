"""Prepare a ViTMatte checkpoint for MEMatte training: copy the backbone into the teacher.

MEMatte-S/B start from ViTMatte-S/B trained on Composition-1k: the student backbone is
initialised from ViTMatte's backbone, and the frozen distillation teacher *is* that backbone.
This script writes every ``backbone.*`` weight a second time as ``teacher_backbone.*``.

Usage:
    python pretrained/preprocess.py --input pretrained/ViTMatte_S_Com.pth \
        --output pretrained/ViTMatte_S_Com_with_teacher.pth [--trust-checkpoint]

The input is any form ``pretrained/convert.py`` reads: an official ``.pth``, a ``.safetensors``
with the official keys, a Hugging Face transformers save_pretrained folder or a hub id
(``hustvl/vitmatte-small-composition-1k``). A ``.pth`` is read with ``weights_only=True``; a file
that also pickles other objects is refused unless ``--trust-checkpoint`` (unpickling runs code
stored in the file).
"""

from __future__ import annotations

import argparse
import logging
import runpy
import sys
from pathlib import Path

import torch

runpy.run_path(str(Path(__file__).resolve().parents[1] / "tools" / "_bootstrap.py"))

from engine.checkpoint import CheckpointError
from modeling.meta_arch.mematte import BACKBONE_PREFIX, TEACHER_PREFIX
from pretrained.convert import load_weights
from utils.arguments import add_trust_checkpoint_argument
from utils.file_io import atomic_write

logger = logging.getLogger("preprocess")


def add_teacher_weights(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copy ``state_dict`` with every ``backbone.*`` entry duplicated as ``teacher_backbone.*``.

    Raises:
        CheckpointError: no ``backbone.*`` entry, or teacher entries already present.
    """
    backbone = {k: v for k, v in state_dict.items() if k.startswith(BACKBONE_PREFIX)}
    if not backbone:
        raise CheckpointError(f"the state dict has no '{BACKBONE_PREFIX}*' weights")
    if any(k.startswith(TEACHER_PREFIX) for k in state_dict):
        raise CheckpointError(f"the checkpoint already has '{TEACHER_PREFIX}*' weights")
    out = dict(state_dict)
    for key, value in backbone.items():
        out[TEACHER_PREFIX + key.removeprefix(BACKBONE_PREFIX)] = value.clone()
    return out


def convert(input_path: str | Path, output_path: Path, *, trusted: bool = False) -> int:
    """Write the converted checkpoint atomically; returns the number of teacher entries added.

    Args:
        input_path: ViTMatte weights in any form :func:`pretrained.convert.load_weights` reads
            (a ``.pth`` keeps its entries other than ``model``).
        output_path: the MEMatte training checkpoint to write (the input's entries, with the
            teacher weights added to ``model``).
        trusted: also read an input that pickles objects other than tensors.

    Raises:
        FileNotFoundError, ValueError: unreadable or untrusted input, a transformers
            architecture this project cannot build, or not a ViTMatte state dict.
    """
    weights = load_weights(input_path, trusted=trusted)
    if weights.overrides:
        logger.info("architecture of %s: %s", input_path, " ".join(weights.overrides))
    checkpoint = weights.checkpoint
    try:
        model = add_teacher_weights(dict(checkpoint["model"]))
    except CheckpointError as exc:
        raise CheckpointError(f"{input_path}: {exc}") from exc
    output_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(output_path, lambda file: torch.save({**checkpoint, "model": model}, file))
    return len(model) - len(checkpoint["model"])


def build_parser() -> argparse.ArgumentParser:
    """The command line's options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--input",
        default="pretrained/ViTMatte_S_Com.pth",
        help=".pth, .safetensors, Hugging Face save_pretrained folder or hub id",
    )
    parser.add_argument(
        "--output", type=Path, default=Path("pretrained/ViTMatte_S_Com_with_teacher.pth")
    )
    add_trust_checkpoint_argument(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Add the teacher's weights; return the exit status (1: an unreadable source)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        added = convert(args.input, args.output, trusted=args.trust_checkpoint)
    except (FileNotFoundError, ValueError) as exc:
        logger.error("error: %s", exc)
        return 1
    logger.info("wrote %s (%d teacher_backbone entries added)", args.output, added)
    return 0


if __name__ == "__main__":
    sys.exit(main())
