"""Which sites depend on which: summing out, and independent elements of discrete blocks.

Two questions about a model's dependency structure decide how a
:class:`~pyro_lvmle.traces.Potential` treats a discrete site. May an unmarked one be summed
out? Pyro's tensor variable elimination needs every site that depends on it to lie in all
its plates (:func:`summed_out`). May a sampled one be updated element by element in
parallel? Only if no site outside its plates depends on it and each element touches only its
own terms (:func:`discrete_blocks`). Both are answered by tracking the values through one run
of the model (Pyro's :mod:`pyro.ops.provenance`, as :func:`pyro.infer.inspect.get_dependencies`
uses it); the second also by a perturbation check, since provenance is per tensor, not per
element.
"""

from __future__ import annotations

import math
from functools import partial

import pyro
import pyro.poutine as poutine
import torch
from pyro.ops.provenance import get_provenance, track_provenance
from torch.distributions import Independent

from .discrete import DiscreteBlock, enumerable, perturbed
from .layout import check_positions
from .particles import _is_subsample
from .plate import site_log_probs

__all__ = []


def summed_out(candidates, frames, depends):
    """The discrete latent sites to sum out: those marked for parallel enumeration, and the
    unmarked :func:`enumerable` ones whose dependents all lie in their plates.

    :param candidates: ``(name, site)`` of the sites that get coordinates unless summed out.
    :param dict frames: each sample site's vectorized plate names.
    :param dict depends: from :func:`dependencies`, or ``None``.
    :returns: ``(enumerated, automatic)``: the names of both kinds, of the unmarked alone.
    :raises ValueError: for a site marked for parallel enumeration with no finite support.
    """
    enumerated, automatic = [], []
    for name, site in candidates:
        fn = site["fn"]
        if not fn.support.is_discrete or site["is_observed"]:
            continue
        mark = site["infer"].get("enumerate")
        if mark == "parallel" and not fn.has_enumerate_support:
            raise ValueError(
                f"latent site {name!r} is marked for parallel enumeration but "
                f"{type(fn).__name__} has no finite support to sum over"
                + (" (a distribution made independent with .to_event() is not enumerated: "
                   "declare its units with a pyro.plate instead, then each is summed out)"
                   if isinstance(fn, Independent) else
                   "; remove the mark and the potential samples it")
            )
        if mark == "parallel" or (mark is None and enumerable(fn)
                                  and dependents_within(name, frames, depends)):
            enumerated.append(name)
            if mark is None:
                automatic.append(name)
    return enumerated, automatic


def dependencies(model, args, kwargs, trace, names):
    """Which sites' log densities depend on which of the values ``names``, by one run of the
    model with those values tracked (:func:`pyro.ops.provenance.track_provenance`).

    :param model: the model.
    :param tuple args: its arguments.
    :param dict kwargs: its keyword arguments.
    :param trace: a trace of the model giving every site's value.
    :param names: the sites whose values are tracked.
    :returns: ``(depends, bounds_free)``: ``depends[site]`` is the set of tracked names the
        site's log density depends on, ``bounds_free[name]`` whether the support of the
        tracked site ``name`` is free of tracked values. ``None`` if the model cannot run on
        tracked values (then nothing can be concluded).
    """
    data = {name: track_provenance(trace.nodes[name]["value"], frozenset({name}))
            for name in names}
    try:
        with torch.random.fork_rng(), torch.no_grad(), pyro.validation_enabled(False), \
                poutine.block():
            tracked = poutine.trace(poutine.condition(model, data=data)).get_trace(
                *args, **kwargs)
            depends, bounds_free = {}, {}
            for name, site in tracked.nodes.items():
                if site["type"] != "sample" or _is_subsample(site):
                    continue
                log_prob = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
                depends[name] = get_provenance(log_prob)
                if name in data:
                    support = site["fn"].support
                    bounds = [getattr(support, b, None) for b in ("lower_bound", "upper_bound")]
                    bounds_free[name] = not any(get_provenance(b) for b in bounds
                                                if torch.is_tensor(b))
    except Exception:  # noqa: BLE001 -- an op provenance tensors do not support
        return None
    return depends, bounds_free


def dependents_within(name, frames, depends) -> bool:
    """Whether every site depending on ``name`` lies in all its plates, as summing it out by
    Pyro's tensor variable elimination needs (``True`` when dependencies are unknown, as
    Pyro assumes)."""
    if depends is None:
        return True
    return all(frames[name] <= frames[other] for other, names in depends.items()
               if name in names)


def element_plates(site, depends, frames):
    """The plates along which a sampled site's elements are independent given the rest (its
    plates of size > 1, each dimension of its batch shape being one), when every site that
    depends on it lies in them; ``None`` otherwise, or when they are not known."""
    if depends is None:
        return None
    dims = {f.dim: f.name for f in site["cond_indep_stack"] if f.vectorized}
    batch_shape = site["fn"].batch_shape
    plates = set()
    for d in range(-len(batch_shape), 0):
        if batch_shape[d] > 1:
            if d not in dims:
                return None
            plates.add(dims[d])
    if any(site["name"] in names and not plates <= frames[other]
           for other, names in depends.items()):
        return None
    return frozenset(plates) or None


