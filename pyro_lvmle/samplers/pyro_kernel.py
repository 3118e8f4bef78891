"""Pyro's own ``NUTS``/``HMC`` kernels as persistent samplers.

``pyro.infer.MCMC.run`` sets its kernel up afresh on every call: the model is traced again,
the step size is searched for again and the mass matrix is reset, so calling it once per
optimization step throws the adaptation away. :class:`PyroKernel` drives the kernel's
``setup``/``sample`` directly instead: one kernel per chain, set up (and warmed up) once,
then advanced a few transitions per call with its step size and mass matrix kept.

Between calls the model's parameters change, so the potential energy a kernel cached for
its current position is stale: :meth:`PyroKernel.init` with ``like=`` clears the cache, and
the next transition recomputes the energy under the current parameters (skipping that biases every
Metropolis test, or NUTS's multinomial weights, that follows a parameter update).
"""

from __future__ import annotations

import copy

import torch

from ..traces.params import _cuda_devices
from .base import ChainState, StepInfo, run_steps
from .hmc import dual_averaging_init

__all__ = ["PyroKernel"]


class PyroKernel:
    """A Pyro ``HMC`` or ``NUTS`` kernel (of the same model) as a persistent multi-chain sampler.

    :param kernel: a ``pyro.infer.HMC`` or ``pyro.infer.NUTS`` built on a model (not on a
        ``potential_fn``), without ``jit_compile`` (a compiled potential would freeze the
        parameters' values). Each chain gets its own deep copy.

    The positions are those of :class:`~pyro_lvmle.traces.Potential` (flat, unconstrained,
    by the same ``biject_to`` transforms Pyro uses). The state's ``step_size`` and
    ``inverse_mass`` report each kernel's (only a diagonal mass is reported); its
    ``adaptation`` field is unused, since Pyro's kernels adapt themselves during
    :meth:`warmup`. The per-chain Pyro kernels are this adapter's own state (Pyro keeps its
    adaptation inside them); what a saved state needs of them is in the :class:`ChainState`.

    Example::

        >>> import torch, pyro, pyro_lvmle as lv
        >>> from pyro_lvmle.samplers import PyroKernel
        >>> from pyro_lvmle.traces import Potential
        >>> model = lv.models.LinearGaussian()
        >>> data = model.simulate(3)
        >>> potential = Potential(model, (data,))
        >>> sampler = PyroKernel(pyro.infer.NUTS(model))
        >>> state = sampler.init(torch.zeros(2, potential.dim), potential)
        >>> state, info = sampler.warmup(state, potential, 20)
        >>> state, info = sampler.step(state, potential)
        >>> state.position.shape
        torch.Size([2, 3])
    """

    def __init__(self, kernel):
        from pyro.infer.mcmc import HMC

        if not isinstance(kernel, HMC):
            raise TypeError(f"PyroKernel: kernel must be a pyro.infer.HMC or NUTS, got "
                            f"{type(kernel).__name__}")
        if kernel.model is None:
            raise ValueError("PyroKernel: the kernel must be built on a model "
                             "(HMC(model) / NUTS(model)), not on a potential_fn")
        if getattr(kernel, "_jit_compile", False):
            raise ValueError("PyroKernel: jit_compile=True would freeze the parameters inside "
                             "the compiled potential; build the kernel without it")
        self.kernel = kernel
        self.kernels = None
        self._args = None

    def __repr__(self) -> str:
        return f"PyroKernel({type(self.kernel).__name__})"

    def init(self, position: torch.Tensor, potential, *, like: ChainState | None = None
             ) -> ChainState:
        """Chains at ``position`` ``(C, D)``.

        Without ``like``, the chains are new: :meth:`warmup` (or the first :meth:`step`, with
        no adaptation) sets one copy of the kernel up per chain, Pyro's initial step size
        search included, and the state reports ``nan`` energies and step sizes until then.
        With ``like`` (an earlier state of these chains) the kernels keep their adaptation.
        Already set up, each forgets its cached energy (recomputed under the current
        parameters by the next transition) and rebuilds its potential if the data changed.
        Set up for the first time in this process (a run resumed from a saved state), the
        set-up's random draws leave the global RNG untouched. Either way each kernel gets
        the step size and diagonal inverse mass of ``like``.

        :param torch.Tensor position: unconstrained starting points.
        :param potential: the :class:`~pyro_lvmle.traces.Potential` of the kernel's model.
        :param ChainState like: the state whose adaptation to keep.
        :raises ValueError: for latent sites in a subsampled plate (Pyro's kernels are set up
            for fixed data), or when restoring a kernel with a dense mass matrix, which the
            state does not hold.
        """
        if getattr(potential, "discrete_mask", None) is not None:
            raise ValueError(
                f"PyroKernel: Pyro's HMC/NUTS cannot sample the discrete sites "
                f"{[b.name for b in potential.discrete_blocks]}, which cannot be summed out; "
                "use kernel='hmc' or 'mala', whose discrete steps sample them")
        if potential.batched_plates:
            raise ValueError(
                "PyroKernel: latent sites in a subsampled plate need per-datum chains; Pyro's "
                "kernels are set up for fixed data, use kernel='hmc' or 'mala' instead"
            )
        if like is None or not torch.isfinite(like.step_size).all():
            # new chains: set up by warmup(), or by the first step() without one
            self.kernels = None
            return _unset_state(position)
        if self.kernels is None or len(self.kernels) != position.shape[0]:
            with torch.random.fork_rng(devices=_cuda_devices()):
                self._setup(position, potential, 0)
            self._restore(like, potential, strict=True)
        else:
            self._restore(like, potential, strict=False)
            if not _same_args(self._args, (potential.args, potential.kwargs)):
                for kernel in self.kernels:
                    kernel._initialize_model_properties(potential.args, potential.kwargs)
                self._args = (potential.args, potential.kwargs)
            for kernel in self.kernels:
                kernel.clear_cache()
        return self._state(position, potential)

    def _setup(self, position, potential, warmup_steps):
        self.kernels = [copy.deepcopy(self.kernel) for _ in range(position.shape[0])]
        for kernel, params in zip(self.kernels, self._split(position, potential), strict=True):
            kernel.initial_params = params
            kernel.setup(warmup_steps, *potential.args, **potential.kwargs)
        self._args = (potential.args, potential.kwargs)

    def _restore(self, state: ChainState, potential, strict: bool) -> None:
        """Give each kernel the step size and diagonal inverse mass of ``state`` (a kernel
        with a dense mass keeps its own, or raises when ``strict``)."""
        if any(m.dim() != 1 for k in self.kernels for m in k.inverse_mass_matrix.values()):
            if not strict:
                return
            raise ValueError("PyroKernel: a kernel with a dense mass matrix (full_mass) cannot "
                             "be restored from a saved state, which holds a diagonal; use a "
                             "diagonal mass or warm up again")
        offsets = {site.name: site for site in potential.sites}
        for kernel, step_size, diagonal in zip(self.kernels, state.step_size,
                                               state.inverse_mass, strict=True):
            kernel._adapter.step_size = float(step_size)
            blocks = {}
            for names in kernel.inverse_mass_matrix:
                blocks[names] = torch.cat([
                    diagonal[offsets[n].offset:offsets[n].offset + offsets[n].numel]
                    for n in names])
            kernel.mass_matrix_adapter.inverse_mass_matrix = blocks

    def warmup(self, state: ChainState, potential, num_steps: int
               ) -> tuple[ChainState, StepInfo]:
        """Set the kernels up afresh at the chains' positions with Pyro's adaptation schedule
        for ``num_steps`` transitions, and run them.

        :param ChainState state: the chains.
        :param potential: the target.
        :param int num_steps: transitions.
        """
        self._setup(state.position, potential, num_steps)
        state = self._state(state.position, potential)
        return run_steps(self, state, potential, num_steps)

    def step(self, state: ChainState, potential) -> tuple[ChainState, StepInfo]:
        """One transition of every chain, by its own kernel.

        :param ChainState state: the chains.
        :param potential: the target.
        """
        if self.kernels is None:
            self._setup(state.position, potential, 0)
        accept, divergent, rows = [], [], []
        split = self._split(state.position, potential)
        for kernel, params in zip(self.kernels, split, strict=True):
            before_mean, before_div = kernel._mean_accept_prob, len(kernel._divergences)
            t = kernel._t
            new = kernel.sample(params)
            n = t + 1 - kernel._warmup_steps if t + 1 > kernel._warmup_steps else t + 1
            # the kernel keeps a running mean; recover this transition's term from it
            accept.append(before_mean + n * (kernel._mean_accept_prob - before_mean))
            divergent.append(len(kernel._divergences) > before_div)
            rows.append(torch.cat([new[site.name].reshape(-1) for site in potential.sites]))
        position = torch.stack(rows)
        new_state = self._state(position, potential)
        like = state.potential_energy
        info = StepInfo(
            like.new_tensor(accept).clamp(0.0, 1.0),
            (position != state.position).any(-1),
            torch.tensor(divergent, device=like.device),
            torch.full_like(like, float("nan")),
        )
        return new_state, info

    @staticmethod
    def _split(position, potential):
        """Per-chain dicts of unconstrained site values, as Pyro's kernels take them."""
        return [
            {site.name: row[site.offset:site.offset + site.numel].reshape(
                site.unconstrained_shape) for site in potential.sites}
            for row in position.detach()
        ]

    def _state(self, position, potential):
        step_size = position.new_tensor([float(k.step_size) for k in self.kernels])
        inverse_mass = torch.stack([_diagonal(k, potential) for k in self.kernels])
        energies, grads = [], []
        for kernel in self.kernels:
            energy = kernel._potential_energy_last
            z_grads = kernel._z_grads_last
            energies.append(float("nan") if energy is None else float(energy))
            grads.append(torch.cat([z_grads[s.name].reshape(-1) for s in potential.sites])
                         if z_grads else position.new_full((potential.dim,), float("nan")))
        return ChainState(position.detach(), position.new_tensor(energies), torch.stack(grads),
                        step_size, inverse_mass, dual_averaging_init(step_size))


def _unset_state(position):
    """The state of chains whose kernels are not set up yet."""
    nan = position.new_full(position.shape[:1], float("nan"))
    return ChainState(position.detach(), nan, torch.full_like(position, float("nan")), nan,
                      torch.ones_like(position), dual_averaging_init(nan))


def _diagonal(kernel, potential):
    """The kernel's diagonal inverse mass in the potential's layout (ones where a dense block
    is used)."""
    like = next(iter(kernel.inverse_mass_matrix.values()))
    out = like.new_ones(potential.dim)
    offsets = {site.name: site for site in potential.sites}
    for names, matrix in kernel.inverse_mass_matrix.items():
        if matrix.dim() != 1:
            continue
        start = 0
        for name in names:
            site = offsets[name]
            out[site.offset:site.offset + site.numel] = matrix[start:start + site.numel]
            start += site.numel
    return out


def _same_args(old, new):
    (old_args, old_kwargs), (new_args, new_kwargs) = old, new
    return len(old_args) == len(new_args) \
        and all(a is b for a, b in zip(old_args, new_args, strict=True)) \
        and old_kwargs.keys() == new_kwargs.keys() \
        and all(old_kwargs[k] is new_kwargs[k] for k in old_kwargs)
