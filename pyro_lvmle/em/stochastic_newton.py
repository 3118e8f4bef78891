r"""Stochastic Newton on the log-likelihood: Fisher's gradient and Louis' information from the
same persistent chains, averaged by stochastic approximation (Gu & Kong 1998).

Iteration :math:`k` advances the chains at :math:`\theta_k`, computes the gradient
:math:`g_k` and Louis' moments :math:`I_{c,k}, I_{m,k}` from the kept draws
(:func:`~pyro_lvmle.gradients.newton.louis_moments`), averages the moments,

.. math::

    \bar I_{\cdot,k} = \bar I_{\cdot,k-1} + \gamma_k (I_{\cdot,k} - \bar I_{\cdot,k-1}),

and steps :math:`\theta_{k+1} = \theta_k + \gamma_k \tilde I_k^{-1} g_k`
(:func:`~pyro_lvmle.gradients.newton.newton_step`, safeguarded). The burn-in (:math:`\gamma_k = 1`,
Monte Carlo Newton-Raphson) ends when the parameters stop trending
(:func:`~pyro_lvmle.em.burn_in.trend_test`); then :math:`\gamma_k = (k - K_1)^{-\alpha}`
averages the noise away. The rate does not depend on the fraction of missing information.
"""

from __future__ import annotations

import math

import torch

from .._checks import check_int, check_positive
from ..gradients import MCMCGradient
from ..gradients.newton import assign_flat, flatten, louis_moments, trust_region_step
from .burn_in import MIN_BURN_IN, record_burn_in
from .driver import Driver
from .kernel_options import check_kernel_options
from .schedules import stochastic_approximation

__all__ = ["StochasticNewton"]



