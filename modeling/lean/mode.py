"""The lean-inference switch: which modules run the memory-lean path, and when.

A model built with ``MEMatte(lean_inference=True)`` (the configs' default) has its modules swapped
for their lean variants (:func:`to_lean`): subclasses with the same attributes, hence the same
state-dict keys, that override the forward of their reference class. A lean module takes its lean
path only when :func:`lean_active` holds (eval mode and no autograd); otherwise it runs the
reference forward, so training and gradient checks always see the reference code.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch
from torch import nn

__all__ = ["lean_active", "lean_variant", "to_lean", "to_reference"]

# reference class -> its lean subclass, filled by the @lean_variant decorators of modeling.lean.
_LEAN_CLASSES: dict[type[nn.Module], type[nn.Module]] = {}
# The module whose import registers every lean variant.
_VARIANTS = "modeling.lean.variants"


def lean_active(module: nn.Module) -> bool:
    """The one predicate of the lean path: ``module`` is in eval mode and autograd is off."""
    return not module.training and not torch.is_grad_enabled()


def lean_variant(reference: type[nn.Module]) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator registering a lean subclass of ``reference`` for :func:`to_lean`."""

    def register(lean: type[nn.Module]) -> type[nn.Module]:
        if not issubclass(lean, reference):
            raise TypeError(f"{lean.__name__} must subclass {reference.__name__}")
        _LEAN_CLASSES[reference] = lean
        return lean

    return register


def _registered() -> dict[type[nn.Module], type[nn.Module]]:
    """Every lean class, registered: importing them (once; they import this module) registers
    them, also where some were imported one by one before."""
    importlib.import_module(_VARIANTS)
    return _LEAN_CLASSES


def to_lean(model: nn.Module) -> nn.Module:
    """Swap every module of ``model`` (itself included) that has a lean variant for it, in place.

    Returns:
        ``model``, whose state dict is unchanged.
    """
    lean_classes = _registered()
    for module in model.modules():
        lean = lean_classes.get(type(module))
        if lean is not None:
            module.__class__ = lean
    return model


def to_reference(model: nn.Module) -> nn.Module:
    """Undo :func:`to_lean` in place: every lean module gets its reference class back."""
    reference_of = {lean: reference for reference, lean in _registered().items()}
    for module in model.modules():
        reference = reference_of.get(type(module))
        if reference is not None:
            module.__class__ = reference
    return model
