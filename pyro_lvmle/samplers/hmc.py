"""Batched Hamiltonian Monte Carlo, MALA and ULA: pure ``init`` and ``step`` on a NamedTuple.

Every chain moves at once: the state holds ``C`` chains in its leading dimension and a step
costs ``num_steps`` potential-and-gradient evaluations for all of them together. MALA is HMC
with one leapfrog step; ULA is that step without the Metropolis correction (both are exact
identities: one leapfrog step from a fresh momentum is the Langevin proposal with step
:math:`h = \\epsilon^2 / 2`).
"""

from __future__ import annotations

import math
from functools import partial

import torch

from .base import ChainState, DualAveraging, StepInfo

__all__ = [
    "HMCInfo",
    "HMCState",
    "dual_averaging_init",
    "dual_averaging_update",
    "hmc_init",
    "hmc_step",
    "mala_step",
    "ula_step",
]


#: the state of every sampler's chains (:class:`~pyro_lvmle.samplers.ChainState`)
HMCState = ChainState
#: what a transition did (:class:`~pyro_lvmle.samplers.StepInfo`)
HMCInfo = StepInfo


def hmc_init(position: torch.Tensor, potential, *, step_size: float = 0.1,
             inverse_mass: torch.Tensor | None = None) -> HMCState:
    """The initial state of chains at ``position`` ``(C, D)``.

    :param torch.Tensor position: unconstrained starting points, one row per chain.
    :param potential: ``value_and_grad(position) -> (U (C,), grad (C, D))`` provider, e.g.
        :class:`~pyro_lvmle.traces.Potential`.
    :param float step_size: the initial leapfrog step size.
    :param torch.Tensor inverse_mass: diagonal inverse mass ``(D,)`` or ``(C, D)``; ones by
        default.
    """
    if position.dim() != 2:
        raise ValueError(f"hmc_init: position must be (num_chains, dim), got "
                         f"{tuple(position.shape)}")
    if not step_size > 0:
        raise ValueError(f"hmc_init: step_size must be positive, got {step_size!r}")
    energy, grad = potential.value_and_grad(position)
    # infinite: outside the support (a NaN, from NaN data say, is left to the callers, which
    # name the site)
    bad = energy.isinf().nonzero().reshape(-1)
    if bad.numel():
        raise ValueError(
            f"hmc_init: the target's energy is {float(energy[bad[0]])} at {bad.numel()} of "
            f"{position.shape[0]} starting positions (chains {bad[:5].tolist()}): a chain "
            "started where the density is zero or infinite may never move; start the "
            "chains inside the target's support (e.g. Potential.initial_position)")
    num_chains = position.shape[0]
    steps = position.new_full((num_chains,), float(step_size))
    inv_mass = position.new_ones(position.shape) if inverse_mass is None \
        else inverse_mass.expand(position.shape).clone()
    return HMCState(position.detach(), energy, grad, steps, inv_mass,
                    dual_averaging_init(steps))


def dual_averaging_init(step_size: torch.Tensor) -> DualAveraging:
    """A fresh dual-averaging state at ``step_size`` ``(C,)`` (:math:`\\mu = \\log 10\\epsilon`).

    :param torch.Tensor step_size: the current step size per chain.
    """
    log_step = step_size.log()
    return DualAveraging(log_step, log_step.clone(), torch.zeros_like(log_step),
                         log_step + math.log(10.0), 0)


def dual_averaging_update(adaptation: DualAveraging, accept_prob: torch.Tensor,
                          target: float, *, gamma: float = 0.05, t0: float = 10.0,
                          kappa: float = 0.75) -> DualAveraging:
    r"""One dual-averaging update towards mean acceptance ``target``.

    .. math::

        \bar H_t = (1 - \tfrac{1}{t + t_0}) \bar H_{t-1} + \tfrac{1}{t + t_0}(\delta - a_t),
        \quad \log\epsilon_t = \mu - \tfrac{\sqrt t}{\gamma} \bar H_t,
        \quad \log\bar\epsilon_t = t^{-\kappa} \log\epsilon_t
              + (1 - t^{-\kappa}) \log\bar\epsilon_{t-1}.

    The constants are Hoffman & Gelman's (2014) defaults, also Stan's and Pyro's.

    :param DualAveraging adaptation: the current state.
    :param torch.Tensor accept_prob: acceptance probabilities ``(C,)`` (or their mean,
        broadcast, for a step size shared by the chains).
    :param float target: the target mean acceptance probability :math:`\delta`.
    """
    t = adaptation.count + 1
    eta = 1.0 / (t + t0)
    error_avg = (1 - eta) * adaptation.error_avg + eta * (target - accept_prob)
    log_step = adaptation.prox_center - math.sqrt(t) / gamma * error_avg
    weight = t ** (-kappa)
    log_step_avg = weight * log_step + (1 - weight) * adaptation.log_step_avg
    return DualAveraging(log_step, log_step_avg, error_avg, adaptation.prox_center, t)


