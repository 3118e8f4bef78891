r"""Stochastic Newton steps on the log-likelihood from posterior draws (pure functions).

From draws :math:`z_1, \dots, z_m` of :math:`p(z \mid x; \theta)`, Fisher's identity gives
the gradient and Louis' identity the observed information of :math:`\log p(x; \theta)`:

.. math::

    g = \frac1m \sum_j s_j, \qquad
    I = \underbrace{-\frac1m \sum_j \nabla^2_\theta \log p(x, z_j; \theta)}_{I_c}
      - \underbrace{\frac1m \sum_j (s_j - g)(s_j - g)^\top}_{I_m},
    \qquad s_j = \nabla_\theta \log p(x, z_j; \theta).

A Newton step :math:`\theta + I^{-1} g` converges at a rate that does not depend on the
fraction of missing information :math:`I_c^{-1} I_m`, which is EM's rate (Dempster, Laird &
Rubin 1977): when the latents carry almost all the information (a non-centered random effect
on a population mean), EM contracts by nearly one per iteration, Newton does not. Averaging
:math:`I` over iterations by stochastic approximation (Gu & Kong 1998) and scaling the step
by the same :math:`\gamma_k` gives a convergent stochastic Newton algorithm; with
:math:`\gamma_k = 1` it is Monte Carlo Newton-Raphson (McCulloch 1997).

Safeguards, as a trust region: the curvature is clamped to at least ``1 / max_speedup`` of
the complete-data information in every direction (so a step is never along a direction of
negative or unreliable curvature, and at most ``max_speedup`` EM steps long), the step's
length in that metric is capped by a radius, and a step is accepted only if the importance
sampling estimate of the log-likelihood change from the same draws,

.. math::

    \log \frac{p(x; \theta')}{p(x; \theta)}
    = \log \mathbb{E}_{p(z \mid x; \theta)}
      \Big[\frac{p(x, z; \theta')}{p(x, z; \theta)}\Big],

is not significantly negative (:func:`importance_log_ratio`). The complete information's
metric bounds the posterior's move, :math:`\mathrm{KL} \approx \tfrac12 \delta^\top I_m
\delta \le \tfrac12 \delta^\top I_c \delta`, so within a radius of about one the weights
stay usable.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

__all__ = ["LouisMoments", "NewtonStep", "TrustRegionStep", "importance_log_ratio",
           "assign_flat", "flatten", "louis_moments", "louis_terms", "newton_step",
           "trust_region_step", "usable_weights"]


class LouisMoments(NamedTuple):
    r"""Fisher's and Louis' moments from one set of draws (flat over the parameters).

    :ivar torch.Tensor gradient: :math:`g`, ``(P,)``.
    :ivar torch.Tensor complete: :math:`I_c`, ``(P, P)``.
    :ivar torch.Tensor missing: :math:`I_m`, ``(P, P)``.
    :ivar torch.Tensor gradient_se: the Monte Carlo standard error of each entry of
        :math:`g` (from ``ess``), ``(P,)``.
    """

    gradient: torch.Tensor
    complete: torch.Tensor
    missing: torch.Tensor
    gradient_se: torch.Tensor

    @property
    def information(self) -> torch.Tensor:
        """The observed information :math:`I_c - I_m`."""
        return self.complete - self.missing


def louis_terms(log_joint: torch.Tensor, leaves) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The two ingredients of Louis' identity from ``S`` draws: the per-draw complete-data
    scores and the mean complete-data information,

    .. math::

        s_j = \nabla_\theta \log p(x, z_j; \theta), \qquad
        \bar I_c = -\frac1S \sum_j \nabla^2_\theta \log p(x, z_j; \theta),

    by one backward pass for the scores (the weights trick) and one per parameter
    coordinate for the Hessian.

    :param torch.Tensor log_joint: ``(S,)`` values of :math:`\log p(x, z_j; \theta)`, built
        with a graph to the ``leaves``.
    :param leaves: the parameter tensors :math:`\theta` (flattened and concatenated in order).
    :returns: the scores ``(S, P)`` and :math:`\bar I_c` ``(P, P)``, symmetrized, detached.

    Example::

        >>> import torch
        >>> from pyro_lvmle.gradients.newton import louis_terms
        >>> theta = torch.tensor([0.5], requires_grad=True)
        >>> z = torch.tensor([0.0, 1.0])
        >>> scores, complete = louis_terms(-0.5 * (z - theta) ** 2, [theta])
        >>> scores[:, 0], complete
        (tensor([-0.5000,  0.5000]), tensor([[1.]]))
    """
    leaves = list(leaves)
    with torch.enable_grad():
        weights = torch.ones_like(log_joint, requires_grad=True)
        firsts = torch.autograd.grad(log_joint, leaves, grad_outputs=weights, create_graph=True,
                                     allow_unused=True)
        grad_sum = torch.cat([(torch.zeros_like(leaf) if g is None else g).reshape(-1)
                              for leaf, g in zip(leaves, firsts, strict=True)])
        per_sample, hessian = [], []
        for p in range(grad_sum.numel()):
            if not grad_sum[p].requires_grad:  # the parameter does not enter log p
                per_sample.append(torch.zeros_like(log_joint))
                hessian.append(torch.zeros_like(grad_sum))
                continue
            g_p, *h_p = torch.autograd.grad(grad_sum[p], [weights, *leaves], retain_graph=True,
                                            allow_unused=True)
            per_sample.append(torch.zeros_like(log_joint) if g_p is None else g_p)
            hessian.append(torch.cat([(torch.zeros_like(leaf) if h is None else h).reshape(-1)
                                      for leaf, h in zip(leaves, h_p, strict=True)]))
    grads = torch.stack(per_sample, -1).detach()  # (S, P)
    complete = -torch.stack(hessian).detach() / log_joint.shape[0]
    return grads, 0.5 * (complete + complete.T)


