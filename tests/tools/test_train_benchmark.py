"""tools/train_benchmark.py: the training batch it times, and one real measurement."""

from __future__ import annotations

import pytest
import torch

from tools import train_benchmark

# A small S model: the measurement path of the real tool, in seconds.
SMALL_OVERRIDES = [
    "model.backbone.embed_dim=64",
    "model.backbone.num_heads=2",
    "model.backbone.depth=4",
    "model.backbone.window_block_indexes=[0,2]",
    "model.backbone.residual_block_indexes=[1,3]",
]


def test_parse_case():
    assert train_benchmark.parse_case("1024:1") == (1024, 1)
    with pytest.raises(Exception, match="CROP:BATCH"):
        train_benchmark.parse_case("1024")


def test_batch_is_a_seeded_training_batch():
    batch = train_benchmark.make_batch(64, 2, seed=5)
    assert batch["image"].shape == batch["fg"].shape == batch["bg"].shape == (2, 3, 64, 64)
    assert batch["alpha"].shape == batch["trimap"].shape == (2, 1, 64, 64)
    assert set(batch["trimap"].unique().tolist()) == {0.0, 0.5, 1.0}
    again = train_benchmark.make_batch(64, 2, seed=5)
    assert all(torch.equal(batch[k], again[k]) for k in batch)


@pytest.mark.slow
@pytest.mark.parametrize("flags", ["off", "on"])
def test_worker_measures_a_training_step(flags):
    spec = {
        "model": "S",
        "crop": 64,
        "batch": 1,
        "flags": flags,
        "device": "cpu",
        "precision": "fp32",
        "steps": 1,
        "warmup": 0,
        "threads": None,
        "seed": 0,
        "overrides": SMALL_OVERRIDES,
    }
    result = train_benchmark.run_worker(spec)
    assert result["status"] == "ok"
    assert result["time_s"]["forward"] > 0 and result["time_s"]["backward"] > 0
    assert result["memory_mib"]["peak"] >= result["memory_mib"]["before"] > 0
    row = train_benchmark.markdown_table([result]).splitlines()[-1]
    assert row.startswith(f"| S | 64 | 1 | {flags} | cpu | fp32 |")
