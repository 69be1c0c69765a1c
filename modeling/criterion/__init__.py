"""Matting losses."""

from .matting_criterion import MattingCriterion

__all__ = ["MattingCriterion"]
