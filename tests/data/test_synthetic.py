"""The synthetic dataset generator: layout, content, determinism, command line."""

import hashlib
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from data import DIMTrainDataset, MattingEvalDataset, detect_layout
from data.synthetic import make_benchmark_inputs
from data.synthetic_dataset import make_synthetic_dataset

REPO = Path(__file__).resolve().parents[2]
SMALL = {"num_fg": 3, "num_bg": 4, "num_test": 2, "size": 64}


def _digests(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    make_synthetic_dataset(tmp_path / "a", seed=7, **SMALL)
    make_synthetic_dataset(tmp_path / "b", seed=7, **SMALL)
    make_synthetic_dataset(tmp_path / "c", seed=8, **SMALL)
    first, again, other = (_digests(tmp_path / name) for name in "abc")
    assert first == again
    assert first.keys() == other.keys()
    assert all(first[name] != other[name] for name in first)


def test_layout_and_content(tmp_path: Path) -> None:
    folders = make_synthetic_dataset(tmp_path, seed=0, **SMALL)
    train, test = folders["train"], folders["test"]
    assert len(list((train / "fg").glob("*.png"))) == 3
    assert len(list((train / "alpha").glob("*.png"))) == 3
    assert len(list((train / "bg").glob("*.jpg"))) == 4
    for sub in ("merged", "trimaps", "alpha_copy"):
        assert len(list((test / sub).glob("*.png"))) == 2
    for path in (train / "alpha").glob("*.png"):
        alpha = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        fg = cv2.imread(str(train / "fg" / path.name))
        assert alpha.ndim == 2 and alpha.shape == fg.shape[:2]
        assert alpha.min() == 0 and alpha.max() == 255
        assert np.mean((alpha > 0) & (alpha < 255)) > 0.02  # soft edges, strands, veils
    for path in (test / "trimaps").glob("*.png"):
        trimap = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        alpha = cv2.imread(str(test / "alpha_copy" / path.name), cv2.IMREAD_UNCHANGED)
        assert set(np.unique(trimap).tolist()) == {0, 128, 255}
        assert np.all(trimap[(alpha > 0) & (alpha < 255)] == 128)  # unknown covers soft alpha


def test_output_feeds_the_data_pipeline(tmp_path: Path) -> None:
    folders = make_synthetic_dataset(tmp_path, seed=0, **SMALL)
    train = folders["train"]
    dataset = DIMTrainDataset(
        fg_dir=train / "fg", alpha_dir=train / "alpha", bg_dir=train / "bg", crop_size=32
    )
    assert len(dataset) == 4 and dataset[3]["image"].shape == (3, 32, 32)
    assert detect_layout(folders["test"]).name == "composition-1k"
    sample = MattingEvalDataset(folders["test"])[0]
    assert sample["image"].shape[1:] == sample["alpha"].shape[1:] == sample["trimap"].shape[1:]


def test_same_arguments_write_nothing_other_arguments_need_overwrite(tmp_path: Path) -> None:
    make_synthetic_dataset(tmp_path, seed=0, **SMALL)
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    stamps = [p.stat().st_mtime_ns for p in files]
    make_synthetic_dataset(tmp_path, seed=0, **SMALL)  # a recipe run twice
    assert [p.stat().st_mtime_ns for p in files] == stamps
    with pytest.raises(FileExistsError, match="overwrite"):
        make_synthetic_dataset(tmp_path, seed=1, **SMALL)
    (tmp_path / "train" / "bg" / "bg_000.jpg").write_bytes(b"edited")
    with pytest.raises(FileExistsError, match="overwrite"):
        make_synthetic_dataset(tmp_path, seed=0, **SMALL)
    make_synthetic_dataset(tmp_path, seed=0, **{**SMALL, "num_bg": 2}, overwrite=True)
    assert len(list((tmp_path / "train" / "bg").iterdir())) == 2


@pytest.mark.slow
def test_command_line(tmp_path: Path) -> None:
    command = [sys.executable, "tools/make_synthetic_dataset.py", "--out", str(tmp_path)]
    command += ["--seed", "3", "--num-fg", "2", "--num-bg", "2", "--num-test", "1", "--size", "48"]
    subprocess.run(command, cwd=REPO, check=True, capture_output=True)
    assert len(list((tmp_path / "test" / "merged").iterdir())) == 1
    again = subprocess.run(command, cwd=REPO, check=True, capture_output=True, text=True)
    assert "already holds this dataset" in again.stderr
    other = subprocess.run([*command[:-1], "64"], cwd=REPO, capture_output=True, text=True)
    assert other.returncode == 2 and other.stderr.count("\n") == 1 and "--overwrite" in other.stderr


@pytest.mark.parametrize("unknown", [0.05, 0.1, 0.3])
def test_inputs_are_seeded_with_an_unknown_band_of_the_requested_share(unknown):
    batch = make_benchmark_inputs(300, 420, seed=3, unknown=unknown)
    assert batch["image"].shape == (1, 3, 300, 420)
    assert batch["trimap"].shape == (1, 1, 300, 420)
    assert batch["image"].min() >= 0 and batch["image"].max() <= 1
    assert set(batch["trimap"].unique().tolist()) == {0.0, 0.5, 1.0}
    band = batch["trimap"] == 0.5
    assert band.float().mean().item() == pytest.approx(unknown, rel=0.1)
    # one band along the subject's edge: between the foreground and the background everywhere
    inside = (batch["trimap"] == 1).nonzero()[:, 2:].float().mean(dim=0)
    assert torch.allclose(inside, torch.tensor([150.0, 210.0]), atol=15)
    again = make_benchmark_inputs(300, 420, seed=3, unknown=unknown)
    assert torch.equal(batch["image"], again["image"])
    assert torch.equal(batch["trimap"], again["trimap"])
