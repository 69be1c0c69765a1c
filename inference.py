"""Matting inference: a test-set folder, your own images, or a dataset sharded over processes.

Test-set folder (the official protocol: one 8-bit alpha PNG per image, named as the image):

    python inference.py --config-file configs/MEMatte_S_topk0.25_win_global_long.py \\
        --checkpoint MEMatte_ViTS_DIM.pth --data-dir datasets/Composition-1k \\
        --output-dir output/comp1k_vits

The official command's spellings work too: --config-dir (= --config-file), --checkpoint-dir
(= --checkpoint), --inference-dir (= --output-dir: the folder the PNGs are written to).

Your own images, with a trimap or a rough mask (a trimap is made from the mask, unknown within
--unknown-width of its boundary), with a clean cutout (foreground colours estimated):

    python inference.py --config-file CFG --checkpoint CKPT --image photo.jpg \\
        --mask mask.png --unknown-width 0.02 --output-dir output/mine --save-rgba

A box or clicks instead of a trimap: a SAM-family segmenter (transformers; a hub id, downloaded
once, or a local save_pretrained folder) makes the mask, the trimap is made from it
(--unknown-width, default auto); --save-trimap also writes the mask (mask/<name>.png). Several
images or a folder of images take their prompts from a JSON file (--prompts, docs/prompts.md):

    python inference.py --config-file CFG --checkpoint CKPT --image photo.jpg \\
        --segmenter facebook/sam-vit-base --box 40,60,900,1200 --point 500,700 \\
        --output-dir output/mine --save-trimap

An exported deployment (tools/export_onnx.py) with onnxruntime instead of PyTorch's model, with
the same outputs, options and exit codes (float32, the exported config; --max-number-token N
sets the cap at run time); it runs where PyTorch is not installed (foreground outputs, prompts
and videos excepted):

    python inference.py --onnx MEMatte_S_onnx --data-dir datasets/Composition-1k \\
        --output-dir output/comp1k_onnx

Sharded over processes (each takes a disjoint share of the images; rank 0 prints the merged
summary): --num-gpus N (N processes: one per GPU, or N CPU processes with --device cpu), or
torchrun --nproc-per-node N [--nnodes M ...] inference.py ...

Files already in the output folder are skipped unless --overwrite, so an interrupted run resumes;
an item is complete when its alpha PNG decodes and every requested extra output is a whole file,
otherwise it is done again (all its files). A bad item (unreadable or truncated file, missing or
mismatched trimap, a trimap with values other than 0/128/255 such as a JPEG trimap: pass
--snap-trimap to move each value to the nearest level, an image above --max-pixels by the size its
header declares) is reported with its path and skipped; so is every file of the image and trimap
folders that is not read (another format, a hidden file...). The alpha PNG is written first: an
extra output that fails is reported on its own and the alpha kept. The output folder (and
--report) may not be, lie inside or contain anything the run reads.

Exit status: 0 every item done or already present; 1 some items failed (listed at the end and
in --report); 2 usage or setup error (bad option, missing input folder, checkpoint or graph, an
unreadable graph, an output folder that is a file, not writable or overlaps the inputs),
reported before any model is loaded or folder created where possible. --report describes the run
that ended last, a crashed one included ("complete": false).

Video clips (a video file, a folder of frames, or a folder of clips) with per-frame trimaps or
masks, or the first frame's mask (or --segmenter with its --box / --point) propagated by optical
flow or by SAM 2's video model (--propagate sam2), with flow-guided temporal smoothing and videos
of the results (docs/video.md):

    python inference.py --config-file CFG --checkpoint CKPT --video clip.mp4 \\
        --mask first_mask.png --unknown-width 10 --temporal flow --output-dir output/clip \\
        --save-video alpha prores

writes output/clip/clip/pha/00000.png ... (8-bit alpha; --alpha-bits 16), and the videos.

Checkpoints are read with weights_only=True; one that also pickles other objects is refused
unless --trust-checkpoint (unpickling runs code stored in the file). Config files are code too:
only from a trusted source.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data.pixel_limits import DEFAULT_MAX_PIXELS, max_pixels_argument
from data.readers import FOLDER_LAYOUTS
from data.trimap import add_snap_trimap_argument, unknown_width_argument
from predictor import video  # its modules load on first use: PyAV only for videos
from predictor.prediction import AUTO
from predictor.prompts import add_prompt_arguments, check_prompt_arguments
from predictor.runner import run_command
from utils.arguments import add_checkpoint_arguments, add_config_argument, add_device_arguments


def _max_number_token(value: str) -> int | str:
    if value == AUTO:
        return AUTO
    try:
        cap = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError("takes an integer or 'auto'") from None
    if cap < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return cap


def build_parser() -> argparse.ArgumentParser:
    """The command line's options."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_argument(parser, required=False)  # required unless --onnx: checked below
    add_checkpoint_arguments(parser, required=False)
    add_device_arguments(parser)
    parser.add_argument(
        "--onnx",
        type=Path,
        metavar="DIR",
        help="run the deployment folder written by tools/export_onnx.py with onnxruntime instead "
        "of a config and checkpoint (float32; no PyTorch needed; CUDA provider with --device "
        "cuda/auto when present)",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--data-dir",
        metavar="DIR",
        help="a test-set folder (see --layout), or a folder of images with --prompts",
    )
    source.add_argument(
        "--image",
        nargs="+",
        metavar="PATH",
        help="image files (with --trimap, --mask or --segmenter prompts)",
    )
    source.add_argument(
        "--video",
        nargs="+",
        metavar="CLIP",
        help="video files, folders of frames or folders of clips (see the video options)",
    )
    guide = parser.add_mutually_exclusive_group()
    guide.add_argument(
        "--trimap", nargs="+", metavar="PATH", help="one trimap per --image (0/128/255)"
    )
    add_snap_trimap_argument(parser)
    guide.add_argument(
        "--mask",
        nargs="+",
        metavar="PATH",
        help="one rough mask per --image (thresholded at half its range); the trimap is "
        "unknown within --unknown-width of the mask boundary",
    )
    parser.add_argument(
        "--unknown-width",
        type=unknown_width_argument,
        metavar="W",
        help="with --mask or --segmenter: the unknown band on each side of the mask boundary, in "
        "px (e.g. 20), as a fraction of the shorter image side (e.g. 0.02), or auto (2%% of the "
        "diagonal of the mask's bounding box, within 4..160 px; the default with --segmenter "
        "and for --video, whose propagated trimaps take it too)",
    )
    add_prompt_arguments(parser)
    parser.add_argument(
        "--output-dir",
        "--inference-dir",
        dest="output_dir",
        required=True,
        metavar="DIR",
        help="output folder: <name>.png alpha mattes (and the sub-folders of the --save "
        "options). --inference-dir is the official spelling",
    )
    parser.add_argument(
        "--layout",
        choices=[layout.name for layout in FOLDER_LAYOUTS],
        help="test-set layout of --data-dir (default: detected from its sub-folders)",
    )
    parser.add_argument(
        "--max-number-token",
        type=_max_number_token,
        default=None,
        metavar="N|auto",
        help="cap on the tokens in one global attention per image: an integer, 'auto' (the "
        "largest that fits the device's free memory, logged per image size) or unset (the "
        "config's, 18500 as official)",
    )
    parser.add_argument(
        "--max-pixels",
        type=max_pixels_argument,
        default=DEFAULT_MAX_PIXELS,
        metavar="N",
        help=f"largest image (H x W pixels) read, by the size its header declares, before any "
        f"decoding (default {DEFAULT_MAX_PIXELS} = 8192 x 8192; larger images are reported and "
        "skipped)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=1,
        metavar="B",
        help="images of equal size predicted together (same results as one by one)",
    )
    parser.add_argument(
        "--no-patch-decoder",
        dest="patch_decoder",
        action="store_false",
        help="decode the whole image at once instead of the official 512 px tiles (can change "
        "results slightly at tile borders)",
    )
    parser.add_argument(
        "--save-routing",
        action="store_true",
        help="also write routing/<name>.jpg: the tokens each routed block sent to global "
        "attention and the router's probabilities",
    )
    parser.add_argument(
        "--save-foreground",
        action="store_true",
        help="also write foreground/<name>.png: the estimated foreground colours (RGB)",
    )
    parser.add_argument(
        "--save-rgba",
        action="store_true",
        help="also write rgba/<name>.png: the foreground colours with the alpha PNG as alpha",
    )
    parser.add_argument(
        "--composite",
        metavar="COLOR|IMAGE",
        help="also write composite/<name>.png: the foreground over a colour (#00ff00) or an "
        "image (resized to each image); with --video: <clip>/com/, over a colour, an image or "
        "a clip's frames",
    )
    parser.add_argument(
        "--save-trimap",
        action="store_true",
        help="with --mask or --segmenter: also write trimap/<name>.png, the trimap made from "
        "the mask (and mask/<name>.png, the segmenter's mask, 0/255)",
    )
    parser.add_argument("--overwrite", action="store_true", help="redo existing outputs")
    parser.add_argument(
        "--round", action="store_true", help="round alpha to 8 bits (official: truncate)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        metavar="N",
        help="image-decoding processes per inference process (0: decode in the main process)",
    )
    parser.add_argument(
        "--num-gpus",
        type=int,
        default=1,
        metavar="N",
        help="inference processes on this machine: one per GPU, or N CPU processes with "
        "--device cpu (torchrun sets its own)",
    )
    parser.add_argument(
        "--report",
        type=Path,
        metavar="FILE",
        help="write the run's summary as JSON: done/skipped/failed items, time per image, peak "
        "memory, routed share per block, and per-rank records in sharded runs",
    )
    video.add_video_arguments(parser)
    parser.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        help="config overrides key=value, after the options (after -- when the last option "
        "takes a list of files)",
    )
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (usage errors exit with status 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.opts[:1] == ["--"]:
        args.opts = args.opts[1:]
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if args.num_gpus < 1:
        parser.error("--num-gpus must be at least 1")
    if args.workers < 0:
        parser.error("--workers must be >= 0")
    video.check_video_arguments(parser, args)
    if args.onnx is None and (args.config_file is None or args.checkpoint is None):
        parser.error("--config-file and --checkpoint are required (or --onnx)")
    if args.onnx is not None:
        _check_onnx_options(parser, args)
    if args.video is not None:  # its guidance and prompts: check_video_arguments
        return args
    if args.data_dir is not None and (args.trimap or args.mask):
        parser.error("--trimap and --mask go with --image; --data-dir has its trimaps")
    if args.mask is not None and args.unknown_width is None:
        parser.error("--mask needs --unknown-width (px, or a fraction of the shorter side)")
    check_prompt_arguments(parser, args)  # --segmenter, --box, --point, --prompts
    made_from_mask = args.mask is not None or args.segmenter is not None
    if args.unknown_width is not None and not made_from_mask:
        parser.error("--unknown-width goes with --mask or --segmenter")
    if args.save_trimap and not made_from_mask:
        parser.error("--save-trimap writes the trimap made from a --mask or a --segmenter's mask")
    return args


def _check_onnx_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse the options an exported graph cannot honour (usage errors exit with status 2)."""
    fixed_at_export = "is fixed when the graph is exported (tools/export_onnx.py)"
    if args.config_file is not None or args.checkpoint is not None:
        parser.error("--onnx replaces --config-file and --checkpoint: give one or the other")
    if args.opts:
        parser.error(f"config overrides {' '.join(args.opts)}: the config {fixed_at_export}")
    if args.precision != "fp32":
        parser.error("--onnx runs the exported float32 graph: --precision must be fp32")
    if not args.patch_decoder:
        parser.error(f"--no-patch-decoder: the decoder {fixed_at_export}")
    if args.max_number_token == AUTO:
        parser.error(
            "--max-number-token auto models the PyTorch forward's memory: give an integer "
            "with --onnx (or none for the exported config's cap)"
        )


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status (0, 1 or 2, see the module docstring)."""
    args = parse_args(argv)
    return video.run_video_command(args) if args.video is not None else run_command(args)


if __name__ == "__main__":
    sys.exit(main())
