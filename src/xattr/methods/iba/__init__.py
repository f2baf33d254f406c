"""The IBA family: Per-Sample and Readout IBA (Schulz et al., ICLR 2020) and ch. 8 of Khakzar's
dissertation (Inverse, Regression and Multi-layer IBA), built on one reusable bottleneck
(:mod:`xattr.methods.iba.bottleneck`)."""

from xattr.methods.iba.bottleneck import AlphaResult, Bottleneck, kl_divergence, optimize_alpha, to_bits_map
from xattr.methods.iba.inverse import InverseIBA
from xattr.methods.iba.multilayer import MultiLayerIBA, intersect
from xattr.methods.iba.per_sample import PerSampleIBA, bottleneck_scores
from xattr.methods.iba.readout import ReadoutIBA
from xattr.methods.iba.regression import RegressionIBA
from xattr.methods.iba.statistics import FeatureStats

__all__ = ["AlphaResult", "Bottleneck", "FeatureStats", "InverseIBA", "MultiLayerIBA", "PerSampleIBA",
           "ReadoutIBA", "RegressionIBA", "bottleneck_scores", "intersect", "kl_divergence", "optimize_alpha", "to_bits_map"]
