"""The web demo's Prompt tab (predictor.web_prompt) on a tiny random SAM checkpoint: the prompt
state and its drawing (fast, no server), then tools/web_demo.py --segmenter served in a
subprocess: /matte_prompt through gradio_client gives the files inference.py writes for the same
prompts, bad prompts are refused and the server keeps serving, and in headless Chromium two
clicks on #prompt-image and Run give the alpha of those clicks.

The browser tests skip as tests/predictor/test_web_demo.py's do (no playwright or Chromium)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
from gradio.utils import get_upload_folder

import inference
from predictor.matting import MattingPredictor
from predictor.outputs import alpha_to_uint8
from predictor.prompts import Prompts
from predictor.segmenter import Segmenter, load_segmenter
from predictor.session import InputError, MattingSession, Upload
from predictor.web_app import DemoHandlers, build_app
from predictor.web_prompt import COLOURS, PromptTab, _draw, empty_state, state_prompts
from predictor.weights import build_inference_model, load_inference_weights
from tests.helpers import DEMO_CHECKPOINT, DEMO_DIR, TINY_CONFIG, served_web_demo
from tests.predictor.test_web_demo import (
    CHROMIUM_ARGS,
    RESULT_SECONDS,
    VIEWPORT,
    _chromium,
    _decoded,
    _result,
    _set_file,
    read,
)
from tools import web_demo

IMAGE = DEMO_DIR / "merged" / "test_001.png"  # 282 x 285 (W x H)
BOX, POINT = [40, 60, 200, 250], [120, 150]


@pytest.fixture(scope="module")
def segmenter_dir(tiny_segmenters) -> Path:
    return tiny_segmenters["sam"]


@pytest.fixture(scope="module")
def predictor(segmenter_dir) -> MattingPredictor:
    return MattingPredictor.from_config(
        TINY_CONFIG, DEMO_CHECKPOINT, device="cpu", segmenter=segmenter_dir
    )


def test_the_state_gives_prompts_once_they_can_make_a_mask():
    state = empty_state()
    assert state_prompts(state) is None
    state["points"] = [[5, 6, 0]]  # a background point alone makes no mask
    assert state_prompts(state) is None
    state["points"].append([7, 8, 1])
    assert state_prompts(state) == Prompts(points=((5, 6, 0), (7, 8, 1)))
    state["box"] = [1, 2, 30, 40]
    assert state_prompts(state).box == (1, 2, 30, 40)


def test_the_prompts_are_drawn_on_the_image():
    rgb = np.zeros((100, 120, 3), np.uint8)
    state = {**empty_state(), "points": [[20, 30, 1], [80, 60, 0]], "box": [10, 10, 110, 90]}
    drawn = _draw(rgb.copy(), state)
    assert tuple(drawn[30, 20]) == COLOURS[1] and tuple(drawn[60, 80]) == COLOURS[0]
    assert tuple(drawn[10, 50]) == COLOURS["box"] and not drawn[50, 50].any()


@pytest.fixture(scope="module")
def session() -> MattingSession:
    model = build_inference_model(TINY_CONFIG)
    load_inference_weights(model, DEMO_CHECKPOINT)
    return MattingSession(model, device="cpu")


@pytest.fixture
def make_handlers(tmp_path, monkeypatch):
    """Handlers with the Prompt tab of a session and a segmenter, uploads in a folder of this
    test, their request folders removed afterwards."""
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    made = []

    def make(session: MattingSession, segmenter: Segmenter) -> DemoHandlers:
        made.append(DemoHandlers(session, "fp32", prompt=PromptTab(segmenter)))
        return made[-1]

    yield make
    for handlers in made:
        handlers.folders.remove()


@pytest.fixture
def handlers(make_handlers, session, predictor) -> DemoHandlers:
    return make_handlers(session, predictor.segmenter)


def uploaded(path: Path) -> dict:
    """A Gradio payload of ``path`` as uploaded to the server."""
    copy = Path(get_upload_folder()) / "upload" / path.name
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.write_bytes(path.read_bytes())
    return {"path": str(copy), "orig_name": path.name}


@pytest.mark.slow
def test_matte_prompt_gives_the_predictors_alpha_of_the_prompts(handlers, predictor):
    payload = uploaded(IMAGE)
    mask, trimap, alpha, rgba, numbers = handlers.prompt.api_matte_prompt(
        handlers, payload, BOX, [POINT], "7"
    )
    expected, guidance = predictor(
        IMAGE, box=BOX, points=[POINT], unknown_width=7, return_guidance=True
    )
    assert np.array_equal(read(Path(mask)), (guidance.mask * 255).astype(np.uint8))
    assert np.array_equal(read(Path(trimap)), guidance.trimap)
    assert np.array_equal(read(Path(alpha)), alpha_to_uint8(expected))
    assert read(Path(rgba)).shape == (*expected.shape, 4)
    assert numbers["prompts"] == "box 40,60,200,250; point 120,150 (foreground)"
    for box, points, width, message in (
        ([0, 0, 300, 10], [], "auto", "reaches outside the image"),
        ("5,5,5,9", [], "auto", "is empty"),
        (None, [[3, 4, 2]], "auto", "unknown label 2"),
        (None, [POINT], "wide", "unknown width 'wide'"),
        (None, None, "auto", "a box or at least one foreground point"),
    ):
        with pytest.raises(InputError, match=message):
            handlers.prompt.api_matte_prompt(handlers, payload, box, points, width)


@pytest.mark.slow
def test_the_page_run_takes_the_prompt_states_mask(handlers, predictor):
    payload = uploaded(IMAGE)
    state = {**empty_state(), "points": [[*POINT, 1], [20, 20, 0]], "width": 5}
    page = ["prompt", None, None, 10, None, "config", None, "fp32", True, "#00ff00", state]
    trimap, alpha, *_ = handlers.page_run(payload, *page)
    expected, guidance = predictor(
        IMAGE, points=state["points"], unknown_width=5, return_guidance=True
    )
    assert np.array_equal(read(Path(alpha)), alpha_to_uint8(expected))
    assert np.array_equal(read(Path(trimap)), guidance.trimap)
    with pytest.raises(InputError, match="click the subject on the image"):
        handlers.page_run(payload, *page[:-1], empty_state())


def test_the_prompt_tab_and_its_api_come_with_a_segmenter_only(session, predictor):
    for prompt in (None, PromptTab(predictor.segmenter)):
        handlers = DemoHandlers(session, "fp32", prompt=prompt)
        try:
            app = build_app(handlers, "test")
        finally:
            handlers.folders.remove()
        ids = {getattr(block, "elem_id", None) for block in app.blocks.values()}
        expected = {"prompt-image", "prompt-mode", "prompt-box", "prompt-mask-output"}
        assert (expected <= ids) == (prompt is not None)
        queued = {fn.api_name: fn for fn in app.fns.values() if fn.queue}
        assert ("matte_prompt" in queued) == (prompt is not None)
        assert {(fn.concurrency_id, fn.concurrency_limit) for fn in queued.values()} == {
            ("model", 1)
        }


def test_a_segmenter_that_cannot_load_is_a_setup_error(tmp_path, caplog):
    bad = tmp_path / "not_sam"
    bad.mkdir()
    argv = ["--config-file", str(TINY_CONFIG), "--checkpoint", str(DEMO_CHECKPOINT)]
    assert web_demo.main([*argv, "--device", "cpu", "--segmenter", str(bad)]) == 2
    assert "not a transformers checkpoint folder" in caplog.text


# --- the server ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory, segmenter_dir) -> str:
    """tools/web_demo.py --segmenter on the demo model, in a subprocess: its URL."""
    root = tmp_path_factory.mktemp("server")
    with served_web_demo(root, "--segmenter", str(segmenter_dir)) as url:
        yield url
    assert "UserWarning" not in (root / "server.log").read_text()  # the page is built cleanly


@pytest.fixture(scope="module")
def cli_pngs(tmp_path_factory, segmenter_dir) -> Path:
    """inference.py's outputs for test_001 with the box and the point."""
    out = tmp_path_factory.mktemp("cli")
    command = ["--config-file", str(TINY_CONFIG), "--checkpoint", str(DEMO_CHECKPOINT)]
    command += ["--device", "cpu", "--workers", "0", "--output-dir", str(out), "--save-trimap"]
    command += ["--image", str(IMAGE), "--segmenter", str(segmenter_dir)]
    command += ["--box", ",".join(map(str, BOX)), "--point", ",".join(map(str, POINT))]
    assert inference.main([*command, "--unknown-width", "auto"]) == 0
    return out


