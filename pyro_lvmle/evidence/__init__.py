"""Evidence estimators: how good is a fitted model? Log normalizing constants (marginal
likelihoods, partition functions) with their standard errors, by annealed importance
sampling along any path of targets (:func:`annealed_importance_sampling`), reported as one
:class:`Estimate` type; :func:`log_marginal` for any Pyro model (exact, importance sampling,
AIS, bidirectional Monte Carlo); the partition function of undirected models
(:func:`log_partition`).
"""

from .ais import AISResult, annealed_importance_sampling, check_betas
from .estimate import Estimate, log_mean_exp
from .importance import importance_log_marginal, psis_k_hat
from .log_marginal import log_marginal, sigmoid_betas
from .partition import GeometricPath, GeometricTarget, log_partition
from .tuning import PilotResult, pilot_step_sizes

__all__ = ["AISResult", "Estimate", "GeometricPath", "GeometricTarget", "PilotResult",
           "annealed_importance_sampling", "check_betas", "importance_log_marginal",
           "log_marginal", "log_mean_exp", "log_partition", "pilot_step_sizes", "psis_k_hat",
           "sigmoid_betas"]
