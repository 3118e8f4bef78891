r"""Annealed importance sampling (Neal 2001): one batched core for every path of targets.

Chains start at exact draws of :math:`\pi_0` and move through intermediate targets
:math:`\pi_k \propto f_k`, :math:`k = 1, \dots, K`, by transitions leaving each invariant;
each chain's log weight sums the log density ratios at the points where it stands:

.. math::

    \log w = \sum_{k=1}^{K} \big(\log f_k(x_{k-1}) - \log f_{k-1}(x_{k-1})\big),
    \qquad x_k \sim T_k(x_{k-1}, \cdot),
    \qquad \mathbb{E}[w] = Z_K / Z_0 .

A *path* is any callable ``beta -> target`` whose targets (the sampler protocol's
:class:`~pyro_lvmle.samplers.Target`) give :math:`U_\beta = -\log f_\beta`, one
:math:`\beta` per chain allowed: :meth:`~pyro_lvmle.traces.Potential.tempered` (prior to
posterior, :math:`Z_0 = 1`, :math:`Z_1 = p(x)`), or a geometric path from a tractable base
to an unnormalized model (a partition function). A decreasing ``betas`` runs the path in
reverse: started at exact draws of :math:`\pi_1` it estimates :math:`Z_0 / Z_1`, whose
logarithm's negative is a stochastic *upper* bound on :math:`\log Z_1 - \log Z_0`
(bidirectional Monte Carlo, Grosse et al. 2015).

Each log density ratio costs one energy evaluation (the energy at the previous :math:`\beta`
is the chains' cached one). The transitions must not adapt to the chains' own history during
the run (an adapted kernel breaks the weights' unbiasedness); give step sizes per
intermediate target instead (``step_sizes``), for instance from a pilot run.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .._checks import check_int
from ..samplers.base import ChainState
from .estimate import Estimate, log_mean_exp

__all__ = ["AISResult", "annealed_importance_sampling", "check_betas"]


class AISResult(NamedTuple):
    """The outcome of an annealed importance sampling run.

    :ivar torch.Tensor log_weights: one log weight per chain ``(C,)``; their mean weight
        estimates :math:`Z_K / Z_0`.
    :ivar ChainState state: the chains at the end (draws of :math:`\\pi_K` once weighted).
    :ivar torch.Tensor accept_prob: the chains' mean acceptance probability at each
        intermediate target ``(K - 1,)``.
    :ivar Estimate estimate: :math:`\\log(Z_K / Z_0)` with its standard error.
    """

    log_weights: torch.Tensor
    state: ChainState
    accept_prob: torch.Tensor
    estimate: Estimate


def check_betas(where: str, betas, *, from_zero_to_one: bool = False) -> torch.Tensor:
    """``betas`` as a 1-D float64-compatible tensor of at least 2 finite values, monotone.

    :param str where: who checks, for the message.
    :param betas: the inverse temperatures (a sequence or tensor).
    :param bool from_zero_to_one: also require the whole path, increasing from 0 to 1 (an
        estimate of a normalizing constant; a partial path estimates a ratio of others).
    :raises ValueError: when fewer than 2, not finite, negative or not monotone.

    Example::

        >>> check_betas("ais", [0.0, 0.5, 1.0]).tolist()
        [0.0, 0.5, 1.0]
    """
    betas = torch.as_tensor(betas, dtype=torch.get_default_dtype())
    steps = betas.diff() if betas.dim() == 1 else None
    if betas.dim() != 1 or betas.numel() < 2 or not torch.isfinite(betas).all() \
            or (betas < 0).any() or not ((steps >= 0).all() or (steps <= 0).all()):
        raise ValueError(f"{where}: betas must be a 1-D monotone sequence of at least 2 "
                         f"finite non-negative values (e.g. torch.linspace(0, 1, 1001)), "
                         f"got {betas!r}")
    if from_zero_to_one and (betas[0] != 0 or betas[-1] != 1 or (steps < 0).any()):
        raise ValueError(f"{where}: betas must increase from 0 to 1 (the whole path from the "
                         f"base to the target), got {float(betas[0]):.3g} ... "
                         f"{float(betas[-1]):.3g}")
    return betas


def annealed_importance_sampling(path, initial_position: torch.Tensor, betas, sampler, *,
                                 num_transitions: int = 1, step_sizes=None,
                                 inverse_masses=None,
                                 like: ChainState | None = None) -> AISResult:
    r"""Run ``C`` annealed importance sampling chains along ``path`` at ``betas``.

    :param path: ``path(beta) -> target``, ``beta`` a scalar tensor or one per chain ``(C,)``.
    :param torch.Tensor initial_position: ``(C, D)`` exact draws of the target at
        ``betas[0]``.
    :param betas: the inverse temperatures :math:`\beta_0, \dots, \beta_K`, monotone.
    :param sampler: a :class:`~pyro_lvmle.samplers.Sampler` making the transitions; it must
        not adapt during :meth:`step` (e.g. a
        :class:`~pyro_lvmle.samplers.BatchedKernel` built with ``adapt_step_size=False``).
    :param int num_transitions: transitions at each intermediate target.
    :param step_sizes: optional step size per beta ``(K + 1,)``, set on the chains before
        their transitions at that beta.
    :param inverse_masses: optional diagonal inverse mass per beta ``(K + 1, D)``, set
        likewise (e.g. the spread of a pilot run's chains at each beta).
    :param ChainState like: an earlier state of these chains whose step size and mass to use.
    :raises ValueError: if ``sampler`` adapts in its steps, or a log density ratio is
        ``nan`` (the message names the beta).

    Example: the prior-to-posterior path of a conjugate model, :math:`\log p(x)` exact::

        >>> import torch, pyro_lvmle as lv
        >>> from pyro_lvmle.traces import Potential
        >>> from pyro_lvmle.samplers import BatchedKernel, hmc_step
        >>> _ = torch.manual_seed(0)
        >>> model = lv.models.LinearGaussian(dim=1)
        >>> x = model.simulate(3)
        >>> potential = Potential(model, (x,))
        >>> sampler = BatchedKernel(hmc_step, step_size=0.5, adapt_step_size=False, num_steps=3)
        >>> result = annealed_importance_sampling(
        ...     potential.tempered, potential.sample_prior(200), torch.linspace(0, 1, 50),
        ...     sampler)
        >>> bool(abs(result.estimate.value - model.log_marginal(x)) < 0.05)
        True

    References:

    [1] Neal (2001), "Annealed importance sampling", Statistics and Computing 11.

    [2] Grosse, Ghahramani & Adams (2015), "Sandwiching the marginal likelihood using
    bidirectional Monte Carlo", arXiv:1511.02543.
    """
    where = "annealed_importance_sampling"
    betas = check_betas(where, betas).to(initial_position)
    num_transitions = check_int(where, "num_transitions", num_transitions, 1)
    if getattr(sampler, "track_rate", 0.0):
        raise ValueError(f"{where}: the sampler adapts its step size in every step "
                         "(track_rate > 0), which biases the weights; build it with "
                         "track_rate=0 or adapt_step_size=False and give step_sizes")
    if step_sizes is not None:
        step_sizes = torch.as_tensor(step_sizes).to(initial_position)
        if step_sizes.shape != betas.shape or not (step_sizes > 0).all():
            raise ValueError(f"{where}: step_sizes must hold one positive value per beta "
                             f"({betas.numel()}), got shape {tuple(step_sizes.shape)}")
    if inverse_masses is not None:
        inverse_masses = torch.as_tensor(inverse_masses).to(initial_position)
        if inverse_masses.shape != betas.shape + initial_position.shape[-1:] \
                or not (inverse_masses > 0).all():
            raise ValueError(f"{where}: inverse_masses must hold one positive row (D,) per "
                             f"beta, got shape {tuple(inverse_masses.shape)}")
    state = sampler.init(initial_position.detach(), path(betas[0]), like=like)
    log_weights = torch.zeros_like(state.potential_energy)
    accept = []
    last = betas.numel() - 1
    for k in range(1, last + 1):
        previous = state.potential_energy
        state = sampler.init(state.position, path(betas[k]), like=state)
        ratio = previous - state.potential_energy
        # a point of zero density at the next beta has weight 0 (-inf); nan is a fault
        if torch.isnan(ratio).any() or (ratio == torch.inf).any():
            raise ValueError(f"{where}: the log density ratio between beta={float(betas[k - 1])}"
                             f" and beta={float(betas[k])} is not finite for "
                             f"{int((~torch.isfinite(ratio)).sum())} chains")
        log_weights = log_weights + ratio
        if k == last:
            break
        if step_sizes is not None:
            state = state._replace(step_size=step_sizes[k].expand_as(state.step_size))
        if inverse_masses is not None:
            state = state._replace(inverse_mass=inverse_masses[k].expand_as(state.inverse_mass))
        total = 0.0
        for _ in range(num_transitions):
            state, info = sampler.step(state, path(betas[k]))
            total = total + info.accept_prob
        accept.append((total / num_transitions).mean())
    value, stderr = log_mean_exp(log_weights)
    accept_prob = torch.stack(accept) if accept else log_weights.new_zeros(0)
    ess = (2 * torch.logsumexp(log_weights, 0) - torch.logsumexp(2 * log_weights, 0)).exp()
    estimate = Estimate(value, stderr, method="ais",
                        diagnostics={"ess": float(ess), "num_chains": log_weights.numel(),
                                     "num_betas": betas.numel(),
                                     "accept_prob": float(accept_prob.mean())
                                     if accept else float("nan")})
    return AISResult(log_weights, state, accept_prob, estimate)
