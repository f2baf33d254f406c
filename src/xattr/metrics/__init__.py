"""Evaluation metrics, one class each, called on batches."""

from xattr.metrics.base import Metric, MetricResult, mean_and_sem

__all__ = ["Metric", "MetricResult", "mean_and_sem"]
