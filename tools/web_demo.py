"""Web demo: matting in the browser, served from your own machine (Gradio, no network needed).

    python tools/web_demo.py --config-file configs/tiny/MEMatte_tiny_synthetic.py \\
        --checkpoint pretrained/demo/MEMatte_tiny_synthetic.pth

then open http://127.0.0.1:7860. Give an image (upload one or pick a bundled demo image) and its
trimap: upload a trimap, upload a rough mask (the trimap is unknown within the chosen width of
the mask's edge), or paint one on the image with three brushes (white foreground, gray unknown,
black background; unpainted pixels are background). Choose the token cap (the config's, a
number or auto), the precision and the patch decoder, and run. The page shows the trimap used,
the alpha matte (the 8-bit PNG ``inference.py`` writes, downloadable), the cutout (RGBA PNG with
the estimated foreground colours, over a checkerboard, downloadable), a composite over a chosen
colour, the routing of every routed block (tokens sent to global attention, router probability
heat maps) and the run's numbers (time, peak memory, share of tokens in global attention per
routed block).

With --segmenter (a SAM, SAM-HQ or SAM 2 checkpoint: a Hugging Face hub id or a local
save_pretrained folder, see docs/prompts.md) the page has a Prompt tab: click the subject (a
toggle makes the next clicks background points, or the corners of a box; a box can be typed),
the segmenter's mask and the trimap made from it are shown, and Run mattes the image with them.
Each image is embedded once; a new click runs the segmenter's prompt decoder only. Its
``/matte_prompt`` endpoint takes an image, a box, points and an unknown width::

    mask, trimap, alpha_png, rgba_png, numbers = client.predict(
        handle_file("demo/merged/test_001.png"), [40, 60, 200, 250], [[120, 150]], "auto",
        api_name="/matte_prompt",
    )

The model is loaded once; requests are queued and run one at a time. Images above --max-pixels
(default: sized to the free memory with the token-budget model, see
``predictor.session.default_max_pixels``), trimaps or masks of another size, trimaps with
values other than 0/128/255 (a trimap saved as JPEG; --snap-trimap moves each value to the
nearest level instead) and files that are not images are refused with a message on the page; the
server keeps serving.

From a script, through ``gradio_client`` (the ``/matte`` endpoint: image and trimap in; the alpha
PNG, the RGBA PNG and the run's numbers out, with the server's default options)::

    from gradio_client import Client, handle_file

    client = Client("http://127.0.0.1:7860/")
    alpha_png, rgba_png, numbers = client.predict(
        handle_file("demo/merged/test_000.png"),
        handle_file("demo/trimaps/test_000.png"),
        api_name="/matte",
    )

Nothing is fetched from the network: Gradio's analytics are off and the page uses only the
files Gradio ships. The server listens on 127.0.0.1 unless --host says otherwise (0.0.0.0 opens
it to the network: anyone who can reach the port can run the model).
"""

from __future__ import annotations

import argparse
import logging
import runpy
import sys
from pathlib import Path

runpy.run_path(str(Path(__file__).resolve().parents[1] / "tools" / "_bootstrap.py"))

from data.pixel_limits import max_pixels_argument
from data.trimap import add_snap_trimap_argument
from predictor.segmenter import load_segmenter
from predictor.session import MattingSession
from predictor.web_app import DEFAULT_PORT, DemoHandlers, serve
from predictor.web_prompt import PromptTab
from predictor.weights import build_inference_model, load_inference_weights
from utils.arguments import add_model_arguments
from utils.device import autocast
from utils.memory import configure_malloc

logger = logging.getLogger("web_demo")

EXIT_USAGE = 2
LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s: %(message)s"


def build_parser() -> argparse.ArgumentParser:
    """The command line's options."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_arguments(parser)  # --precision: the default of the page and of /matte
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (0.0.0.0: every interface, open to the network)",
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to listen on")
    parser.add_argument(
        "--max-pixels",
        type=max_pixels_argument,
        metavar="N",
        help="largest image (H x W pixels) a request may bring, by the size its header declares "
        "(a file whose size cannot be read from its header is refused); default: what fits the "
        "free memory at start (the token-budget model with the config's token cap for the "
        "forward, and the results' memory; on CUDA the forward on the GPU, the results on the "
        "host), at most the image decoders' ceiling",
    )
    add_snap_trimap_argument(parser)
    parser.add_argument(
        "--segmenter",
        metavar="ID_OR_DIR",
        help="adds the Prompt tab: a transformers SAM, SAM-HQ or SAM 2 checkpoint, a Hugging "
        "Face hub id (e.g. facebook/sam-vit-base, downloaded once) or a save_pretrained folder",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Load the model, serve the page until interrupted; return the exit status (2: setup
    error)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    configure_malloc()  # the allocator settings the token-budget model was measured with
    try:
        model = build_inference_model(args.config_file)
        load_inference_weights(model, args.checkpoint, trusted=args.trust_checkpoint)
        session = MattingSession(
            model, device=args.device, max_pixels=args.max_pixels, snap_trimap=args.snap_trimap
        )
        autocast(session.device, args.precision)  # fp16 needs CUDA
        prompt = None
        if args.segmenter is not None:
            prompt = PromptTab(load_segmenter(args.segmenter, device=session.device))
    except (FileNotFoundError, ValueError) as exc:
        logger.error("%s", exc)
        return EXIT_USAGE
    logger.info(
        "%s on %s; images up to %.1f MP", args.config_file, session.device, session.max_pixels / 1e6
    )
    handlers = DemoHandlers(session, args.precision, prompt=prompt)
    title = (
        f"`{Path(args.config_file).name}` with `{Path(args.checkpoint).name}` on "
        f"{session.device}; images up to {session.max_pixels / 1e6:.1f} MP."
    )
    try:
        serve(handlers, title, args.host, args.port)
    except OSError as exc:  # the port is taken
        logger.error("%s", exc)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
