r"""Monte Carlo EM with an ascent-based Monte Carlo sample size (Caffo, Jank & Jones 2005).

Iteration :math:`k` draws :math:`z_1, \dots, z_m` from :math:`p(z \mid x; \theta_k)` by
Markov chains kept between iterations (warm-started, their adaptation kept), and maximizes
the Monte Carlo Q-function

.. math::

    \hat Q_k(\theta) = \frac1m \sum_{j=1}^m \log p(x, z_j; \theta)

over the model's parameters (Wei & Tanner 1990). The change
:math:`\Delta \hat Q = \hat Q_k(\theta_{k+1}) - \hat Q_k(\theta_k)` estimates the ascent of
the true Q-function; with :math:`\mathrm{se}` its standard error (from the effective sample
size of the chains), the rule is:

- if :math:`\Delta\hat Q - z_\alpha \mathrm{se} < 0` the ascent is not established: keep
  :math:`\theta_k`, add :math:`m / 3` draws, maximize again;
- converged once :math:`\Delta\hat Q + z_\gamma \mathrm{se} < C`;
- the next iteration starts with :math:`\max\big(m_{k},\ \sigma^2 (z_\alpha+z_\beta)^2 /
  \Delta\hat Q^2\big)` draws, :math:`\sigma^2 = m\,\mathrm{se}^2`.
"""

from __future__ import annotations

import math
from functools import partial
from statistics import NormalDist

import torch

from .._checks import check_bool, check_int, check_positive, check_probability
from ..gradients import MCMCGradient
from ..gradients.newton import (
    assign_flat,
    flatten,
    importance_log_ratio,
    louis_moments,
    usable_weights,
)
from ..traces.plate import site_log_probs
from .ascent import AscentDecision, AscentRule, ascent_rule
from .driver import Driver
from .kernel_options import check_kernel_options
from .m_step import check_m_step, load_optim_state, maximize, optim_state
from .newton_correction import (
    CorrectionState,
    default_newton,
    newton_correction,
    verify_speedup,
)
from .squarem import backtracked_alpha

__all__ = ["MCEM", "AscentDecision", "AscentRule", "ascent_rule"]


