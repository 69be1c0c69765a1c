"""tools/sweep.py, evaluation/cells.py, evaluation/sweep.py and evaluation/tables.py: the grid
of caps and trimaps on the demo model and data, its table against tools/evaluate.py run on the
same predictions, the resume, the trimaps re-derived from the ground truth, the caps per image,
the refusals."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import inference
from evaluation import cells
from evaluation.cells import check_cells
from evaluation.grid import (
    Cell,
    DatasetSpec,
    RunOptions,
    TokenCap,
    TrimapVariant,
    model_spec,
    parse_token_cap,
    parse_trimap_variant,
)
from evaluation.sweep import sweep_cells, write_sweep_tables
from tests.helpers import DEMO_CHECKPOINT, DEMO_DIR, DEMO_NAMES, REPO_ROOT, TINY_CONFIG
from tools import evaluate, sweep

METRICS = ("sad", "mse", "grad", "conn")
# A crop of the demo images small enough for fast end-to-end runs.
SMALL_CROP = (slice(60, 124), slice(60, 124))


def sweep_argv(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--config-file",
        str(TINY_CONFIG),
        "--checkpoint",
        str(DEMO_CHECKPOINT),
        "--data-dir",
        str(data),
        "--output-dir",
        str(out),
        "--device",
        "cpu",
        "--workers",
        "0",
        "--eval-workers",
        "1",
        *extra,
    ]


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    """Two 64x64 crops of the demo test set, in the Composition-1k layout."""
    root = tmp_path_factory.mktemp("small")
    for folder in ("merged", "trimaps", "alpha_copy"):
        (root / folder).mkdir()
        for name in DEMO_NAMES[:2]:
            image = cv2.imread(str(DEMO_DIR / folder / f"{name}.png"), cv2.IMREAD_UNCHANGED)
            cv2.imwrite(str(root / folder / f"{name}.png"), image[SMALL_CROP])
    return root


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def evaluate_tool(pred: Path, label: Path, trimap: Path, csv_path: Path, capsys) -> list[str]:
    """tools/evaluate.py on the folders: its printed means (4 decimals, as printed)."""
    capsys.readouterr()
    assert evaluate.run(pred, label, trimap, "unknown", 1, csv_path) == 0
    return capsys.readouterr().out.strip().splitlines()[-1].split()


def assert_table_equals_evaluate(out: Path, tmp_path: Path, capsys) -> list[dict]:
    """Every row of sweep.csv / sweep.md equals tools/evaluate.py on the folders it names; each
    cell's per-image CSV equals the tool's."""
    rows = read_rows(out / "sweep.csv")
    markdown = (out / "sweep.md").read_text().splitlines()[2:]
    assert len(markdown) == len(rows)
    for i, (row, line) in enumerate(zip(rows, markdown)):
        per_image = tmp_path / f"evaluate_{i}.csv"
        printed = evaluate_tool(
            Path(row["eval_pred_dir"]),
            Path(row["eval_label_dir"]),
            Path(row["eval_trimap_dir"]),
            per_image,
            capsys,
        )
        assert [f"{float(row[m]):.4f}" for m in METRICS] == printed, row
        cells_md = [c.strip() for c in line.strip("|").split("|")]
        assert cells_md[2:6] == printed, line
        cell_csv = Path(row["eval_pred_dir"]).parent / "per_image.csv"
        assert cell_csv.read_bytes() == per_image.read_bytes()
    return rows


# --- the grid on the demo model and data ----------------------------------------------------------


@pytest.mark.slow
def test_a_sweep_over_three_caps_and_two_widths_equals_tools_evaluate(tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO)
    out = tmp_path / "sweep"
    argv = sweep_argv(DEMO_DIR, out, "--caps", "32", "128", "0.25", "--trimaps", "5", "15")
    assert sweep.main(argv) == 0
    rows = assert_table_equals_evaluate(out, tmp_path, capsys)
    assert [(r["cap"], r["trimap"]) for r in rows] == [
        (cap, trimap) for cap in ("32", "128", "0.25") for trimap in ("band5", "band15")
    ]
    assert all(r["eval_trimap_dir"] == str(DEMO_DIR.resolve() / "trimaps") for r in rows)
    assert all(int(r["images"]) == len(DEMO_NAMES) for r in rows)
    assert all(float(r["peak_memory_mib"]) > 0 and float(r["seconds_per_image"]) > 0 for r in rows)
    assert (out / "sweep.png").read_bytes().startswith(b"\x89PNG")

    # Run again: every cell is finished, nothing is predicted or evaluated again.
    results = sorted(out.glob("cells/*/result.json"))
    stamps = [path.stat().st_mtime_ns for path in results]
    table = (out / "sweep.csv").read_bytes()
    caplog.clear()
    assert sweep.main(argv) == 0
    assert [path.stat().st_mtime_ns for path in results] == stamps
    assert "to predict" not in caplog.text and caplog.text.count("finished earlier") == 6
    assert (out / "sweep.csv").read_bytes() == table


@pytest.mark.slow
def test_evaluating_on_the_fed_trimaps_equals_tools_evaluate_on_them(small_set, tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = sweep_argv(small_set, out, "--caps", "4", "--trimaps", "released", "3")
    assert sweep.main([*argv, "--eval-trimaps", "input"]) == 0
    rows = assert_table_equals_evaluate(out, tmp_path, capsys)
    assert [Path(r["eval_trimap_dir"]) for r in rows] == [
        small_set / "trimaps",
        out / "trimaps" / "band3",
    ]


@pytest.mark.slow
def test_an_interrupted_cell_resumes_and_new_caps_add_cells(small_set, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    out = tmp_path / "sweep"
    assert sweep.main(sweep_argv(small_set, out, "--caps", "4")) == 0
    cell = out / "cells" / "cap-4_trimap-released"
    (cell / "result.json").unlink()  # as if stopped after the predictions
    (cell / "pred" / "test_001.png").unlink()
    caplog.clear()
    assert sweep.main(sweep_argv(small_set, out, "--caps", "4", "8")) == 0
    assert caplog.text.count("1 to predict") == 1 and caplog.text.count("2 to predict") == 1
    assert len(read_rows(out / "sweep.csv")) == 2
    record = json.loads((cell / "result.json").read_text())
    assert record["timed_images"] == 1 and record["num_images"] == 2


SPELLINGS = {
    "spawned": [sys.executable, "tools/sweep.py", "--num-gpus", "2"],
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    + ["--nproc-per-node", "2", "tools/sweep.py"],
}
TIMEOUT_S = 300


@pytest.mark.slow
@pytest.mark.parametrize("spelling", SPELLINGS)
def test_two_cpu_processes_give_the_table_of_one(small_set, tmp_path, spelling):
    one, two = tmp_path / "one", tmp_path / "two"
    extra = ("--caps", "4", "--trimaps", "3")
    assert sweep.main(sweep_argv(small_set, one, *extra)) == 0
    completed = subprocess.run(
        SPELLINGS[spelling] + sweep_argv(small_set, two, *extra),
        cwd=REPO_ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    for name in DEMO_NAMES[:2]:
        relative = Path("cells", "cap-4_trimap-band3", "pred", f"{name}.png")
        assert (one / relative).read_bytes() == (two / relative).read_bytes()
    rows = [read_rows(folder / "sweep.csv") for folder in (one, two)]
    assert [[r[m] for m in METRICS] for r in rows[0]] == [[r[m] for m in METRICS] for r in rows[1]]
    record = json.loads((two / "cells" / "cap-4_trimap-band3" / "result.json").read_text())
    assert record["num_processes"] == 2


@pytest.mark.slow
def test_points_that_cannot_be_evaluated_fail_by_name_and_the_others_go_on(
    small_set, tmp_path, caplog
):
    """A label and trimap without an image (evaluate.py refuses such folders too) and an alpha
    that cannot be read for re-derived trimaps fail their points; exit status 1."""
    data = tmp_path / "data"
    shutil.copytree(small_set, data)
    for folder in ("trimaps", "alpha_copy"):
        shutil.copy(data / folder / "test_000.png", data / folder / "orphan.png")
    out = tmp_path / "sweep"
    assert sweep.main(sweep_argv(data, out, "--caps", "4")) == 1
    assert "orphan" in caplog.text and not list(out.glob("cells/*/result.json"))
    caplog.clear()
    (data / "alpha_copy" / "orphan.png").unlink()
    (data / "trimaps" / "orphan.png").unlink()
    (data / "alpha_copy" / "test_001.png").write_bytes(b"not a png")
    assert sweep.main(sweep_argv(data, tmp_path / "two", "--trimaps", "3", "released")) == 1
    assert "test_001.png" in caplog.text
    assert [p.parent.name for p in (tmp_path / "two").glob("cells/*/result.json")] == []


# --- refusals ------------------------------------------------------------------------------------


def test_setup_errors_exit_with_2_before_any_file(small_set, tmp_path, caplog):
    out = tmp_path / "sweep"
    argv = sweep_argv(small_set, out)
    argv[argv.index("--checkpoint") + 1] = str(tmp_path / "none.pth")
    assert sweep.main(argv) == 2 and "none.pth" in caplog.text
    no_alpha = tmp_path / "no_alpha"
    shutil.copytree(small_set, no_alpha)
    shutil.rmtree(no_alpha / "alpha_copy")
    assert sweep.main(sweep_argv(no_alpha, out)) == 2
    assert "no ground-truth alpha" in caplog.text
    assert not out.exists()
    with pytest.raises(SystemExit) as exc:
        sweep.main(sweep_argv(small_set, out, "--caps", "1.5"))
    assert exc.value.code == 2


def test_cells_of_other_parameters_are_refused(small_set, tmp_path):
    model = model_spec(TINY_CONFIG, DEMO_CHECKPOINT, "demo")
    test_set = DatasetSpec("small", small_set)
    options = RunOptions(device="cpu")
    [cell] = sweep_cells(model, test_set, [TokenCap(4)], [TrimapVariant()], tmp_path)
    check_cells([cell], options)  # nothing there yet
    cell.folder.mkdir(parents=True)
    (cell.folder / "cell.json").write_text(json.dumps(cell.parameters(options)))
    check_cells([cell], options)
    with pytest.raises(ValueError, match="precision"):
        check_cells([cell], RunOptions(device="cpu", precision="bf16"))
    other = model_spec(TINY_CONFIG, Path(inference.__file__), "other")  # any other file
    [moved] = sweep_cells(other, test_set, [TokenCap(4)], [TrimapVariant()], tmp_path)
    with pytest.raises(ValueError, match="checkpoint_sha256"):
        check_cells([moved], options)


# --- the pieces ----------------------------------------------------------------------------------


def test_caps_and_trimap_variants_parse():
    assert parse_token_cap("config") == TokenCap()
    assert parse_token_cap("4096") == TokenCap(4096)
    assert parse_token_cap("0") == TokenCap(0)
    assert parse_token_cap("0.25") == TokenCap(0.25) and parse_token_cap("1.0") == TokenCap(1.0)
    for bad in ("1.5", "0.0", "-1", "many"):
        with pytest.raises(Exception, match=bad):
            parse_token_cap(bad)
    assert parse_trimap_variant("released") == TrimapVariant()
    assert parse_trimap_variant("10").label == "band10"
    for bad in ("-3", "wide", "2.5"):
        with pytest.raises(Exception, match=bad):
            parse_trimap_variant(bad)


def test_ratio_caps_follow_each_images_padded_token_count():
    """A ratio gives each image ``int(ratio * tokens)`` with the tokens of its padded size (both
    sides grow to the next multiple of 32 above when either is not a multiple: 248x292 ->
    256x320 px -> 16 x 20 tokens of 16 px)."""
    model = model_spec(TINY_CONFIG, DEMO_CHECKPOINT, "demo")
    test_set = DatasetSpec("demo", DEMO_DIR)
    items = cells.check_test_set(test_set)
    cell = Cell(model, test_set, TokenCap(0.3), TrimapVariant(), Path("x"), Path("y"))
    groups = cells._cap_groups(cell, RunOptions(), items)
    expected = {}
    for item in items:
        height, width = cv2.imread(str(item.image_path)).shape[:2]
        if height % 32 or width % 32:
            height, width = 32 * (height // 32 + 1), 32 * (width // 32 + 1)
        expected.setdefault(int(0.3 * (height // 16) * (width // 16)), []).append(item.name)
    assert {cap: [i.name for i in group] for cap, group in groups.items()} == expected
    absolute = Cell(model, test_set, TokenCap(64), TrimapVariant(), Path("x"), Path("y"))
    assert list(cells._cap_groups(absolute, RunOptions(), items)) == [64]


def test_the_inference_arguments_are_those_of_inference_py(small_set, tmp_path):
    """The grid drives predictor.runner with the namespace inference.py would parse: the same
    options (a new option of inference.py must be given here too)."""
    model = model_spec(TINY_CONFIG, DEMO_CHECKPOINT, "demo")
    test_set = DatasetSpec("small", small_set)
    items = cells.check_test_set(test_set)
    cell = Cell(model, test_set, TokenCap(4), TrimapVariant(), tmp_path, tmp_path)
    ours = cells._inference_args(cell, RunOptions(), items, [i.trimap_path for i in items], 4)
    parsed = inference.parse_args(
        ["--config-file", "c", "--checkpoint", "k", "--image", "a", "--trimap", "b"]
        + ["--output-dir", "o"]
    )
    assert sorted(vars(ours)) == sorted(vars(parsed))


def test_derived_trimaps_cover_the_fractional_alpha_and_a_band_around_it(small_set, tmp_path):
    width = 3
    model = model_spec(TINY_CONFIG, DEMO_CHECKPOINT, "demo")
    test_set = DatasetSpec("small", small_set)
    items = cells.check_test_set(test_set)
    cell = Cell(model, test_set, TokenCap(), TrimapVariant(width), tmp_path / "c", tmp_path)
    folder = cells._derived_trimaps(cell, items)
    assert folder == tmp_path / "band3"
    for item in items:
        alpha = cv2.imread(str(item.alpha_path), cv2.IMREAD_GRAYSCALE)
        trimap = cv2.imread(str(folder / f"{item.name}.png"), cv2.IMREAD_GRAYSCALE)
        fractional = (alpha > 0) & (alpha < 255)
        assert fractional.any() and (trimap[fractional] == 128).all()
        # A definite pixel keeps its level beyond the band and is unknown within it (the
        # distance to the nearest pixel that is not definite on its side; a pixel of slack for
        # the discrete elliptic kernel).
        for definite, level in ((alpha == 255, 255), (alpha == 0, 0)):
            distance = cv2.distanceTransform(
                definite.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE
            )
            assert (trimap[definite & (distance > width + 1)] == level).all()
            assert (trimap[definite & (distance <= width - 1)] == 128).all()
            assert (trimap[definite & (distance > width + 1)] == level).any()


def test_write_sweep_tables_from_results(tmp_path):
    """The table holds one row per finished cell, in grid order; unfinished cells are left out."""
    model = model_spec(TINY_CONFIG, DEMO_CHECKPOINT, "demo")
    test_set = DatasetSpec("small", tmp_path)
    grid = sweep_cells(
        model, test_set, [TokenCap(8), TokenCap(0.5)], [TrimapVariant(), TrimapVariant(4)], tmp_path
    )
    for i, cell in enumerate(grid[:3]):
        cell.folder.mkdir(parents=True)
        record = {
            "schema": cells.SCHEMA,
            "metrics": {m: i + 0.123456789 for m in METRICS},
            "num_images": 7,
            "peak_memory_bytes": (100 + i) * 2**20,
            "seconds_per_image": None if i == 2 else 0.5,
            "evaluation": {"pred_dir": "p", "label_dir": "l", "trimap_dir": "t", "region": "all"},
        }
        cell.result_path.write_text(json.dumps(record))
    rows = write_sweep_tables(grid, output_dir=tmp_path, title="t")
    assert [(r["cap"], r["trimap"]) for r in rows] == [
        ("8", "released"),
        ("8", "band4"),
        ("0.5", "released"),
    ]
    markdown = (tmp_path / "sweep.md").read_text().splitlines()
    assert markdown[2] == "| 8 | released | 0.1235 | 0.1235 | 0.1235 | 0.1235 | 7 | 100 | 0.5000 |"
    assert markdown[4].endswith("| 7 | 102 | - |")
    first = read_rows(tmp_path / "sweep.csv")[0]
    assert math.isclose(float(first["sad"]), 0.123456789) and first["eval_region"] == "all"
    assert (tmp_path / "sweep.png").stat().st_size > 0
