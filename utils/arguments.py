"""The command-line options every entry point that loads a model shares: the config and its
checkpoint (with the official spellings ``--config-dir`` / ``--checkpoint-dir``), trust for
checkpoints that pickle objects, and the device and precision the model runs with.

``inference.py``, ``tools/web_demo.py``, ``tools/export_onnx.py``, ``pretrained/*.py`` and
``main.py`` declare them through these functions, so the options read and behave the same
everywhere.
"""

from __future__ import annotations

import argparse

__all__ = [
    "DEVICES",
    "PRECISION_NAMES",
    "TRUST_CHECKPOINT_FLAG",
    "add_checkpoint_arguments",
    "add_config_argument",
    "add_device_arguments",
    "add_model_arguments",
    "add_trust_checkpoint_argument",
]

TRUST_CHECKPOINT_FLAG = "--trust-checkpoint"
DEVICES = ("auto", "cpu", "cuda")
# The precisions a model runs in (utils.device.PRECISIONS maps them to dtypes); named here without
# PyTorch, so that the command lines parse where only onnxruntime is installed.
PRECISION_NAMES = ("fp32", "bf16", "fp16")


def add_config_argument(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    """``--config-file`` (also ``--config-dir``, the official spelling): ``args.config_file``."""
    parser.add_argument(
        "--config-file",
        "--config-dir",
        dest="config_file",
        required=required,
        metavar="FILE",
        help="model config, a LazyConfig .py or .yaml (configs are code: trusted sources only). "
        "--config-dir is the official spelling",
    )


def add_trust_checkpoint_argument(parser: argparse.ArgumentParser) -> None:
    """``--trust-checkpoint`` (``args.trust_checkpoint``)."""
    parser.add_argument(
        TRUST_CHECKPOINT_FLAG,
        action="store_true",
        help="also load checkpoints that pickle objects other than tensors (e.g. detectron2-era "
        "files); unpickling runs code stored in the file, so only for files from a trusted source",
    )


def add_checkpoint_arguments(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    """``--checkpoint`` (also ``--checkpoint-dir``, the official spelling; ``args.checkpoint``)
    and ``--trust-checkpoint``."""
    parser.add_argument(
        "--checkpoint",
        "--checkpoint-dir",
        dest="checkpoint",
        required=required,
        metavar="FILE",
        help="model weights: an official checkpoint (e.g. MEMatte_ViTS_DIM.pth) or one written "
        "by main.py. --checkpoint-dir is the official spelling (a file, despite the name)",
    )
    add_trust_checkpoint_argument(parser)


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """``--device`` (auto, cpu, cuda) and ``--precision`` (fp32, bf16, fp16)."""
    parser.add_argument(
        "--device",
        default="auto",
        choices=DEVICES,
        help="where the model runs; auto = CUDA when available",
    )
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=PRECISION_NAMES,
        help="autocast precision (fp16: CUDA only; bf16 is fast on GPUs and CPUs with bf16 units)",
    )


def add_model_arguments(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    """The config, its checkpoint and trust, the device and the precision."""
    add_config_argument(parser, required=required)
    add_checkpoint_arguments(parser, required=required)
    add_device_arguments(parser)
