"""Shared fixtures: the shared reference folder, a tiny MEMatte for fast CPU tests, tiny random
SAM-family segmenters and an offline Hugging Face hub (the helpers they use are in
``tests/helpers.py``), and the root logger restored after main.py's setup."""

from __future__ import annotations

import logging
from pathlib import Path

import huggingface_hub
import pytest

from modeling import MEMatte
from tests.helpers import (
    GOLDEN_DIR,
    SEGMENTER_FAMILIES,
    build_tiny_mematte,
    save_tiny_segmenter,
)


@pytest.fixture
def golden_dir() -> Path:
    if not GOLDEN_DIR.is_dir():
        pytest.skip("../shared/golden is not available")
    return GOLDEN_DIR


@pytest.fixture
def tiny_model() -> MEMatte:
    return build_tiny_mematte()


@pytest.fixture
def restore_logging():
    """Remove the handlers main.py's setup installs on the root logger (their streams close with
    the test)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


@pytest.fixture(scope="session")
def tiny_segmenters(tmp_path_factory) -> dict[str, Path]:
    """Tiny random SAM, SAM-HQ and SAM 2 checkpoints (``save_pretrained`` folders) by family."""
    root = tmp_path_factory.mktemp("segmenters")
    return {family: save_tiny_segmenter(family, root / family) for family in SEGMENTER_FAMILIES}


@pytest.fixture
def hub_offline(monkeypatch) -> None:
    """The Hugging Face hub offline: a hub id fails at once, without network retries."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
