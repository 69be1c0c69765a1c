"""Export a MEMatte (or ViTMatte) inference model to an ONNX deployment folder for onnxruntime.

    python tools/export_onnx.py --config-file configs/MEMatte_S_topk0.25_win_global_long.py \\
        --checkpoint MEMatte_ViTS_DIM.pth --output MEMatte_S_onnx [--trust-checkpoint] \\
        [key=value ...]

The folder (a manifest, the patch-embedding and blocks graphs of the backbone with the official
inference routing, one graph per decoder stage; batch 1, dynamic height and width) is described
in ``predictor/onnx_graph.py`` and ``docs/deployment.md``; ``inference.py --onnx`` and
``predictor.OnnxMattingPredictor`` run it, without PyTorch.
"""

from __future__ import annotations

import argparse
import logging
import runpy
import sys
from pathlib import Path

runpy.run_path(str(Path(__file__).resolve().parents[1] / "tools" / "_bootstrap.py"))

from predictor.onnx_graph import OPSET, export_onnx
from utils.arguments import add_checkpoint_arguments, add_config_argument

logger = logging.getLogger("export_onnx")

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    """The command line's options."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_argument(parser)
    add_checkpoint_arguments(parser)
    parser.add_argument("--output", required=True, type=Path, help="the deployment folder to write")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides key=value")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Export; return the exit status (2: a config, checkpoint or output error)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        manifest = export_onnx(
            args.config_file,
            args.checkpoint,
            args.output,
            args.opts,
            trusted=args.trust_checkpoint,
        )
    except (FileNotFoundError, ValueError) as exc:
        logger.error("error: %s", exc)
        return EXIT_USAGE
    graphs = [manifest["embed"], manifest["blocks"], *manifest["decoder"].values()]
    logger.info("wrote %s (opset %d; graphs %s)", args.output, OPSET, ", ".join(graphs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
