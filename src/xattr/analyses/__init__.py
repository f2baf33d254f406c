"""Dataset-level analyses: work that accumulates over the whole dataset and finishes at the end (pooled
correlations, dead-neuron shares of pathways, network dissection). See :mod:`.base` for the interface."""

from xattr.analyses.base import Analysis
from xattr.analyses.dead_neurons import DeadNeurons, pathway_jaccard
from xattr.analyses.dissection import Dissection, detector_counts
from xattr.analyses.semantic import SemanticConcepts
from xattr.analyses.sensitivity_n import PooledSensitivityN, pooled_curve

__all__ = ["Analysis", "DeadNeurons", "Dissection", "PooledSensitivityN", "SemanticConcepts", "detector_counts",
           "pathway_jaccard", "pooled_curve"]
