"""Objectives for ``pyro.infer.SVI``: importance-weighted bounds with reparameterized, DReG
and VIMCO gradients, sticking-the-landing, Renyi, the thermodynamic objective and reweighted
wake-sleep. Each is a small function of the trace layer's
:class:`~pyro_lvmle.traces.ParticleTerms`.
"""

from .base import ParticleObjective
from .diagnostics import GradientCheck, GradientRow, check_gradient
from .iwae import TraceIWAE_ELBO
from .renyi import TraceRenyi_ELBO
from .rws import TraceRWS_ELBO
from .stl import TraceSTL_ELBO
from .tvo import TraceTVO_ELBO

__all__ = [
    "GradientCheck",
    "GradientRow",
    "ParticleObjective",
    "TraceIWAE_ELBO",
    "TraceRWS_ELBO",
    "TraceRenyi_ELBO",
    "TraceSTL_ELBO",
    "TraceTVO_ELBO",
    "check_gradient",
]
