"""Weights that are not finite floating-point values (NaN, Inf, integer or bool tensors) are
refused by every path that loads them, naming the file, the first bad key and the problem:
inference (predictor, inference.py, hub, ONNX export, web demo), conversion (convert.py,
preprocess.py) and training (init_checkpoint, --resume). A table over entry points x kinds of
bad tensor."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

import inference
import main
from engine.checkpoint import (
    Checkpointer,
    InvalidWeightsError,
    check_weights,
    non_floating_keys,
)
from engine.config import LazyConfig, instantiate
from engine.defaults import EXIT_SETUP_ERROR, exit_on_setup_error
from predictor.weights import build_inference_model, load_inference_weights
from pretrained import convert, preprocess
from tests.helpers import DEMO_CHECKPOINT, DEMO_DIR, REPO_ROOT, TINY_CONFIG
from tools import export_onnx

# A convolution weight in the middle of the state dict, and the first key, which is checked first.
BAD_KEY = "decoder.convstream.convs.1.conv.weight"
FIRST_KEY = "backbone.pos_embed"


def _nan(weight: torch.Tensor) -> torch.Tensor:
    weight = weight.clone()
    weight.view(-1)[3] = float("nan")
    return weight


def _inf(weight: torch.Tensor) -> torch.Tensor:
    weight = weight.clone()
    weight.view(-1)[-1] = -float("inf")
    return weight


# kind -> (how the weight is spoiled, what the message says about it)
BAD_TENSORS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], str]] = {
    "nan": (_nan, "holds 1 NaN of its"),
    "inf": (_inf, "holds 1 Inf of its"),
    "int64": (lambda weight: (weight * 100).long(), "is int64, not floating point"),
    "bool": (lambda weight: weight > 0, "is bool, not floating point"),
}


def _demo_state() -> dict[str, torch.Tensor]:
    return torch.load(DEMO_CHECKPOINT, map_location="cpu", weights_only=True)["model"]


def _bad_checkpoint(folder: Path, kind: str, key: str = BAD_KEY) -> Path:
    state = _demo_state()
    state[key] = BAD_TENSORS[kind][0](state[key])
    path = folder / f"bad_{kind}.pth"
    torch.save({"model": state}, path)
    return path


# --- entry points: each loads ``path`` and returns the error message it gives -------------------


def _predictor(path: Path, tmp_path: Path, caplog) -> str:
    model = build_inference_model(TINY_CONFIG)
    with pytest.raises(InvalidWeightsError) as info:
        load_inference_weights(model, path)
    return str(info.value)


def _inference_py(path: Path, tmp_path: Path, caplog) -> str:
    argv = ["--config-file", str(TINY_CONFIG), "--checkpoint", str(path), "--device", "cpu"]
    argv += ["--image", str(DEMO_DIR / "merged" / "test_000.png")]
    argv += ["--trimap", str(DEMO_DIR / "trimaps" / "test_000.png")]
    argv += ["--output-dir", str(tmp_path / "out"), "--workers", "0"]
    assert inference.main(argv) == 2
    assert not (tmp_path / "out").exists()  # no matte written
    return caplog.text


def _hub(path: Path, tmp_path: Path, caplog) -> str:
    spec = importlib.util.spec_from_file_location("hubconf", REPO_ROOT / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    with pytest.raises(InvalidWeightsError) as info:
        hubconf.mematte(str(TINY_CONFIG), path, device="cpu")
    return str(info.value)


def _export_onnx(path: Path, tmp_path: Path, caplog) -> str:
    argv = ["--config-file", str(TINY_CONFIG), "--checkpoint", str(path)]
    assert export_onnx.main([*argv, "--output", str(tmp_path / "x.onnx")]) == 2
    assert not (tmp_path / "x.onnx").exists()
    return caplog.text


def _web_demo(path: Path, tmp_path: Path, caplog) -> str:
    from tools import web_demo  # imports gradio: only for this entry

    def serve(*args, **kwargs) -> None:
        raise AssertionError("the web demo served a model with bad weights")

    argv = ["--config-file", str(TINY_CONFIG), "--checkpoint", str(path), "--device", "cpu"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(web_demo, "serve", serve)
        assert web_demo.main([*argv, "--max-pixels", "4096"]) == 2
    return caplog.text


def _convert(path: Path, tmp_path: Path, caplog) -> str:
    assert convert.main([str(path), str(tmp_path / "converted.safetensors")]) == 1
    assert not (tmp_path / "converted.safetensors").exists()
    return caplog.text


def _preprocess(path: Path, tmp_path: Path, caplog) -> str:
    output = tmp_path / "with_teacher.pth"
    assert preprocess.main(["--input", str(path), "--output", str(output)]) == 1
    assert not output.exists()
    return caplog.text


def _init_checkpoint(path: Path, tmp_path: Path, caplog) -> str:
    """As main.py's do_train loads train.init_checkpoint (main.py itself: a test below)."""
    model = instantiate(LazyConfig.load(str(TINY_CONFIG)).model)
    with pytest.raises(InvalidWeightsError) as info:
        Checkpointer(model, str(tmp_path / "run")).resume_or_load(str(path), resume=False)
    return str(info.value)


