"""engine.checkpoint: the one checkpoint reader (weights only unless trusted), state-dict
cleaning, and the checkpointer's trust flag."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from untrusted import save_untrusted_checkpoint

from engine.checkpoint import (
    Checkpointer,
    CheckpointError,
    UntrustedCheckpointError,
    clean_state_dict,
    load_checkpoint,
)


def _state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return nn.Linear(3, 2).state_dict()


def test_official_trainer_and_bare_files_read_alike(tmp_path: Path) -> None:
    state = _state()
    torch.save({"model": state}, tmp_path / "official.pth")
    torch.save({"model": state, "trainer": {"iteration": 4}, "iteration": 4}, tmp_path / "run.pth")
    torch.save(state, tmp_path / "bare.pth")
    for name in ("official", "run", "bare"):
        checkpoint = load_checkpoint(tmp_path / f"{name}.pth")
        assert checkpoint["model"].keys() == state.keys(), name
        assert all(torch.equal(checkpoint["model"][k], v) for k, v in state.items()), name
    assert load_checkpoint(tmp_path / "run.pth")["iteration"] == 4
    assert set(load_checkpoint(tmp_path / "bare.pth")) == {"model"}


def test_pickled_objects_need_trust_and_run_nothing_without_it(tmp_path: Path) -> None:
    path, marker = tmp_path / "crafted.pth", tmp_path / "marker"
    save_untrusted_checkpoint(path, _state(), marker)
    with pytest.raises(UntrustedCheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "crafted.pth" in message and "--trust-checkpoint" in message
    assert "trusted=True" in message and "posix.mkdir" in message  # what it would have run
    assert not marker.exists()

    checkpoint = load_checkpoint(path, trusted=True)
    assert marker.is_dir()  # trusted: the file's code ran
    assert checkpoint["model"].keys() == _state().keys()


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "not a readable PyTorch checkpoint"),
        (b"not a checkpoint at all", "not a readable PyTorch checkpoint"),
    ],
)
def test_corrupt_files_name_the_file(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "broken.pth"
    path.write_bytes(content)
    for trusted in (False, True):
        with pytest.raises(CheckpointError, match=match) as info:
            load_checkpoint(path, trusted=trusted)
        assert "broken.pth" in str(info.value)
        assert not isinstance(info.value, UntrustedCheckpointError)


def test_foreign_structures_and_missing_files(tmp_path: Path) -> None:
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match=r"list.pth: expected a state dict .* got a list"):
        load_checkpoint(tmp_path / "list.pth")
    torch.save({"model": [torch.zeros(1)]}, tmp_path / "model_list.pth")
    with pytest.raises(CheckpointError, match="'model' entry is a list"):
        load_checkpoint(tmp_path / "model_list.pth")
    with pytest.raises(FileNotFoundError, match="none.pth"):
        load_checkpoint(tmp_path / "none.pth")


def test_clean_state_dict_strips_ddp_prefix_and_drops_the_teacher_on_request() -> None:
    state = {
        "module.backbone.pos_embed": 1,
        "module.teacher_backbone.pos_embed": 2,
        "decoder.head.weight": 3,
        "teacher_backbone.blocks.0.norm1.weight": 4,
        "backbone.module.weight": 5,  # only a leading prefix is DDP's
    }
    assert clean_state_dict(state) == {
        "backbone.pos_embed": 1,
        "teacher_backbone.pos_embed": 2,
        "decoder.head.weight": 3,
        "teacher_backbone.blocks.0.norm1.weight": 4,
        "backbone.module.weight": 5,
    }
    assert clean_state_dict(state, drop_teacher=True) == {
        "backbone.pos_embed": 1,
        "decoder.head.weight": 3,
        "backbone.module.weight": 5,
    }


def test_checkpointer_loads_pickled_objects_only_when_trusted(tmp_path: Path) -> None:
    path, marker = tmp_path / "crafted.pth", tmp_path / "marker"
    source = _state()
    save_untrusted_checkpoint(path, {f"module.{k}": v for k, v in source.items()}, marker)
    model = nn.Linear(3, 2)
    with pytest.raises(UntrustedCheckpointError, match="--trust-checkpoint"):
        Checkpointer(model).load(str(path))
    assert not marker.exists()
    Checkpointer(model, trusted=True).load(str(path))
    assert marker.is_dir()
    assert torch.equal(model.weight, source["weight"])


def test_safetensors_files_read_as_bare_state_dicts(tmp_path: Path) -> None:
    import safetensors.torch

    state = _state()
    safetensors.torch.save_file(state, tmp_path / "weights.safetensors")
    checkpoint = load_checkpoint(tmp_path / "weights.safetensors")
    assert set(checkpoint) == {"model"}
    assert all(torch.equal(checkpoint["model"][k], v) for k, v in state.items())
    (tmp_path / "broken.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(CheckpointError, match="broken.safetensors: not a readable safetensors"):
        load_checkpoint(tmp_path / "broken.safetensors")
