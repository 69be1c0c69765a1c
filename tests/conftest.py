"""Shared fixtures: the shared reference folder and a tiny MEMatte for fast CPU tests (the helpers
they use are in ``tests/helpers.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from modeling import MEMatte
from tests.helpers import GOLDEN_DIR, build_tiny_mematte


@pytest.fixture
def golden_dir() -> Path:
    if not GOLDEN_DIR.is_dir():
        pytest.skip("../shared/golden is not available")
    return GOLDEN_DIR


@pytest.fixture
def tiny_model() -> MEMatte:
    return build_tiny_mematte()