class MCEM(Driver):
    r"""Monte Carlo EM: an MCMC E-step and an L-BFGS (or any ``pyro.optim``) M-step, with an
    automatic Monte Carlo sample size and stopping rule.

    :param model: a Pyro model with continuous (or enumerable) latent sites.
    :param kernel: the E-step's sampler, as for :class:`~pyro_lvmle.MCMCGradient`:
        ``"hmc"``, ``"nuts"`` (Pyro's), ``"mala"``, a Pyro kernel, a step function or a sampler.
    :param int num_samples: kept draws per chain in the first E-step (the automatic rule
        grows it).
    :param m_step: ``"lbfgs"`` (default) or a ``pyro.optim`` optimizer.
    :param int m_steps: L-BFGS iterations, or optimizer steps, per M-step.
    :param int num_chains: chains (all moved at once by the batched kernels).
    :param int warmup_steps: adapting transitions when the chains start.
    :param int burn_in: transitions discarded at the start of each later E-step (the target
        moved with the parameters).
    :param int thinning: transitions between kept draws.
    :param bool auto: the ascent-based rule (sample size growth and stopping); ``False`` keeps
        ``num_samples`` and never stops early.
    :param float alpha: :math:`z_\alpha` is its upper quantile; the risk of accepting a step
        that is not an ascent (0.25, NIMBLE's default).
    :param float beta: risk of too small a next sample (0.25).
    :param float gamma: the stopping rule's risk (0.05).
    :param float tol: :math:`C`, the Q-increase below which the run has converged (0.001).
    :param int max_num_samples: cap on kept draws per chain per E-step.
    :param newton: follow each M-step by Louis' Newton correction
        (:func:`~pyro_lvmle.em.newton_correction.newton_correction`, moments from the same
        draws, averaged over iterations), whose rate does not depend on the fraction of
        missing information; the stopping rule then also needs the step's estimated
        log-likelihood change below ``tol`` (unless the correction was held to at most
        twice EM's move), and not while the verified speedup still climbs below what EM's
        slowest direction needs (:math:`1 / (1 - \lambda)` for the estimated fraction of
        missing information :math:`\lambda`). How far it
        may outrun EM is adapted: each correction is judged by the next E-step's draws, which
        its step was not fitted to (:func:`~pyro_lvmle.em.newton_correction.verify_speedup`),
        so that where the likelihood is flat along some direction (PPCA's rotation) the
        M-step's Monte Carlo noise is not multiplied. ``None`` (default): on in one process
        for models with at most
        :data:`~pyro_lvmle.em.newton_correction.NEWTON_MAX_PARAMS` parameter entries (Louis'
        information costs a backward pass per entry), off otherwise. ``False``: plain MCEM,
        which creeps at the fraction of missing information per iteration, and whose
        Q-increase is then small far from the maximum (see "When EM is slow").
    :param float max_speedup: the most the correction may outrun EM along any direction.
    :param str acceleration: ``None`` or ``"squarem"``: instead of the Newton correction, after
        every second M-step, SQUAREM's jump (Varadhan & Roland 2008,
        :mod:`pyro_lvmle.em.squarem`) from the last three iterates, backtracked until the
        importance estimate of its log-likelihood from the iteration's draws is not
        significantly below the M-step's point (so the Monte Carlo estimate never says it
        decreased). One process only. The jump's length comes from the second difference of
        the iterates, which the M-steps' Monte Carlo noise dominates where EM's rate is near
        one: there it rarely jumps (see "When EM is slow").
    :param dict kernel_options: further options of :class:`~pyro_lvmle.MCMCGradient`
        (``step_size``, ``num_steps``, ``target_accept``, ``adapt_mass``, ...).
    :param record_params: see :class:`~pyro_lvmle.em.Driver`.
    :param ranks: a :class:`~pyro_lvmle.em.ranks.RankSum` for a data-parallel run: each rank
        keeps the chains of its shard; the Q-function's value and gradient in the M-step and
        the per-draw Q-increases behind the ascent rule (weighted by the rank's share of the
        data) are summed across ranks, so every rank takes the same M-step and the same
        decision. Not with ``newton``.

    Metrics per step: ``q_increase`` and ``q_increase_se`` (:math:`\Delta\hat Q` and its
    standard error), ``num_samples`` (draws used, all chains), ``accept_prob``, ``ess``
    (effective sample size of :math:`\Delta\hat Q`'s terms), ``converged``; with ``newton``:
    ``newton_accepted``, ``fraction_missing`` (EM's rate along its slowest direction),
    ``log_likelihood_change`` (importance estimate for the step), ``speedup`` (the most
    the correction could outrun EM) and ``correction_gain`` (these draws' estimate of what
    the last correction gained over its M-step's point, ``nan`` if there was none); with
    ``acceleration``: ``squarem_alpha`` (``-1``: no jump this step).

    References:

    [1] Wei & Tanner (1990), "A Monte Carlo implementation of the EM algorithm and the poor
    man's data augmentation algorithms", JASA 85(411).

    [2] Caffo, Jank & Jones (2005), "Ascent-based Monte Carlo expectation-maximization", JRSS B
    67(2).

    Example::

        >>> import torch, pyro_lvmle as lv
        >>> model = lv.models.LinearGaussian(dim=2)
        >>> data = model.simulate(40, params={"w": torch.tensor([1.0, -1.0])})
        >>> mcem = lv.MCEM(model, "hmc", num_samples=20, num_chains=4, warmup_steps=50)
        >>> history = mcem.run(data, num_steps=3, progress=False)
        >>> len(history), "q_increase" in history.metric_names
        (3, True)
    """

    progress_metric = "q_increase"
    #: its iterates fluctuate around the optimum once there: the end-of-run diagnosis tests
    #: them for a trend
    stationary_iterates = True

    def __init__(self, model, kernel="hmc", num_samples: int = 50, m_step="lbfgs", *,
                 m_steps: int = 100, num_chains: int = 4, warmup_steps: int = 200,
                 burn_in: int = 0, thinning: int = 1, auto: bool = True, alpha: float = 0.25,
                 beta: float = 0.25, gamma: float = 0.05, tol: float = 1e-3,
                 max_num_samples: int = 100_000, newton: bool | None = None,
                 max_speedup: float = 100.0, acceleration: str | None = None,
                 kernel_options: dict | None = None,
                 record_params=True, ranks=None):
        super().__init__(model, record_params=record_params, ranks=ranks)
        if newton is not None and not isinstance(newton, bool):
            raise TypeError(f"MCEM: newton must be True, False or None (on where it is "
                            f"affordable), got {newton!r}")
        if newton and self.ranks.distributed:
            raise ValueError("MCEM: the Newton correction is not data-parallel; use "
                             "newton=False with ranks")
        if acceleration not in (None, "squarem"):
            raise ValueError(f"MCEM: acceleration must be None or 'squarem', got "
                             f"{acceleration!r}")
        if acceleration and (newton or self.ranks.distributed):
            raise ValueError("MCEM: acceleration='squarem' replaces the Newton correction and "
                             "is not data-parallel; pass newton=False (or leave it None), "
                             "without ranks")
        if acceleration:
            newton = False
        self.acceleration = acceleration
        self._anchors: list[torch.Tensor] = []  # SQUAREM: the iterates since its last jump
        self.max_speedup = check_positive("MCEM", "max_speedup", max_speedup)
        if self.max_speedup < 1:
            raise ValueError(f"MCEM: max_speedup must be >= 1, got {max_speedup!r}")
        self.newton = newton
        self._correction = CorrectionState()
        check_m_step(m_step, m_steps, "MCEM")
        check_int("MCEM", "num_samples", num_samples, low=1)
        check_int("MCEM", "burn_in", burn_in, low=0)
        check_int("MCEM", "max_num_samples", max_num_samples, low=num_samples)
        for name, value in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
            check_probability("MCEM", name, value, high=0.5)
        tol = check_positive("MCEM", "tol", tol)  # tol=inf would stop after one step
        check_bool("MCEM", "auto", auto)
        kernel_options = check_kernel_options("MCEM", kernel_options, {
            "num_samples": "num_samples", "warmup_steps": "warmup_steps",
            "num_chains": "num_chains", "thinning": "thinning"})
        self.sampler = MCMCGradient(kernel, num_samples, warmup_steps, num_chains,
                                    thinning=thinning, **kernel_options)
        self.num_samples = num_samples
        self.m_step, self.m_steps = m_step, m_steps
        self.burn_in, self.auto, self.tol = burn_in, bool(auto), float(tol)
        self.max_num_samples = max_num_samples
        quantile = NormalDist().inv_cdf
        self._rule = AscentRule(quantile(1 - alpha), quantile(1 - beta), quantile(1 - gamma),
                                self.tol, max_num_samples)

    def _draw(self, num_samples, args, kwargs):
        """Advance the chains; kept draws ``(C, S, D)``, the potential, the acceptance."""
        draws = self.sampler.draw(self.model, args, kwargs, num_samples)
        self.ranks.check_draws(draws.potential, "MCEM")
        if num_samples > 1 and bool((draws.positions == draws.positions[:, :1]).all()):
            _refuse_nonfinite(draws.potential, draws.positions[:, -1])
            raise ValueError(
                f"MCEM: the chains did not move in this E-step (acceptance rate "
                f"{draws.diagnostics['accept_prob']:.3g}); the Monte Carlo Q-function would "
                "rest on one point per chain. Lengthen warmup_steps, or lower "
                "kernel_options['step_size']")
        return draws.potential, draws.positions, draws.diagnostics["accept_prob"]

    def _step(self, args, kwargs):
        params = self.model_params(*args, **kwargs)
        if self.newton is None:
            self.newton = default_newton(params.values(), self.ranks)
        start = {n: p.detach().clone() for n, p in params.items()}
        share = self.ranks.share(self.model, args, kwargs)  # of the data: 1 in one process
        if self.burn_in and self.iteration > 0:
            self._draw(self.burn_in, args, kwargs)
        potential, draws, accept = self._draw(self.num_samples, args, kwargs)
        accept = [accept]
        while True:
            flat = draws.reshape(-1, draws.shape[-1])
            with torch.no_grad():
                before = potential.log_joint(flat)
            maximize(partial(_mean_log_joint, potential, flat, share), params, self.m_step,
                     m_steps=self.m_steps, where="MCEM M-step", ranks=self.ranks,
                     keep_best=True)
            with torch.no_grad():
                after = potential.log_joint(flat)
            (deltas,) = self.ranks.sum([share * (after - before).reshape(draws.shape[:2])])
            increase, se, ess = _mean_and_stderr(deltas)
            size = draws.shape[1]
            decision = ascent_rule(increase, se, size, self.num_samples, self._rule)
            if not self.auto or decision.accept or size >= self.max_num_samples:
                break
            # not an established ascent: back to the start, more draws from the same target
            with torch.no_grad():
                for name, leaf in params.items():
                    leaf.copy_(start[name])
            extra = min(decision.extra, self.max_num_samples - size)
            potential, more, more_accept = self._draw(extra, args, kwargs)
            accept.append(more_accept)
            draws = torch.cat([draws, more], 1)
        extra, paid = {}, False
        if self.newton:
            extra, paid = self._correct(params, start, potential, flat)
        if self.acceleration:
            extra = self._squarem(params, start, potential, flat, before)
        if self.auto:
            # with the correction, EM's own Q-increase is small far from the maximum when
            # the fraction of missing information is large, and so is a correction held to
            # a few EM moves: while the verified speedup still climbs (these draws found the
            # last correction paid, and its cap is not reached) the run goes on; and this
            # correction's estimated change must be small, unless it was held to at most
            # twice EM's move (where EM's own rule judges)
            # (only while the cap holds the correction back: below the 1 / (1 - fraction)
            # that EM's slowest direction needs; a tiny model with little missing
            # information otherwise waited for its cap, growing the draws to 58,770)
            climbing = paid and extra["speedup"] < min(
                self.max_speedup, _needed_speedup(extra["fraction_missing"]))
            self.converged = decision.converged and (not self.newton or (
                not climbing and (extra["speedup"] <= 2.0
                                  or abs(extra["log_likelihood_change"]) < self.tol)))
            self.num_samples = decision.next_num_samples
        return {"q_increase": increase, "q_increase_se": se, "ess": ess,
                "num_samples": draws.shape[0] * draws.shape[1],
                "accept_prob": self.ranks.mean([sum(accept) / len(accept)])[0],
                "converged": self.converged,
                **extra}

    def _correct(self, params, start, potential, flat) -> tuple[dict, bool]:
        """Louis' Newton correction of the M-step (moments at the draws' parameters), after
        judging the last one with these draws."""
        leaves = list(params.values())
        theta_em, theta_k = flatten(leaves), flatten(start.values())
        at_em = None
        if self._correction.em_point is not None:
            assign_flat(leaves, self._correction.em_point)
            with torch.no_grad():
                at_em = potential.log_joint(flat)
        assign_flat(leaves, theta_k)
        with torch.enable_grad():
            log_joints = potential.log_joint(flat)
            moments = louis_moments(log_joints, leaves)
        assign_flat(leaves, theta_em)
        self._correction, paid, gain = verify_speedup(
            self._correction, log_joints.detach(), at_em, self.max_speedup)
        speedup = self._correction.speedup
        self._correction, extra = newton_correction(
            self._correction, leaves, theta_k, moments, 1.0,
            lambda: potential.log_joint(flat), log_joints.detach(),
            max_speedup=self.max_speedup)
        return {**extra, "speedup": speedup, "correction_gain": gain}, paid

    def _squarem(self, params, start, potential, flat, before) -> dict:
        """SQUAREM on MCEM's map: after every second M-step, the S3 jump from the last three
        iterates, backtracked until the importance estimate from this E-step's draws says it
        is not significantly below the M-step's point."""
        leaves = list(params.values())
        theta_k, theta_next = flatten(start.values()), flatten(leaves)
        if not self._anchors or not torch.equal(self._anchors[-1], theta_k):
            self._anchors = [theta_k]  # the first step
        self._anchors.append(theta_next)
        alpha = -1.0
        if len(self._anchors) == 3:
            with torch.no_grad():
                at_em = potential.log_joint(flat)  # leaves at theta_2, this M-step's point
            em_change = importance_log_ratio(before, at_em)[0]

            def accept(point):
                assign_flat(leaves, point)
                with torch.no_grad():
                    after = potential.log_joint(flat)
                if not (torch.isfinite(after).all() and usable_weights(before, after)):
                    return False
                change, se = importance_log_ratio(before, after)
                return change - em_change >= -2 * se

            alpha = backtracked_alpha(*self._anchors, accept)
            if alpha == -1.0:
                assign_flat(leaves, theta_next)
            self._anchors = [flatten(leaves)]
        return {"squarem_alpha": alpha}

    def _extra_state(self) -> dict:
        state = {"num_samples": self.num_samples, "chains": self.sampler.state_dict(),
                 "correction": self._correction._asdict(), "anchors": self._anchors}
        if self.m_step != "lbfgs":
            state["optim"] = optim_state(self.m_step)
        return state

    def _load_extra_state(self, state: dict) -> None:
        self.num_samples = int(state["num_samples"])
        self._anchors = list(state.get("anchors", []))
        self._correction = CorrectionState(**state["correction"])
        self.sampler.load_state_dict(state["chains"])
        if "optim" in state:
            load_optim_state(self.m_step, state["optim"])


