"""main.py on the tiny config: end to end in CPU subprocesses (slow), and in-process checks of
the teacher freeze and of --trust-checkpoint."""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import main
from data.synthetic_dataset import make_synthetic_dataset
from engine.checkpoint import Checkpointer, IncompatibleCheckpointError, UntrustedCheckpointError
from engine.config import LazyConfig, instantiate
from engine.defaults import (
    EXIT_SETUP_ERROR,
    SetupError,
    default_argument_parser,
    exit_on_setup_error,
)
from evaluation.folders import TABLE_HEADER
from tests.helpers import REPO_ROOT, TINY_CONFIG, save_untrusted_checkpoint

MAIN = REPO_ROOT / "main.py"
NUM_BG = 6  # training samples per epoch
BATCH = 2
ITERS_PER_EPOCH = NUM_BG // BATCH  # single process
ROUTED_BLOCKS = (1, 3)  # the tiny config's routed (global) blocks
TIMEOUT_S = 120
# Small and quick: one-thread processes (two of them share the CPU in the DDP test).
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
LOSS_KEYS = {"loss_unknown_l1", "loss_known_l1", "loss_pha_laplacian", "loss_gradient_penalty"}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("main") / "synthetic"
    make_synthetic_dataset(root, 0, num_fg=2, num_bg=NUM_BG, num_test=2, size=96)
    return root


def _data(root: Path, evaluate: bool = False, workers: int = 0) -> list[str]:
    """Overrides pointing the tiny config at ``root``; a quick schedule."""
    train = root / "train"
    overrides = [
        f"dataloader.train.dataset.fg_dir={train / 'fg'}",
        f"dataloader.train.dataset.alpha_dir={train / 'alpha'}",
        f"dataloader.train.dataset.bg_dir={train / 'bg'}",
        f"dataloader.train.batch_size={BATCH}",
        f"dataloader.train.num_workers={workers}",
        "train.log_period=1",
    ]
    evaluator = f"dataloader.evaluator.data_dir={root / 'test'}"
    return [*overrides, evaluator if evaluate else "dataloader.evaluator=None"]


def _run_main(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(MAIN), "--config-file", str(TINY_CONFIG), *args],
        cwd=REPO_ROOT,
        env=CHILD_ENV,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


def _ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def _metrics(output_dir: Path) -> list[dict]:
    lines = (output_dir / "metrics.json").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


@pytest.fixture(scope="module")
def continuous_run(synthetic, tmp_path_factory) -> Path:
    """Two epochs in one go with a loading worker, a checkpoint inside the second epoch."""
    out = tmp_path_factory.mktemp("continuous")
    _ok(
        _run_main(
            f"train.output_dir={out}",
            f"train.max_iter={2 * ITERS_PER_EPOCH}",
            f"train.checkpointer.period={ITERS_PER_EPOCH + 1}",
            *_data(synthetic, workers=1),
        )
    )
    return out


