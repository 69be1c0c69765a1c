"""The web demo: requests of predictor.session (fast, no server), then tools/web_demo.py served
in a subprocess, driven through gradio_client (/matte) and in headless Chromium (Playwright): the
alpha PNG is inference.py's, bad input gets a message on the page and the server keeps serving,
masks and paintings make the trimap used, and nothing is fetched from the network.

The browser tests need the playwright package and a Chromium (Debian's ``chromium`` package at
/usr/bin/chromium, or MEMATTE_CHROMIUM=path); they skip, saying which is missing, without one.
MEMATTE_UPDATE_SCREENSHOT=1 makes the first browser test save the README's screenshot
(docs/web_demo.jpg).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

import inference
from data.trimap import trimap_from_mask
from predictor import web_app
from predictor.matting import MattingPredictor
from predictor.outputs import alpha_to_uint8, parse_colour
from predictor.session import (
    BRUSH_COLOURS,
    InputError,
    MattingSession,
    RequestOptions,
    Upload,
    default_max_pixels,
    painted_trimap,
    planned_forward_bytes,
    planned_results_bytes,
)
from predictor.token_budget import SAFETY
from predictor.weights import build_inference_model
from predictor.weights import load_inference_weights as load_weights
from tests.helpers import DEMO_CHECKPOINT, DEMO_DIR, REPO_ROOT, TINY_CONFIG, served_web_demo

SCREENSHOT = REPO_ROOT / "docs" / "web_demo.jpg"
SCREENSHOT_MAX_BYTES = 300 * 1024
SCREENSHOT_QUALITY = 80  # JPEG quality of the README's screenshot
VIEWPORT = {"width": 1280, "height": 900}
# The test server's image limit: the demo images (72416 and 80370 px) pass, a 400 x 300 one not.
SERVER_MAX_PIXELS = 100_000
TOO_LARGE_HW = (300, 400)
RESULT_SECONDS = 60  # wait for one run's results on a busy CPU (the tiny model takes < 1 s)
MASK_WIDTH = 10  # the page's default unknown width, px
# A canvas showing a demo image has thousands of colours; a blank one a handful.
PICTURE_COLOURS = 1000
STROKE_STEPS = 4  # mouse moves per painted stroke (each one is rendered: software WebGL is slow)
# Peak-RSS increments of one request over the idle process (MattingSession.run, then
# write_results with a composite; tiny model, CPU, fp32, utils.memory.configure_malloc applied;
# a smooth gradient image, a disc trimap with an unknown ring): image (H, W), MiB.
MEASURED_REQUEST_INCREMENTS = [((3000, 4000), 983), ((4872, 6017), 2145)]
MAX_OVERESTIMATE = 1.5  # the plan may exceed a measured peak, but not by more than this
MIB = 2**20
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def demo_files(name: str) -> dict[str, Path]:
    return {
        "image": DEMO_DIR / "merged" / f"{name}.png",
        "trimap": DEMO_DIR / "trimaps" / f"{name}.png",
        "mask": DEMO_DIR / "alpha_copy" / f"{name}.png",
    }


def upload(path: Path) -> Upload:
    return Upload(path, path.name)


def read(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


# --- predictor.session -------------------------------------------------------------------


@pytest.fixture(scope="module")
def session() -> MattingSession:
    model = build_inference_model(TINY_CONFIG)
    load_weights(model, DEMO_CHECKPOINT)
    return MattingSession(model, device="cpu", max_pixels=SERVER_MAX_PIXELS)


@pytest.fixture(scope="module")
def predictor() -> MattingPredictor:
    return MattingPredictor.from_config(TINY_CONFIG, DEMO_CHECKPOINT, device="cpu")


def test_a_request_gives_the_predictors_alpha_and_its_numbers(session, predictor):
    files = demo_files("test_000")
    result = session.run(upload(files["image"]), trimap=upload(files["trimap"]))
    expected = predictor(files["image"], files["trimap"])
    assert np.array_equal(alpha_to_uint8(result.alpha), alpha_to_uint8(expected))
    assert np.array_equal(result.trimap, read(files["trimap"]))
    assert result.foreground.shape == (*result.alpha.shape, 3)
    numbers = result.numbers
    assert (numbers["width"], numbers["height"]) == (248, 292)
    assert numbers["token_cap"] == session.config_cap and numbers["token_cap_from"] == "config"
    assert set(numbers["global_attention_share"]) == {"1", "3"}  # the tiny model's routed blocks
    assert numbers["tokens"] == (320 // 16) * (256 // 16)  # padded to 320 x 256
    assert numbers["seconds"] >= numbers["model_seconds"] > 0
    assert numbers["peak_memory_mib"] > 0


def test_a_mask_gives_the_trimap_made_from_it(session, predictor):
    files = demo_files("test_001")
    result = session.run(upload(files["image"]), mask=upload(files["mask"]), unknown_width=7)
    made = trimap_from_mask(read(files["mask"]), 7)
    assert np.array_equal(result.trimap, made)
    expected = predictor(files["image"], made)
    assert np.array_equal(alpha_to_uint8(result.alpha), alpha_to_uint8(expected))


def _layer(hw: tuple[int, int], strokes: list[tuple[slice, slice, str]], alpha: int = 255):
    """An RGBA layer, transparent but for rectangles painted with the named brushes."""
    layer = np.zeros((*hw, 4), np.uint8)
    for rows, cols, brush in strokes:
        rgb = np.frombuffer(bytes.fromhex(BRUSH_COLOURS[brush][1:]), np.uint8)
        layer[rows, cols] = [*rgb, alpha]
    return layer


def test_painted_trimap_levels():
    hw = (20, 30)
    first = _layer(hw, [(slice(0, 10), slice(0, 10), "foreground")])
    first[0:10, 20:30] = [120, 120, 120, 255]  # a gray off the brush: the nearest level counts
    second = _layer(hw, [(slice(5, 10), slice(5, 10), "background")])
    faint = _layer(hw, [(slice(15, 20), slice(0, 30), "foreground")], alpha=100)  # not painted
    trimap = painted_trimap([first, second, faint], hw)
    expected = np.zeros(hw, np.uint8)
    expected[0:10, 0:10] = 255
    expected[5:10, 5:10] = 0  # the later layer on top
    expected[0:10, 20:30] = 128
    assert np.array_equal(trimap, expected)
    with pytest.raises(InputError, match="painting"):
        painted_trimap([np.zeros((20, 31, 4), np.uint8)], hw)


def test_a_painting_gives_its_trimap(session, predictor, tmp_path):
    files = demo_files("test_000")
    hw = read(files["image"]).shape[:2]
    strokes = [(slice(100, 180), slice(60, 200), "unknown")]
    strokes.append((slice(120, 160), slice(90, 170), "foreground"))
    layer = tmp_path / "layer_0.png"
    Image.fromarray(_layer(hw, strokes)).save(layer)
    result = session.run(upload(files["image"]), painting=[upload(layer)])
    expected = painted_trimap([_layer(hw, strokes)], hw)
    assert np.array_equal(result.trimap, expected)
    assert set(np.unique(expected)) == {0, 128, 255}
    assert np.array_equal(
        alpha_to_uint8(result.alpha), alpha_to_uint8(predictor(files["image"], expected))
    )
    empty = tmp_path / "empty.png"
    Image.fromarray(_layer(hw, [])).save(empty)
    with pytest.raises(InputError, match="nothing is painted"):
        session.run(upload(files["image"]), painting=[upload(empty)])


def test_options_apply_to_their_request_only(session):
    files = demo_files("test_000")
    image, trimap = upload(files["image"]), upload(files["trimap"])
    capped = session.run(image, trimap=trimap, options=RequestOptions(max_number_token=3))
    assert (capped.numbers["token_cap"], capped.numbers["token_cap_from"]) == (3, "request")
    auto = session.run(image, trimap=trimap, options=RequestOptions(max_number_token="auto"))
    assert auto.numbers["token_cap_from"] == "auto"
    assert auto.numbers["token_cap"] is None  # every token of a small image fits
    whole = session.run(image, trimap=trimap, options=RequestOptions(patch_decoder=False))
    assert whole.numbers["patch_decoder"] is False
    assert whole.numbers["token_cap"] == session.config_cap  # back to the config's


def _write_text(path: Path) -> Path:
    path.write_text("not an image")
    return path


def _refused_request(case: str, tmp_path: Path) -> tuple[dict, str]:
    """The trimap sources and options of a request the session refuses, and its message."""
    trimap = upload(demo_files("test_000")["trimap"])
    other = demo_files("test_001")
    return {
        "trimap of another size": (
            {"trimap": upload(other["trimap"])},
            r"the trimap test_001.png is 282x285 \(W x H\) but the image test_000.png is 248x292",
        ),
        "trimap not an image": (
            {"trimap": upload(_write_text(tmp_path / "notes.png"))},
            "notes.png: cannot decode",
        ),
        "mask of another size": (
            {"mask": upload(other["mask"]), "unknown_width": 5},
            "the mask test_001.png is 282x285",
        ),
        "mask without a width": (
            {"mask": upload(demo_files("test_000")["mask"])},
            "needs an unknown width",
        ),
        "no trimap": ({}, "give one trimap"),
        "two trimaps": ({"trimap": trimap, "painting": []}, "give one trimap"),
        "fp16 on a CPU": ({"trimap": trimap, "options": RequestOptions(precision="fp16")}, "fp16"),
        "negative cap": (
            {"trimap": trimap, "options": RequestOptions(max_number_token=-1)},
            ">= 0",
        ),
    }[case]


@pytest.mark.parametrize(
    "case",
    [
        "trimap of another size",
        "trimap not an image",
        "mask of another size",
        "mask without a width",
        "no trimap",
        "two trimaps",
        "fp16 on a CPU",
        "negative cap",
    ],
)
def test_refused_requests_say_why(session, tmp_path, case):
    kwargs, message = _refused_request(case, tmp_path)
    with pytest.raises(InputError, match=message):
        session.run(upload(demo_files("test_000")["image"]), **kwargs)


def test_non_images_and_images_above_the_limit_are_refused_and_the_session_keeps_serving(
    session, tmp_path, monkeypatch
):
    files = demo_files("test_000")
    image, trimap = upload(files["image"]), upload(files["trimap"])
    with pytest.raises(InputError, match="readme.txt: cannot decode"):
        session.run(upload(_write_text(tmp_path / "readme.txt")), trimap=trimap)
    large = tmp_path / "large.png"
    cv2.imwrite(str(large), np.zeros((*TOO_LARGE_HW, 3), np.uint8))
    decoded = []
    monkeypatch.setattr("predictor.session.read_rgb_levels", decoded.append)
    with pytest.raises(InputError, match=r"large.png is 400x300 .* above this server's limit"):
        session.run(upload(large), trimap=trimap)
    assert decoded == []  # refused from the header: never decoded
    monkeypatch.undo()
    assert session.run(image, trimap=trimap).alpha.shape == (292, 248)


def _planned_on_cpu(model, hw: tuple[int, int]) -> int:
    """A request's planned peak on the CPU: its forward or its results, the larger."""
    return max(planned_forward_bytes(model, hw), planned_results_bytes(hw))


