"""inference.py sharded over two CPU processes, spawned (--num-gpus 2) or under torchrun: the
PNGs of one process, every item done once across the ranks, failures on any rank in the exit
status and the report."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import REPO_ROOT

import inference

TINY_CONFIG = REPO_ROOT / "configs" / "tiny" / "MEMatte_tiny_synthetic.py"
DEMO_CHECKPOINT = REPO_ROOT / "pretrained" / "demo" / "MEMatte_tiny_synthetic.pth"
DEMO = REPO_ROOT / "demo"
NAMES = ["test_000", "test_001", "test_002", "test_003"]
SPELLINGS = {
    "spawned": [sys.executable, "inference.py", "--num-gpus", "2"],
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    + ["--nproc-per-node", "2", "inference.py"],
}
TIMEOUT_S = 300

pytestmark = pytest.mark.slow


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
    assert inference.main(_arguments(DEMO, root / "out", root / "report.json")) == 0
    return _pngs(root / "out")


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_two_processes_write_the_pngs_of_one_each_item_once(one_process, tmp_path, spelling):
    out, report = tmp_path / "out", tmp_path / "report.json"
    completed = _sharded(spelling, DEMO, out, report, workers=1)  # with a loader process
    assert completed.returncode == 0, completed.stderr[-3000:]
    pngs = _pngs(out)
    assert sorted(pngs) == NAMES
    for name in NAMES:
        assert np.array_equal(pngs[name], one_process[name]), name
    assert all((out / "routing" / f"{name}.jpg").is_file() for name in NAMES)
    record = json.loads(report.read_text())
    assert record["done"] == len(NAMES) and record["exit_code"] == 0
    ranks = record["ranks"]
    assert [rank["rank"] for rank in ranks] == [0, 1]
    shares = [set(rank["done_items"]) for rank in ranks]
    assert all(shares) and not shares[0] & shares[1] and shares[0] | shares[1] == set(NAMES)
    assert sum(rank["done"] for rank in ranks) == record["done"]

    if spelling != "spawned":
        return
    again = _sharded(spelling, DEMO, out, report)  # resume: everything is there
    assert again.returncode == 0
    record = json.loads(report.read_text())
    assert record["done"] == 0 and record["skipped"] == len(NAMES)
    assert "--overwrite" in again.stderr


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_a_failure_on_one_rank_fails_the_run(tmp_path, spelling):
    data = tmp_path / "data"
    shutil.copytree(DEMO, data)
    (data / "merged" / "test_001.png").write_bytes(b"corrupt")  # the second item: rank 1's
    out, report = tmp_path / "out", tmp_path / "report.json"
    completed = _sharded(spelling, data, out, report)
    assert completed.returncode == 1, completed.stderr[-3000:]
    record = json.loads(report.read_text())
    assert record["done"] == 3 and record["exit_code"] == 1
    (failure,) = record["failed"]
    assert failure["path"].endswith("test_001.png") and record["ranks"][1]["failed"] == [failure]
