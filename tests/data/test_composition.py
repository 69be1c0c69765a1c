"""tools/compose_dataset.py and data/composition*.py: a miniature Adobe-style release (foregrounds,
alphas, trimaps, backgrounds smaller and larger than the foregrounds, name lists) built in a
temporary folder, the builder's files against an independent implementation of Adobe's
composition procedure (PIL and numpy, written here), the checks that stop a build before it writes
anything, and the resume of a killed build."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from data.composition import blend, enlarged_size
from tests.helpers import REPO_ROOT
from tools import compose_dataset

TOOL = REPO_ROOT / "tools" / "compose_dataset.py"
OUTPUT_FOLDERS = ("merged", "alpha_copy", "trimaps", "fg", "bg")

# (file name, height, width) of the foregrounds; alphas and trimaps share the names.
FOREGROUNDS = (("boy_1.png", 40, 52), ("cat.jpg", 47, 33), ("net-2.png", 30, 61))
# (file name, height, width, mode): smaller in both sides, in one side, larger, equal; gray and
# colour JPEGs, an RGBA PNG.
BACKGROUNDS = (
    ("2008_000001.jpg", 20, 25, "RGB"),
    ("2008_000002.jpg", 64, 20, "RGB"),
    ("2008_000003.png", 90, 100, "RGBA"),
    ("2008_000004.jpg", 40, 52, "L"),
    ("2008_000005.jpg", 31, 17, "L"),
    ("2008_000006.png", 50, 70, "RGB"),
    ("2008_000007.jpg", 13, 80, "RGB"),
    ("2008_000008.jpg", 100, 9, "RGB"),
    ("2008_000009.png", 47, 33, "RGB"),
)
NUM_BGS = 3


def _smooth(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Random smooth uint8 content (JPEG-friendly)."""
    coarse = rng.random((4, 4, *shape[2:]))
    image = Image.fromarray((coarse * 255).astype(np.uint8).squeeze())
    return np.asarray(image.resize((shape[1], shape[0]), Image.Resampling.BILINEAR))