def hmc_step(state: HMCState, potential, *, num_steps: int = 10, metropolis: bool = True,
             adapt_step_size: bool = False, target_accept: float = 0.8,
             shared_step_size: bool = False, jitter: float = 0.0) -> tuple[HMCState, HMCInfo]:
    r"""One HMC transition for every chain: fresh momentum, leapfrog, Metropolis test.

    With :math:`p \sim \mathcal{N}(0, M)` and :math:`H(q, p) = U(q) + \tfrac12 p^\top M^{-1} p`,
    ``num_steps`` leapfrog steps of size :math:`\epsilon` propose :math:`(q', p')`, accepted
    with probability :math:`\min(1, e^{H(q, p) - H(q', p')})` (Neal 2011).

    :param HMCState state: the chains.
    :param potential: provides ``value_and_grad(position)``.
    :param int num_steps: leapfrog steps per transition (fixed trajectory length
        ``num_steps * step_size``).
    :param bool metropolis: apply the Metropolis correction (``False``: unadjusted).
    :param bool adapt_step_size: update the step size by dual averaging (warm-up only).
    :param float target_accept: the mean acceptance probability adaptation aims for.
    :param bool shared_step_size: one step size for all chains, adapted on their mean
        acceptance probability.
    :param float jitter: multiply each chain's step size by a fresh
        :math:`\mathcal{U}(1 - j, 1 + j)` draw for this transition (Neal 2011, sec. 5.4.2.2):
        a fixed trajectory length can be nearly periodic for a near-Gaussian target, which
        makes the chain return near its start (tiny effective sample size); a random length
        breaks that. The jittered step is independent of the state, so the target stays
        invariant.
    :returns: the new state and an :class:`HMCInfo`.
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"hmc_step: num_steps must be an int >= 1, got {num_steps!r}")
    if not 0.0 <= jitter < 1.0:
        raise ValueError(f"hmc_step: jitter must be in [0, 1), got {jitter!r}")
    q, energy, grad, eps, inv_mass = (state.position, state.potential_energy, state.grad,
                                      state.step_size, state.inverse_mass)
    momentum = torch.randn_like(q) / inv_mass.sqrt()
    discrete = getattr(potential, "discrete_mask", None)
    if discrete is not None:  # discrete coordinates are moved by discrete steps, never here
        momentum = momentum.masked_fill(discrete, 0.0)
    kinetic = 0.5 * (momentum**2 * inv_mass).sum(-1)
    e = eps.unsqueeze(-1)
    if jitter:
        e = e * (1.0 + jitter * (2.0 * torch.rand_like(e) - 1.0))
    new_q, new_p, new_energy, new_grad = q, momentum, energy, grad
    for _ in range(num_steps):
        new_p = new_p - 0.5 * e * new_grad
        new_q = new_q + e * inv_mass * new_p
        new_energy, new_grad = potential.value_and_grad(new_q)
        new_p = new_p - 0.5 * e * new_grad
    new_kinetic = 0.5 * (new_p**2 * inv_mass).sum(-1)
    energy_error = (new_energy + new_kinetic) - (energy + kinetic)
    finite = torch.isfinite(energy_error)
    divergent = ~finite | (energy_error > 1000.0)
    accept_prob = torch.where(finite, (-energy_error).clamp(max=0.0).exp(),
                              torch.zeros_like(energy_error))
    if metropolis:
        accepted = torch.rand_like(accept_prob) < accept_prob
    else:
        accepted = finite
    keep = accepted.unsqueeze(-1)
    position = torch.where(keep, new_q, q)
    potential_energy = torch.where(accepted, new_energy, energy)
    grad = torch.where(keep, new_grad, grad)
    adaptation, step_size = state.adaptation, eps
    if adapt_step_size:
        stat = accept_prob.mean().expand_as(accept_prob) if shared_step_size else accept_prob
        adaptation = dual_averaging_update(adaptation, stat, target_accept)
        step_size = adaptation.log_step.exp()
    new_state = HMCState(position, potential_energy, grad, step_size, inv_mass, adaptation)
    return new_state, HMCInfo(accept_prob, accepted, divergent, energy_error)


#: MALA: HMC with a single leapfrog step (Roberts & Tweedie 1996); target acceptance 0.574
#: (Roberts & Rosenthal 1998).
mala_step = partial(hmc_step, num_steps=1, target_accept=0.574)

#: ULA: the Langevin step without correction, step :math:`h = \epsilon^2/2`.
ula_step = partial(hmc_step, num_steps=1, metropolis=False)
