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
    assert forward["gflops"]["total"] > 0 and predictor["gflops"] is None
    # Each row is printed once, as its measurement ends, under one header.
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| S |")]
    assert len(rows) == 2 and proc.stdout.count("| model |") == 1
    assert out_md.read_text().splitlines()[2:] == rows
