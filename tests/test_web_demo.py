"""The web demo: requests of utils.matting_session (fast, no server)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import REPO_ROOT
from PIL import Image

from data.trimap import trimap_from_mask
from engine.predictor import MattingPredictor, alpha_to_uint8, build_inference_model
from engine.predictor import load_inference_weights as load_weights
from utils.matting_session import (
    BRUSH_COLOURS,
    InputError,
    MattingSession,
    RequestOptions,
    Upload,
    default_max_pixels,
    painted_trimap,
    planned_request_bytes,
)
from utils.token_budget import SAFETY

TINY_CONFIG = REPO_ROOT / "configs" / "tiny" / "MEMatte_tiny_synthetic.py"
DEMO_CHECKPOINT = REPO_ROOT / "pretrained" / "demo" / "MEMatte_tiny_synthetic.pth"
DEMO = REPO_ROOT / "demo"
# The test server's image limit: the demo images (72416 and 80370 px) pass, a 400 x 300 one not.
SERVER_MAX_PIXELS = 100_000
TOO_LARGE_HW = (300, 400)
# Peak-RSS increments of one request over the idle process (MattingSession.run, then
# write_results with a composite; tiny model, CPU, fp32, utils.memory.configure_malloc applied;
# a smooth gradient image, a disc trimap with an unknown ring): image (H, W), MiB.
MEASURED_REQUEST_INCREMENTS = [((3000, 4000), 1081), ((4872, 6017), 2133)]
MAX_OVERESTIMATE = 1.5  # the plan may exceed a measured peak, but not by more than this
MIB = 2**20


def demo_files(name: str) -> dict[str, Path]:
    return {
        "image": DEMO / "merged" / f"{name}.png",
        "trimap": DEMO / "trimaps" / f"{name}.png",
        "mask": DEMO / "alpha_copy" / f"{name}.png",
    }


def upload(path: Path) -> Upload:
    return Upload(path, path.name)


def read(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


# --- utils.matting_session -------------------------------------------------------------------


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
    monkeypatch.setattr("utils.matting_session.read_rgb_levels", decoded.append)
    with pytest.raises(InputError, match=r"large.png is 400x300 .* above this server's limit"):
        session.run(upload(large), trimap=trimap)
    assert decoded == []  # refused from the header: never decoded
    monkeypatch.undo()
    assert session.run(image, trimap=trimap).alpha.shape == (292, 248)


@pytest.mark.parametrize(("hw", "increment_mib"), MEASURED_REQUEST_INCREMENTS)
def test_planned_request_memory_covers_the_measured_peaks(session, hw, increment_mib):
    planned = planned_request_bytes(session.model, hw)
    assert increment_mib * MIB <= planned <= MAX_OVERESTIMATE * increment_mib * MIB


def test_default_max_pixels_is_the_largest_square_that_fits(session):
    model, free = session.model, 8 * 2**30
    pixels = default_max_pixels(model, "cpu", free_bytes=free)
    side = int(pixels**0.5)
    assert side**2 == pixels
    planned = [planned_request_bytes(model, (s, s)) for s in (side, side + 1)]
    assert planned[0] <= SAFETY * free < planned[1]
    assert default_max_pixels(model, "cpu", free_bytes=2 * free) > pixels
    assert default_max_pixels(model, "cpu", free_bytes=2**20) == 0