@pytest.mark.slow
def test_matte_prompt_from_gradio_client_equals_the_command_line(server, cli_pngs, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(server, download_files=str(tmp_path), verbose=False)
    mask, trimap, alpha, rgba, numbers = client.predict(
        handle_file(str(IMAGE)), BOX, [POINT], "auto", api_name="/matte_prompt"
    )
    assert Path(alpha).read_bytes() == (cli_pngs / "test_001.png").read_bytes()
    assert np.array_equal(read(Path(mask)), read(cli_pngs / "mask" / "test_001.png"))
    assert np.array_equal(read(Path(trimap)), read(cli_pngs / "trimap" / "test_001.png"))
    assert np.array_equal(read(Path(rgba))[:, :, 3], read(Path(alpha)))
    assert numbers["image"] == "test_001.png"
    with pytest.raises(AppError, match="point 400,10 is outside the image"):
        client.predict(handle_file(str(IMAGE)), None, [[400, 10]], "auto", api_name="/matte_prompt")
    again = client.predict(
        handle_file(str(IMAGE)), ",".join(map(str, BOX)), [POINT], "", api_name="/matte_prompt"
    )
    assert Path(again[2]).read_bytes() == Path(alpha).read_bytes()  # a box as text, auto width


# --- in a browser ----------------------------------------------------------------------------


@pytest.fixture
def page(server):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package")
    executable = _chromium()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport=VIEWPORT)
        page = context.new_page()
        page.goto(server)
        page.locator("#run-button").wait_for()
        yield page
        browser.close()


