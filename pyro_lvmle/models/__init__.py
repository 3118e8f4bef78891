"""Reference models with known answers: exact log marginals, simulators and MLEs.

Each model is an ordinary Pyro model (``pyro.param``, ``pyro.plate``, ``obs=``) wrapped in an
object that also knows the model's exact answers. Tests, examples, benchmarks and the command
line use them to measure every estimator of the package against the truth.
"""

from .base import ReferenceModel
from .linear_gaussian import LinearGaussian
from .logistic_growth import LogisticGrowth
from .mixture import GaussianMixture
from .nmixture import NMixture
from .ppca import PPCA
from .rbm import RBM
from .theophylline import PKData, Theophylline, load_theophylline

__all__ = [
    "GaussianMixture",
    "LinearGaussian",
    "LogisticGrowth",
    "NMixture",
    "PKData",
    "PPCA",
    "RBM",
    "ReferenceModel",
    "Theophylline",
    "load_theophylline",
]
