r"""Discrete steps: Metropolis-within-Gibbs, Gibbs-with-gradients, and their composite with a
gradient step on the continuous coordinates.

A target with discrete latents marks their coordinates in ``discrete_mask`` and groups them in
``discrete_blocks`` (:class:`DiscreteBlock`); ``block_energy(position, block)`` returns the
energy terms that involve the block, one per element of its independent plates, so that every
element of a block is proposed at once and accepted or rejected on its own. A block's
coordinates are viewed as ``(C, *batch_shape, event_numel)``; the ``event_numel`` coordinates
of an element are updated in turn (a systematic scan), each update a valid Metropolis-Hastings
or Gibbs move, so the scan leaves the target invariant. Every step ends with one
``target.value_and_grad`` so that the state's cached energy and gradient stay exact.
"""

from __future__ import annotations

import math

import torch
from torch.distributions import Categorical

from .._checks import check_int
from ..traces.discrete import DiscreteBlock
from .base import ChainState, StepInfo
from .hmc import hmc_step

__all__ = [
    "DiscreteBlock",
    "gibbs_with_gradients_step",
    "metropolis_within_gibbs_step",
    "mixed_step",
]

_KINDS = ("binary", "categorical", "count")

def metropolis_within_gibbs_step(
        state: ChainState, target, *, window: int = 1, max_gibbs_support: int = 16,
        adapt_step_size: bool = False, shared_step_size: bool = False,
        target_accept: float = 0.8) -> tuple[ChainState, StepInfo]:
    r"""Update every discrete block of every chain: exact Gibbs draws where the support is
    small, a random-walk Metropolis move on counts otherwise.

    For each block and each coordinate :math:`j` of its elements, every element :math:`e`
    moves at once. On a finite support of at most ``max_gibbs_support`` values (binary,
    categorical, bounded counts) the new value is drawn from the full conditional,

    .. math::

        p(x_{ej} = v \mid \text{rest}) \propto \exp\{-E_e(x_{ej} = v)\},

    with :math:`E_e` the element's ``block_energy``; otherwise :math:`x'_{ej} = x_{ej} + s`,
    :math:`s` uniform on :math:`\{\pm 1, \dots, \pm w\}` (symmetric), accepted with
    probability :math:`\min(1, e^{E_e(x) - E_e(x')})` and never below ``lower`` nor above
    ``upper`` (Metropolis et al. 1953; Tierney 1994).

    :param ChainState state: the chains; only the discrete coordinates move.
    :param target: provides ``discrete_blocks``, ``block_energy`` and ``value_and_grad``.
    :param int window: the random walk's largest jump :math:`w`.
    :param int max_gibbs_support: counts with at most this many values are drawn exactly.
    :param bool adapt_step_size: ignored (there is no step size), accepted so that the
        warm-up of :class:`~pyro_lvmle.samplers.BatchedKernel` runs this step unchanged;
        likewise ``shared_step_size`` and ``target_accept``.
    :returns: the new state (energy and gradient recomputed) and an :class:`StepInfo`:
        ``accept_prob`` the mean acceptance probability of the chain's proposals (1 for a
        Gibbs draw), ``accepted`` whether any coordinate changed, ``energy_error`` the change
        of the potential energy, ``divergent`` false.

    References:

    1. Metropolis, Rosenbluth, Rosenbluth, Teller & Teller (1953), Equation of state
       calculations by fast computing machines.
    2. Geman & Geman (1984), Stochastic relaxation, Gibbs distributions, and the Bayesian
       restoration of images.
    3. Tierney (1994), Markov chains for exploring posterior distributions (hybrid kernels).

    Example::

        >>> import torch
        >>> from types import SimpleNamespace
        >>> from pyro_lvmle.samplers import DiscreteBlock, hmc_init
        >>> logits = torch.tensor([-1.0, 2.0])  # two independent Bernoullis
        >>> target = SimpleNamespace(
        ...     dim=2, discrete_mask=torch.tensor([True, True]),
        ...     discrete_blocks=(DiscreteBlock("z", 0, 2, (2,), 1, 0.0, 1.0, "binary"),),
        ...     block_energy=lambda q, block: -q * logits,
        ...     value_and_grad=lambda q: (-(q * logits).sum(-1), torch.zeros_like(q)))
        >>> state = hmc_init(torch.zeros(3, 2), target)
        >>> state, info = metropolis_within_gibbs_step(state, target)
        >>> info.accept_prob
        tensor([1., 1., 1.])
    """
    check_int("metropolis_within_gibbs_step", "window", window, low=1)
    check_int("metropolis_within_gibbs_step", "max_gibbs_support", max_gibbs_support, low=2)

    def update(position, block):
        return _metropolis_within_gibbs(position, target, block, window, max_gibbs_support)

    return _discrete_step(state, target, update, "metropolis_within_gibbs_step")


