"""utils/memory.py: the CPU memory readers see a known allocation."""

from __future__ import annotations

import mmap

import numpy as np
import pytest

from utils.memory import current_memory_bytes, peak_memory_bytes, reset_peak_memory

MIB = 2**20
BLOCK_BYTES = 64 * MIB
# Other allocations of the process may come and go meanwhile: allow some slack.
SLACK = 0.25
# The kernel syncs its per-thread RSS counters lazily: /proc's VmRSS and getrusage's peak may
# disagree by a few pages.
COUNTER_LAG_BYTES = MIB


def test_cpu_readers_see_a_known_allocation():
    before = current_memory_bytes("cpu")
    # Fresh pages of their own mapping: a heap block could reuse freed pages that are still
    # resident (after utils.memory.configure_malloc, 64 MiB comes from the heap).
    block = mmap.mmap(-1, BLOCK_BYTES)
    np.frombuffer(block, np.uint8)[:] = 1  # every page written, so resident
    during = current_memory_bytes("cpu")
    assert (1 - SLACK) * BLOCK_BYTES <= during - before <= (1 + SLACK) * BLOCK_BYTES
    assert peak_memory_bytes("cpu") >= during - COUNTER_LAG_BYTES
    block.close()


@pytest.mark.slow
def test_a_subprocess_reports_its_own_peak_not_its_parents():
    import subprocess
    import sys

    from tests.helpers import REPO_ROOT

    parent_block = np.ones(8 * BLOCK_BYTES, np.uint8)  # a parent peak far above the child's
    code = "from utils.memory import peak_memory_bytes; print(peak_memory_bytes('cpu'))"
    child = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert int(child.stdout) < parent_block.nbytes
    del parent_block


def test_reset_peak_memory_forgets_an_earlier_peak():
    block = mmap.mmap(-1, 4 * BLOCK_BYTES)
    np.frombuffer(block, np.uint8)[:] = 1
    block.close()
    high = peak_memory_bytes("cpu")
    if not reset_peak_memory("cpu"):
        pytest.skip("/proc/self/clear_refs cannot be written here")
    assert peak_memory_bytes("cpu") <= high - 3 * BLOCK_BYTES
    assert peak_memory_bytes("cpu") >= current_memory_bytes("cpu") - COUNTER_LAG_BYTES


def test_the_onednn_cache_bound_is_set_unless_the_user_set_one(monkeypatch):
    import os

    from utils.memory import (
        ONEDNN_CACHE_CAPACITY,
        ONEDNN_CACHE_VARIABLE,
        bound_onednn_primitive_cache,
    )

    monkeypatch.delenv(ONEDNN_CACHE_VARIABLE, raising=False)
    bound_onednn_primitive_cache()
    assert os.environ[ONEDNN_CACHE_VARIABLE] == str(ONEDNN_CACHE_CAPACITY)
    monkeypatch.setenv(ONEDNN_CACHE_VARIABLE, "7")
    bound_onednn_primitive_cache()
    assert os.environ[ONEDNN_CACHE_VARIABLE] == "7"


@pytest.mark.slow
def test_building_a_predictor_bounds_onednn_before_its_first_primitive(tmp_path):
    """In a fresh process the predictor sets the bound before any oneDNN op has run (the
    variable is read at the first primitive), and leaves a value of the user's alone."""
    import os
    import subprocess
    import sys

    from tests.helpers import REPO_ROOT
    from utils.memory import ONEDNN_CACHE_CAPACITY, ONEDNN_CACHE_VARIABLE

    code = (
        "import os\n"
        "from tests.helpers import build_tiny_mematte\n"
        "from predictor import MattingPredictor\n"
        "MattingPredictor(build_tiny_mematte(), device='cpu')\n"
        f"print(os.environ[{ONEDNN_CACHE_VARIABLE!r}])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != ONEDNN_CACHE_VARIABLE}
    for preset, expected in ((None, str(ONEDNN_CACHE_CAPACITY)), ("5", "5")):
        run_env = env if preset is None else {**env, ONEDNN_CACHE_VARIABLE: preset}
        child = subprocess.run(
            [sys.executable, "-c", code],
            cwd=REPO_ROOT,
            env=run_env,
            capture_output=True,
            text=True,
            check=True,
        )
        assert child.stdout.split()[-1] == expected
