"""The trace layer: the only code in the package that runs ``pyro.poutine``.

:func:`particle_terms` runs a model and guide under vectorized particles and returns the
log-weight components every objective needs, with plate and subsampling bookkeeping;
:class:`PriorGuide` turns a model into the guide that samples its prior.
"""

from .discrete import MAX_ENUMERATED_SUPPORT, DiscreteBlock
from .enum import EnumeratedPosterior
from .local import LocalTarget, local_plate
from .normalization import check_model, check_normalized, unnormalized_sites
from .particles import (
    PARTICLE_PLATE,
    ParticleTerms,
    check_programs,
    guess_max_plate_nesting,
    particle_terms,
)
from .potential import CHAIN_PLATE, LatentSite, Potential
from .prior_guide import PriorGuide
from .simulate import conditioned, simulate

__all__ = [
    "CHAIN_PLATE",
    "DiscreteBlock",
    "EnumeratedPosterior",
    "LatentSite",
    "LocalTarget",
    "MAX_ENUMERATED_SUPPORT",
    "PARTICLE_PLATE",
    "Potential",
    "ParticleTerms",
    "PriorGuide",
    "check_model",
    "check_normalized",
    "check_programs",
    "conditioned",
    "guess_max_plate_nesting",
    "local_plate",
    "particle_terms",
    "simulate",
    "unnormalized_sites",
]
