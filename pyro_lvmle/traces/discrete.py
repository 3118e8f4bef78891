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

import pyro.distributions as dist
import torch
import torch.nn.functional as F
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
        return torch.zeros_like(x)


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


def mark_parallel(names, msg):
    """An :func:`~pyro.poutine.infer_config` rule marking the sites ``names`` for parallel
    enumeration, as :func:`~pyro.infer.enum.config_enumerate` would."""
    return {"enumerate": "parallel"} if msg["name"] in names else {}


def into_support(potential, position: torch.Tensor, max_doublings: int = 30) -> torch.Tensor:
    """Move the discrete elements of starting positions that have zero density (a prior draw
    of a latent count below an observed count it bounds) to the nearest value found, by
    doubling steps up and down, where the density is positive; positions already in the
    support are returned unchanged.

    Starting points only: like Pyro's retries of initial values, this changes where chains
    start, not what they sample. An element is moved by ``+-1, +-2, +-4, ...`` (within its
    ``[lower, upper]``) until its :meth:`~pyro_lvmle.traces.Potential.block_energy` is finite;
    one left outside after ``max_doublings`` tries keeps its value (the discrete steps may
    still reach the support).

    :param potential: the target, with ``discrete_blocks`` and ``block_energy``.
    :param torch.Tensor position: ``(C, D)``.
    :param int max_doublings: tries per direction.
    """
    num_chains = position.shape[0]
    with torch.no_grad():
        for block in potential.discrete_blocks:
            energy = potential.block_energy(position, block)
            bad = ~torch.isfinite(energy)
            if not bad.any():
                continue
            start = position[:, block.offset:block.offset + block.numel].reshape(
                (num_chains,) + tuple(block.batch_shape) + (block.event_numel,))
            values = start.clone()
            for step in (2.0**k for k in range(max_doublings)):
                for sign in (1.0, -1.0):
                    trial = (start + sign * step).clamp(block.lower, block.upper)
                    trial = torch.where(bad.unsqueeze(-1), trial, values)
                    candidate = position.clone()
                    candidate[:, block.offset:block.offset + block.numel] = trial.reshape(
                        num_chains, -1)
                    fixed = bad & torch.isfinite(potential.block_energy(candidate, block))
                    values = torch.where(fixed.unsqueeze(-1), trial, values)
                    bad = bad & ~fixed
                if not bad.any():
                    break
            position = position.clone()
            position[:, block.offset:block.offset + block.numel] = values.reshape(num_chains, -1)
    return position
