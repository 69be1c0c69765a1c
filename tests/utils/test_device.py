"""utils/device.py: device resolution and autocast precisions (bf16 inference on the CPU)."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import build_tiny_mematte, make_batch
from utils.device import autocast, resolve_device

# bf16 keeps 8 mantissa bits: alpha of the tiny random model moves by a few 1e-2 at most.
BF16_ALPHA_ATOL = 0.1


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            resolve_device("cuda")


def test_autocast_choices():
    with autocast("cpu", "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast("cpu", "bf16"):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="CUDA"):
        autocast("cpu", "fp16")
    with pytest.raises(ValueError, match="unknown precision"):
        autocast("cpu", "fp8")


def test_bf16_inference_is_close_and_float32():
    model = build_tiny_mematte().eval()
    batch = make_batch(1, 96, 128, seed=2)
    with torch.inference_mode():
        reference = model(batch)
        with autocast("cpu", "bf16"):
            out = model(batch)
    assert out["phas"].dtype == torch.float32
    assert out["phas"].min() >= 0 and out["phas"].max() <= 1
    assert (out["phas"] - reference["phas"]).abs().max() < BF16_ALPHA_ATOL


def test_bf16_uses_bf16_matmuls():
    model = build_tiny_mematte().eval()
    seen = set()
    hook = model.backbone.blocks[1].mlp.fc1.register_forward_hook(
        lambda m, args, out: seen.add(out.dtype)
    )
    with torch.inference_mode(), autocast("cpu", "bf16"):
        model(make_batch(1, 64, 64))
    hook.remove()
    assert seen == {torch.bfloat16}
