"""Evaluation metrics, one class each, called on batches (see ``base.py`` for the interface)."""

from xattr.metrics.base import Metric, MetricResult, mean_and_sem
from xattr.metrics.bottleneck_accuracy import BottleneckAccuracy
from xattr.metrics.degradation import Degradation
from xattr.metrics.insertion_deletion import InsertionDeletion
from xattr.metrics.lerf import LeRF
from xattr.metrics.localisation import BoundingBoxRatio, BoxIoU, EffectiveHeatRatio
from xattr.metrics.sanity_check import CascadingRandomisation
from xattr.metrics.sensitivity_n import SensitivityN

__all__ = ["Metric", "MetricResult", "mean_and_sem", "BottleneckAccuracy", "Degradation", "InsertionDeletion", "LeRF",
           "BoundingBoxRatio", "BoxIoU", "EffectiveHeatRatio", "CascadingRandomisation", "SensitivityN"]
