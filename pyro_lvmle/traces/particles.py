r"""Trace once, estimate many: the log-weight components of every particle objective.

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

Scales and scores. A scale multiplies a site's log density wherever it enters a *log weight*
(``log_p``, ``log_q`` and their direct parts), but never the *score function*
``log_q_score``: that is the log density of the distribution the particles are drawn from,
unscaled and unmasked, as Pyro's ``ScoreParts.scale_and_mask`` keeps it. Under
``poutine.scale(scale=s)`` the objectives are then those of the scaled log weight
:math:`f = \sum_{\text{sites}} s_i \log p_i - \sum_{\text{sites}} s_i \log q_i`, with
particles from the unscaled guide: the ELBO :math:`\mathbb{E}_q[f]` is what Pyro's
``Trace_ELBO`` computes, and the multi-sample bounds are formed from :math:`f` the same way,
e.g. :math:`\mathbb{E}_{z_{1:K} \sim q}[\log \frac1K \sum_k e^{f(z_k)}]`.

Shared parameters. A parameter that both the model and the guide read (every model
parameter under :class:`~pyro_lvmle.traces.PriorGuide`) is listed in
:attr:`ParticleTerms.shared_params`; with ``direct_log_q`` the model is then also replayed
against detached values (:attr:`ParticleTerms.log_p_direct`) so that gradient estimators that
treat direct and path derivatives differently (DReG) can split the model's side too.
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

from .improper import FlatLatents, data_device
from .params import _cuda_devices

__all__ = [
    "PARTICLE_PLATE",
    "ParticleTerms",
    "check_programs",
    "guess_max_plate_nesting",
    "particle_terms",
]

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
    :ivar torch.Tensor log_q_score: the score function: the log density of the guide sites
        whose values carry no gradient (the non-reparameterizable ones, or every site with
        ``detach_values``), full graph, **unscaled and unmasked** (a scale belongs to the
        function the score multiplies, not to the sampling density); ``None`` when there is
        no such site.
    :ivar torch.Tensor log_q_nonreparam_direct: the non-reparameterizable sites' part of
        ``log_q`` (scaled, as in the log weight), differentiable only directly in the guide's
        parameters; ``None`` unless ``log_q_direct`` was asked for.
    :ivar torch.Tensor log_p_direct: ``log_p`` differentiable only directly in the
        parameters (the sample values held fixed); computed with ``log_q_direct`` when a
        parameter is shared by model and guide, ``None`` otherwise (then every parameter's
        gradient of ``log_p`` is either all direct, a model parameter, or all path, a guide
        parameter).
    :ivar guide_scale: the scale (a number, or a tensor broadcasting with the units) that
        multiplies every reparameterized guide site's log density inside the log weight;
        ``None`` when the sites' scales differ.
    :ivar float unit_scale: the subsampling scale of the unit plates, ``N/B``, applied
        outside the log-mean-exp.
    :ivar tuple unit_plates: names of the plates whose elements are the units.
    :ivar tuple nonreparam_sites: names of the non-reparameterizable guide sites.
    :ivar tuple subsampled_sites: sites scaled by a subsampled plate that is not a unit plate.
    :ivar dict guide_params: the unconstrained leaf tensors of the guide's parameters, by name.
    :ivar tuple shared_params: names of the parameters both the model and the guide read.
    """

    log_p: torch.Tensor
    log_q: torch.Tensor
    log_q_direct: torch.Tensor | None
    log_q_score: torch.Tensor | None
    log_q_nonreparam_direct: torch.Tensor | None
    log_p_direct: torch.Tensor | None
    guide_scale: float | torch.Tensor | None
    unit_scale: float
    unit_plates: tuple[str, ...]
    nonreparam_sites: tuple[str, ...]
    subsampled_sites: tuple[str, ...]
    guide_params: dict[str, torch.Tensor]
    shared_params: tuple[str, ...]

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

    Torch's random number generators (CPU and every initialized CUDA device) are left as
    they were, so that building an objective without ``max_plate_nesting`` does not shift
    the random numbers of the run (a resumed run reproduces the uninterrupted one).

    :param model: a Pyro model.
    :param guide: a Pyro guide.
    :param tuple args: positional arguments of both.
    :param dict kwargs: keyword arguments of both.
    """
    return _plate_nesting(*_unvectorized_traces(model, guide, args, kwargs))


def check_programs(model, guide, args, kwargs, max_plate_nesting: float = math.inf) -> int:
    """Check a model/guide pair as Pyro's ``Trace_ELBO`` does, on one unvectorized run (the
    particle plate can hide a batch dimension of the same size), and return its deepest plate
    nesting. Torch's random number generators are left as they were.

    :param model: a Pyro model.
    :param guide: a Pyro guide.
    :param tuple args: positional arguments of both.
    :param dict kwargs: keyword arguments of both.
    :param max_plate_nesting: the user's, or infinity (as ``Trace_ELBO``'s default).
    :raises ValueError: where ``Trace_ELBO`` raises (and its warnings are issued), and for
        NaN or ``+inf`` log densities, naming the site.
    """
    guide_trace, model_trace = _unvectorized_traces(model, guide, args, kwargs)
    check_model_guide_match(model_trace, guide_trace, max_plate_nesting)
    sites = []
    for trace in (model_trace, guide_trace):
        sites += _sample_sites(prune_subsample_sites(trace), max_plate_nesting)
    _check_log_densities(sites)
    return _plate_nesting(guide_trace, model_trace)


def _unvectorized_traces(model, guide, args, kwargs):
    # a flat prior's latent gets a value where no guide draws it (the MCMC losses' empty
    # guide), so that the plates are found and the sampler's own check names the site
    with torch.random.fork_rng(devices=_cuda_devices()), poutine.block(), \
            FlatLatents(data_device(args, kwargs)):
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            *args, **kwargs
        )
    return guide_trace, model_trace


def _plate_nesting(*traces) -> int:
    dims = [
        frame.dim
        for trace in traces
        for site in trace.nodes.values()
        if site["type"] == "sample"
        for frame in site["cond_indep_stack"]
        if frame.vectorized
    ]
    return -min(dims) if dims else 0


def _check_log_densities(sites):
    """Refuse NaN and ``+inf`` log densities (Pyro warns for them), naming the sites."""
    flags: dict = {}  # one device synchronization per device
    for site in sites:
        value = site["log_prob"]
        if torch.is_tensor(value):
            bad = torch.isnan(value) | (value == math.inf)
            flags.setdefault(value.device, []).append(bad.any())
    if not any(bool(torch.stack(group).any()) for group in flags.values()):
        return
    bad = [s["name"] for s in sites if torch.is_tensor(s["log_prob"])
           and bool((torch.isnan(s["log_prob"]) | (s["log_prob"] == math.inf)).any())]
    raise ValueError(
        f"sites {bad} have NaN or +inf log densities; check their distributions' parameters "
        "and the values they are evaluated at"
    )


def particle_terms(model, guide, args, kwargs, *, num_particles: int, max_plate_nesting: int,
                   detach_values: bool = False, direct_log_q: bool = False,
                   split_units: bool = True) -> ParticleTerms:
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
        guide a second time against its own sample values, detached (and
        :attr:`ParticleTerms.log_p_direct` likewise when a parameter is shared).
    :param bool split_units: one term per element of the plates every site lives in; with
        ``False`` the whole batch is one unit (where the units are not independent: see
        :func:`~pyro_lvmle.traces.units.independent_units`).
    :raises ValueError: where Pyro's ``Trace_ELBO`` raises on the pair (a plate or shape
        mismatch, a log density that cannot be computed, named by site), for a site marked
        for enumeration, and for NaN log densities (with validation on).
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
    _refuse_enumeration(guide_trace, "guide")
    model_trace = poutine.trace(
        poutine.replay(particles(model), trace=guide_trace)
    ).get_trace(*args, **kwargs)
    _refuse_enumeration(model_trace, "model", guide_trace)
    if pyro.infer.util.is_validation_enabled():
        # before the subsample sites are pruned, as Pyro does: they carry the plate check
        check_model_guide_match(model_trace, guide_trace, max_plate_nesting + 1)
    guide_params = {name: site["value"].unconstrained()
                    for name, site in guide_trace.nodes.items() if site["type"] == "param"}
    shared = tuple(name for name, site in model_trace.nodes.items()
                   if site["type"] == "param" and name in guide_params)
    model_trace = prune_subsample_sites(model_trace)
    guide_trace_pruned = prune_subsample_sites(guide_trace)
    model_sites = _sample_sites(model_trace, max_plate_nesting + 1)
    guide_sites = _sample_sites(guide_trace_pruned, max_plate_nesting + 1)
    units = _unit_frames(model_sites + guide_sites) if split_units else ()
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

    def total(sites, scaled=True):
        return _sum_sites(sites, rank, keep, unit_scale, num_particles, like, scaled)

    log_p = total(model_sites)
    log_q = total(guide_sites)
    nonreparam = [s for s in guide_sites if not s["fn"].has_rsample]
    reparam = [s for s in guide_sites if s["fn"].has_rsample]
    score_sites = guide_sites if detach_values else nonreparam
    log_q_score = total(score_sites, scaled=False) if score_sites else None
    if pyro.infer.util.is_validation_enabled():
        _check_log_densities(model_sites + guide_sites)

    log_q_direct = log_q_nonreparam_direct = log_p_direct = None
    if direct_log_q:
        replayed = _detached_copy(guide_trace)
        with poutine.block():
            direct_trace = poutine.trace(
                poutine.replay(particles(guide), trace=replayed)
            ).get_trace(*args, **kwargs)
        direct_sites = _sample_sites(prune_subsample_sites(direct_trace), rank)
        log_q_direct = total(direct_sites)
        names = {s["name"] for s in nonreparam}
        direct_nonreparam = [s for s in direct_sites if s["name"] in names]
        log_q_nonreparam_direct = total(direct_nonreparam) if nonreparam else None
        if shared:
            with poutine.block():
                direct_model = poutine.trace(
                    poutine.replay(particles(model), trace=replayed)
                ).get_trace(*args, **kwargs)
            log_p_direct = total(_sample_sites(prune_subsample_sites(direct_model), rank))

    return ParticleTerms(
        log_p=log_p, log_q=log_q, log_q_direct=log_q_direct, log_q_score=log_q_score,
        log_q_nonreparam_direct=log_q_nonreparam_direct, log_p_direct=log_p_direct,
        guide_scale=_common_scale(reparam, rank, keep, unit_scale),
        unit_scale=unit_scale, unit_plates=tuple(f.name for f in units),
        nonreparam_sites=tuple(s["name"] for s in nonreparam),
        subsampled_sites=subsampled, guide_params=guide_params, shared_params=shared,
    )


def _detached_copy(trace):
    """The trace with every latent sample value detached, to replay programs against."""
    replayed = trace.copy()
    for name, site in replayed.nodes.items():
        if site["type"] == "sample" and not site["is_observed"] and not _is_subsample(site):
            replayed.nodes[name] = {**site, "value": site["value"].detach()}
    return replayed


def _refuse_enumeration(trace, side, guide_trace=None):
    """Particle objectives sample every latent; a site marked for enumeration is refused
    (on the model's side, those the guide does not sample: they would silently be drawn
    from the prior)."""
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or _is_subsample(site) \
                or not site["infer"].get("enumerate"):
            continue
        if guide_trace is not None and name in guide_trace.nodes:
            continue
        where = ("guide" if side == "guide" else
                 "model (and absent from the guide, so it would be drawn from the prior)")
        raise ValueError(
            f"{side} site {name!r} is marked for enumeration "
            f"(infer={{'enumerate': {site['infer']['enumerate']!r}}}) in the {where}; particle "
            "objectives sample every latent site. Use pyro.infer.TraceEnum_ELBO to sum it "
            "out, or sample it in the guide."
        )


def _sample_sites(trace, rank):
    """The sample sites that carry log density, with ``log_prob`` (masked) and
    ``score_log_prob`` (unscaled, unmasked) computed and their shapes checked against
    ``rank`` plate dimensions (with validation on)."""
    sites = []
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site["infer"].get("_deterministic"):
            continue
        try:
            raw = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
        except ValueError as error:  # name the site, as Pyro's Trace.compute_log_prob does
            raise ValueError(
                f"Error while computing log_prob at site '{name}':\n{error}"
            ) from error
        log_prob = scale_and_mask(raw, mask=site["mask"])
        site = dict(site, log_prob=log_prob, score_log_prob=raw, name=name)
        if pyro.infer.util.is_validation_enabled():
            check_site_shape(site, rank)
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


def _inner_scale(site, unit_scale):
    """The site's scale divided by the unit plates' subsampling scale (left to the
    objective)."""
    scale = site["scale"]
    return scale / unit_scale if unit_scale != 1.0 else scale


def _as_rank(tensor, rank):
    return tensor.reshape((1,) * (rank - tensor.dim()) + tensor.shape)


def _common_scale(sites, rank, keep, unit_scale):
    """The inner scale shared by every site, as a number or a tensor broadcasting with the
    units; ``None`` when the sites' scales differ or vary within a unit."""
    scales = [_inner_scale(site, unit_scale) for site in sites]
    if not scales:
        return 1.0
    if all(not torch.is_tensor(s) for s in scales):
        return float(scales[0]) if all(s == scales[0] for s in scales) else None
    tensors = [_as_rank(torch.as_tensor(s, dtype=torch.get_default_dtype()), rank)
               for s in scales]
    first = tensors[0]
    if first.dim() > rank or any(first.shape[d] != 1 for d in range(-first.dim(), 0)
                                 if d not in keep):
        return None
    if any(t.shape != first.shape or not torch.equal(t.to(first), first) for t in tensors):
        return None
    return first


def _sum_sites(sites, rank, keep, unit_scale, num_particles, like, scaled=True):
    """Sum each site's log density over every dimension but the particle and unit ones.

    With ``scaled``, the site's masked log density times its inner scale (the site's scale
    divided by the unit plates' subsampling scale, which is left to the objective); without,
    the unscaled, unmasked log density (the score function).
    """
    total = None
    for site in sites:
        log_prob = site["log_prob"] if scaled else site["score_log_prob"]
        inner = _inner_scale(site, unit_scale) if scaled else 1.0
        if not (isinstance(inner, (int, float)) and inner == 1.0):
            # before summing: a tensor scale (per-datum weights) weights each term, as in
            # Pyro's Trace_ELBO, not each sum over a plate that is not a unit
            log_prob = log_prob * inner
        log_prob = _as_rank(log_prob, rank)
        drop = [d for d in range(-rank, 0) if d not in keep and log_prob.shape[d] != 1]
        if drop:
            log_prob = log_prob.sum(drop, keepdim=True)
        total = log_prob if total is None else total + log_prob
    if total is None:
        return like.new_zeros((num_particles,) + (1,) * (rank - 1))
    return total.expand((num_particles,) + total.shape[1:])
