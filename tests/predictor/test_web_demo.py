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
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import cv2
import gradio as gr
import numpy as np
import pytest
from PIL import Image

import inference
from data import image_io
from data.pixel_limits import DECODER_MAX_PIXELS
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
from tests.image_files import declare_size, picture, tall_image_and_trimap, write_picture

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


@pytest.mark.slow
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


def test_a_jpeg_trimap_is_refused_unless_the_server_snaps_trimaps(session, predictor, tmp_path):
    files = demo_files("test_000")
    jpeg = tmp_path / "trimap.jpg"
    cv2.imwrite(str(jpeg), read(files["trimap"]), [cv2.IMWRITE_JPEG_QUALITY, 50])
    with pytest.raises(InputError, match=r"trimap.jpg: .*neither 0, 128 nor 255.*--snap-trimap"):
        session.run(upload(files["image"]), trimap=upload(jpeg))
    snapping = MattingSession(
        session.model, device="cpu", max_pixels=SERVER_MAX_PIXELS, snap_trimap=True
    )
    result = snapping.run(upload(files["image"]), trimap=upload(jpeg))
    expected = predictor(files["image"], jpeg, snap_trimap=True)
    assert np.array_equal(alpha_to_uint8(result.alpha), alpha_to_uint8(expected))
    assert set(np.unique(result.trimap)) <= {0, 128, 255}


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


@pytest.fixture
def no_decoding(monkeypatch):
    """Fail the test if OpenCV decodes a file."""

    def refuse(*args, **kwargs):
        raise AssertionError("a decoder ran")

    monkeypatch.setattr(image_io.cv2, "imdecode", refuse)


@pytest.mark.parametrize("name", ["radiance.hdr", "photo.exr", "notes.txt"])
def test_a_file_whose_size_cannot_be_read_from_its_header_is_refused_undecoded(
    session, tmp_path, name, no_decoding
):
    """The size check fails closed: OpenCV could decode a Radiance file (whole, in float32)
    before any other check; it never gets the chance."""
    path = tmp_path / name
    if name.endswith(".hdr"):
        cv2.imwrite(str(path), np.ones((300, 300, 3), np.float32))
    else:
        path.write_bytes(b"\x76\x2f\x31\x01" + bytes(64))  # an OpenEXR magic, or not
    trimap = upload(demo_files("test_000")["trimap"])
    with pytest.raises(InputError, match=f"{name}.*its size cannot be read"):
        session.run(upload(path), trimap=trimap)
    with pytest.raises(InputError, match=f"{name}.*its size cannot be read"):
        session.run(upload(demo_files("test_000")["image"]), trimap=upload(path))


@pytest.mark.parametrize("side", [1_000, 20_000])
@pytest.mark.parametrize("suffix", image_io.IMAGE_EXTENSIONS)
def test_bombs_are_refused_from_their_headers_in_every_format(
    session, tmp_path, suffix, side, monkeypatch
):
    image = tmp_path / f"bomb{suffix}"
    write_picture(image, picture())
    declare_size(image, side, side)
    trimap = tmp_path / "trimap.png"
    write_picture(trimap, picture((292, 248)))
    declare_size(trimap, side, side)
    demo = demo_files("test_000")
    monkeypatch.setattr(image_io.cv2, "imdecode", lambda *a: pytest.fail("a decoder ran"))
    with pytest.raises(InputError, match=f"bomb\\{suffix}.*server's limit"):
        session.run(upload(image), trimap=upload(demo["trimap"]))
    with pytest.raises(InputError, match="trimap.png"):  # the image's size, or any limit
        session.run(upload(demo["image"]), trimap=upload(trimap))


def test_the_limit_never_exceeds_the_decoders_ceiling(session):
    assert default_max_pixels(session.model, "cpu", free_bytes=2**50) <= DECODER_MAX_PIXELS
    with pytest.raises(ValueError, match="ceiling"):
        MattingSession(session.model, device="cpu", max_pixels=DECODER_MAX_PIXELS + 1)


def test_a_tall_narrow_image_gets_all_its_results(tmp_path):
    model = build_inference_model(TINY_CONFIG)
    load_weights(model, DEMO_CHECKPOINT)
    tall = MattingSession(model, device="cpu", max_pixels=SERVER_MAX_PIXELS)
    image, trimap, _ = tall_image_and_trimap(tmp_path)
    result = tall.run(upload(image), trimap=upload(trimap))
    files, not_written = web_app.write_results(result, tmp_path / "out", parse_colour("#00ff00"))
    assert not_written == {} and set(files) == {"alpha", "rgba", "composite", "trimap", "routing"}


