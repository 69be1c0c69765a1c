"""tools/paper_table.py and evaluation/paper_table.py: the table on the demo model and the demo
data laid out as the paper's test sets, its numbers against tools/evaluate.py on the same
predictions, and the run's metadata."""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from evaluation.paper_table import TEST_SETS, paper_models, paper_test_sets
from tests.helpers import DEMO_CHECKPOINT, DEMO_DIR, DEMO_NAMES, REPO_ROOT, TINY_CONFIG
from tools import evaluate, paper_table
from utils.file_io import sha256_of_file

METRICS = ("sad", "mse", "grad", "conn")
# The demo test set's folders under the names of other layouts (data.readers).
LAYOUT_FOLDERS = {
    "distinctions-646": {"merged": "Image", "trimaps": "Trimap", "alpha_copy": "GT"},
    "aim-500": {"merged": "original", "trimaps": "trimap", "alpha_copy": "mask"},
}


def demo_as(layout: str, root: Path) -> Path:
    for source, target in LAYOUT_FOLDERS[layout].items():
        shutil.copytree(DEMO_DIR / source, root / target)
    return root


def table_argv(out: Path, *extra: str) -> list[str]:
    return [
        "--model",
        str(TINY_CONFIG),
        str(DEMO_CHECKPOINT),
        "--device",
        "cpu",
        "--workers",
        "0",
        "--eval-workers",
        "1",
        "--output-dir",
        str(out),
        *extra,
    ]


@pytest.mark.slow
def test_the_tables_numbers_equal_the_evaluators_on_the_same_predictions(tmp_path, capsys):
    d646 = demo_as("distinctions-646", tmp_path / "D646")
    aim = demo_as("aim-500", tmp_path / "AIM-500")
    out = tmp_path / "table"
    argv = table_argv(
        out,
        "--composition-1k",
        str(DEMO_DIR),
        "--distinctions-646",
        str(d646),
        "--aim-500",
        str(aim),
    )
    assert paper_table.main(argv) == 0
    report = json.loads((out / "table.json").read_text())
    with open(out / "table.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    markdown = (out / "table.md").read_text().splitlines()
    assert [(r["model"], r["test_set"]) for r in rows] == [
        ("MEMatte_tiny_synthetic", name)
        for name in ("composition-1k", "distinctions-646", "aim-500")
    ]
    for i, row in enumerate(rows):
        per_image = tmp_path / f"evaluate_{i}.csv"
        capsys.readouterr()
        folders = [Path(row[f"eval_{k}_dir"]) for k in ("pred", "label", "trimap")]
        assert evaluate.run(*folders, "unknown", 1, per_image) == 0
        printed = capsys.readouterr().out.strip().splitlines()[-1].split()
        assert [f"{float(row[m]):.4f}" for m in METRICS] == printed
        assert [f"{report['rows'][i][m]:.4f}" for m in METRICS] == printed
        assert markdown[2 + i].split(" | ")[2:6] == printed
        assert (folders[0].parent / "per_image.csv").read_bytes() == per_image.read_bytes()
        assert int(row["images"]) == len(DEMO_NAMES) and float(row["peak_memory_mib"]) > 0

    metadata = report["metadata"]
    [model] = metadata["models"]
    assert model["checkpoint_sha256"] == sha256_of_file(DEMO_CHECKPOINT)
    assert model["config_sha256"] == sha256_of_file(TINY_CONFIG)
    assert model["config_cap"] == 18500
    assert (metadata["device"], metadata["cap"], metadata["precision"]) == ("cpu", "config", "fp32")
    commit = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    if commit.returncode == 0:
        assert metadata["git_commit"] == commit.stdout.strip()
        assert f"`{metadata['git_commit']}`" in (out / "table.md").read_text()
    assert [t["layout"] for t in metadata["test_sets"]] == ["composition-1k", None, "aim-500"]


def test_a_table_needs_a_test_set(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        paper_table.main(table_argv(tmp_path / "out"))
    assert exc.value.code == 2 and "--composition-1k" in capsys.readouterr().err


def test_a_test_set_without_ground_truth_is_a_setup_error(tmp_path, caplog):
    aim = demo_as("aim-500", tmp_path / "AIM-500")
    shutil.rmtree(aim / "mask")
    assert paper_table.main(table_argv(tmp_path / "out", "--aim-500", str(aim))) == 2
    assert "no ground-truth alpha" in caplog.text and not (tmp_path / "out").exists()


def test_models_are_labelled_by_checkpoint_and_test_sets_kept_in_the_papers_order(tmp_path):
    second = tmp_path / "MEMatte_tiny_synthetic.pth"
    shutil.copy(DEMO_CHECKPOINT, second)
    pairs = [(str(TINY_CONFIG), str(DEMO_CHECKPOINT)), (str(TINY_CONFIG), str(second))]
    labels = [model.label for model in paper_models(pairs)]
    assert labels == ["MEMatte_tiny_synthetic", "MEMatte_tiny_synthetic_2"]
    args = argparse.Namespace(composition_1k=None, distinctions_646=None, aim_500="a", uhr_395="u")
    specs = paper_test_sets(args, "all")
    assert [(s.name, s.layout, s.region) for s in specs] == [
        ("aim-500", "aim-500", "all"),
        ("uhr-395", "uhrim", "all"),
    ]
    assert list(TEST_SETS) == ["composition-1k", "distinctions-646", "aim-500", "uhr-395"]
