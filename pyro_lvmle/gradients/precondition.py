r"""A Newton (natural-gradient style) preconditioner for :class:`~pyro_lvmle.MCMCGradient`:
the gradient from Fisher's identity times the inverse observed information from Louis'
identity, both from the same draws, so that one learning rate fits every parameter whatever
its scale.

Plain stochastic gradient ascent :math:`\theta \leftarrow \theta + \eta\, g` converges along
each direction at the rate :math:`1 - \eta \lambda`, :math:`\lambda` the curvature of
:math:`\log p(x; \theta)` there: with a population mean near 700 whose data spread is 100
next to a noise scale near 1, the curvatures differ 10\ :sup:`4`-fold, and any learning rate
stable for the one leaves the other where it started. Preconditioning by the observed
information :math:`I` (Newton's method; Amari's natural gradient (1998) where the Fisher
information is used) makes the step affine invariant, :math:`\theta \leftarrow \theta + \eta\,
\tilde I^{-1} g`, with the same rate :math:`1 - \eta` along every direction of a quadratic.

From the draws :math:`z_j` of the chains (Louis 1982),

.. math::

    g = \frac1m \sum_j s_j, \qquad
    I = \underbrace{-\frac1m \sum_j \nabla^2_\theta \log p(x, z_j; \theta)}_{I_c}
      - \underbrace{\frac1m \sum_j (s_j - g)(s_j - g)^\top}_{I_m},
    \qquad s_j = \nabla_\theta \log p(x, z_j; \theta),

over the optimizer's (unconstrained) coordinates. One call's :math:`I` is noisy where the
fraction of missing information :math:`I_c^{-1} I_m` is close to one, so :math:`I_c` and
:math:`I_m` are averaged by stochastic approximation (Gu & Kong 1998) over about the last
``memory`` steps,

.. math::

    \bar I_{\cdot,k} = \bar I_{\cdot,k-1} + w_k (I_{\cdot,k} - \bar I_{\cdot,k-1}), \qquad
    w_k = \max(1/k, 1/\text{memory}),

(a running mean, then an exponential one that forgets the information of parameters long
left behind), and the direction is :math:`\tilde I^{-1} g` by
:func:`~pyro_lvmle.gradients.newton.newton_step`: :math:`\bar I` with its eigenvalues in the
complete information's metric floored at ``1 / max_speedup`` (positive definite: a direction
of negative or unreliable curvature gets an EM-gradient step :math:`\bar I_c^{-1} g` times
``max_speedup``). The floor is Levenberg-Marquardt damping made scale free: damping by a
multiple of :math:`\bar I_c`, not of the identity, which would bring back the parameters'
scale (Marquardt 1963 scaled it by the diagonal; see Martens 2020, section 13, on damping
natural-gradient steps). Far from the maximum, where the observed information is not
positive and the floor decides, the direction is kept within a trust region in the same
metric whose radius adapts to the importance-sampling estimate of the log-likelihood change
from the same draws (:func:`~pyro_lvmle.gradients.newton.trust_region_step`, as
:class:`~pyro_lvmle.StochasticNewton` does): the learning rate then scales a direction
checked not to lower the likelihood.

``diagonal=True`` keeps only the diagonals of :math:`\bar I_c, \bar I_m` (the Jacobi
preconditioner: each parameter scaled by its own curvature, the correlations between
parameters ignored), for models with many parameters: the average costs :math:`O(P)` memory
and the direction :math:`O(P)` instead of :math:`O(P^2)` and an :math:`O(P^3)`
eigendecomposition. Louis' terms still take one backward pass per parameter coordinate
(:func:`~pyro_lvmle.gradients.newton.louis_terms`) in both forms.

References:

[1] Amari (1998), "Natural gradient works efficiently in learning", Neural Computation 10(2).

[2] Louis (1982), "Finding the observed information matrix when using the EM algorithm",
JRSS B 44(2).

[3] Gu & Kong (1998), "A stochastic approximation algorithm with Markov chain Monte-Carlo
method for incomplete data estimation problems", PNAS 95(13).

[4] Martens (2020), "New insights and perspectives on the natural gradient method", JMLR 21.

[5] Marquardt (1963), "An algorithm for least-squares estimation of nonlinear parameters",
SIAM J. Appl. Math. 11(2).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .._checks import check_bool, check_int, check_positive
from .newton import NewtonStep, TrustRegionStep, louis_moments, newton_step, trust_region_step

__all__ = ["NewtonPreconditioner", "PreconditionerState", "diagonal_newton_step"]


class PreconditionerState(NamedTuple):
    r"""The averaged information of :class:`NewtonPreconditioner` (flat over the parameters,
    in the order the model reads them) and its trust region.

    :ivar torch.Tensor complete: :math:`\bar I_c`, ``(P, P)`` (``(P,)`` if diagonal).
    :ivar torch.Tensor missing: :math:`\bar I_m`, same shape.
    :ivar int num_updates: calls averaged so far (:math:`k`).
    :ivar float radius: the trust region's radius for the next direction.
    """

    complete: torch.Tensor
    missing: torch.Tensor
    num_updates: int
    radius: float


def diagonal_newton_step(gradient: torch.Tensor, complete: torch.Tensor,
                         missing: torch.Tensor, gamma: float = 1.0, *,
                         max_speedup: float = 100.0, max_step: float = math.inf) -> NewtonStep:
    r""":func:`~pyro_lvmle.gradients.newton.newton_step` with diagonal information, in
    :math:`O(P)`: :math:`\delta_p = \gamma\, g_p / \max(I_{c,p} - I_{m,p},
    |I_{c,p}| / \kappa)`, shortened so that :math:`\sqrt{\sum_p |I_{c,p}| \delta_p^2}
    \le` ``max_step``.

    :param torch.Tensor gradient: :math:`g`, ``(P,)``.
    :param torch.Tensor complete: the diagonal of :math:`I_c`, ``(P,)``.
    :param torch.Tensor missing: the diagonal of :math:`I_m`, ``(P,)``.
    :param float gamma: the step's scale.
    :param float max_speedup: :math:`\kappa \ge 1`.
    :param float max_step: the largest length in the complete information's metric.
    :raises ValueError: if :math:`I_c` is zero or not finite.

    Example::

        >>> import torch
        >>> from pyro_lvmle.gradients.precondition import diagonal_newton_step
        >>> diagonal_newton_step(torch.tensor([1.0, 1.0]), torch.tensor([10.0, 1e4]),
        ...                      torch.tensor([9.0, 0.0])).step
        tensor([1.0000e+00, 1.0000e-04])
    """
    metric = complete.abs()
    top = float(metric.max()) if metric.numel() else 0.0
    if not top > 0 or not math.isfinite(top):
        raise ValueError("NewtonPreconditioner: the complete-data information is zero or not "
                         "finite at the current parameters; check the model")
    metric = metric.clamp(min=1e-12 * top)
    relative = (complete - missing) / metric
    clamped = relative < 1.0 / max_speedup
    step = gradient / (metric * relative.clamp(min=1.0 / max_speedup))
    decrement = float((gradient * step).sum())
    length = float((metric * step**2).sum().sqrt())
    truncated = length > max_step
    if truncated:
        step = step * (max_step / length)
    fraction = float((missing / metric).max())
    return NewtonStep(gamma * step, decrement, fraction, int(clamped.sum()), truncated)


class NewtonPreconditioner:
    r"""The direction :math:`\tilde I^{-1} g` from Fisher's gradient and Louis' information,
    averaged over steps, within a trust region (see the module's text for the math).

    Pass it (or ``"full"``, ``"diagonal"`` for its defaults) as
    :class:`~pyro_lvmle.MCMCGradient`'s ``precondition``: the loss then writes the
    preconditioned direction into the parameters' ``.grad``, and ``pyro.optim.SGD`` with
    ``lr`` below one takes damped Newton steps (``lr=1``: Monte Carlo Newton-Raphson, McCulloch
    1997). The methods are pure: the state is a :class:`PreconditionerState`.

    :param bool diagonal: keep only the diagonal of the information (for many parameters).
    :param int memory: the information is averaged over about this many steps.
    :param float max_speedup: the eigenvalue floor :math:`1/\kappa` in the complete
        information's metric, :math:`\kappa \ge 1`: a direction is at most :math:`\kappa`
        times the EM-gradient step along any direction (``1`` gives the EM-gradient direction
        :math:`\bar I_c^{-1} g`, Lange 1995).
    :param float max_step: the trust region's largest radius in the complete information's
        metric (it starts at 1 or ``max_step`` if smaller, halves while the importance
        estimate of the log-likelihood change of the full direction is significantly
        negative, doubles after a cut direction that raised it:
        :func:`~pyro_lvmle.gradients.newton.trust_region_step`); ``None`` for no limit.

    Example::

        >>> import torch
        >>> from pyro_lvmle.gradients.precondition import NewtonPreconditioner
        >>> theta = torch.tensor([0.0], requires_grad=True)
        >>> z = torch.full((3,), 7.0)   # draws; log p(x, z) = -100 (z - theta)^2 / 2
        >>> out, state = NewtonPreconditioner(max_step=None)(None, -50 * (z - theta) ** 2,
        ...                                                  [theta])
        >>> out.newton.step, state.num_updates   # straight to 7, whatever the curvature 100
        (tensor([7.]), 1)
    """

    def __init__(self, diagonal: bool = False, *, memory: int = 5, max_speedup: float = 100.0,
                 max_step: float | None = 10.0):
        where = "NewtonPreconditioner"
        self.diagonal = check_bool(where, "diagonal", diagonal)
        self.memory = check_int(where, "memory", memory, low=1)
        self.max_speedup = check_positive(where, "max_speedup", max_speedup)
        if self.max_speedup < 1:
            raise ValueError(f"{where}: max_speedup must be >= 1 (1 is the EM-gradient "
                             f"direction), got {max_speedup!r}")
        self.max_step = math.inf if max_step is None \
            else check_positive(where, "max_step", max_step)

    def __repr__(self) -> str:
        max_step = None if self.max_step == math.inf else self.max_step
        return (f"NewtonPreconditioner(diagonal={self.diagonal}, memory={self.memory}, "
                f"max_speedup={self.max_speedup}, max_step={max_step})")

    def update(self, state: PreconditionerState | None, complete: torch.Tensor,
               missing: torch.Tensor) -> PreconditionerState:
        """Average one call's Louis terms into ``state``; a new average when ``state`` is
        ``None`` or its size differs (the model's parameters changed).

        :param PreconditionerState state: the average so far, or ``None``.
        :param torch.Tensor complete: this call's :math:`I_c`, ``(P, P)``.
        :param torch.Tensor missing: this call's :math:`I_m`, ``(P, P)``.
        """
        if self.diagonal:
            complete, missing = complete.diagonal(), missing.diagonal()
        if state is None or state.complete.shape != complete.shape:
            return PreconditionerState(complete, missing, 1, min(1.0, self.max_step))
        count = state.num_updates + 1
        weight = max(1.0 / count, 1.0 / self.memory)
        return PreconditionerState(state.complete.lerp(complete, weight),
                                   state.missing.lerp(missing, weight), count, state.radius)

    def direction(self, state: PreconditionerState, gradient: torch.Tensor, evaluate=None,
                  before: torch.Tensor | None = None) -> tuple[TrustRegionStep,
                                                               PreconditionerState]:
        r"""The safeguarded direction :math:`\tilde I^{-1} g`: by
        :func:`~pyro_lvmle.gradients.newton.trust_region_step` with ``evaluate`` and
        ``before``; without them, the plain step within ``max_step``.

        :param PreconditionerState state: the averaged information and the radius.
        :param torch.Tensor gradient: :math:`g`, ``(P,)``.
        :param evaluate: ``evaluate(step) -> (m,)`` the log joints at the draws with the
            parameters moved by ``step`` (the caller puts them back).
        :param torch.Tensor before: the log joints at the draws, ``(m,)``.
        :returns: the :class:`~pyro_lvmle.gradients.newton.TrustRegionStep` and the state
            with its new radius.
        """
        solve = diagonal_newton_step if self.diagonal else newton_step
        if evaluate is None:
            step = solve(gradient, state.complete, state.missing,
                         max_speedup=self.max_speedup, max_step=self.max_step)
            return TrustRegionStep(step, math.nan, state.radius, True), state
        out = trust_region_step(gradient, state.complete, state.missing, 1.0, state.radius,
                                evaluate, before, max_speedup=self.max_speedup,
                                max_radius=self.max_step, solve=solve)
        return out, state._replace(radius=out.radius)

    def __call__(self, state: PreconditionerState | None, log_joint: torch.Tensor, leaves,
                 evaluate=None) -> tuple[TrustRegionStep, PreconditionerState]:
        """Louis' terms of ``log_joint`` at the draws, averaged into ``state``, and the
        direction for their gradient (:meth:`direction`).

        :param PreconditionerState state: the average so far, or ``None``.
        :param torch.Tensor log_joint: :math:`\\log p(x, z_j; \\theta)`, ``(m,)``, with a
            graph to the ``leaves``.
        :param leaves: the (unconstrained) parameter tensors.
        :param evaluate: as for :meth:`direction` (``before`` is ``log_joint``).
        """
        moments = louis_moments(log_joint, leaves)
        state = self.update(state, moments.complete, moments.missing)
        return self.direction(state, moments.gradient, evaluate, log_joint.detach())
