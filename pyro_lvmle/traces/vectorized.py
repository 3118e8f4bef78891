r"""Whether a model and its guide run vectorized over particles as they run one at a time,
and the particles' terms drawn one at a time where they do not.

:func:`~pyro_lvmle.traces.particle_terms` runs ``K`` particles at once under an outermost
plate, as Pyro's ``vectorize_particles=True`` does. A program written for one draw can break
under it in two ways, and Pyro's ``Trace_ELBO`` (which draws particles one at a time) in
neither:

- it fails: Python control flow on a sampled value (``if s > 0``), a shape that the extra
  dimension breaks (``X @ beta`` with ``beta`` a vector, ``v.reshape(-1)``);
- it runs and is wrong where the particle dimension happens to fit another one: a latent
  indexed along its first dimension (``u[group]``) or stacked (``torch.stack([a, b])``) when
  ``K`` equals the number of groups or of stacked values, or a reduction over all
  dimensions (``z - z.mean()``) that mixes the particles.

:func:`vectorizes` runs the pair once vectorized and replays its first and last particles
one at a time: their log densities must agree. Where they do not, :func:`stacked_particle_terms`
draws the particles one at a time (``K`` runs, as ``Trace_ELBO`` does).
"""

from __future__ import annotations

import math

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions.util import scale_and_mask

from .params import _cuda_devices
from .particles import PARTICLE_PLATE, ParticleTerms, _as_rank, _is_subsample, particle_terms

__all__ = ["stacked_particle_terms", "vectorizes"]

#: errors a program written for one draw raises under the particle plate
_BROKEN = (RuntimeError, ValueError, IndexError, TypeError, NotImplementedError)


def vectorizes(model, guide, args=(), kwargs=None, *, num_particles: int,
               max_plate_nesting: int) -> bool:
    """Whether ``num_particles`` vectorized particles give each particle the log densities
    that one run of the model and guide at its values gives (the first and the last particle
    are checked; torch's random number generators are left as they were).

    :param model: a Pyro model.
    :param guide: a Pyro guide.
    :param tuple args: positional arguments of both.
    :param dict kwargs: keyword arguments of both.
    :param int num_particles: ``K`` (2 at least are checked).
    :param int max_plate_nesting: the deepest plate nesting of model and guide.

    Example: indexing a latent along its first dimension is wrong under the particle plate
    when ``K`` is the number of groups::

        >>> import pyro, pyro.distributions as dist, torch
        >>> group = torch.tensor([0, 1, 1])
        >>> def model(y):
        ...     with pyro.plate("groups", 2):
        ...         u = pyro.sample("u", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", 3):
        ...         pyro.sample("y", dist.Normal(u[group], 1.0), obs=y)
        >>> def guide(y):
        ...     with pyro.plate("groups", 2):
        ...         pyro.sample("u", dist.Normal(0.0, 1.0))
        >>> y = torch.zeros(3)
        >>> vectorizes(model, guide, (y,), num_particles=2, max_plate_nesting=1)
        False
        >>> def indexed_from_the_right(y):
        ...     with pyro.plate("groups", 2):
        ...         u = pyro.sample("u", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", 3):
        ...         pyro.sample("y", dist.Normal(u[..., group], 1.0), obs=y)
        >>> vectorizes(indexed_from_the_right, guide, (y,), num_particles=2,
        ...            max_plate_nesting=1)
        True
    """
    kwargs = dict(kwargs or {})
    rank = max_plate_nesting + 1
    size = max(int(num_particles), 2)
    particles = pyro.plate(PARTICLE_PLATE, size, dim=-rank)
    with torch.random.fork_rng(devices=_cuda_devices()), torch.no_grad(), poutine.block():
        try:
            guide_trace = poutine.trace(particles(guide)).get_trace(*args, **kwargs)
            model_trace = poutine.trace(poutine.replay(particles(model), trace=guide_trace)
                                        ).get_trace(*args, **kwargs)
            # one draw, on the same mini-batch: the shapes and the runs to compare with
            indices = {name: site["value"] for trace in (guide_trace, model_trace)
                       for name, site in trace.nodes.items() if _is_subsample(site)}
            one = poutine.trace(poutine.condition(guide, data=indices)).get_trace(
                *args, **kwargs)
            one_model = poutine.trace(poutine.replay(poutine.condition(model, data=indices),
                                                     trace=one)).get_trace(*args, **kwargs)
            together = [_per_particle(trace, rank, size) for trace in (guide_trace, model_trace)]
        except _BROKEN:
            return False
        for k in (0, size - 1):
            values = _particle_values(guide_trace, one, k, rank)
            # the model's latent sites that the guide does not sample (drawn from the prior)
            prior = _particle_values(model_trace, one_model, k, rank, skip=guide_trace.nodes)
            if values is None or prior is None:
                return False
            try:
                guide_k = poutine.trace(poutine.replay(
                    poutine.condition(guide, data=indices),
                    trace=_with_values(one, values))).get_trace(*args, **kwargs)
                model_k = poutine.trace(poutine.replay(
                    poutine.condition(model, data=indices),
                    trace=_with_values(one_model, {**values, **prior}))).get_trace(
                    *args, **kwargs)
                alone = [_total(trace) for trace in (guide_k, model_k)]
            except _BROKEN:
                return False
            for (value, magnitude), vector in zip(alone, together, strict=True):
                if not (math.isfinite(value) and math.isfinite(float(vector[k]))):
                    continue  # a non-finite log density is the objectives' to name
                tolerance = math.sqrt(torch.finfo(vector.dtype).eps) * (1.0 + magnitude)
                if not abs(float(vector[k]) - value) <= tolerance:
                    return False
    return True


