r"""The sampler protocol: what a *target* offers and what a *sampler* does with it.

A **target** is a batched log density over packed positions ``(C, D)``, one row per chain,
given as its potential energy :math:`U(q) = -\log \pi(q)`:

- ``dim``: the number of coordinates :math:`D`;
- ``target(position) -> U`` ``(C,)`` and ``target.value_and_grad(position) -> (U, grad U)``,
  ``(C,)`` and ``(C, D)``, both detached;
- optionally ``discrete_mask``, a boolean ``(D,)`` marking coordinates that hold discrete
  values (exact integers stored as floats; ``None`` or absent when there are none): there
  ``grad U`` is zero and gradient-based kernels never move them; such a target also gives
  ``discrete_blocks`` and ``block_energy(position, block)``, the energy terms of one discrete
  block per independent element, which the discrete steps use.

The package's targets are built by the trace layer (:class:`~pyro_lvmle.traces.Potential`):
the posterior of a model's latents given the data, its tempered form, and the model's
observed sites with the observations removed.

A **sampler** moves ``C`` chains of a target. Its whole interface is :class:`Sampler`:
``init``, ``warmup`` and ``step``, and the state it keeps, one :class:`ChainState` (leading
chain dimension) for every sampler. Persistent chains are "keep the state"; when the target
changed (new parameters, new data) ``init(state.position, target, like=state)`` recomputes
the cached energy and keeps the adaptation.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Protocol, runtime_checkable

import torch

__all__ = ["ChainState", "DualAveraging", "Sampler", "StepInfo", "Target", "chain_diagnostics",
           "run_steps", "stack_info"]


class DualAveraging(NamedTuple):
    """Nesterov's dual averaging of the log step size (Hoffman & Gelman 2014, algorithm 5).

    :ivar torch.Tensor log_step: the current iterate, per chain ``(C,)``.
    :ivar torch.Tensor log_step_avg: its weighted average, the step size to keep after warm-up.
    :ivar torch.Tensor error_avg: the running average of ``target - accept_prob``.
    :ivar torch.Tensor prox_center: :math:`\\mu = \\log(10 \\epsilon_0)`.
    :ivar int count: updates so far.
    """

    log_step: torch.Tensor
    log_step_avg: torch.Tensor
    error_avg: torch.Tensor
    prox_center: torch.Tensor
    count: int


class ChainState(NamedTuple):
    """The state of ``C`` chains, the one state type of every sampler.

    :ivar torch.Tensor position: packed positions ``(C, D)`` (unconstrained; exact integers at
        a target's discrete coordinates).
    :ivar torch.Tensor potential_energy: :math:`U(q)` per chain ``(C,)``, cached.
    :ivar torch.Tensor grad: :math:`\\nabla U(q)` ``(C, D)``, cached.
    :ivar torch.Tensor step_size: step size per chain ``(C,)`` (gradient-based kernels).
    :ivar torch.Tensor inverse_mass: the diagonal inverse mass matrix ``(C, D)``.
    :ivar DualAveraging adaptation: the step-size adaptation state.
    """

    position: torch.Tensor
    potential_energy: torch.Tensor
    grad: torch.Tensor
    step_size: torch.Tensor
    inverse_mass: torch.Tensor
    adaptation: DualAveraging


class StepInfo(NamedTuple):
    """What one transition did, per chain.

    :ivar torch.Tensor accept_prob: the Metropolis acceptance probability (for ULA, the one a
        Metropolis test would have used: a measure of its discretization bias, and what its
        step size adapts on; for a discrete step, the mean over its elements).
    :ivar torch.Tensor accepted: whether the proposal was taken.
    :ivar torch.Tensor divergent: energy error above 1000 or not finite.
    :ivar torch.Tensor energy_error: :math:`H(q', p') - H(q, p)` (``nan`` where a kernel does
        not report it).
    :ivar discrete_accept_prob: for a step that also moved discrete coordinates
        (:func:`~pyro_lvmle.samplers.mixed_step`), their mean acceptance probability per
        chain; ``None`` otherwise.
    """

    accept_prob: torch.Tensor
    accepted: torch.Tensor
    divergent: torch.Tensor
    energy_error: torch.Tensor
    discrete_accept_prob: torch.Tensor | None = None


@runtime_checkable
class Target(Protocol):
    """A batched potential energy over packed positions ``(C, D)`` (see the module's text)."""

    dim: int

    def __call__(self, position: torch.Tensor) -> torch.Tensor:
        """:math:`U(q)` per chain, ``(C,)``."""

    def value_and_grad(self, position: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:math:`U(q)` ``(C,)`` and :math:`\\nabla U(q)` ``(C, D)``, detached."""


@runtime_checkable
class Sampler(Protocol):
    """Moves ``C`` chains of a :class:`Target`; its state is one :class:`ChainState`.

    - ``init(position, target, *, like=None) -> ChainState``: chains at ``position``
      ``(C, D)``; with ``like`` (an earlier state of these chains) its step sizes, mass and
      adaptation are kept and only the cached energy is recomputed for ``target``;
    - ``warmup(state, target, num_steps) -> (ChainState, StepInfo)``: adapt over
      ``num_steps`` transitions (infos stacked, ``(num_steps, C)``);
    - ``step(state, target) -> (ChainState, StepInfo)``: one transition.
    """

    def init(self, position: torch.Tensor, target, *, like: ChainState | None = None
             ) -> ChainState:
        """Chains at ``position``."""

    def warmup(self, state: ChainState, target, num_steps: int
               ) -> tuple[ChainState, StepInfo]:
        """Adapt, then report."""

    def step(self, state: ChainState, target) -> tuple[ChainState, StepInfo]:
        """One transition."""


def run_steps(sampler, state: ChainState, target, num_steps: int
              ) -> tuple[ChainState, StepInfo]:
    """``num_steps`` transitions of ``sampler`` with nothing adapted; the infos stacked
    ``(num_steps, C)``: the warm-up of a sampler with nothing to adapt, and a run of steps.

    :param sampler: a :class:`Sampler`.
    :param ChainState state: the chains.
    :param target: the target.
    :param int num_steps: transitions.
    """
    infos = []
    for _ in range(num_steps):
        state, info = sampler.step(state, target)
        infos.append(info)
    return state, stack_info(infos, state)


def stack_info(infos: list[StepInfo], state: ChainState) -> StepInfo:
    """Stack per-transition infos along a new leading dimension (empty if there are none).

    :param list infos: :class:`StepInfo` of successive transitions.
    :param ChainState state: gives the chain count, dtype and device of an empty result.
    """
    if infos:
        return StepInfo(*(None if any(f is None for f in field) else torch.stack(field)
                          for field in zip(*infos, strict=True)))
    empty = state.position.new_zeros((0, state.position.shape[0]))
    return StepInfo(empty, empty.bool(), empty.bool(), empty)


def chain_diagnostics(infos: list[StepInfo], draws: torch.Tensor, state: ChainState) -> dict:
    """Summaries of the transitions that produced ``draws`` ``(C, S, D)``: mean
    ``accept_prob``, ``num_divergent``, mean ``step_size``, ``ess`` (the smallest effective
    sample size over coordinates, Pyro's estimator across chains; ``nan`` below 4 draws per
    chain) and ``num_transitions``.

    :param list infos: the :class:`StepInfo` of each transition.
    :param torch.Tensor draws: the kept positions.
    :param ChainState state: the final state.
    """
    ess = math.nan
    if draws.shape[1] >= 4:
        from pyro.ops.stats import effective_sample_size

        values = effective_sample_size(draws, chain_dim=0, sample_dim=1)
        values = values[torch.isfinite(values)]
        ess = values.min().item() if values.numel() else math.nan
    info = stack_info(infos, state)
    return {"accept_prob": info.accept_prob.mean().item() if infos else math.nan,
            "num_divergent": int(info.divergent.sum()),
            "step_size": state.step_size.mean().item(), "ess": ess,
            "num_transitions": len(infos)}