def louis_moments(log_joint: torch.Tensor, leaves, ess: float | None = None) -> LouisMoments:
    """:class:`LouisMoments` of ``log_joint`` (``(m,)`` values at the draws, with a graph to
    the ``leaves``), by :func:`louis_terms`.

    :param torch.Tensor log_joint: :math:`\\log p(x, z_j; \\theta)`, ``(m,)``.
    :param leaves: the parameter tensors.
    :param float ess: the draws' effective sample size (``m`` if ``None``).

    Example::

        >>> import torch
        >>> from pyro_lvmle.gradients.newton import louis_moments
        >>> theta = torch.tensor([0.0], requires_grad=True)
        >>> z = torch.tensor([-1.0, 1.0, 2.0])
        >>> louis_moments(-0.5 * (z - theta) ** 2, [theta]).gradient
        tensor([0.6667])
    """
    scores, complete = louis_terms(log_joint, leaves)
    num = scores.shape[0]
    gradient = scores.mean(0)
    centred = scores - gradient
    # the scores' covariance with Bessel's correction: with few draws (SAEM's, one per
    # chain) dividing by m reads a fraction of missing information of 0.98 as 0.73 at m = 4
    missing = centred.T @ centred / max(num - 1, 1)
    ess = float(num) if ess is None else max(1.0, min(float(ess), float(num)))
    return LouisMoments(gradient, complete, missing, missing.diagonal().sqrt() / math.sqrt(ess))


class NewtonStep(NamedTuple):
    r"""A safeguarded Newton step.

    :ivar torch.Tensor step: the parameter change ``(P,)`` (already times :math:`\gamma`).
    :ivar float decrement: the Newton decrement :math:`g^\top \tilde I^{-1} g` (twice the
        log-likelihood increase the quadratic model predicts for the full step).
    :ivar float fraction_missing: the largest eigenvalue of :math:`I_c^{-1} I_m`, the
        fraction of missing information along the slowest direction (EM's rate there).
    :ivar int num_clamped: directions whose curvature was clamped (not positive, or below
        ``1 / max_speedup`` of the complete information).
    :ivar bool truncated: the trust region cut the step.
    """

    step: torch.Tensor
    decrement: float
    fraction_missing: float
    num_clamped: int
    truncated: bool


