r"""Caffo, Jank & Jones' (2005) ascent-based rule for Monte Carlo EM, a pure function: accept
an M-step whose Q-increase is established, grow the Monte Carlo sample, stop.

Used by :class:`~pyro_lvmle.MCEM`; see :mod:`pyro_lvmle.em.mcem` for the rule's statement.
"""

from __future__ import annotations

import math
from typing import NamedTuple

__all__ = ["AscentDecision", "AscentRule", "ascent_rule"]


class AscentRule(NamedTuple):
    """The settings of Caffo, Jank & Jones' ascent-based rule.

    :ivar float z_alpha: normal quantile for the risk of accepting a step that is no ascent.
    :ivar float z_beta: normal quantile for the risk of too small a next sample.
    :ivar float z_gamma: normal quantile for the stopping rule's risk.
    :ivar float tol: :math:`C`, the Q-increase below which the run has converged.
    :ivar int max_num_samples: the cap on draws per chain.
    """

    z_alpha: float
    z_beta: float
    z_gamma: float
    tol: float
    max_num_samples: int


class AscentDecision(NamedTuple):
    r"""What the ascent-based rule says after an M-step.

    :ivar bool accept: the ascent is established (:math:`\Delta\hat Q - z_\alpha
        \mathrm{se} \ge 0`): keep the new parameters.
    :ivar bool converged: :math:`\Delta\hat Q + z_\gamma \mathrm{se} < C`.
    :ivar int extra: draws per chain to add when the ascent is not established
        (a third of the current ones).
    :ivar int next_num_samples: draws per chain for the next iteration.
    """

    accept: bool
    converged: bool
    extra: int
    next_num_samples: int


def ascent_rule(increase: float, se: float, size: int, num_samples: int,
                rule: AscentRule) -> AscentDecision:
    r"""Caffo, Jank & Jones' (2005) decision after an M-step, a pure function.

    .. math::

        m_{k+1} = \max\Big(m_k,\ \frac{\sigma^2 (z_\alpha + z_\beta)^2}
        {\Delta\hat Q^2}\Big), \qquad \sigma^2 = m\,\mathrm{se}^2.

    Chains that did not move give :math:`\mathrm{se} = 0`: no growth is asked for then
    (the driver reports frozen chains itself).

    :param float increase: :math:`\Delta\hat Q`.
    :param float se: its standard error.
    :param int size: draws per chain behind it.
    :param int num_samples: the current draws per chain of an iteration.
    :param AscentRule rule: the settings.

    Example::

        >>> from pyro_lvmle.em.mcem import AscentRule, ascent_rule
        >>> rule = AscentRule(0.674, 0.674, 1.645, 1e-3, 1000)
        >>> ascent_rule(0.1, 0.2, 50, 50, rule).accept
        False
    """
    accept = increase - rule.z_alpha * se >= 0
    converged = increase + rule.z_gamma * se < rule.tol
    variance = se**2 * size  # per kept draw of each chain
    if variance > 0 and increase > 0:
        wanted = math.ceil(min(variance * (rule.z_alpha + rule.z_beta) ** 2 / increase**2,
                               rule.max_num_samples))
    else:  # no noise (frozen chains) or no ascent: keep the size, or the cap
        wanted = num_samples if variance == 0 else rule.max_num_samples
    return AscentDecision(bool(accept), bool(converged), max(1, math.ceil(size / 3)),
                          int(min(rule.max_num_samples, max(num_samples, wanted))))
