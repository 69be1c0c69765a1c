"""hubconf.py through torch.hub (source="local", no network): the entries, and predictors equal to
MattingPredictor's."""

from __future__ import annotations

import importlib.util
import logging

import numpy as np
import pytest
import torch

from predictor.matting import MattingPredictor
from predictor.weights import build_inference_model
from tests.helpers import (
    CONFIG_B,
    CONFIG_S,
    DEMO_CHECKPOINT,
    GOLDEN_DIR,
    REPO_ROOT,
    SMALL_MODEL_OVERRIDES,
    TINY_CONFIG,
)

DEMO_IMAGE = REPO_ROOT / "demo" / "merged" / "test_002.png"
DEMO_TRIMAP = REPO_ROOT / "demo" / "trimaps" / "test_002.png"
ENTRIES = {"mematte", "mematte_vits", "mematte_vitb", "mematte_vits_aim"}


def hub_load(entry: str, **kwargs):
    return torch.hub.load(str(REPO_ROOT), entry, source="local", **kwargs)


def test_the_entries_are_exactly_the_public_callables():
    """What ``torch.hub.list`` reports for a repository: hubconf's public callables."""
    spec = importlib.util.spec_from_file_location("hubconf", REPO_ROOT / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    listed = {n for n in dir(module) if callable(getattr(module, n)) and not n.startswith("_")}
    assert listed == ENTRIES
    assert all(getattr(module, name).__doc__ for name in ENTRIES)


@pytest.mark.slow
def test_mematte_equals_the_predictor_it_wraps():
    hub = hub_load("mematte", config_file=TINY_CONFIG, checkpoint=DEMO_CHECKPOINT, device="cpu")
    direct = MattingPredictor.from_config(TINY_CONFIG, DEMO_CHECKPOINT, device="cpu")
    assert isinstance(hub, MattingPredictor)
    np.testing.assert_array_equal(hub(DEMO_IMAGE, DEMO_TRIMAP), direct(DEMO_IMAGE, DEMO_TRIMAP))
    relative = hub_load(
        "mematte",
        config_file="configs/tiny/MEMatte_tiny_synthetic.py",  # relative to the repository
        checkpoint=str(DEMO_CHECKPOINT),
        device="cpu",
    )
    expected = direct(DEMO_IMAGE, DEMO_TRIMAP)
    np.testing.assert_array_equal(relative(DEMO_IMAGE, DEMO_TRIMAP), expected)


@pytest.mark.slow
def test_a_url_is_downloaded_into_the_hub_cache_once(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    url = DEMO_CHECKPOINT.resolve().as_uri()  # file://: a URL without the network
    hub = hub_load("mematte", config_file=TINY_CONFIG, checkpoint=url, device="cpu")
    cached = tmp_path / "hub" / "checkpoints" / DEMO_CHECKPOINT.name
    assert cached.read_bytes() == DEMO_CHECKPOINT.read_bytes()
    direct = MattingPredictor.from_config(TINY_CONFIG, DEMO_CHECKPOINT, device="cpu")
    np.testing.assert_array_equal(hub(DEMO_IMAGE, DEMO_TRIMAP), direct(DEMO_IMAGE, DEMO_TRIMAP))


@pytest.mark.slow
def test_named_entries_build_their_configs_and_warn_without_weights(caplog):
    for entry, config in (("mematte_vits", CONFIG_S), ("mematte_vits_aim", CONFIG_S)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="predictor"):
            predictor = hub_load(entry, device="cpu")
        assert "random weights" in caplog.text
        expected = build_inference_model(config).state_dict()
        state = predictor.model.state_dict()
        assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in expected.items()}
    with torch.device("meta"):  # ViT-B: compare the key set without allocating it twice
        expected_b = build_inference_model(CONFIG_B).state_dict().keys()
    predictor_b = hub_load("mematte_vitb", device="cpu")
    assert predictor_b.model.state_dict().keys() == expected_b


@pytest.mark.slow
def test_vits_entry_loads_a_checkpoint_like_the_predictor(tmp_path):
    if not GOLDEN_DIR.is_dir():
        pytest.skip("../shared/golden is not available")
    golden = torch.load(GOLDEN_DIR / "golden_eval.pt", weights_only=False)  # shared reference
    checkpoint = tmp_path / "golden.pth"
    torch.save({"model": golden["state_dict"]}, checkpoint)
    overrides = [o for o in SMALL_MODEL_OVERRIDES if not o.startswith("model.teacher")]
    hub = hub_load("mematte_vits", checkpoint=checkpoint, device="cpu", overrides=overrides)
    direct = MattingPredictor.from_config(CONFIG_S, checkpoint, device="cpu", overrides=overrides)
    image = golden["cases"][0]["input_image_u8"][0] / 255.0  # [3, H, W] in [0, 1]
    trimap = np.array([0, 128, 255], np.uint8)[golden["cases"][0]["input_trimap_code"][0, 0]]
    np.testing.assert_array_equal(hub(image, trimap), direct(image, trimap))
