"""Samplers: one protocol (:class:`Sampler` moving the chains of a :class:`Target`, one
:class:`ChainState` for every sampler); batched HMC, MALA and ULA as pure ``init``/``step``
functions with their warm-up (dual averaging, diagonal mass); discrete steps
(Metropolis-within-Gibbs, Gibbs-with-gradients) and their composite with a gradient step
(:func:`mixed_step`); block Gibbs from a model's conditionals (:class:`BlockGibbs`);
:class:`BatchedKernel` (a step function as a sampler), Pyro's own
NUTS/HMC behind the same protocol (:class:`PyroKernel`), :func:`make_sampler`, and the
per-datum store of persistent chains (:class:`ChainStore`).
"""

from .base import (
    ChainState,
    DualAveraging,
    Sampler,
    StepInfo,
    Target,
    chain_diagnostics,
    run_steps,
    stack_info,
)
from .block_gibbs import BlockGibbs
from .discrete import (
    DiscreteBlock,
    gibbs_with_gradients_step,
    metropolis_within_gibbs_step,
    mixed_step,
)
from .hmc import (
    HMCInfo,
    HMCState,
    dual_averaging_init,
    dual_averaging_update,
    hmc_init,
    hmc_step,
    mala_step,
    ula_step,
)
from .kernels import BATCHED_STEPS, BatchedKernel, make_sampler
from .pyro_kernel import PyroKernel
from .store import ChainStore
from .warmup import WarmupResult, warmup, warmup_windows

__all__ = [
    "BATCHED_STEPS",
    "BatchedKernel",
    "BlockGibbs",
    "ChainState",
    "ChainStore",
    "DiscreteBlock",
    "DualAveraging",
    "HMCInfo",
    "HMCState",
    "PyroKernel",
    "Sampler",
    "StepInfo",
    "Target",
    "WarmupResult",
    "chain_diagnostics",
    "dual_averaging_init",
    "dual_averaging_update",
    "gibbs_with_gradients_step",
    "hmc_init",
    "hmc_step",
    "make_sampler",
    "mala_step",
    "metropolis_within_gibbs_step",
    "mixed_step",
    "run_steps",
    "stack_info",
    "ula_step",
    "warmup",
    "warmup_windows",
]