def newton_step(gradient: torch.Tensor, complete: torch.Tensor, missing: torch.Tensor,
                gamma: float = 1.0, *, max_speedup: float = 1000.0,
                max_step: float = 10.0) -> NewtonStep:
    r"""The safeguarded stochastic Newton step :math:`\gamma\, \tilde I^{-1} g`.

    In the complete information's metric :math:`M = I_c = W^{-\top} W^{-1}` (each eigenvalue
    taken by its magnitude, as saddle-free Newton does, for the nonlinear models whose
    complete information is indefinite far from the optimum), with
    :math:`W^\top (I_c - I_m) W = V \operatorname{diag}(\lambda) V^\top`
    (:math:`\lambda = 1 - \mu` for the fractions of missing information :math:`\mu`),

    .. math::

        \tilde I^{-1} = W V \operatorname{diag}\big(1 / \max(\lambda, 1/\kappa)\big)
            V^\top W^\top,

    :math:`\kappa` = ``max_speedup``: the observed information where its curvature is
    reliable, never below :math:`M / \kappa` (a fraction missing of 1 or more, which noise
    gives far from the optimum, becomes an EM-gradient step times :math:`\kappa`). The step is
    then shortened so that :math:`\sqrt{\delta^\top M \delta} \le` ``max_step``.

    :param torch.Tensor gradient: :math:`g`, ``(P,)``.
    :param torch.Tensor complete: :math:`I_c`, ``(P, P)``.
    :param torch.Tensor missing: :math:`I_m`, ``(P, P)``.
    :param float gamma: the stochastic-approximation step :math:`\gamma_k \in (0, 1]`.
    :param float max_speedup: :math:`\kappa \ge 1`; ``1`` gives the EM-gradient step
        :math:`I_c^{-1} g` (Lange 1995).
    :param float max_step: the trust region's radius in the complete information's metric.
    :raises ValueError: if :math:`I_c` is zero or not finite.

    Example::

        >>> import torch
        >>> from pyro_lvmle.gradients.newton import newton_step
        >>> g, complete = torch.tensor([1.0]), torch.tensor([[10.0]])
        >>> newton_step(g, complete, torch.tensor([[9.0]])).step   # EM would move 0.1
        tensor([1.])
    """
    # in the widest dtype of the three (float32 parameters may meet float64 data's moments);
    # the step comes back in the gradient's, the parameters' dtype
    dtype = torch.promote_types(torch.promote_types(gradient.dtype, complete.dtype),
                                missing.dtype)
    out_dtype, gradient = gradient.dtype, gradient.to(dtype)
    complete, missing = complete.to(dtype), missing.to(dtype)
    values, basis = torch.linalg.eigh(0.5 * (complete + complete.mT))
    top = float(values.abs().max()) if values.numel() else 0.0
    if not top > 0 or not math.isfinite(top):
        raise ValueError(
            "stochastic Newton: the complete-data information is zero or not finite at the "
            "current parameters (no parameter enters the model's log density); check the model")
    # the metric: I_c with each eigenvalue's magnitude (saddle-free far from the optimum,
    # where a nonlinear model's complete information can be indefinite), floored at 1e-12
    scale = values.abs().clamp(min=1e-12 * top).rsqrt()
    to_white = basis * scale  # M^-1/2 = V diag(scale) V^T; we use W = V diag(scale)
    observed = to_white.mT @ (complete - missing) @ to_white
    lost = to_white.mT @ missing @ to_white
    curvature, vectors = torch.linalg.eigh(0.5 * (observed + observed.mT))
    clamped = curvature < 1.0 / max_speedup
    curvature = curvature.clamp(min=1.0 / max_speedup)
    coords = (vectors.mT @ (to_white.mT @ gradient)) / curvature
    decrement = float((coords * curvature * coords).sum())
    white_step = vectors @ coords
    length = float(white_step.norm())
    truncated = length > max_step
    if truncated:
        white_step = white_step * (max_step / length)
    step = to_white @ white_step
    fraction = float(torch.linalg.eigvalsh(0.5 * (lost + lost.mT)).max())
    return NewtonStep((gamma * step).to(out_dtype), decrement, fraction, int(clamped.sum()),
                      bool(truncated))