def _needed_speedup(fraction_missing: float) -> float:
    """How far a Newton step outruns EM along its slowest direction, ``1 / (1 - fraction)``:
    infinite where the fraction is estimated at 1 or more (or is not finite)."""
    fraction = float(fraction_missing)
    return 1.0 / (1.0 - fraction) if math.isfinite(fraction) and fraction < 1.0 else math.inf


def _refuse_nonfinite(potential, position):
    """Name the sites whose log density is not finite at the chains' states (NaN data, a
    parameter at a boundary), where that is why the chains could not move."""
    with torch.no_grad():
        log_probs = site_log_probs(potential, position)
    bad = [name for name, value in log_probs.items()
           if torch.is_tensor(value) and not bool(torch.isfinite(value).all())]
    if bad:
        raise ValueError(
            f"MCEM: the log density of sites {bad} is not finite at the chains' states, so no "
            "move can be accepted; check the data for NaN or inf and the parameters' values")


def _mean_log_joint(potential, flat, share=1.0):
    return share * potential.log_joint(flat).mean()


def _mean_and_stderr(values: torch.Tensor) -> tuple[float, float, float]:
    """Mean, standard error and effective sample size of ``(chains, draws)`` values (Pyro's
    multi-chain ESS; plain i.i.d. error below 4 draws per chain)."""
    from pyro.ops.stats import effective_sample_size

    n = values.numel()
    mean = values.mean().item()
    sd = values.std().item() if n > 1 else 0.0
    ess = float(n)
    if values.shape[1] >= 4 and sd > 0:
        ess = float(effective_sample_size(values, chain_dim=0, sample_dim=1))
        ess = min(max(ess, 1.0), float(n)) if math.isfinite(ess) else float(n)
    return mean, sd / math.sqrt(ess), ess
