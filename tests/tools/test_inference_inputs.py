"""inference.py against inputs that went wrong before (issue 22): output locations over the inputs,
every format of a test-set folder, decoder bombs and --max-pixels, a report that must describe the
run that just ended, long names, corrupt ONNX files, tall images with routing pictures and extra
outputs that fail."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

import inference
from data.image_io import IMAGE_EXTENSIONS
from predictor import runner
from tests.helpers import DEMO_CHECKPOINT, DEMO_DIR, DEMO_NAMES, REPO_ROOT, TINY_CONFIG
from tests.image_files import png_bomb, tall_image_and_trimap, write_picture

MIB = 2**20
TIMEOUT_S = 300


def run_cli(*extra: str) -> int:
    """``inference.py`` on the demo model, on the CPU, in this process."""
    command = ["--config-file", str(TINY_CONFIG), "--checkpoint", str(DEMO_CHECKPOINT)]
    return inference.main([*command, "--device", "cpu", "--workers", "0", *extra])


def errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def digests(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative name -> SHA-256): what a run may not change."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture
def data(tmp_path) -> Path:
    """A copy of the demo test set (Composition-1k layout)."""
    shutil.copytree(DEMO_DIR, tmp_path / "data")
    return tmp_path / "data"


# --- output locations over the inputs -------------------------------------------------------------


def _folder_case(case: str, data: Path) -> tuple[list[str], Path, str]:
    """Arguments of a --data-dir run whose output location overlaps an input, the output
    location and the input the message must name."""
    link = data.parent / "link"
    if case == "link":
        link.symlink_to(data / "trimaps", target_is_directory=True)
    output, named = {
        "trimaps": (data / "trimaps", data / "trimaps"),
        "merged": (data / "merged", data / "merged"),
        "inside merged": (data / "merged" / "out", data / "merged"),
        "the data folder": (data, data / "merged"),
        "an alpha folder to be": (data / "alpha", data / "alpha"),
        "link": (link, data / "trimaps"),
    }[case]
    return ["--data-dir", str(data), "--output-dir", str(output)], output, str(named)


@pytest.mark.parametrize(
    "case",
    ["trimaps", "merged", "inside merged", "the data folder", "an alpha folder to be", "link"],
)
@pytest.mark.parametrize("overwrite", [False, True])
def test_an_output_folder_over_a_test_sets_folders_is_refused(data, caplog, case, overwrite):
    before = digests(data)
    arguments, output, named = _folder_case(case, data)
    extra = ["--overwrite"] if overwrite else []
    assert run_cli(*arguments, *extra, "--save-routing") == 2
    assert digests(data) == before  # nothing written, nothing replaced
    (message,) = errors(caplog)
    assert str(output) in message and named in message
    assert not (data / "merged" / "out").exists() and not (data / "alpha").exists()


def _files_case(case: str, tmp_path: Path) -> tuple[list[str], Path]:
    """Arguments of an --image run whose output location holds or contains an input file."""
    photos, guides, models = tmp_path / "photos", tmp_path / "guides", tmp_path / "models"
    for folder in (photos, guides, models):
        folder.mkdir()
    image = shutil.copy(DEMO_DIR / "merged" / "test_000.png", photos / "cat.png")
    trimap = shutil.copy(DEMO_DIR / "trimaps" / "test_000.png", guides / "cat.png")
    mask = shutil.copy(DEMO_DIR / "alpha_copy" / "test_000.png", guides / "cat_mask.png")
    checkpoint = shutil.copy(DEMO_CHECKPOINT, models / "model.pth")
    with_trimap = ["--image", str(image), "--trimap", str(trimap)]
    with_mask = ["--image", str(image), "--mask", str(mask), "--unknown-width", "5"]
    return {
        "the image's folder": (with_trimap, photos),
        "the trimap's folder": (with_trimap, guides),
        "the mask's folder": (with_mask, guides),
        "a folder above the image": (with_trimap, tmp_path),
        "the checkpoint's folder": (["--checkpoint", str(checkpoint), *with_trimap], models),
    }[case]


@pytest.mark.parametrize(
    "case",
    [
        "the image's folder",
        "the trimap's folder",
        "the mask's folder",
        "a folder above the image",
        "the checkpoint's folder",
    ],
)
def test_an_output_folder_holding_an_input_file_is_refused(tmp_path, caplog, case):
    arguments, output = _files_case(case, tmp_path)
    before = digests(tmp_path)
    arguments += ["--output-dir", str(output), "--overwrite", "--save-rgba"]
    assert run_cli(*arguments) == 2
    assert digests(tmp_path) == before
    (message,) = errors(caplog)
    assert str(output) in message and "input file" in message


def test_a_report_over_an_input_file_is_refused(data, tmp_path, caplog):
    before = digests(data)
    trimap = data / "trimaps" / "test_000.png"
    arguments = ["--data-dir", str(data), "--output-dir", str(tmp_path / "out")]
    assert run_cli(*arguments, "--report", str(trimap)) == 2
    assert digests(data) == before and not (tmp_path / "out").exists()
    (message,) = errors(caplog)
    assert str(trimap) in message and "--report" in message


# --- every format of a test-set folder, and the files it does not read ----------------------------


@pytest.mark.slow
def test_format_sweep_through_inference(tmp_path):
    """Every readable format gets its alpha; every file that is not read is a reported failure
    (summary, report, exit status)."""
    data = tmp_path / "data"
    (data / "merged").mkdir(parents=True)
    (data / "trimaps").mkdir()
    trimap = cv2.imread(str(DEMO_DIR / "trimaps" / "test_000.png"), cv2.IMREAD_UNCHANGED)
    image = cv2.imread(str(DEMO_DIR / "merged" / "test_000.png"))[:, :, ::-1]  # RGB
    stems = []
    for suffix in IMAGE_EXTENSIONS:
        stems.append(suffix[1:])
        write_picture(data / "merged" / f"{suffix[1:]}{suffix}", np.ascontiguousarray(image))
        cv2.imwrite(str(data / "trimaps" / f"{suffix[1:]}.png"), trimap)
    not_read = ["radiance.hdr", "notes.txt", "photo.heic"]
    cv2.imwrite(str(data / "merged" / "radiance.hdr"), image.astype(np.float32) / 255)
    (data / "merged" / "notes.txt").write_text("not an image")
    (data / "merged" / "photo.heic").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(64))
    (data / "trimaps" / "readme.md").write_text("trimaps")
    not_read.append("readme.md")
    out, report = tmp_path / "out", tmp_path / "report.json"
    assert run_cli("--data-dir", str(data), "--output-dir", str(out), "--report", str(report)) == 1
    assert sorted(p.stem for p in out.glob("*.png")) == sorted(stems)
    record = json.loads(report.read_text())
    assert record["done"] == len(stems) and record["exit_code"] == 1 and record["complete"]
    failed = {Path(entry["path"]).name: entry["reason"] for entry in record["failed"]}
    assert sorted(failed) == sorted(not_read)
    assert "format .hdr is not read" in failed["radiance.hdr"]


# --- decoder bombs and --max-pixels ---------------------------------------------------------------


PEAK_RSS_SCRIPT = """
import resource, sys
sys.path.insert(0, {root!r})
import inference
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
code = inference.main({arguments!r})
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print("RESULT", code, before * 1024, after * 1024)
"""


@pytest.mark.slow
def test_a_png_bomb_is_refused_before_decoding_with_memory_kept_low(data, tmp_path):
    """A 100 KB PNG declaring 10000 x 10000 px (above the default limit, below the decoders'
    ceiling) is reported and skipped, the other items done; the run's peak RSS grows by less
    than the bomb's RGB levels alone would take."""
    side = 10_000
    png_bomb(data / "merged" / "bomb.png", side, side)
    shutil.copy(data / "trimaps" / "test_000.png", data / "trimaps" / "bomb.png")
    out, report = tmp_path / "out", tmp_path / "report.json"
    arguments = ["--config-file", str(TINY_CONFIG), "--checkpoint", str(DEMO_CHECKPOINT)]
    arguments += ["--data-dir", str(data), "--output-dir", str(out), "--report", str(report)]
    arguments += ["--device", "cpu", "--workers", "0"]
    script = PEAK_RSS_SCRIPT.format(root=str(REPO_ROOT), arguments=arguments)
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=TIMEOUT_S
    )
    line = next(x for x in completed.stdout.splitlines() if x.startswith("RESULT"))
    code, before, after = map(int, line.split()[1:])
    assert code == 1, completed.stderr[-3000:]
    assert after - before < 3 * side * side  # decoding alone: 100 MB gray, 300 MB as RGB
    record = json.loads(report.read_text())
    assert record["done"] == len(DEMO_NAMES)
    ((failure),) = record["failed"]
    assert failure["path"] == str(data / "merged" / "bomb.png")
    assert "10000x10000" in failure["reason"] and "--max-pixels" in failure["reason"]


