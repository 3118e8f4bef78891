"""The trace layer: the only code in the package that runs ``pyro.poutine``.

It will hold the helpers that run a model and guide under vectorized particles and return
per-site log densities with plate and subsampling bookkeeping, and the batched potential
over a model's unconstrained latent space. Filled by the objectives and MCMC-gradient issues.
"""

__all__: list[str] = []
