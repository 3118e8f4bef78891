r"""Does a finished run look converged? One diagnosis for every EM driver, from its
:class:`~pyro_lvmle.em.History` (pure functions), and the warning that reports it.

Three signs of a run stopped short of the maximum, each computed only where the driver
records what it needs:

* **still rising**: the objective's last increases (``increase``: the exact log-likelihood
  of :class:`~pyro_lvmle.em.ExactEM`; ``q_increase`` with its Monte Carlo standard error
  ``q_increase_se``: :class:`~pyro_lvmle.em.MCEM`'s Q-function), averaged over the last
  ``last`` iterations, are significantly positive, and with the rate :math:`\rho` at which
  they shrink they predict a remaining ascent above ``tol``. EM contracts by
  :math:`\mu`, the fraction of missing information along its slowest direction, so the
  increases shrink by :math:`\rho = \mu^2` per iteration and the ascent still to come after
  an increase :math:`\Delta` is

  .. math::

      \Delta \, \frac{\rho}{1 - \rho}

  (Dempster, Laird & Rubin 1977); :math:`\mu` is the driver's estimate
  (``fraction_missing``) where it records one, otherwise :math:`\rho` is the ratio of the
  last increases.
* **trend**: for drivers whose iterates fluctuate around the optimum once there
  (:class:`~pyro_lvmle.em.MCEM`), the last half of the recorded parameters still trend
  (:func:`~pyro_lvmle.em.burn_in.trend_test`). The iterates of a stochastic approximation
  (SAEM, StochasticNewton) are averages, which move smoothly even at the optimum, those of
  exact EM are deterministic, and variational EM's follow Adam's smooth path (100 steps on
  the tutorial's model trended with :math:`|z| = 108`): a test against successive
  differences reads any smooth approach as a trend, so it is not applied to them.
* **burn-in**: a driver with decreasing steps ended while they were still 1 (its estimates
  then carry one iteration's full Monte Carlo noise).

Runs shorter than :data:`MIN_ITERATIONS` are not judged.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import torch

from .burn_in import trend_test

__all__ = ["MIN_ITERATIONS", "ConvergenceReport", "ConvergenceWarning", "check_convergence",
           "convergence_report"]

#: shorter runs are not judged (a quick look, a doctest, a warm-up before a longer run)
MIN_ITERATIONS = 20


class ConvergenceWarning(UserWarning):
    """A driver's run looks unconverged at its end (see
    :func:`~pyro_lvmle.em.convergence.convergence_report`); the message says why and what
    to do."""


class ConvergenceReport(NamedTuple):
    """The diagnosis of a finished run.

    :ivar bool unconverged: some sign of a run stopped short was found.
    :ivar tuple reasons: one sentence per sign found.
    :ivar float trend: the largest :math:`|z|` of the trend test on the last iterates
        (``nan`` where not applied).
    :ivar float increase: the mean of the last increases of the objective (``nan``: none
        recorded).
    :ivar float increase_se: its Monte Carlo standard error (0 for an exact objective).
    :ivar float fraction_missing: the last estimated fraction of missing information
        (``nan``: not estimated).
    :ivar float remaining: the ascent the increases predict is still to come.
    """

    unconverged: bool
    reasons: tuple
    trend: float
    increase: float
    increase_se: float
    fraction_missing: float
    remaining: float


def _last(history, name: str, count: int) -> list[float]:
    if name not in history.metric_names:
        return []
    return [v for v in history[name][-count:] if not math.isnan(v)]


def convergence_report(history, *, trend: bool = False, rising: bool = True, last: int = 3,
                       tol: float = 0.01, threshold: float = 3.0) -> ConvergenceReport:
    """Diagnose a finished run from its history.

    :param history: the driver's :class:`~pyro_lvmle.em.History`.
    :param bool trend: apply the trend test to the last half of the recorded parameters
        (drivers whose iterates fluctuate around the optimum).
    :param bool rising: judge the last increases.
    :param int last: the increases averaged.
    :param float tol: the remaining ascent (log-likelihood units) that counts as short.
    :param float threshold: the trend test's :math:`|z|`.

    Example::

        >>> from pyro_lvmle.em import History
        >>> from pyro_lvmle.em.convergence import convergence_report
        >>> history = History()
        >>> for k in range(30):   # EM creeping: each increase 0.98 of the one before
        ...     history.append(k + 1, 0.0, {"increase": 0.98**k}, {})
        >>> report = convergence_report(history)
        >>> report.unconverged, round(report.remaining, 1)
        (True, 27.8)
    """
    reasons = []
    names = history.metric_names
    if len(history) < MIN_ITERATIONS:
        return ConvergenceReport(False, (), math.nan, math.nan, math.nan, math.nan, math.nan)
    # the burn-in
    ended_in_burn_in = (_last(history, "burn_in", 1) == [1.0]
                        or ("burn_in" not in names and _last(history, "gamma", 1) == [1.0]
                            and len(history) > 1))
    if ended_in_burn_in:
        reasons.append("the run ended during the burn-in (steps gamma = 1), so the estimates "
                       "carry one iteration's full Monte Carlo noise: run more steps")
    # still rising
    fraction = (_last(history, "fraction_missing", 1) or [math.nan])[0]
    name = "increase" if "increase" in names else "q_increase" if "q_increase" in names \
        else None
    increase = se = remaining = math.nan
    if name is not None and rising:
        values = _last(history, name, last)
        errors = _last(history, "q_increase_se", last) if name == "q_increase" else []
        increase = sum(values) / len(values)
        se = math.sqrt(sum(e * e for e in errors)) / len(values) if errors else 0.0
        if math.isfinite(fraction):
            rho = min(max(fraction, 0.0), 0.999) ** 2
        else:
            series = _last(history, name, last + 1)
            ratios = [b / a for a, b in zip(series[:-1], series[1:], strict=True)
                      if a > 0 and b > 0]
            rho = min(max(sum(ratios) / len(ratios), 0.0), 0.999) if ratios else 0.0
        remaining = max(increase, 0.0) * rho / (1 - rho)
        if increase > 2 * se and increase + remaining > tol:
            rate = f"; EM's rate {math.sqrt(rho):.3g} per iteration" if rho > 0 else ""
            reasons.append(
                f"the objective still rises ({name} {increase:.3g} per iteration over the last "
                f"{len(values)}, Monte Carlo error {se:.2g}{rate}), which predicts about "
                f"{increase + remaining:.3g} more to gain: run more steps, or, where the "
                "fraction of missing information is large, use Newton steps (newton=True in "
                "MCEM and SAEM, their default up to 200 parameter entries; StochasticNewton)")
    # trend
    z = math.nan
    params = history.params if trend else {}
    if params:
        flat = torch.cat([v.reshape(len(v), -1) for v in params.values()], 1)
        window = flat[len(flat) // 2:]
        if len(window) >= 8:
            test = trend_test(window.double(), threshold=threshold)
            z = float(test.z.abs().max())
            if test.trending:
                reasons.append(f"the parameters still trend over the last {len(window)} "
                               f"iterations (largest |z| = {z:.3g}): run more steps")
    unconverged = bool(reasons)
    if math.isfinite(fraction) and reasons:
        reasons.append(f"the estimated fraction of missing information is {fraction:.3g}: EM "
                       f"removes only {max(1 - fraction, 0.0):.1%} of the distance to the "
                       "maximum per iteration")
    return ConvergenceReport(unconverged, tuple(reasons), z, increase, se, fraction, remaining)


def check_convergence(driver, **options) -> ConvergenceReport | None:
    """Diagnose ``driver``'s run (:func:`convergence_report`) and warn with a
    :class:`ConvergenceWarning` naming what to do if it looks unconverged.

    A driver whose iterates fluctuate around the optimum (``stationary_iterates``:
    :class:`~pyro_lvmle.em.MCEM`) gets the trend
    test, unless its own stopping rule fired: then neither the trend test (a direction the
    data do not identify, as PPCA's rotation, wanders) nor its Monte Carlo Q-increase (an
    M-step on draws always finds some: the maximization bias) is judged.

    :param driver: a :class:`~pyro_lvmle.em.Driver` after :meth:`~pyro_lvmle.em.Driver.run`.
    :param options: passed to :func:`convergence_report`.
    :returns: the report (``None`` before any step).

    Example::

        >>> import torch, pyro_lvmle as lv
        >>> from pyro_lvmle.em.convergence import check_convergence
        >>> _ = torch.manual_seed(0)
        >>> model = lv.models.GaussianMixture(num_components=2, data_dim=1)
        >>> data = torch.cat([torch.randn(50) - 3, torch.randn(50) + 3])[:, None]
        >>> em = lv.ExactEM(model, tol=1e-8)
        >>> history = em.run(data, num_steps=200, progress=False)
        >>> check_convergence(em).unconverged
        False
    """
    if len(driver.history) == 0:
        return None
    stationary = getattr(driver, "stationary_iterates", False)
    judged = not (stationary and driver.converged)
    report = convergence_report(driver.history, trend=stationary and judged, rising=judged,
                                **options)
    if report.unconverged:
        warnings.warn(f"{type(driver).__name__} looks unconverged after {driver.iteration} "
                      f"iterations: " + "; ".join(report.reasons), ConvergenceWarning,
                      stacklevel=3)
    return report