@pytest.mark.slow
def test_max_pixels_refuses_larger_images_from_their_headers(data, tmp_path, caplog, monkeypatch):
    # test_000 is 248 x 292 = 72416 px, test_001 282 x 285 = 80370 px.
    out = tmp_path / "out"
    arguments = ["--data-dir", str(data), "--output-dir", str(out), "--max-pixels", "75000"]
    assert run_cli(*arguments) == 1
    assert (out / "test_000.png").is_file() and not (out / "test_001.png").exists()
    refusal = next(e for e in errors(caplog) if "test_001.png" in e)
    assert "282x285" in refusal and "--max-pixels" in refusal
    assert run_cli("--data-dir", str(data), "--output-dir", str(out), "--max-pixels", "80370") == 0


def test_max_pixels_above_the_decoders_ceiling_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli("--data-dir", str(DEMO_DIR), "--output-dir", str(tmp_path), "--max-pixels", "1e12")
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        run_cli(
            "--data-dir", str(DEMO_DIR), "--output-dir", str(tmp_path), "--max-pixels", str(2**40)
        )
    assert "ceiling" in capsys.readouterr().err


# --- the report describes the run that just ended -------------------------------------------------


def _previous_report(path: Path) -> None:
    path.write_text(json.dumps({"complete": True, "exit_code": 0, "done": 4}))


