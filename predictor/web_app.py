"""The web demo's page (Gradio): an image and a trimap (uploaded, made from a rough mask, or
painted) in; the trimap used, the alpha PNG, the RGBA cutout, a composite, the routing pictures
and the run's numbers out. ``tools/web_demo.py`` is its command line; requests run on a
:class:`predictor.session.MattingSession`. With a segmenter, a Prompt tab (clicks or a box instead
of a trimap) is added by :mod:`predictor.web_prompt`.

The ``/matte`` endpoint serves ``gradio_client``: an image and its trimap in, the 8-bit alpha PNG,
the RGBA PNG and the run's numbers out, with the server's default options.

Every event handler of the page, whatever its component and whenever it was added, reads only
files this server received as uploads: :func:`only_uploaded_files` wraps each function the built
page registers, and refuses, before the handler runs, a request whose arguments name (at any
depth, in a ``path`` or ``url`` field) a file outside Gradio's upload folder.

References: detectron2 ``demo/predictor.py`` (the demo's model-side code kept beside the predictor).
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import gradio as gr
import numpy as np
import torch
from gradio.utils import get_upload_folder

from modeling.backbone.vit import DEFAULT_MAX_NUMBER_TOKEN
from predictor.matting import AUTO
from predictor.outputs import Outputs, parse_colour
from predictor.session import (
    BRUSH_COLOURS,
    InputError,
    MattingSession,
    RequestOptions,
    SessionResult,
    Upload,
)
from utils.device import PRECISIONS
from utils.memory import MIB
from utils.visualizer import routing_figure

if TYPE_CHECKING:  # the Prompt tab's module builds on this one
    from predictor.web_prompt import PromptTab

__all__ = [
    "DemoHandlers",
    "build_app",
    "errors_on_the_page",
    "only_uploaded_files",
    "serve",
    "uploaded_file",
    "write_results",
]

logger = logging.getLogger(__name__)

# The bundled demo images (the repository's demo/ folder).
DEMO_DIR = Path(__file__).resolve().parents[1] / "demo"
DEMO_NAMES = ("test_000", "test_001", "test_002", "test_003")
DEFAULT_PORT = 7860
DEFAULT_COMPOSITE = "#00b140"  # chroma green
# Unknown band of a mask's trimap: slider range and default, px on each side of the mask's edge.
MAX_UNKNOWN_WIDTH = 200
DEFAULT_UNKNOWN_WIDTH = 10
BRUSH_SIZE = 20  # px, the painting brush's default diameter
ROUTING_HEIGHT = 480  # px on the page; the picture itself is routing_figure's full size
# Gradio's cache of uploads and served results: every hour, files older than an hour go.
CACHE_SWEEP_SECONDS = 3600
CACHE_MAX_AGE_SECONDS = 3600
# Requests waiting for the model beyond this are refused (the queue is full).
QUEUE_SIZE = 32
# Largest upload: an image of --max-pixels as 16-bit RGBA without compression (8 bytes per pixel)
# and room for metadata (EXIF, colour profiles, a phone's embedded video).
UPLOAD_BYTES_PER_PIXEL = 8
UPLOAD_EXTRA_BYTES = 16 * MIB
# Token-cap choices of the page.
CAP_CONFIG, CAP_NUMBER = "config", "number"
# The fields of a Gradio file payload (FileData) that name a file.
FILE_FIELDS = ("path", "url")
# What the page calls each extra output of a request.
RESULT_NAMES = {
    "routing": "routing picture",
    "rgba": "cutout (RGBA PNG)",
    "composite": "composite",
    "trimap": "trimap used",
}
CSS = """
#rgba-output img {
  background: repeating-conic-gradient(#c8c8c8 0% 25%, #ffffff 0% 50%) 50% / 16px 16px;
}
"""


# --- results ---------------------------------------------------------------------------------


class RunFolders:
    """The folders results are written to before Gradio copies them into its cache: one per
    request under a temporary folder. A new request removes the folders of the earlier ones
    (requests run one at a time, and Gradio has copied their files when the next one starts)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="mematte-web-demo-"))

    def new(self) -> Path:
        for folder in self.root.iterdir():
            shutil.rmtree(folder, ignore_errors=True)
        return Path(tempfile.mkdtemp(dir=self.root))

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def write_results(
    result: SessionResult, folder: Path, composite: np.ndarray | None
) -> tuple[dict[str, Path], dict[str, str]]:
    """Write a request's files with ``inference.py``'s writer (:class:`predictor.outputs.Outputs`),
    so that they are the files it writes, named for download: ``<name>.png`` (alpha),
    ``<name>_rgba.png``, ``<name>_trimap.png``, ``<name>_routing.jpg`` and, with a colour,
    ``<name>_composite.png``. The alpha comes first; an extra that cannot be made is left out
    and returned with the reason.

    Args:
        result: the request's result.
        folder: an empty folder.
        composite: ``[3]`` uint8 RGB background colour of the composite, or None for none.

    Returns:
        the files written, ``{"alpha": path, "rgba": ..., "trimap": ..., "routing": ...,
        "composite": ...}``, and the extras not written, ``{kind: reason}``.

    Raises:
        OSError: the alpha cannot be written.
    """
    outputs = Outputs(folder, routing=True, rgba=True, composite=composite, trimap=True)
    for sub_folder in outputs.folders:
        sub_folder.mkdir(parents=True, exist_ok=True)
    routing = result.routing

    def figure() -> np.ndarray:
        return routing_figure(
            result.image.permute(1, 2, 0).numpy(),  # [3, H, W] -> [H, W, 3]
            list(routing.keep.values()),
            list(routing.keep),
            probabilities=list(routing.probability.values()),
        )

    trimap = torch.from_numpy(result.trimap)[None]  # [H, W] -> [1, H, W]
    failed = dict(outputs.write(result.name, result.alpha, trimap, result.foreground, figure))
    files, not_written = {"alpha": outputs.alpha_path(result.name)}, {}
    for kind, path in outputs.extra_paths(result.name).items():
        if path in failed:
            not_written[kind] = failed[path]
            logger.error("%s of %s not written: %s", kind, result.name, failed[path])
        else:  # <kind>/<name>.<suffix> -> <name>_<kind>.<suffix>
            files[kind] = folder / f"{result.name}_{kind}{path.suffix}"
            os.replace(path, files[kind])
        path.parent.rmdir()
    return files, not_written