class StochasticNewton(Driver):
    r"""Stochastic Newton maximum likelihood with MCMC draws, for any Pyro model with
    continuous (or enumerable) latent sites; fast however the model is parametrized.

    :param model: the Pyro model.
    :param kernel: the sampler, as for :class:`~pyro_lvmle.MCMCGradient`.
    :param int num_samples: kept draws per chain per iteration.
    :param int num_chains: chains.
    :param int warmup_steps: adapting transitions when the chains start.
    :param burn_in: ``"auto"`` (end when the parameters stop trending, tested over the last
        half of the burn-in from iteration 20 on) or a fixed number of iterations.
    :param int max_burn_in: the automatic burn-in's cap; a warning says when it is hit while
        the parameters still trend.
    :param float alpha: the decay exponent of :math:`\gamma_k = (k - K_1)^{-\alpha}` after
        the burn-in, in :math:`(\tfrac12, 1]`.
    :param float max_speedup: the most Newton may outrun EM along any direction (see
        :func:`~pyro_lvmle.gradients.newton.newton_step`).
    :param int memory: during the burn-in, the information is averaged over about this many
        iterations (afterwards, by :math:`\gamma_k` like the parameters).
    :param float max_step: the trust region's largest radius (complete-information metric;
        it starts at 1, halves when the importance estimate of the log-likelihood change is
        significantly negative, doubles after a full step that raised it).
    :param dict kernel_options: further options of :class:`~pyro_lvmle.MCMCGradient`.
    :param record_params: see :class:`~pyro_lvmle.em.Driver`.

    Metrics per step: ``gamma``, ``burn_in`` (still burning in), ``trend`` (largest
    :math:`|z|` of the trend test, ``nan`` when not tested), ``decrement`` (Newton decrement
    :math:`g^\top \tilde I^{-1} g`: twice the predicted log-likelihood increase; about the
    number of parameters at the optimum from Monte Carlo noise alone),
    ``log_likelihood_change`` (its importance-sampling estimate for the step taken),
    ``radius``, ``fraction_missing``
    (largest; EM's rate), ``num_clamped``, ``truncated``, ``accept_prob``.

    References:

    [1] Gu & Kong (1998), "A stochastic approximation algorithm with Markov chain Monte-Carlo
    method for incomplete data estimation problems", PNAS 95(13).

    [2] McCulloch (1997), "Maximum likelihood algorithms for generalized linear mixed
    models", JASA 92(437).

    [3] Louis (1982), "Finding the observed information matrix when using the EM
    algorithm", JRSS B 44(2).

    Example::

        >>> import torch, pyro_lvmle as lv
        >>> model = lv.models.LinearGaussian(dim=2)
        >>> data = model.simulate(40, params={"w": torch.tensor([1.0, -1.0])})
        >>> newton = lv.StochasticNewton(model, num_chains=4, warmup_steps=50)
        >>> history = newton.run(data, num_steps=5, progress=False)
        >>> len(history), "fraction_missing" in history.metric_names
        (5, True)
    """

    progress_metric = "decrement"

    def __init__(self, model, kernel="hmc", num_samples: int = 25, *, num_chains: int = 16,
                 warmup_steps: int = 200, burn_in="auto", max_burn_in: int = 300,
                 alpha: float = 1.0, max_speedup: float = 100.0, memory: int = 20,
                 max_step: float = 10.0,
                 kernel_options: dict | None = None, record_params=True):
        super().__init__(model, record_params=record_params)
        check_int("StochasticNewton", "num_samples", num_samples, low=2)
        check_int("StochasticNewton", "num_chains", num_chains, low=1)
        check_int("StochasticNewton", "warmup_steps", warmup_steps, low=0)
        check_int("StochasticNewton", "max_burn_in", max_burn_in, low=MIN_BURN_IN)
        if burn_in != "auto":
            check_int("StochasticNewton", "burn_in", burn_in, low=0)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) \
                or not 0.5 < alpha <= 1.0:
            raise ValueError(f"StochasticNewton: alpha must be in (0.5, 1], got {alpha!r}")
        self.max_speedup = check_positive("StochasticNewton", "max_speedup", max_speedup)
        if self.max_speedup < 1:
            raise ValueError(f"StochasticNewton: max_speedup must be >= 1 (1 is the EM "
                             f"gradient step), got {max_speedup!r}")
        self.max_step = check_positive("StochasticNewton", "max_step", max_step)
        self.memory = check_int("StochasticNewton", "memory", memory, low=1)
        kernel_options = check_kernel_options("StochasticNewton", kernel_options, {
            "num_samples": "num_samples", "warmup_steps": "warmup_steps",
            "num_chains": "num_chains"})
        self.sampler = MCMCGradient(kernel, num_samples, warmup_steps, num_chains,
                                    **kernel_options)
        self.burn_in, self.max_burn_in, self.alpha = burn_in, max_burn_in, float(alpha)
        self._averages: dict[str, torch.Tensor] | None = None
        self._trajectory: list[torch.Tensor] = []  # flat unconstrained iterates of the burn-in
        self._burn_in_end: int | None = None if burn_in == "auto" else burn_in
        self._radius = min(1.0, self.max_step)  # the trust region's radius, adapted

    def _gamma(self, iteration: int) -> float:
        if self._burn_in_end is None or iteration <= self._burn_in_end:
            return 1.0
        return float((iteration - self._burn_in_end) ** -self.alpha)

    def _step(self, args, kwargs):
        params = self.model_params(*args, **kwargs)
        leaves = list(params.values())
        draws = self.sampler.draw(self.model, args, kwargs)
        self.ranks.check_draws(draws.potential, "StochasticNewton")
        flat = draws.positions.flatten(0, 1)
        with torch.enable_grad():
            log_joint = draws.potential.log_joint(flat)
            if not torch.isfinite(log_joint).all():
                raise ValueError("StochasticNewton: log p(x, z) is not finite at the chains' "
                                 "states; check the model's parameters and data")
            ess = draws.diagnostics.get("ess", math.nan)
            moments = louis_moments(log_joint, leaves, ess if math.isfinite(ess) else None)
        gamma = self._gamma(self.iteration + 1)
        # the information is averaged during the burn-in too, over about the last
        # ``memory`` iterations: one iteration's Louis estimate is too noisy where the
        # fraction of missing information is close to one
        weight = min(1.0, max(gamma if gamma < 1 else 0.0, 1.0 / min(self.iteration + 1,
                                                                    self.memory)))
        self._averages = stochastic_approximation(
            self._averages, {"complete": moments.complete, "missing": moments.missing}, weight)
        step, change = self._move(leaves, moments.gradient, gamma, draws.potential, flat,
                                  log_joint.detach())
        trend = self._update_burn_in(leaves)
        return {"gamma": gamma, "burn_in": self._burn_in_end is None
                or self.iteration + 1 <= self._burn_in_end, "trend": trend,
                "decrement": step.decrement, "log_likelihood_change": change,
                "radius": self._radius, "fraction_missing": step.fraction_missing,
                "num_clamped": step.num_clamped, "truncated": step.truncated,
                "accept_prob": draws.diagnostics["accept_prob"]}

    def _move(self, leaves, gradient, gamma, potential, flat, before):
        """Take :func:`~pyro_lvmle.gradients.newton.trust_region_step` from the current leaves."""
        start = flatten(leaves)

        def evaluate(step):
            assign_flat(leaves, start + step)
            with torch.no_grad():
                return potential.log_joint(flat)

        out = trust_region_step(gradient, self._averages["complete"],
                                self._averages["missing"], gamma, self._radius, evaluate,
                                before, max_speedup=self.max_speedup, max_radius=self.max_step)
        self._radius = out.radius
        assign_flat(leaves, start + out.newton.step)
        return out.newton, out.change

    def _update_burn_in(self, leaves) -> float:
        """Record the iterate; end an automatic burn-in when the trend test passes."""
        if self._burn_in_end is not None:
            return math.nan
        self._burn_in_end, self._trajectory, trend = record_burn_in(
            "StochasticNewton", self._trajectory, flatten(leaves), self.iteration, self.max_burn_in)
        return trend

    def _extra_state(self) -> dict:
        return {"chains": self.sampler.state_dict(), "averages": self._averages,
                "trajectory": self._trajectory, "burn_in_end": self._burn_in_end,
                "radius": self._radius}

    def _load_extra_state(self, state: dict) -> None:
        self.sampler.load_state_dict(state["chains"])
        self._averages = state["averages"]
        self._trajectory = list(state["trajectory"])
        self._burn_in_end = state["burn_in_end"]
        self._radius = float(state["radius"])

