"""Evidence estimators: how good is a fitted model? Log normalizing constants (marginal
likelihoods, partition functions) with their standard errors, by annealed importance
sampling along any path of targets (:func:`annealed_importance_sampling`), reported as one
:class:`Estimate` type; the partition function of undirected models (:func:`log_partition`).
"""

from .ais import AISResult, annealed_importance_sampling, check_betas
from .estimate import Estimate, log_mean_exp
from .partition import GeometricPath, GeometricTarget, log_partition

__all__ = ["AISResult", "Estimate", "GeometricPath", "GeometricTarget",
           "annealed_importance_sampling", "check_betas", "log_mean_exp", "log_partition"]
