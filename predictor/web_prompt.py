"""The web demo's Prompt tab: clicks and a box on the image instead of a trimap.

Clicking ``#prompt-image`` adds a foreground point; ``#prompt-mode`` makes the next clicks
background points, or box corners (two clicks draw a box); ``#prompt-box`` takes a typed box
``X0,Y0,X1,Y1``. After every change the segmenter (:class:`predictor.segmenter.Segmenter`) makes
the mask and the trimap is made from it: both are shown (``#prompt-mask-output``,
``#prompt-trimap-output``) before the matte is run with the page's Run button. The segmenter's
image embedding is kept per image, so a new click runs its prompt decoder only.

The ``/matte_prompt`` endpoint serves ``gradio_client``: an image, a box, points and an unknown
width in; the mask, the trimap, the 8-bit alpha PNG, the RGBA PNG and the run's numbers out,
with the server's default options.

``tools/web_demo.py --segmenter`` builds it; :func:`predictor.web_app.build_app` adds the tab.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os

import cv2
import gradio as gr
import numpy as np

from data.image_io import write_image
from data.trimap import AUTO_WIDTH, parse_unknown_width
from predictor.prompts import (
    BACKGROUND,
    FOREGROUND,
    PromptError,
    Prompts,
    parse_box,
)
from predictor.segmenter import Guidance, Segmenter, segmenter_rgb
from predictor.session import InputError, Upload
from predictor.web_app import DemoHandlers, errors_on_the_page, uploaded_file, write_results
from utils.levels import UINT8_MAX

__all__ = ["PROMPT_SOURCE", "PromptTab", "empty_state", "state_prompts"]

logger = logging.getLogger(__name__)

PROMPT_SOURCE = "prompt"  # the page's trimap source when the Prompt tab is used
# Click modes of #prompt-mode.
FOREGROUND_MODE, BACKGROUND_MODE, BOX_MODE = "foreground point", "background point", "box"
MODE_LABELS = {FOREGROUND_MODE: FOREGROUND, BACKGROUND_MODE: BACKGROUND}
# Drawing the prompts on the image: RGB colours, marker radius as a share of the longer side.
COLOURS = {FOREGROUND: (0, 200, 0), BACKGROUND: (230, 0, 0), "box": (30, 120, 255)}
MARKER_SHARE = 0.012
MIN_MARKER_PX = 3


def empty_state() -> dict:
    """A page's prompts before any click: no points, no box, no pending corner, auto width."""
    return {"points": [], "box": None, "corner": None, "width": AUTO_WIDTH}


def state_prompts(state: dict) -> Prompts | None:
    """The prompts of a page's state, or None while they cannot make a mask (no box and no
    foreground point yet)."""
    box = state.get("box")
    points = [tuple(point) for point in state.get("points", [])]
    if box is None and not any(point[2] == FOREGROUND for point in points):
        return None
    return Prompts.create(box=box, points=points)


def _width(text: object) -> float | str:
    """The unknown width of the page or of an API call: px, a fraction, or auto (empty)."""
    if text is None or str(text).strip() == "":
        return AUTO_WIDTH
    try:
        return parse_unknown_width(str(text).strip())
    except ValueError as exc:
        raise InputError(f"unknown width {text!r}: {exc}; give px (e.g. 10) or auto") from exc


def _prompts(box: object, points: object) -> Prompts:
    """An API call's prompts: a box ``[x0, y0, x1, y1]`` (or ``"x0,y0,x1,y1"``, or none) and
    points ``[[x, y], [x, y, label], ...]``."""
    try:
        if isinstance(box, str):
            box = parse_box(box) if box.strip() else None
        return Prompts.create(box=box or None, points=points or None)
    except (PromptError, argparse.ArgumentTypeError) as exc:
        raise InputError(str(exc)) from exc