def gibbs_with_gradients_step(
        state: ChainState, target, *, window: int = 1, max_gibbs_support: int = 16,
        adapt_step_size: bool = False, shared_step_size: bool = False,
        target_accept: float = 0.8) -> tuple[ChainState, StepInfo]:
    r"""Gibbs-with-gradients (Grathwohl et al. 2021) on binary blocks: flip one coordinate per
    element, chosen by a first-order estimate of each flip's effect, with a Metropolis-Hastings
    correction.

    For an element :math:`x \in \{l, u\}^K` with energy :math:`E`, flipping coordinate
    :math:`i` changes it by :math:`\delta_i = l + u - 2x_i` and its log density by about
    :math:`\tilde d_i(x) = -\delta_i \, \partial_i E(x)` (autograd of ``block_energy``). The
    flip :math:`i \sim q(\cdot \mid x) = \mathrm{softmax}(\tilde d(x) / 2)` gives
    :math:`x' = x + \delta_i e_i`, accepted with probability

    .. math::

        \min\Big(1, \; e^{E(x) - E(x')} \, \frac{q(i \mid x')}{q(i \mid x)}\Big).

    Every element of the block makes its own proposal, at once (one element when the block's
    ``batch_shape`` is ``()``: the paper's sampler on the whole block). Blocks that are not
    binary are updated as in :func:`metropolis_within_gibbs_step`.

    :param ChainState state: the chains; only the discrete coordinates move.
    :param target: provides ``discrete_blocks``, ``block_energy`` (differentiable in the
        block's coordinates) and ``value_and_grad``.
    :param int window: for non-binary blocks, see :func:`metropolis_within_gibbs_step`.
    :param int max_gibbs_support: for non-binary blocks, likewise.
    :param bool adapt_step_size: ignored, as are ``shared_step_size`` and ``target_accept``
        (for :class:`~pyro_lvmle.samplers.BatchedKernel`'s warm-up).
    :returns: the new state and an :class:`StepInfo` as for
        :func:`metropolis_within_gibbs_step`.

    References:

    1. Grathwohl, Swersky, Hashemi, Duvenaud & Maddison (2021), Oops I took a gradient:
       scalable sampling for discrete distributions, ICML (algorithm 1; the temperature 2).

    Example::

        >>> import torch
        >>> from types import SimpleNamespace
        >>> from pyro_lvmle.samplers import DiscreteBlock, hmc_init
        >>> coupling = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # two coupled spins
        >>> energy = lambda q: -0.5 * ((q @ coupling) * q).sum(-1)
        >>> target = SimpleNamespace(
        ...     dim=2, discrete_mask=torch.tensor([True, True]),
        ...     discrete_blocks=(DiscreteBlock("z", 0, 2, (), 2, 0.0, 1.0, "binary"),),
        ...     block_energy=lambda q, block: energy(q),
        ...     value_and_grad=lambda q: (energy(q), torch.zeros_like(q)))
        >>> state = hmc_init(torch.ones(4, 2), target)
        >>> state, info = gibbs_with_gradients_step(state, target)
        >>> info.accept_prob.shape
        torch.Size([4])
    """
    check_int("gibbs_with_gradients_step", "window", window, low=1)
    check_int("gibbs_with_gradients_step", "max_gibbs_support", max_gibbs_support, low=2)

    def update(position, block):
        if block.kind == "binary":
            return _gibbs_with_gradients(position, target, block)
        return _metropolis_within_gibbs(position, target, block, window, max_gibbs_support)

    return _discrete_step(state, target, update, "gibbs_with_gradients_step")


