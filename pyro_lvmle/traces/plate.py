"""The plate path of :class:`~pyro_lvmle.traces.Potential`: every chain in one run of the
model, the chains an outermost :class:`~pyro.plate` left of the model's own plates.

One run conditions the model on every chain's latent values and gives every chain's log
density; enumerated discrete sites are summed out of it by tensor variable elimination. A
model written for one sample (``u[herd]``) breaks here; :mod:`pyro_lvmle.traces.vmap` is the
other path.
"""

from __future__ import annotations

from collections import OrderedDict

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions.util import scale_and_mask
from pyro.ops.contract import contract_to_tensor
from pyro.poutine.condition_messenger import ConditionMessenger

from .layout import check_positions
from .particles import _is_subsample

__all__ = ["CHAIN_PLATE", "data_share", "log_joint_at_data", "plate_energy", "site_log_probs"]

#: Name of the plate that vectorizes chains.
CHAIN_PLATE = "num_chains_vectorized"


class _AfterObserved(ConditionMessenger):
    """Condition each named site on its observed value followed by the given chains' values
    (``(1 + C, ...)`` along the chain plate): the observed data becomes chain 0."""

    def _pyro_sample(self, msg):
        if msg["name"] in self.data:
            chains = self.data[msg["name"]]
            observed = msg["value"].broadcast_to(chains.shape[1:]).unsqueeze(0)
            msg["value"] = torch.cat([observed.to(chains.dtype), chains])
            msg["is_observed"] = True


def _trace(potential, position, *, jacobian, beta, enumerate, at_data=False):
    """The model's trace at positions ``(C, D)`` under the chain plate, rescaled as the
    potential's energy wants it (:meth:`~pyro_lvmle.traces.Potential._rescale`), and the
    unpacked values with their log Jacobians. With ``at_data`` the plate has ``1 + C``
    chains, chain 0 at the observed values of the target sites (all of them observed)."""
    num_chains = position.shape[0] + int(at_data)
    unpacked = potential._unpack(position)
    data = {name: value for name, (value, _) in unpacked.items()}
    chains = pyro.plate(CHAIN_PLATE, num_chains, dim=-(potential.max_plate_nesting + 1))
    condition = _AfterObserved(data) if at_data else poutine.condition(data=data)
    conditioned = condition(chains(potential.model))
    if enumerate:
        conditioned = poutine.enum(conditioned,
                                   first_available_dim=-(potential.max_plate_nesting + 2))
    # the sampler's energies hide everything; the gradient's log joint shows its params
    with poutine.block(expose_types=[] if jacobian else ["param"]):
        trace = poutine.trace(conditioned).get_trace(*potential.args, **potential.kwargs)
    potential._rescale(trace, jacobian, None if beta is None
                       else beta.reshape((-1,) + (1,) * potential.max_plate_nesting))
    return trace, unpacked


def _log_probs(trace):
    """Each sample site's scaled and masked log density, not summed."""
    return {name: scale_and_mask(site["fn"].log_prob(site["value"], *site["args"],
                                                     **site["kwargs"]),
                                 site["scale"], site["mask"])
            for name, site in trace.nodes.items()
            if site["type"] == "sample" and not _is_subsample(site)}


def site_log_probs(potential, position: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each sample site's log density at positions ``(C, D)``, scaled and masked as in the
    potential's energy (no ``N/B`` factor; tempered sites times the chain's beta on a
    :meth:`~pyro_lvmle.traces.Potential.tempered` view), not summed; no enumeration, no
    validation.

    :param potential: the :class:`~pyro_lvmle.traces.Potential`.
    :param torch.Tensor position: ``(C, D)``.
    """
    with pyro.validation_enabled(False):
        trace, _ = _trace(potential, position, jacobian=True,
                          beta=potential._chain_beta(position), enumerate=False)
        return _log_probs(trace)


def plate_energy(potential, position: torch.Tensor, jacobian: bool,
                 beta: torch.Tensor | None = None, at_data: bool = False) -> torch.Tensor:
    r"""Every chain's :math:`U(q)` (with ``jacobian``; else :math:`-\log p(x, T(q))` with the
    ``N/B`` factors kept and the model's params visible) by one run of the model.

    :param potential: the :class:`~pyro_lvmle.traces.Potential`.
    :param torch.Tensor position: ``(C, D)``.
    :param bool jacobian: the sampler's energy, or the log joint of Fisher's identity.
    :param torch.Tensor beta: ``(C,)`` tempering, or ``None``.
    :param bool at_data: prepend a chain at the observed values of the target sites (an
        unconditioned potential whose sites are all observed, no ``jacobian``, no ``beta``):
        ``1 + C`` energies from the same run.
    """
    num_chains = position.shape[0] + int(at_data)
    trace, unpacked = _trace(potential, position, jacobian=jacobian, beta=beta,
                             enumerate=bool(potential.enumerated), at_data=at_data)
    if potential.enumerated:
        log_joint = _contract_enumerated(trace, num_chains)
    else:
        rank = potential.max_plate_nesting + 1
        log_joint = position.new_zeros(num_chains)
        for log_prob in _log_probs(trace).values():
            log_joint = log_joint + _sum_to_chains(log_prob, rank, num_chains)
    if jacobian:
        for _, log_det in unpacked.values():
            log_det = log_det.reshape(num_chains, -1).sum(-1) if log_det.dim() > 1 \
                else log_det.expand(num_chains)
            log_joint = log_joint + log_det
    return -log_joint


def subsample_factor(site) -> float:
    """The ``N/B`` factor subsampled plates put into a site's scale."""
    factor = 1.0
    for frame in site["cond_indep_stack"]:
        if frame.full_size is not None and frame.size != frame.full_size:
            factor *= frame.full_size / frame.size
    return factor


