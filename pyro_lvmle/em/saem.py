r"""Stochastic-approximation EM (Delyon, Lavielle & Moulines 1999) with MCMC draws (Kuhn &
Lavielle 2004).

Iteration :math:`k` moves the persistent chains a few transitions with the current
parameters, giving draws :math:`z_k` (one per chain), and updates a stochastic approximation
of the Q-function, then maximizes it:

.. math::

    \hat Q_k(\theta) = \hat Q_{k-1}(\theta)
        + \gamma_k \big(\log p(x, z_k; \theta) - \hat Q_{k-1}(\theta)\big), \qquad
    \theta_{k+1} = \arg\max_\theta \hat Q_k(\theta).

Generic form: :math:`\hat Q_k` is kept as the weighted sum of the log joints of every past
draw whose weight :math:`\gamma_j \prod_{i > j} (1 - \gamma_i)` is not negligible, and
maximized by L-BFGS warm-started at :math:`\theta_k`. With :math:`\gamma_k = 1/k` every
draw keeps a weight, so the memory is bounded: past ``max_memory`` rows it is halved by
systematic resampling in proportion to the weights, each kept row carrying an equal share of
the total (in expectation the same :math:`\hat Q_k`; with equal weights, a thinning of the
past draws). Fast path, for a complete-data
likelihood in the exponential family: the user gives the sufficient statistics
:math:`S(z)` and the closed-form maximizer; the driver keeps
:math:`s_k = s_{k-1} + \gamma_k (S(z_k) - s_{k-1})` and sets
:math:`\theta_{k+1} = \hat\theta(s_k)`.

**Newton steps** (generic form, the default): after the burn-in the decreasing steps are
damped stochastic Newton steps on the log-likelihood
(:func:`~pyro_lvmle.em.newton_correction.damped_newton`, Gu & Kong 1998) from the same
chains, whose rate does not depend on the fraction of missing information (see "When EM is
slow").
"""

from __future__ import annotations

import math

import torch

from .._checks import check_callable, check_int, check_positive, check_probability
from ..gradients import MCMCGradient
from ..gradients.newton import assign_flat, flatten
from .burn_in import MIN_BURN_IN, record_burn_in
from .driver import Driver
from .kernel_options import check_kernel_options
from .m_step import maximize
from .newton_correction import averaged_moments, damped_newton, default_newton
from .schedules import saem_step_size, stochastic_approximation

__all__ = ["SAEM", "resample", "stochastic_approximation", "update_memory"]

#: with Newton steps the burn-in needs only to come near: the damped Newton steps remove the
#: rest at the rate 1/j (stochastic EM's iterates wander slowly where the fraction of missing
#: information is large, so a trend test on them passes late)
NEWTON_MAX_BURN_IN = 150


