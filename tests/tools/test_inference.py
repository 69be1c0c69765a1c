"""inference.py, the command line end to end: folder runs against an independent computation
of the official PNGs, the evaluator and the options; what happens when things go wrong (setup
errors, exit codes, resumed and failed items); your own images (single images, masks, cutouts,
composites, reports); sharded runs over two CPU processes."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

import inference
from data.image_io import write_image
from data.synthetic_dataset import make_synthetic_dataset
from data.trimap import trimap_from_mask
from engine.checkpoint import Checkpointer
from engine.config import LazyConfig, instantiate
from evaluation.evaluator import MattingEvaluator
from evaluation.folders import evaluate_items, match_files, mean_metrics
from evaluation.metrics import compute_metrics
from predictor import outputs, token_budget
from predictor.matting import MattingPredictor
from predictor.weights import build_inference_model, load_inference_weights
from tests.helpers import (
    DEMO_CHECKPOINT,
    DEMO_DIR,
    DEMO_NAMES,
    REPO_ROOT,
    TINY_CONFIG,
    randomize_,
    save_untrusted_checkpoint,
)

# --- folder runs against an independent computation, the evaluator and the options ----------------


NUM_TEST = 3


SIZE = 96


# Larger than the 512 px decoder tile, so that the patch decoder cuts it into several tiles.
LARGE_HW = (540, 600)


ALPHA_LEVELS = 255


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    """A synthetic Composition-1k test set, the same in the generic layout plus an odd-sized
    image, one large image, and a tiny checkpoint written by the trainer's checkpointer (teacher
    included)."""
    root = tmp_path_factory.mktemp("inference")
    make_synthetic_dataset(root / "synthetic", 0, num_fg=2, num_bg=2, num_test=NUM_TEST, size=SIZE)
    comp1k = root / "synthetic" / "test"
    generic, large = root / "generic", root / "large"
    for src, dst in (("merged", "images"), ("trimaps", "trimaps"), ("alpha_copy", "alphas")):
        shutil.copytree(comp1k / src, generic / dst)
        (large / dst).mkdir(parents=True)
    first = sorted((generic / "images").iterdir())[0]
    for folder in ("images", "trimaps", "alphas"):
        path = next((generic / folder).glob(first.stem + ".*"))
        flag = cv2.IMREAD_COLOR if folder == "images" else cv2.IMREAD_GRAYSCALE
        content = cv2.imread(str(path), flag)
        odd = content[: SIZE - 20, : SIZE - 8]  # another size, same content
        cv2.imwrite(str(generic / folder / f"odd{path.suffix}"), odd)
        interpolation = cv2.INTER_LINEAR if folder == "images" else cv2.INTER_NEAREST
        big = cv2.resize(content, LARGE_HW[::-1], interpolation=interpolation)
        cv2.imwrite(str(large / folder / f"big{path.suffix}"), big)

    torch.manual_seed(0)
    model = randomize_(instantiate(LazyConfig.load(str(TINY_CONFIG)).model))
    Checkpointer(model, str(root / "train")).save("model_final", iteration=10)
    return {
        "comp1k": comp1k,
        "generic": generic,
        "large": large,
        "ckpt": root / "train" / "model_final.pth",
    }


@pytest.fixture(scope="module")
def reference_model(workspace) -> nn.Module:
    """The tiny model loaded with plain torch calls, not through the predictor's helpers."""
    cfg = LazyConfig.load(str(TINY_CONFIG))
    cfg.model.teacher_backbone = None
    model = instantiate(cfg.model)
    weights = torch.load(workspace["ckpt"], map_location="cpu", weights_only=True)["model"]
    student = {k: v for k, v in weights.items() if not k.startswith("teacher_backbone.")}
    model.load_state_dict(student)
    return model.eval()


def expected_png(
    model: nn.Module,
    image_path: Path,
    trimap_path: Path,
    *,
    patch_decoder: bool = True,
    bf16: bool = False,
    max_number_token: int | None = 18500,
) -> np.ndarray:
    """The alpha PNG the official script writes, computed here from the model's forward:
    image RGB / 255 and trimap / 255 in, floor(alpha * 255) out, 0 and 255 forced where the
    trimap is 0 and 255."""
    image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)[..., ::-1]  # BGR -> RGB
    trimap = cv2.imread(str(trimap_path), cv2.IMREAD_GRAYSCALE)
    batch = {
        "image": torch.from_numpy(image.copy()).permute(2, 0, 1)[None] / 255.0,
        "trimap": torch.from_numpy(trimap)[None, None] / 255.0,
    }
    model.backbone.max_number_token = max_number_token
    precision = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with torch.inference_mode(), precision:
        alpha = model(batch, patch_decoder=patch_decoder)["phas"][0, 0].float().numpy()
    png = np.floor(alpha.clip(0, 1) * np.float32(ALPHA_LEVELS)).astype(np.uint8)
    png[trimap == 0] = 0
    png[trimap == ALPHA_LEVELS] = ALPHA_LEVELS
    return png


