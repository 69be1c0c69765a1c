"""The memory-lean inference path of MEMatte, separate from the reference model.

``modeling/`` holds the model as the paper and the official code describe it; this package holds
how it runs in bounded memory at inference (``MEMatte(lean_inference=True)``, the default):

- ``mode.py``: the switch (:func:`to_lean`, :func:`to_reference`) and the one predicate
  (:func:`lean_active`: eval mode, autograd off) that every lean override checks;
- ``backbone.py``, ``decoder.py``, ``meta_arch.py``: the lean subclasses, one override each;
- ``chunking.py``: the one strip/chunk helper; ``cone.py``: the decoder's region algebra;
  ``input.py``: the network input built crop by crop; ``constants.py``: every tuning constant.

Tests prove every lean override equal to its reference (``tests/test_lean.py``).
"""

from .mode import lean_active, lean_variant, to_lean, to_reference

__all__ = ["lean_active", "lean_variant", "to_lean", "to_reference"]