class SAEM(Driver):
    r"""Stochastic-approximation EM for any Pyro model with continuous (or enumerable)
    latent sites, with an optional closed-form fast path.

    :param model: the Pyro model.
    :param kernel: the sampler, as for :class:`~pyro_lvmle.MCMCGradient` (``"hmc"``,
        ``"mala"``, ``"nuts"``, a Pyro kernel, a step function or a sampler).
    :param burn_in: iterations with :math:`\gamma = 1` (saemix's :math:`K_1`), or ``"auto"``
        (default): the burn-in ends once the parameters stop trending
        (:func:`~pyro_lvmle.em.burn_in.burn_in_decision`, tested from ``min_burn_in`` on over
        the last half of the burn-in, as Monolix's automatic stopping does), at the latest
        after ``max_burn_in`` iterations (with a warning if they still trend then, unless
        Newton steps follow, which remove the rest).
    :param step_size: the decay exponent :math:`\alpha \in (\tfrac12, 1]` of
        :math:`\gamma_k = (k - K_1)^{-\alpha}` after the burn-in, or any callable
        ``iteration -> gamma`` (see :class:`~pyro_lvmle.em.saem_step_size`).
    :param int num_chains: chains, each a full set of latents (several draws per datum and
        iteration); 128 by default: the batched kernels move them all at once, and Louis'
        moments need many draws per iteration.
    :param int num_transitions: sampler transitions per iteration.
    :param int warmup_steps: adapting transitions when the chains start.
    :param statistics: fast path: ``statistics(samples, *args, **kwargs) -> dict`` of
        sufficient statistics with a leading dimension over the draws (``samples`` maps each
        latent site to its draws ``(num_chains, *site shape)``; the parameters in Pyro's
        store are the current ones). Needs ``m_step``.
    :param m_step: fast path: ``m_step(stats, *args, **kwargs) -> {param name: constrained
        value}``, the maximizer of the complete-data likelihood given averaged statistics.
    :param int m_steps: L-BFGS iterations of the generic M-step.
    :param anneal: names of variance parameters to anneal (simulated annealing, as saemix and
        Monolix do): during the first ``anneal_steps`` iterations, a new value may shrink to
        no less than ``anneal_rate`` times the previous one; this keeps the chains exploring
        while the estimates are still far off.
    :param float anneal_rate: the shrinkage bound (0.95 by default; saemix uses 0.95-0.97).
    :param int anneal_steps: iterations with annealing; defaults to the burn-in.
    :param float min_weight: generic form: draws whose weight falls below this are dropped;
        in :math:`[0, 1/\text{num\_chains})` (a draw's weight is at most ``1 / num_chains``,
        so a larger value would drop every past draw and SAEM would never average).
    :param int max_memory: generic form: the most draws kept in :math:`\hat Q_k`; when
        exceeded, halved by systematic resampling (unbiased for :math:`\hat Q_k`). Bounds
        the M-step's cost, at the price of a Monte Carlo error that stops shrinking at about
        that of ``max_memory / 2`` draws spread over the whole run. ``None``: no bound.
    :param int min_burn_in: the automatic burn-in's shortest length (100, the former fixed
        default: SAEM's burn-in iterates are noisy, and a trend test over a short window
        misses a slow contraction).
    :param int max_burn_in: the automatic burn-in's cap (default 150 with Newton steps, 500
        without).
    :param newton: after the burn-in, take damped stochastic Newton steps
        (:func:`~pyro_lvmle.em.newton_correction.damped_newton`: Fisher's gradient from the
        iteration's draws, Louis' information averaged, from the burn-in's last iterations on)
        instead of SAEM's own decreasing steps, whose rate is EM's: where the fraction of
        missing information :math:`\mu` is close to one they freeze the estimate short of
        the maximum (:math:`\gamma_k = 1/j` removes the error only like
        :math:`j^{-(1-\mu)}`). ``None`` (default): on for the generic form in one process
        when the parameters have at most
        :data:`~pyro_lvmle.em.newton_correction.NEWTON_MAX_PARAMS` entries (Louis' information
        costs a backward pass per entry); off for the fast path (which has none), with
        data-parallel ``ranks`` (not reduced across ranks yet) and for larger models.
    :param float max_speedup: the most a Newton step may outrun the EM-gradient step.
    :param dict kernel_options: further options of :class:`~pyro_lvmle.MCMCGradient`.
    :param record_params: see :class:`~pyro_lvmle.em.Driver`.
    :param ranks: a :class:`~pyro_lvmle.em.ranks.RankSum` for a data-parallel run: each rank
        keeps the chains of its shard; the fast path's statistics (sums over the rank's data,
        then added across ranks; ``m_step`` gets the sums and this rank's arguments), or the
        generic Q-function's value and gradient (weighted by the rank's share of the data), and
        the metrics are reduced, so every rank takes the same M-step.

    Metrics per step: ``gamma``, ``log_joint`` (mean :math:`\log p(x, z_k; \theta_k)` of the
    new draws), ``accept_prob``, ``memory`` (draws in :math:`\hat Q_k`, generic form),
    ``trend`` (the burn-in's trend statistic, ``nan`` once it ended); with ``newton``:
    ``fraction_missing`` (the largest, from the averaged moments) and ``decrement``. Without
    Newton steps SAEM's rate is EM's: where the fraction of missing information is close to
    one (a non-centered random effect on a population mean) it creeps, and its decreasing
    steps freeze it short of the maximum (see "When EM is slow").

    References:

    [1] Delyon, Lavielle & Moulines (1999), "Convergence of a stochastic approximation version
    of the EM algorithm", Annals of Statistics 27(1).

    [2] Kuhn & Lavielle (2004), "Coupling a stochastic approximation version of EM with an
    MCMC procedure", ESAIM: Probability and Statistics 8.

    [3] Comets, Lavenu & Lavielle (2017), "Parameter estimation in nonlinear mixed effect
    models using saemix, an R implementation of the SAEM algorithm", J. Stat. Softw. 80(3).

    [4] Gu & Kong (1998), "A stochastic approximation algorithm with Markov chain Monte-Carlo
    method for incomplete data estimation problems", PNAS 95(13).

    Example::

        >>> import torch, pyro_lvmle as lv
        >>> model = lv.models.LinearGaussian(dim=2)
        >>> data = model.simulate(40, params={"w": torch.tensor([1.0, -1.0])})
        >>> saem = lv.SAEM(model, "hmc", burn_in=5, num_chains=4, warmup_steps=50)
        >>> history = saem.run(data, num_steps=10, progress=False)
        >>> history["gamma"][-1]
        0.2
    """

    progress_metric = "log_joint"

    def __init__(self, model, kernel="hmc", *, burn_in="auto", step_size=1.0,
                 num_chains: int = 128, num_transitions: int = 1, warmup_steps: int = 200,
                 statistics=None, m_step=None, m_steps: int = 20, anneal=(),
                 anneal_rate: float = 0.95, anneal_steps: int | None = None,
                 min_weight: float = 1e-8, max_memory: int | None = 10_000,
                 min_burn_in: int = 100, max_burn_in: int | None = None, newton=None,
                 max_speedup: float = 100.0, kernel_options: dict | None = None,
                 record_params=True, ranks=None):
        super().__init__(model, record_params=record_params, ranks=ranks)
        if newton is not None and not isinstance(newton, bool):
            raise TypeError(f"SAEM: newton must be True, False or None (the generic form's "
                            f"default), got {newton!r}")
        if newton and statistics is not None:
            raise ValueError("SAEM: the fast path (statistics, m_step) has no Newton steps; "
                             "drop statistics/m_step, or newton=True")
        if newton and self.ranks.distributed:
            raise ValueError("SAEM: Newton steps are not data-parallel yet (their Louis "
                             "moments are not reduced across ranks); pass newton=False with "
                             "ranks")
        # None: decided at the first step, where the parameters are known (default_newton);
        # the fast path and data-parallel runs take SAEM's own decreasing steps
        self.newton = False if statistics is not None else newton
        check_int("SAEM", "min_burn_in", min_burn_in, low=MIN_BURN_IN)
        if max_burn_in is not None:
            check_int("SAEM", "max_burn_in", max_burn_in, low=min_burn_in)
        self.max_speedup = check_positive("SAEM", "max_speedup", max_speedup)
        if self.max_speedup < 1:
            raise ValueError(f"SAEM: max_speedup must be >= 1, got {max_speedup!r}")
        self.auto_burn_in = burn_in == "auto"
        if not self.auto_burn_in:
            check_int("SAEM", "burn_in", burn_in, low=0)
        self.min_burn_in, self.max_burn_in = min_burn_in, max_burn_in
        check_int("SAEM", "num_chains", num_chains, low=1)
        check_int("SAEM", "num_transitions", num_transitions, low=1)
        check_int("SAEM", "warmup_steps", warmup_steps, low=0)
        check_int("SAEM", "m_steps", m_steps, low=1)
        if callable(step_size):
            # a schedule sets the burn-in itself; burn_in then only bounds the annealing
            # (min_burn_in, the former fixed default, if "auto")
            if self.auto_burn_in:
                self.auto_burn_in, burn_in = False, min_burn_in
            self.step_size = step_size
        elif isinstance(step_size, (int, float)) and not isinstance(step_size, bool):
            # with burn_in="auto" the schedule is built when the burn-in ends
            self.step_size = saem_step_size(0 if self.auto_burn_in else burn_in,
                                            float(step_size))
        else:
            raise TypeError(f"SAEM: step_size must be an exponent in (0.5, 1] or a callable "
                            f"iteration -> gamma, got {step_size!r}")
        if (statistics is None) != (m_step is None):
            raise ValueError("SAEM: the fast path needs both statistics and m_step (or "
                             "neither, for the generic form)")
        if statistics is not None:
            check_callable("SAEM", "statistics", statistics,
                           "a callable statistics(samples, *args, **kwargs) -> dict")
            check_callable("SAEM", "m_step", m_step,
                           "a callable m_step(stats, *args, **kwargs) -> dict of values")
        check_probability("SAEM", "anneal_rate", anneal_rate, high=1.0)
        if isinstance(anneal, str):
            anneal = (anneal,)
        if not isinstance(anneal, (list, tuple)) or not all(isinstance(n, str) for n in anneal):
            raise TypeError(f"SAEM: anneal must be a parameter name or a list of names, got "
                            f"{anneal!r}")
        if anneal_steps is not None:
            check_int("SAEM", "anneal_steps", anneal_steps, low=0)
        # every past draw's weight is below 1 / num_chains: from there on, nothing is kept
        check_probability("SAEM", "min_weight", min_weight, high=1.0 / num_chains,
                          closed_low=True)
        kernel_options = check_kernel_options("SAEM", kernel_options, {
            "num_samples": "num_chains", "warmup_steps": "warmup_steps",
            "num_chains": "num_chains", "thinning": "num_transitions"})
        self.sampler = MCMCGradient(kernel, 1, warmup_steps, num_chains,
                                    thinning=num_transitions, **kernel_options)
        self.burn_in = burn_in
        self.statistics, self.closed_form = statistics, m_step
        self.m_steps = m_steps
        self.anneal, self.anneal_rate = tuple(anneal), float(anneal_rate)
        self.anneal_steps = anneal_steps  # None: during the burn-in
        self._burn_in_end: int | None = None if self.auto_burn_in else burn_in
        self._trajectory: list[torch.Tensor] = []
        self.min_weight = float(min_weight)
        if max_memory is not None:
            check_int("SAEM", "max_memory", max_memory, low=2 * num_chains)
        self.max_memory = max_memory
        self._stats: dict[str, torch.Tensor] | None = None
        self._memory: torch.Tensor | None = None  # (rows, D) draws in Q_k
        self._weights: torch.Tensor | None = None  # (rows,) their weights, summing to 1
        self._info: dict[str, torch.Tensor] | None = None  # Louis' moments, averaged
        self._info_count = 0

    def _step(self, args, kwargs):
        params = self.model_params(*args, **kwargs)
        if self.newton is None:
            self.newton = default_newton(params.values(), self.ranks)
        if self.max_burn_in is None:  # never below the shortest burn-in asked for
            self.max_burn_in = max(NEWTON_MAX_BURN_IN if self.newton else 500,
                                   self.min_burn_in)
        unknown = [n for n in self.anneal if n not in params]
        if unknown:
            raise ValueError(f"SAEM: anneal names {unknown} are not parameters of the model "
                             f"({list(params)})")
        gamma = self._gamma(self.iteration + 1)
        if not 0 < gamma <= 1:
            raise ValueError(f"SAEM: step_size gave gamma = {gamma} at iteration "
                             f"{self.iteration + 1}; it must be in (0, 1]")
        share = self.ranks.share(self.model, args, kwargs)  # of the data: 1 in one process
        potential, positions, diagnostics = self.sampler.draw(self.model, args, kwargs)
        draws = positions.flatten(0, 1)
        self.ranks.check_draws(potential, "SAEM")
        with torch.no_grad():
            (log_joint,) = self.ranks.sum([share * potential.log_joint(draws).mean()])
        before = self.constrained_params()
        if self.statistics is not None:
            new = self.statistics(dict(self.sampler.samples), *args, **kwargs)
            means = dict(zip(new, self.ranks.sum([v.mean(0) for v in new.values()]),
                             strict=True))
            self._stats = stochastic_approximation(self._stats, means, gamma)
            values = self.closed_form(dict(self._stats), *args, **kwargs)
            self.set_params(values)
            num_kept, extra = 0, {}
        else:
            num_kept, extra = self._generic_step(params, potential, draws, gamma, share)
        annealing = self._in_burn_in(self.iteration + 1) if self.anneal_steps is None \
            else self.iteration < self.anneal_steps
        if self.anneal and annealing:
            now = self.constrained_params()
            self.set_params({n: torch.maximum(now[n], self.anneal_rate * before[n])
                             for n in self.anneal})
        trend = self._update_burn_in(params.values())
        return {"gamma": gamma, "log_joint": log_joint.item(),
                "accept_prob": self.ranks.mean([diagnostics["accept_prob"]])[0],
                "memory": num_kept, "trend": trend, **extra}

    def _generic_step(self, params, potential, draws, gamma, share):
        r"""The generic form: update the weighted draws of :math:`\hat Q_k` and maximize it;
        with ``newton``, average Louis' moments and, once the steps decrease, take
        :func:`~pyro_lvmle.em.newton_correction.damped_newton` steps instead."""
        leaves = list(params.values())
        extra = {}
        if self.newton:
            self._info_count += 1
            moments, self._info = averaged_moments(self._info, potential.log_joint, draws,
                                                   leaves, gamma, self._info_count)
            step = damped_newton(moments.gradient, self._info["complete"],
                                 self._info["missing"], gamma, max_speedup=self.max_speedup)
            extra = {"fraction_missing": step.fraction_missing, "decrement": step.decrement}
            if gamma < 1:
                assign_flat(leaves, flatten(leaves) + step.step)
                return 0 if self._memory is None else len(self._memory), extra
        self._memory, self._weights = update_memory(
            self._memory, self._weights, draws, gamma, min_weight=self.min_weight,
            max_memory=self.max_memory)
        memory, weights = self._memory, self._weights
        maximize(lambda: share * (weights * potential.log_joint(memory)).sum(), params,
                 "lbfgs", m_steps=self.m_steps, where="SAEM M-step", ranks=self.ranks)
        return len(memory), extra

    def _in_burn_in(self, iteration: int) -> bool:
        return self._burn_in_end is None or iteration <= self._burn_in_end

    def _gamma(self, iteration: int) -> float:
        if not self.auto_burn_in:
            return float(self.step_size(iteration))
        if self._in_burn_in(iteration):
            return 1.0
        return float(self.step_size(iteration - self._burn_in_end))

    def _update_burn_in(self, leaves) -> float:
        """Record the iterate; end an automatic burn-in when the trend test passes."""
        if self._burn_in_end is not None:
            return math.nan
        self._burn_in_end, self._trajectory, trend = record_burn_in(
            "SAEM", self._trajectory, flatten(leaves), self.iteration, self.max_burn_in,
            warn=not self.newton,
            min_burn_in=self.min_burn_in)
        return trend

    def _extra_state(self) -> dict:
        return {"chains": self.sampler.state_dict(), "stats": self._stats,
                "memory": self._memory, "weights": self._weights, "info": self._info,
                "info_count": self._info_count,
                "burn_in_end": self._burn_in_end, "trajectory": self._trajectory}

    def _load_extra_state(self, state: dict) -> None:
        self.sampler.load_state_dict(state["chains"])
        self._stats, self._memory, self._weights = (state["stats"], state["memory"],
                                                    state["weights"])
        self._info = state["info"]
        self._info_count = int(state["info_count"])
        self._burn_in_end = state["burn_in_end"]
        self._trajectory = list(state["trajectory"])


