"""Trace once, estimate many: the log-weight components of every particle objective.

:func:`particle_terms` runs the guide and then the model (replayed against the guide) once,
vectorized over ``K`` particles by an outermost plate, and returns a :class:`ParticleTerms`:
per particle and per *independent unit*, the model's and the guide's log densities and what
each gradient estimator needs on top. Every objective of :mod:`pyro_lvmle.objectives` is a
small tensor function of it; no other module runs ``poutine`` for objectives.

Units. A plate that every sample site of the model and guide lives in (observed, latent,
factor and auxiliary sites alike) splits the log weight into independent terms, one per
element: one unit per datum when all sites share the data plate. A multi-sample bound is then
formed per unit, ``log (1/K) sum_k w_{k,u}``, and summed over units. Without such a plate
(a global latent beside local ones, or sequential plates) the whole batch is one unit.

Subsampling. The ``N/B`` scale of a subsampled unit plate is returned apart
(:attr:`ParticleTerms.unit_scale`) and applied *outside* the log-mean-exp, which keeps the
subsampled bound an unbiased estimate of the full-data bound. Any other scale (a
``poutine.scale``, a subsampled plate that is not a unit plate) multiplies the site's log
density inside the weight, where it belongs; a subsampled plate that is not a unit plate is
reported in :attr:`ParticleTerms.subsampled_sites` so that multi-sample objectives, for which
no unbiased mini-batch form exists there, can refuse it.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions.util import scale_and_mask
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import prune_subsample_sites
from pyro.util import check_model_guide_match, check_site_shape

__all__ = ["PARTICLE_PLATE", "ParticleTerms", "guess_max_plate_nesting", "particle_terms"]

#: Name of the plate that vectorizes particles (Pyro's own name, so models can recognise it).
PARTICLE_PLATE = "num_particles_vectorized"


class ParticleTerms(NamedTuple):
    """Log-weight components of ``K`` particles, one independent unit per element.

    Every tensor has shape ``(K, *unit_shape)``, ``unit_shape`` holding one dimension per
    plate dimension (size 1 for a plate that is not a unit plate), so they broadcast.

    :ivar torch.Tensor log_p: :math:`\\log p(x, z_k)`, the model's log density of each
        particle within each unit (latent, observed and factor sites; inner scales applied).
    :ivar torch.Tensor log_q: :math:`\\log q(z_k)`, the guide's log density, with the full
        autograd graph (through the sample values and the guide's parameters).
    :ivar torch.Tensor log_q_direct: the same values, differentiable only *directly* in the
        guide's parameters, every sample value held fixed (the score-function part of the
        gradient of ``log_q``); ``None`` unless asked for. ``log_q - log_q_direct`` has the
        path-derivative part alone.
    :ivar torch.Tensor log_q_score: the log density of the guide's non-reparameterizable
        sites alone (full graph), the factor the score-function estimators multiply;
        ``None`` when every guide site is reparameterized.
    :ivar torch.Tensor log_q_score_direct: ``log_q_score`` differentiable only directly in
        the guide's parameters; ``None`` unless ``log_q_direct`` was asked for.
    :ivar float unit_scale: the subsampling scale of the unit plates, ``N/B``, applied
        outside the log-mean-exp.
    :ivar tuple unit_plates: names of the plates whose elements are the units.
    :ivar tuple nonreparam_sites: names of the non-reparameterizable guide sites.
    :ivar tuple subsampled_sites: sites scaled by a subsampled plate that is not a unit plate.
    :ivar tuple guide_params: the unconstrained leaf tensors of the guide's parameters.
    """

    log_p: torch.Tensor
    log_q: torch.Tensor
    log_q_direct: torch.Tensor | None
    log_q_score: torch.Tensor | None
    log_q_score_direct: torch.Tensor | None
    unit_scale: float
    unit_plates: tuple[str, ...]
    nonreparam_sites: tuple[str, ...]
    subsampled_sites: tuple[str, ...]
    guide_params: tuple[torch.Tensor, ...]

    @property
    def num_particles(self) -> int:
        """The number of particles ``K``."""
        return self.log_p.shape[0]

    @property
    def log_weights(self) -> torch.Tensor:
        """:math:`\\log w_k = \\log p(x, z_k) - \\log q(z_k)`, per particle and unit."""
        return self.log_p - self.log_q


class _DetachValues(Messenger):
    """Draw every latent sample site's value detached, so nothing downstream (the rest of the
    guide, the replayed model, the trace) differentiates through the sampling path."""

    def _process_message(self, msg):
        # sampling here, before Pyro's default does, makes the detached value the one that
        # every handler records and the program receives
        if msg["type"] == "sample" and not msg["is_observed"] and msg["value"] is None \
                and not _is_subsample(msg):
            msg["value"] = msg["fn"](*msg["args"], **msg["kwargs"]).detach()


def _is_subsample(site) -> bool:
    return site["type"] == "sample" and type(site["fn"]).__name__ == "_Subsample"


def guess_max_plate_nesting(model, guide, args, kwargs) -> int:
    """Run guide and model once, unvectorized, and return their deepest plate nesting.

    :param model: a Pyro model.
    :param guide: a Pyro guide.
    :param tuple args: positional arguments of both.
    :param dict kwargs: keyword arguments of both.
    """
    with poutine.block():
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            *args, **kwargs
        )
    dims = [
        frame.dim
        for trace in (model_trace, guide_trace)
        for site in trace.nodes.values()
        if site["type"] == "sample"
        for frame in site["cond_indep_stack"]
        if frame.vectorized
    ]
    return -min(dims) if dims else 0


def particle_terms(model, guide, args, kwargs, *, num_particles: int, max_plate_nesting: int,
                   detach_values: bool = False, direct_log_q: bool = False) -> ParticleTerms:
    """Run ``guide`` and ``model`` once for ``num_particles`` vectorized particles.

    :param model: a Pyro model.
    :param guide: a Pyro guide with every latent site of the model.
    :param tuple args: positional arguments of both.
    :param dict kwargs: keyword arguments of both.
    :param int num_particles: ``K``.
    :param int max_plate_nesting: the deepest plate nesting of model and guide; the
        particle plate goes one dimension further left.
    :param bool detach_values: detach every latent value in the guide (score-function and
        wake-sleep objectives), so ``log_p`` and ``log_q`` differentiate only directly.
    :param bool direct_log_q: also compute :attr:`ParticleTerms.log_q_direct`, by running the
        guide a second time against its own sample values, detached.
    """
    if num_particles == 1:  # no plate: log densities get a leading size-1 dimension below
        def particles(fn):
            return fn
    else:
        particles = pyro.plate(PARTICLE_PLATE, num_particles, dim=-(max_plate_nesting + 1))
    vectorized_guide = particles(guide)
    if detach_values:
        vectorized_guide = _DetachValues()(vectorized_guide)
    guide_trace = poutine.trace(vectorized_guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(
        poutine.replay(particles(model), trace=guide_trace)
    ).get_trace(*args, **kwargs)
    guide_params = tuple(
        site["value"].unconstrained() for site in guide_trace.nodes.values()
        if site["type"] == "param"
    )
    model_trace = prune_subsample_sites(model_trace)
    guide_trace_pruned = prune_subsample_sites(guide_trace)
    if pyro.infer.util.is_validation_enabled():
        check_model_guide_match(model_trace, guide_trace_pruned, max_plate_nesting + 1)
    model_sites = _sample_sites(model_trace, max_plate_nesting)
    guide_sites = _sample_sites(guide_trace_pruned, max_plate_nesting)
    units = _unit_frames(model_sites + guide_sites)
    unit_scale = math.prod(
        (f.full_size if f.full_size is not None else f.size) / f.size for f in units
    )
    rank = max_plate_nesting + 1
    keep = {-rank} | {f.dim for f in units}

    subsampled = tuple(
        site["name"] for site in model_sites + guide_sites
        if any(_subsampled(f) and f not in units for f in site["cond_indep_stack"])
    )
    like = next(s["log_prob"] for s in model_sites + guide_sites) if model_sites + guide_sites \
        else torch.zeros(())
    log_p = _sum_sites(model_sites, rank, keep, unit_scale, num_particles, like)
    log_q = _sum_sites(guide_sites, rank, keep, unit_scale, num_particles, like)
    nonreparam = [s for s in guide_sites if not s["fn"].has_rsample]
    for site in guide_sites:
        if site["infer"].get("enumerate"):
            raise ValueError(
                f"guide site {site['name']!r} is marked for enumeration; particle objectives "
                "sample every guide site. Use pyro.infer.TraceEnum_ELBO for enumeration."
            )
    log_q_score = (_sum_sites(nonreparam, rank, keep, unit_scale, num_particles, like)
                   if nonreparam else None)
    if pyro.infer.util.is_validation_enabled() and torch.isnan(log_p - log_q).any():
        bad = [s["name"] for s in model_sites + guide_sites
               if torch.is_tensor(s["log_prob"]) and torch.isnan(s["log_prob"]).any()]
        raise ValueError(
            f"sites {bad} have NaN log densities; check their distributions' parameters and the "
            "values they are evaluated at"
        )

    log_q_direct = log_q_score_direct = None
    if direct_log_q:
        replayed = guide_trace.copy()
        for name, site in replayed.nodes.items():
            if site["type"] == "sample" and not site["is_observed"] and not _is_subsample(site):
                replayed.nodes[name] = {**site, "value": site["value"].detach()}
        with poutine.block():
            direct_trace = poutine.trace(
                poutine.replay(particles(guide), trace=replayed)
            ).get_trace(*args, **kwargs)
        direct_sites = _sample_sites(prune_subsample_sites(direct_trace), max_plate_nesting)
        log_q_direct = _sum_sites(direct_sites, rank, keep, unit_scale, num_particles, like)
        names = {s["name"] for s in nonreparam}
        direct_nonreparam = [s for s in direct_sites if s["name"] in names]
        log_q_score_direct = (_sum_sites(direct_nonreparam, rank, keep, unit_scale,
                                         num_particles, like) if nonreparam else None)

    return ParticleTerms(
        log_p=log_p, log_q=log_q, log_q_direct=log_q_direct, log_q_score=log_q_score,
        log_q_score_direct=log_q_score_direct,
        unit_scale=unit_scale, unit_plates=tuple(f.name for f in units),
        nonreparam_sites=tuple(s["name"] for s in nonreparam),
        subsampled_sites=subsampled, guide_params=guide_params,
    )


def _sample_sites(trace, max_plate_nesting):
    """The sample sites that carry log density, with ``log_prob`` computed and checked."""
    sites = []
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site["infer"].get("_deterministic"):
            continue
        log_prob = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
        log_prob = scale_and_mask(log_prob, mask=site["mask"])
        site = dict(site, log_prob=log_prob, name=name)
        if pyro.infer.util.is_validation_enabled():
            check_site_shape(site, max_plate_nesting + 1)
        sites.append(site)
    return sites


def _subsampled(frame) -> bool:
    return frame.full_size is not None and frame.full_size != frame.size


def _unit_frames(sites):
    """Vectorized plates every site lives in (the particle plate excluded)."""
    common = None
    for site in sites:
        frames = {f for f in site["cond_indep_stack"] if f.vectorized and f.name != PARTICLE_PLATE}
        common = frames if common is None else common & frames
    return tuple(sorted(common or (), key=lambda f: f.dim))


def _sum_sites(sites, rank, keep, unit_scale, num_particles, like):
    """Sum each site's log density over every dimension but the particle and unit ones.

    The site's scale divided by the unit plates' subsampling scale multiplies the log density
    (inner scales); the unit scale itself is left to the objective.
    """
    total = None
    for site in sites:
        log_prob = site["log_prob"]
        log_prob = log_prob.reshape((1,) * (rank - log_prob.dim()) + log_prob.shape)
        drop = [d for d in range(-rank, 0) if d not in keep and log_prob.shape[d] != 1]
        if drop:
            log_prob = log_prob.sum(drop, keepdim=True)
        scale = site["scale"]
        inner = scale / unit_scale if unit_scale != 1.0 else scale
        if not (isinstance(inner, (int, float)) and inner == 1.0):
            log_prob = log_prob * inner
        total = log_prob if total is None else total + log_prob
    if total is None:
        return like.new_zeros((num_particles,) + (1,) * (rank - 1))
    return total.expand((num_particles,) + total.shape[1:])
