"""tools/benchmark.py --segmenter: a tiny random SAM measured next to MEMatte, both calls (the
first prompt with the image embedding, the next prompt without), in the report's schema."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO_ROOT, SEGMENTER_SIZE, save_tiny_segmenter
from tests.tools.test_benchmark import RESULT_KEYS, TINY_OVERRIDES
from tools import benchmark

PATCH = 16  # px per token of the tiny SAM's encoder

# fvcore imports torch.jit.script, which this torch deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")


@pytest.mark.slow
def test_the_segmenters_two_calls_are_reported_next_to_mematte(tmp_path):
    segmenter = save_tiny_segmenter("sam", tmp_path / "sam")
    out_json, out_md = tmp_path / "bench.json", tmp_path / "bench.md"
    command = [sys.executable, str(REPO_ROOT / "tools" / "benchmark.py"), "--sizes", "160x200"]
    command += ["--repeats", "2", "--no-flops", "--segmenter", str(segmenter)]
    command += ["--json", str(out_json), "--markdown", str(out_md), "--override", *TINY_OVERRIDES]
    offline = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        command, check=True, cwd=tmp_path, capture_output=True, text=True, timeout=900, env=offline
    )
    mematte, first, following = json.loads(out_json.read_text())["results"]
    assert mematte["variant"] == "mematte" and mematte["status"] == "ok"
    for result, mode in ((first, "first prompt"), (following, "next prompt")):
        assert set(result) == RESULT_KEYS
        assert result["status"] == "ok", result["error"]
        assert (result["variant"], result["mode"]) == (benchmark.SEGMENTER, mode)
        assert result["model"] == str(segmenter) and result["size"] == [160, 200]
        assert result["tokens"] == (SEGMENTER_SIZE // PATCH) ** 2  # its own input size
        assert len(result["time_s"]["runs"]) == 2 and result["time_s"]["median"] > 0
        assert result["memory_mib"]["peak"] >= result["memory_mib"]["before"] > 0
    rows = [line for line in proc.stdout.splitlines() if "| segmenter |" in line]
    assert len(rows) == 2 and out_md.read_text().splitlines()[-2:] == rows