def _alpha(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Opaque core, transparent border, every level in between on a ramp and noise."""
    yy, xx = np.mgrid[:height, :width]
    distance = np.hypot(yy - height / 2, xx - width / 2) / (min(height, width) / 2)
    alpha = np.clip((1.2 - distance) * 255, 0, 255)
    alpha[: height // 4] = rng.integers(0, 256, (height // 4, width))
    return alpha.astype(np.uint8)


def _trimap(alpha: np.ndarray) -> np.ndarray:
    trimap = np.full(alpha.shape, 128, np.uint8)
    trimap[alpha == 0], trimap[alpha == 255] = 0, 255
    return trimap


def write_release(root: Path, seed: int = 0, num_bgs: int = NUM_BGS) -> dict[str, Path]:
    """A miniature release: fg/, alpha/, trimaps/ (per foreground), bg/, and the two lists.

    One alpha is stored as an RGB PNG with equal channels, one foreground as RGBA."""
    rng = np.random.default_rng(seed)
    paths = {name: root / name for name in ("fg", "alpha", "trimaps", "bg")}
    for folder in paths.values():
        folder.mkdir(parents=True)
    for i, (name, height, width) in enumerate(FOREGROUNDS):
        foreground = _smooth(rng, (height, width, 3))
        alpha = _alpha(rng, height, width)
        if name.endswith(".jpg"):
            Image.fromarray(foreground).save(paths["fg"] / name, quality=90)
            Image.fromarray(alpha).save(paths["alpha"] / name, quality=95)
        else:
            mode_fg = np.dstack([foreground, alpha]) if i == 0 else foreground  # RGBA
            Image.fromarray(mode_fg).save(paths["fg"] / name)
            stored = np.dstack([alpha] * 3) if i == 2 else alpha  # gray saved as RGB
            Image.fromarray(stored).save(paths["alpha"] / name)
        trimap_alpha = np.asarray(Image.open(paths["alpha"] / name).convert("L"))
        Image.fromarray(_trimap(trimap_alpha)).save(paths["trimaps"] / (Path(name).stem + ".png"))
    bg_names = []
    for k in range(len(FOREGROUNDS) * num_bgs):
        name, height, width, mode = BACKGROUNDS[k % len(BACKGROUNDS)]
        name = f"{Path(name).stem}_{k}{Path(name).suffix}"
        channels = {"RGB": (3,), "RGBA": (4,), "L": ()}[mode]
        image = Image.fromarray(_smooth(rng, (height, width, *channels)), mode)
        image.save(paths["bg"] / name, **({"quality": 85} if name.endswith(".jpg") else {}))
        bg_names.append(name)
    paths["fg_names"] = root / "fg_names.txt"
    paths["fg_names"].write_text("\n".join(name for name, _, _ in FOREGROUNDS) + "\n")
    paths["bg_names"] = root / "bg_names.txt"
    paths["bg_names"].write_text("\n".join(bg_names) + "\n")
    return paths


def reference_composites(
    release: dict[str, Path], num_bgs: int, resize: str = "opencv"
) -> dict[str, dict[str, np.ndarray]]:
    """The Composition-1k procedure, written independently: PIL reads (RGB, alpha's first
    channel), bicubic enlargement to ceil(side * ratio) (cv2.INTER_CUBIC as the float32 script
    the matting repositories use, or PIL's BICUBIC as Adobe's original), top-left crop, float32
    blend, truncation; the alpha and trimap of each composite copied from the foreground's (a
    JPEG's levels in a PNG)."""
    fg_names = release["fg_names"].read_text().split()
    bg_names = release["bg_names"].read_text().split()
    expected = {}
    for i, fg_name in enumerate(fg_names):
        fg = Image.open(release["fg"] / fg_name).convert("RGB")
        a = np.asarray(Image.open(release["alpha"] / fg_name).convert("RGB"))[:, :, 0]
        alpha_file = np.asarray(Image.open(release["alpha"] / fg_name))  # as stored
        trimap = np.asarray(Image.open(release["trimaps"] / (Path(fg_name).stem + ".png")))
        w, h = fg.size
        for k in range(num_bgs):
            bg = Image.open(release["bg"] / bg_names[i * num_bgs + k]).convert("RGB")
            bw, bh = bg.size
            ratio = max(w / bw, h / bh)
            size = (math.ceil(bw * ratio), math.ceil(bh * ratio))
            if ratio > 1 and resize == "pil":
                bg = bg.resize(size, Image.BICUBIC)
            elif ratio > 1:
                bgr = cv2.imread(str(release["bg"] / bg_names[i * num_bgs + k]), cv2.IMREAD_COLOR)
                bgr = cv2.resize(src=bgr, dsize=size, interpolation=cv2.INTER_CUBIC)
                bg = Image.fromarray(bgr[:, :, ::-1].copy())  # BGR -> RGB
            crop = np.asarray(bg.crop((0, 0, w, h)))
            alpha = np.zeros((h, w, 1), np.float32)
            alpha[:, :, 0] = a / 255.0
            fg_f, bg_f = np.asarray(fg, np.float32), crop.astype(np.float32)
            merged = (alpha * fg_f + (1 - alpha) * bg_f).astype(np.uint8)
            name = f"{fg_name[: fg_name.rindex('.')]}_{k}.png"
            expected[name] = {
                "merged": merged,
                "alpha_copy": alpha_file,
                "trimaps": trimap,
                "fg": np.asarray(fg),
                "bg": crop,
            }
    return expected


def compose_args(release: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "--fg-dir",
        str(release["fg"]),
        "--alpha-dir",
        str(release["alpha"]),
        "--trimap-dir",
        str(release["trimaps"]),
        "--fg-names",
        str(release["fg_names"]),
        "--bg-names",
        str(release["bg_names"]),
        "--bg-dir",
        str(release["bg"]),
        "--output-dir",
        str(out),
        *extra,
    ]


def decoded(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def assert_matches(out: Path, expected: dict[str, dict[str, np.ndarray]]) -> None:
    for folder in OUTPUT_FOLDERS:
        assert sorted(p.name for p in (out / folder).iterdir()) == sorted(expected), folder
    for name, files in expected.items():
        for folder, array in files.items():
            actual = decoded(out / folder / name)
            assert actual.shape == array.shape, (folder, name)
            np.testing.assert_array_equal(actual, array, err_msg=f"{folder}/{name}")


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> dict[str, Path]:
    return write_release(tmp_path_factory.mktemp("release"))


@pytest.mark.parametrize("resize", ["opencv", "pil"])
def test_the_builder_gives_adobes_composites(release, tmp_path, resize):
    """Every file of every composite, decoded, equals the independent implementation's,
    including backgrounds smaller than their foreground in one or both sides."""
    sizes = [(h, w) for _, h, w in FOREGROUNDS]
    smaller = [
        enlarged_size((bh, bw), sizes[k // NUM_BGS % len(sizes)])
        for k, (_, bh, bw, _) in enumerate(BACKGROUNDS)
    ]
    assert any(s is not None for s in smaller) and any(s is None for s in smaller)
    out = tmp_path / "out"
    extra = ["--num-bgs", str(NUM_BGS)] + (["--resize", resize] if resize != "opencv" else [])
    assert compose_dataset.main(compose_args(release, out, *extra)) == 0
    assert_matches(out, reference_composites(release, NUM_BGS, resize))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and len(manifest["composites"]) == len(FOREGROUNDS) * NUM_BGS
    first = manifest["composites"][0]
    assert (first["name"], first["foreground"], first["k"]) == ("boy_1_0.png", "boy_1.png", 0)
    for entry in manifest["composites"]:
        for relative, digest in entry["files"].items():
            assert hashlib.sha256((out / relative).read_bytes()).hexdigest() == digest


def test_the_composition_1k_preset_takes_20_backgrounds_and_the_release_layout(tmp_path):
    """The preset's release layout (Combined_Dataset/Test_set/...), 20 backgrounds per foreground
    taken in list order, and per-composite trimaps where the release has them."""
    flat = write_release(tmp_path / "flat", seed=1, num_bgs=20)
    root = tmp_path / "Combined_Dataset"
    images = root / "Test_set" / "Adobe-licensed images"
    images.mkdir(parents=True)
    for folder in ("fg", "alpha"):
        flat[folder].rename(images / folder)
    (images / "trimaps").mkdir()
    for trimap in flat["trimaps"].iterdir():  # one file per composite, as Adobe ships them
        for k in range(20):
            (images / "trimaps" / f"{trimap.stem}_{k}.png").write_bytes(trimap.read_bytes())
    flat["fg_names"].rename(root / "Test_set" / "test_fg_names.txt")
    flat["bg_names"].rename(root / "Test_set" / "test_bg_names.txt")
    out = tmp_path / "Composition-1k"
    argv = ["--preset", "composition-1k", "--release-dir", str(root), "--bg-dir", str(flat["bg"])]
    assert compose_dataset.main([*argv, "--output-dir", str(out), "--workers", "2"]) == 0
    release = {
        "fg": images / "fg",
        "alpha": images / "alpha",
        "trimaps": flat["trimaps"],
        "bg": flat["bg"],
        "fg_names": root / "Test_set" / "test_fg_names.txt",
        "bg_names": root / "Test_set" / "test_bg_names.txt",
    }
    expected = reference_composites(release, 20)
    assert len(expected) == len(FOREGROUNDS) * 20
    assert_matches(out, expected)


def test_blend_truncates_the_float32_mix():
    fg = np.array([[[200, 10, 255]]], np.uint8)
    bg = np.array([[[100, 20, 0]]], np.uint8)
    alpha = np.array([[77]], np.uint8)
    a = np.float32(77) / np.float32(255)
    expected = [
        int(a * np.float32(f) + (np.float32(1) - a) * np.float32(b))
        for f, b in zip((200, 10, 255), (100, 20, 0))
    ]
    assert blend(fg, alpha, bg)[0, 0].tolist() == expected
    assert blend(fg, np.array([[255]], np.uint8), bg)[0, 0].tolist() == [200, 10, 255]
    assert blend(fg, np.array([[0]], np.uint8), bg)[0, 0].tolist() == [100, 20, 0]


def test_enlarged_size_follows_the_larger_ratio():
    assert enlarged_size((50, 100), (40, 80)) is None
    assert enlarged_size((40, 80), (40, 80)) is None
    assert enlarged_size((20, 25), (40, 52)) == (math.ceil(20 * 52 / 25), math.ceil(25 * 52 / 25))
    assert enlarged_size((64, 20), (40, 52)) == (math.ceil(64 * 2.6), 52)


# --- checks before any work -------------------------------------------------------------------


def _break_missing_background(release: dict[str, Path]) -> Path:
    victim = release["bg"] / release["bg_names"].read_text().split()[4]
    victim.unlink()
    return victim


def _break_size(release: dict[str, Path]) -> Path:
    victim = release["alpha"] / "net-2.png"
    Image.open(victim).crop((0, 0, 20, 20)).save(victim)
    return victim


def _break_short_list(release: dict[str, Path]) -> Path:
    names = release["bg_names"].read_text().split()
    release["bg_names"].write_text("\n".join(names[:-1]) + "\n")
    return release["bg_names"]


def _break_missing_foreground(release: dict[str, Path]) -> Path:
    victim = release["fg"] / "cat.jpg"
    victim.unlink()
    return victim


def _break_truncated_trimap(release: dict[str, Path]) -> Path:
    victim = release["trimaps"] / "boy_1.png"
    victim.write_bytes(victim.read_bytes()[:-30])
    return victim


@pytest.mark.parametrize(
    "breaker",
    [
        _break_missing_background,
        _break_size,
        _break_short_list,
        _break_missing_foreground,
        _break_truncated_trimap,
    ],
)
def test_bad_data_stops_the_build_naming_the_file_before_anything_is_written(
    tmp_path, caplog, breaker
):
    release = write_release(tmp_path / "release")
    victim = breaker(release)
    out = tmp_path / "out"
    assert compose_dataset.main(compose_args(release, out, "--num-bgs", str(NUM_BGS))) == 1
    assert str(victim) in caplog.text
    assert not out.exists()


def test_usage_errors_exit_with_2(release, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        compose_dataset.main(compose_args(release, out))  # no --num-bgs, no preset
    assert exc.value.code == 2 and "--num-bgs" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        compose_dataset.main(["--release-dir", str(tmp_path), "--output-dir", str(out)])
    assert exc.value.code == 2
    argv = compose_args(release, out, "--num-bgs", "2")
    argv[argv.index("--bg-dir") + 1] = str(tmp_path / "nowhere")
    assert compose_dataset.main(argv) == 2
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "something.txt").write_text("not a build")
    assert compose_dataset.main(compose_args(release, tmp_path / "busy", "--num-bgs", "2")) == 2
    assert not out.exists()


def test_a_rerun_writes_nothing_and_other_parameters_are_refused(release, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    out = tmp_path / "out"
    argv = compose_args(release, out, "--num-bgs", "1", "--workers", "1")
    assert compose_dataset.main(argv) == 0
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    caplog.clear()
    assert compose_dataset.main(argv) == 0
    assert "written 0, already present 3" in caplog.text
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == stamps
    assert compose_dataset.main(compose_args(release, out, "--num-bgs", "2")) == 2
    assert "num_bgs" in caplog.text


def test_damaged_outputs_are_written_again(release, tmp_path):
    out = tmp_path / "out"
    argv = compose_args(release, out, "--num-bgs", "1", "--workers", "1")
    assert compose_dataset.main(argv) == 0
    merged = out / "merged" / "cat_0.png"
    good = merged.read_bytes()
    merged.write_bytes(good[: len(good) // 2])
    (out / "bg" / "boy_1_0.png").unlink()
    assert compose_dataset.main(argv) == 0
    assert merged.read_bytes() == good
    assert (out / "bg" / "boy_1_0.png").is_file()


def test_an_alpha_with_another_suffix_than_its_foreground_is_found(tmp_path):
    release = write_release(tmp_path / "release")
    jpeg_alpha = release["alpha"] / "cat.jpg"
    levels = np.asarray(Image.open(jpeg_alpha))
    Image.fromarray(levels).save(release["alpha"] / "cat.png")
    jpeg_alpha.unlink()
    out = tmp_path / "out"
    assert compose_dataset.main(compose_args(release, out, "--num-bgs", "1")) == 0
    np.testing.assert_array_equal(decoded(out / "alpha_copy" / "cat_0.png"), levels)


def test_dim_train_preset_searches_both_folders_and_coco_2017_names(tmp_path):
    """The DIM training set keeps foregrounds in two folders and lists COCO 2014 names; COCO
    2017's files lack the COCO_train2014_ prefix. No trimaps: none are written."""
    flat = write_release(tmp_path / "flat", seed=2, num_bgs=100)
    root = tmp_path / "Combined_Dataset" / "Training_set"
    names = [name for name, _, _ in FOREGROUNDS]
    for i, group in enumerate(("Adobe-licensed images", "Other")):
        for folder in ("fg", "alpha"):
            (root / group / folder).mkdir(parents=True)
            for name in names[i::2]:
                (flat[folder] / name).rename(root / group / folder / name)
    flat["fg_names"].rename(root / "training_fg_names.txt")
    bg_names = flat["bg_names"].read_text().split()
    (root / "training_bg_names.txt").write_text(
        "\n".join(f"COCO_train2014_{name}" for name in bg_names) + "\n"
    )
    out = tmp_path / "train"
    argv = ["--preset", "dim-train", "--release-dir", str(root.parent), "--bg-dir", str(flat["bg"])]
    assert compose_dataset.main([*argv, "--output-dir", str(out), "--num-bgs", "2"]) == 0
    assert not (out / "trimaps").exists()
    assert len(list((out / "merged").iterdir())) == len(FOREGROUNDS) * 2
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["composites"][0]["background"] == f"COCO_train2014_{bg_names[0]}"


# --- a killed build resumes ---------------------------------------------------------------------


@pytest.mark.slow
def test_a_killed_build_resumes_to_the_bytes_of_an_uninterrupted_one(tmp_path):
    release = write_release(tmp_path / "release", seed=3, num_bgs=40)
    command = [sys.executable, str(TOOL), "--num-bgs", "40", "--workers", "1"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run([*command, *compose_args(release, whole)], check=True, capture_output=True)
    proc = subprocess.Popen(
        [*command, *compose_args(release, killed)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        done = list((killed / "merged").glob("*.png")) if (killed / "merged").is_dir() else []
        if len(done) >= 5:
            break
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = len(list((killed / "merged").glob("*.png")))
    assert 0 < partial < len(FOREGROUNDS) * 40, "the build was not killed midway"
    assert not json.loads((killed / "manifest.json").read_text())["complete"]
    subprocess.run([*command, *compose_args(release, killed)], check=True, capture_output=True)
    files = sorted(p.relative_to(whole) for p in whole.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(killed) for p in killed.rglob("*") if p.is_file())
    for relative in files:
        assert (whole / relative).read_bytes() == (killed / relative).read_bytes(), relative


def test_each_preset_enlarges_with_its_scripts_filter(tmp_path):
    parser = compose_dataset.build_parser()
    for preset, resize in [("composition-1k", "opencv"), ("distinctions-646", "pil")]:
        argv = ["--preset", preset, "--release-dir", str(tmp_path), "--bg-dir", str(tmp_path)]
        args = parser.parse_args([*argv, "--output-dir", str(tmp_path / "out")])
        assert compose_dataset.spec_from_args(parser, args).resize == resize
        args = parser.parse_args([*argv, "--output-dir", str(tmp_path / "o"), "--resize", "pil"])
        assert compose_dataset.spec_from_args(parser, args).resize == "pil"