@pytest.mark.parametrize(("hw", "increment_mib"), MEASURED_REQUEST_INCREMENTS)
def test_planned_request_memory_covers_the_measured_peaks(session, hw, increment_mib):
    planned = _planned_on_cpu(session.model, hw)
    assert increment_mib * MIB <= planned <= MAX_OVERESTIMATE * increment_mib * MIB


def test_default_max_pixels_is_the_largest_square_that_fits(session):
    model, free = session.model, 8 * 2**30
    pixels = default_max_pixels(model, "cpu", free_bytes=free)
    side = int(pixels**0.5)
    assert side**2 == pixels
    planned = [_planned_on_cpu(model, (s, s)) for s in (side, side + 1)]
    assert planned[0] <= SAFETY * free < planned[1]
    assert default_max_pixels(model, "cpu", free_bytes=2 * free) > pixels
    assert default_max_pixels(model, "cpu", free_bytes=2**20) == 0


def test_default_max_pixels_on_cuda_plans_the_forward_on_the_gpu_and_the_results_on_the_host(
    session,
):
    model, free = session.model, 8 * 2**30
    cpu = default_max_pixels(model, "cpu", free_bytes=free)
    # Plenty of host memory: the forward on the GPU decides.
    gpu_bound = default_max_pixels(model, "cuda", free_bytes=free, host_free_bytes=2**40)
    side = int(gpu_bound**0.5)
    assert planned_forward_bytes(model, (side, side)) <= SAFETY * free
    assert planned_forward_bytes(model, (side + 1, side + 1)) > SAFETY * free
    assert gpu_bound > cpu  # the tiny model's forward needs less than its results
    # Little host memory: the results decide.
    assert default_max_pixels(model, "cuda", free_bytes=2**40, host_free_bytes=free) == cpu


