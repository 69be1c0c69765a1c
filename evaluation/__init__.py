"""Evaluation: the official matting metrics and the evaluator of a model on a test-set folder.

References: detectron2 ``detectron2/evaluation/`` (the package's role only).
"""

from evaluation.evaluator import MattingEvaluator
from evaluation.metrics import METRIC_NAMES, Region, compute_metrics

__all__ = ["METRIC_NAMES", "MattingEvaluator", "Region", "compute_metrics"]
