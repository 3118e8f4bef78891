r"""SQUAREM: squared extrapolation of EM's fixed-point map (Varadhan & Roland 2008), a pure
function.

From :math:`\theta_0`, two EM updates :math:`\theta_1 = F(\theta_0)`,
:math:`\theta_2 = F(\theta_1)` give

.. math::

    r = \theta_1 - \theta_0, \qquad v = \theta_2 - 2\theta_1 + \theta_0, \qquad
    \alpha = -\frac{\lVert r \rVert}{\lVert v \rVert} \le -1, \qquad
    \theta' = \theta_0 - 2\alpha r + \alpha^2 v

(scheme S3). :math:`\alpha = -1` gives :math:`\theta' = \theta_2`, plain EM; a slowly
contracting map (a large fraction of missing information) gives a large :math:`|\alpha|` and
a long jump along the direction EM creeps in. Made monotone by backtracking
:math:`\alpha \leftarrow (\alpha - 1) / 2` until the objective at :math:`\theta'` is at least
that at :math:`\theta_2` (at :math:`\alpha = -1` it is equal), then one EM update from
:math:`\theta'` (the stabilization step), which cannot decrease it either.

References:

[1] Varadhan & Roland (2008), "Simple and globally convergent methods for accelerating the
convergence of any EM algorithm", Scandinavian Journal of Statistics 35(2).
"""

from __future__ import annotations

import torch

__all__ = ["MAX_BACKTRACKS", "backtracked_alpha", "squarem_alpha", "squarem_point"]

#: backtracking halvings of :math:`\alpha - 1` before falling back to plain EM
MAX_BACKTRACKS = 20


def squarem_alpha(theta0: torch.Tensor, theta1: torch.Tensor, theta2: torch.Tensor) -> float:
    r"""The S3 step length :math:`\alpha = -\lVert r \rVert / \lVert v \rVert`, at most
    :math:`-1` (``-1`` when :math:`v = 0`: EM is already at its fixed point).

    :param torch.Tensor theta0: the start (flat).
    :param torch.Tensor theta1: :math:`F(\theta_0)`.
    :param torch.Tensor theta2: :math:`F(\theta_1)`.

    Example::

        >>> import torch
        >>> from pyro_lvmle.em.squarem import squarem_alpha
        >>> # a linear map contracting by 0.9: 0, 1, 1.9 (fixed point 10)
        >>> round(squarem_alpha(torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor([1.9])), 6)
        -10.0
    """
    r = theta1 - theta0
    v = theta2 - 2 * theta1 + theta0
    norm_v = float(v.norm())
    if norm_v == 0.0:
        return -1.0
    return min(-1.0, -float(r.norm()) / norm_v)


def squarem_point(theta0: torch.Tensor, theta1: torch.Tensor, theta2: torch.Tensor,
                  alpha: float) -> torch.Tensor:
    r""":math:`\theta' = \theta_0 - 2\alpha r + \alpha^2 v`.

    :param torch.Tensor theta0: the start (flat).
    :param torch.Tensor theta1: :math:`F(\theta_0)`.
    :param torch.Tensor theta2: :math:`F(\theta_1)`.
    :param float alpha: the step length (:func:`squarem_alpha`, or backtracked towards -1).

    Example::

        >>> import torch
        >>> from pyro_lvmle.em.squarem import squarem_point
        >>> t = [torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor([1.9])]
        >>> squarem_point(*t, alpha=-10.0).round(decimals=6)   # the linear map's fixed point
        tensor([10.])
        >>> squarem_point(*t, alpha=-1.0)    # plain EM: theta_2
        tensor([1.9000])
    """
    r = theta1 - theta0
    v = theta2 - 2 * theta1 + theta0
    return theta0 - 2 * alpha * r + alpha**2 * v


def backtracked_alpha(theta0: torch.Tensor, theta1: torch.Tensor, theta2: torch.Tensor,
                      accept) -> float:
    r"""The S3 step length, backtracked :math:`\alpha \leftarrow (\alpha - 1)/2` until
    ``accept(point)`` holds for :func:`squarem_point` at :math:`\alpha`; ``-1`` (plain EM,
    :math:`\theta_2`) if it never does within :data:`MAX_BACKTRACKS` halvings.

    :param torch.Tensor theta0: the start (flat).
    :param torch.Tensor theta1: :math:`F(\theta_0)`.
    :param torch.Tensor theta2: :math:`F(\theta_1)`.
    :param accept: ``accept(point) -> bool``: the objective at ``point`` is not below that at
        :math:`\theta_2` (exactly, or within its Monte Carlo error).

    Example::

        >>> import torch
        >>> from pyro_lvmle.em.squarem import backtracked_alpha
        >>> t = [torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor([1.9])]
        >>> # -10 and -5.5 overshoot 6 (points 10 and 7.975); -3.25 lands at 5.44
        >>> round(backtracked_alpha(*t, lambda point: float(point) <= 6.0), 6)
        -3.25
    """
    alpha = squarem_alpha(theta0, theta1, theta2)
    for _ in range(MAX_BACKTRACKS):
        if alpha == -1.0 or accept(squarem_point(theta0, theta1, theta2, alpha)):
            return alpha
        alpha = (alpha - 1) / 2 if alpha < -1.01 else -1.0
    return -1.0
