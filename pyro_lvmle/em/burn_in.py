r"""When a stochastic EM's burn-in may end: a test for a trend in the parameters' trajectory
(pure functions).

During the burn-in (:math:`\gamma_k = 1`) the iterates forget their start; the decreasing
steps that follow average the Monte Carlo noise away but also freeze the estimate wherever
it is: a burn-in that ends while the parameters still trend leaves SAEM short of the maximum
for good. Monolix ends its exploratory phase automatically once the parameters' trajectories
are stable; here, over the last ``window`` iterates :math:`\theta_{k-w+1}, \dots, \theta_k`
(``w`` even), per coordinate,

.. math::

    z = \frac{\bar\theta_{\text{2nd half}} - \bar\theta_{\text{1st half}}}
             {\sqrt{2 \hat s^2 / (w / 2)}}, \qquad
    \hat s^2 = \frac{1}{2(w-1)} \sum_{i} (\theta_{i+1} - \theta_i)^2,

the noise variance by successive differences (von Neumann 1941), which a trend does not
inflate. Iterates that still contract towards the optimum slowly (EM with a large fraction of
missing information) move steadily: their differences are small against the drift, so
:math:`|z|` is large and the burn-in goes on. Independent noise around the optimum gives
:math:`z \approx \mathcal N(0, 1)`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["TrendTest", "trend_test"]


class TrendTest(NamedTuple):
    """The outcome of :func:`trend_test`.

    :ivar bool trending: some coordinate's :math:`|z|` exceeds the threshold.
    :ivar torch.Tensor z: per coordinate, ``(P,)``.
    """

    trending: bool
    z: torch.Tensor


def trend_test(trajectory: torch.Tensor, *, threshold: float = 3.0) -> TrendTest:
    """Whether the iterates ``trajectory`` (``(w, P)``, oldest first, ``w >= 4``; an odd
    first row is dropped) still trend.

    :param torch.Tensor trajectory: the last ``w`` iterates, flattened parameters.
    :param float threshold: the :math:`|z|` above which a coordinate trends (3: a
        stationary coordinate is flagged about 0.3% of the time).

    Example::

        >>> import torch
        >>> from pyro_lvmle.em.burn_in import trend_test
        >>> steady = torch.randn(40, 2)
        >>> drifting = steady + torch.linspace(0, 20, 40)[:, None]
        >>> trend_test(steady).trending, trend_test(drifting).trending
        (False, True)
    """
    if trajectory.dim() != 2 or trajectory.shape[0] < 4:
        raise ValueError(f"trend_test: trajectory must be (w >= 4, P), got shape "
                         f"{tuple(trajectory.shape)}")
    window = trajectory[trajectory.shape[0] % 2:]
    half = window.shape[0] // 2
    noise = (window.diff(dim=0) ** 2).sum(0) / (2 * (window.shape[0] - 1))
    drift = window[half:].mean(0) - window[:half].mean(0)
    scale = (2 * noise / half).sqrt()
    tiny = torch.finfo(window.dtype).tiny
    z = torch.where(scale > tiny, drift / scale.clamp(min=tiny),
                    torch.where(drift.abs() > 0, torch.inf, 0.0))
    return TrendTest(bool((z.abs() > threshold).any()), z)