@pytest.mark.slow
def test_ddp_training_writes_logs_metrics_events_and_checkpoints(synthetic, tmp_path):
    max_iter = 3
    result = _run_main(
        "--num-gpus",
        "2",
        f"train.output_dir={tmp_path}",
        f"train.max_iter={max_iter}",
        "train.checkpointer.period=2",
        "train.eval_period=2",
        "train.log_image_period=2",
        *_data(synthetic, evaluate=True),
    )
    _ok(result)
    # Every gradient has its parameter's layout, so DDP's buckets take it as it is (PyTorch warns
    # once per rank otherwise).
    assert "Grad strides do not match bucket view strides" not in result.stderr
    for name in ("config.yaml", "log.txt", "metrics.json", "last_checkpoint"):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "model_0000001.pth").is_file()
    assert (tmp_path / "model_final.pth").is_file()
    events = list(tmp_path.glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0
    assert "Rank 0 of 2" in (tmp_path / "log.txt").read_text()

    saved = LazyConfig.load(tmp_path / "config.yaml")
    assert saved.train.max_iter == max_iter
    assert saved.dataloader.train.batch_size == BATCH

    records = _metrics(tmp_path)
    keys = set().union(*records)
    ratios = {f"token_ratio/block{block}" for block in ROUTED_BLOCKS}  # backbone block indexes
    assert LOSS_KEYS | {"total_loss", "lr", "token_ratio/mean"} | ratios <= keys
    assert "token_ratio/block0" not in keys
    assert {"eval/sad", "eval/mse", "eval/grad", "eval/conn"} <= keys
    assert max(r["iteration"] for r in records if "total_loss" in r) == max_iter - 1
    final = [r for r in records if r["iteration"] == max_iter]  # the final evaluation
    assert len(final) == 1 and {"eval/sad", "eval/mse", "eval/grad", "eval/conn"} <= set(final[0])
    # Checkpoints hold the unwrapped model (no DDP "module." prefix), teacher included.
    weights = _weights(tmp_path / "model_final.pth")
    assert not any(k.startswith("module.") for k in weights)
    assert any(k.startswith("teacher_backbone.") for k in weights)


@pytest.mark.slow
def test_resume_inside_an_epoch_with_loader_workers_replays_the_run_bit_for_bit(
    synthetic, continuous_run, tmp_path
):
    # The state after iteration ITERS_PER_EPOCH (inside epoch 1), as a run killed after that
    # checkpoint leaves it, with its metrics.json rows up to the end.
    checkpoint = f"model_{ITERS_PER_EPOCH:07d}.pth"
    for name in (checkpoint, f"{checkpoint}.sha256", "metrics.json"):
        (tmp_path / name).write_bytes((continuous_run / name).read_bytes())
    (tmp_path / "last_checkpoint").write_text(checkpoint)
    result = _run_main(
        "--resume",
        f"train.output_dir={tmp_path}",
        f"train.max_iter={2 * ITERS_PER_EPOCH}",
        f"train.checkpointer.period={ITERS_PER_EPOCH + 1}",
        *_data(synthetic, workers=1),
    )
    _ok(result)
    assert f"Starting training from iteration {ITERS_PER_EPOCH + 1}" in result.stdout
    iterations = [r["iteration"] for r in _metrics(tmp_path)]
    assert iterations == list(range(2 * ITERS_PER_EPOCH))  # rows past the checkpoint redone once

    resumed = _weights(tmp_path / "model_final.pth")
    uninterrupted = _weights(continuous_run / "model_final.pth")
    at_checkpoint = _weights(continuous_run / checkpoint)
    assert resumed.keys() == uninterrupted.keys()
    for name, value in uninterrupted.items():
        assert torch.equal(resumed[name], value), name
    assert not torch.equal(at_checkpoint["backbone.pos_embed"], uninterrupted["backbone.pos_embed"])


@pytest.mark.slow
def test_eval_only_reports_metrics_in_the_table_of_evaluate_py(synthetic, continuous_run, tmp_path):
    result = _run_main(
        "--eval-only",
        f"train.init_checkpoint={continuous_run / 'model_final.pth'}",
        f"train.output_dir={tmp_path}",
        *_data(synthetic, evaluate=True),
    )
    _ok(result)
    lines = result.stdout.splitlines()
    header = lines.index(TABLE_HEADER)  # the units: SAD(/1e3) MSE(x1e3) Grad(/1e3) Conn(/1e3)
    assert "Mean over 2 images, unknown region (trimap == 128), in paper units" in lines[header - 1]
    values = [float(value) for value in lines[header + 1].split()]
    assert len(values) == 4 and all(np.isfinite(v) and v >= 0 for v in values)


def test_eval_only_without_evaluator_fails_clearly(synthetic, tmp_path):
    args = default_argument_parser().parse_args(
        ["--config-file", str(TINY_CONFIG), "--eval-only", f"train.output_dir={tmp_path}"]
        + _data(synthetic)
    )
    with pytest.raises(SetupError, match="has no dataloader.evaluator"):
        main.main(args)
    assert not any(tmp_path.iterdir())  # failed before writing anything


@pytest.mark.slow
def test_bad_dataset_folder_fails_with_its_name(synthetic, tmp_path):
    fg_dir, alpha_dir = tmp_path / "fg", tmp_path / "alpha"
    fg_dir.mkdir()
    alpha_dir.mkdir()
    cv2.imwrite(str(fg_dir / "a.png"), np.zeros((8, 8, 3), np.uint8))
    cv2.imwrite(str(alpha_dir / "b.png"), np.zeros((8, 8), np.uint8))
    result = _run_main(
        f"train.output_dir={tmp_path / 'out'}",
        *_data(synthetic),
        f"dataloader.train.dataset.fg_dir={fg_dir}",
        f"dataloader.train.dataset.alpha_dir={alpha_dir}",
    )
    assert result.returncode != 0
    assert "no foreground/alpha pair" in result.stderr
    assert str(fg_dir) in result.stderr and str(alpha_dir) in result.stderr


@pytest.fixture
def one_thread():
    """One intra-op thread, as the subprocesses get (threads that wait on each other are slow
    on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_teacher_stays_frozen_while_the_student_learns(synthetic, tmp_path, one_thread):
    cfg = LazyConfig.load(TINY_CONFIG)
    out = tmp_path / "out"
    cfg = LazyConfig.apply_overrides(
        cfg,
        [
            *_data(synthetic),
            "model.distill=True",
            "train.max_iter=2",
            f"train.output_dir={out}",
        ],
    )
    torch.manual_seed(0)
    init_model = instantiate(cfg.model)
    with torch.no_grad():  # a teacher that differs from the student's initialisation
        for param in init_model.teacher_backbone.parameters():
            param.normal_(0.0, 0.02)
    Checkpointer(init_model, str(tmp_path)).save("init")
    cfg.train.init_checkpoint = str(tmp_path / "init.pth")
    out.mkdir()

    main.do_train(argparse.Namespace(resume=False, trust_checkpoint=False), cfg)

    before = _weights(tmp_path / "init.pth")
    checkpoint = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    after = checkpoint["model"]
    teacher = [k for k in before if k.startswith("teacher_backbone.")]
    student = [k for k in before if k.startswith("backbone.")]
    assert teacher and student
    for name in teacher:
        assert torch.equal(before[name], after[name]), name
    assert any(not torch.equal(before[name], after[name]) for name in student)
    # The optimizer holds exactly the student and decoder parameters.
    groups = checkpoint["trainer"]["optimizer"]["param_groups"]
    student_params = [
        n for n, _ in init_model.named_parameters() if n.startswith(("backbone.", "decoder."))
    ]
    assert sum(len(g["params"]) for g in groups) == len(student_params)
    assert "loss_distill" in set().union(*_metrics(out))


def test_eval_only_loads_pickled_objects_only_with_trust_checkpoint(
    synthetic, tmp_path, one_thread, restore_logging, caplog
):
    torch.manual_seed(0)
    weights = instantiate(LazyConfig.load(TINY_CONFIG).model).state_dict()
    crafted, marker = tmp_path / "crafted.pth", tmp_path / "marker"
    save_untrusted_checkpoint(crafted, weights, marker)
    command = ["--config-file", str(TINY_CONFIG), "--eval-only", f"train.init_checkpoint={crafted}"]
    command += [f"train.output_dir={tmp_path / 'out'}", *_data(synthetic, evaluate=True)]
    with pytest.raises(UntrustedCheckpointError, match="crafted.pth.*--trust-checkpoint"):
        main.main(default_argument_parser().parse_args(command))
    assert not marker.exists()

    with caplog.at_level(logging.INFO):
        results = main.main(default_argument_parser().parse_args(["--trust-checkpoint", *command]))
    assert marker.is_dir()  # trusted: the file's code ran
    assert set(results) == {"eval/sad", "eval/mse", "eval/grad", "eval/conn"}
    # The metrics with their units, as tools/evaluate.py prints them.
    assert "in paper units (each column: the official value scaled as its header says)" in (
        caplog.text
    )
    assert TABLE_HEADER in caplog.text


# --- setup errors, output folder, summary -------------------------------------------------------


def _args(*argv: str) -> argparse.Namespace:
    return default_argument_parser().parse_args(["--config-file", str(TINY_CONFIG), *argv])


def _setup_error(args: argparse.Namespace, capsys) -> str:
    """Run main as the command line does; return its one-line error (exit status 2)."""
    with pytest.raises(SystemExit) as exit_info:
        exit_on_setup_error("main.py", main.main, args)
    assert exit_info.value.code == EXIT_SETUP_ERROR
    error = capsys.readouterr().err.strip()
    assert error.startswith("main.py: error: ") and "\n" not in error, error
    return error


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("dataloader.train.dataset.fg_dir={nope}", "training data folder {nope} does not exist"),
        ("train.max_iters=5", "train.max_iters is not in the config (did you mean max_iter?)"),
        ("train.max_iter=abc", "train.max_iter takes an int (now 500), not the str 'abc'"),
        ("train.init_checkpoint={notes}", "{notes}: not a readable PyTorch checkpoint"),
    ],
)
def test_setup_errors_are_one_line_and_leave_no_output_folder(
    synthetic, tmp_path, capsys, one_thread, restore_logging, override, expected
):
    nope, notes, out = tmp_path / "nope", tmp_path / "notes.txt", tmp_path / "out"
    notes.write_text("not a checkpoint\n")
    override, expected = (text.format(nope=nope, notes=notes) for text in (override, expected))
    args = _args(f"train.output_dir={out}", *_data(synthetic), override)
    assert expected in _setup_error(args, capsys)
    assert not out.exists()


def test_eval_only_without_its_checkpoint_suggests_the_trained_one(
    synthetic, tmp_path, capsys, restore_logging
):
    missing, out = tmp_path / "missing.pth", tmp_path / "out"
    args = _args("--eval-only", f"train.init_checkpoint={missing}", f"train.output_dir={out}")
    args.opts += _data(synthetic, evaluate=True)
    error = _setup_error(args, capsys)
    assert str(missing) in error and f"train.init_checkpoint={out}/model_final.pth" in error
    assert "preprocess" not in error
    assert not out.exists()


def test_init_checkpoint_of_other_shapes_is_an_error_summarising_the_keys(
    synthetic, tmp_path, one_thread, restore_logging
):
    torch.manual_seed(0)
    weights = instantiate(LazyConfig.load(TINY_CONFIG).model).state_dict()
    weights["backbone.pos_embed"] = weights["backbone.pos_embed"][:, :-1]
    weights["decoder.matting_head.matting_convs.3.weight"] = torch.zeros(1, 3, 1, 1)
    torch.save({"model": weights}, tmp_path / "other.pth")
    args = _args(
        f"train.init_checkpoint={tmp_path / 'other.pth'}", f"train.output_dir={tmp_path / 'out'}"
    )
    args.opts += _data(synthetic)
    with pytest.raises(IncompatibleCheckpointError, match="init_strict=False") as info:
        main.main(args)
    assert "2 tensors have other shapes than in the model (backbone.pos_embed: " in str(info.value)
    assert "decoder.matting_head.matting_convs.3.weight: [1, 3, 1, 1]" in str(info.value)
    assert "its shapes fit none of the configs in configs/" in str(info.value)


def test_a_resume_without_checkpoint_warns_and_the_run_writes_its_summary(
    synthetic, tmp_path, one_thread, restore_logging
):
    out = tmp_path / "out"
    args = _args("--resume", f"train.output_dir={out}", "train.max_iter=2", *_data(synthetic))
    main.main(args)
    log = (out / "log.txt").read_text()
    assert "--resume: no checkpoint in train.output_dir" in log
    assert "starting from train.init_checkpoint=''" in log
    # A parameter table in the log, the whole structure in model.txt.
    assert "Parameters; full structure in" in log and "teacher_backbone" in log
    assert "(patch_embed)" not in log and "(patch_embed)" in (out / "model.txt").read_text()
    reference = tmp_path / "reference"
    reference.write_text("")  # what open() creates under this umask
    for name in ("config.yaml", "model.txt", "model_final.pth", "model_final.pth.sha256"):
        assert (out / name).stat().st_mode == reference.stat().st_mode, name
    keys = set().union(*_metrics(out))
    assert {f"token_ratio/block{block}" for block in ROUTED_BLOCKS} <= keys


@pytest.mark.slow
def test_command_line_setup_errors_stop_before_and_after_spawning(synthetic, tmp_path):
    out = tmp_path / "out"
    no_gpu = _run_main("--num-gpus", "2", f"train.output_dir={out}", "train.device=cuda")
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    assert no_gpu.returncode == EXIT_SETUP_ERROR
    assert no_gpu.stderr.strip().splitlines() == [
        "main.py: error: train.device=cuda but no GPU is visible; run with train.device=cpu "
        "(and train.amp.enabled=False or train.amp.precision=bf16)"
    ]
    assert "Rank" not in no_gpu.stdout and not out.exists()  # no process was spawned

    missing = tmp_path / "missing"
    spawned = _run_main(
        "--num-gpus",
        "2",
        f"train.output_dir={out}",
        *_data(synthetic),
        f"dataloader.train.dataset.bg_dir={missing}",
    )
    assert spawned.returncode == EXIT_SETUP_ERROR
    # One line per failed rank (torch may add a line about stopping the other rank).
    errors = [line for line in spawned.stderr.splitlines() if line.startswith("main.py: ")]
    assert errors and set(errors) == {
        f"main.py: error: training data folder {missing} does not exist"
    }, spawned.stderr
    assert "Traceback" not in spawned.stderr
    assert not out.exists()


# --- an output folder that holds a run; the saved config is the run's -----------------------------


def test_a_folder_that_holds_a_run_needs_resume_or_overwrite(
    synthetic, tmp_path, capsys, one_thread, restore_logging
):
    out = tmp_path / "out"
    run = [f"train.output_dir={out}", *_data(synthetic)]
    main.main(_args(*run, "train.max_iter=2"))
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    assert "model_final.pth" in before

    # Again without --resume or --overwrite: refused (before spawning, and in the process), the
    # folder untouched.
    error = _setup_error(_args(*run, "train.max_iter=2"), capsys)
    assert f"train.output_dir={out} holds a training run (" in error
    assert "pass --resume to continue it, or --overwrite to delete its files" in error
    with pytest.raises(SetupError, match="holds a training run"):
        main.check_before_launch(_args(*run, "train.max_iter=2"))
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before

    # --overwrite keeps no file of the old run: one event file, the new metrics, a new log.
    (out / "notes.txt").write_text("not the trainer's")
    main.main(_args("--overwrite", *run, "train.max_iter=3"))
    assert len(list(out.glob("events.out.tfevents.*"))) == 1
    assert [r["iteration"] for r in _metrics(out) if "total_loss" in r] == [0, 1, 2]
    assert (out / "log.txt").read_text().count("Rank 0 of 1") == 1
    assert (out / "notes.txt").read_text() == "not the trainer's"

    # --overwrite never deletes the checkpoint it is to start from.
    final = out / "model_final.pth"
    error = _setup_error(_args("--overwrite", *run, f"train.init_checkpoint={final}"), capsys)
    assert "which --overwrite deletes" in error and final.is_file()
    with pytest.raises(SystemExit) as exit_info:
        _args("--resume", "--overwrite")
    assert exit_info.value.code == 2  # argparse: one or the other


def test_setup_files_alone_are_not_a_run(synthetic, tmp_path, one_thread, restore_logging):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("config.yaml", "log.txt", "model.txt"):  # what a failed setup may leave
        (out / name).write_text("")
    main.main(_args(f"train.output_dir={out}", "train.max_iter=1", *_data(synthetic)))
    assert (out / "model_final.pth").is_file()


@pytest.mark.slow
def test_the_saved_config_is_the_run_and_resumes_it_bit_for_bit(
    synthetic, tmp_path, one_thread, restore_logging
):
    out = tmp_path / "out"
    max_iter = 4  # the tiny config's steps (0.6 and 0.9 of training): one, at iteration 3
    main.main(
        _args(
            f"train.output_dir={out}",
            f"train.max_iter={max_iter}",
            "train.checkpointer.period=2",
            *_data(synthetic),
        )
    )
    saved = LazyConfig.load(out / "config.yaml")
    steps = saved.lr_multiplier.scheduler
    assert (list(steps["values"]), list(steps.milestones), steps.num_updates) == (
        [1.0, 0.1],
        [3],
        max_iter,
    )
    lrs = {r["iteration"]: r["lr"] for r in _metrics(out) if "lr" in r}
    base_lr = saved.optimizer.lr
    multiplier = instantiate(saved.lr_multiplier)
    assert lrs == pytest.approx({i: base_lr * multiplier(i / max_iter) for i in range(max_iter)})

    # A crash after the checkpoint of iteration 1; the run's own folder continues it.
    uninterrupted = _weights(out / "model_final.pth")
    for name in ("model_final.pth", "model_final.pth.sha256"):
        (out / name).unlink()
    (out / "last_checkpoint").write_text("model_0000001.pth")
    main.main(
        default_argument_parser().parse_args(
            ["--config-file", str(out / "config.yaml"), "--resume"]
        )
    )
    resumed = _weights(out / "model_final.pth")
    assert resumed.keys() == uninterrupted.keys()
    for name, value in uninterrupted.items():
        assert torch.equal(resumed[name], value), name
