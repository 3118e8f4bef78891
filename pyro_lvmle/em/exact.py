r"""EM with an exact E-step, for models whose latent sites Pyro can enumerate (Dempster,
Laird & Rubin 1977).

.. math::

    \theta_{k+1} = \arg\max_\theta\ \mathbb{E}_{p(z \mid x; \theta_k)}
        \big[\log p(x, z; \theta)\big],

the expectation computed exactly by enumeration
(:class:`~pyro_lvmle.traces.EnumeratedPosterior`) and the maximum found by L-BFGS (or given in
closed form). Each step cannot decrease :math:`\log p(x; \theta)`.
"""

from __future__ import annotations

from pyro.optim import PyroOptim

from .._checks import check_int, check_positive
from ..gradients.newton import assign_flat, flatten
from ..traces import EnumeratedPosterior, guess_max_plate_nesting
from .driver import Driver
from .m_step import check_m_step, load_optim_state, maximize, optim_state
from .squarem import backtracked_alpha

__all__ = ["ExactEM"]


class ExactEM(Driver):
    r"""Exact EM for models with only enumerable latent sites (mixtures, hidden Markov
    models written with parallel enumeration).

    :param model: a Pyro model whose latent sites are discrete and marked for parallel
        enumeration (:func:`~pyro.infer.config_enumerate`).
    :param m_step: ``"lbfgs"`` (default: the Q-function maximized by L-BFGS), a ``pyro.optim``
        optimizer, or a closed-form M-step ``m_step(marginals, *args, **kwargs) -> {param name:
        constrained value}`` given the posterior marginals of
        :meth:`EnumeratedPosterior.marginals <pyro_lvmle.traces.EnumeratedPosterior.marginals>`.
    :param int m_steps: L-BFGS iterations, or optimizer steps, per M-step.
    :param float tol: converged when a step raises the log-likelihood by less than this.
    :param str acceleration: ``None`` (plain EM) or ``"squarem"``: each step is one SQUAREM
        cycle (two EM updates, an extrapolation backtracked until the log-likelihood is at
        least that of the second update, and a stabilizing EM update; see
        :mod:`pyro_lvmle.em.squarem`), so the log-likelihood never decreases and a step costs
        three EM updates. The metric ``em_updates`` (with SQUAREM only) counts them.
    :param int max_plate_nesting: guessed if ``None``.
    :param record_params: see :class:`~pyro_lvmle.em.Driver`.
    :param ranks: a :class:`~pyro_lvmle.em.ranks.RankSum` for a data-parallel run: each rank
        computes the exact posterior of its shard; the Q-function's value and gradient in the
        M-step and the log-likelihood are summed across ranks, so every rank takes the same
        steps. Needs ``"lbfgs"`` or a ``pyro.optim`` M-step (a closed-form one would see one
        shard's marginals).

    Metrics per step: ``log_likelihood`` (exact, at the parameters after the step) and
    ``increase`` (over the step). Restarts (:meth:`~pyro_lvmle.em.Driver.run` with
    ``num_restarts``) keep the run with the highest exact log-likelihood.

    References:

    [1] Dempster, Laird & Rubin (1977), "Maximum likelihood from incomplete data via the EM
    algorithm", JRSS B 39(1).

    [2] Obermeyer et al. (2019), "Tensor variable elimination for plated factor graphs", ICML.

    Example::

        >>> import pyro_lvmle as lv
        >>> model = lv.models.GaussianMixture(num_components=2, data_dim=2)
        >>> data = model.simulate(100)
        >>> em = lv.ExactEM(model)
        >>> history = em.run(data, num_steps=5, progress=False)
        >>> all(d >= -1e-9 for d in history["increase"])
        True
    """

    progress_metric = "log_likelihood"

    def __init__(self, model, m_step="lbfgs", *, m_steps: int = 100, tol: float = 1e-8,
                 acceleration: str | None = None, max_plate_nesting: int | None = None,
                 record_params=True, ranks=None):
        super().__init__(model, record_params=record_params, ranks=ranks)
        self.closed_form = callable(m_step) and not isinstance(m_step, PyroOptim)
        if not self.closed_form:
            check_m_step(m_step, m_steps, "ExactEM")
        elif self.ranks.distributed:
            raise ValueError("ExactEM: a closed-form m_step sees only this rank's marginals; "
                             "use m_step='lbfgs' (or a pyro.optim optimizer) with ranks")
        tol = check_positive("ExactEM", "tol", tol)
        if max_plate_nesting is not None:
            check_int("ExactEM", "max_plate_nesting", max_plate_nesting, low=0)
        if acceleration not in (None, "squarem"):
            raise ValueError(f"ExactEM: acceleration must be None or 'squarem', got "
                             f"{acceleration!r}")
        self.acceleration = acceleration
        self.m_step, self.m_steps, self.tol = m_step, m_steps, tol
        self.max_plate_nesting = max_plate_nesting
        self._posterior = None  # (args, kwargs, posterior) at the current parameters

    def posterior(self, *args, **kwargs) -> EnumeratedPosterior:
        """The exact posterior at the current parameters (reused between steps).

        :param args: the model's arguments.
        :param kwargs: its keyword arguments.
        """
        cached = self._posterior
        if cached is not None and len(cached[0]) == len(args) \
                and all(a is b for a, b in zip(cached[0], args, strict=True)) \
                and cached[1].keys() == kwargs.keys() \
                and all(cached[1][k] is v for k, v in kwargs.items()):
            return cached[2]
        if self.max_plate_nesting is None:
            self.max_plate_nesting = guess_max_plate_nesting(self.model, lambda *a, **k: None,
                                                             args, kwargs)
        share = self.ranks.share(self.model, args, kwargs) if self.ranks.distributed else None
        posterior = EnumeratedPosterior(self.model, args, kwargs, self.max_plate_nesting,
                                        data_share=share)
        self._posterior = (args, kwargs, posterior)
        return posterior

    def restart_objective(self, *args, **kwargs) -> float:
        """The exact log-likelihood :math:`\\log p(x; \\theta)` at the current parameters
        (summed over the ranks of a data-parallel run).

        :param args: the model's arguments.
        :param kwargs: its keyword arguments.
        """
        return self.ranks.sum([self.posterior(*args, **kwargs).log_marginal])[0].item()

    def _update(self, args, kwargs, params) -> float:
        """One EM update from the current parameters; the log-likelihood after it."""
        posterior = self.posterior(*args, **kwargs)
        if self.closed_form:
            self.set_params(self.m_step(posterior.marginals(), *args, **kwargs))
        else:
            maximize(posterior.expected_log_joint, params, self.m_step, m_steps=self.m_steps,
                     where="ExactEM M-step", ranks=self.ranks)
        self._posterior = None
        return self.restart_objective(*args, **kwargs)

    def _step(self, args, kwargs):
        params = self.model_params(*args, **kwargs)
        before = self.restart_objective(*args, **kwargs)
        if self.acceleration is None:
            after = self._update(args, kwargs, params)
            self.converged = abs(after - before) < self.tol
            return {"log_likelihood": after, "increase": after - before}
        after, updates = self._squarem(args, kwargs, params)
        self.converged = abs(after - before) < self.tol
        return {"log_likelihood": after, "increase": after - before, "em_updates": updates}

    def _squarem(self, args, kwargs, params) -> tuple[float, int]:
        """One monotone SQUAREM cycle on the unconstrained parameters."""
        theta0 = flatten(params.values())
        self._update(args, kwargs, params)
        theta1 = flatten(params.values())
        second = self._update(args, kwargs, params)
        theta2 = flatten(params.values())

        def accept(point):
            assign_flat(params.values(), point)
            self._posterior = None
            return self.restart_objective(*args, **kwargs) >= second  # NaN fails too

        alpha = backtracked_alpha(theta0, theta1, theta2, accept)
        if alpha == -1.0:  # plain EM: the second update, then the stabilizing one
            assign_flat(params.values(), theta2)
            self._posterior = None
        return self._update(args, kwargs, params), 3

    def _extra_state(self) -> dict:
        state = {"max_plate_nesting": self.max_plate_nesting}
        if isinstance(self.m_step, PyroOptim):
            state["optim"] = optim_state(self.m_step)
        return state

    def _load_extra_state(self, state: dict) -> None:
        self.max_plate_nesting = state["max_plate_nesting"]
        self._posterior = None
        if "optim" in state:
            load_optim_state(self.m_step, state["optim"])
