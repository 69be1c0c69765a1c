"""pretrained/preprocess.py: teacher weights copied from the ViTMatte backbone."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch

from engine.checkpoint import CheckpointError
from pretrained import preprocess
from pretrained.preprocess import add_teacher_weights, convert
from tests.helpers import REPO_ROOT, build_tiny_mematte, save_untrusted_checkpoint


def _vitmatte_state_dict() -> dict:
    """A ViTMatte-like state dict: the tiny model's teacher backbone + decoder, no routing."""
    model = build_tiny_mematte(with_teacher=True)
    sd = {"backbone." + k: v for k, v in model.teacher_backbone.state_dict().items()}
    sd.update({"decoder." + k: v for k, v in model.decoder.state_dict().items()})
    return sd


def test_teacher_loads_strictly_and_student_reports_routing_keys(tmp_path):
    src, dst = tmp_path / "vitmatte.pth", tmp_path / "with_teacher.pth"
    torch.save({"model": _vitmatte_state_dict(), "iteration": 7}, src)
    assert convert(src, dst) > 0
    checkpoint = torch.load(dst, weights_only=True)
    assert checkpoint["iteration"] == 7
    model = build_tiny_mematte(with_teacher=True, seed=1)
    result = model.load_state_dict(checkpoint["model"], strict=False)
    assert not [k for k in result.missing_keys if k.startswith("teacher_backbone.")]
    # The student has routers and LTRMs ViTMatte lacks, and no rel-pos in routed blocks.
    assert any(".routers." in k for k in result.missing_keys)
    assert all(".attn.rel_pos_" in k for k in result.unexpected_keys)
    for k, v in model.teacher_backbone.state_dict().items():
        torch.testing.assert_close(v, checkpoint["model"]["backbone." + k])


def test_a_bare_state_dict_is_converted(tmp_path):
    src, dst = tmp_path / "bare.pth", tmp_path / "with_teacher.pth"
    state = _vitmatte_state_dict()
    torch.save(state, src)
    backbone = [k for k in state if k.startswith("backbone.")]
    assert convert(src, dst) == len(backbone)
    written = torch.load(dst, weights_only=True)
    assert set(written) == {"model"}
    assert len(written["model"]) == len(state) + len(backbone)


def test_rejects_files_that_are_not_vitmatte_checkpoints(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pth"):
        convert(garbage, tmp_path / "out.pth")
    decoder_only = tmp_path / "decoder_only.pth"
    torch.save({"model": {"decoder.w": torch.zeros(1)}}, decoder_only)
    with pytest.raises(CheckpointError, match=r"decoder_only.pth: .*no 'backbone\.\*' weights"):
        convert(decoder_only, tmp_path / "out.pth")
    with pytest.raises(CheckpointError, match="already"):
        add_teacher_weights(add_teacher_weights(_vitmatte_state_dict()))
    assert not (tmp_path / "out.pth").exists()


def test_pickled_objects_are_loaded_only_with_trust_checkpoint(tmp_path, caplog):
    src, dst, marker = tmp_path / "crafted.pth", tmp_path / "out.pth", tmp_path / "marker"
    save_untrusted_checkpoint(src, _vitmatte_state_dict(), marker)
    argv = ["--input", str(src), "--output", str(dst)]
    with caplog.at_level(logging.ERROR, logger="preprocess"):
        assert preprocess.main(argv) == 1
    assert "crafted.pth" in caplog.text and "--trust-checkpoint" in caplog.text
    assert not marker.exists() and not dst.exists()

    assert preprocess.main([*argv, "--trust-checkpoint"]) == 0
    assert marker.is_dir()  # trusted: the file's code ran, as the flag's help warns
    assert any(k.startswith("teacher_backbone.") for k in torch.load(dst)["model"])


@pytest.mark.slow
def test_command_line_reports_a_missing_file(tmp_path):
    result = subprocess.run(
        [sys.executable, "pretrained/preprocess.py", "--input", str(tmp_path / "none.pth")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "none.pth" in result.stderr
