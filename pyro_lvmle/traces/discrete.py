"""Discrete sites of a :class:`~pyro_lvmle.traces.Potential`: summed out or sampled, and how.

A discrete latent site with a small finite support is summed out (Pyro's parallel
enumeration, as Pyro's HMC and NUTS do); any other discrete site the potential samples gets
coordinates in the flat position, its exact integer values stored as floats. This module
holds what the potential needs for the second kind: the :class:`DiscreteBlock` that tells a
discrete step where a site's coordinates lie and which values they take, the value encodings
(integer-typed and one-hot values), and a provenance run that finds which sites' log
densities depend on which values (Pyro's :mod:`pyro.ops.provenance`, as
:func:`pyro.infer.inspect.get_dependencies` uses it).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
import torch.nn.functional as F
from pyro.ops.provenance import get_provenance, track_provenance
from torch.distributions import constraints
from torch.distributions.transforms import Transform, identity_transform

__all__ = ["MAX_ENUMERATED_SUPPORT", "DiscreteBlock"]

#: Largest support a latent site may have to be summed out automatically: parallel
#: enumeration costs one model evaluation per support value on a new tensor dimension.
MAX_ENUMERATED_SUPPORT = 256


class DiscreteBlock(NamedTuple):
    """Where a sampled discrete site lies in the flat position, and what values it takes.

    The block's coordinates are ``position[:, offset:offset + numel]``; viewed as
    ``(C, *batch_shape, event_numel)`` each element along ``batch_shape`` is independent of
    the others given the rest of the position, so a discrete step may update every element
    in parallel, with its own accept/reject (see :meth:`Potential.block_energy`).

    :ivar str name: the site's name.
    :ivar int offset: where its coordinates start in the flat position.
    :ivar int numel: how many coordinates it has, ``prod(batch_shape) * event_numel``.
    :ivar tuple batch_shape: the shape of its independent elements: the site's plate
        dimensions when the potential established their independence, ``()`` (one joint
        update) otherwise.
    :ivar int event_numel: coordinates per element.
    :ivar float lower: the smallest value a coordinate takes (``-math.inf`` if none).
    :ivar float upper: the largest value a coordinate takes, inclusive (``math.inf`` if
        none, or when the bound depends on other latent values: a value past the true
        bound then has infinite energy).
    :ivar str kind: ``"binary"`` (values 0 and 1), ``"categorical"`` (a class index in
        ``[lower, upper]``; a one-hot site is stored by its index) or ``"count"`` (an
        integer in ``[lower, upper]``).
    """

    name: str
    offset: int
    numel: int
    batch_shape: tuple
    event_numel: int
    lower: float
    upper: float
    kind: str


def enumerable(fn) -> bool:
    """Whether Pyro can sum a site with distribution ``fn`` out by parallel enumeration at a
    bounded cost: finite support of at most :data:`MAX_ENUMERATED_SUPPORT` values."""
    if not fn.has_enumerate_support:
        return False
    try:
        size = fn.enumerate_support(expand=False).shape[0]
    except NotImplementedError:  # e.g. a Binomial whose total_count varies across the batch
        return False
    return size <= MAX_ENUMERATED_SUPPORT


def discrete_encoding(name: str, fn, value: torch.Tensor, bounds_free: bool):
    """The kind, bounds and value encoding of a sampled discrete site.

    :param str name: the site's name (for the error message).
    :param fn: the site's distribution.
    :param torch.Tensor value: one value of the site.
    :param bool bounds_free: whether the support's bounds are free of latent values (a
        Binomial's ``total_count`` given as data); otherwise a tensor bound is infinite.
    :returns: ``(lower, upper, kind, transform)``, ``transform`` mapping stored coordinates
        to the site's values.
    :raises ValueError: for a discrete support with no coordinate-wise encoding.
    """
    support = fn.support
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    base = fn
    while hasattr(base, "base_dist"):
        base = base.base_dist
    transform = _ToLong() if not value.is_floating_point() else identity_transform
    if isinstance(support, type(constraints.boolean)):
        return 0.0, 1.0, "binary", transform
    if isinstance(support, type(constraints.one_hot)):
        return 0.0, float(value.shape[-1] - 1), "categorical", _IndexToOneHot(value.shape[-1])
    lower = _bound(getattr(support, "lower_bound", -math.inf), bounds_free, min, -math.inf)
    upper = _bound(getattr(support, "upper_bound", math.inf), bounds_free, max, math.inf)
    if isinstance(support, _INTEGER):
        kind = "categorical" if isinstance(base, torch.distributions.Categorical) else "count"
        return lower, upper, kind, transform
    raise ValueError(
        f"discrete site {name!r} has support {support} ({type(fn).__name__}), which can be "
        "neither summed out nor sampled coordinate by coordinate; write it with Bernoulli, "
        "Categorical, Binomial or count sites (a Multinomial as a chain of Binomials), or sum "
        "it out by hand with pyro.factor"
    )


def _bound(bound, bounds_free, reduce, infinite) -> float:
    if not torch.is_tensor(bound):
        return float(bound)
    if not bounds_free:
        return infinite
    return float(reduce(bound.reshape(-1).tolist()))


#: the integer supports: an integer interval, possibly unbounded on either side
_INTEGER = (constraints._IntegerInterval, constraints._IntegerGreaterThan,
            constraints._IntegerLessThan, dist.constraints._Integer)


class _ToLong(Transform):
    """Stored float coordinates to the integer-typed values of a site (a Categorical's)."""

    bijective = True
    domain = constraints.real
    codomain = constraints.real

    def _call(self, x):
        return x.round().long()

    def _inverse(self, y):
        return y.to(torch.get_default_dtype())

    def log_abs_det_jacobian(self, x, y):
        return torch.zeros_like(x, dtype=torch.get_default_dtype() if not x.is_floating_point()
                                else x.dtype)


class _IndexToOneHot(Transform):
    """A stored class index to the one-hot value of a ``OneHotCategorical`` site."""

    bijective = True
    domain = constraints.real
    codomain = constraints.independent(constraints.real, 1)

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes

    def _call(self, x):
        return F.one_hot(x.round().long(), self.num_classes).to(x.dtype)

    def _inverse(self, y):
        return y.argmax(-1).to(y.dtype if y.is_floating_point() else torch.get_default_dtype())

    def log_abs_det_jacobian(self, x, y):
        return torch.zeros_like(x)

    def forward_shape(self, shape):
        return torch.Size(shape) + (self.num_classes,)

    def inverse_shape(self, shape):
        return torch.Size(shape)[:-1]


def perturbed(values: torch.Tensor, block: DiscreteBlock) -> torch.Tensor:
    """Stored coordinates moved to another value of their support, where there is one."""
    if block.kind == "binary":
        return 1.0 - values
    if block.kind == "categorical":
        return torch.where(values + 1 <= block.upper, values + 1, values.new_tensor(block.lower))
    return torch.where(values + 1 <= block.upper, values + 1,
                       (values - 1).clamp(min=block.lower))


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
                if site["type"] != "sample" or type(site["fn"]).__name__ == "_Subsample":
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
                f"{type(fn).__name__} has no finite support to sum over; remove the mark and "
                "the potential samples it"
            )
        if mark == "parallel" or (mark is None and enumerable(fn)
                                  and dependents_within(name, frames, depends)):
            enumerated.append(name)
            if mark is None:
                automatic.append(name)
    return enumerated, automatic


def mark_parallel(names, msg):
    """An :func:`~pyro.poutine.infer_config` rule marking the sites ``names`` for parallel
    enumeration, as :func:`~pyro.infer.enum.config_enumerate` would."""
    return {"enumerate": "parallel"} if msg["name"] in names else {}


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
