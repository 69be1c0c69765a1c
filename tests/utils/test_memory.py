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
