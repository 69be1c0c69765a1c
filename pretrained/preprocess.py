"""Prepare a ViTMatte checkpoint for MEMatte training: copy the backbone into the teacher.

MEMatte-S/B start from ViTMatte-S/B trained on Composition-1k: the student backbone is
initialised from ViTMatte's backbone, and the frozen distillation teacher *is* that backbone.
This script writes every ``backbone.*`` weight a second time as ``teacher_backbone.*``.

Usage:
    python pretrained/preprocess.py --input pretrained/ViTMatte_S_Com.pth \
        --output pretrained/ViTMatte_S_Com_with_teacher.pth
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

# Running as `python pretrained/preprocess.py` puts pretrained/ (not the repository root) on
# sys.path; add the root so that the repository's packages import.
REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from utils.file_io import atomic_write  # noqa: E402

logger = logging.getLogger("preprocess")

BACKBONE_PREFIX = "backbone."
TEACHER_PREFIX = "teacher_backbone."


class CheckpointFormatError(ValueError):
    """The file is not a ViTMatte checkpoint of the expected format."""


def add_teacher_weights(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copy ``state_dict`` with every ``backbone.*`` entry duplicated as ``teacher_backbone.*``.

    Raises:
        CheckpointFormatError: no ``backbone.*`` entry, or teacher entries already present.
    """
    backbone = {k: v for k, v in state_dict.items() if k.startswith(BACKBONE_PREFIX)}
    if not backbone:
        raise CheckpointFormatError("the state dict has no 'backbone.*' weights")
    if any(k.startswith(TEACHER_PREFIX) for k in state_dict):
        raise CheckpointFormatError("the checkpoint already has 'teacher_backbone.*' weights")
    out = dict(state_dict)
    for key, value in backbone.items():
        out[TEACHER_PREFIX + key[len(BACKBONE_PREFIX) :]] = value.clone()
    return out


def load_vitmatte_checkpoint(path: Path) -> dict:
    """Load an official ViTMatte checkpoint (a dict holding ``model``), with clear errors."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for corrupt or foreign files
        raise CheckpointFormatError(f"{path}: not a readable PyTorch checkpoint ({exc})") from exc
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        raise CheckpointFormatError(
            f"{path}: expected a ViTMatte checkpoint, a dict with a 'model' state dict"
        )
    return checkpoint


def convert(input_path: Path, output_path: Path) -> int:
    """Write the converted checkpoint atomically; returns the number of teacher entries added."""
    checkpoint = load_vitmatte_checkpoint(input_path)
    try:
        model = add_teacher_weights(checkpoint["model"])
    except CheckpointFormatError as exc:
        raise CheckpointFormatError(f"{input_path}: {exc}") from exc
    output_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(output_path, lambda file: torch.save({**checkpoint, "model": model}, file))
    return len(model) - len(checkpoint["model"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, default=Path("pretrained/ViTMatte_S_Com.pth"))
    parser.add_argument(
        "--output", type=Path, default=Path("pretrained/ViTMatte_S_Com_with_teacher.pth")
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        added = convert(args.input, args.output)
    except (FileNotFoundError, CheckpointFormatError) as exc:
        logger.error("error: %s", exc)
        return 1
    logger.info("wrote %s (%d teacher_backbone entries added)", args.output, added)
    return 0


if __name__ == "__main__":
    sys.exit(main())
