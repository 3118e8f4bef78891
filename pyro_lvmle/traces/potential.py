"""The batched potential energy of a Pyro model over its unconstrained latent space.

:class:`Potential` turns ``model(*args, **kwargs)`` into
:math:`U(q) = -\\log p(x, T(q)) - \\log |\\det J_T(q)|` for ``C`` chains at once: the chains
are an outermost plate, the latent sites are conditioned on their transformed values, and
one run of the model gives every chain's energy (and, by one backward pass, every chain's
gradient). Positions are flat ``(C, D)`` tensors; :meth:`Potential.unpack` maps them back to
constrained site values.

Discrete latent sites marked for parallel enumeration (``infer={"enumerate": "parallel"}``,
e.g. by :func:`~pyro.infer.enum.config_enumerate`) are summed out exactly, as Pyro's HMC does:
the energy is that of the continuous latents with the discrete ones marginalized.

A model written for one sample (``u[herd]``, ``z @ W``, ``x[:, 0]``) breaks under the chain
plate; for it the potential evaluates each chain in the model's own shapes under
:func:`torch.func.vmap` instead (:mod:`pyro_lvmle.traces.vmap`), choosing automatically.
:meth:`Potential.tempered` gives the tempered target :math:`\\log p(z) + \\beta \\log p(x \\mid z)`
with one :math:`\\beta` per chain.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import NamedTuple

import pyro
import pyro.poutine as poutine
import torch
from pyro.ops.contract import contract_to_tensor
from torch.distributions import biject_to

from .particles import _is_subsample, guess_max_plate_nesting
from .vmap import _prior_draws, _vmap_energy, choose_vectorization

__all__ = ["CHAIN_PLATE", "LatentSite", "Potential"]

#: Name of the plate that vectorizes chains.
CHAIN_PLATE = "num_chains_vectorized"


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
    """

    name: str
    shape: torch.Size
    unconstrained_shape: torch.Size
    offset: int
    numel: int
    transform: torch.distributions.Transform
    batched_shape: tuple
    subsampled: tuple = ()