def test_a_run_refused_at_setup_leaves_no_earlier_report(tmp_path, caplog):
    report = tmp_path / "report.json"
    _previous_report(report)
    arguments = ["--data-dir", str(tmp_path / "missing"), "--output-dir", str(tmp_path / "out")]
    assert run_cli(*arguments, "--report", str(report)) == 2
    assert not report.exists()


def test_a_setup_error_in_the_processes_is_the_report(tmp_path):
    report, text = tmp_path / "report.json", tmp_path / "notes.pth"
    _previous_report(report)
    text.write_text("these are not weights\n")
    command = ["--config-file", str(TINY_CONFIG), "--checkpoint", str(text), "--device", "cpu"]
    command += ["--data-dir", str(DEMO_DIR), "--output-dir", str(tmp_path / "out")]
    assert inference.main([*command, "--workers", "0", "--report", str(report)]) == 2
    record = json.loads(report.read_text())
    assert record["complete"] is False and record["exit_code"] == 2
    assert "notes.pth" in record["error"]


def test_a_process_that_dies_is_the_report(tmp_path, monkeypatch):
    report = tmp_path / "report.json"
    _previous_report(report)

    def died(*args, **kwargs):
        raise RuntimeError("process 1 terminated with signal SIGKILL")

    monkeypatch.setattr(runner, "launch", died)
    arguments = ["--data-dir", str(DEMO_DIR), "--output-dir", str(tmp_path / "out")]
    assert run_cli(*arguments, "--report", str(report)) == 1
    record = json.loads(report.read_text())
    assert record["complete"] is False and record["exit_code"] == 1
    assert "SIGKILL" in record["error"]


