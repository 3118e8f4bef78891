r"""Step sizes for annealed importance sampling, one per intermediate target, from a pilot run.

AIS's transitions must not adapt during the run (an adapted kernel biases the weights), but
the right HMC step size changes along the path: wide at the prior, often orders of magnitude
narrower at the posterior. A pilot run of a few chains walks the same path, moving one
shared log step size toward a target acceptance rate by a Robbins-Monro step after each
transition,

.. math::

    \log \epsilon \leftarrow \log \epsilon + \kappa\,(\bar a - \delta),

and records the step size it reached at each :math:`\beta_k`. The real run then uses these
fixed values (:func:`~pyro_lvmle.evidence.annealed_importance_sampling`'s ``step_sizes``):
they depend on the pilot's random numbers only, never on the real chains, so the real
weights stay unbiased.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .._checks import check_int, check_positive, check_probability
from .ais import check_betas

__all__ = ["PilotResult", "pilot_step_sizes"]


class PilotResult(NamedTuple):
    """What a pilot run gives the real one.

    :ivar torch.Tensor step_sizes: one step size per beta ``(K + 1,)``.
    :ivar torch.Tensor inverse_masses: one diagonal inverse mass per beta ``(K + 1, D)`` (the
        pilot chains' coordinate variances, smoothed along the path), or ``None`` when the
        pilot did not adapt the mass.
    """

    step_sizes: torch.Tensor
    inverse_masses: torch.Tensor | None


def pilot_step_sizes(path, initial_position: torch.Tensor, betas, sampler, *,
                     num_transitions: int = 2, target_accept: float = 0.7,
                     rate: float = 1.0, step_size: float | None = None,
                     adapt_mass: bool = False) -> PilotResult:
    r"""One step size per inverse temperature, tuned by a pilot run along ``path``.

    :param path: ``path(beta) -> target``, as for
        :func:`~pyro_lvmle.evidence.annealed_importance_sampling`.
    :param torch.Tensor initial_position: ``(C, D)`` draws at ``betas[0]`` for the pilot's
        chains (a few dozen are enough: the step size is shared).
    :param betas: the inverse temperatures of the real run.
    :param sampler: the non-adapting sampler of the real run.
    :param int num_transitions: pilot transitions (and updates) per intermediate target.
    :param float target_accept: the mean acceptance probability :math:`\delta` aimed for.
    :param float rate: :math:`\kappa`, the Robbins-Monro gain on the log step size.
    :param float step_size: the starting step size; the sampler's if ``None``.
    :param bool adapt_mass: also a diagonal inverse mass per beta: the variance of the pilot
        chains' coordinates, an exponential moving average along the path (neighbouring
        targets are alike; 32 chains give a noisy variance), used by the pilot's own next
        transitions. For targets whose coordinates have very different scales.
    :returns: a :class:`PilotResult`: ``(K + 1,)`` step sizes, one per beta (the first and
        last are never used for transitions; they repeat their neighbours'), and the inverse
        masses.

    Example::

        >>> import torch, pyro_lvmle as lv
        >>> from pyro_lvmle.traces import Potential
        >>> from pyro_lvmle.samplers import BatchedKernel, hmc_step
        >>> model = lv.models.LinearGaussian(dim=1, sigma=0.05)
        >>> potential = Potential(model, (model.simulate(3),))
        >>> sampler = BatchedKernel(hmc_step, step_size=1.0, adapt_step_size=False, num_steps=3)
        >>> sizes = pilot_step_sizes(potential.tempered, potential.sample_prior(20),
        ...                          torch.linspace(0, 1, 30), sampler).step_sizes
        >>> bool(sizes[-1] < 0.5 * sizes[1])  # the posterior is 20 times narrower
        True

    References:

    [1] Robbins & Monro (1951), "A stochastic approximation method", Ann. Math. Statist. 22(3).
    """
    where = "pilot_step_sizes"
    betas = check_betas(where, betas).to(initial_position)
    num_transitions = check_int(where, "num_transitions", num_transitions, 1)
    target_accept = check_probability(where, "target_accept", target_accept)
    rate = check_positive(where, "rate", rate)
    start = getattr(sampler, "step_size", None) if step_size is None else step_size
    start = check_positive(where, "step_size", 0.1 if start is None else start)
    # kept on the device: no synchronization per transition
    log_step = torch.tensor(math.log(start)).to(initial_position)
    state = sampler.init(initial_position.detach(), path(betas[0]))
    sizes = [log_step]
    masses = [state.inverse_mass.mean(0)]
    for k in range(1, betas.numel() - 1):
        target = path(betas[k])
        state = sampler.init(state.position, target, like=state)
        if adapt_mass:
            state = state._replace(inverse_mass=masses[-1].expand_as(state.inverse_mass))
        for _ in range(num_transitions):
            state = state._replace(step_size=log_step.exp().expand_as(state.step_size))
            state, info = sampler.step(state, target)
            accept = torch.nan_to_num(info.accept_prob, nan=0.0).mean()
            log_step = log_step + rate * (accept - target_accept)
        sizes.append(log_step)
        if adapt_mass and state.position.shape[0] > 1:
            # a moving average: 32 chains give each variance to about 25 %
            spread = state.position.var(0).clamp(min=1e-8)
            masses.append(0.7 * masses[-1] + 0.3 * spread)
        else:
            masses.append(masses[-1])
    sizes.append(sizes[-1])
    masses.append(masses[-1])
    if betas.numel() > 2:
        sizes[0], masses[0] = sizes[1], masses[1]
    return PilotResult(torch.stack(sizes).exp(), torch.stack(masses) if adapt_mass else None)
