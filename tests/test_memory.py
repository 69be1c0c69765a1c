"""utils/memory.py: the CPU memory readers see a known allocation."""

from __future__ import annotations

import numpy as np

from utils.memory import current_memory_bytes, peak_memory_bytes

MIB = 2**20
BLOCK_BYTES = 64 * MIB
# Other allocations of the process may come and go meanwhile: allow some slack.
SLACK = 0.25


def test_cpu_readers_see_a_known_allocation():
    before = current_memory_bytes("cpu")
    block = np.ones(BLOCK_BYTES, np.uint8)  # every page written, so resident
    during = current_memory_bytes("cpu")
    assert (1 - SLACK) * BLOCK_BYTES <= during - before <= (1 + SLACK) * BLOCK_BYTES
    # The kernel syncs its per-thread RSS counters lazily: the two readers may differ by a few
    # pages, so the peak is checked to include the block, not to exceed the current reading.
    assert peak_memory_bytes("cpu") - before >= (1 - SLACK) * BLOCK_BYTES
    del block