def _rank_processes(launcher: int) -> list[int]:
    """The inference processes spawned by ``launcher`` (multiprocessing's spawn children)."""
    children = Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split()
    ranks = []
    for child in map(int, children):
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"spawn_main" in command:
            ranks.append(child)
    return ranks


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc")
def test_a_killed_rank_leaves_an_incomplete_report_not_the_previous_one(tmp_path):
    report, out = tmp_path / "report.json", tmp_path / "out"
    _previous_report(report)
    command = [sys.executable, "inference.py", "--num-gpus", "2", "--device", "cpu"]
    command += ["--config-file", str(TINY_CONFIG), "--checkpoint", str(DEMO_CHECKPOINT)]
    command += ["--data-dir", str(DEMO_DIR), "--output-dir", str(out), "--report", str(report)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen(
        [*command, "--workers", "0"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + TIMEOUT_S
    ranks: list[int] = []
    while len(ranks) < 2 and launcher.poll() is None and time.monotonic() < deadline:
        ranks = _rank_processes(launcher.pid)
        time.sleep(0.05)
    assert len(ranks) == 2, "the two inference processes did not start"
    os.kill(ranks[1], signal.SIGKILL)
    _, stderr = launcher.communicate(timeout=TIMEOUT_S)
    assert launcher.returncode == 1, stderr[-3000:]
    record = json.loads(report.read_text())
    assert record["complete"] is False and record["exit_code"] == 1


# --- long names, tall images, extras that fail, corrupt graphs ------------------------------------


def test_a_long_image_name_is_written(tmp_path):
    """A 239-byte stem: the output names fit NAME_MAX, so do their temporary files."""
    stem = "a" * 239
    image = shutil.copy(DEMO_DIR / "merged" / "test_000.png", tmp_path / f"{stem}.png")
    trimap = shutil.copy(DEMO_DIR / "trimaps" / "test_000.png", tmp_path / f"{stem}_t.png")
    out = tmp_path / "out"
    arguments = ["--image", str(image), "--trimap", str(trimap), "--output-dir", str(out)]
    assert run_cli(*arguments, "--save-routing", "--save-rgba") == 0
    assert (out / f"{stem}.png").is_file() and (out / "routing" / f"{stem}.jpg").is_file()
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == sorted(
        [f"{stem}.png", f"{stem}.jpg", f"{stem}.png"]
    )


def test_a_tall_narrow_image_gets_its_routing_picture_and_alpha(tmp_path):
    image, trimap, hw = tall_image_and_trimap(tmp_path)
    out = tmp_path / "out"
    arguments = ["--image", str(image), "--trimap", str(trimap), "--output-dir", str(out)]
    assert run_cli(*arguments, "--save-routing") == 0
    assert cv2.imread(str(out / "tall.png"), cv2.IMREAD_UNCHANGED).shape == hw
    assert cv2.imread(str(out / "routing" / "tall.jpg")) is not None


@pytest.mark.slow
def test_an_extra_output_that_fails_costs_neither_the_alpha_nor_the_other_extras(
    tmp_path, monkeypatch, caplog
):
    def broken(*args, **kwargs):
        raise ValueError("cannot draw this picture")

    monkeypatch.setattr(runner, "routing_figure", broken)
    out = tmp_path / "out"
    arguments = ["--data-dir", str(DEMO_DIR), "--output-dir", str(out), "--save-rgba"]
    assert run_cli(*arguments, "--save-routing") == 1
    for name in DEMO_NAMES:
        assert cv2.imread(str(out / f"{name}.png"), cv2.IMREAD_UNCHANGED) is not None
        assert (out / "rgba" / f"{name}.png").is_file()
        picture_path = out / "routing" / f"{name}.jpg"
        assert not picture_path.exists()
        assert any(str(picture_path) in e and "cannot draw" in e for e in errors(caplog))
    monkeypatch.undo()
    caplog.clear()
    caplog.set_level(logging.INFO)
    assert run_cli(*arguments, "--save-routing") == 0  # incomplete items are redone
    assert "done 4, skipped (already present) 0" in caplog.text
    assert all((out / "routing" / f"{name}.jpg").is_file() for name in DEMO_NAMES)


def _deployment_folder(folder: Path) -> dict[str, Path]:
    """A folder laid out as tools/export_onnx.py lays out a deployment: its manifest and one
    tiny graph per role with the inputs the runtime feeds (graph file by role)."""
    import onnx
    from onnx import TensorProto, helper

    from predictor.onnx_predictor import FORMAT, GRAPH_INPUTS, MANIFEST_FILE

    roles = {"embed": "embed", "blocks": "blocks", "fusion0": "fusion", "head": "head"}
    files = {}
    for role, kind in roles.items():
        inputs = [
            helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in GRAPH_INPUTS[kind]
        ]
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
        node = helper.make_node("Identity", [inputs[0].name], ["y"])
        files[role] = folder / f"{role}.onnx"
        onnx.save(helper.make_model(helper.make_graph([node], role, inputs, [y])), files[role])
    manifest = {"format": FORMAT, "embed": "embed.onnx", "blocks": "blocks.onnx"}
    manifest["decoder"] = {"fusion0": "fusion0.onnx", "head": "head.onnx"}
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    return files


@pytest.mark.parametrize(
    "content",
    ["a file", "empty", "text", "random", "another graph", "no manifest", "missing", "older"],
)
def test_a_bad_onnx_deployment_is_a_setup_error_before_any_folder(
    tmp_path, caplog, monkeypatch, content
):
    import onnx
    from onnx import TensorProto, helper

    folder = tmp_path / "model_onnx"
    folder.mkdir()
    graph_file = _deployment_folder(folder)["fusion0"]
    named = graph_file  # what the message must name
    if content == "a file":  # an export of the single-graph format
        named = tmp_path / "model.onnx"
        named.write_bytes(graph_file.read_bytes())
    elif content == "another graph":
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
        graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
        onnx.save(helper.make_model(graph), graph_file)
    elif content == "no manifest":
        named = folder
        (folder / "mematte.json").unlink()
    elif content == "missing":
        graph_file.unlink()
    elif content == "older":  # an export of the first folder format: features channels first
        named = folder / "mematte.json"
        manifest = json.loads(named.read_text())
        named.write_text(json.dumps({**manifest, "format": "mematte-onnx/1"}))
    else:
        payload = {"empty": b"", "text": b"not a graph\n", "random": os.urandom(4096)}[content]
        graph_file.write_bytes(payload)
    deployment = named if content == "a file" else folder
    monkeypatch.setattr(runner, "_create_folders", lambda _: pytest.fail("output folders made"))
    out = tmp_path / "new" / "out"
    command = ["--onnx", str(deployment), "--data-dir", str(DEMO_DIR), "--output-dir", str(out)]
    assert inference.main([*command, "--device", "cpu", "--workers", "0"]) == 2
    assert not (tmp_path / "new").exists()
    (message,) = errors(caplog)
    assert str(named) in message and "\n" not in message
    if content == "older":
        assert "export the model again" in message


def test_an_output_folder_inside_the_onnx_deployment_is_refused(tmp_path, caplog):
    folder = tmp_path / "model_onnx"
    folder.mkdir()
    _deployment_folder(folder)
    before = digests(folder)
    out = folder / "out"
    command = ["--onnx", str(folder), "--data-dir", str(DEMO_DIR), "--output-dir", str(out)]
    assert inference.main([*command, "--device", "cpu", "--workers", "0"]) == 2
    assert digests(folder) == before
    (message,) = errors(caplog)
    assert f"{out} is inside the input folder {folder}" in message
