"""Batched samplers: HMC, MALA and ULA as pure ``init``/``step`` functions on a NamedTuple
state with a leading chain dimension, and their warm-up (dual averaging, diagonal mass).
"""

from .hmc import (
    DualAveraging,
    HMCInfo,
    HMCState,
    dual_averaging_update,
    hmc_init,
    hmc_step,
    mala_step,
    ula_step,
)
from .warmup import WarmupResult, warmup, warmup_windows

__all__ = [
    "DualAveraging",
    "HMCInfo",
    "HMCState",
    "WarmupResult",
    "dual_averaging_update",
    "hmc_init",
    "hmc_step",
    "mala_step",
    "ula_step",
    "warmup",
    "warmup_windows",
]
