"""tools/make_trimap.py: fixed and random widths (deterministic per file), bad masks, exit codes."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from data.trimap import trimap_from_mask
from tests.helpers import REPO_ROOT
from tools.make_trimap import image_width, main

ALPHAS = REPO_ROOT / "demo" / "alpha_copy"


def read(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def test_fixed_width(tmp_path):
    assert main(["--masks", str(ALPHAS), "--out", str(tmp_path / "out"), "--width", "7"]) == 0
    for mask in sorted(ALPHAS.iterdir()):
        expected = trimap_from_mask(read(mask), 7)
        assert np.array_equal(read(tmp_path / "out" / mask.name), expected), mask.name
    assert main(["--masks", str(ALPHAS), "--out", str(tmp_path / "frac"), "--width", "0.05"]) == 0
    mask = sorted(ALPHAS.iterdir())[0]
    assert np.array_equal(read(tmp_path / "frac" / mask.name), trimap_from_mask(read(mask), 0.05))


def test_random_widths_depend_on_the_seed_and_the_name_only(tmp_path):
    def run(masks: Path, out: str, seed: str) -> dict[str, np.ndarray]:
        command = ["--masks", str(masks), "--out", str(tmp_path / out)]
        assert main([*command, "--random-width", "3", "12", "--seed", seed]) == 0
        return {p.name: read(p) for p in sorted((tmp_path / out).iterdir())}

    first, again = run(ALPHAS, "a", "1"), run(ALPHAS, "b", "1")
    assert first.keys() == again.keys() and all(np.array_equal(first[n], again[n]) for n in first)
    subset = tmp_path / "subset"
    subset.mkdir()
    name = sorted(first)[2]
    shutil.copy(ALPHAS / name, subset / name)
    assert np.array_equal(run(subset, "c", "1")[name], first[name])  # order and subset free
    for name, trimap in first.items():
        width = image_width(Path(name).stem, 3, 12, 1)
        assert 3 <= width <= 12
        assert np.array_equal(trimap, trimap_from_mask(read(ALPHAS / name), width))
    widths = {seed: [image_width(Path(n).stem, 3, 12, seed) for n in first] for seed in (1, 2)}
    assert widths[1] != widths[2]


def test_a_bad_mask_fails_alone_and_usage_errors(tmp_path, caplog):
    masks = tmp_path / "masks"
    shutil.copytree(ALPHAS, masks)
    bad = sorted(masks.iterdir())[1]
    bad.write_bytes(b"not an image")
    out = tmp_path / "out"
    assert main(["--masks", str(masks), "--out", str(out), "--width", "5"]) == 1
    assert bad.name in caplog.text
    assert sorted(p.name for p in out.iterdir()) == sorted(
        p.name for p in masks.iterdir() if p != bad
    )
    assert main(["--masks", str(tmp_path / "none"), "--out", str(out), "--width", "5"]) == 2
    with pytest.raises(SystemExit) as info:
        main(["--masks", str(masks), "--out", str(out), "--width", "-2"])
    assert info.value.code == 2


@pytest.mark.slow
def test_command_line(tmp_path):
    command = [sys.executable, "tools/make_trimap.py", "--masks", str(ALPHAS)]
    command += ["--out", str(tmp_path / "t"), "--random-width", "4", "8", "--seed", "0"]
    completed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
    assert "width" in completed.stderr and len(list((tmp_path / "t").iterdir())) == 4
