"""tools/video_benchmark.py: each measurement runs and reports (tiny runs; no timing asserted),
and the pipeline's memory stays flat over a long clip, propagated by flow or by SAM 2 (slow)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import REPO_ROOT, save_tiny_video_segmenter

TOOL = REPO_ROOT / "tools" / "video_benchmark.py"


def _run(tmp_path, *argv: str) -> tuple[str, dict]:
    report = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, str(TOOL), *argv, "--json", str(report)],
        check=True,
        capture_output=True,
        text=True,
    )
    return result.stdout, json.loads(report.read_text())


@pytest.mark.slow
def test_speed_compares_the_pipeline_with_a_per_frame_loop(tmp_path):
    out, record = _run(tmp_path, "speed", "--size", "64x96", "--frames", "2")
    assert set(record["fps"]) == {"loop", "pipeline, --temporal off", "pipeline, --temporal flow"}
    assert all(value > 0 for value in record["fps"].values())
    assert "| loop |" in out


@pytest.mark.slow
def test_quality_and_propagation_report_each_mode(tmp_path):
    _, quality = _run(tmp_path, "quality", "--size", "64x96", "--frames", "3", "--clips", "1")
    assert set(quality) >= {"off", "flow"} and quality["off"]["dtssd"] > 0
    _, propagation = _run(
        tmp_path, "propagation", "--size", "64x96", "--frames", "3", "--clips", "1"
    )
    assert set(propagation) >= {"flow", "plain warp", "true mask"}


@pytest.mark.slow
def test_memory_stays_flat_over_a_long_clip(tmp_path):
    _, record = _run(tmp_path, "memory", "--model", "tiny", "--size", "72x96", "--frames", "300")
    assert set(record["rss_mib"]) == {"50", "299"}
    assert record["growth_mib"] < 64


@pytest.mark.slow
def test_memory_stays_flat_over_a_long_clip_propagated_by_sam2(tmp_path):
    folder = save_tiny_video_segmenter(tmp_path / "sam2_video")
    _, record = _run(
        tmp_path,
        "memory",
        "--model",
        "tiny",
        "--size",
        "72x96",
        "--frames",
        "300",
        "--segmenter",
        str(folder),
    )
    assert set(record["rss_mib"]) == {"50", "299"}
    assert record["growth_mib"] < 64