def test_an_extra_result_that_fails_is_named_on_the_page_and_the_alpha_kept(
    session, tmp_path, monkeypatch
):
    def broken(*args, **kwargs):
        raise ValueError("cannot draw this picture")

    monkeypatch.setattr(web_app, "routing_figure", broken)
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "uploads"))
    files = {}
    for kind in ("image", "trimap"):  # uploaded
        files[kind] = tmp_path / "uploads" / kind / demo_files("test_000")[kind].name
        files[kind].parent.mkdir(parents=True)
        shutil.copy(demo_files("test_000")[kind], files[kind])
    handlers = web_app.DemoHandlers(session, "fp32")
    try:
        with pytest.warns(UserWarning, match="routing picture could not be made"):
            *paths, markdown = handlers.page_run(
                {"path": str(files["image"])},
                "trimap",
                {"path": str(files["trimap"])},
                None,
                10,
                None,
                web_app.CAP_CONFIG,
                None,
                "fp32",
                True,
                "#00ff00",
            )
        trimap_used, alpha, rgba, composite, routing = paths
        assert routing is None and all(Path(p).is_file() for p in (alpha, rgba, composite))
        assert "not made: routing picture" in markdown and "cannot draw" in markdown
        *_, numbers = handlers.api_matte(
            {"path": str(files["image"])}, {"path": str(files["trimap"])}
        )
        assert "routing" in numbers["not_written"]
    finally:
        handlers.folders.remove()


# --- the page's handlers read only uploaded files ----------------------------------------------


def _to_root(folder: Path) -> Path:
    """``folder/../..``: a path that starts in ``folder`` and leads to the root."""
    return folder.joinpath(*[".."] * (len(folder.parts) - 1))


def _payloads(path: Path, uploads: Path) -> dict[str, object]:
    """Ways a request can name ``path``: a file payload with or without Gradio's marker, a URL,
    a way out of the upload folder, the editor's nested value."""
    return {
        "path": {"path": str(path)},
        "marked": {"path": str(path), "meta": {"_type": "gradio.FileData"}},
        "url only": {"url": f"file://{path}"},
        "out of the uploads": {"path": str(_to_root(uploads) / path.relative_to("/"))},
        "editor": {"background": {"path": str(path)}, "layers": [{"path": str(path)}]},
    }


def _outside_files(tmp_path: Path) -> list[Path]:
    secret = tmp_path / "secret.txt"
    secret.write_text("key = 0123456789abcdef\n")
    return [DEMO_CHECKPOINT, REPO_ROOT / "README.md", secret]


@pytest.fixture
def app(session, tmp_path, monkeypatch):
    """The page as built for the server, with Gradio's upload folder in ``tmp_path``."""
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "uploads"))
    handlers = web_app.DemoHandlers(session, "fp32")
    yield web_app.build_app(handlers, "test")
    handlers.folders.remove()


def test_every_handler_refuses_files_that_were_not_uploaded(app, tmp_path):
    """Each function the page registers (discovered from the app) refuses, before it runs, any
    argument naming a file outside the upload folder, whatever the payload's shape."""
    uploads = tmp_path / "uploads"
    cached = sorted(uploads.rglob("*"))  # the demo images of the examples
    handlers = [fn for fn in app.fns.values() if fn.fn is not None and fn.inputs]
    assert {fn.name for fn in handlers} >= {"_painting_canvas", "page_run", "api_matte"}
    for block_fn in handlers:
        for position in range(len(block_fn.inputs)):
            for path in _outside_files(tmp_path):
                for shape, payload in _payloads(path, uploads).items():
                    arguments = [None] * len(block_fn.inputs)
                    arguments[position] = payload
                    with pytest.raises(gr.Error, match="not uploaded to this server"):
                        block_fn.fn(*arguments)
                    assert sorted(uploads.rglob("*")) == cached, shape


def test_an_uploaded_file_passes_the_guard(app, tmp_path):
    uploaded = tmp_path / "uploads" / "abc" / "image.png"
    uploaded.parent.mkdir(parents=True)
    shutil.copy(demo_files("test_000")["image"], uploaded)
    (canvas,) = [fn for fn in app.fns.values() if fn.name == "_painting_canvas"]
    assert canvas.fn({"path": str(uploaded)})["background"] == str(uploaded)


