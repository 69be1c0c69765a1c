"""tools/benchmark.py: the JSON/markdown output of one real run; utils/benchmark.py: sizes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import REPO_ROOT
from tools import benchmark
from utils.benchmark import parse_size

# fvcore imports torch.jit.script, which this torch deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")

TINY_OVERRIDES = [
    "model.backbone.embed_dim=64",
    "model.backbone.num_heads=2",
    "model.decoder.in_chans=64",
]
RESULT_KEYS = {
    "model",
    "variant",
    "backend",
    "mode",
    "unknown",
    "size",
    "device",
    "device_name",
    "precision",
    "torch",
    "threads",
    "repeats",
    "warmup",
    "tokens",
    "max_number_token",
    "routed_tokens",
    "time_s",
    "memory_mib",
    "gflops",
    "decoder_work",
    "vs_fp32",
    "load_avg",
    "malloc_pinned",
    "status",
    "error",
}


def test_parse_size():
    assert parse_size("2048") == (2048, 2048)
    assert parse_size("4872x6017") == (4872, 6017)


@pytest.mark.slow
def test_tool_writes_json_and_markdown(tmp_path):
    out_json, out_md = tmp_path / "bench.json", tmp_path / "bench.md"
    command = [
        sys.executable,
        str(REPO_ROOT / "tools" / "benchmark.py"),
        "--sizes",
        "128",
        "--modes",
        "forward",
        "predictor",
        "--repeats",
        "1",
        "--json",
        str(out_json),
        "--markdown",
        str(out_md),
        "--override",
        *TINY_OVERRIDES,
    ]
    proc = subprocess.run(
        command, check=True, cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    report = json.loads(out_json.read_text())
    assert report["schema"] == benchmark.SCHEMA
    forward, predictor = report["results"]
    for result in (forward, predictor):
        assert result["gflops"]["total"] > 0 and result["decoder_work"]["head"]["boxes"] > 0
        assert set(result) == RESULT_KEYS
        assert result["status"] == "ok", result["error"]
        assert result["size"] == [128, 128] and result["tokens"] == 64
        assert result["max_number_token"] == 16  # --cap-ratio 0.25 of 8 x 8 tokens
        assert len(result["routed_tokens"]) == 4
        assert all(0 <= n <= 16 for n in result["routed_tokens"])
        assert set(result["time_s"]) == {"median", "runs", "backbone", "decoder", "cpu"}
        assert len(result["time_s"]["runs"]) == 1
        assert set(result["memory_mib"]) == {"peak", "before", "increment"}
        assert result["memory_mib"]["peak"] >= result["memory_mib"]["before"] > 0
    assert (forward["mode"], predictor["mode"]) == ("forward", "predictor")
    # the predictor skips the decoder blocks the clamp overwrites
    assert predictor["gflops"]["decoder"] < forward["gflops"]["decoder"]
    assert predictor["gflops"]["backbone"] == forward["gflops"]["backbone"]
    # Each row is printed once, as its measurement ends, under one header.
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| S |")]
    assert len(rows) == 2 and proc.stdout.count("| model |") == 1
    assert out_md.read_text().splitlines()[2:] == rows


@pytest.mark.slow
def test_onnxruntime_predictor_rows_with_the_stage_split_and_gflop_rates(tmp_path):
    """``--modes predictor --backends onnxruntime`` measures the onnxruntime predictor (it
    measured nothing before); ``--profile`` adds GFLOP/s per part to the PyTorch rows."""
    out_json = tmp_path / "bench.json"
    command = [sys.executable, str(REPO_ROOT / "tools" / "benchmark.py"), "--sizes", "96"]
    command += ["--modes", "predictor", "--backends", "torch", "onnxruntime", "--repeats", "1"]
    command += ["--warmup", "0", "--profile", "--json", str(out_json), "--override"]
    subprocess.run(
        [*command, *TINY_OVERRIDES], check=True, cwd=tmp_path, capture_output=True, timeout=900
    )
    torch_row, onnx_row = json.loads(out_json.read_text())["results"]
    assert (torch_row["backend"], onnx_row["backend"]) == ("torch", "onnxruntime")
    for row in (torch_row, onnx_row):
        assert row["status"] == "ok", row["error"]
        assert row["mode"] == "predictor" and row["time_s"]["backbone"] > 0
        assert row["time_s"]["decoder"] > 0
    rates = torch_row["profile_gflop_per_s"]
    assert {"backbone.mlp", "backbone.window_attention", "decoder.fusion0"} <= set(rates)
    assert all(rate > 0 for rate in rates.values())


def test_onnxruntime_needs_the_predictor_mode():
    with pytest.raises(SystemExit) as raised:
        benchmark.main(["--modes", "forward", "--backends", "onnxruntime"])
    assert raised.value.code == 2


_FAKE_HARNESS = """import argparse, json, sys
import cv2, numpy as np
ap = argparse.ArgumentParser()
for name in ("--impl", "--size", "--unknown", "--cap", "--out", "--weights"):
    ap.add_argument(name)
a = ap.parse_args()
alpha = np.zeros((4, 4), np.uint8)
if a.impl == "project":
    alpha[0, 0] = 1
    assert open(a.weights).read() == "weights"
else:
    open(a.weights, "w").write("weights")
cv2.imwrite(a.out, alpha)
wall = {"official": 10.0, "project": 2.5}[a.impl]
print("RESULT " + json.dumps({"impl": a.impl, "wall_s": wall, "peak_rss_mib": 100, "status": "ok"}))
"""


def test_official_pair_runs_both_sides_with_the_same_weights(tmp_path, monkeypatch):
    from utils import benchmark as bench

    harness, tree = tmp_path / "harness", tmp_path / "official"
    harness.mkdir()
    (harness / "perf_realistic.py").write_text(_FAKE_HARNESS)
    (tree / "venv" / "bin").mkdir(parents=True)
    (tree / "venv" / "bin" / "python").symlink_to(sys.executable)
    monkeypatch.setattr(bench, "OFFICIAL_BENCH", harness)
    pair = bench.run_official_pair(
        tree, (64, 96), 0.1, 300, str(tmp_path / "w.pth"), tmp_path, timeout=120
    )
    assert pair["official"]["status"] == pair["project"]["status"] == "ok"
    assert pair["ratio"] == 0.25 and pair["alpha_pixels_differing"] == 1
    assert "| 64x96 | 10 % | 300 | 10.00 | 100 | 2.50 | 100 | 0.25 | 1 |" in bench.official_table(
        [pair]
    )
