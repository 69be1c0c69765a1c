"""The memory-lean inference path of MEMatte, separate from the reference model.

``modeling/`` holds the model as the paper and the official code describe it; this package holds
how it runs in bounded memory at inference (``MEMatte(lean_inference=True)``, the default):

- ``mode.py``: the switch (:func:`to_lean`, :func:`to_reference`) and the one predicate
  (:func:`lean_active`: eval mode, autograd off) that every lean override checks;
- ``backbone.py``, ``decoder.py``, ``meta_arch.py``: the lean subclasses, one override each;
- ``chunking.py``: the one strip/chunk helper; ``input.py``: the network input built crop by
  crop; ``constants.py``: every tuning constant;
- the block-sparse decoder's pure-Python parts (no PyTorch, shared with the onnxruntime
  predictor): ``cone.py`` the region algebra, ``blocks.py`` the plan of which boxes of every
  decoder map to compute, ``block_decode.py`` the walk that computes them on a backend.

Tests prove every lean override equal to its reference (``tests/modeling/test_lean.py``). The
names below are imported on first use.
"""

from utils.lazy import lazy_exports

__all__ = ["lean_active", "lean_variant", "to_lean", "to_reference"]

__getattr__, __dir__ = lazy_exports(__name__, dict.fromkeys(__all__, "modeling.lean.mode"))
