"""Shared fixtures: the shared reference folder, a tiny MEMatte for fast CPU tests (the helpers
they use are in ``tests/helpers.py``), and the root logger restored after main.py's setup."""

from __future__ import annotations

import logging
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
