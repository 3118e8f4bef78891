"""Warm-up: step-size dual averaging and a diagonal mass matrix from windowed variances."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .base import ChainState, StepInfo, stack_info
from .hmc import dual_averaging_init, hmc_step

__all__ = ["WarmupResult", "warmup", "warmup_windows"]


class WarmupResult(NamedTuple):
    """The adapted chains and what warm-up saw.

    :ivar ChainState state: the chains after warm-up, step size set to the dual average.
    :ivar StepInfo info: every warm-up transition's info, stacked: ``(warmup_steps, C)``.
    """

    state: ChainState
    info: StepInfo

    @property
    def accept_prob(self) -> torch.Tensor:
        """Mean acceptance probability over chains, per warm-up iteration."""
        return self.info.accept_prob.mean(-1)

    @property
    def num_divergent(self) -> int:
        """Divergent transitions during warm-up."""
        return int(self.info.divergent.sum())


def warmup_windows(num_steps: int) -> list[tuple[int, int]]:
    """Stan's slow windows ``(start, end)``: a fast 15% start, doubling windows, a fast end
    of 10% but at least 20 steps (or half of a shorter warm-up), in which the step size
    adapts to the last mass matrix: dual averaging restarted two steps before the end of a
    20-step warm-up left 4 chains a step size accepting 3% of proposals.

    :param int num_steps: the warm-up length.

    Example::

        >>> from pyro_lvmle.samplers import warmup_windows
        >>> warmup_windows(200), warmup_windows(20)
        ([(30, 55), (55, 180)], [(3, 10)])
    """
    fast_end = max(int(0.1 * num_steps), min(20, num_steps // 2), 1)
    start, end = int(0.15 * num_steps), num_steps - fast_end
    windows, size, begin = [], 25, start
    while begin < end:
        stop = begin + size
        if stop + 2 * size > end:  # the last window absorbs the remainder
            stop = end
        windows.append((begin, stop))
        begin, size = stop, 2 * size
    return windows


def warmup(state: ChainState, potential, warmup_steps: int, *, step=hmc_step,
           adapt_mass: bool = True, shared_step_size: bool = True,
           **step_kwargs) -> WarmupResult:
    r"""Adapt the step size and the diagonal mass matrix over ``warmup_steps`` transitions.

    The step size follows dual averaging throughout (restarted after each mass update, at
    :math:`\mu = \log(10\epsilon)`); in Stan's doubling windows the inverse mass becomes the
    positions' variance, pooled over the window and over chains and shrunk towards
    :math:`10^{-3}` as Stan does: :math:`\frac{n}{n+5}\hat\sigma^2 + 10^{-3}\frac{5}{n+5}`.

    :param ChainState state: the initial chains.
    :param potential: provides ``value_and_grad``.
    :param int warmup_steps: warm-up transitions.
    :param step: the transition, :func:`~pyro_lvmle.samplers.hmc_step` or
        :func:`~pyro_lvmle.samplers.mala_step`.
    :param bool adapt_mass: adapt the diagonal mass matrix too.
    :param bool shared_step_size: one step size for all chains.
    :param step_kwargs: passed to ``step`` (``num_steps`` of leapfrog, ``target_accept``).
    """
    windows = warmup_windows(warmup_steps) if adapt_mass else []
    ends = {end for _, end in windows}
    starts = {start for start, _ in windows}
    infos = []
    count = mean = m2 = None
    for i in range(warmup_steps):
        if i in starts:
            count, mean, m2 = 0, torch.zeros_like(state.position[0]), \
                torch.zeros_like(state.position[0])
        state, info = step(state, potential, adapt_step_size=True,
                           shared_step_size=shared_step_size, **step_kwargs)
        infos.append(info)
        if count is not None:
            count, mean, m2 = _welford(count, mean, m2, state.position)
        if i + 1 in ends:
            n = count
            variance = (n / (n + 5.0)) * m2 / max(n - 1, 1) + 1e-3 * (5.0 / (n + 5.0))
            state = state._replace(inverse_mass=variance.expand_as(state.position).clone(),
                                   adaptation=dual_averaging_init(state.step_size))
            count = None
    state = state._replace(step_size=state.adaptation.log_step_avg.exp())
    return WarmupResult(state, stack_info(infos, state))


def _welford(count, mean, m2, positions):
    """Pool every chain's position into the running mean and sum of squared deviations
    (Chan, Golub & LeVeque's update for a batch)."""
    n_b = positions.shape[0]
    mean_b = positions.mean(0)
    m2_b = (positions - mean_b).pow(2).sum(0)
    n = count + n_b
    delta = mean_b - mean
    return n, mean + delta * (n_b / n), m2 + m2_b + delta.pow(2) * (count * n_b / n)