def resample(rows: torch.Tensor, weights: torch.Tensor, size: int):
    """``size`` of the ``rows`` drawn by systematic resampling with probabilities in proportion
    to ``weights``, each with weight ``weights.sum() / size``: row ``i`` is drawn
    ``size * w_i / sum(w)`` times in expectation, so any weighted sum over the rows keeps its
    expectation.

    :param torch.Tensor rows: ``(R, D)``.
    :param torch.Tensor weights: ``(R,)``, non-negative, not all zero.
    :param int size: rows to keep.
    :returns: the kept rows ``(size, D)`` and their weights ``(size,)``.
    """
    total = weights.sum()
    cdf = weights.cumsum(0) / total
    u = (torch.rand((), dtype=weights.dtype, device=weights.device)
         + torch.arange(size, dtype=weights.dtype, device=weights.device)) / size
    index = torch.searchsorted(cdf, u).clamp(max=len(weights) - 1)
    return rows[index], (total / size).expand(size).clone()


def update_memory(memory: torch.Tensor | None, weights: torch.Tensor | None,
                  draws: torch.Tensor, gamma: float, *, min_weight: float,
                  max_memory: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The weighted draws behind the generic SAEM Q-function after iteration ``k``:
    old weights times :math:`1 - \gamma_k`, the new draws' weight :math:`\gamma_k` shared
    among them; draws below ``min_weight`` dropped; past ``max_memory`` rows, halved by
    :func:`resample`. The weights keep summing to one.

    :param torch.Tensor memory: ``(R, D)`` past draws (``None`` at the start).
    :param torch.Tensor weights: ``(R,)`` their weights.
    :param torch.Tensor draws: ``(C, D)`` the new draws.
    :param float gamma: :math:`\gamma_k`.
    :param float min_weight: the smallest weight kept.
    :param int max_memory: the most rows kept, or ``None``.

    Example::

        >>> import torch
        >>> from pyro_lvmle.em.saem import update_memory
        >>> memory, weights = update_memory(None, None, torch.zeros(2, 1), 1.0, min_weight=0,
        ...                                 max_memory=None)
        >>> update_memory(memory, weights, torch.ones(2, 1), 0.5, min_weight=0,
        ...               max_memory=None)[1]
        tensor([0.2500, 0.2500, 0.2500, 0.2500])
    """
    new_weights = draws.new_full((draws.shape[0],), gamma / draws.shape[0])
    if memory is None or gamma == 1.0:
        return draws, new_weights
    keep = weights * (1 - gamma) >= min_weight
    memory = torch.cat([memory[keep], draws])
    weights = torch.cat([weights[keep] * (1 - gamma), new_weights])
    if max_memory is not None and len(memory) > max_memory:
        memory, weights = resample(memory, weights, max_memory // 2)
    return memory, weights
