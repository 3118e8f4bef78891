"""Batched samplers (HMC, MALA, ULA, Gibbs) with NamedTuple states and pure ``step``
functions, and an adapter for Pyro's NUTS/HMC. Filled by the MCMC-gradient issue.
"""

__all__: list[str] = []
