"""Samplers from functional steps (:class:`BatchedKernel`), and :func:`make_sampler`, which
turns what a user passes as ``kernel`` (a name, a Pyro kernel, a step function, a sampler)
into a :class:`~pyro_lvmle.samplers.Sampler`.

:class:`BatchedKernel` wraps the functional :func:`~pyro_lvmle.samplers.hmc_step`,
:func:`~pyro_lvmle.samplers.mala_step`, :func:`~pyro_lvmle.samplers.ula_step` (or any step
of the same form) with its warm-up; :class:`~pyro_lvmle.samplers.PyroKernel` wraps Pyro's
own ``NUTS``/``HMC``. Both implement the :class:`~pyro_lvmle.samplers.Sampler` protocol.
"""

from __future__ import annotations

from functools import partial

import torch

from .._checks import check_int, check_positive, check_probability
from .base import ChainState, StepInfo, run_steps
from .discrete import gibbs_with_gradients_step, metropolis_within_gibbs_step, mixed_step
from .hmc import dual_averaging_init, hmc_init, hmc_step, mala_step, ula_step
from .warmup import warmup as _warmup

__all__ = ["BATCHED_STEPS", "BatchedKernel", "make_sampler"]


class BatchedKernel:
    r"""A functional step (:func:`~pyro_lvmle.samplers.hmc_step` or a partial of it) with its
    warm-up settings, as a sampler.

    :param step: the transition, ``step(state, target, **step_kwargs) -> (state, info)``.
    :param float step_size: the initial step size.
    :param bool adapt_step_size: dual-average the step size during warm-up.
    :param bool adapt_mass: adapt the diagonal mass matrix during warm-up.
    :param bool shared_step_size: one step size for all chains, adapted on their mean
        acceptance (the default: the chains share one target, and a step size dual-averaged
        chain by chain over a short warm-up is noisy; after 100 steps on a Gaussian posterior
        32 chains' step sizes ranged from 0.28 to 1.23, and some chains accepted nothing).
    :param float track_rate: ``0`` (the default) freezes the step size after warm-up, so
        that every later transition leaves the target invariant. A positive rate keeps
        following the acceptance rate, for a target that drifts as parameters are optimized
        (the posterior's scale can shrink several-fold during a fit, and a step size adapted at
        the start then leaves chains stuck): after each transition every chain's log step
        size moves by :math:`r(\bar a - \delta)`, with :math:`r` = ``track_rate``,
        :math:`\bar a` the acceptance probability averaged over the chains and
        :math:`\delta` = ``target_accept``. Averaged, so that a chain's own position weighs
        :math:`1/C` in its step size: each chain following its own acceptance at 0.02 shrank
        the variance of Neal's funnel by 26% over 300 transitions, and the average over 8
        chains by 2% (``tests/samplers/test_kernels.py``). Only when ``adapt_step_size``.
    :param discrete_step: the step for a target's sampled discrete coordinates, taken before
        each gradient step (:func:`~pyro_lvmle.samplers.mixed_step`): by default
        :func:`~pyro_lvmle.samplers.metropolis_within_gibbs_step`, or
        :func:`~pyro_lvmle.samplers.gibbs_with_gradients_step`. Unused for a target with none.
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
                 adapt_mass: bool = True, shared_step_size: bool = True,
                 track_rate: float = 0.0, discrete_step=metropolis_within_gibbs_step,
                 **step_kwargs):
        if not callable(step):
            raise TypeError(f"BatchedKernel: step must be callable, got {type(step).__name__}")
        step_size = check_positive("BatchedKernel", "step_size", step_size)
        if not callable(discrete_step):
            raise TypeError(f"BatchedKernel: discrete_step must be callable, got "
                            f"{type(discrete_step).__name__}")
        self.step_fn = step
        self.discrete_step = discrete_step
        # a target with sampled discrete coordinates gets the discrete step before each
        # gradient step; mixed_step skips whichever kind of coordinate the target lacks
        self._transition = partial(mixed_step, discrete_step=discrete_step, continuous_step=step)
        self.step_size = float(step_size)
        self.adapt_step_size = bool(adapt_step_size)
        self.adapt_mass = bool(adapt_mass)
        self.shared_step_size = bool(shared_step_size)
        track_rate = check_positive("BatchedKernel", "track_rate", track_rate, allow_zero=True)
        self.track_rate = float(track_rate) if self.adapt_step_size else 0.0
        if "num_steps" in step_kwargs:
            check_int("BatchedKernel", "num_steps", step_kwargs["num_steps"], 1)
        self.target_accept = check_probability(
            "BatchedKernel", "target_accept", _keyword(step, step_kwargs, "target_accept", 0.8))
        self.step_kwargs = step_kwargs

    def __repr__(self) -> str:
        name = getattr(self.step_fn, "__name__", None) or getattr(
            getattr(self.step_fn, "func", None), "__name__", repr(self.step_fn))
        return f"BatchedKernel({name}, step_size={self.step_size}, {self.step_kwargs})"

    def init(self, position: torch.Tensor, target, *, like: ChainState | None = None
             ) -> ChainState:
        """Chains at ``position`` ``(C, D)``: the initial step size and unit mass, or those
        of ``like`` (an earlier state of the same chains), with the energy computed for
        ``target`` (the parameters or the data may have changed since ``like`` was made: an
        energy left stale would bias every later Metropolis test).

        :param torch.Tensor position: starting points.
        :param target: the target (e.g. a :class:`~pyro_lvmle.traces.Potential`).
        :param ChainState like: the state whose adaptation to keep.
        """
        if like is None:
            return hmc_init(position, target, step_size=self.step_size)
        energy, grad = target.value_and_grad(position)
        return like._replace(position=position.detach(), potential_energy=energy, grad=grad)

    def warmup(self, state: ChainState, target, num_steps: int) -> tuple[ChainState, StepInfo]:
        """Adapt over ``num_steps`` transitions (:func:`~pyro_lvmle.samplers.warmup`); an
        unadjusted step (ULA) warms up with the Metropolis correction on.

        :param ChainState state: the chains.
        :param target: the target.
        :param int num_steps: warm-up transitions.
        :returns: the adapted state and the stacked infos of the warm-up.
        """
        state = state._replace(adaptation=dual_averaging_init(state.step_size))
        if not self.adapt_step_size:
            return run_steps(self, state, target, num_steps)
        # an unadjusted kernel warms up adjusted: before the step size has shrunk to the
        # target's scale an unadjusted step can fly off and never come back
        step_kwargs = dict(self.step_kwargs)
        if not _keyword(self.step_fn, step_kwargs, "metropolis", True):
            step_kwargs["metropolis"] = True
        result = _warmup(state, target, num_steps, step=self._transition,
                         adapt_mass=self.adapt_mass, shared_step_size=self.shared_step_size,
                         **step_kwargs)
        return result.state, result.info

    def step(self, state: ChainState, target) -> tuple[ChainState, StepInfo]:
        """One transition of every chain.

        :param ChainState state: the chains.
        :param target: the target.
        """
        state, info = self._transition(state, target, **self.step_kwargs)
        if self.track_rate:
            factor = (self.track_rate * (info.accept_prob.mean() - self.target_accept)).exp()
            state = state._replace(step_size=state.step_size * factor)
        return state, info


def _keyword(fn, kwargs, name, default):
    """The value ``fn`` would be called with for keyword ``name`` (a partial's included)."""
    if name in kwargs:
        return kwargs[name]
    return getattr(fn, "keywords", {}).get(name, default)




def _no_continuous_step(name, state, target, **kwargs):
    """The continuous step of the all-discrete samplers: refuses a continuous coordinate."""
    raise ValueError(f"kernel {name!r} moves discrete coordinates only, and the target has "
                     "continuous ones; use 'hmc' or 'mala' (with discrete_step='mwg' or 'gwg' "
                     "for the discrete ones)")


#: the batched samplers by name, as :class:`~pyro_lvmle.MCMCGradient` accepts them
BATCHED_STEPS = {"hmc": hmc_step, "mala": mala_step, "ula": ula_step}
#: the discrete steps by name
DISCRETE_STEPS = {"mwg": metropolis_within_gibbs_step, "gwg": gibbs_with_gradients_step}
#: the samplers of all-discrete targets by name (a generic Gibbs sampler, Gibbs-with-gradients)
DISCRETE_KERNELS = {"gibbs": metropolis_within_gibbs_step, "gwg": gibbs_with_gradients_step}


def make_sampler(kernel, model=None, *, step_size: float = 0.1, adapt_step_size: bool = True,
                 num_steps: int = 10, target_accept: float | None = None,
                 adapt_mass: bool = True, shared_step_size: bool = True,
                 max_plate_nesting: int | None = None, discrete_step="mwg",
                 track_rate: float = 0.0):
    """The :class:`~pyro_lvmle.samplers.Sampler` that ``kernel`` names.

    :param kernel: ``"nuts"`` (Pyro's NUTS on ``model``, one kernel per chain), ``"hmc"``
        (batched, ``num_steps`` leapfrog steps with a jittered step size), ``"mala"``,
        ``"ula"``; ``"gibbs"`` or ``"gwg"`` for targets whose coordinates are all discrete
        (the discrete step alone, :func:`~pyro_lvmle.samplers.metropolis_within_gibbs_step`
        or :func:`~pyro_lvmle.samplers.gibbs_with_gradients_step`, nothing adapted);
        a ``pyro.infer.HMC``/``NUTS`` kernel; a functional step such as
        :func:`~pyro_lvmle.samplers.hmc_step` (or a ``functools.partial`` of one); or a
        sampler, returned as it is.
    :param model: the Pyro model, needed for ``"nuts"`` only.
    :param float step_size: the batched kernels' initial step size.
    :param bool adapt_step_size: adapt the step size during warm-up.
    :param int num_steps: leapfrog steps per ``"hmc"`` transition.
    :param float target_accept: the acceptance rate adaptation aims for (0.8 for HMC and
        NUTS, 0.574 for MALA, 0.9 for ULA by default).
    :param bool adapt_mass: adapt a diagonal mass matrix during warm-up.
    :param bool shared_step_size: one step size for all chains (batched kernels; ``False``
        adapts each chain's on its own acceptance).
    :param int max_plate_nesting: passed to Pyro's NUTS.
    :param discrete_step: the batched kernels' step for sampled discrete sites: ``"mwg"``
        (Metropolis-within-Gibbs: exact full conditionals on small supports, a random walk on
        counts) or ``"gwg"`` (Gibbs-with-gradients for binary sites), or a step function.
    :param float track_rate: the batched kernels' step-size tracking after warm-up (see
        :class:`BatchedKernel`; ``0`` freezes it).

    Example::

        >>> from pyro_lvmle.samplers import make_sampler
        >>> sampler = make_sampler("mala", step_size=0.5)
        >>> type(sampler).__name__, sampler.step_size
        ('BatchedKernel', 0.5)
    """
    from pyro.infer.mcmc import HMC, NUTS

    from .base import Sampler
    from .pyro_kernel import PyroKernel

    num_steps = check_int("make_sampler", "num_steps", num_steps, 1)
    if target_accept is not None:
        target_accept = check_probability("make_sampler", "target_accept", target_accept)
    if isinstance(discrete_step, str):
        if discrete_step not in DISCRETE_STEPS:
            raise ValueError(f"unknown discrete_step {discrete_step!r}; use one of "
                             f"{sorted(DISCRETE_STEPS)} or a step function")
        discrete_step = DISCRETE_STEPS[discrete_step]
    options = dict(step_size=step_size, adapt_step_size=adapt_step_size,
                   adapt_mass=adapt_mass, shared_step_size=shared_step_size,
                   discrete_step=discrete_step, track_rate=track_rate)
    if isinstance(kernel, str):
        if kernel == "nuts":
            if model is None:
                raise ValueError("make_sampler: kernel='nuts' needs the model")
            return PyroKernel(NUTS(model, max_plate_nesting=max_plate_nesting,
                                   target_accept_prob=target_accept or 0.8))
        if kernel in DISCRETE_KERNELS:  # mixed_step runs only the discrete step on them
            return BatchedKernel(partial(_no_continuous_step, kernel),
                                 **{**options, "adapt_step_size": False,
                                    "discrete_step": DISCRETE_KERNELS[kernel]})
        if kernel not in BATCHED_STEPS:
            raise ValueError(f"unknown kernel {kernel!r}; use 'nuts', 'gibbs', 'gwg', "
                             f"{', '.join(repr(k) for k in BATCHED_STEPS)}, a Pyro HMC/NUTS "
                             "kernel, a step function or a sampler")
        step_kwargs = {"num_steps": num_steps, "jitter": 0.5} if kernel == "hmc" else {}
        if target_accept is not None or kernel == "ula":
            step_kwargs["target_accept"] = target_accept or 0.9
        return BatchedKernel(BATCHED_STEPS[kernel], **options, **step_kwargs)
    if isinstance(kernel, HMC):
        return PyroKernel(kernel)
    if isinstance(kernel, Sampler):
        return kernel
    if callable(kernel):
        return BatchedKernel(kernel, **options)
    raise TypeError(f"kernel must be a name, a Pyro HMC/NUTS kernel, a step function or a "
                    f"sampler, got {type(kernel).__name__}")


def refuse_latent_kernels(where: str, sampler) -> None:
    """Refuse Pyro's HMC/NUTS (by kernel or by the name ``"nuts"``) as the sampler of an
    undirected model's observed sites: they move a model's latent sites only.

    :param str where: who checks, for the message.
    :param sampler: what the user passed.
    :raises ValueError: naming the samplers to use instead.
    """
    from pyro.infer.mcmc import HMC

    if (isinstance(sampler, str) and sampler == "nuts") or isinstance(sampler, HMC):
        raise ValueError(
            f"{where}: Pyro's HMC and NUTS kernels move a model's latent sites, but an "
            "undirected model's chains move its observed sites with the observations removed; "
            "use sampler='hmc', 'mala' or 'ula' (the batched kernels) for continuous sites, "
            "'gibbs' or 'gwg' for discrete ones")