def _click(page, x: float, y: float) -> None:
    """A click at a share (x, y) of #prompt-image's picture."""
    picture = page.locator("#prompt-image img").first
    box = picture.bounding_box()
    page.mouse.click(box["x"] + x * box["width"], box["y"] + y * box["height"])


def _shown_prompts(page, count: int) -> list[tuple[float, float, int]]:
    """The points #prompt-points lists, once it lists ``count`` of them."""
    text = page.locator("#prompt-points")
    deadline = time.monotonic() + RESULT_SECONDS
    while True:
        found = re.findall(r"(foreground|background) point ([\d.]+),([\d.]+)", text.inner_text())
        if len(found) == count:
            return [(float(x), float(y), int(kind == "foreground")) for kind, x, y in found]
        assert time.monotonic() < deadline, text.inner_text()
        time.sleep(0.2)


@pytest.mark.slow
def test_two_clicks_and_run_give_the_alpha_of_those_clicks(page, predictor):
    _set_file(page, "image-input", IMAGE)
    page.get_by_role("tab", name="Prompt").click()
    page.locator("#prompt-image img").first.wait_for()
    _click(page, 0.45, 0.5)
    _shown_prompts(page, 1)
    page.locator("#prompt-mode").get_by_text("background point").click()
    _click(page, 0.1, 0.1)
    points = _shown_prompts(page, 2)
    assert [label for _, _, label in points] == [1, 0]
    expected, guidance = predictor(IMAGE, points=points, return_guidance=True)
    mask = _decoded(_result(page, "prompt-mask-output"))
    assert mask.shape == (285, 282)
    page.locator("#run-button").click()
    alpha = _decoded(_result(page, "alpha-output"))
    assert np.array_equal(alpha, alpha_to_uint8(expected))
    assert np.array_equal(_decoded(_result(page, "trimap-output")), guidance.trimap)


@pytest.mark.slow
def test_a_box_is_drawn_with_two_clicks_or_typed(page, predictor):
    _set_file(page, "image-input", IMAGE)
    page.get_by_role("tab", name="Prompt").click()
    page.locator("#prompt-image img").first.wait_for()
    page.locator("#prompt-mode").get_by_text("box").click()
    _click(page, 0.2, 0.2)
    page.locator("#prompt-points").get_by_text("box corner").wait_for()
    _click(page, 0.7, 0.8)
    box_input = page.locator("#prompt-box textarea, #prompt-box input").first
    deadline = time.monotonic() + RESULT_SECONDS
    while not box_input.input_value():
        assert time.monotonic() < deadline, page.locator("#prompt-points").inner_text()
        time.sleep(0.2)
    drawn = [float(v) for v in box_input.input_value().split(",")]
    assert drawn[0] < drawn[2] and drawn[1] < drawn[3]
    box_input.fill("30,40,220,260")
    box_input.press("Enter")
    page.locator("#prompt-points").get_by_text("box 30,40,220,260").wait_for()
    page.locator("#run-button").click()
    expected = predictor(IMAGE, box=(30, 40, 220, 260))
    assert np.array_equal(_decoded(_result(page, "alpha-output")), alpha_to_uint8(expected))


def test_images_the_session_refuses_are_refused_before_the_segmenter_runs(
    make_handlers, session, predictor, tmp_path
):
    small = MattingSession(session.model, device="cpu", max_pixels=1000)
    handlers = make_handlers(small, predictor.segmenter)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    for payload, message in (
        (uploaded(IMAGE), r"test_001.png is 282x285 \(W x H\) = 0.08 MP, above this server"),
        (uploaded(text), "notes.png: cannot decode"),
    ):
        with pytest.raises(InputError, match=message):
            handlers.prompt.api_matte_prompt(handlers, payload, BOX, [POINT], "auto")


def test_new_prompts_on_an_image_run_the_prompt_decoder_only(
    make_handlers, session, segmenter_dir, monkeypatch
):
    segmenter = load_segmenter(segmenter_dir, device="cpu")
    embedded = []
    embed = segmenter.model.get_image_embeddings
    monkeypatch.setattr(
        segmenter.model,
        "get_image_embeddings",
        lambda pixels: embedded.append(pixels.shape) or embed(pixels),
    )
    handlers = make_handlers(session, segmenter)
    payload = uploaded(IMAGE)
    handlers.prompt.api_matte_prompt(handlers, payload, BOX, [], "auto")
    handlers.prompt.api_matte_prompt(handlers, payload, None, [POINT], "auto")
    state = {**empty_state(), "points": [[*POINT, 1], [20, 20, 0]]}
    handlers.prompt.guide(handlers, Upload(Path(payload["path"]), IMAGE.name), state)
    assert len(embedded) == 1  # three prompts, one embedding
