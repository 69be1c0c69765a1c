"""tools/plot_benchmark.py: benchmark results to a time / memory against size plot."""

from __future__ import annotations

import json

import cv2
import pytest

from tools import plot_benchmark


def _result(variant: str, size: int, seconds: float, peak_mib: float, **extra) -> dict:
    return {
        "model": "S",
        "variant": variant,
        "backend": "torch",
        "mode": "predictor",
        "unknown": 0.1,
        "size": [size, size],
        "device": "cpu",
        "precision": "fp32",
        "time_s": {"median": seconds},
        "memory_mib": {"peak": peak_mib},
        "status": "ok",
        **extra,
    }


@pytest.fixture
def results_file(tmp_path):
    results = [
        _result("mematte", 2048, 6.0, 1300),
        _result("mematte", 512, 0.5, 900),
        _result("vitmatte", 512, 0.7, 950),
        _result("vitmatte", 2048, 30.0, 1800),
        _result("vitmatte", 4096, 0.0, 0.0, status="error"),  # left out
    ]
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"schema": plot_benchmark.SCHEMA, "results": results}))
    return path


def test_one_line_per_configuration_with_points_sorted_by_size(results_file):
    figure = plot_benchmark.plot(plot_benchmark.load_results([results_file]), "t")
    time_axis, memory_axis = figure.axes
    lines = {line.get_label(): line for line in time_axis.get_lines()}
    assert sorted(lines) == [
        "mematte S, predictor, 10% unknown, cpu fp32",
        "vitmatte S, predictor, 10% unknown, cpu fp32",
    ]
    mematte = lines["mematte S, predictor, 10% unknown, cpu fp32"]
    assert list(mematte.get_xdata()) == pytest.approx([0.262144, 4.194304])
    assert list(mematte.get_ydata()) == [0.5, 6.0]
    memory = {line.get_label(): list(line.get_ydata()) for line in memory_axis.get_lines()}
    assert memory["vitmatte S, predictor, 10% unknown, cpu fp32"] == pytest.approx(
        [950 / 1024, 1800 / 1024]
    )


def test_writes_a_png(results_file, tmp_path):
    out = tmp_path / "plot.png"
    assert plot_benchmark.main([str(results_file), "--output", str(out)]) == 0
    image = cv2.imread(str(out))
    assert image is not None and image.shape[:2] == (400, 1000)


@pytest.mark.parametrize("content", ["not json", json.dumps({"results": []})])
def test_a_file_that_is_not_a_result_file_is_named(tmp_path, caplog, content):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    assert plot_benchmark.main([str(bad), "--output", str(tmp_path / "p.png")]) == 2
    assert "bad.json" in caplog.text and not (tmp_path / "p.png").exists()