def _sites(trace):
    for site in trace.nodes.values():
        if site["type"] == "sample" and not _is_subsample(site) \
                and not site["infer"].get("_deterministic"):
            log_prob = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
            yield scale_and_mask(log_prob, site["scale"], site["mask"])


def _per_particle(trace, rank, size):
    """Each particle's total scaled log density, ``(K,)``."""
    total = torch.zeros(size)
    for log_prob in _sites(trace):
        value = _as_rank(log_prob, rank)
        value = value.sum(tuple(range(1, rank))) if rank > 1 else value
        total = total.to(value) + value.reshape(-1).expand(size)
    return total


def _total(trace):
    """The total scaled log density of one draw, and the sum of its terms' magnitudes."""
    total, magnitude = 0.0, 0.0
    for log_prob in _sites(trace):
        total += float(log_prob.sum())
        magnitude += float(log_prob.abs().sum())
    return total, magnitude


def _with_values(trace, values):
    """A copy of a trace whose latent sites hold ``values`` (to replay a program against)."""
    copy = trace.copy()
    for name, value in values.items():
        if name in copy.nodes:
            copy.nodes[name] = {**copy.nodes[name], "value": value}
    return copy


def _particle_values(trace, one, k, rank, skip=()):
    """Particle ``k``'s value of every latent site of a vectorized trace (but those in
    ``skip``), in the shape one draw has; ``None`` where a shape does not match."""
    values = {}
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or _is_subsample(site) \
                or name in skip:
            continue
        if name not in one.nodes:
            return None
        value, shape = site["value"], one.nodes[name]["value"].shape
        dim = value.dim() - site["fn"].event_dim - rank
        if dim >= 0 and value.shape[dim] > 1:
            value = value.select(dim, k)
        if value.numel() != math.prod(shape):
            return None
        values[name] = value.reshape(shape)
    return values


def stacked_particle_terms(model, guide, args, kwargs, *, num_particles: int,
                           max_plate_nesting: int, **options) -> ParticleTerms:
    """:func:`~pyro_lvmle.traces.particle_terms` of ``num_particles`` particles drawn one at a
    time (a run of the guide and the model each), stacked: for a pair that does not
    :func:`vectorizes`.

    :param model: a Pyro model.
    :param guide: a Pyro guide.
    :param tuple args: positional arguments of both.
    :param dict kwargs: keyword arguments of both.
    :param int num_particles: ``K``.
    :param int max_plate_nesting: the deepest plate nesting of model and guide.
    :param options: the other options of :func:`~pyro_lvmle.traces.particle_terms`.
    """
    draws = [particle_terms(model, guide, args, kwargs, num_particles=1,
                            max_plate_nesting=max_plate_nesting, **options)
             for _ in range(num_particles)]
    stacked = {}
    for field in ("log_p", "log_q", "log_q_direct", "log_q_score", "log_q_nonreparam_direct",
                  "log_p_direct"):
        parts = [getattr(draw, field) for draw in draws]
        stacked[field] = None if parts[0] is None else torch.cat(parts)
    return draws[0]._replace(**stacked)