class Potential:
    r"""Potential energy :math:`U(q) = -\log p(x, T(q)) - \log|\det J_T(q)|`, batched over chains.

    :param model: a Pyro model whose latent sites are continuous or enumerable.
    :param tuple args: the model's arguments (data).
    :param dict kwargs: the model's keyword arguments.
    :param int max_plate_nesting: the model's deepest plate nesting; guessed if ``None``.
    :param str vectorization: how chains are evaluated together: ``"plate"`` (an outermost
        plate: one model run for all chains, for models written for batches), ``"vmap"``
        (:func:`torch.func.vmap` over chains: the model sees one chain in the shapes it was
        written for, so ``u[herd]``, ``z @ W``, ``x[:, 0]`` work), or ``None`` to choose
        automatically (:func:`~pyro_lvmle.traces.vmap.choose_vectorization`: the plate path
        where it gives the energies of the model run one chain at a time, else vmap; it costs
        about three model runs, so a caller building many potentials of one model passes the
        first one's :attr:`vectorization` on). Enumerated models need the plate path.
    :raises ValueError: if the model has no continuous latent site, or a discrete one not
        marked for parallel enumeration, or if neither vectorization evaluates it right.

    A model with a subsampled :class:`~pyro.plate` draws new indices on every run: the
    potential keeps those of its first run (:attr:`subsample_indices`, by plate name), so
    that every evaluation sees the same mini-batch. Latent sites in such a plate hold one
    value per datum of the batch (see :attr:`LatentSite.subsampled`).

    Example::

        >>> import torch, pyro_lvmle as lv
        >>> from pyro_lvmle.traces import Potential
        >>> model = lv.models.LinearGaussian(dim=2)
        >>> data = model.simulate(5)
        >>> potential = Potential(model, (data,))
        >>> potential.dim, potential(torch.zeros(3, potential.dim)).shape
        (10, torch.Size([3]))
    """

    def __init__(self, model, args=(), kwargs=None, *, max_plate_nesting: int | None = None,
                 vectorization: str | None = None):
        self.model = model
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        if max_plate_nesting is None:
            max_plate_nesting = guess_max_plate_nesting(model, lambda *a, **k: None,
                                                        self.args, self.kwargs)
        self.max_plate_nesting = max_plate_nesting
        with poutine.block():
            trace = poutine.trace(model).get_trace(*self.args, **self.kwargs)
        #: the indices of each plate's mini-batch, fixed for every evaluation
        self.subsample_indices = {name: site["value"] for name, site in trace.nodes.items()
                                  if site["type"] == "sample" and _is_subsample(site)}
        if self.subsample_indices:
            self.model = poutine.condition(model, data=self.subsample_indices)
        sites, offset, enumerated = [], 0, []
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or site["is_observed"] or _is_subsample(site) \
                    or site["infer"].get("_deterministic"):
                continue
            if site["fn"].support.is_discrete:
                if site["infer"].get("enumerate") == "parallel":
                    enumerated.append(name)
                    continue
                raise ValueError(
                    f"latent site {name!r} is discrete; gradient-based samplers need continuous "
                    "latents: mark it for enumeration (pyro.infer.config_enumerate, "
                    "infer={'enumerate': 'parallel'}) to sum it out"
                )
            transform = biject_to(site["fn"].support)
            unconstrained = transform.inv(site["value"])
            # the chain dimension goes left of all max_plate_nesting plate dimensions
            pad = max_plate_nesting - len(site["fn"].batch_shape)
            batched = (-1,) + (1,) * pad + tuple(unconstrained.shape)
            subsampled = tuple(
                (f.name, 1 + max_plate_nesting + f.dim, f.full_size)
                for f in site["cond_indep_stack"]
                if f.vectorized and f.name in self.subsample_indices and f.full_size is not None
            )
            sites.append(LatentSite(name, site["value"].shape, unconstrained.shape, offset,
                                    unconstrained.numel(),
                                    transform, batched, subsampled))
            offset += unconstrained.numel()
        if not sites:
            raise ValueError("the model has no continuous latent sites: there is nothing to "
                             "sample" + (" (its discrete ones are summed out)" if enumerated
                                         else ""))
        self.sites = tuple(sites)
        self.enumerated = tuple(enumerated)
        self.dim = offset
        #: the observed and ``pyro.factor`` sites: what :meth:`tempered` scales by default
        self.likelihood_sites = tuple(
            name for name, site in trace.nodes.items()
            if site["type"] == "sample" and site["is_observed"] and not _is_subsample(site)
            and not site["infer"].get("_deterministic"))
        #: ``None``, or each chain's power on :attr:`tempered_sites` (see :meth:`tempered`)
        self.beta = None
        self.tempered_sites = frozenset(self.likelihood_sites)
        #: ``"plate"`` or ``"vmap"``: how the chains are evaluated together
        self.vectorization = choose_vectorization(self, vectorization)

    @property
    def batched_plates(self) -> frozenset:
        """Names of the plates whose latent sites see a strict subsample of the data."""
        return frozenset(
            plate for site in self.sites for plate, _, full_size in site.subsampled
            if self.subsample_indices[plate].numel() != full_size
        )

    def sample_prior(self, num_chains: int) -> torch.Tensor:
        """Positions ``(num_chains, D)`` drawn from the model's prior (one run of the model for
        all chains): a starting point for chains that is in the support of every site.

        :param int num_chains: how many draws.
        """
        if self.vectorization == "vmap":
            return _prior_draws(self, num_chains)
        chains = pyro.plate(CHAIN_PLATE, num_chains, dim=-(self.max_plate_nesting + 1))
        with poutine.block():
            trace = poutine.trace(chains(self.model)).get_trace(*self.args, **self.kwargs)
        values = {}
        for site in self.sites:
            value = trace.nodes[site.name]["value"]
            values[site.name] = value.expand(
                (num_chains,) + value.shape[1:]) if value.shape[:1] == (1,) else value
        return self.pack(values).detach()

    def unpack(self, position: torch.Tensor) -> dict[str, torch.Tensor]:
        """Constrained site values of flat positions ``(C, D)``: ``(C, 1, ..., *site shape)``,
        with size-1 dimensions for the plates the site is not in."""
        return {name: value for name, (value, _) in self._unpack(position).items()}

    def _unpack(self, position):
        out = {}
        for site in self.sites:
            flat = position[..., site.offset:site.offset + site.numel]
            unconstrained = flat.reshape(site.batched_shape)
            value = site.transform(unconstrained)
            out[site.name] = (value, site.transform.log_abs_det_jacobian(unconstrained, value))
        return out

    def pack(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """Flat unconstrained positions ``(C, D)`` of constrained values, as :meth:`unpack`
        gives them (or ``(C, *site shape)``)."""
        parts = []
        for site in self.sites:
            value = values[site.name]
            unconstrained = site.transform.inv(value)
            parts.append(unconstrained.reshape(value.shape[0], -1))
        return torch.cat(parts, -1)

    def log_joint(self, position: torch.Tensor) -> torch.Tensor:
        """:math:`\\log p(x, T(q))` per chain (no Jacobian), differentiable in the model's
        parameters: the quantity Fisher's identity differentiates.

        The model's ``pyro.param`` sites are visible to outer handlers (``SVI`` collects the
        parameters to update this way); its sample sites are not. On the vmap path the
        model's distributions are not validated (vmap cannot run their checks).

        :param torch.Tensor position: ``(C, D)``.
        """
        return self._energy(position, jacobian=False).neg()

    def __call__(self, position: torch.Tensor) -> torch.Tensor:
        """:math:`U(q)` per chain, shape ``(C,)``, for positions ``(C, D)``.

        Under a subsampled plate the energy leaves out the plate's ``N/B`` factor, so that
        each datum's latent is sampled from its own posterior (:meth:`log_joint` keeps the
        factor: its gradient is an unbiased estimate of the full-data one).

        Distribution arguments are not validated here: samplers evaluate trial points far
        out (a leapfrog step too long), where a model may produce ``nan``; such a point gets a
        non-finite energy, which the samplers treat as a divergence and reject, instead of
        raising. The model was validated on the potential's first run."""
        with pyro.validation_enabled(False):
            return self._energy(position, jacobian=True)

    def value_and_grad(self, position: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:math:`U(q)` and :math:`\\nabla_q U(q)` per chain, by one model run and one
        backward pass; both detached."""
        with torch.enable_grad():
            position = position.detach().requires_grad_(True)
            energy = self(position)
            (grad,) = torch.autograd.grad(energy.sum(), position)
        return energy.detach(), grad.detach()

    def tempered(self, beta, sites=None) -> Potential:
        r"""The tempered target :math:`\log p(z) + \beta_c \log p(x \mid z)`, one
        :math:`\beta_c` per chain: a view of this potential whose energies and
        :meth:`log_joint` scale the log densities of the model's observed sites by ``beta``.

        .. math::

            U_\beta(q)_c = -\sum_{s \notin O} \log p_s\big(T(q_c)\big)
                - \beta_c \sum_{s \in O} \log p_s\big(x_s \mid T(q_c)\big)
                - \log|\det J_T(q_c)|,

        :math:`O` the tempered sites: by default every observed site, ``pyro.factor`` sites
        included (a factor is most often a likelihood written by hand; pass ``sites`` to
        leave one out). ``beta = 0`` gives the prior, ``beta = 1`` the posterior; with enumerated
        discrete latents the scaling comes before they are summed out. A chain with
        :math:`\beta_c = 0` ignores its tempered sites altogether, even where their density
        is 0.

        :param beta: a float, or a tensor ``(C,)`` with one non-negative value per chain (the
            positions the view is called on must then have ``C`` rows).
        :param sites: names of the sample sites to scale; :attr:`likelihood_sites` if ``None``.

        Example::

            >>> import torch, pyro_lvmle as lv
            >>> from pyro_lvmle.traces import Potential
            >>> model = lv.models.LinearGaussian(dim=2)
            >>> potential = Potential(model, (model.simulate(4),))
            >>> prior = potential.tempered(0.0)  # beta = 0 for every chain
            >>> target = potential.tempered(torch.tensor([0.0, 0.5, 1.0]))
            >>> q = torch.zeros(3, potential.dim)
            >>> bool(target(q)[0] == prior(q)[0]), bool(target(q)[2] == potential(q)[2])
            (True, True)
        """
        beta = torch.as_tensor(beta)
        if beta.dim() > 1 or not torch.isfinite(beta).all() or (beta < 0).any():
            raise ValueError("Potential.tempered: beta must be a finite non-negative float or "
                             f"a tensor (num_chains,), got {beta!r}")
        sites = self.likelihood_sites if sites is None else tuple(sites)
        known = set(self.likelihood_sites) | {s.name for s in self.sites} | set(self.enumerated)
        if not set(sites) <= known:
            raise ValueError(f"Potential.tempered: no sample sites {sorted(set(sites) - known)} "
                             f"in the model; its sites are {sorted(known)}")
        view = copy.copy(self)
        view.beta, view.tempered_sites = beta, frozenset(sites)
        return view

    def _energy(self, position, jacobian):
        if position.dim() != 2 or position.shape[-1] != self.dim:
            raise ValueError(
                f"Potential: positions must have shape (num_chains, {self.dim}), got "
                f"{tuple(position.shape)}"
            )
        if self.vectorization == "vmap":
            return _vmap_energy(self, position, jacobian, self._chain_beta(position))
        return self._plate_energy(position, jacobian)

    def _chain_beta(self, position):
        """:attr:`beta` as ``(C,)`` for positions ``(C, D)``, or ``None``."""
        if self.beta is None:
            return None
        beta = self.beta.to(position).expand(position.shape[:1]) if self.beta.dim() == 0 \
            else self.beta.to(position)
        if beta.shape != position.shape[:1]:
            raise ValueError(f"Potential: {beta.shape[0]} tempering betas for "
                             f"{position.shape[0]} chains; pass one beta per chain")
        return beta

    def _rescale(self, trace, jacobian, beta):
        """Drop subsampled plates' ``N/B`` factor from the sampler's energy (each datum's chain
        targets its own posterior) and scale the tempered sites by ``beta``, broadcastable to
        their log densities (``(C, 1, ..., 1)`` on the plate path, one chain's under vmap)."""
        for name, site in trace.nodes.items():
            if site["type"] != "sample":
                continue
            if jacobian:
                site["scale"] = site["scale"] / _subsample_factor(site)
            if beta is not None and name in self.tempered_sites:
                site["scale"] = site["scale"] * beta
                # beta = 0 ignores the site even where its density is 0 (0 * -inf = nan)
                site["mask"] = beta > 0 if site["mask"] is None else site["mask"] & (beta > 0)

    def _plate_energy(self, position, jacobian):
        num_chains = position.shape[0]
        unpacked = self._unpack(position)
        data = {name: value for name, (value, _) in unpacked.items()}
        chains = pyro.plate(CHAIN_PLATE, num_chains, dim=-(self.max_plate_nesting + 1))
        conditioned = poutine.condition(chains(self.model), data=data)
        if self.enumerated:
            conditioned = poutine.enum(conditioned,
                                       first_available_dim=-(self.max_plate_nesting + 2))
        # the sampler's energies hide everything; the gradient's log joint shows its params
        with poutine.block(expose_types=[] if jacobian else ["param"]):
            trace = poutine.trace(conditioned).get_trace(*self.args, **self.kwargs)
        beta = self._chain_beta(position)
        self._rescale(trace, jacobian, None if beta is None
                      else beta.reshape((-1,) + (1,) * self.max_plate_nesting))
        if self.enumerated:
            log_joint = _contract_enumerated(trace, num_chains)
        else:
            rank = self.max_plate_nesting + 1
            log_joint = position.new_zeros(num_chains)
            for site in trace.nodes.values():
                if site["type"] != "sample" or _is_subsample(site):
                    continue
                log_prob = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
                log_prob = pyro.distributions.util.scale_and_mask(log_prob, site["scale"],
                                                                  site["mask"])
                log_joint = log_joint + _sum_to_chains(log_prob, rank, num_chains)
        if jacobian:
            for _, log_det in unpacked.values():
                log_det = log_det.reshape(num_chains, -1).sum(-1) if log_det.dim() > 1 \
                    else log_det.expand(num_chains)
                log_joint = log_joint + log_det
        return -log_joint


def _subsample_factor(site) -> float:
    """The ``N/B`` factor subsampled plates put into a site's scale."""
    factor = 1.0
    for frame in site["cond_indep_stack"]:
        if frame.full_size is not None and frame.size != frame.full_size:
            factor *= frame.full_size / frame.size
    return factor


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
    chain_symbol = trace.plate_to_symbol[CHAIN_PLATE]
    total = contract_to_tensor(factors, enum_dims, target_ordinal=frozenset({chain_symbol}))
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

