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

import warnings
from typing import NamedTuple

import torch

__all__ = ["BurnInDecision", "TrendTest", "burn_in_decision", "record_burn_in", "trend_test",
           "warn_trending"]

#: the burn-in is tested from this many iterations on, over the last half of it
MIN_BURN_IN = 20


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


class BurnInDecision(NamedTuple):
    """Whether an automatic burn-in ends after this iteration.

    :ivar bool ends: it ends (no trend, or the cap).
    :ivar bool capped: it ends at the cap while the parameters still trend (warn).
    :ivar float trend: the largest :math:`|z|` (``nan`` before :data:`MIN_BURN_IN`).
    """

    ends: bool
    capped: bool
    trend: float


def burn_in_decision(trajectory: list, max_burn_in: int, *, min_burn_in: int = MIN_BURN_IN,
                     threshold: float = 3.0) -> BurnInDecision:
    """Monolix-style automatic end of a burn-in: from iteration ``min_burn_in`` on, the
    burn-in ends once :func:`trend_test` over its last half finds no trend, or at
    ``max_burn_in`` iterations (``capped`` if the parameters still trend then).

    :param list trajectory: the burn-in's iterates so far (flat tensors), oldest first.
    :param int max_burn_in: the cap.
    :param int min_burn_in: the shortest burn-in (at least 4).
    :param float threshold: see :func:`trend_test`.

    Example::

        >>> import torch
        >>> from pyro_lvmle.em.burn_in import burn_in_decision
        >>> burn_in_decision([torch.randn(2) for _ in range(30)], 300).ends
        True
    """
    done = len(trajectory)
    if done < min_burn_in:
        return BurnInDecision(done >= max_burn_in, False, float("nan"))
    test = trend_test(torch.stack(trajectory[-(done // 2):]), threshold=threshold)
    capped = test.trending and done >= max_burn_in
    return BurnInDecision(not test.trending or capped, capped, float(test.z.abs().max()))


def record_burn_in(where: str, trajectory: list, iterate: torch.Tensor, iteration: int,
                   max_burn_in: int, *, min_burn_in: int = MIN_BURN_IN, warn: bool = True
                   ) -> tuple[int | None, list, float]:
    """One iteration of an automatic burn-in, as every stochastic driver keeps it: add the
    iterate to the trajectory and apply :func:`burn_in_decision` (warning at a capped end).

    :param str where: the driver's name, for the warning.
    :param list trajectory: the burn-in's iterates so far (not modified).
    :param torch.Tensor iterate: this iteration's flat parameters.
    :param int iteration: the driver's iteration count before this step.
    :param int max_burn_in: the cap.
    :param int min_burn_in: the shortest burn-in.
    :param bool warn: warn at a capped end (a driver whose later steps remove a remaining
        trend does not).
    :returns: ``(end, trajectory, trend)``: the burn-in's last iteration (``iteration + 1``)
        if it ends now, else ``None``; the trajectory to keep (emptied once it ends); the
        trend test's largest :math:`|z|`.

    Example::

        >>> import torch
        >>> end, kept, _ = record_burn_in("SAEM", [], torch.zeros(2), 0, 300)
        >>> end, len(kept)
        (None, 1)
    """
    trajectory = [*trajectory, iterate]
    decision = burn_in_decision(trajectory, max_burn_in, min_burn_in=min_burn_in)
    if not decision.ends:
        return None, trajectory, decision.trend
    if decision.capped and warn:
        warn_trending(where, iteration + 1, decision.trend, stacklevel=5)
    return iteration + 1, [], decision.trend


def warn_trending(where: str, iteration: int, trend: float, *, stacklevel: int = 4) -> None:
    """Warn that a burn-in hit its cap while the parameters still trend.

    :param str where: the driver's name.
    :param int iteration: the last burn-in iteration.
    :param float trend: the trend test's largest :math:`|z|`.
    :param int stacklevel: passed to :func:`warnings.warn`.
    """
    warnings.warn(
        f"{where}: the burn-in hit its cap at iteration {iteration} while the parameters "
        f"still trend (largest |z| = {trend:.3g} over the last half); the decreasing steps "
        "from here on freeze the estimate short of the maximum. Raise max_burn_in, or use "
        "the Newton correction (newton=True) or StochasticNewton",
        UserWarning, stacklevel=stacklevel)
