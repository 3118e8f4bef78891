"""Gradient estimators that are not bounds: :class:`MCMCGradient` (Fisher's identity, with
persistent Markov chains) and standard errors at the MLE by Louis' identity.
"""

from .fisher import MCMCGradient, empty_guide
from .information import ObservedInformation, observed_information, standard_errors

__all__ = [
    "MCMCGradient",
    "ObservedInformation",
    "empty_guide",
    "observed_information",
    "standard_errors",
]