def test_handlers_the_guard_cannot_wrap_are_refused_when_the_page_is_built():
    def stream(value):
        yield value

    with gr.Blocks() as blocks:
        box = gr.Textbox()
        box.change(stream, box, box)
    with pytest.raises(TypeError, match="extend"):
        web_app.only_uploaded_files(blocks)


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
    model, free = session.model, 2 * 2**30  # the planned sides stay below the decoders' ceiling
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
def server_root(tmp_path_factory) -> Path:
    """The server's working folder (in the temporary folder), holding a secret it must not
    serve; Gradio's upload folder is its ``gradio`` sub-folder."""
    root = tmp_path_factory.mktemp("server")
    (root / "secret.txt").write_text("key = 0123456789abcdef\n")
    return root


@pytest.fixture(scope="module")
def server(server_root) -> str:
    """tools/web_demo.py on the demo model, in a subprocess on a free port, run from
    ``server_root``: its URL."""
    with served_web_demo(server_root, "--max-pixels", str(SERVER_MAX_PIXELS)) as url:
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


def _post(server: str, route: str, body: dict) -> str:
    request = urllib.request.Request(
        f"{server}{route}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=RESULT_SECONDS) as response:
            return response.read().decode()
    except urllib.error.HTTPError as error:
        return error.read().decode()


def _urls(value: object) -> list[str]:
    """Every ``url`` field of a JSON value."""
    if isinstance(value, dict):
        own = [value["url"]] if isinstance(value.get("url"), str) else []
        return own + [url for item in value.values() for url in _urls(item)]
    if isinstance(value, list):
        return [url for item in value for url in _urls(item)]
    return []


def _fetch(server: str, url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(urllib.parse.urljoin(server, url), timeout=30) as response:
            return response.read()
    except urllib.error.HTTPError:
        return None


@pytest.mark.slow
def test_no_handler_of_the_server_serves_a_file_it_was_not_given(server, server_root):
    """Every handler the served page has (read from its /config) gets, in each argument, payloads
    naming files outside the upload folder (the checkpoint, README.md, a secret in the server's
    working and temporary folder), over HTTP as any client can send them: no answer holds or
    links to such a file, none is copied into Gradio's cache, none is served."""
    with urllib.request.urlopen(f"{server}config", timeout=30) as response:
        config = json.load(response)
    handlers = [d for d in config["dependencies"] if d.get("backend_fn") and d["inputs"]]
    assert len(handlers) >= 3  # the painting canvas, the page's run, /matte
    outside = [DEMO_CHECKPOINT, REPO_ROOT / "README.md", server_root / "secret.txt"]
    secrets = {path.read_bytes() for path in outside}
    uploads = server_root / "gradio"
    shapes = [*_payloads(outside[0], uploads), "relative"]
    for handler in handlers:
        for position in range(len(handler["inputs"])):
            for path in outside:
                payloads = _payloads(path, uploads)
                payloads["relative"] = {"path": os.path.relpath(path, server_root)}
                for shape in shapes:
                    data = [None] * len(handler["inputs"])
                    data[position] = payloads[shape]
                    body = {"fn_index": handler["id"], "data": data, "session_hash": "sweep"}
                    answer = _post(server, "gradio_api/run/predict", body)
                    assert not any(secret.decode(errors="ignore") in answer for secret in secrets)
                    for url in _urls(json.loads(answer)):
                        assert _fetch(server, url) not in secrets, (handler["api_name"], shape)
    cached = [p for p in uploads.rglob("*") if p.is_file()]
    assert not [p for p in cached if p.read_bytes() in secrets]
    for path in outside:
        assert _fetch(server, f"gradio_api/file={path}") not in secrets


@pytest.mark.slow
def test_results_are_written_as_inference_writes_them(tmp_path, session):
    files = demo_files("test_000")
    result = session.run(upload(files["image"]), trimap=upload(files["trimap"]))
    colour = parse_colour("rgba(10, 20, 200, 1)")
    assert np.array_equal(colour, parse_colour("#0a14c8"))
    written, not_written = web_app.write_results(result, tmp_path, colour)
    assert not_written == {}
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
