"""inference.py --segmenter, end to end on tiny random SAM and SAM 2 checkpoints (no network): the
mask it writes is transformers' own result, its trimap and alpha are those of the same mask given
with --mask; Python, torch.hub and the command line agree; bad prompts exit 2 before any model
loads; a folder run reports a bad item and goes on."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import inference
from data.trimap import parse_unknown_width, trimap_from_mask
from predictor.matting import MattingPredictor
from tests.helpers import (
    DEMO_CHECKPOINT,
    DEMO_DIR,
    REPO_ROOT,
    TINY_CONFIG,
    reference_sam_mask,
)

# The issue's tolerance: share of mask pixels that may differ from transformers' result.
MAX_DIFFERING_SHARE = 0.001
BOX = "40,60,200,250"
POINT = "120,150"
BACKGROUND_POINT = "20,20,0"


pytestmark = pytest.mark.usefixtures("hub_offline")  # no test here reaches for the network


@pytest.fixture(scope="module")
def folders(tiny_segmenters) -> dict[str, Path]:
    return tiny_segmenters


def run_cli(*extra: str) -> int:
    """``inference.py`` on the demo model, on the CPU."""
    command = ["--config-file", str(TINY_CONFIG), "--checkpoint", str(DEMO_CHECKPOINT)]
    return inference.main([*command, "--device", "cpu", "--workers", "0", *extra])


def exit_code(*extra: str) -> int:
    try:
        return run_cli(*extra)
    except SystemExit as exc:  # argparse
        return exc.code


def read_png(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def image(name: str) -> Path:
    return DEMO_DIR / "merged" / f"{name}.png"


def numbers(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


@pytest.mark.parametrize(
    ("prompts", "width"),
    [
        (["--box", BOX], "auto"),
        (["--point", POINT], "7"),
        (["--point", POINT, "--point", BACKGROUND_POINT], None),  # default: auto
    ],
    ids=["box", "one point", "both labels"],
)
@pytest.mark.parametrize("family", ["sam", pytest.param("sam2", marks=pytest.mark.slow)])
def test_a_prompt_run_writes_transformers_mask_and_the_mask_runs_trimap_and_alpha(
    folders, tmp_path, family, prompts, width
):
    out, by_mask = tmp_path / "prompt", tmp_path / "mask"
    widths = [] if width is None else ["--unknown-width", width]
    command = ["--image", str(image("test_001")), "--segmenter", str(folders[family]), *prompts]
    assert run_cli(*command, *widths, "--save-trimap", "--output-dir", str(out)) == 0
    mask = read_png(out / "mask" / "test_001.png")
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 255}
    box = numbers(prompts[1]) if prompts[0] == "--box" else None
    points = tuple((*numbers(p), 1)[:3] for p in prompts[1::2] if prompts[0] == "--point")
    expected = reference_sam_mask(folders[family], image("test_001"), box, points)
    assert ((mask == 255) != expected).mean() <= MAX_DIFFERING_SHARE
    made = trimap_from_mask(mask, parse_unknown_width(width or "auto"))
    assert np.array_equal(read_png(out / "trimap" / "test_001.png"), made)
    mask_command = ["--image", str(image("test_001")), "--mask", str(out / "mask" / "test_001.png")]
    mask_command += ["--unknown-width", width or "auto", "--save-trimap"]
    assert run_cli(*mask_command, "--output-dir", str(by_mask)) == 0
    assert (out / "trimap" / "test_001.png").read_bytes() == (
        by_mask / "trimap" / "test_001.png"
    ).read_bytes()
    assert (out / "test_001.png").read_bytes() == (by_mask / "test_001.png").read_bytes()


@pytest.mark.slow
def test_python_torch_hub_and_the_command_line_give_the_same_alpha(folders, tmp_path):
    out = tmp_path / "cli"
    prompts = ["--box", BOX, "--point", POINT, "--point", BACKGROUND_POINT]
    command = ["--image", str(image("test_002")), "--segmenter", str(folders["sam2"]), *prompts]
    assert run_cli(*command, "--unknown-width", "9", "--output-dir", str(out)) == 0
    cli = read_png(out / "test_002.png")
    box, points = numbers(BOX), [numbers(POINT), numbers(BACKGROUND_POINT)]
    predictor = MattingPredictor.from_config(
        TINY_CONFIG, DEMO_CHECKPOINT, device="cpu", segmenter=folders["sam2"]
    )
    hub = torch.hub.load(
        str(REPO_ROOT),
        "mematte",
        source="local",
        config_file=TINY_CONFIG,
        checkpoint=DEMO_CHECKPOINT,
        device="cpu",
        segmenter=str(folders["sam2"]),
    )
    for call in (predictor, hub):
        alpha = call(image("test_002"), box=box, points=points, unknown_width=9)
        assert np.array_equal(np.floor(alpha * 255).astype(np.uint8), cli)


def test_several_images_take_their_prompts_from_a_file(folders, tmp_path):
    prompts = tmp_path / "prompts.json"
    entries = {"test_000.png": {"box": [30, 40, 200, 260]}, "test_003": {"points": [[100, 120]]}}
    prompts.write_text(json.dumps(entries))
    out, single = tmp_path / "out", tmp_path / "single"
    images = [str(image("test_000")), str(image("test_003"))]
    segmenter = ["--segmenter", str(folders["sam"])]
    assert (
        run_cli("--image", *images, *segmenter, "--prompts", str(prompts), "--output-dir", str(out))
        == 0
    )
    one = ["--image", images[1], *segmenter, "--point", "100,120", "--output-dir", str(single)]
    assert run_cli(*one) == 0
    assert (out / "test_003.png").read_bytes() == (single / "test_003.png").read_bytes()
    assert (out / "test_000.png").is_file()


@pytest.mark.slow
def test_a_folder_run_reports_bad_items_and_goes_on(folders, tmp_path, caplog):
    prompts = tmp_path / "prompts.json"
    entries = {
        "test_000.png": {"box": [30, 40, 200, 260]},
        "test_001": {"points": [[100, 120]]},
        "missing.png": {"box": [1, 1, 9, 9]},
        "test_002.png": {"points": [[1000, 10]]},  # outside the image
        "test_003.png": {"points": [[10, 10, 3]]},  # an unknown label
    }
    prompts.write_text(json.dumps(entries))
    out, report = tmp_path / "out", tmp_path / "report.json"
    command = ["--data-dir", str(DEMO_DIR / "merged"), "--segmenter", str(folders["sam"])]
    command += ["--prompts", str(prompts), "--output-dir", str(out), "--report", str(report)]
    with caplog.at_level(logging.ERROR, logger="inference"):
        assert run_cli(*command, "--save-trimap") == 1
    record = json.loads(report.read_text())
    assert record["done_items"] == ["test_000", "test_001"]
    reasons = {Path(f["path"]).name: f["reason"] for f in record["failed"]}
    assert set(reasons) == {"missing.png", "test_002.png", "test_003.png"}
    assert "no such image" in reasons["missing.png"]
    assert "point 1000,10 is outside the image: test_002.png is" in reasons["test_002.png"]
    assert "unknown label 3" in reasons["test_003.png"]
    assert "missing.png" in caplog.text
    for folder in ("", "trimap", "mask"):
        assert sorted(p.name for p in (out / folder).glob("*.png")) == [
            "test_000.png",
            "test_001.png",
        ]
    assert run_cli(*command, "--save-trimap") == 1  # resumed: the done items are skipped
    assert json.loads(report.read_text())["skipped_items"] == ["test_000", "test_001"]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("point outside the image", "point 400,10 is outside the image: test_001.png is 282x285"),
        ("box outside the image", "box 0,0,300,100 reaches outside the image"),
        ("empty box", "box 50,60,50,90 is empty"),
        ("unknown label", "unknown label 2"),
        ("only a background point", "a box or at least one foreground point"),
        ("file naming missing images", "names images that are not among --image: nowhere.png"),
        ("no prompts for an image", "has no prompts for"),
        ("not a SAM folder", "its config is a 'vitmatte' model, not a SAM-family segmenter"),
        ("unreachable hub id", "download the checkpoint on a machine that has access"),
        ("prompts without a segmenter", "--box, --point and --prompts need a --segmenter"),
        ("a segmenter without prompts", "--segmenter needs prompts"),
        ("inline prompts for two images", "--box and --point go with one --image"),
        ("a segmenter and a trimap", "--segmenter makes the mask"),
    ],
)
def test_bad_prompts_exit_2_with_a_message(folders, tmp_path, caplog, capsys, case, message):
    one = ["--image", str(image("test_001"))]
    segmenter = ["--segmenter", str(folders["sam"])]
    vitmatte = tmp_path / "vitmatte"
    vitmatte.mkdir()
    (vitmatte / "config.json").write_text(json.dumps({"model_type": "vitmatte"}))
    command = {
        "point outside the image": [*one, *segmenter, "--point", "400,10"],
        "box outside the image": [*one, *segmenter, "--box", "0,0,300,100"],
        "empty box": [*one, *segmenter, "--box", "50,60,50,90"],
        "unknown label": [*one, *segmenter, "--point", "5,6,2"],
        "only a background point": [*one, *segmenter, "--point", "5,6,0"],
        "file naming missing images": [
            *one,
            *segmenter,
            "--prompts",
            str(_write(tmp_path / "missing.json", "nowhere.png")),
        ],
        "no prompts for an image": [
            "--image",
            str(image("test_001")),
            str(image("test_002")),
            *segmenter,
            "--prompts",
            str(_write(tmp_path / "partial.json", "test_001.png")),
        ],
        "not a SAM folder": [*one, "--segmenter", str(vitmatte), "--box", BOX],
        "unreachable hub id": [*one, "--segmenter", "mematte-tests/no-such-sam", "--box", BOX],
        "prompts without a segmenter": [*one, "--box", BOX],
        "a segmenter without prompts": [*one, *segmenter],
        "inline prompts for two images": [
            "--image",
            str(image("test_001")),
            str(image("test_002")),
            *segmenter,
            "--box",
            BOX,
        ],
        "a segmenter and a trimap": [
            *one,
            *segmenter,
            "--box",
            BOX,
            "--trimap",
            str(DEMO_DIR / "trimaps" / "test_001.png"),
        ],
    }[case]
    out = tmp_path / "out"
    with caplog.at_level(logging.ERROR):
        assert exit_code(*command, "--output-dir", str(out)) == 2
    assert message in caplog.text + capsys.readouterr().err
    assert not out.exists()


def _write(path: Path, name: str) -> Path:
    path.write_text(json.dumps({name: {"box": [1, 1, 9, 9]}}))
    return path
