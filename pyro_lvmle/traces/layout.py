"""The layout of a :class:`~pyro_lvmle.traces.Potential`'s flat positions: which sample
sites get coordinates, and where."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .particles import _is_subsample

__all__ = ["LatentSite", "check_positions", "is_target_site"]


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
