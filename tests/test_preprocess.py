"""pretrained/preprocess.py: teacher weights copied from the ViTMatte backbone."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT, build_tiny_mematte

from pretrained.preprocess import CheckpointFormatError, add_teacher_weights, convert


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
    checkpoint = torch.load(dst, weights_only=False)
    assert checkpoint["iteration"] == 7
    model = build_tiny_mematte(with_teacher=True, seed=1)
    result = model.load_state_dict(checkpoint["model"], strict=False)
    assert not [k for k in result.missing_keys if k.startswith("teacher_backbone.")]
    # The student has routers and LTRMs ViTMatte lacks, and no rel-pos in routed blocks.
    assert any(".routers." in k for k in result.missing_keys)
    assert all(".attn.rel_pos_" in k for k in result.unexpected_keys)
    for k, v in model.teacher_backbone.state_dict().items():
        torch.testing.assert_close(v, checkpoint["model"]["backbone." + k])


def test_rejects_files_that_are_not_vitmatte_checkpoints(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointFormatError, match="garbage.pth"):
        convert(garbage, tmp_path / "out.pth")
    bare = tmp_path / "bare.pth"
    torch.save(_vitmatte_state_dict(), bare)
    with pytest.raises(CheckpointFormatError, match="'model'"):
        convert(bare, tmp_path / "out.pth")
    with pytest.raises(CheckpointFormatError, match="already"):
        add_teacher_weights(add_teacher_weights(_vitmatte_state_dict()))


def test_command_line_reports_a_missing_file(tmp_path):
    result = subprocess.run(
        [sys.executable, "pretrained/preprocess.py", "--input", str(tmp_path / "none.pth")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "none.pth" in result.stderr
