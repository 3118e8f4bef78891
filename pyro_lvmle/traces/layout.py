"""The layout of a :class:`~pyro_lvmle.traces.Potential`'s flat positions: which sample
sites get coordinates, and where."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch.distributions import biject_to

from .discrete import discrete_encoding
from .particles import _is_subsample

__all__ = ["LatentSite", "check_positions", "is_target_site", "lay_out"]


class LatentSite(NamedTuple):
    """Layout of one latent site in the flat unconstrained position.

    :ivar str name: the site's name.
    :ivar torch.Size shape: the site's value shape (one chain).
    :ivar torch.Size unconstrained_shape: the shape of its unconstrained value (one chain).
    :ivar int offset: where its coordinates start in the flat position.
    :ivar int numel: how many unconstrained coordinates it has.
    :ivar transform: maps unconstrained to constrained values (``biject_to(support)``).
    :ivar tuple batched_shape: the unconstrained shape with chains, ``-1`` standing for the
        chain dimension, which sits left of every plate the model may open.
    :ivar tuple subsampled: ``(plate name, axis, full size)`` for each vectorized plate the
        site lives in, ``axis`` indexing ``batched_shape``: the site holds one value per datum
        of the plate's current subsample (all of them when the plate is not subsampled) along
        that axis, as :attr:`Potential.subsample_indices` lists them.
    :ivar bool discrete: whether the site is a sampled discrete one (its coordinates hold
        its exact values, see :class:`~pyro_lvmle.traces.discrete.DiscreteBlock`).
    :ivar bool was_observed: whether the site is observed in the model (a target site of a
        potential with ``uncondition=True``).
    """

    name: str
    shape: torch.Size
    unconstrained_shape: torch.Size
    offset: int
    numel: int
    transform: torch.distributions.Transform
    batched_shape: tuple
    subsampled: tuple = ()
    discrete: bool = False
    was_observed: bool = False


def check_positions(position, dim: int) -> None:
    """Refuse positions that are not ``(num_chains, dim)``.

    :param torch.Tensor position: the positions.
    :param int dim: the potential's number of coordinates.
    """
    if position.dim() != 2 or position.shape[-1] != dim:
        raise ValueError(
            f"Potential: positions must have shape (num_chains, {dim}), got "
            f"{tuple(position.shape)}"
        )


def is_target_site(site, uncondition: bool) -> bool:
    """Whether a trace site gets coordinates: a latent sample site, or with ``uncondition``
    an observed one too (``pyro.factor`` and ``pyro.deterministic`` sites excepted).

    :param dict site: a trace site.
    :param bool uncondition: the observed sites are the target.
    """
    if site["type"] != "sample" or _is_subsample(site) or site["infer"].get("_deterministic"):
        return False
    return not site["is_observed"] or (uncondition and not site["infer"].get("is_auxiliary"))


def lay_out(candidates, enumerated, bounds_free: dict, max_plate_nesting: int,
            subsample_indices: dict) -> tuple[list[LatentSite], dict]:
    """The flat layout of a potential's target sites, in trace order: continuous sites by
    their ``biject_to`` transform, sampled discrete ones by their exact values.

    :param candidates: ``(name, trace site)`` of every target site.
    :param enumerated: names of the sites summed out (no coordinates).
    :param dict bounds_free: discrete sites whose support bound depends on other latents.
    :param int max_plate_nesting: the model's deepest plate nesting.
    :param dict subsample_indices: each subsampled plate's mini-batch indices.
    :returns: the :class:`LatentSite` s and, for each sampled discrete site, its
        ``(lower, upper, kind)``.
    :raises ValueError: when no site is left to sample.
    """
    sites, offset, encodings = [], 0, {}
    for name, site in candidates:
        fn = site["fn"]
        if name in enumerated:
            continue
        if fn.support.is_discrete:
            *encodings[name], transform = discrete_encoding(
                name, fn, site["value"], bounds_free.get(name, False))
        else:
            transform = biject_to(fn.support)
        unconstrained = transform.inv(site["value"])
        # the chain dimension goes left of all max_plate_nesting plate dimensions
        pad = max_plate_nesting - len(fn.batch_shape)
        batched = (-1,) + (1,) * pad + tuple(unconstrained.shape)
        subsampled = tuple(
            (f.name, 1 + max_plate_nesting + f.dim, f.full_size)
            for f in site["cond_indep_stack"]
            if f.vectorized and f.name in subsample_indices and f.full_size is not None
        )
        sites.append(LatentSite(name, site["value"].shape, unconstrained.shape, offset,
                                unconstrained.numel(), transform, batched, subsampled,
                                fn.support.is_discrete, site["is_observed"]))
        offset += unconstrained.numel()
    if not sites:
        summed = ", ".join(repr(name) for name in enumerated)
        raise ValueError("the model has no latent sites to sample" + (
            f": {summed} {'is' if len(enumerated) == 1 else 'are'} discrete and summed out "
            "by enumeration; pyro.infer.TraceEnum_ELBO fits such a model exactly, and "
            "log_marginal(method='exact') gives its log-likelihood"
            if enumerated else ""))
    return sites, encodings

