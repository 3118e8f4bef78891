"""Gradient estimators that are not bounds: :class:`MCMCGradient` (Fisher's identity, with
persistent Markov chains), :class:`ContrastiveDivergence` (the positive-minus-negative-phase
gradient of undirected models, CD-k and PCD) and standard errors at the MLE by Louis'
identity.
"""

from .chain_loss import ChainLoss
from .contrastive import ContrastiveDivergence
from .fisher import MCMCGradient, empty_guide
from .information import ObservedInformation, observed_information, standard_errors
from .precondition import NewtonPreconditioner

__all__ = [
    "ChainLoss",
    "ContrastiveDivergence",
    "MCMCGradient",
    "NewtonPreconditioner",
    "ObservedInformation",
    "empty_guide",
    "observed_information",
    "standard_errors",
]
