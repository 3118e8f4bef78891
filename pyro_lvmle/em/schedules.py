"""Stochastic approximation: step-size schedules (plain callables ``iteration -> gamma``) and
the averaging update they drive."""

from __future__ import annotations

import numbers

from .._checks import check_int

__all__ = ["saem_step_size", "stochastic_approximation"]


class saem_step_size:  # noqa: N801 -- a schedule is used like a function, as optax's are
    r"""SAEM's step sizes: :math:`\gamma_k = 1` for the ``burn_in`` first iterations, then
    :math:`\gamma_k = (k - K_1)^{-\alpha}`, :math:`\tfrac12 < \alpha \le 1`.

    The burn-in forgets the starting point fast (each iteration's draws replace the past);
    the decreasing steps average the Monte Carlo noise away. The conditions
    :math:`\sum \gamma_k = \infty`, :math:`\sum \gamma_k^2 < \infty` give convergence
    (Delyon, Lavielle & Moulines 1999); :math:`\alpha = 1` weighs every draw after the burn-in
    equally, as saemix's second phase does.

    :param int burn_in: :math:`K_1`, iterations with :math:`\gamma = 1`.
    :param float alpha: the decay exponent.

    Example::

        >>> from pyro_lvmle.em import saem_step_size
        >>> schedule = saem_step_size(burn_in=2, alpha=1.0)
        >>> [schedule(k) for k in range(1, 6)]
        [1.0, 1.0, 1.0, 0.5, 0.3333333333333333]
    """

    def __init__(self, burn_in: int = 100, alpha: float = 1.0):
        check_int("saem_step_size", "burn_in", burn_in, low=0)
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
            raise TypeError(f"saem_step_size: alpha must be a float in (0.5, 1], got {alpha!r}")
        if not 0.5 < alpha <= 1.0:
            raise ValueError(f"saem_step_size: alpha must be in (0.5, 1], got {alpha!r}")
        self.burn_in, self.alpha = burn_in, float(alpha)

    def __repr__(self) -> str:
        return f"saem_step_size(burn_in={self.burn_in}, alpha={self.alpha})"

    def __call__(self, iteration: int) -> float:
        """:math:`\\gamma_k` for iteration ``k`` (1-based)."""
        if iteration <= self.burn_in:
            return 1.0
        return float((iteration - self.burn_in) ** -self.alpha)


def stochastic_approximation(previous: dict | None, new: dict, gamma: float) -> dict:
    r"""SAEM's update of averaged sufficient statistics, a pure function:
    :math:`s_k = s_{k-1} + \gamma_k (S(z_k) - s_{k-1})` (the first call returns ``new``).

    :param dict previous: :math:`s_{k-1}` by name, or ``None`` before the first iteration.
    :param dict new: :math:`S(z_k)`, the new draws' statistics (averaged over chains).
    :param float gamma: :math:`\gamma_k \in (0, 1]`.

    Example::

        >>> import torch
        >>> from pyro_lvmle.em.schedules import stochastic_approximation
        >>> stochastic_approximation({"s": torch.tensor(1.0)}, {"s": torch.tensor(3.0)}, 0.5)
        {'s': tensor(2.)}
    """
    if previous is None:
        return dict(new)
    if previous.keys() != new.keys():
        raise ValueError(f"SAEM: statistics changed names from {sorted(previous)} to "
                         f"{sorted(new)}; statistics() must return the same keys every time")
    return {k: s + gamma * (new[k] - s) for k, s in previous.items()}
