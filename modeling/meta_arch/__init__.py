"""Meta-architectures."""

from .mematte import MEMatte

__all__ = ["MEMatte"]
