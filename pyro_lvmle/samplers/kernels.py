"""The sampler interface the gradients use, and its batched implementation.

A *sampler* moves ``C`` chains of a :class:`~pyro_lvmle.traces.Potential` and keeps them in
an :class:`~pyro_lvmle.samplers.HMCState`. It has four methods:

- ``init(position, potential, warmup_steps) -> HMCState``: chains at ``position`` ``(C, D)``;
- ``refresh(state, potential) -> HMCState``: the same positions, with the cached potential
  energy and gradient recomputed (the parameters, or the data, may have changed since the
  state was made: an energy left stale would bias every later Metropolis test);
- ``warmup(state, potential, num_steps) -> (HMCState, HMCInfo)``: adapt, then report;
- ``step(state, potential) -> (HMCState, HMCInfo)``: one transition.

:class:`BatchedKernel` wraps the functional :func:`~pyro_lvmle.samplers.hmc_step`,
:func:`~pyro_lvmle.samplers.mala_step` or :func:`~pyro_lvmle.samplers.ula_step`;
:class:`~pyro_lvmle.samplers.PyroKernel` wraps Pyro's own ``NUTS``/``HMC``.
"""

from __future__ import annotations

import torch

from .hmc import HMCInfo, HMCState, hmc_init, hmc_step, mala_step, stack_info, ula_step
from .warmup import warmup as _warmup

__all__ = ["BATCHED_STEPS", "BatchedKernel"]


class BatchedKernel:
    """A functional step (:func:`~pyro_lvmle.samplers.hmc_step` or a partial of it) with its
    warm-up settings, as a sampler.

    :param step: the transition, ``step(state, potential, **step_kwargs) -> (state, info)``.
    :param float step_size: the initial step size.
    :param bool adapt_step_size: dual-average the step size during warm-up.
    :param bool adapt_mass: adapt the diagonal mass matrix during warm-up.
    :param bool shared_step_size: one step size for all chains.
    :param float track_rate: after warm-up, move the log step size by ``track_rate *
        (accept_prob - target_accept)`` per transition (Robbins-Monro), so that it follows a
        target that drifts as the parameters are optimized (the posterior's scale can shrink
        several-fold during a fit, and a step size adapted at the start then leaves chains
        stuck). ``0`` freezes it after warm-up. Only when ``adapt_step_size``.
    :param step_kwargs: fixed keyword arguments of ``step`` (``num_steps``, ``target_accept``).

    Example::

        >>> import torch, pyro_lvmle as lv
        >>> from pyro_lvmle.samplers import BatchedKernel, mala_step
        >>> from pyro_lvmle.traces import Potential
        >>> model = lv.models.LinearGaussian()
        >>> potential = Potential(model, (model.simulate(4),))
        >>> kernel = BatchedKernel(mala_step, step_size=0.5)
        >>> state = kernel.init(torch.zeros(3, potential.dim), potential)
        >>> state, info = kernel.step(state, potential)
        >>> info.accept_prob.shape
        torch.Size([3])
    """

    def __init__(self, step=hmc_step, *, step_size: float = 0.1, adapt_step_size: bool = True,
                 adapt_mass: bool = True, shared_step_size: bool = False,
                 track_rate: float = 0.02, **step_kwargs):
        if not callable(step):
            raise TypeError(f"BatchedKernel: step must be callable, got {type(step).__name__}")
        if not (isinstance(step_size, (int, float)) and step_size > 0):
            raise ValueError(f"BatchedKernel: step_size must be a positive float, got "
                             f"{step_size!r}")
        self.step_fn = step
        self.step_size = float(step_size)
        self.adapt_step_size = bool(adapt_step_size)
        self.adapt_mass = bool(adapt_mass)
        self.shared_step_size = bool(shared_step_size)
        if not (isinstance(track_rate, (int, float)) and track_rate >= 0):
            raise ValueError(f"BatchedKernel: track_rate must be >= 0, got {track_rate!r}")
        self.track_rate = float(track_rate) if self.adapt_step_size else 0.0
        self.target_accept = _keyword(step, step_kwargs, "target_accept", 0.8)
        self.step_kwargs = step_kwargs

    def __repr__(self) -> str:
        name = getattr(self.step_fn, "__name__", None) or getattr(
            getattr(self.step_fn, "func", None), "__name__", repr(self.step_fn))
        return f"BatchedKernel({name}, step_size={self.step_size}, {self.step_kwargs})"

    def init(self, position: torch.Tensor, potential, warmup_steps: int = 0) -> HMCState:
        """Chains at ``position`` ``(C, D)`` with the initial step size and unit mass.

        :param torch.Tensor position: unconstrained starting points.
        :param potential: the target, a :class:`~pyro_lvmle.traces.Potential`.
        :param int warmup_steps: unused (the batched warm-up needs no set-up).
        """
        return hmc_init(position, potential, step_size=self.step_size)

    def refresh(self, state: HMCState, potential) -> HMCState:
        """``state`` with its potential energy and gradient recomputed for ``potential``.

        :param HMCState state: the chains.
        :param potential: the (possibly changed) target.
        """
        energy, grad = potential.value_and_grad(state.position)
        return state._replace(potential_energy=energy, grad=grad)

    def warmup(self, state: HMCState, potential, num_steps: int) -> tuple[HMCState, HMCInfo]:
        """Adapt over ``num_steps`` transitions (:func:`~pyro_lvmle.samplers.warmup`); an
        unadjusted step (ULA) warms up with the Metropolis correction on.

        :param HMCState state: the chains.
        :param potential: the target.
        :param int num_steps: warm-up transitions.
        :returns: the adapted state and the stacked infos of the warm-up.
        """
        if not self.adapt_step_size:
            infos = []
            for _ in range(num_steps):
                state, info = self.step(state, potential)
                infos.append(info)
            return state, stack_info(infos, state)
        # an unadjusted kernel warms up adjusted: before the step size has shrunk to the
        # target's scale an unadjusted step can fly off and never come back
        step_kwargs = dict(self.step_kwargs)
        if not _keyword(self.step_fn, step_kwargs, "metropolis", True):
            step_kwargs["metropolis"] = True
        result = _warmup(state, potential, num_steps, step=self.step_fn,
                         adapt_mass=self.adapt_mass, shared_step_size=self.shared_step_size,
                         **step_kwargs)
        return result.state, result.info

    def step(self, state: HMCState, potential) -> tuple[HMCState, HMCInfo]:
        """One transition of every chain.

        :param HMCState state: the chains.
        :param potential: the target.
        """
        state, info = self.step_fn(state, potential, **self.step_kwargs)
        if self.track_rate:
            accept = info.accept_prob.mean().expand_as(info.accept_prob) \
                if self.shared_step_size else info.accept_prob
            step_size = state.step_size * (self.track_rate * (accept - self.target_accept)).exp()
            state = state._replace(step_size=step_size)
        return state, info


def _keyword(fn, kwargs, name, default):
    """The value ``fn`` would be called with for keyword ``name`` (a partial's included)."""
    if name in kwargs:
        return kwargs[name]
    return getattr(fn, "keywords", {}).get(name, default)


#: the batched samplers by name, as :class:`~pyro_lvmle.MCMCGradient` accepts them
BATCHED_STEPS = {"hmc": hmc_step, "mala": mala_step, "ula": ula_step}