def importance_log_ratio(before: torch.Tensor, after: torch.Tensor,
                         ess: float | None = None) -> tuple[float, float]:
    r"""The importance-sampling estimate of :math:`\log p(x; \theta') - \log p(x; \theta)`
    from draws of :math:`p(z \mid x; \theta)`, and its delta-method standard error:

    .. math::

        \hat\Delta = \log \frac1m \sum_j w_j, \qquad
        w_j = \frac{p(x, z_j; \theta')}{p(x, z_j; \theta)}, \qquad
        \mathrm{se} = \frac{\operatorname{sd}(w)}{\bar w \sqrt{n_{\text{eff}}}}.

    :param torch.Tensor before: :math:`\log p(x, z_j; \theta)`, ``(m,)``.
    :param torch.Tensor after: :math:`\log p(x, z_j; \theta')`, ``(m,)``.
    :param float ess: effective number of draws (``m`` if ``None``).

    Example::

        >>> import torch
        >>> from pyro_lvmle.gradients.newton import importance_log_ratio
        >>> importance_log_ratio(torch.zeros(4), torch.full((4,), 0.5))
        (0.5, 0.0)
    """
    log_w = (after - before).detach()
    top = log_w.max()
    weights = (log_w - top).exp()
    num = log_w.numel()
    estimate = float(top + weights.mean().log())
    ess = float(num) if ess is None else max(1.0, min(float(ess), float(num)))
    spread = float(weights.std() / weights.mean()) if num > 1 else math.inf
    return estimate, spread / math.sqrt(ess)


def usable_weights(before: torch.Tensor, after: torch.Tensor, min_ess: float = 0.1) -> bool:
    """Whether the importance weights :math:`p(x, z_j; \\theta') / p(x, z_j; \\theta)` of
    draws from :math:`p(z \\mid x; \\theta)` can judge a move to :math:`\\theta'`: their
    effective sample size is at least ``min_ess`` of the draws (the posterior did not move too
    far for them).

    :param torch.Tensor before: :math:`\\log p(x, z_j; \\theta)`, ``(m,)``.
    :param torch.Tensor after: :math:`\\log p(x, z_j; \\theta')`, ``(m,)``.
    :param float min_ess: the smallest effective fraction of the draws.

    Example::

        >>> import torch
        >>> from pyro_lvmle.gradients.newton import usable_weights
        >>> usable_weights(torch.zeros(4), torch.tensor([0.0, 0.0, 0.0, -50.0]))  # ESS 3 of 4
        True
        >>> usable_weights(torch.zeros(4), torch.tensor([0.0, -50.0, -50.0, -50.0]), 0.5)
        False
    """
    log_w = (after - before).detach()
    weights = (log_w - log_w.max()).exp()
    return float(weights.sum() ** 2 / (weights**2).sum()) >= min_ess * log_w.numel()


class TrustRegionStep(NamedTuple):
    """The outcome of :func:`trust_region_step`.

    :ivar NewtonStep newton: the accepted step (zero if every trial was rejected).
    :ivar float change: the importance estimate of the log-likelihood change against the
        draws' parameters (``0`` if rejected).
    :ivar float radius: the radius for the next iteration.
    :ivar bool accepted: some trial was accepted.
    """

    newton: NewtonStep
    change: float
    radius: float
    accepted: bool