# --- the server ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> str:
    """tools/web_demo.py on the demo model, in a subprocess on a free port: its URL."""
    root = tmp_path_factory.mktemp("server")
    with served_web_demo(root, "--max-pixels", str(SERVER_MAX_PIXELS)) as url:
        yield url


@pytest.fixture(scope="module")
def inference_pngs(tmp_path_factory) -> dict[str, Path]:
    """inference.py's alpha PNGs of the demo images test_000 and test_001."""
    out = tmp_path_factory.mktemp("inference")
    names = ("test_000", "test_001")
    command = ["--config-file", str(TINY_CONFIG), "--checkpoint", str(DEMO_CHECKPOINT)]
    command += ["--device", "cpu", "--workers", "0", "--output-dir", str(out)]
    command += ["--image", *(str(demo_files(n)["image"]) for n in names)]
    command += ["--trimap", *(str(demo_files(n)["trimap"]) for n in names)]
    assert inference.main(command) == 0
    return {name: out / f"{name}.png" for name in names}


@pytest.mark.slow
def test_matte_endpoint_returns_the_png_inference_writes(server, inference_pngs, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(server, download_files=str(tmp_path), verbose=False)
    files = demo_files("test_000")
    alpha, rgba, numbers = client.predict(
        handle_file(str(files["image"])), handle_file(str(files["trimap"])), api_name="/matte"
    )
    assert Path(alpha).read_bytes() == inference_pngs["test_000"].read_bytes()
    cutout = read(Path(rgba))
    assert cutout.shape[2] == 4 and np.array_equal(cutout[:, :, 3], read(Path(alpha)))
    assert numbers["image"] == "test_000.png" and numbers["token_cap_from"] == "config"


@pytest.mark.slow
def test_matte_endpoint_refuses_bad_input_and_keeps_serving(server, inference_pngs, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(server, download_files=str(tmp_path), verbose=False)
    image, trimap = demo_files("test_000")["image"], demo_files("test_000")["trimap"]
    large = tmp_path / "large.png"
    cv2.imwrite(str(large), np.zeros((*TOO_LARGE_HW, 3), np.uint8))
    bad = [
        (image, demo_files("test_001")["trimap"], "is 282x285 .* but the image test_000.png"),
        (_write_text(tmp_path / "notes.txt"), trimap, "notes.txt: cannot decode"),
        (large, trimap, "above this server's limit"),
    ]
    for bad_image, bad_trimap, message in bad:
        with pytest.raises(AppError, match=message):
            client.predict(
                handle_file(str(bad_image)), handle_file(str(bad_trimap)), api_name="/matte"
            )
    alpha, _, _ = client.predict(handle_file(str(image)), handle_file(str(trimap)), "/matte")
    assert Path(alpha).read_bytes() == inference_pngs["test_000"].read_bytes()


def _call_raw(server: str, data: list) -> str:
    """``/matte`` called with raw JSON, as any HTTP client can: the stream of its events."""
    request = urllib.request.Request(
        f"{server}gradio_api/call/matte",
        data=json.dumps({"data": data}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=RESULT_SECONDS) as response:
        event_id = json.load(response)["event_id"]
    with urllib.request.urlopen(f"{server}gradio_api/call/matte/{event_id}") as response:
        return response.read().decode()


@pytest.mark.slow
def test_matte_endpoint_reads_only_uploaded_files(server):
    files = demo_files("test_000")
    marker = {"meta": {"_type": "gradio.FileData"}}
    for extra in ({}, marker):  # Gradio checks the paths of marked payloads only
        payload = [{"path": str(files[kind]), **extra} for kind in ("image", "trimap")]
        events = _call_raw(server, payload)
        assert "event: error" in events and "event: complete" not in events
        if not extra:
            assert "was not uploaded to this server" in events


@pytest.mark.slow
def test_results_are_written_as_inference_writes_them(tmp_path, session):
    files = demo_files("test_000")
    result = session.run(upload(files["image"]), trimap=upload(files["trimap"]))
    colour = parse_colour("rgba(10, 20, 200, 1)")
    assert np.array_equal(colour, parse_colour("#0a14c8"))
    written = web_app.write_results(result, tmp_path, colour)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written.values())
    assert set(written) == {"alpha", "rgba", "composite", "trimap", "routing"}
    alpha = read(written["alpha"])
    assert np.array_equal(alpha, alpha_to_uint8(result.alpha))
    composite = read(written["composite"])
    assert np.array_equal(composite[alpha == 0][0], [200, 20, 10])  # BGR
    # The cutout's colours are the foreground's levels: the image's where alpha is 1.
    cutout, image = read(written["rgba"]), read(files["image"])
    assert result.foreground.dtype == np.uint8
    assert np.array_equal(cutout[:, :, 2::-1], result.foreground)  # BGR -> RGB
    assert np.array_equal(cutout[:, :, 3], alpha)
    opaque = alpha == 255
    assert np.array_equal(cutout[opaque][:, :3], image[opaque])
    assert np.array_equal(composite[opaque], image[opaque])
    assert np.array_equal(read(written["trimap"]), read(files["trimap"]))
    with pytest.raises(ValueError, match="not a colour"):
        parse_colour("/etc/passwd")
    assert "| token cap | 18500 (config) |" in web_app.numbers_markdown(result.numbers)


@pytest.mark.slow
def test_model_runs_share_one_queue_slot(session):
    handlers = web_app.DemoHandlers(session, "fp32")
    try:
        app = web_app.build_app(handlers, "test")
    finally:
        handlers.folders.remove()
    queued = {fn.name: fn for fn in app.fns.values() if fn.queue}
    assert set(queued) == {"page_run", "api_matte"}  # the rest is cheap and skips the queue
    assert {(fn.concurrency_id, fn.concurrency_limit) for fn in queued.values()} == {("model", 1)}
    assert queued["api_matte"].api_name == "matte"


# --- in a browser ----------------------------------------------------------------------------


def _chromium() -> str:
    path = os.environ.get("MEMATTE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).is_file():
        pytest.skip(
            f"no Chromium at {path}: install Debian's chromium package (CI's .ci/run does) or "
            "set MEMATTE_CHROMIUM"
        )
    return path


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package")
    executable = _chromium()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    """A page of the demo with every request beyond the server refused; ``page.blocked`` lists
    what it tried to fetch from elsewhere."""
    context = browser.new_context(viewport=VIEWPORT)
    blocked = []

    def offline(route) -> None:
        if route.request.url.startswith((server, "data:", "blob:")):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    context.route("**/*", offline)
    page = context.new_page()
    page.blocked = blocked
    page.goto(server)
    page.locator("#run-button").wait_for()
    yield page
    context.close()


def _set_file(page, elem_id: str, path: Path) -> None:
    page.locator(f"#{elem_id} input[type=file]").set_input_files(str(path))
    page.locator(f"#{elem_id} img").first.wait_for()  # uploaded and shown


def _result(page, elem_id: str) -> bytes:
    """The file behind a result image, once it is shown."""
    image = page.locator(f"#{elem_id} img").first
    image.wait_for(timeout=RESULT_SECONDS * 1000)
    with urllib.request.urlopen(image.get_attribute("src"), timeout=RESULT_SECONDS) as response:
        return response.read()


def _decoded(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


@pytest.mark.slow
def test_page_shows_the_alpha_inference_writes_and_the_cutout(page, inference_pngs, tmp_path):
    files = demo_files("test_000")
    _set_file(page, "image-input", files["image"])
    _set_file(page, "trimap-input", files["trimap"])
    page.locator("#run-button").click()
    assert _result(page, "alpha-output") == inference_pngs["test_000"].read_bytes()
    cutout = _decoded(_result(page, "rgba-output"))
    assert cutout.shape[2] == 4
    assert np.array_equal(cutout[:, :, 3], read(inference_pngs["test_000"]))
    for elem_id in ("composite-output", "routing-output", "trimap-output"):
        assert _decoded(_result(page, elem_id)).size
    assert "share of tokens in global attention" in page.locator("#numbers-output").inner_text()
    assert page.blocked == []  # worked offline, and asked for nothing beyond the server
    shot = tmp_path / "web_demo.jpg"
    page.screenshot(path=str(shot), full_page=True, type="jpeg", quality=SCREENSHOT_QUALITY)
    assert shot.stat().st_size < SCREENSHOT_MAX_BYTES
    if os.environ.get("MEMATTE_UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)


@pytest.mark.slow
def test_page_shows_an_error_and_serves_the_next_request(page, inference_pngs):
    _set_file(page, "image-input", demo_files("test_000")["image"])
    _set_file(page, "trimap-input", demo_files("test_001")["trimap"])
    page.locator("#run-button").click()
    error = page.locator("[data-testid='toast-body']").filter(has_text="is 282x285")
    error.wait_for(timeout=RESULT_SECONDS * 1000)
    assert "test_000.png is 248x292" in error.inner_text()
    assert page.locator("#alpha-output img").count() == 0
    page.locator("[data-testid='toast-close']").click()
    error.wait_for(state="detached")
    page.locator("#run-button").click()  # the same error again: nothing queued or stuck
    error.wait_for(timeout=RESULT_SECONDS * 1000)
    page.locator("#demo-examples [data-testid='dataset-cell-1-0']").click()  # test_001 + trimap
    for elem_id in ("image-input", "trimap-input"):
        page.locator(f"#{elem_id} img[src*='test_001']").wait_for()
    page.locator("#run-button").click()
    assert _result(page, "alpha-output") == inference_pngs["test_001"].read_bytes()


@pytest.mark.slow
def test_page_makes_the_trimap_of_a_mask(page, predictor):
    files = demo_files("test_001")
    _set_file(page, "image-input", files["image"])
    page.get_by_role("tab", name="Mask").click()
    _set_file(page, "mask-input", files["mask"])
    page.locator("#run-button").click()
    made = trimap_from_mask(read(files["mask"]), MASK_WIDTH)
    assert np.array_equal(_decoded(_result(page, "trimap-output")), made)
    alpha = alpha_to_uint8(predictor(files["image"], made))
    assert np.array_equal(_decoded(_result(page, "alpha-output")), alpha)


def _colours(image: np.ndarray) -> int:
    """Distinct colours of an ``[H, W, 3 or 4]`` image (its alpha channel left out)."""
    return len(np.unique(image[..., :3].reshape(-1, 3), axis=0))


def _wait_for_picture(canvas) -> None:
    """Wait until ``canvas`` shows a picture (many colours), not a blank or flat area."""
    deadline = time.monotonic() + RESULT_SECONDS
    while _colours(_decoded(canvas.screenshot())) < PICTURE_COLOURS:
        assert time.monotonic() < deadline, "the painting canvas does not show the image"
        time.sleep(0.5)


def _stroke(page, brush: int, y: float) -> None:
    """A horizontal stroke across the middle of the painting canvas with brush ``brush``
    (0 foreground, 1 unknown, 2 background), at ``y`` (fraction of the canvas height)."""
    editor = page.locator("#paint-input")
    editor.locator("button[aria-label=Color]").click()
    editor.locator("button.color").nth(brush).click()
    box = editor.locator("canvas").first.bounding_box()
    x0, x1 = box["x"] + 0.45 * box["width"], box["x"] + 0.55 * box["width"]
    y = box["y"] + y * box["height"]
    page.mouse.move(x0, y)
    page.mouse.down()
    page.mouse.move(x1, y, steps=STROKE_STEPS)
    page.mouse.up()


@pytest.mark.slow
def test_page_makes_the_trimap_of_a_painting(page):
    _set_file(page, "image-input", demo_files("test_000")["image"])
    page.get_by_role("tab", name="Paint").click()
    editor = page.locator("#paint-input")
    _wait_for_picture(editor.locator("canvas").first)  # the image to paint on is shown
    editor.locator("button[aria-label=Brush]").click()
    _stroke(page, 0, 0.4)
    _stroke(page, 1, 0.6)
    page.locator("#run-button").click()
    trimap = _decoded(_result(page, "trimap-output"))
    assert trimap.shape == (292, 248)
    assert set(np.unique(trimap)) == {0, 128, 255}
    rows = np.arange(trimap.shape[0])[:, None]
    foreground_row = rows.repeat(trimap.shape[1], 1)[trimap == 255].mean()
    unknown_row = rows.repeat(trimap.shape[1], 1)[trimap == 128].mean()
    assert foreground_row < unknown_row  # the white stroke above the gray one
    assert _decoded(_result(page, "alpha-output")).shape == (292, 248)