def _resume(path: Path, tmp_path: Path, caplog) -> str:
    """``path`` as the last checkpoint of a run folder (a symbolic link keeps its name)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "model_0000009.pth").symlink_to(path)
    (run / "last_checkpoint").write_text("model_0000009.pth")
    model = instantiate(LazyConfig.load(str(TINY_CONFIG)).model)
    with pytest.raises(InvalidWeightsError) as info:
        Checkpointer(model, str(run)).resume_or_load("", resume=True)
    return str(info.value).replace(str(run / "model_0000009.pth"), str(path))


ENTRY_POINTS = {
    "predictor": _predictor,
    "inference.py": _inference_py,
    "hub": _hub,
    "export_onnx.py": _export_onnx,
    "web_demo.py": _web_demo,
    "convert.py": _convert,
    "preprocess.py": _preprocess,
    "train.init_checkpoint": _init_checkpoint,
    "--resume": _resume,
}


@pytest.mark.parametrize("kind", list(BAD_TENSORS))
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_every_loading_path_refuses_bad_weights_naming_file_key_and_problem(
    tmp_path, caplog, entry, kind
):
    path = _bad_checkpoint(tmp_path, kind)
    with caplog.at_level(logging.INFO):
        message = ENTRY_POINTS[entry](path, tmp_path, caplog)
    assert f"{path}: {BAD_KEY} {BAD_TENSORS[kind][1]}" in message, message


def test_main_py_exits_2_on_a_nan_init_checkpoint_and_keeps_no_output_folder(
    tmp_path, capsys, restore_logging
):
    path = _bad_checkpoint(tmp_path, "nan", key=FIRST_KEY)
    out = tmp_path / "run"
    args = main.build_parser().parse_args(
        [
            "--config-file",
            str(TINY_CONFIG),
            f"train.init_checkpoint={path}",
            f"train.output_dir={out}",
            "train.max_iter=1",
            "dataloader.train.num_workers=0",
            "dataloader.train.batch_size=2",
            "dataloader.evaluator=None",
            *(
                f"dataloader.train.dataset.{name}_dir={DEMO_DIR / folder}"
                for name, folder in (("fg", "merged"), ("alpha", "alpha_copy"), ("bg", "merged"))
            ),
        ]
    )
    with pytest.raises(SystemExit) as exit_info:
        exit_on_setup_error("main.py", main.main, args)
    assert exit_info.value.code == EXIT_SETUP_ERROR
    error = capsys.readouterr().err
    assert f"{path}: {FIRST_KEY} holds 1 NaN of its" in error
    assert not out.exists()


def test_integer_buffers_of_the_model_are_allowed_and_found_in_its_own_state_dict():
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    assert non_floating_keys(model.state_dict()) == {"1.num_batches_tracked"}
    state = model.state_dict()
    check_weights(state, "ok.pth", integer_keys=non_floating_keys(model.state_dict()))
    # The same integer where the model has no integer buffer is refused.
    linear = nn.Sequential(nn.Conv2d(1, 2, 1), nn.Linear(2, 2))
    with pytest.raises(InvalidWeightsError, match="1.num_batches_tracked is int64"):
        check_weights(state, "ok.pth", integer_keys=non_floating_keys(linear.state_dict()))
    # A float counter where the model holds an integer must still be finite.
    state["1.num_batches_tracked"] = torch.tensor(float("nan"))
    with pytest.raises(InvalidWeightsError, match="num_batches_tracked holds 1 NaN"):
        check_weights(state, "x.pth", integer_keys=non_floating_keys(model.state_dict()))
    state["1.num_batches_tracked"] = 3
    with pytest.raises(InvalidWeightsError, match="is a int, not a tensor"):
        check_weights(state, "x.pth", integer_keys=frozenset())


def test_clean_weights_load_everywhere(tmp_path):
    """The demo checkpoint (with BatchNorm counters) passes every check."""
    model = build_inference_model(TINY_CONFIG)
    load_inference_weights(model, DEMO_CHECKPOINT)
    assert convert.main([str(DEMO_CHECKPOINT), str(tmp_path / "demo.safetensors")]) == 0
    training = instantiate(LazyConfig.load(str(TINY_CONFIG)).model)
    Checkpointer(training).load(str(DEMO_CHECKPOINT))