def data_share(model, args=(), kwargs=None) -> float:
    """The share :math:`B / N` of the data that a model run sees through its subsampled
    plate (a data-parallel rank's shard: ``pyro.plate("data", N, subsample=idx)``), found by
    one run of the model whose sample sites are hidden and which leaves torch's random number
    generators as they were.

    :param model: the Pyro model.
    :param tuple args: its arguments.
    :param dict kwargs: its keyword arguments.
    :returns: one if no plate is strictly subsampled.
    :raises ValueError: if two plates are subsampled by different shares.

    Example::

        >>> import pyro
        >>> def model(idx):
        ...     with pyro.plate("data", 10, subsample=idx):
        ...         pyro.sample("x", pyro.distributions.Normal(0., 1.), obs=idx.double())
        >>> data_share(model, (torch.arange(4),))
        0.4
    """
    devices = list(range(torch.cuda.device_count())) \
        if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices), poutine.block():
        trace = poutine.trace(model).get_trace(*args, **(kwargs or {}))
    shares = {name: site["value"].numel() / site["fn"].size
              for name, site in trace.nodes.items()
              if site["type"] == "sample" and _is_subsample(site) and site["fn"].size}
    partial = {share for share in shares.values() if share < 1}
    if len(partial) > 1:
        raise ValueError(
            "data-parallel: the model subsamples its plates by different shares "
            f"{shares}; subsample one data plate, over the whole data set, with this rank's "
            "global indices (pyro.plate('data', N, subsample=idx))")
    return partial.pop() if partial else 1.0


def _contract_enumerated(trace, num_chains):
    """Sum the enumerated dimensions out of a trace's log densities (a tensor-variable
    elimination over plates, :func:`pyro.ops.contract.contract_to_tensor`), keeping chains."""
    trace.compute_log_prob()
    trace.pack_tensors()
    factors = OrderedDict()
    for site in trace.nodes.values():
        if site["type"] != "sample" or _is_subsample(site):
            continue
        ordinal = frozenset(trace.plate_to_symbol[f.name] for f in site["cond_indep_stack"]
                            if f.vectorized)
        factors.setdefault(ordinal, []).append(site["packed"]["log_prob"])
    enum_dims = set(trace.symbol_to_dim) - set(trace.plate_to_symbol.values())
    # one chain: packing drops the chain plate's size-1 dimension, so nothing is kept
    target = frozenset({trace.plate_to_symbol[CHAIN_PLATE]}) if num_chains > 1 else frozenset()
    total = contract_to_tensor(factors, enum_dims, target_ordinal=target)
    return total.reshape(-1).expand(num_chains)


def _sum_to_chains(log_prob, rank, num_chains):
    """Sum a site's log density over every dimension but the chain plate's."""
    if not torch.is_tensor(log_prob) or log_prob.dim() == 0:
        return torch.as_tensor(log_prob).expand(num_chains)
    log_prob = log_prob.reshape((1,) * max(rank - log_prob.dim(), 0) + log_prob.shape)
    chain_dim = log_prob.dim() - rank
    others = tuple(d for d in range(log_prob.dim()) if d != chain_dim)
    total = log_prob.sum(others) if others else log_prob  # sum(()) would sum everything
    return total.expand(num_chains)


def log_joint_at_data(potential, position: torch.Tensor) -> torch.Tensor:
    r""":math:`\log p(x, T(q))` with the model at its observed data prepended, ``(1 + C,)``:
    equal to ``potential.log_joint(torch.cat([potential.initial_position(1), position]))``,
    but from one run of the model on the plate path (the data read inside the run; two runs
    on the vmap path, for a tempered view, or with latent target sites).

    :param potential: a :class:`~pyro_lvmle.traces.Potential` with ``uncondition=True``.
    :param torch.Tensor position: ``(C, D)``.
    :raises ValueError: for a potential built without ``uncondition=True``.
    """
    if not potential.uncondition:
        raise ValueError("Potential.log_joint: at_data=True needs a potential built with "
                         "uncondition=True (its target sites are the observed ones)")
    check_positions(position, potential.dim)
    if potential.vectorization == "vmap" or potential.beta is not None or not all(
            site.was_observed for site in potential.sites):
        start = potential.initial_position(1).to(position)
        return potential.log_joint(torch.cat([start, position]))
    return plate_energy(potential, position, False, None, at_data=True).neg()
