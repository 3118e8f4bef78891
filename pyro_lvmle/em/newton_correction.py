r"""The Newton correction of an M-step (Louis 1982), for MCEM (a pure function on a
NamedTuple state).

EM's map :math:`M` has Jacobian :math:`J = I_c^{-1} I_m` at the optimum (the fraction of
missing information), so the M-step's move :math:`M(\theta) - \theta \approx (I - J)
(\hat\theta - \theta)` creeps when :math:`J` is close to one. Louis' acceleration undoes the
contraction:

.. math::

    \theta_{k+1} = \bar\theta_k + \tilde I^{-1} I_c\, \big(\theta^{\mathrm{EM}}_{k}
        - \bar\theta_k\big), \qquad
    \bar\theta_k = \bar\theta_{k-1} + \gamma_k (\theta_k - \bar\theta_{k-1}),

with :math:`\tilde I` the safeguarded observed information
(:func:`~pyro_lvmle.gradients.newton.newton_step`) and :math:`I_c, I_m` Louis' moments averaged as
the Q-function is (over the last ``memory`` iterations while :math:`\gamma_k = 1`, by
:math:`\gamma_k` afterwards). A Q-function that averages draws made at past iterates with
weights :math:`\gamma_k` (SAEM's) has its maximizer near :math:`M` at their average
:math:`\bar\theta_k`, which is where the correction starts; for MCEM :math:`\gamma_k = 1`
and :math:`\bar\theta_k = \theta_k`. (With SAEM's few transitions per iteration the
corrected iterates move faster than the chains follow; measured on
:class:`~pyro_lvmle.models.LogisticGrowth` it stalled at 0.1-0.2 below the maximum, so SAEM
does not offer it: use :class:`~pyro_lvmle.em.StochasticNewton`.) The corrected point is accepted
by :func:`~pyro_lvmle.gradients.newton.trust_region_step` (the importance estimate of the
log-likelihood change from the iteration's draws), whose radius bounds the acceleration
beyond the M-step's point (never the M-step's own move); otherwise the M-step's point is
kept.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ..gradients.newton import (
    assign_flat,
    flatten,
    importance_log_ratio,
    louis_moments,
    newton_step,
    trust_region_step,
)
from .schedules import stochastic_approximation

__all__ = ["DAMPING", "INITIAL_SPEEDUP", "NEWTON_MAX_PARAMS", "CorrectionState",
           "averaged_moments", "damped_newton", "default_newton", "newton_correction",
           "verify_speedup"]

#: the most parameter entries for which a driver's ``newton=None`` turns the Newton steps on:
#: Louis' information costs one backward pass per entry and a P x P eigendecomposition
NEWTON_MAX_PARAMS = 200


def default_newton(leaves, ranks) -> bool:
    """What ``newton=None`` means for a driver: on in one process when the parameters have at
    most :data:`NEWTON_MAX_PARAMS` entries (the moments are not reduced across ranks).

    :param leaves: the model's parameters (unconstrained tensors).
    :param ranks: the driver's :class:`~pyro_lvmle.em.ranks.OneProcess` or
        :class:`~pyro_lvmle.em.ranks.RankSum`.
    """
    return not ranks.distributed and sum(leaf.numel() for leaf in leaves) <= NEWTON_MAX_PARAMS


#: while gamma = 1, SAEM's Newton steps average the information over about this many
#: iterations (as :class:`~pyro_lvmle.em.StochasticNewton`'s ``memory``)
NEWTON_MEMORY = 20


#: the speedup the first correction may take (:attr:`CorrectionState.speedup`)
INITIAL_SPEEDUP = 4.0


class CorrectionState(NamedTuple):
    """What the correction keeps between iterations.

    :ivar dict averages: ``{"complete": I_c, "missing": I_m}`` averaged (``None`` at first).
    :ivar torch.Tensor theta_bar: :math:`\\bar\\theta` flat (``None`` at first).
    :ivar float radius: the trust region's radius.
    :ivar int count: iterations averaged so far.
    :ivar float speedup: the most the next correction may outrun EM along any direction
        (adapted by :func:`verify_speedup`).
    :ivar torch.Tensor em_point: the last M-step's point (flat) when the correction moved
        past it, for :func:`verify_speedup` to judge with the next iteration's draws;
        ``None`` otherwise.
    """

    averages: dict | None = None
    theta_bar: torch.Tensor | None = None
    radius: float = 1.0
    count: int = 0
    speedup: float = INITIAL_SPEEDUP
    em_point: torch.Tensor | None = None


def newton_correction(state: CorrectionState, leaves, theta_k: torch.Tensor, moments,
                      gamma: float, evaluate, before: torch.Tensor, *, memory: int = 20,
                      max_speedup: float = 100.0, max_radius: float = 10.0):
    r"""Correct the M-step's point (the current value of ``leaves``) in place.

    :param CorrectionState state: the state before this iteration.
    :param leaves: the parameters (unconstrained leaves), holding :math:`\theta^{EM}_k`.
    :param torch.Tensor theta_k: :math:`\theta_k`, the draws' parameters, flat.
    :param moments: :class:`~pyro_lvmle.gradients.newton.LouisMoments` at :math:`\theta_k`.
    :param float gamma: :math:`\gamma_k`.
    :param evaluate: ``evaluate() -> (m,)`` log joints at the draws at the leaves' values.
    :param torch.Tensor before: the log joints at :math:`\theta_k`.
    :param int memory: the information's averaging window while :math:`\gamma_k = 1`.
    :param float max_speedup: the cap on the adapted speedup (``state.speedup``, the
        ``max_speedup`` of :func:`~pyro_lvmle.gradients.newton.newton_step`).
    :param float max_radius: the trust region's largest radius.
    :returns: the new state and the iteration's metrics (``newton_accepted``,
        ``fraction_missing``, ``log_likelihood_change``).

    Example::

        >>> import torch
        >>> from pyro_lvmle.gradients.newton import LouisMoments
        >>> from pyro_lvmle.em.newton_correction import CorrectionState, newton_correction
        >>> z = torch.randn(2000)          # p(z | x; theta) = N(theta, 1) at theta = 0
        >>> theta = torch.zeros(1)
        >>> theta[0] = 0.1                 # EM moved by 0.1 towards the optimum at 1
        >>> moments = LouisMoments(torch.ones(1), torch.eye(1), 0.9 * torch.eye(1),
        ...                        torch.zeros(1))
        >>> log_joint = lambda: -0.5 * z**2   # flat in theta: the importance check passes
        >>> state, metrics = newton_correction(CorrectionState(), [theta], torch.zeros(1),
        ...                                    moments, 1.0, log_joint, log_joint())
        >>> round(float(theta[0]), 6)      # 4 EM moves at first (INITIAL_SPEEDUP)
        0.4
        >>> theta[0] = 0.1
        >>> state, metrics = newton_correction(CorrectionState(speedup=100.0), [theta],
        ...     torch.zeros(1), moments, 1.0, log_joint, log_joint())
        >>> round(float(theta[0]), 6)      # the Newton point: 0.1 / (1 - 0.9)
        1.0
    """
    count = state.count + 1
    weight = gamma if gamma < 1 else 1.0 / min(count, memory)
    averages = stochastic_approximation(
        state.averages, {"complete": moments.complete, "missing": moments.missing},
        weight)
    theta_bar = theta_k if state.theta_bar is None or gamma == 1 else \
        state.theta_bar + gamma * (theta_k - state.theta_bar)
    theta_em = flatten(leaves)
    em_move, metric = theta_em - theta_bar, averages["complete"]

    def solve(gradient, complete, missing, gamma, *, max_speedup, max_step):
        # the radius bounds the acceleration beyond the M-step's point, not the move: the
        # correction never moves less than EM (whose move far from the optimum is long)
        full = newton_step(gradient, complete, missing, gamma, max_speedup=max_speedup,
                           max_step=math.inf)
        extra = full.step - em_move
        length = math.sqrt(abs(float(extra @ metric @ extra)))
        if length <= max_step:
            return full
        return full._replace(step=em_move + extra * (max_step / length), truncated=True)

    def trial(step):
        assign_flat(leaves, theta_bar + step)
        with torch.no_grad():
            return evaluate()

    out = trust_region_step(averages["complete"] @ (theta_em - theta_bar),
                            averages["complete"], averages["missing"], 1.0, state.radius,
                            trial, before, max_speedup=min(state.speedup, max_speedup),
                            max_radius=max_radius, solve=solve)
    assign_flat(leaves, theta_bar + out.newton.step if out.accepted else theta_em)
    moved_past = out.accepted and min(state.speedup, max_speedup) > 1.0
    metrics = {"newton_accepted": out.accepted,
               "fraction_missing": out.newton.fraction_missing,
               "log_likelihood_change": out.change}
    # every trial rejected: the M-step's own move (in every trial) failed the check, as far
    # from the optimum where it is long; the radius, which bounds only the acceleration, is
    # kept rather than left 2^-12 times smaller
    radius = out.radius if out.accepted else state.radius
    return CorrectionState(averages, theta_bar, radius, count, state.speedup,
                           theta_em if moved_past else None), metrics


def verify_speedup(state: CorrectionState, before: torch.Tensor, at_em: torch.Tensor | None,
                   max_speedup: float) -> tuple[CorrectionState, bool, float]:
    r"""Judge the last correction with the new iteration's draws, and adapt the speedup.

    The correction's own check (:func:`~pyro_lvmle.gradients.newton.trust_region_step`)
    reuses the draws its step was fitted to, and Louis' information from few draws cannot
    tell a direction whose fraction of missing information is 0.97 (a non-centered random
    effect: the speedup it needs is about 30) from one where it is exactly 1 (a likelihood
    flat along PPCA's rotation: any speedup only multiplies the M-step's Monte Carlo noise).
    The draws of the next E-step, made at the corrected point :math:`\theta_k` and
    independent of the step, settle it: the importance estimate of
    :math:`\log p(x; \theta^{EM}_{k-1}) - \log p(x; \theta_k)` (the M-step's point against
    the corrected one) below minus one standard error means the acceleration paid, and the
    speedup doubles (up to ``max_speedup``); otherwise it halves (down to one, EM's own
    move). After an iteration without acceleration it doubles, to try again.

    :param CorrectionState state: the state after the last correction.
    :param torch.Tensor before: :math:`\log p(x, z_j; \theta_k)` at the new draws, ``(m,)``.
    :param torch.Tensor at_em: :math:`\log p(x, z_j; \theta^{EM}_{k-1})` at the same draws,
        or ``None`` if ``state.em_point`` is ``None``.
    :param float max_speedup: the largest speedup.
    :returns: the new state, whether the last correction paid, and the estimated
        log-likelihood it gained over its M-step's point (``False`` and ``nan``: there was
        none to judge).

    Example::

        >>> import torch
        >>> from pyro_lvmle.em.newton_correction import CorrectionState, verify_speedup
        >>> z = 1 + torch.randn(1000)  # draws of p(z | x; theta) at the corrected theta = 1
        >>> def log_joint(theta):      # log p(x; theta) = -5 (theta - 1)^2 + const
        ...     return -0.5 * (z - theta) ** 2 - 5 * (theta - 1) ** 2
        >>> state = CorrectionState(speedup=8.0, em_point=torch.tensor([0.1]))
        >>> before, at_em = log_joint(1.0), log_joint(0.1)
        >>> new, paid, gain = verify_speedup(state, before, at_em, 100.0)  # EM's point worse
        >>> new.speedup, paid, abs(gain - 4.05) < 0.2      # by 5 (1 - 0.1)^2 = 4.05
        (16.0, True, True)
        >>> verify_speedup(state, at_em, before, 100.0)[0].speedup   # it did not pay
        4.0
    """
    if state.em_point is None:  # nothing to judge; after the first correction, try further
        return (state if state.count == 0 else
                state._replace(speedup=min(2.0 * state.speedup, max_speedup))), False, math.nan
    change, se = importance_log_ratio(before, at_em)
    paid = math.isfinite(change) and change + se < 0.0
    speedup = min(2.0 * state.speedup, max_speedup) if paid else max(1.0, state.speedup / 2)
    return state._replace(speedup=speedup, em_point=None), paid, -change


#: SAEM's damping: the burn-in's iterate counts as about ``DAMPING / (1 - mu)`` iterations
#: of the decreasing phase (the stationary spread of stochastic EM along a direction of
#: rate ``mu`` is that of a Newton average over that many iterations)
DAMPING = 2.0


def damped_newton(gradient: torch.Tensor, complete: torch.Tensor, missing: torch.Tensor,
                  gamma: float, *, max_speedup: float = 100.0):
    r"""SAEM's step in its decreasing phase with ``newton`` (a pure function): a damped
    stochastic Newton step (Gu & Kong 1998),

    .. math::

        \delta_k = \gamma_k \big(\tilde I + c\,\gamma_k I_c\big)^{-1} g_k,

    :math:`g_k` Fisher's gradient from the iteration's draws, :math:`I_c, I_m` Louis'
    moments averaged, :math:`c` = :data:`DAMPING`. SAEM's own decreasing steps remove, along
    a direction whose fraction of missing information is :math:`\mu`, only
    :math:`\gamma_k (1 - \mu)` of the error per iteration: with :math:`\gamma_k = 1/j`
    (:math:`j` iterations after the burn-in) the error decays like :math:`j^{-(1-\mu)}`,
    frozen for :math:`\mu` near one. Here each direction gets the gain
    :math:`1 / \big(j (1 - \mu) + c\big)`: about an EM step at first (the burn-in's
    iterate already averages about :math:`c / (1 - \mu)` iterations' worth of draws, and
    the chains follow small moves), then the Newton rate :math:`1/j` whatever :math:`\mu`
    (Robbins-Monro with the optimal gain matrix). The curvature is floored as in
    :func:`~pyro_lvmle.gradients.newton.newton_step` (``max_speedup``).

    :param torch.Tensor gradient: :math:`g_k`, flat ``(P,)``.
    :param torch.Tensor complete: :math:`I_c` (averaged), ``(P, P)``.
    :param torch.Tensor missing: :math:`I_m` (averaged), ``(P, P)``.
    :param float gamma: :math:`\gamma_k \in (0, 1]`.
    :param float max_speedup: the most a step may outrun the EM-gradient step
        :math:`\gamma_k I_c^{-1} g_k`.
    :returns: the :class:`~pyro_lvmle.gradients.newton.NewtonStep` (its ``fraction_missing`` and
        ``decrement`` are the undamped ones' fraction and the damped step's decrement).

    Example::

        >>> import torch
        >>> from pyro_lvmle.em.newton_correction import damped_newton
        >>> complete, missing = torch.eye(1), 0.98 * torch.eye(1)   # EM's rate 0.98
        >>> g = torch.full((1,), 0.02)           # the EM-gradient step would be 0.02
        >>> early = damped_newton(g, complete, missing, 1.0).step
        >>> late = damped_newton(g, complete, missing, 1e-3).step
        >>> round(float(early), 4), round(float(late), 4)   # 0.02 / 2.02, 1e-3 * 0.02 / 0.022
        (0.0099, 0.0009)
    """
    damping = DAMPING * gamma
    step = newton_step(gradient, complete, missing - damping * complete, gamma,
                       max_speedup=max_speedup)
    return step._replace(fraction_missing=step.fraction_missing + damping)


def averaged_moments(info: dict | None, log_joint, draws: torch.Tensor, leaves, gamma: float,
                     count: int):
    r"""Louis' moments of one iteration's draws, and the information averaged over the
    iterations as SAEM averages its Q-function: over about the last :data:`NEWTON_MEMORY`
    iterations while :math:`\gamma = 1`, with weight :math:`\gamma` afterwards.

    :param dict info: the averaged ``{"complete", "missing"}``, or ``None`` at first.
    :param log_joint: ``positions -> log p(x, z)`` per draw, differentiable in ``leaves``.
    :param torch.Tensor draws: the iteration's draws ``(m, D)``.
    :param leaves: the parameters (unconstrained leaves).
    :param float gamma: the iteration's step size.
    :param int count: iterations averaged so far, this one included.
    :returns: ``(moments, info)``: this iteration's
        :class:`~pyro_lvmle.gradients.newton.LouisMoments` and the updated average.
    """
    with torch.enable_grad():
        moments = louis_moments(log_joint(draws), leaves)
    weight = gamma if gamma < 1 else 1.0 / min(count, NEWTON_MEMORY)
    info = stochastic_approximation(info, {"complete": moments.complete,
                                           "missing": moments.missing}, weight)
    return moments, info
