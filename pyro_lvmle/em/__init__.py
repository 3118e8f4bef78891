"""EM-style drivers (MCEM, SAEM, variational EM, exact EM), their shared protocol and
:class:`History`.

Every driver has ``step(*args, **kwargs) -> dict`` (like ``SVI.step``), ``run(*args,
num_steps=..., progress=True, callback=None, **kwargs) -> History``, and an exact
``state_dict()`` / ``load_state_dict()``.
"""

from .convergence import ConvergenceWarning
from .driver import Driver
from .exact import ExactEM
from .history import History
from .mcem import MCEM
from .saem import SAEM
from .schedules import saem_step_size
from .stochastic_newton import StochasticNewton
from .variational import VariationalEM

__all__ = ["ConvergenceWarning", "Driver", "ExactEM", "History", "MCEM", "SAEM",
           "StochasticNewton", "VariationalEM", "saem_step_size"]
