"""engine.checkpoint: the one checkpoint reader (weights only unless trusted, checked against its
SHA-256), state-dict cleaning, and the checkpointer's trust flag, fallback and shape checks; a
checkpoint of another config summarised, naming the shipped configs it fits."""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import nn

from engine.checkpoint import (
    Checkpointer,
    CheckpointError,
    CorruptCheckpointError,
    IncompatibleCheckpointError,
    UntrustedCheckpointError,
    clean_state_dict,
    describe_shape_mismatches,
    load_checkpoint,
)
from engine.config import LazyConfig, instantiate
from engine.known_configs import CONFIG_DIR, fitting_configs, shipped_configs
from predictor.weights import build_inference_model, load_inference_weights
from tests.helpers import DEMO_CHECKPOINT, TINY_CONFIG, save_untrusted_checkpoint


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
    state = _state()
    safetensors.torch.save_file(state, tmp_path / "weights.safetensors")
    checkpoint = load_checkpoint(tmp_path / "weights.safetensors")
    assert set(checkpoint) == {"model"}
    assert all(torch.equal(checkpoint["model"][k], v) for k, v in state.items())
    (tmp_path / "broken.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(CheckpointError, match="broken.safetensors: not a readable safetensors"):
        load_checkpoint(tmp_path / "broken.safetensors")


# --- integrity ---------------------------------------------------------------------------------


def _zero_bytes_inside(path: Path) -> None:
    """Zero 64 bytes in the middle of a file (what a bad disk or copy does)."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)
    path.write_bytes(bytes(data))


def test_each_checkpoint_has_a_sha256_that_sha256sum_accepts(tmp_path: Path) -> None:
    Checkpointer(nn.Linear(3, 2), str(tmp_path)).save("model_0000009")
    line = (tmp_path / "model_0000009.pth.sha256").read_text()
    digest, name = line.split()
    assert name == "model_0000009.pth" and line.endswith("\n")
    assert digest == hashlib.sha256((tmp_path / "model_0000009.pth").read_bytes()).hexdigest()
    if shutil.which("sha256sum"):
        command = ["sha256sum", "--check", "--quiet", "model_0000009.pth.sha256"]
        subprocess.run(command, cwd=tmp_path, check=True)


def test_zeroed_bytes_inside_a_checkpoint_are_detected(tmp_path: Path) -> None:
    model = nn.Linear(300, 200)  # big enough that the zeroed bytes fall into a tensor
    Checkpointer(model, str(tmp_path)).save("model_final")
    path = tmp_path / "model_final.pth"
    load_checkpoint(path)
    _zero_bytes_inside(path)
    with pytest.raises(CorruptCheckpointError, match="model_final.pth is corrupt"):
        load_checkpoint(path)
    (tmp_path / "model_final.pth.sha256").write_text("not a digest\n")
    with pytest.raises(CorruptCheckpointError, match="not a SHA-256 line"):
        load_checkpoint(path)


def _saved_run(tmp_path: Path) -> tuple[dict[int, torch.Tensor], Checkpointer]:
    """Checkpoints after iterations 9, 19 and 29 of a 'run' (weights = the iteration)."""
    model = nn.Linear(3, 2)
    checkpointer = Checkpointer(model, str(tmp_path))
    weights = {}
    for iteration in (9, 19, 29):
        with torch.no_grad():
            model.weight.fill_(iteration)
        checkpointer.save(f"model_{iteration:07d}", iteration=iteration)
        weights[iteration] = model.weight.detach().clone()
    return weights, checkpointer


def test_resume_falls_back_to_the_previous_intact_checkpoint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    weights, _ = _saved_run(tmp_path)
    _zero_bytes_inside(tmp_path / "model_0000029.pth")
    (tmp_path / "model_0000019.pth").write_bytes(b"truncated")
    model = nn.Linear(3, 2)
    with caplog.at_level(logging.WARNING, logger="engine.checkpoint"):
        extra = Checkpointer(model, str(tmp_path)).resume_or_load("", resume=True)
    assert extra["iteration"] == 9 and torch.equal(model.weight, weights[9])
    message = caplog.text
    assert "model_0000029.pth is corrupt" in message and "model_0000009.pth instead" in message

    (tmp_path / "model_0000009.pth").unlink()
    with pytest.raises(CorruptCheckpointError, match="no earlier checkpoint .* is intact"):
        Checkpointer(nn.Linear(3, 2), str(tmp_path)).resume_or_load("", resume=True)


def test_resume_when_last_checkpoint_names_a_missing_file(tmp_path: Path) -> None:
    weights, checkpointer = _saved_run(tmp_path)
    checkpointer.delete("model_0000029")
    assert not (tmp_path / "model_0000029.pth.sha256").exists()
    model = nn.Linear(3, 2)
    assert Checkpointer(model, str(tmp_path)).resume_or_load("", resume=True)["iteration"] == 19
    assert torch.equal(model.weight, weights[19])


def test_shape_mismatches_are_an_error_unless_not_strict(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 4))
    torch.save({"model": source.state_dict()}, tmp_path / "init.pth")
    target = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 5), nn.Linear(5, 1))  # [1] differs
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(IncompatibleCheckpointError, match=r"2 tensors .*\(1.weight: \[4, 2\]"):
        Checkpointer(target).resume_or_load(str(tmp_path / "init.pth"), resume=False)
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())  # untouched
    with caplog.at_level(logging.WARNING, logger="engine.checkpoint"):
        Checkpointer(target, strict_shapes=False).load(str(tmp_path / "init.pth"))
    assert torch.equal(target[0].weight, source[0].weight)
    assert "Skipped the checkpoint's tensors of other shapes" in caplog.text
    assert "2 tensors have other shapes than in the model (1.weight: [4, 2]" in caplog.text
    assert "model keys are not in the checkpoint" in caplog.text  # missing: a warning
    assert "  2.weight" in caplog.text


def _mismatched(count: int) -> list[tuple[str, tuple[int, ...], tuple[int, ...]]]:
    return [(f"layer{i}.weight", (i + 1, 2), (i + 1, 3)) for i in range(count)]


def test_shape_mismatches_are_summarised_with_the_first_few_and_a_count() -> None:
    text = describe_shape_mismatches(_mismatched(107))
    assert text.startswith("107 tensors have other shapes than in the model (layer0.weight: ")
    assert "layer2.weight: [3, 2] in the checkpoint, [3, 3] in the model; and 104 more)" in text
    assert "layer3" not in text and "\n" not in text
    assert describe_shape_mismatches(_mismatched(2)).endswith("[2, 3] in the model)")


def test_a_checkpoint_of_another_config_names_the_configs_it_fits(tmp_path: Path) -> None:
    """The demo checkpoint (configs/tiny) in a model of another width: one summary naming the
    tiny config, for training (the checkpointer) and inference (load_inference_weights)."""
    wider = ["model.backbone.embed_dim=64", "model.decoder.in_chans=64"]
    cfg = LazyConfig.apply_overrides(LazyConfig.load(str(TINY_CONFIG)), wider)
    with pytest.raises(IncompatibleCheckpointError) as training:
        Checkpointer(instantiate(cfg.model)).load(str(DEMO_CHECKPOINT))
    with pytest.raises(IncompatibleCheckpointError) as inference:
        load_inference_weights(build_inference_model(TINY_CONFIG, wider), DEMO_CHECKPOINT)
    tiny = "configs/tiny/MEMatte_tiny_synthetic.py"
    for message in (str(training.value), str(inference.value)):
        assert str(DEMO_CHECKPOINT) in message and "\n" not in message
        assert "tensors have other shapes than in the model (backbone.pos_embed: [1, 197, 48]" in (
            message
        )
        assert f"more); its shapes fit {tiny}" in message
    assert "train.init_strict=False" in str(training.value)
    assert "--config-file" in str(inference.value)


def test_fitting_configs_are_the_shipped_configs_of_the_same_shapes() -> None:
    with torch.device("meta"):
        vitmatte_s = instantiate(LazyConfig.load(str(CONFIG_DIR / "ViTMatte_S_Com.py")).model)
    state = vitmatte_s.state_dict()
    # ViTMatte-S fits its own config only (the MEMatte-S student has no rel-pos tables in its
    # global blocks); its backbone alone also fits the MEMatte-S configs, less the routers.
    assert fitting_configs(state) == ["configs/ViTMatte_S_Com.py"]
    backbone = {k: v for k, v in state.items() if ".attn.rel_pos_" not in k}
    fits = fitting_configs(backbone)
    assert "configs/MEMatte_S_topk0.25_win_global_long.py" in fits
    assert not any("_B_" in name or "tiny" in name for name in fits)
    assert fitting_configs(backbone, complete=True) == []
    state["backbone.pos_embed"] = torch.empty(1, 2, 3, device="meta")
    assert fitting_configs(state) == []
    assert {path.name for path in shipped_configs()} >= {
        "ViTMatte_B_Com.py",
        "MEMatte_tiny_synthetic.py",
    }
