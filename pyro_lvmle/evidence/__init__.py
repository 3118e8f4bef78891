"""Evidence estimators: how good is a fitted model? Log normalizing constants (marginal
likelihoods, partition functions) with their standard errors, by annealed importance
sampling along any path of targets (:func:`annealed_importance_sampling`), reported as one
:class:`Estimate` type.
"""

from .ais import AISResult, annealed_importance_sampling, check_betas
from .estimate import Estimate, log_mean_exp

__all__ = ["AISResult", "Estimate", "annealed_importance_sampling", "check_betas",
           "log_mean_exp"]