def mixed_step(state: ChainState, target, *, discrete_step=metropolis_within_gibbs_step,
               continuous_step=hmc_step, **continuous_kwargs) -> tuple[ChainState, StepInfo]:
    r"""A discrete step, then a gradient-based step on the continuous coordinates.

    The composition :math:`K = K_c \circ K_d` of two kernels that each leave the target
    :math:`\pi` invariant leaves it invariant (Tierney 1994): :math:`K_d` moves the discrete
    coordinates (given the continuous ones), :math:`K_c` the continuous ones (its momentum is
    zero on ``target.discrete_mask``). Either is skipped when the target has no coordinates of
    its kind (the continuous step's step-size adaptation would otherwise diverge).

    :param ChainState state: the chains.
    :param target: a target with ``discrete_mask`` and ``discrete_blocks``.
    :param discrete_step: ``step(state, target) -> (state, info)`` for the discrete blocks
        (a ``functools.partial`` sets its options).
    :param continuous_step: the gradient step, :func:`~pyro_lvmle.samplers.hmc_step` or
        :func:`~pyro_lvmle.samplers.mala_step`.
    :param continuous_kwargs: passed to ``continuous_step`` (``num_steps``, and the warm-up's
        ``adapt_step_size``, ``shared_step_size``, ``target_accept``).
    :returns: the new state and the continuous step's :class:`StepInfo`, its
        ``discrete_accept_prob`` set to the discrete step's ``accept_prob``; the discrete
        step's info when there is no continuous coordinate.

    References:

    1. Tierney (1994), Markov chains for exploring posterior distributions.

    Example::

        >>> import torch
        >>> from functools import partial
        >>> from types import SimpleNamespace
        >>> from pyro_lvmle.samplers import BatchedKernel, DiscreteBlock
        >>> def energy(q):  # z ~ Bernoulli(1/2), x | z ~ N(2z, 1), position (x, z)
        ...     return 0.5 * (q[:, 0] - 2 * q[:, 1]) ** 2
        >>> def value_and_grad(q):
        ...     return energy(q), torch.stack([q[:, 0] - 2 * q[:, 1], 0 * q[:, 1]], -1)
        >>> target = SimpleNamespace(
        ...     dim=2, discrete_mask=torch.tensor([False, True]), value_and_grad=value_and_grad,
        ...     discrete_blocks=(DiscreteBlock("z", 1, 1, (), 1, 0.0, 1.0, "binary"),),
        ...     block_energy=lambda q, block: energy(q))
        >>> kernel = BatchedKernel(partial(mixed_step, num_steps=3), step_size=0.5)
        >>> state = kernel.init(torch.zeros(5, 2), target)
        >>> state, info = kernel.warmup(state, target, 20)
        >>> state, info = kernel.step(state, target)
        >>> info.discrete_accept_prob.shape
        torch.Size([5])
    """
    blocks = getattr(target, "discrete_blocks", None) or ()
    if blocks:
        state, discrete_info = discrete_step(state, target)
    mask = getattr(target, "discrete_mask", None)
    if mask is not None and bool(mask.all()):
        if not blocks:
            raise ValueError("mixed_step: the target marks every coordinate discrete but has "
                             "no discrete_blocks; give it discrete_blocks and block_energy")
        return state, discrete_info
    state, info = continuous_step(state, target, **continuous_kwargs)
    if blocks:
        info = info._replace(discrete_accept_prob=discrete_info.accept_prob)
    return state, info


def _discrete_step(state, target, update, where):
    """Apply ``update(position, block) -> (position, accept_prob sum, proposals)`` to every
    block, then recompute the cached energy and gradient once."""
    blocks = getattr(target, "discrete_blocks", None) or ()
    if not blocks:
        raise ValueError(f"{where}: the target has no discrete_blocks; use hmc_step or "
                         f"mala_step for continuous targets")
    position = state.position
    accept_sum = torch.zeros_like(state.potential_energy)
    num_proposals = 0
    for block in blocks:
        _check_block(block, position.shape[-1], where)
        position, block_accept, block_proposals = update(position, block)
        accept_sum = accept_sum + block_accept
        num_proposals += block_proposals
    energy, grad = target.value_and_grad(position)
    info = StepInfo(accept_sum / num_proposals, (position != state.position).any(-1),
                   torch.zeros_like(accept_sum, dtype=torch.bool),
                   energy - state.potential_energy)
    return state._replace(position=position, potential_energy=energy, grad=grad), info


def _check_block(block, dim, where):
    if block.kind not in _KINDS:
        raise ValueError(f"{where}: block {block.name!r} has kind {block.kind!r}; expected "
                         f"one of {_KINDS}")
    if block.offset < 0 or block.offset + block.numel > dim \
            or block.numel != math.prod(block.batch_shape) * block.event_numel:
        raise ValueError(f"{where}: block {block.name!r} (offset {block.offset}, numel "
                         f"{block.numel}, batch_shape {block.batch_shape}, event_numel "
                         f"{block.event_numel}) does not fit a position of dimension {dim}")
    if block.kind != "count" and not math.isfinite(block.upper):
        raise ValueError(f"{where}: {block.kind} block {block.name!r} needs a finite upper")