def expected_pngs(model: nn.Module, data_dir: Path, **forward) -> dict[str, np.ndarray]:
    """:func:`expected_png` of every image of a test folder (either layout), by stem."""
    image_dir = data_dir / ("merged" if (data_dir / "merged").is_dir() else "images")
    return {
        image.stem: expected_png(
            model, image, data_dir / "trimaps" / f"{image.stem}.png", **forward
        )
        for image in sorted(image_dir.iterdir())
    }


def _run(data_dir: Path, out: Path, ckpt: Path, *extra: str) -> int:
    return inference.main(
        [
            "--config-file",
            str(TINY_CONFIG),
            "--checkpoint",
            str(ckpt),
            "--data-dir",
            str(data_dir),
            "--output-dir",
            str(out),
            "--device",
            "cpu",
            "--workers",
            "0",
            *extra,
        ]
    )


def _read(folder: Path) -> dict[str, np.ndarray]:
    return {p.stem: cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted(folder.glob("*.png"))}


def _assert_same_pngs(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert sorted(actual) == sorted(expected)
    for stem, png in expected.items():
        assert actual[stem].dtype == np.uint8 and actual[stem].shape == png.shape, stem
        assert np.array_equal(actual[stem], png), stem


def _differ(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return any(not np.array_equal(a[stem], b[stem]) for stem in a)


@pytest.mark.slow
def test_composition1k_outputs_follow_the_official_conversion(workspace, reference_model, tmp_path):
    out = tmp_path / "pred"
    assert _run(workspace["comp1k"], out, workspace["ckpt"], "--save-routing") == 0
    _assert_same_pngs(_read(out), expected_pngs(reference_model, workspace["comp1k"]))
    for stem in _read(out):
        assert (out / "routing" / f"{stem}.jpg").is_file()


@pytest.mark.slow
def test_no_patch_decoder_decodes_the_whole_image(workspace, reference_model, tmp_path):
    whole = expected_pngs(reference_model, workspace["large"], patch_decoder=False)
    tiled = expected_pngs(reference_model, workspace["large"])
    assert _differ(whole, tiled)  # the two decoders differ on this image: the flag is visible
    out = tmp_path / "pred"
    assert _run(workspace["large"], out, workspace["ckpt"], "--no-patch-decoder") == 0
    _assert_same_pngs(_read(out), whole)


@pytest.mark.slow
def test_bf16_precision_runs_the_forward_under_bf16_autocast(workspace, reference_model, tmp_path):
    bf16 = expected_pngs(reference_model, workspace["comp1k"], bf16=True)
    assert _differ(bf16, expected_pngs(reference_model, workspace["comp1k"]))
    out = tmp_path / "pred"
    assert _run(workspace["comp1k"], out, workspace["ckpt"], "--precision", "bf16") == 0
    _assert_same_pngs(_read(out), bf16)


@pytest.mark.slow
@pytest.mark.parametrize("enough_memory", [False, True])
def test_auto_token_cap_follows_the_free_memory(
    workspace, reference_model, tmp_path, monkeypatch, caplog, enough_memory
):
    uncapped = expected_pngs(reference_model, workspace["comp1k"], max_number_token=None)
    no_global = expected_pngs(reference_model, workspace["comp1k"], max_number_token=0)
    assert _differ(uncapped, no_global)  # this model routes tokens to global attention
    free_bytes = 2**40 if enough_memory else 1  # 1 TiB: every token fits; 1 byte: none does
    monkeypatch.setattr(token_budget, "free_memory_bytes", lambda device: free_bytes)
    out = tmp_path / "pred"
    with caplog.at_level(logging.WARNING, logger="predictor.token_budget"):
        assert _run(workspace["comp1k"], out, workspace["ckpt"], "--max-number-token", "auto") == 0
    _assert_same_pngs(_read(out), uncapped if enough_memory else no_global)
    assert ("not enough" in caplog.text) == (not enough_memory)


@pytest.mark.slow
def test_a_ddp_prefixed_checkpoint_gives_the_same_alphas(workspace, reference_model, tmp_path):
    weights = torch.load(workspace["ckpt"], weights_only=True)["model"]
    ddp = tmp_path / "ddp.pth"
    torch.save({"model": {f"module.{k}": v for k, v in weights.items()}}, ddp)
    out = tmp_path / "pred"
    assert _run(workspace["comp1k"], out, ddp) == 0
    _assert_same_pngs(_read(out), expected_pngs(reference_model, workspace["comp1k"]))


@pytest.mark.slow
def test_pickled_objects_are_loaded_only_with_trust_checkpoint(
    workspace, reference_model, tmp_path, caplog
):
    crafted, marker = tmp_path / "crafted.pth", tmp_path / "marker"
    weights = torch.load(workspace["ckpt"], weights_only=True)["model"]
    save_untrusted_checkpoint(crafted, weights, marker)
    out = tmp_path / "pred"
    with caplog.at_level(logging.ERROR, logger="inference"):
        assert _run(workspace["comp1k"], out, crafted) == 2
    assert "crafted.pth" in caplog.text and "--trust-checkpoint" in caplog.text
    assert not marker.exists() and not list(out.glob("*.png"))

    assert _run(workspace["comp1k"], out, crafted, "--trust-checkpoint") == 0
    assert marker.is_dir()  # trusted: the file's code ran, as the flag's help warns
    _assert_same_pngs(_read(out), expected_pngs(reference_model, workspace["comp1k"]))


@pytest.mark.slow
def test_batch_of_two_equals_batch_of_one_with_mixed_sizes(workspace, tmp_path):
    assert _run(workspace["generic"], tmp_path / "b1", workspace["ckpt"]) == 0
    assert _run(workspace["generic"], tmp_path / "b2", workspace["ckpt"], "--batch-size", "2") == 0
    one, two = _read(tmp_path / "b1"), _read(tmp_path / "b2")
    assert sorted(one) == sorted(two) and len(one) == NUM_TEST + 1
    for stem in one:
        assert np.abs(one[stem].astype(int) - two[stem].astype(int)).max() <= 1, stem


@pytest.mark.slow
def test_existing_outputs_are_skipped_unless_overwrite(workspace, tmp_path, caplog):
    out = tmp_path / "pred"
    assert _run(workspace["comp1k"], out, workspace["ckpt"]) == 0
    victim = sorted(out.glob("*.png"))[0]
    victim.unlink()
    caplog.set_level(logging.INFO)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    caplog.clear()
    assert _run(workspace["comp1k"], out, workspace["ckpt"]) == 0
    assert victim.is_file()
    assert all(p.stat().st_mtime_ns == stamps[p.name] for p in out.glob("*.png") if p != victim)
    assert f"skipped (already present) {NUM_TEST - 1}" in caplog.text
    assert _run(workspace["comp1k"], out, workspace["ckpt"], "--overwrite") == 0
    assert all(p.stat().st_mtime_ns != stamps[p.name] for p in out.glob("*.png") if p != victim)


def test_bad_items_are_reported_and_skipped(workspace, tmp_path, caplog):
    data = tmp_path / "data"
    shutil.copytree(workspace["generic"], data)
    images = sorted((data / "images").iterdir())
    images[0].write_bytes(b"this is not an image")  # corrupt image
    (data / "trimaps" / f"{images[1].stem}.png").unlink()  # missing trimap
    hw = cv2.imread(str(images[2])).shape[:2]
    trimap16 = (np.ones(hw) * 128 * 257).astype(np.uint16)
    cv2.imwrite(str(data / "trimaps" / f"{images[2].stem}.png"), trimap16)  # 16-bit trimap
    out = tmp_path / "pred"
    caplog.set_level(logging.INFO)
    assert _run(data, out, workspace["ckpt"]) == 1
    assert sorted(p.stem for p in out.glob("*.png")) == sorted(p.stem for p in images[3:])
    for path in images[:3]:
        assert path.stem in caplog.text
    assert "trimap must be 8-bit" in caplog.text
    assert "failed 3" in caplog.text


def test_missing_checkpoint_is_a_clear_error(workspace, tmp_path, caplog):
    assert _run(workspace["comp1k"], tmp_path / "p", tmp_path / "none.pth") == 2
    assert "none.pth" in caplog.text


@pytest.mark.slow
def test_evaluate_tool_and_evaluator_agree_with_compute_metrics(workspace, tmp_path):
    out = tmp_path / "pred"
    assert _run(workspace["comp1k"], out, workspace["ckpt"]) == 0
    labels, trimaps = workspace["comp1k"] / "alpha_copy", workspace["comp1k"] / "trimaps"
    per_image, _ = evaluate_items(match_files(out, labels, trimaps))
    mean = mean_metrics(per_image)
    assert len(per_image) == NUM_TEST
    for stem, metrics in per_image.items():
        pred = cv2.imread(str(out / f"{stem}.png"), 0)
        gt = cv2.imread(str(next(labels.glob(stem + ".*"))), 0)
        trimap = cv2.imread(str(trimaps / f"{stem}.png"), 0)
        assert metrics == pytest.approx(compute_metrics(pred, gt, trimap))

    model = build_inference_model(TINY_CONFIG)
    load_inference_weights(model, workspace["ckpt"])
    results = MattingEvaluator(workspace["comp1k"])(model.train())
    assert model.training  # mode restored
    for name, value in mean.items():
        assert results[f"eval/{name}"] == pytest.approx(value, rel=1e-6)


# --- when things go wrong: setup errors, exit codes, resumed and failed items ---------------------


def run_demo(data: Path, out: Path, *extra: str, checkpoint: Path = DEMO_CHECKPOINT) -> int:
    command = ["--config-file", str(TINY_CONFIG), "--checkpoint", str(checkpoint)]
    command += ["--data-dir", str(data), "--output-dir", str(out), "--device", "cpu"]
    return inference.main([*command, "--workers", "0", *extra])


def errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.fixture
def crafted(tmp_path) -> tuple[Path, Path]:
    """A checkpoint whose unpickling creates a marker folder: loading it shows in the file
    system."""
    path, marker = tmp_path / "crafted.pth", tmp_path / "marker"
    weights = torch.load(DEMO_CHECKPOINT, weights_only=True)["model"]
    save_untrusted_checkpoint(path, weights, marker)
    return path, marker


def test_a_crafted_checkpoint_is_refused_naming_the_file_and_the_flag(tmp_path, crafted, caplog):
    path, marker = crafted
    assert run_demo(DEMO_DIR, tmp_path / "out", checkpoint=path) == 2
    (message,) = errors(caplog)
    assert "crafted.pth" in message and "--trust-checkpoint" in message
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_a_text_file_as_checkpoint_is_a_one_line_error(tmp_path, caplog):
    text = tmp_path / "notes.txt"
    text.write_text("these are not weights\n")
    assert run_demo(DEMO_DIR, tmp_path / "out", checkpoint=text) == 2
    (message,) = errors(caplog)
    assert "notes.txt" in message and "\n" not in message
    assert not (tmp_path / "out").exists()  # no empty output folder left behind


@pytest.mark.parametrize("problem", ["a file", "a file as routing folder", "missing data"])
def test_setup_errors_come_before_the_model_loads(tmp_path, crafted, caplog, problem):
    path, marker = crafted
    out, data = tmp_path / "out", DEMO_DIR
    if problem == "a file":
        out.write_text("I am a file")
    elif problem == "a file as routing folder":
        out.mkdir()
        (out / "routing").write_text("I am a file")
    else:
        data = tmp_path / "nothere"
    code = run_demo(data, out, "--save-routing", "--trust-checkpoint", checkpoint=path)
    assert code == 2
    assert not marker.exists()  # the (trusted, crafted) checkpoint was never read
    assert str(out if problem != "missing data" else data) in " ".join(errors(caplog))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_a_read_only_output_folder_is_a_setup_error(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    try:
        assert run_demo(DEMO_DIR, out / "sub") == 2
    finally:
        out.chmod(0o755)


@pytest.mark.slow
def test_a_failed_extra_output_is_reported_and_a_rerun_redoes_its_item(
    tmp_path, monkeypatch, caplog
):
    out = tmp_path / "out"

    def refuse_pictures(path, image):
        if Path(path).suffix == ".jpg":
            raise PermissionError(f"[Errno 13] Permission denied: '{path}'")
        write_image(path, image)

    monkeypatch.setattr(outputs, "write_image", refuse_pictures)
    caplog.set_level(logging.INFO)
    assert run_demo(DEMO_DIR, out, "--save-routing") == 1
    assert "done 4, skipped (already present) 0, failed 4" in caplog.text
    for name in DEMO_NAMES:  # each picture reported on its own; the alphas are written first
        picture = out / "routing" / f"{name}.jpg"
        assert any(str(picture) in e and "Permission denied" in e for e in errors(caplog))
        assert cv2.imread(str(out / f"{name}.png"), cv2.IMREAD_UNCHANGED) is not None
    monkeypatch.undo()
    caplog.clear()
    assert run_demo(DEMO_DIR, out, "--save-routing") == 0  # the pictures missing: redone
    assert "done 4" in caplog.text
    assert all((out / "routing" / f"{name}.jpg").is_file() for name in DEMO_NAMES)


@pytest.mark.slow
def test_resume_redoes_items_with_incomplete_outputs(tmp_path, caplog):
    out = tmp_path / "out"
    assert run_demo(DEMO_DIR, out, "--save-routing") == 0
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.*")}
    (out / "test_000.png").write_bytes(b"")  # zero bytes
    (out / "test_001.png").write_bytes(b"not a png at all")  # undecodable
    whole = (out / "test_002.png").read_bytes()
    middle = len(whole) // 2
    damaged = whole[:middle] + bytes(64) + whole[middle + 64 :]  # intact ends, broken data
    (out / "test_002.png").write_bytes(damaged)
    (out / "routing" / "test_003.jpg").unlink()  # a requested extra output missing
    caplog.clear()
    caplog.set_level(logging.INFO)
    assert run_demo(DEMO_DIR, out, "--save-routing") == 0
    assert "done 4, skipped (already present) 0" in caplog.text
    for name in DEMO_NAMES:
        assert cv2.imread(str(out / f"{name}.png"), cv2.IMREAD_UNCHANGED) is not None
    untouched = [p for p in stamps if p.name in ("test_000.jpg", "test_001.jpg")]
    assert all(p.stat().st_mtime_ns != stamps[p] for p in untouched)  # redone as a whole
    caplog.clear()
    assert (
        run_demo(DEMO_DIR, out) == 0
    )  # without --save-routing the routing pictures are not needed
    assert "skipped (already present) 4" in caplog.text


def test_a_rerun_with_nothing_to_do_says_so_and_how_to_redo(tmp_path, caplog):
    out = tmp_path / "out"
    assert run_demo(DEMO_DIR, out) == 0
    caplog.clear()
    caplog.set_level(logging.INFO)
    assert run_demo(DEMO_DIR, out) == 0
    assert "done 0, skipped (already present) 4, failed 0" in caplog.text
    assert "--overwrite" in caplog.text


def test_a_planted_temporary_file_link_does_not_redirect_a_write(tmp_path):
    out, victim = tmp_path / "out", tmp_path / "victim.txt"
    out.mkdir()
    victim.write_text("precious")
    for name in DEMO_NAMES:
        for planted in (f"{name}.png.tmp", f".{name}.png.tmp"):
            (out / planted).symlink_to(victim)
    assert run_demo(DEMO_DIR, out) == 0
    assert victim.read_text() == "precious"
    assert all(cv2.imread(str(out / f"{name}.png")) is not None for name in DEMO_NAMES)


def test_a_run_where_every_item_fails_leaves_no_empty_folder(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(DEMO_DIR, data)
    for path in (data / "merged").iterdir():
        path.write_bytes(path.read_bytes()[:100])  # truncated images
    out = tmp_path / "new" / "out"
    assert run_demo(data, out, "--save-routing", "--save-rgba") == 1
    assert not (tmp_path / "new").exists()


def _jpeg_trimap(data: Path, name: str = "test_001", quality: int = 50) -> tuple[Path, np.ndarray]:
    """Replace ``name``'s trimap in ``data`` by a JPEG of it; return the JPEG and its values
    moved to the nearest level (computed here: a tie, 64, to unknown)."""
    png = data / "trimaps" / f"{name}.png"
    jpeg = png.with_suffix(".jpg")
    cv2.imwrite(
        str(jpeg), cv2.imread(str(png), cv2.IMREAD_GRAYSCALE), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    png.unlink()
    decoded = cv2.imread(str(jpeg), cv2.IMREAD_GRAYSCALE).astype(int)
    levels = np.array([128, 0, 255])  # argmin takes the first of equals: unknown on a tie
    return jpeg, levels[np.abs(decoded[..., None] - levels).argmin(-1)].astype(np.uint8)


@pytest.mark.slow
def test_a_jpeg_trimap_is_refused_with_the_fix_or_snapped_with_snap_trimap(tmp_path, caplog):
    data, reference = tmp_path / "data", tmp_path / "reference"
    shutil.copytree(DEMO_DIR, data)
    shutil.copytree(DEMO_DIR, reference)
    jpeg, snapped = _jpeg_trimap(data)
    cv2.imwrite(str(reference / "trimaps" / "test_001.png"), snapped)

    refused = tmp_path / "refused"
    assert run_demo(data, refused) == 1  # the item is reported, the others done
    failure = next(message for message in errors(caplog) if str(jpeg) in message)
    assert "neither 0, 128 nor 255" in failure and "--snap-trimap" in failure
    assert sorted(p.stem for p in refused.glob("*.png")) == ["test_000", "test_002", "test_003"]

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert run_demo(data, tmp_path / "snapped", "--snap-trimap") == 0
    share = 100 * np.mean(~np.isin(cv2.imread(str(jpeg), cv2.IMREAD_GRAYSCALE), (0, 128, 255)))
    warning = next(r.getMessage() for r in caplog.records if str(jpeg) in r.getMessage())
    assert f"{share:.2f}%" in warning and "snapped to the nearest" in warning
    assert run_demo(reference, tmp_path / "expected") == 0
    for name in DEMO_NAMES:  # the same mattes as from the snapped trimap saved as PNG
        assert np.array_equal(
            read_png(tmp_path / "snapped" / f"{name}.png"),
            read_png(tmp_path / "expected" / f"{name}.png"),
        ), name


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["0", "1"])
def test_warnings_of_loader_processes_do_not_break_the_progress_bar(tmp_path, workers):
    data = tmp_path / "data"
    shutil.copytree(DEMO_DIR, data)
    jpeg, _ = _jpeg_trimap(data)
    command = [sys.executable, str(REPO_ROOT / "inference.py"), "--config-file", str(TINY_CONFIG)]
    command += ["--checkpoint", str(DEMO_CHECKPOINT), "--data-dir", str(data), "--device", "cpu"]
    command += ["--output-dir", str(tmp_path / "out"), "--workers", workers, "--snap-trimap"]
    completed = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        cwd=REPO_ROOT,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "inference:" in completed.stderr  # the bar was shown
    # tqdm redraws its line after "\r"; a log line must start a line or a redrawn segment of its
    # own, not follow the bar's text.
    segments = [s for line in completed.stderr.split("\n") for s in line.split("\r")]
    warning = next(segment for segment in segments if f"{jpeg}:" in segment)
    assert warning.startswith(("19", "20")), warning  # the log format's date first


def test_auto_token_cap_is_logged(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    assert run_demo(DEMO_DIR, tmp_path / "out", "--max-number-token", "auto") == 0
    assert "max_number_token auto for" in caplog.text


def test_help_documents_every_option_the_official_spellings_and_the_exit_codes(capsys):
    with pytest.raises(SystemExit) as exit_info:
        inference.parse_args(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--config-dir", "--checkpoint-dir", "--inference-dir"):
        assert flag in text
    assert "--inference-dir is the official spelling" in text and "output folder" in text
    assert "Exit status: 0" in text and "1 some items failed" in text and "2 usage" in text
    parser = inference.build_parser()
    undocumented = [
        action.option_strings or action.dest
        for action in parser._actions
        if action.help in (None, "") and action.dest != "help"
    ]
    assert not undocumented


# --- your own images: single images, masks, cutouts, composites, reports --------------------------


WIDTH = "7"


def run_cli(*extra: str, workers: str = "0") -> int:
    """``inference.py`` on the demo model, on the CPU."""
    command = ["--config-file", str(TINY_CONFIG), "--checkpoint", str(DEMO_CHECKPOINT)]
    return inference.main([*command, "--device", "cpu", "--workers", workers, *extra])


def read_png(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def images(*names: str) -> list[str]:
    return [str(DEMO_DIR / "merged" / f"{name}.png") for name in names]


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory) -> Path:
    """Folder mode on the demo test set (with prefetching loader processes)."""
    out = tmp_path_factory.mktemp("folder") / "out"
    assert run_cli("--data-dir", str(DEMO_DIR), "--output-dir", str(out), workers="2") == 0
    return out


def test_single_images_give_the_folder_modes_pngs(folder_run, tmp_path):
    trimaps = [str(DEMO_DIR / "trimaps" / f"{name}.png") for name in DEMO_NAMES]
    out = tmp_path / "single"
    assert (
        run_cli("--image", *images(*DEMO_NAMES), "--trimap", *trimaps, "--output-dir", str(out))
        == 0
    )
    for name in DEMO_NAMES:
        assert np.array_equal(
            read_png(out / f"{name}.png"), read_png(folder_run / f"{name}.png")
        ), name


@pytest.mark.slow
def test_a_mask_gives_the_pngs_of_the_trimap_made_from_it(tmp_path):
    masks = [str(DEMO_DIR / "alpha_copy" / f"{name}.png") for name in DEMO_NAMES[:2]]
    out = tmp_path / "mask"
    command = ["--image", *images(*DEMO_NAMES[:2]), "--mask", *masks, "--unknown-width", WIDTH]
    assert run_cli(*command, "--save-trimap", "--output-dir", str(out)) == 0
    trimap_dir = tmp_path / "made_trimaps"
    trimap_dir.mkdir()
    for name, mask in zip(DEMO_NAMES, masks):
        made = trimap_from_mask(read_png(Path(mask)), int(WIDTH))
        assert np.array_equal(read_png(out / "trimap" / f"{name}.png"), made)
        cv2.imwrite(str(trimap_dir / f"{name}.png"), made)
    expected = tmp_path / "trimap"
    trimaps = [str(trimap_dir / f"{name}.png") for name in DEMO_NAMES[:2]]
    assert (
        run_cli(
            "--image", *images(*DEMO_NAMES[:2]), "--trimap", *trimaps, "--output-dir", str(expected)
        )
        == 0
    )
    for name in DEMO_NAMES[:2]:
        assert np.array_equal(read_png(out / f"{name}.png"), read_png(expected / f"{name}.png")), (
            name
        )


@pytest.mark.slow
def test_cutout_outputs_agree_with_the_alpha_and_foreground_pngs(folder_run, tmp_path):
    out = tmp_path / "cutout"
    command = ["--data-dir", str(DEMO_DIR), "--output-dir", str(out), "--save-foreground"]
    assert run_cli(*command, "--save-rgba", "--composite", "#00ff00") == 0
    predictor = MattingPredictor.from_config(TINY_CONFIG, DEMO_CHECKPOINT, device="cpu")
    for name in DEMO_NAMES:
        alpha = read_png(out / f"{name}.png")
        assert np.array_equal(
            alpha, read_png(folder_run / f"{name}.png")
        )  # unchanged by the extras
        foreground, rgba = (
            read_png(out / "foreground" / f"{name}.png"),
            read_png(out / "rgba" / f"{name}.png"),
        )
        assert rgba.shape[2] == 4 and np.array_equal(rgba[:, :, 3], alpha)
        assert np.array_equal(rgba[:, :, :3], foreground)
        image = read_png(DEMO_DIR / "merged" / f"{name}.png")
        opaque = alpha == 255
        assert np.array_equal(foreground[opaque], image[opaque])  # F = I where alpha is 1
        expected_alpha = predictor(
            DEMO_DIR / "merged" / f"{name}.png", DEMO_DIR / "trimaps" / f"{name}.png"
        )
        assert np.array_equal(np.floor(expected_alpha * np.float32(255)).astype(np.uint8), alpha)
        composite = read_png(out / "composite" / f"{name}.png").astype(np.float64)  # BGR
        weight = alpha[:, :, None] / 255.0
        green = np.array([0, 255, 0], np.float64)
        expected = foreground * weight + green * (1 - weight)
        assert np.abs(composite - expected).max() <= 1.0  # 8-bit foreground vs float


def test_composite_over_an_image(tmp_path):
    background = tmp_path / "bg.png"
    cv2.imwrite(str(background), np.full((20, 30, 3), (10, 20, 200), np.uint8))
    out = tmp_path / "over"
    trimap = str(DEMO_DIR / "trimaps" / "test_001.png")
    command = ["--image", *images("test_001"), "--trimap", trimap, "--output-dir", str(out)]
    assert run_cli(*command, "--composite", str(background)) == 0
    alpha = read_png(out / "test_001.png")
    composite = read_png(out / "composite" / "test_001.png")
    assert composite.shape[:2] == alpha.shape
    assert np.array_equal(composite[alpha == 0][0], [10, 20, 200])  # the background shows


def test_report_lists_what_was_done_skipped_and_failed(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(DEMO_DIR, data)
    (data / "trimaps" / "test_003.png").unlink()
    out, report = tmp_path / "out", tmp_path / "reports" / "run.json"
    command = ["--data-dir", str(data), "--output-dir", str(out), "--report", str(report)]
    assert run_cli(*command) == 1
    record = json.loads(report.read_text())
    assert record["done"] == 3 and record["done_items"] == list(DEMO_NAMES[:3])
    assert record["skipped"] == 0 and record["exit_code"] == 1
    assert record["failed"] == [
        {"path": str(data / "merged" / "test_003.png"), "reason": "no trimap"}
    ]
    assert record["seconds_per_image"] > 0 and record["peak_memory_bytes"] > 0
    assert set(record["routed_share"]) == {"1", "3"}  # the routed blocks of the tiny config
    assert "ranks" not in record  # one process
    assert run_cli(*command) == 1  # the missing trimap still fails; the rest is skipped
    record = json.loads(report.read_text())
    assert record["done"] == 0 and record["skipped"] == 3


def test_usage_errors_exit_with_2(tmp_path, capsys):
    base = ["--output-dir", str(tmp_path / "out")]
    for command in (
        ["--image", *images("test_000")],  # no trimap or mask
        ["--image", *images("test_000", "test_001"), "--trimap", images("test_000")[0]],
        ["--image", *images("test_000"), "--mask", images("test_000")[0]],  # no width
        ["--data-dir", str(DEMO_DIR), "--save-trimap"],
        ["--data-dir", str(DEMO_DIR), "--composite", "not-a-colour"],
        ["--data-dir", str(DEMO_DIR), "--max-number-token", "lots"],
    ):
        try:
            code = run_cli(*base, *command)
        except SystemExit as exc:  # argparse
            code = exc.code
        assert code == 2, command
    assert not (tmp_path / "out").exists()


def test_same_names_are_refused(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(DEMO_DIR / "merged" / "test_000.png", other / "test_000.png")
    trimap = str(DEMO_DIR / "trimaps" / "test_000.png")
    command = ["--image", *images("test_000"), str(other / "test_000.png")]
    assert run_cli(*command, "--trimap", trimap, trimap, "--output-dir", str(tmp_path / "o")) == 2


# --- sharded over two CPU processes (spawned and under torchrun) ----------------------------------


SPELLINGS = {
    "spawned": [sys.executable, "inference.py", "--num-gpus", "2"],
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    + ["--nproc-per-node", "2", "inference.py"],
}


TIMEOUT_S = 300


def _arguments(data: Path, out: Path, report: Path, workers: int = 0) -> list[str]:
    return [
        "--config-file", str(TINY_CONFIG), "--checkpoint", str(DEMO_CHECKPOINT),
        "--data-dir", str(data), "--output-dir", str(out), "--report", str(report),
        "--device", "cpu", "--workers", str(workers), "--save-routing",
    ]  # fmt: skip


def _sharded(
    spelling: str, data: Path, out: Path, report: Path, workers: int = 0
) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = SPELLINGS[spelling] + _arguments(data, out, report, workers)
    return subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )


def _pngs(folder: Path) -> dict[str, np.ndarray]:
    return {p.stem: cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted(folder.glob("*.png"))}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> dict[str, np.ndarray]:
    root = tmp_path_factory.mktemp("one")
    assert inference.main(_arguments(DEMO_DIR, root / "out", root / "report.json")) == 0
    return _pngs(root / "out")


@pytest.mark.slow
@pytest.mark.parametrize("spelling", SPELLINGS)
def test_two_processes_write_the_pngs_of_one_each_item_once(one_process, tmp_path, spelling):
    out, report = tmp_path / "out", tmp_path / "report.json"
    completed = _sharded(spelling, DEMO_DIR, out, report, workers=1)  # with a loader process
    assert completed.returncode == 0, completed.stderr[-3000:]
    pngs = _pngs(out)
    assert sorted(pngs) == list(DEMO_NAMES)
    for name in DEMO_NAMES:
        assert np.array_equal(pngs[name], one_process[name]), name
    assert all((out / "routing" / f"{name}.jpg").is_file() for name in DEMO_NAMES)
    record = json.loads(report.read_text())
    assert record["done"] == len(DEMO_NAMES) and record["exit_code"] == 0
    ranks = record["ranks"]
    assert [rank["rank"] for rank in ranks] == [0, 1]
    shares = [set(rank["done_items"]) for rank in ranks]
    assert all(shares) and not shares[0] & shares[1] and shares[0] | shares[1] == set(DEMO_NAMES)
    assert sum(rank["done"] for rank in ranks) == record["done"]

    if spelling != "spawned":
        return
    again = _sharded(spelling, DEMO_DIR, out, report)  # resume: everything is there
    assert again.returncode == 0
    record = json.loads(report.read_text())
    assert record["done"] == 0 and record["skipped"] == len(DEMO_NAMES)
    assert "--overwrite" in again.stderr


@pytest.mark.slow
@pytest.mark.parametrize("spelling", SPELLINGS)
def test_a_failure_on_one_rank_fails_the_run(tmp_path, spelling):
    data = tmp_path / "data"
    shutil.copytree(DEMO_DIR, data)
    (data / "merged" / "test_001.png").write_bytes(b"corrupt")  # the second item: rank 1's
    out, report = tmp_path / "out", tmp_path / "report.json"
    completed = _sharded(spelling, data, out, report)
    assert completed.returncode == 1, completed.stderr[-3000:]
    record = json.loads(report.read_text())
    assert record["done"] == 3 and record["exit_code"] == 1
    (failure,) = record["failed"]
    assert failure["path"].endswith("test_001.png") and record["ranks"][1]["failed"] == [failure]


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        (["--precision", "fp16"], "fp16 inference needs a CUDA device"),
        (["model.backbone.max_number_tokens=5"], "takes no argument 'max_number_tokens'"),
        (["model.backbone.depth=deep"], "model.backbone.depth takes an int"),
    ],
)
def test_a_complete_output_folder_refuses_bad_options_as_an_empty_one(
    tmp_path, caplog, option, expected
):
    done = tmp_path / "done"
    assert run_cli("--data-dir", str(DEMO_DIR), "--output-dir", str(done)) == 0
    stamps = {path: path.stat().st_mtime_ns for path in done.rglob("*")}
    for out in (done, tmp_path / "fresh"):
        caplog.clear()
        assert run_cli("--data-dir", str(DEMO_DIR), "--output-dir", str(out), *option) == 2
        assert expected in caplog.text, out
    assert {path: path.stat().st_mtime_ns for path in done.rglob("*")} == stamps
    assert not (tmp_path / "fresh").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_a_complete_output_folder_refuses_a_missing_gpu(tmp_path, caplog):
    out = tmp_path / "out"
    assert run_cli("--data-dir", str(DEMO_DIR), "--output-dir", str(out)) == 0
    command = ["--config-file", str(TINY_CONFIG), "--checkpoint", str(DEMO_CHECKPOINT)]
    argv = [*command, "--device", "cuda", "--data-dir", str(DEMO_DIR), "--output-dir", str(out)]
    assert inference.main(argv) == 2
    assert "no CUDA device is available" in caplog.text
