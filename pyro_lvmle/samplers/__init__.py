"""Batched samplers: HMC, MALA and ULA as pure ``init``/``step`` functions on a NamedTuple
state with a leading chain dimension, and their warm-up (dual averaging, diagonal mass);
discrete steps (Metropolis-within-Gibbs, Gibbs-with-gradients) and their composite with a
gradient step (:func:`mixed_step`);
the sampler interface the gradients use (:class:`BatchedKernel`), Pyro's own NUTS/HMC
behind the same interface (:class:`PyroKernel`), and the per-datum store of persistent
chains (:class:`ChainStore`).
"""

from .discrete import (
    DiscreteBlock,
    gibbs_with_gradients_step,
    metropolis_within_gibbs_step,
    mixed_step,
)
from .hmc import (
    DualAveraging,
    HMCInfo,
    HMCState,
    dual_averaging_init,
    dual_averaging_update,
    hmc_init,
    hmc_step,
    mala_step,
    stack_info,
    ula_step,
)
from .kernels import BATCHED_STEPS, BatchedKernel
from .pyro_kernel import PyroKernel
from .store import ChainStore
from .warmup import WarmupResult, warmup, warmup_windows

__all__ = [
    "BATCHED_STEPS",
    "BatchedKernel",
    "ChainStore",
    "DiscreteBlock",
    "DualAveraging",
    "HMCInfo",
    "HMCState",
    "PyroKernel",
    "WarmupResult",
    "dual_averaging_init",
    "dual_averaging_update",
    "gibbs_with_gradients_step",
    "hmc_init",
    "hmc_step",
    "mala_step",
    "metropolis_within_gibbs_step",
    "mixed_step",
    "stack_info",
    "ula_step",
    "warmup",
    "warmup_windows",
]
