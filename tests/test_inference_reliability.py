"""inference.py when things go wrong: setup errors before the model loads, exit codes, outputs
that cannot be written, resume of incomplete outputs, no empty folders left, and what a new user
reads (help, summaries, warnings)."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import REPO_ROOT
from untrusted import save_untrusted_checkpoint

import inference
from data.image_io import write_image

TINY_CONFIG = REPO_ROOT / "configs" / "tiny" / "MEMatte_tiny_synthetic.py"
DEMO_CHECKPOINT = REPO_ROOT / "pretrained" / "demo" / "MEMatte_tiny_synthetic.pth"
DEMO = REPO_ROOT / "demo"
NAMES = ("test_000", "test_001", "test_002", "test_003")


def run(data: Path, out: Path, *extra: str, checkpoint: Path = DEMO_CHECKPOINT) -> int:
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
    assert run(DEMO, tmp_path / "out", checkpoint=path) == 2
    (message,) = errors(caplog)
    assert "crafted.pth" in message and "--trust-checkpoint" in message
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_a_text_file_as_checkpoint_is_a_one_line_error(tmp_path, caplog):
    text = tmp_path / "notes.txt"
    text.write_text("these are not weights\n")
    assert run(DEMO, tmp_path / "out", checkpoint=text) == 2
    (message,) = errors(caplog)
    assert "notes.txt" in message and "\n" not in message
    assert not (tmp_path / "out").exists()  # no empty output folder left behind


@pytest.mark.parametrize("problem", ["a file", "a file as routing folder", "missing data"])
def test_setup_errors_come_before_the_model_loads(tmp_path, crafted, caplog, problem):
    path, marker = crafted
    out, data = tmp_path / "out", DEMO
    if problem == "a file":
        out.write_text("I am a file")
    elif problem == "a file as routing folder":
        out.mkdir()
        (out / "routing").write_text("I am a file")
    else:
        data = tmp_path / "nothere"
    code = run(data, out, "--save-routing", "--trust-checkpoint", checkpoint=path)
    assert code == 2
    assert not marker.exists()  # the (trusted, crafted) checkpoint was never read
    assert str(out if problem != "missing data" else data) in " ".join(errors(caplog))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_a_read_only_output_folder_is_a_setup_error(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    try:
        assert run(DEMO, out / "sub") == 2
    finally:
        out.chmod(0o755)


def test_a_failed_write_fails_the_item_and_a_rerun_redoes_it(tmp_path, monkeypatch, caplog):
    out = tmp_path / "out"

    def refuse_pictures(path, image):
        if Path(path).suffix == ".jpg":
            raise PermissionError(f"[Errno 13] Permission denied: '{path}'")
        write_image(path, image)

    monkeypatch.setattr(inference, "write_image", refuse_pictures)
    caplog.set_level(logging.INFO)
    assert run(DEMO, out, "--save-routing") == 1
    assert "failed 4" in caplog.text and "Permission denied" in caplog.text
    assert not list(out.glob("*.png"))  # the alpha PNG comes last: no item looks complete
    monkeypatch.undo()
    caplog.clear()
    assert run(DEMO, out, "--save-routing") == 0
    assert "done 4" in caplog.text
    assert all((out / "routing" / f"{name}.jpg").is_file() for name in NAMES)


def test_resume_redoes_items_with_incomplete_outputs(tmp_path, caplog):
    out = tmp_path / "out"
    assert run(DEMO, out, "--save-routing") == 0
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
    assert run(DEMO, out, "--save-routing") == 0
    assert "done 4, skipped (already present) 0" in caplog.text
    for name in NAMES:
        assert cv2.imread(str(out / f"{name}.png"), cv2.IMREAD_UNCHANGED) is not None
    untouched = [p for p in stamps if p.name in ("test_000.jpg", "test_001.jpg")]
    assert all(p.stat().st_mtime_ns != stamps[p] for p in untouched)  # redone as a whole
    caplog.clear()
    assert run(DEMO, out) == 0  # without --save-routing the routing pictures are not needed
    assert "skipped (already present) 4" in caplog.text


def test_a_rerun_with_nothing_to_do_says_so_and_how_to_redo(tmp_path, caplog):
    out = tmp_path / "out"
    assert run(DEMO, out) == 0
    caplog.clear()
    caplog.set_level(logging.INFO)
    assert run(DEMO, out) == 0
    assert "done 0, skipped (already present) 4, failed 0" in caplog.text
    assert "--overwrite" in caplog.text


def test_a_planted_temporary_file_link_does_not_redirect_a_write(tmp_path):
    out, victim = tmp_path / "out", tmp_path / "victim.txt"
    out.mkdir()
    victim.write_text("precious")
    for name in NAMES:
        for planted in (f"{name}.png.tmp", f".{name}.png.tmp"):
            (out / planted).symlink_to(victim)
    assert run(DEMO, out) == 0
    assert victim.read_text() == "precious"
    assert all(cv2.imread(str(out / f"{name}.png")) is not None for name in NAMES)


def test_a_run_where_every_item_fails_leaves_no_empty_folder(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(DEMO, data)
    for path in (data / "merged").iterdir():
        path.write_bytes(path.read_bytes()[:100])  # truncated images
    out = tmp_path / "new" / "out"
    assert run(data, out, "--save-routing", "--save-rgba") == 1
    assert not (tmp_path / "new").exists()


def test_trimaps_with_other_values_are_used_with_a_warning(tmp_path, caplog):
    data = tmp_path / "data"
    shutil.copytree(DEMO, data)
    trimap_path = data / "trimaps" / "test_001.png"
    trimap = cv2.imread(str(trimap_path), cv2.IMREAD_UNCHANGED)
    trimap[:4] = np.linspace(0, 255, trimap.shape[1]).astype(np.uint8)  # a gradient
    cv2.imwrite(str(trimap_path), trimap)
    share = 100 * np.mean(~np.isin(trimap, (0, 128, 255)))
    with caplog.at_level(logging.WARNING):
        assert run(data, tmp_path / "out") == 0
    warning = next(r.getMessage() for r in caplog.records if "test_001.png" in r.getMessage())
    assert f"{share:.2f}%" in warning


def test_auto_token_cap_is_logged(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    assert run(DEMO, tmp_path / "out", "--max-number-token", "auto") == 0
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
