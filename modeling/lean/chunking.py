"""The one chunking helper of the lean path: compute a map strip by strip along one dimension."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

__all__ = ["map_strips"]


def map_strips(
    fn: Callable[[int, int], Tensor],
    length: int,
    size: int,
    *,
    dim: int,
    halo: int = 0,
    out: Tensor | None = None,
) -> Tensor:
    """Stitch ``fn`` over strips along ``dim``: ``out[lo:hi] = fn(a, b)[lo - a : hi - a]``.

    Each strip ``[lo, hi)`` of ``[0, length)`` is computed from the span ``[a, b)`` that adds
    ``halo`` neighbours on both sides (clipped to ``[0, length)``, where zero padding applies as on
    the whole map). A spatially local ``fn`` (per-token ops and zero-padded convolutions of
    receptive-field radius at most ``halo``) thus gives exactly ``fn(0, length)`` while its
    intermediates only ever hold one strip.

    Args:
        fn: ``(a, b) -> tensor`` whose extent along ``dim`` is ``b - a``.
        length: extent of the whole map along ``dim``.
        size: strip extent (without the halo).
        dim: the dimension to split.
        halo: neighbours given to each strip on both sides.
        out: where to write (e.g. the input itself for an in-place update with ``halo=0``); a new
            tensor shaped like ``fn``'s output with ``length`` along ``dim`` by default.

    Returns:
        ``out``, or ``fn(0, length)`` when one strip covers the map and no ``out`` is given.
    """
    if size >= length and out is None:
        return fn(0, length)
    for lo in range(0, length, size):
        hi = min(length, lo + size)
        a, b = max(0, lo - halo), min(length, hi + halo)
        strip = fn(a, b).narrow(dim, lo - a, hi - lo)
        if out is None:
            shape = list(strip.shape)
            shape[dim] = length
            out = strip.new_empty(shape)
        target = out.narrow(dim, lo, hi - lo)
        if strip.data_ptr() != target.data_ptr():  # fn may already have written in place
            target.copy_(strip)
    return out