def numbers_markdown(numbers: dict) -> str:
    """The run's numbers as a Markdown table."""
    shares = ", ".join(
        f"block {block}: {100 * share:.1f} %"
        for block, share in numbers["global_attention_share"].items()
    )
    cap = numbers["token_cap"]
    rows = [
        ("image", f"{numbers['image']}, {numbers['width']} x {numbers['height']} px"),
        (
            "device, precision",
            f"{numbers['device']}, {numbers['precision']}, patch decoder "
            f"{'on' if numbers['patch_decoder'] else 'off'}",
        ),
        ("token cap", f"{'none' if cap is None else cap} ({numbers['token_cap_from']})"),
        ("tokens per image", str(numbers["tokens"])),
        ("share of tokens in global attention", shares or "no routed block"),
        (
            "time",
            f"{numbers['seconds']:.2f} s (model {numbers['model_seconds']:.2f} s, foreground "
            f"colours {numbers['foreground_seconds']:.2f} s)",
        ),
        ("peak memory", f"{numbers['peak_memory_mib']:.0f} MiB ({numbers['peak_memory_of']})"),
    ]
    rows += [
        (f"**not made: {RESULT_NAMES[kind]}**", reason)
        for kind, reason in numbers.get("not_written", {}).items()
    ]
    return "\n".join(["| this run | |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in rows)])


# --- requests --------------------------------------------------------------------------------


def uploaded_file(payload: dict | None, what: str) -> Upload | None:
    """A Gradio file payload (``preprocess=False``: the file as uploaded) as an :class:`Upload`
    (:func:`only_uploaded_files` has checked that it names an uploaded file).

    Raises:
        InputError: a payload without a file.
    """
    if payload is None:
        return None
    if not payload.get("path"):
        raise InputError(f"the {what} did not arrive as a file: upload it again")
    path = Path(payload["path"])
    return Upload(path, payload.get("orig_name") or path.name)


def _file_payloads(value: object) -> Iterator[dict]:
    """The file payloads anywhere in ``value``: every dict with a ``path`` or ``url`` field, in
    nested dicts, lists and tuples."""
    if isinstance(value, dict):
        if any(key in value for key in FILE_FIELDS):
            yield value
        for item in value.values():
            yield from _file_payloads(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _file_payloads(item)


def _check_uploaded(payload: dict) -> None:
    """Refuse a payload that does not name a file in Gradio's upload folder (symbolic links
    resolved): one with only a URL (this server fetches nothing), or with a path elsewhere.

    Raises:
        gr.Error: names the path or URL the request gave.
    """
    path = payload.get("path")
    uploads = Path(get_upload_folder()).resolve()
    if isinstance(path, str) and path and Path(path).resolve().is_relative_to(uploads):
        return
    named = path if path else payload.get("url")
    logger.warning("refused a request naming %r: not a file uploaded to this server", named)
    raise gr.Error(
        f"{named!r} was not uploaded to this server: send files as uploads (the page, or "
        "gradio_client.handle_file)",
        print_exception=False,
    )


def _guarded(fn: Callable) -> Callable:
    """``fn`` behind :func:`_check_uploaded` for every file payload of its arguments.

    Raises:
        TypeError: ``fn`` is a coroutine or generator function (this wrapper would change what
            Gradio sees: extend it before adding such a handler).
    """
    kinds = (inspect.iscoroutinefunction, inspect.isgeneratorfunction, inspect.isasyncgenfunction)
    if any(kind(fn) for kind in kinds):
        raise TypeError(f"{fn!r}: only plain functions can be guarded; extend _guarded")

    @functools.wraps(fn)
    def handler(*args, **kwargs):
        for payload in _file_payloads([args, kwargs]):
            _check_uploaded(payload)
        return fn(*args, **kwargs)

    return handler


def only_uploaded_files(app: gr.Blocks) -> gr.Blocks:
    """Guard every function registered on ``app`` (its event handlers, examples included): a
    request naming a file outside Gradio's upload folder is refused before the function runs
    (:func:`_check_uploaded`). Gradio checks the payloads that carry its file marker when it
    preprocesses them; the others, and every payload of a handler with ``preprocess=False``,
    reach the handler as they are, and a file they name would be read, or copied into Gradio's
    cache and served.

    Returns:
        ``app``, guarded.
    """
    for block_fn in app.fns.values():
        if block_fn.fn is not None:
            block_fn.fn = _guarded(block_fn.fn)
    return app


def _token_cap(mode: str, number: float | None) -> int | str | None:
    """The page's token-cap choice as ``RequestOptions.max_number_token``."""
    if mode == CAP_CONFIG:
        return None
    if mode == AUTO:
        return AUTO
    if number is None or number < 0 or number != int(number):
        raise InputError(f"the token cap must be a whole number >= 0, not {number}")
    return int(number)


def errors_on_the_page(fn: Callable) -> Callable:
    """Show a refused request's message on the page (``gr.Error``); log it on the server."""

    @functools.wraps(fn)
    def handler(*args):
        try:
            return fn(*args)
        except InputError as exc:
            logger.warning("refused: %s", exc)
            raise gr.Error(str(exc), print_exception=False) from exc
        except OSError as exc:  # a file the server could not read or write
            logger.error("%s", exc)
            raise gr.Error(f"the server could not read or write a file: {exc}") from exc

    return handler


class DemoHandlers:
    """What the page's events call.

    Args:
        session: the loaded model.
        precision: the default precision (of ``/matte`` and of the page).
        prompt: the Prompt tab (:mod:`predictor.web_prompt`), or None for a page without it.
    """

    def __init__(
        self, session: MattingSession, precision: str, prompt: PromptTab | None = None
    ) -> None:
        self.session = session
        self.prompt = prompt
        self.default_options = RequestOptions(precision=precision)
        self.folders = RunFolders()

    def page_run(
        self,
        image: dict | None,
        source: str,
        trimap: dict | None,
        mask: dict | None,
        unknown_width: float,
        painting: dict | None,
        cap_mode: str,
        cap_number: float | None,
        precision: str,
        patch_decoder: bool,
        colour: str,
        prompt_state: dict | None = None,
    ) -> tuple[str, str, str, str, str, str]:
        """The page's run: the trimap of the chosen source, the options of the page.

        Returns:
            the paths of the trimap used, alpha, RGBA, composite and routing picture, and the
            numbers as Markdown.
        """
        image_upload = uploaded_file(image, "image")
        if image_upload is None:
            raise InputError("upload an image (or pick a demo image) first")
        guide = {}
        if source == "trimap":
            guide["trimap"] = uploaded_file(trimap, "trimap")
            if guide["trimap"] is None:
                raise InputError("upload a trimap, or use the Mask or Paint tab")
        elif source == "mask":
            guide["mask"] = uploaded_file(mask, "mask")
            if guide["mask"] is None:
                raise InputError("upload a mask, or use the Trimap or Paint tab")
            guide["unknown_width"] = int(unknown_width)
        elif self.prompt is not None and source == "prompt":
            guide = self.prompt.guide(self, image_upload, prompt_state)
        else:
            if painting is None or painting.get("background") is None:
                raise InputError("upload an image first, then paint its trimap over it")
            layers = (uploaded_file(layer, "painting") for layer in painting["layers"])
            guide["painting"] = [layer for layer in layers if layer is not None]
        options = RequestOptions(
            max_number_token=_token_cap(cap_mode, cap_number),
            precision=precision,
            patch_decoder=patch_decoder,
        )
        try:
            composite = parse_colour(colour or "")
        except ValueError as exc:
            raise InputError(f"composite colour: {exc}") from exc
        result = self.session.run(image_upload, options=options, **guide)
        _log_request(result)
        files, not_written = write_results(result, self.folders.new(), composite)
        for kind, reason in not_written.items():
            gr.Warning(f"the {RESULT_NAMES[kind]} could not be made: {reason}")
        numbers = {**result.numbers, "not_written": not_written}
        kinds = ("trimap", "alpha", "rgba", "composite", "routing")
        paths = (str(files[kind]) if kind in files else None for kind in kinds)
        return (*paths, numbers_markdown(numbers))

    def api_matte(self, image: dict | None, trimap: dict | None) -> tuple[str, str, dict]:
        """``/matte``: an image and its trimap with the server's default options.

        Returns:
            the paths of the 8-bit alpha PNG and the RGBA PNG (None when it could not be made),
            and the run's numbers (``not_written``: the extras not made, with the reasons).
        """
        image_upload, trimap_upload = uploaded_file(image, "image"), uploaded_file(trimap, "trimap")
        if image_upload is None or trimap_upload is None:
            raise InputError("/matte takes an image and its trimap")
        result = self.session.run(image_upload, trimap=trimap_upload, options=self.default_options)
        _log_request(result)
        files, not_written = write_results(result, self.folders.new(), composite=None)
        rgba = str(files["rgba"]) if "rgba" in files else None
        return str(files["alpha"]), rgba, {**result.numbers, "not_written": not_written}


def _log_request(result: SessionResult) -> None:
    numbers = result.numbers
    logger.info(
        "%s (%dx%d): %.2f s, model %.2f s",
        numbers["image"],
        numbers["width"],
        numbers["height"],
        numbers["seconds"],
        numbers["model_seconds"],
    )


def _painting_canvas(image: dict | None) -> dict | None:
    """The editor's value for a new image: the image as background, nothing painted."""
    if image is None or not image.get("path"):
        return None
    return {"background": image["path"], "layers": [], "composite": None}


# --- the page --------------------------------------------------------------------------------


def build_app(handlers: DemoHandlers, title: str) -> gr.Blocks:
    """The page and its events (requests on the model share one queue, one at a time)."""
    session = handlers.session
    cap = session.config_cap
    cap_text = "none" if cap is None else str(cap)
    precisions = [p for p in PRECISIONS if session.device.type == "cuda" or p != "fp16"]
    model_queue = {"concurrency_limit": 1, "concurrency_id": "model"}
    image_kwargs = {"type": "filepath", "image_mode": None, "sources": ["upload", "clipboard"]}
    result_kwargs = {"type": "filepath", "interactive": False, "buttons": ["download"]}
    with gr.Blocks(
        title="MEMatte web demo",
        analytics_enabled=False,
        delete_cache=(CACHE_SWEEP_SECONDS, CACHE_MAX_AGE_SECONDS),
    ) as app:
        gr.Markdown(f"# MEMatte web demo\n{title}")
        source = gr.State("trimap")
        with gr.Row():
            with gr.Column():
                image = gr.Image(label="Image", elem_id="image-input", **image_kwargs)
            with gr.Column(), gr.Tabs(selected="trimap") as tabs:
                with gr.Tab("Trimap", id="trimap", render_children=True) as trimap_tab:
                    trimap = gr.Image(
                        label="Trimap: 0 background, 128 unknown, 255 foreground",
                        elem_id="trimap-input",
                        **image_kwargs,
                    )
                with gr.Tab("Mask", id="mask", render_children=True) as mask_tab:
                    mask = gr.Image(
                        label="Rough mask (thresholded at half its range)",
                        elem_id="mask-input",
                        **image_kwargs,
                    )
                    unknown_width = gr.Slider(
                        0,
                        MAX_UNKNOWN_WIDTH,
                        value=DEFAULT_UNKNOWN_WIDTH,
                        step=1,
                        label="Unknown width: px on each side of the mask's edge",
                        elem_id="unknown-width",
                    )
                with gr.Tab("Paint", id="paint") as paint_tab:
                    painting = gr.ImageEditor(
                        label="Paint the trimap: white foreground, gray unknown, black "
                        "background; unpainted pixels are background",
                        elem_id="paint-input",
                        type="filepath",
                        sources=(),
                        transforms=(),
                        layers=False,
                        format="png",
                        brush=gr.Brush(
                            colors=[
                                BRUSH_COLOURS[kind]
                                for kind in ("foreground", "unknown", "background")
                            ],
                            default_color=BRUSH_COLOURS["foreground"],
                            color_mode="fixed",
                            default_size=BRUSH_SIZE,
                        ),
                    )
                prompt_state = (  # the Prompt tab, with a segmenter (predictor.web_prompt)
                    gr.State(None)
                    if handlers.prompt is None
                    else handlers.prompt.build(handlers, image, source)
                )
        gr.Examples(
            [
                [str(DEMO_DIR / "merged" / f"{n}.png"), str(DEMO_DIR / "trimaps" / f"{n}.png")]
                for n in DEMO_NAMES
            ],
            [image, trimap],
            label="Demo images (synthetic, with their trimaps)",
            elem_id="demo-examples",
        )
        with gr.Row():
            cap_mode = gr.Radio(
                [
                    (f"the config's ({cap_text})", CAP_CONFIG),
                    ("a number", CAP_NUMBER),
                    ("auto", AUTO),
                ],
                value=CAP_CONFIG,
                label="Token cap (tokens in one global attention)",
                elem_id="token-cap",
            )
            cap_number = gr.Number(
                value=DEFAULT_MAX_NUMBER_TOKEN if cap is None else cap,
                minimum=0,
                precision=0,
                label="Token cap, when a number",
                elem_id="token-cap-number",
            )
            precision = gr.Radio(
                precisions,
                value=handlers.default_options.precision,
                label="Precision",
                elem_id="precision",
            )
            patch_decoder = gr.Checkbox(
                value=True, label="Patch decoder (official 512 px tiles)", elem_id="patch-decoder"
            )
            colour = gr.ColorPicker(
                value=DEFAULT_COMPOSITE, label="Composite colour", elem_id="composite-colour"
            )
        run = gr.Button("Run", variant="primary", elem_id="run-button")
        with gr.Row():
            trimap_used = gr.Image(label="Trimap used", elem_id="trimap-output", **result_kwargs)
            alpha = gr.Image(
                label="Alpha (8-bit PNG, as inference.py writes it)",
                elem_id="alpha-output",
                format="png",
                **result_kwargs,
            )
            rgba = gr.Image(
                label="Cutout (RGBA PNG, foreground colours estimated)",
                elem_id="rgba-output",
                format="png",
                **result_kwargs,
            )
            composite = gr.Image(
                label="Composite", elem_id="composite-output", format="png", **result_kwargs
            )
        routing = gr.Image(
            label="Routing per routed block: tokens sent to global attention (top), router "
            "probability of global attention (bottom)",
            elem_id="routing-output",
            height=ROUTING_HEIGHT,
            **result_kwargs,
        )
        numbers = gr.Markdown(elem_id="numbers-output")
        api_numbers = gr.JSON(label="numbers", visible=False)
        api_trigger = gr.Button(visible=False)

        page_outputs = [trimap_used, alpha, rgba, composite, routing, numbers]
        for tab, name in ((trimap_tab, "trimap"), (mask_tab, "mask"), (paint_tab, "paint")):
            tab.select(lambda name=name: name, None, source, queue=False, api_visibility="private")
        for upload, name in ((trimap, "trimap"), (mask, "mask")):
            upload.upload(
                lambda name=name: (name, gr.Tabs(selected=name)),
                None,
                [source, tabs],
                queue=False,
                api_visibility="private",
            )
        image.change(
            _painting_canvas,
            image,
            painting,
            preprocess=False,
            queue=False,
            api_visibility="private",
        )
        run.click(
            lambda: [None] * len(page_outputs),
            None,
            page_outputs,
            queue=False,
            api_visibility="private",
        ).then(
            errors_on_the_page(handlers.page_run),
            [image, source, trimap, mask, unknown_width, painting]
            + [cap_mode, cap_number, precision, patch_decoder, colour, prompt_state],
            page_outputs,
            preprocess=False,
            api_visibility="private",
            **model_queue,
        )
        api_trigger.click(
            errors_on_the_page(handlers.api_matte),
            [image, trimap],
            [alpha, rgba, api_numbers],
            preprocess=False,
            api_name="matte",
            api_description="An image and its trimap in; the 8-bit alpha PNG (as inference.py "
            "writes it), the RGBA cutout PNG and the run's numbers out (server's default options).",
            **model_queue,
        )
    return only_uploaded_files(app)


def serve(handlers: DemoHandlers, title: str, host: str, port: int) -> None:
    """Build the page and serve it until interrupted (SIGTERM stops it as Ctrl-C does); the
    request folders are removed on the way out.

    Raises:
        OSError: the port is taken.
    """
    app = build_app(handlers, title)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop as on Ctrl-C: clean up
    max_pixels = handlers.session.max_pixels
    try:
        app.queue(default_concurrency_limit=1, max_size=QUEUE_SIZE).launch(
            server_name=host,
            server_port=port,
            css=CSS,
            max_file_size=UPLOAD_BYTES_PER_PIXEL * max_pixels + UPLOAD_EXTRA_BYTES,
            footer_links=["api"],
            ssr_mode=False,
            mcp_server=False,
        )
    finally:
        handlers.folders.remove()
