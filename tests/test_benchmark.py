"""tools/benchmark.py: inputs, FLOP counting against whole-forward traces, and the JSON/markdown
output of one real run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO_ROOT, build_tiny_mematte
from torch import nn

from tools import benchmark

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
    assert benchmark.parse_size("2048") == (2048, 2048)
    assert benchmark.parse_size("4872x6017") == (4872, 6017)


@pytest.mark.parametrize("unknown", [0.05, 0.1, 0.3])
def test_inputs_are_seeded_with_an_unknown_band_of_the_requested_share(unknown):
    batch = benchmark.make_inputs(300, 420, seed=3, unknown=unknown)
    assert batch["image"].shape == (1, 3, 300, 420)
    assert batch["trimap"].shape == (1, 1, 300, 420)
    assert batch["image"].min() >= 0 and batch["image"].max() <= 1
    assert set(batch["trimap"].unique().tolist()) == {0.0, 0.5, 1.0}
    band = batch["trimap"] == 0.5
    assert band.float().mean().item() == pytest.approx(unknown, rel=0.1)
    # one band along the subject's edge: between the foreground and the background everywhere
    inside = (batch["trimap"] == 1).nonzero()[:, 2:].float().mean(dim=0)
    assert torch.allclose(inside, torch.tensor([150.0, 210.0]), atol=15)
    again = benchmark.make_inputs(300, 420, seed=3, unknown=unknown)
    assert torch.equal(batch["image"], again["image"])
    assert torch.equal(batch["trimap"], again["trimap"])


class _SDPA(nn.Module):
    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v)


def test_sdpa_flops_are_counted():
    q = torch.randn(2, 3, 10, 8)
    k = torch.randn(2, 3, 12, 8)
    v = torch.randn(2, 3, 12, 5)
    gflops = benchmark._gflops(_SDPA(), (q, k, v))
    assert gflops * 1e9 == pytest.approx(2 * 3 * 10 * 12 * (8 + 5))


class _WholeForward(nn.Module):
    """The inference forward (patch decoder on) with tensors in and out, for one fvcore trace."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image, trimap):
        return self.model({"image": image, "trimap": trimap}, patch_decoder=True)["phas"]


def test_count_gflops_equals_one_trace_of_the_whole_forward():
    model = build_tiny_mematte().eval()
    model.backbone.max_number_token = 3
    # 1600 px wide: four decoder tiles in a row, the two middle ones of the same shape and
    # region, which count_gflops traces once and counts twice.
    batch = benchmark.make_inputs(64, 1600)
    flops = benchmark.count_gflops(model, batch)
    with torch.no_grad():
        whole = benchmark._gflops(_WholeForward(model), (batch["image"], batch["trimap"]))
    assert flops["total"] == pytest.approx(whole, rel=1e-6)
    assert flops["backbone"] > 0 and flops["decoder"] > 0


class _Features(nn.Module):
    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, images):
        return self.backbone(images).features


def test_module_by_module_backbone_count_equals_one_whole_trace():
    model = build_tiny_mematte().eval()
    model.backbone.max_number_token = 5
    with torch.no_grad():
        images, _ = model.preprocess(benchmark.make_inputs(96, 160))
        reference = model.backbone(images).features
        whole = benchmark._gflops(_Features(model.backbone), (images,))
        gflops, features = benchmark.backbone_gflops(model.backbone, images)
    assert gflops == pytest.approx(whole, rel=1e-3)
    assert torch.equal(features, reference)
    assert "forward" not in vars(model.backbone.blocks[0])  # the modules are restored


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
