r"""The promise behind per-datum weights: each unit's log densities depend on its own latents.

:func:`~pyro_lvmle.traces.particle_terms` splits the log weight of a particle into one term
per *unit* (an element of the vectorized plates every site lives in, usually one datum), and
the multi-sample objectives and per-datum importance sampling form
:math:`\log \frac1K \sum_k w_{k,u}` unit by unit. That is right when the model
factorizes over the units,

.. math::

    p(x, z) = \prod_u p(x_u, z_u),

and wrong otherwise: unit :math:`u`'s weights then estimate
:math:`\mathbb{E}_{q}[p(x_u, z_u \mid z_{-u})]`, a function of the guide, not a factor of
:math:`p(x)`. The guide needs no such promise: a Pyro guide samples its sites in order, so
each unit's guide term is a conditional density given what was drawn before (other units
included), and :math:`\mathbb{E}_q[p(x_u, z_u) / q_u] = p(x_u)` still holds unit by unit.

A plate is that promise, and Pyro does not check it. A random walk written as
``eps.cumsum(-1)`` inside a plate is easy to write, and Pyro's ``Trace_ELBO`` (one particle,
where the split does not matter) is right on it; split per datum, the IWAE bound with the
prior as guide tends, as :math:`K \to \infty`, to :math:`\sum_u \log p(x_u)`, the sum of the
marginals, instead of :math:`\log p(x)` (1.5 nats below it on the six points of the test).
Dependence through *observed* values is fine (they are fixed): what breaks the split is a
model term that depends on other units' latent values.

:func:`independent_units` checks the promise on draws of the guide, without gradients, so
it covers discrete latents too.
"""

from __future__ import annotations

import math

import pyro.poutine as poutine
import torch
from pyro.poutine.util import prune_subsample_sites

from .params import _cuda_devices
from .particles import _is_subsample, _sample_sites, _sum_sites, _unit_frames

__all__ = ["independent_units"]


def independent_units(model, guide, args=(), kwargs=None, *, max_plate_nesting: int) -> bool:
    r"""Whether the model's log density of every unit depends on that unit's own latent
    values only (the guide needs no such check: see the module).

    Two draws ``A`` and ``B`` of the guide are mixed: for each bit :math:`j` of the units'
    index, the mix takes ``B``'s latent values at the units whose index has bit :math:`j`
    set and ``A``'s elsewhere. At each mix every unit's :math:`\log p` must equal its value
    at the draw the unit took its values from. Any two units differ in some bit, so a
    dependence between any two units is seen: always through continuous values, and through
    discrete ones where the two draws differ. Two runs of the guide and
    :math:`3 + \lceil \log_2 U \rceil` of the model for :math:`U` units; ``True`` at once
    when there is no unit plate or one unit, and when the model's log density is not
    reproducible at the same values (randomness outside ``pyro.sample``, such as dropout:
    nothing can be compared, and the split is kept). Torch's random state is left as it
    was.

    :param model: a Pyro model.
    :param guide: a Pyro guide with every latent site of the model.
    :param tuple args: positional arguments of both.
    :param dict kwargs: keyword arguments of both.
    :param int max_plate_nesting: the deepest plate nesting of model and guide.

    Example: a random walk inside a plate breaks the promise, independent draws keep it::

        >>> import pyro, pyro.distributions as dist, torch
        >>> from pyro_lvmle.traces import PriorGuide
        >>> def walk(x, cumulative=True):
        ...     with pyro.plate("time", len(x)):
        ...         eps = pyro.sample("eps", dist.Normal(0.0, 1.0))
        ...         loc = eps.cumsum(-1) if cumulative else eps
        ...         pyro.sample("x", dist.Normal(loc, 0.5), obs=x)
        >>> x = torch.randn(5)
        >>> independent_units(walk, PriorGuide(walk), (x,), max_plate_nesting=1)
        False
        >>> independent_units(walk, PriorGuide(walk), (x, False), max_plate_nesting=1)
        True
    """
    kwargs = dict(kwargs or {})
    rank = max_plate_nesting + 1
    with torch.random.fork_rng(devices=_cuda_devices()), poutine.block(), torch.no_grad():
        first = poutine.trace(guide).get_trace(*args, **kwargs)
        model_sites = _model_sites(model, first, args, kwargs, rank)
        units = _unit_frames(model_sites + _sample_sites(prune_subsample_sites(first), rank))
        num_units = math.prod(frame.size for frame in units)
        if num_units <= 1 or not model_sites:
            return True
        keep = {-rank} | {frame.dim for frame in units}

        def log_p(sites):
            return _sum_sites(sites, rank, keep, 1.0, 1, sites[0]["log_prob"], scaled=False)

        subsamples = first.copy()  # the same mini-batch for the second draw
        for name in [n for n, s in first.nodes.items() if not _is_subsample(s)]:
            subsamples.remove_node(name)
        second = poutine.trace(poutine.replay(guide, trace=subsamples)).get_trace(
            *args, **kwargs)
        at_first = log_p(model_sites)
        if not _same(log_p(_model_sites(model, first, args, kwargs, rank)), at_first):
            return True  # randomness outside pyro.sample (dropout): nothing to compare with
        at_second = log_p(_model_sites(model, second, args, kwargs, rank))
        index = torch.arange(num_units, device=at_first.device).reshape(
            [frame.size for frame in units])
        for bit in range(math.ceil(math.log2(num_units))):
            mask = (index >> bit) & 1 == 1
            mixed = log_p(_model_sites(model, _mix(first, second, mask, units), args, kwargs,
                                       rank))
            if not _same(mixed, torch.where(_at_rank(mask, units, rank), at_second, at_first)):
                return False
    return True


def _model_sites(model, guide_trace, args, kwargs, rank):
    """The model's sample sites, with log densities, run against the guide's values."""
    trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    return _sample_sites(prune_subsample_sites(trace), rank)


def _mix(first, second, mask, units):
    """``first`` with ``second``'s latent values at the units where ``mask`` is set."""
    mixed = first.copy()
    for name, site in first.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or _is_subsample(site):
            continue
        value, other = site["value"], second.nodes[name]["value"]
        event_dim = site["fn"].event_dim
        batch_dims = value.dim() - event_dim
        if any(batch_dims < -frame.dim or value.shape[batch_dims + frame.dim] != frame.size
               for frame in units):
            continue  # not one value per unit: nothing to mix
        where = _at_rank(mask, units, batch_dims)
        where = where.reshape(where.shape + (1,) * event_dim)
        mixed.nodes[name] = {**site, "value": torch.where(where, other, value)}
    return mixed


def _at_rank(mask, units, rank):
    """``mask`` (one entry per unit) laid out over ``rank`` plate dimensions."""
    shape = [1] * rank
    for frame in units:
        shape[rank + frame.dim] = frame.size
    return mask.reshape(shape)


def _same(actual, expected) -> bool:
    actual, expected = torch.broadcast_tensors(actual, expected)
    finite = expected[torch.isfinite(expected)]
    scale = float(finite.abs().max().clamp(min=1.0)) if finite.numel() else 1.0
    return bool(torch.allclose(actual, expected, rtol=1e-7, atol=1e-9 * scale, equal_nan=True))
