"""Critical pathways and pathway gradients (Khakzar et al., CVPR 2021; dissertation ch. 5 and appendix A).

A pathway is a 0/1 mask over the network's neurons (every element of every ReLU-family output, per call;
:mod:`~xattr.methods.pathways.neurons`), selected network-wide at a sparsity (:mod:`.selection`) from

- neuron contributions: :class:`NeuronMCT`, :class:`NeuronIntGrad` (:mod:`.contributions`);
- the pruning objective: :class:`GreedyPruning` (Alg. 1, :mod:`.greedy`), :class:`DGR` (eq. 3, :mod:`.dgr`);

and the map is the gradient of the network restricted to the pathway (:mod:`.pathway`). The input-space
counterparts :class:`InputMCT` and :class:`InputIntGrad` (:mod:`.inputs`) use the same channel reduction.
"""

from xattr.methods.pathways.contributions import (
           NeuronIntGrad,
           NeuronMCT,
           alpha_schedule,
           intgrad_scores,
           mct_scores,
)
from xattr.methods.pathways.dgr import DGR
from xattr.methods.pathways.greedy import GreedyPruning
from xattr.methods.pathways.inputs import InputIntGrad, InputMCT
from xattr.methods.pathways.maps import opening, reduce_map
from xattr.methods.pathways.neurons import Layout, Neurons, pack_bits, unpack_bits
from xattr.methods.pathways.pathway import PathwayMethod, pathway_forward, pathway_gradient
from xattr.methods.pathways.selection import percentile, select

__all__ = ["DGR", "GreedyPruning", "InputIntGrad", "InputMCT", "Layout", "NeuronIntGrad", "NeuronMCT", "Neurons", "PathwayMethod", "alpha_schedule", "intgrad_scores",
           "mct_scores", "opening", "pack_bits", "pathway_forward", "pathway_gradient", "percentile", "reduce_map",
           "select", "unpack_bits"]
