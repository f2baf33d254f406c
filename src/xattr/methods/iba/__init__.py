"""The IBA family: Per-Sample and Readout IBA (Schulz et al., ICLR 2020) and ch. 8 of Khakzar's
dissertation (Inverse, Regression and Multi-layer IBA), built on one reusable bottleneck."""

from xattr.methods.iba.bottleneck import AlphaResult, Bottleneck, kl_divergence, optimize_alpha, to_bits_map
from xattr.methods.iba.per_sample import PerSampleIBA, bottleneck_scores
from xattr.methods.iba.statistics import FeatureStats

__all__ = ["AlphaResult", "Bottleneck", "FeatureStats", "PerSampleIBA", "bottleneck_scores", "kl_divergence",
           "optimize_alpha", "to_bits_map"]