def _draw(rgb: np.ndarray, state: dict) -> np.ndarray:
    """The image with its prompts drawn: points as discs (green foreground, red background),
    the box as a rectangle, a pending box corner as a cross."""
    canvas = np.ascontiguousarray(rgb)
    radius = max(MIN_MARKER_PX, round(MARKER_SHARE * max(rgb.shape[:2])))
    thickness = max(1, radius // 2)
    if state["box"] is not None:
        x0, y0, x1, y1 = (round(v) for v in state["box"])
        cv2.rectangle(canvas, (x0, y0), (x1, y1), COLOURS["box"], thickness)
    if state["corner"] is not None:
        x, y = (round(v) for v in state["corner"])
        cv2.drawMarker(canvas, (x, y), COLOURS["box"], cv2.MARKER_CROSS, 2 * radius, thickness)
    for x, y, label in state["points"]:
        cv2.circle(canvas, (round(x), round(y)), radius, COLOURS[label], cv2.FILLED)
        cv2.circle(canvas, (round(x), round(y)), radius, (255, 255, 255), 1)
    return canvas


def _points_text(state: dict) -> str:
    """The prompts in words, for the page."""
    prompts = [f"box {','.join(f'{v:g}' for v in state['box'])}"] if state["box"] else []
    prompts += [
        f"{'foreground' if label == FOREGROUND else 'background'} point {x:g},{y:g}"
        for x, y, label in state["points"]
    ]
    if state["corner"] is not None:
        prompts.append("box corner {:g},{:g} (click the opposite corner)".format(*state["corner"]))
    return "; ".join(prompts) or "no prompts yet: click the subject"


class PromptTab:
    """The Prompt tab's side of the server: one segmenter, shared by every page.

    Args:
        segmenter: the loaded segmenter (its embedding cache serves every page).
    """

    def __init__(self, segmenter: Segmenter) -> None:
        self.segmenter = segmenter

    @staticmethod
    def _levels(handlers: DemoHandlers, image: Upload) -> np.ndarray:
        """An uploaded image's RGB levels, refused as the session refuses it: above the
        server's ``--max-pixels`` (from its header first, so nothing is decoded for a refused
        image) or not a readable image.

        Raises:
            InputError: see above.
        """
        return handlers.session.read_image(image)

    def guidance(
        self, image: Upload, levels: np.ndarray, prompts: Prompts, width: float | str
    ) -> Guidance:
        """The segmenter's mask of an uploaded image (its ``levels``) and the trimap made from
        it.

        Raises:
            InputError: prompts outside the image, a bad width.
        """
        try:
            return self.segmenter.guidance(levels, prompts, width)
        except ValueError as exc:  # PromptError, a bad width
            raise InputError(f"{image.name}: {exc}") from exc

    def guide(self, handlers: DemoHandlers, image: Upload, state: dict | None) -> dict:
        """``MattingSession.run``'s trimap source for the page's run: the segmenter's mask (as
        a file of this request) and the unknown width.

        Raises:
            InputError: no prompts yet, or see :meth:`_levels` and :meth:`guidance`.
        """
        prompts = state_prompts(state or empty_state())
        if prompts is None:
            raise InputError("click the subject on the image (or draw a box) first")
        mask_file = handlers.folders.new() / "mask.png"
        write_image(mask_file, self._mask_levels(handlers, image, prompts, state["width"]))
        return {"mask": Upload(mask_file, "the segmenter's mask"), "unknown_width": state["width"]}

    def _mask_levels(
        self, handlers: DemoHandlers, image: Upload, prompts: Prompts, width: float | str
    ) -> np.ndarray:
        """The segmenter's mask as 0/255 levels."""
        mask = self.guidance(image, self._levels(handlers, image), prompts, width).mask
        return (mask * UINT8_MAX).astype(np.uint8)

    # --- page events -----------------------------------------------------------------------

    def _preview(self, handlers: DemoHandlers, image: Upload | None, state: dict) -> tuple:
        """The drawn prompts, the mask and the trimap (files), and the prompts in words (only
        the words before an image is given)."""
        if image is None:
            return None, None, None, _points_text(state)
        levels = self._levels(handlers, image)
        folder = handlers.folders.new()
        drawn = folder / "prompts.png"
        write_image(drawn, _draw(segmenter_rgb(levels), state)[:, :, ::-1])  # RGB -> BGR
        prompts = state_prompts(state)
        if prompts is None:
            return str(drawn), None, None, _points_text(state)
        guidance = self.guidance(image, levels, prompts, state["width"])
        mask, trimap = folder / "mask.png", folder / "trimap.png"
        write_image(mask, (guidance.mask * UINT8_MAX).astype(np.uint8))
        write_image(trimap, guidance.trimap)
        return str(drawn), str(mask), str(trimap), _points_text(state)

    def build(self, handlers: DemoHandlers, image: gr.Image, source: gr.State) -> gr.State:
        """The Prompt tab, inside the page's trimap tabs, and ``/matte_prompt``.

        Returns:
            the page's prompt state, an input of the page's run (:meth:`guide`).
        """
        model_queue = {"concurrency_limit": 1, "concurrency_id": "model"}
        shown = {"type": "filepath", "interactive": False}
        with gr.Tab("Prompt", id=PROMPT_SOURCE) as tab:
            state = gr.State(empty_state())
            prompt_image = gr.Image(
                label="Click the subject (the segmenter makes the mask)",
                elem_id="prompt-image",
                buttons=[],
                **shown,
            )
            with gr.Row():
                mode = gr.Radio(
                    [FOREGROUND_MODE, BACKGROUND_MODE, BOX_MODE],
                    value=FOREGROUND_MODE,
                    label="A click adds",
                    elem_id="prompt-mode",
                )
                box = gr.Textbox(
                    label="Box X0,Y0,X1,Y1 (px; two clicks in box mode, or type it)",
                    elem_id="prompt-box",
                )
                width = gr.Textbox(
                    value=AUTO_WIDTH,
                    label="Unknown width: px on each side of the mask's edge, or auto",
                    elem_id="prompt-unknown-width",
                )
            with gr.Row():
                prompts_text = gr.Markdown(_points_text(empty_state()), elem_id="prompt-points")
                clear = gr.Button("Clear prompts", elem_id="prompt-clear", size="sm")
            with gr.Row():
                mask_output = gr.Image(
                    label="Segmenter's mask", elem_id="prompt-mask-output", **shown
                )
                trimap_output = gr.Image(
                    label="Trimap made from it", elem_id="prompt-trimap-output", **shown
                )
            self._api(handlers, image, model_queue)
        previews = [prompt_image, mask_output, trimap_output, prompts_text]

        def page_image(payload: dict | None) -> tuple:
            """A new image: its prompts start again."""
            path = payload.get("path") if payload else None
            return empty_state(), path, None, None, _points_text(empty_state()), ""

        def clicked(payload: dict | None, page: dict, click_mode: str, event: gr.SelectData):
            upload = self._image(payload)
            if not event.index or None in event.index:  # the image was being replaced
                raise InputError("that click came while the image was redrawn: click again")
            x, y = (float(v) for v in event.index)
            page = {**page, "points": list(page["points"])}
            if click_mode == BOX_MODE:
                if page["corner"] is None:
                    page["corner"] = [x, y]
                else:
                    (cx, cy), page["corner"] = page["corner"], None
                    page["box"] = [min(cx, x), min(cy, y), max(cx, x), max(cy, y)]
            else:
                page["points"].append([x, y, MODE_LABELS[click_mode]])
            return page, *self._preview(handlers, upload, page), _box_text(page), PROMPT_SOURCE

        def typed(payload: dict | None, page: dict, box_text: str, width_text: str):
            upload = uploaded_file(payload, "image")
            page = {**page, "width": _width(width_text)}
            if box_text.strip():
                page["box"] = list(_prompts(box_text, None).box)
            else:
                page["box"] = None
            return page, *self._preview(handlers, upload, page), PROMPT_SOURCE

        def cleared(payload: dict | None, page: dict):
            upload = uploaded_file(payload, "image")
            page = {**empty_state(), "width": page["width"]}
            return page, *self._preview(handlers, upload, page), ""

        image.change(
            page_image,
            image,
            [state, prompt_image, mask_output, trimap_output, prompts_text, box],
            preprocess=False,
            queue=False,
            api_visibility="private",
        )
        tab.select(lambda: PROMPT_SOURCE, None, source, queue=False, api_visibility="private")
        events = {"preprocess": False, "api_visibility": "private", **model_queue}
        prompt_image.select(
            errors_on_the_page(clicked),
            [image, state, mode],
            [state, *previews, box, source],
            # Clicks while the last one runs are queued (the default drops them), and no progress
            # overlay covers the image (it would swallow them).
            trigger_mode="multiple",
            show_progress="hidden",
            **events,
        )
        for trigger in (box.submit, box.blur, width.submit, width.blur):
            trigger(
                errors_on_the_page(typed),
                [image, state, box, width],
                [state, *previews, source],
                **events,
            )
        clear.click(errors_on_the_page(cleared), [image, state], [state, *previews, box], **events)
        return state

    def _api(self, handlers: DemoHandlers, image: gr.Image, model_queue: dict) -> None:
        """``/matte_prompt``: hidden inputs and outputs, the server's default options."""
        api_box = gr.JSON(label="box", visible=False)
        api_points = gr.JSON(label="points", visible=False)
        api_width = gr.Textbox(label="unknown width", visible=False)
        hidden = {"type": "filepath", "visible": False, "format": "png"}
        outputs = [
            gr.Image(label=label, **hidden)
            for label in ("mask", "trimap", "alpha (8-bit PNG, as inference.py writes it)", "rgba")
        ]
        outputs.append(gr.JSON(label="numbers", visible=False))
        trigger = gr.Button(visible=False)
        trigger.click(
            errors_on_the_page(functools.partial(self.api_matte_prompt, handlers)),
            [image, api_box, api_points, api_width],
            outputs,
            preprocess=False,
            api_name="matte_prompt",
            api_description="An image, a box [x0, y0, x1, y1] (or null), points [[x, y], "
            "[x, y, label], ...] (label 1 foreground, 0 background) and an unknown width (px, "
            "or auto) in; the segmenter's mask, the trimap, the 8-bit alpha PNG (as "
            "inference.py writes it), the RGBA cutout PNG and the run's numbers out.",
            **model_queue,
        )

    def api_matte_prompt(
        self,
        handlers: DemoHandlers,
        image: dict | None,
        box: object,
        points: object,
        width: object,
    ) -> tuple[str, str, str, str, dict]:
        """``/matte_prompt``: the mask, trimap, alpha and RGBA files (None for an extra that
        could not be made) and the numbers (``not_written``: those extras, with the reasons)."""
        upload = self._image(image)
        prompts, unknown_width = _prompts(box, points), _width(width)
        folder = handlers.folders.new()
        mask_file = folder / "segmenter_mask.png"
        write_image(mask_file, self._mask_levels(handlers, upload, prompts, unknown_width))
        result = handlers.session.run(
            upload,
            mask=Upload(mask_file, "the segmenter's mask"),
            unknown_width=unknown_width,
            options=handlers.default_options,
        )
        result.numbers["prompts"] = prompts.describe()
        files, not_written = write_results(result, folder, composite=None)
        files["mask"] = folder / f"{result.name}_mask.png"  # named as the other results
        os.replace(mask_file, files["mask"])
        logger.info("%s: %s", upload.name, prompts.describe())
        paths = (files.get(kind) for kind in ("mask", "trimap", "alpha", "rgba"))
        numbers = {**result.numbers, "not_written": not_written}
        return (*(None if path is None else str(path) for path in paths), numbers)

    @staticmethod
    def _image(payload: dict | None) -> Upload:
        upload = uploaded_file(payload, "image")
        if upload is None:
            raise InputError("upload an image (or pick a demo image) first")
        return upload


def _box_text(state: dict) -> str:
    box = state["box"]
    return "" if box is None else ",".join(f"{v:g}" for v in box)