def _block_values(position, block):
    """The block's coordinates as ``(C, *batch_shape, event_numel)``."""
    flat = position[:, block.offset:block.offset + block.numel]
    return flat.reshape(position.shape[0], *block.batch_shape, block.event_numel)


def _with_block(position, block, values):
    """``position`` with the block's coordinates replaced by ``values`` (differentiably)."""
    end = block.offset + block.numel
    return torch.cat([position[:, :block.offset], values.reshape(position.shape[0], -1),
                      position[:, end:]], -1)


def _metropolis_within_gibbs(position, target, block, window, max_gibbs_support):
    """Scan the block's event coordinates; each is a Gibbs draw or a random-walk move."""
    values = _block_values(position, block)
    support = block.upper - block.lower + 1
    gibbs = block.kind != "count" or support <= max_gibbs_support
    accept_sum = torch.zeros(position.shape[0], dtype=position.dtype, device=position.device)
    energy = None if gibbs else target.block_energy(position, block)
    for j in range(block.event_numel):
        if gibbs:
            candidates = []
            for k in range(int(support)):
                proposal = values.clone()
                proposal[..., j] = block.lower + k
                candidates.append(target.block_energy(_with_block(position, block, proposal),
                                                      block))
            logits = -torch.stack(candidates, -1).detach()
            values = values.clone()
            values[..., j] = block.lower + Categorical(logits=logits).sample().to(values)
            accept_sum = accept_sum + math.prod(block.batch_shape)
        else:
            jump = torch.randint(1, window + 1, values.shape[:-1], device=values.device)
            sign = 2 * torch.randint(0, 2, values.shape[:-1], device=values.device) - 1
            moved = values[..., j] + (jump * sign).to(values)
            valid = (moved >= block.lower) & (moved <= block.upper)
            proposal = values.clone()
            proposal[..., j] = torch.where(valid, moved, values[..., j])
            new_energy = target.block_energy(_with_block(position, block, proposal), block)
            accept_prob = _accept_prob(energy - new_energy, valid)
            accept = torch.rand_like(accept_prob) < accept_prob
            values = torch.where(accept.unsqueeze(-1), proposal, values)
            energy = torch.where(accept, new_energy, energy)
            accept_sum = accept_sum + accept_prob.reshape(position.shape[0], -1).sum(-1)
        position = _with_block(position, block, values)
    return position, accept_sum, math.prod(block.batch_shape) * block.event_numel


def _gibbs_with_gradients(position, target, block):
    """One gradient-informed flip per element of a binary block, Metropolis-Hastings
    corrected with the reverse proposal."""
    values = _block_values(position, block)
    energy, log_q = _flip_proposal(position, target, block, values)
    index = Categorical(logits=log_q).sample().unsqueeze(-1)
    flip = torch.zeros_like(values).scatter_(-1, index, 1.0)
    proposal = values + flip * (block.lower + block.upper - 2 * values)
    new_energy, new_log_q = _flip_proposal(position, target, block, proposal)
    log_ratio = energy - new_energy + (new_log_q.gather(-1, index)
                                       - log_q.gather(-1, index)).squeeze(-1)
    accept_prob = _accept_prob(log_ratio, torch.ones_like(energy, dtype=torch.bool))
    accept = torch.rand_like(accept_prob) < accept_prob
    values = torch.where(accept.unsqueeze(-1), proposal, values)
    accept_sum = accept_prob.reshape(position.shape[0], -1).sum(-1)
    return _with_block(position, block, values), accept_sum, math.prod(block.batch_shape)


def _flip_proposal(position, target, block, values):
    """The element energies at ``values`` and the log-probabilities of flipping each
    coordinate, ``log_softmax(d / 2)`` with ``d`` the first-order estimate of the flip's
    change of log density."""
    with torch.enable_grad():
        values = values.detach().requires_grad_(True)
        energy = target.block_energy(_with_block(position, block, values), block)
        (grad,) = torch.autograd.grad(energy.sum(), values)
    change = block.lower + block.upper - 2 * values.detach()
    return energy.detach(), torch.log_softmax(-change * grad / 2, -1)


def _accept_prob(log_ratio, valid):
    """``min(1, exp(log_ratio))`` where ``valid`` and the ratio is not NaN, else 0."""
    ok = valid & ~torch.isnan(log_ratio)
    return torch.where(ok, log_ratio.clamp(max=0.0).exp(), torch.zeros_like(log_ratio))
