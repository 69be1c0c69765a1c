"""Memory of the process and of the device: readers, and glibc's allocator thresholds.

On CUDA the numbers are torch's allocations (``torch.cuda.*memory_allocated``); on the CPU they are
the process's resident set size (RSS) and the machine's available memory, read from ``/proc``
(no PyTorch needed: an onnxruntime deployment runs without it).
"""

from __future__ import annotations

import ctypes
import os
import resource
from pathlib import Path

try:
    import torch
except ImportError:  # CPU numbers only, from /proc
    torch = None

__all__ = [
    "MIB",
    "bound_onednn_primitive_cache",
    "configure_malloc",
    "current_memory_bytes",
    "free_memory_bytes",
    "peak_memory_bytes",
    "reset_peak_memory",
]

KIB = 1024
MIB = 2**20
MEMINFO = Path("/proc/meminfo")
PROCESS_STATUS = Path("/proc/self/status")
# proc(5): writing "5" to clear_refs resets the process's peak RSS (VmHWM) to its current RSS.
CLEAR_REFS = Path("/proc/self/clear_refs")
RESET_PEAK_RSS = "5"
# glibc mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Fixed glibc thresholds for inference. Every recurring large buffer of a ViT-S forward (token
# maps of 24 MiB at 2048^2, decoder-tile maps of up to 72 MiB) stays below MMAP_THRESHOLD_BYTES,
# so it is carved from the heap and reused by the next block or tile instead of being mapped,
# page-faulted in and unmapped again; only the few larger buffers (the input at 4096^2 and above)
# get their own mapping. The heap keeps up to TRIM_THRESHOLD_BYTES of free memory at its top.
MMAP_THRESHOLD_BYTES = 128 * MIB
TRIM_THRESHOLD_BYTES = 256 * MIB


def configure_malloc() -> bool:
    """Fix glibc's mmap and trim thresholds (``MMAP_THRESHOLD_BYTES``, ``TRIM_THRESHOLD_BYTES``).

    By default glibc starts with a 128 KiB mmap threshold and raises it (up to 32 MiB) after
    large frees: buffers above 32 MiB are then mapped and page-faulted in on every use, and
    smaller ones come from a heap whose free chunks are neither reused in a pattern nor returned.
    Fixed thresholds make the per-block and per-tile buffers reuse the same heap memory, which
    saves the system time of those page faults. This is a process-wide allocator setting, so only
    entry-point scripts call it, explicitly (the benchmark does unless ``--default-malloc``).

    Returns:
        False where it does not apply (no glibc).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(
            libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
            and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
        )
    except (OSError, AttributeError):
        return False


# oneDNN keeps every primitive it creates (a JIT-compiled kernel with its buffers, about 1 MiB for
# a decoder conv) in a cache of 1024 entries by default. The lean decoder's boxes come in many
# shapes, one primitive each, rarely met again: with the default the cache grew by about 120 MiB
# over one 4872 x 6017 image. Its steady working set (the backbone's and the current box's
# kernels) fits ONEDNN_CACHE_CAPACITY entries, at the same speed.
ONEDNN_CACHE_VARIABLE = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"
ONEDNN_CACHE_CAPACITY = 32


def bound_onednn_primitive_cache() -> None:
    """Cap oneDNN's primitive cache at ``ONEDNN_CACHE_CAPACITY`` entries, unless the variable
    ``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` is already set (yours wins).

    oneDNN reads the variable when it creates its first primitive, so this takes effect in a
    process that has not yet run a oneDNN op (``MattingPredictor`` calls it when it is built);
    later it changes nothing.
    """
    os.environ.setdefault(ONEDNN_CACHE_VARIABLE, str(ONEDNN_CACHE_CAPACITY))


def _proc_kib(path: Path, field: str) -> int | None:
    """The ``field: <n> kB`` entry of a /proc status file in bytes, None where it is missing."""
    if not path.exists():
        return None
    for line in path.read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * KIB
    return None


def _is_cuda(device: object) -> bool:
    """Whether ``device`` (a ``torch.device`` or a name such as ``"cuda:1"``) is a GPU."""
    return str(device).startswith("cuda")


def free_memory_bytes(device: object) -> int:
    """Free memory of ``device``: CUDA ``mem_get_info``; CPU ``MemAvailable`` of /proc/meminfo
    (psutil, then ``sysconf`` available pages, where /proc is missing)."""
    if _is_cuda(device):
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    available = _proc_kib(MEMINFO, "MemAvailable")
    if available is not None:
        return available
    try:
        import psutil  # optional: not a requirement, used only where /proc is missing

        return int(psutil.virtual_memory().available)
    except ImportError:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def current_memory_bytes(device: object) -> int:
    """Memory in use now: CUDA bytes allocated by torch; CPU: this process's RSS (0 without
    /proc)."""
    if _is_cuda(device):
        return torch.cuda.memory_allocated(device)
    return _proc_kib(PROCESS_STATUS, "VmRSS") or 0


def peak_memory_bytes(device: object) -> int:
    """Peak memory so far: CUDA bytes allocated by torch (since the last
    ``torch.cuda.reset_peak_memory_stats``); CPU: this process's peak RSS, /proc's ``VmHWM``.

    Not ``getrusage``'s ``ru_maxrss`` (the fallback without /proc): Linux carries it over
    ``execve``, so a fresh subprocess would report its parent's peak if that was higher.
    """
    if _is_cuda(device):
        return torch.cuda.max_memory_allocated(device)
    peak = _proc_kib(PROCESS_STATUS, "VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * KIB


def reset_peak_memory(device: torch.device | str) -> bool:
    """Start :func:`peak_memory_bytes` afresh: CUDA ``reset_peak_memory_stats``; CPU: the peak
    RSS set back to the current RSS (``/proc/self/clear_refs``), so that the next reading is the
    peak of what runs in between (the process's resident memory included).

    Returns:
        False where the CPU peak cannot be reset (no /proc, or not allowed).
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        CLEAR_REFS.write_text(RESET_PEAK_RSS)
    except OSError:
        return False
    return True