def trust_region_step(gradient: torch.Tensor, complete: torch.Tensor, missing: torch.Tensor,
                      gamma: float, radius: float, evaluate, before: torch.Tensor, *,
                      max_speedup: float = 100.0, max_radius: float = 10.0,
                      max_tries: int = 12, min_ess: float = 0.1,
                      solve=newton_step) -> TrustRegionStep:
    """The safeguarded Newton step: :func:`newton_step` within ``radius``, accepted if
    ``evaluate(step)`` (the log joints at the draws after moving by ``step``) is finite, the
    importance weights are usable (their effective sample size at least ``min_ess`` of the
    draws: the posterior did not move too far for the draws to judge the step) and
    :func:`importance_log_ratio` against ``before`` is not significantly negative (above
    minus two standard errors); else tried again with half the radius. The radius doubles
    (up to ``max_radius``) after an accepted step that it cut and that raised the estimate.

    :param torch.Tensor gradient: the gradient (or, for Louis' acceleration of an M-step,
        :math:`I_c` times the M-step's move).
    :param torch.Tensor complete: :math:`I_c`.
    :param torch.Tensor missing: :math:`I_m`.
    :param float gamma: the stochastic-approximation step.
    :param float radius: the current radius.
    :param evaluate: ``evaluate(step) -> (m,)`` log joints at the draws, the parameters moved
        by ``step`` (the caller puts them back if the result is rejected).
    :param torch.Tensor before: the log joints at the draws' own parameters, ``(m,)``.
    :param float max_speedup: see :func:`newton_step`.
    :param float max_radius: the largest radius.
    :param int max_tries: trials before giving up (a zero step).
    :param float min_ess: the smallest effective fraction of importance weights accepted.
    :param solve: the step within a radius, called as :func:`newton_step` is (a diagonal
        form, for instance).

    Example::

        >>> import torch
        >>> from pyro_lvmle.gradients.newton import trust_region_step
        >>> z = torch.randn(1000)
        >>> def evaluate(step):   # log p(x, z; theta) = -(z - theta)^2 / 2 at theta = step
        ...     return -0.5 * (z - step) ** 2
        >>> out = trust_region_step(torch.tensor([z.mean()]), torch.eye(1), torch.zeros(1, 1),
        ...                         1.0, 1.0, evaluate, -0.5 * z**2)
        >>> out.accepted
        True
    """
    for _ in range(max_tries):
        step = solve(gradient, complete, missing, gamma, max_speedup=max_speedup,
                     max_step=radius)
        after = evaluate(step.step)
        if torch.isfinite(after).all():
            change, se = importance_log_ratio(before, after)
            # not a significant decrease (two standard errors), judged by usable weights
            if usable_weights(before, after, min_ess) and change >= -2 * se:
                if step.truncated and change > 0:
                    radius = min(2 * radius, max_radius)
                return TrustRegionStep(step, change, radius, True)
        radius /= 2
    zero = step._replace(step=torch.zeros_like(step.step))
    return TrustRegionStep(zero, 0.0, radius, False)


def flatten(leaves) -> torch.Tensor:
    """The leaves' values, flattened and concatenated (detached copy).

    :param leaves: tensors.
    """
    return torch.cat([leaf.detach().reshape(-1) for leaf in leaves]).clone()


def assign_flat(leaves, flat: torch.Tensor) -> None:
    """Copy ``flat`` into the leaves, in place (the inverse of :func:`flatten`).

    :param leaves: tensors.
    :param torch.Tensor flat: their new values, flattened.
    """
    with torch.no_grad():
        offset = 0
        for leaf in leaves:
            leaf.copy_(flat[offset:offset + leaf.numel()].reshape(leaf.shape))
            offset += leaf.numel()
