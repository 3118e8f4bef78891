"""Maximum-likelihood estimation of latent-variable models, as a plugin for Pyro.

Every method in the package estimates the gradient of the log marginal likelihood
:math:`\\nabla_\\theta \\log p(x; \\theta)` of a Pyro model, or of a bound on it; see the
Background page of the documentation. Import it as ``import pyro_lvmle as lv``.
"""

from importlib.metadata import PackageNotFoundError, version

from . import evidence, models, parallel
from .compare import compare
from .comparison import Comparison
from .em import MCEM, SAEM, ConvergenceWarning, ExactEM, History, StochasticNewton, VariationalEM
from .evidence import Estimate, log_marginal, log_partition
from .gradients import (
    ContrastiveDivergence,
    MCMCGradient,
    NewtonPreconditioner,
    ObservedInformation,
    empty_guide,
    observed_information,
    standard_errors,
)
from .objectives import (
    GradientCheck,
    ParticleObjective,
    TraceIWAE_ELBO,
    TraceRenyi_ELBO,
    TraceRWS_ELBO,
    TraceSTL_ELBO,
    TraceTVO_ELBO,
    check_gradient,
)
from .traces import PriorGuide, check_model

try:
    __version__ = version("pyro-lvmle")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "Comparison",
    "ContrastiveDivergence",
    "ConvergenceWarning",
    "Estimate",
    "ExactEM",
    "GradientCheck",
    "History",
    "MCEM",
    "MCMCGradient",
    "NewtonPreconditioner",
    "ObservedInformation",
    "ParticleObjective",
    "PriorGuide",
    "SAEM",
    "StochasticNewton",
    "TraceIWAE_ELBO",
    "TraceRWS_ELBO",
    "TraceRenyi_ELBO",
    "TraceSTL_ELBO",
    "TraceTVO_ELBO",
    "VariationalEM",
    "__version__",
    "check_gradient",
    "check_model",
    "compare",
    "empty_guide",
    "evidence",
    "log_marginal",
    "log_partition",
    "models",
    "observed_information",
    "parallel",
    "standard_errors",
]