def discrete_blocks(potential, trace, encodings, depends, frames):
    """Lay out a potential's :class:`~pyro_lvmle.traces.discrete.DiscreteBlock` s, each with
    the element shape along which it was established independent (:func:`element_plates`,
    then :func:`elements_independent`), ``()`` where that failed or the model has summed-out
    sites.

    :param potential: the :class:`~pyro_lvmle.traces.Potential`, sites laid out.
    :param trace: its first trace of the model.
    :param dict encodings: ``(lower, upper, kind)`` of each sampled discrete site.
    :param dict depends: from :func:`dependencies`, or ``None``.
    :param dict frames: each sample site's vectorized plate names.
    :returns: ``(blocks, block_sites)``, ``block_sites[name]`` naming the sites whose log
        densities make the block's energy terms.
    """
    blocks, block_sites = [], {}
    base = potential._position({site.name: trace.nodes[site.name]["value"]
                                for site in potential.sites}, 1)
    for site in potential.sites:
        if not site.discrete:
            continue
        node = trace.nodes[site.name]
        plates = None if potential.enumerated or potential.vectorization == "vmap" \
            else element_plates(node, depends, frames)
        batch_shape = () if plates is None else tuple(node["fn"].batch_shape)
        block = DiscreteBlock(site.name, site.offset, site.numel, batch_shape,
                              site.numel // max(math.prod(batch_shape), 1), *encodings[site.name])
        in_plates = tuple(name for name in frames if plates and plates <= frames[name])
        log_probs = partial(site_log_probs, potential)
        if plates and not elements_independent(log_probs, block, in_plates, base,
                                               potential.max_plate_nesting + 1):
            block = block._replace(batch_shape=(), event_numel=block.numel)
        block_sites[site.name] = in_plates if block.batch_shape else tuple(frames)
        blocks.append(block)
    return tuple(blocks), block_sites


def elements_independent(site_log_probs, block: DiscreteBlock, in_plates, base: torch.Tensor,
                         rank: int) -> bool:
    """A perturbation check that a block's elements touch only their own terms: its first
    element and its last are moved to another value in turn (:func:`perturbed`), and the log
    densities of the sites in the block's plates may change at that element only, those of
    the other sites not at all.

    :param site_log_probs: positions ``(C, D)`` to each site's log density.
    :param DiscreteBlock block: the block, with the element shape to check.
    :param in_plates: names of the sites in all the block's plates.
    :param torch.Tensor base: a position ``(1, D)``.
    :param int rank: the chain plate's position from the right.
    """
    size = math.prod(block.batch_shape)
    if size <= 1:
        return True
    rows = [base]
    for index in (0, size - 1):
        row = base.clone()
        start = block.offset + index * block.event_numel
        row[:, start:start + block.event_numel] = perturbed(
            row[:, start:start + block.event_numel], block)
        rows.append(row)
    tolerance = 64 * torch.finfo(base.dtype).eps  # a few roundings of a log density
    for name, log_prob in site_log_probs(torch.cat(rows)).items():
        terms = per_element(log_prob, block.batch_shape if name in in_plates else (),
                            rank, 3).reshape(3, -1)
        for row, index in ((1, 0), (2, size - 1)):
            changed = ~torch.isclose(terms[row], terms[0], rtol=tolerance, atol=tolerance,
                                     equal_nan=True)
            if name in in_plates:
                changed[index] = False
            if changed.any():
                return False
    return True


def per_element(log_prob: torch.Tensor, batch_shape: tuple, rank: int,
                num_chains: int) -> torch.Tensor:
    """A site's log density summed to ``(C, *batch_shape)``: over the plate dimensions left
    of ``batch_shape`` and over those where ``batch_shape`` has size 1.

    :param torch.Tensor log_prob: right-aligned on ``rank`` dimensions, chains first.
    :param tuple batch_shape: a block's element shape.
    :param int rank: the chain plate's position from the right.
    :param int num_chains: ``C``.
    """
    if not torch.is_tensor(log_prob) or log_prob.dim() == 0:
        log_prob = torch.as_tensor(log_prob)
    log_prob = log_prob.reshape((1,) * max(rank - log_prob.dim(), 0) + log_prob.shape)
    ndim = len(batch_shape)
    drop = [d for d in range(1, rank) if d < rank - ndim
            or (batch_shape[d - rank + ndim] == 1 and log_prob.shape[d] != 1)]
    if drop:
        log_prob = log_prob.sum(drop, keepdim=True)
    return log_prob.reshape(log_prob.shape[:1] + log_prob.shape[rank - ndim:]).expand(
        (num_chains,) + tuple(batch_shape))


def block_energy(potential, position: torch.Tensor, block: DiscreteBlock) -> torch.Tensor:
    """:meth:`Potential.block_energy <pyro_lvmle.traces.Potential.block_energy>`: the energy
    terms of the sites in the block's plates, kept per element (the whole energy for a joint
    block, with summed-out sites, or on the vmap path).

    :param potential: the :class:`~pyro_lvmle.traces.Potential`.
    :param torch.Tensor position: ``(C, D)``.
    :param DiscreteBlock block: one of ``potential.discrete_blocks``.
    """
    if block not in potential.discrete_blocks:
        raise ValueError(f"block_energy: {block!r} is not one of this potential's "
                         "discrete_blocks")
    check_positions(position, potential.dim)
    if potential.enumerated or potential.vectorization == "vmap":
        return potential(position)
    rank, num_chains = potential.max_plate_nesting + 1, position.shape[0]
    log_probs = site_log_probs(potential, position)
    return -sum(per_element(log_probs[name], block.batch_shape, rank, num_chains)
                for name in potential._block_sites[block.name])

