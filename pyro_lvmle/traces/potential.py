"""The batched potential energy of a Pyro model over its unconstrained latent space.

:class:`Potential` turns ``model(*args, **kwargs)`` into
:math:`U(q) = -\\log p(x, T(q)) - \\log |\\det J_T(q)|` for ``C`` chains at once: the chains
are an outermost plate, the latent sites are conditioned on their transformed values, and
one run of the model gives every chain's energy (and, by one backward pass, every chain's
gradient). Positions are flat ``(C, D)`` tensors; :meth:`Potential.unpack` maps them back to
constrained site values.

Discrete latent sites are summed out where Pyro can enumerate them, as Pyro's HMC and NUTS
do, and sampled otherwise (see :class:`Potential`); with ``uncondition=True`` the model's
observed sites become the target instead of the data (the negative phase of undirected models).

A model written for one sample (``u[herd]``, ``z @ W``, ``x[:, 0]``) breaks under the chain
plate; for it the potential evaluates each chain in the model's own shapes under
:func:`torch.func.vmap` instead (:mod:`pyro_lvmle.traces.vmap`), choosing automatically.
:meth:`Potential.tempered` gives the tempered target :math:`\\log p(z) + \\beta \\log p(x \\mid z)`
with one :math:`\\beta` per chain.
"""

from __future__ import annotations

import copy
from functools import partial

import pyro
import pyro.poutine as poutine
import torch

from .dependence import block_energy, dependencies, discrete_blocks, summed_out
from .discrete import DiscreteBlock, into_support, mark_parallel
from .improper import FlatLatents, data_device, refuse_improper_latents
from .layout import LatentSite, check_positions, is_target_site, lay_out
from .normalization import check_undirected_target
from .particles import _is_subsample, guess_max_plate_nesting
from .plate import CHAIN_PLATE, log_joint_at_data, plate_energy, subsample_factor
from .vmap import _prior_draws, _vmap_energy, choose_vectorization

__all__ = ["CHAIN_PLATE", "LatentSite", "Potential"]

class Potential:
    r"""Potential energy :math:`U(q) = -\log p(x, T(q)) - \log|\det J_T(q)|`, batched over chains.

    Discrete latent sites are summed out where Pyro can enumerate them (the energy is then
    that of the other sites with these marginalized); the others are sampled: their
    coordinates, flagged by :attr:`discrete_mask` and listed by :attr:`discrete_blocks`, hold
    exact integer values (no transform, no Jacobian), and :meth:`value_and_grad` gives them a
    zero gradient. A latent site is summed out when it is marked
    ``infer={"enumerate": "parallel"}``, or unmarked with a support of at most
    :data:`~pyro_lvmle.traces.discrete.MAX_ENUMERATED_SUPPORT` values and every site depending
    on it in all its plates (Pyro's tensor variable elimination needs that); a site marked
    ``"sequential"``, with an unbounded or larger support, or failing the plate condition is
    sampled.

    With ``uncondition=True`` (as :func:`pyro.poutine.uncondition` does) every observed
    site becomes a target site with its observation removed: the energy is
    :math:`-\log \tilde p(x, z)` as a function of the formerly observed :math:`x` too, the
    negative phase of an undirected model. Continuous observed sites (an
    :class:`~pyro.distributions.ImproperUniform` one included) get unconstrained coordinates,
    discrete ones sampled discrete coordinates (never enumerated); ``pyro.factor`` sites stay
    factors, and latent discrete sites are still summed out where they can be.
    :meth:`initial_position` starts chains at the data.

    :param model: a Pyro model.
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
    :param bool uncondition: make the observed sites the target (see above).
    :raises ValueError: if the model has no site to sample, or a discrete one that can be
        neither summed out nor sampled (the message says what to change), or if neither
        vectorization evaluates it right.

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
                 vectorization: str | None = None, uncondition: bool = False):
        self.model = model
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        self.uncondition = uncondition
        if max_plate_nesting is None:
            max_plate_nesting = guess_max_plate_nesting(model, lambda *a, **k: None,
                                                        self.args, self.kwargs)
        self.max_plate_nesting = max_plate_nesting
        with poutine.block(), FlatLatents(data_device(self.args, self.kwargs)):
            trace = poutine.trace(model).get_trace(*self.args, **self.kwargs)
        refuse_improper_latents(trace)
        if uncondition:
            check_undirected_target(trace)
        #: the indices of each plate's mini-batch, fixed for every evaluation
        self.subsample_indices = {name: site["value"] for name, site in trace.nodes.items()
                                  if site["type"] == "sample" and _is_subsample(site)}
        #: the plates the model subsamples (a strict mini-batch), latent sites in them or not
        self.subsampled_plates = frozenset(
            frame.name for site in trace.nodes.values() if site["type"] == "sample"
            for frame in site["cond_indep_stack"]
            if frame.full_size is not None and frame.full_size != frame.size)
        if self.subsample_indices:
            self.model = poutine.condition(model, data=self.subsample_indices)
        # the model whose draws start chains: the target's observed sites drawn too
        self._prior_model = poutine.condition(poutine.uncondition(model),
                                              data=self.subsample_indices) \
            if uncondition else self.model
        candidates = [(name, site) for name, site in trace.nodes.items()
                      if is_target_site(site, uncondition)]
        found = None  # one tracked run, unless every discrete site is marked to be summed out
        if any(site["fn"].support.is_discrete and (site["is_observed"] or
                                                   site["infer"].get("enumerate") != "parallel")
               for _, site in candidates):
            found = dependencies(self.model, self.args, self.kwargs, trace,
                                 [name for name, _ in candidates])
        depends, bounds_free = found if found is not None else (None, {})
        frames = {name: frozenset(f.name for f in site["cond_indep_stack"] if f.vectorized)
                  for name, site in trace.nodes.items()
                  if site["type"] == "sample" and not _is_subsample(site)}
        enumerated, automatic = summed_out(candidates, frames, depends)
        sites, encodings = lay_out(candidates, enumerated, bounds_free, max_plate_nesting,
                                   self.subsample_indices)
        if automatic:  # as if config_enumerate had marked them
            self.model = poutine.infer_config(self.model, partial(mark_parallel,
                                                                  frozenset(automatic)))
        self.sites = tuple(sites)
        self.enumerated = tuple(enumerated)
        self.dim = sum(site.numel for site in sites)
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
        #: the sampled discrete sites, in position order
        self.discrete_blocks, self._block_sites = discrete_blocks(self, trace, encodings,
                                                                  depends, frames)
        #: bool ``(D,)``: the coordinates holding discrete values; ``None`` if there are none
        self.discrete_mask = None
        if self.discrete_blocks:
            mask = torch.zeros(self.dim, dtype=torch.bool, device=trace.nodes[sites[0].name][
                "value"].device)
            for block in self.discrete_blocks:
                mask[block.offset:block.offset + block.numel] = True
            self.discrete_mask = mask

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
        Discrete coordinates hold prior draws too, moved into the support where the prior
        draw has zero density (:func:`~pyro_lvmle.traces.discrete.into_support`); with
        ``uncondition=True`` the observed sites are drawn too.

        :param int num_chains: how many draws.
        :raises ValueError: with ``uncondition=True``, for an observed site whose
            distribution cannot be sampled (an improper one); start at
            :meth:`initial_position` instead.
        """
        try:
            if self.vectorization == "vmap":
                return into_support(self, _prior_draws(self, num_chains))
            return into_support(self, self._draw(self._prior_model, num_chains))
        except NotImplementedError as error:
            raise ValueError(
                "Potential.sample_prior: the observed sites "
                f"{[site.name for site in self.sites if site.was_observed]} cannot all be "
                f"drawn from their distributions ({str(error).splitlines()[0]}); start the "
                "chains at the data with Potential.initial_position(num_chains)"
            ) from error

    def initial_position(self, num_chains: int) -> torch.Tensor:
        """Positions ``(num_chains, D)`` that start chains at the data: every observed site
        at its observed value (the target sites of ``uncondition=True``, as contrastive
        divergence starts its chains), the latent sites at prior draws. Without
        ``uncondition`` this is :meth:`sample_prior`.

        :param int num_chains: how many positions.
        """
        if not self.uncondition:  # as documented: prior draws moved into the support
            return self.sample_prior(num_chains)
        if self.vectorization == "vmap":
            return _prior_draws(self, num_chains, self.model)
        return self._draw(self.model, num_chains)

    def _draw(self, model, num_chains):
        chains = pyro.plate(CHAIN_PLATE, num_chains, dim=-(self.max_plate_nesting + 1))
        with poutine.block():
            trace = poutine.trace(chains(model)).get_trace(*self.args, **self.kwargs)
        return self._position({site.name: trace.nodes[site.name]["value"]
                               for site in self.sites}, num_chains).detach()

    def _position(self, values, num_chains):
        """:meth:`pack` of values broadcast to ``num_chains`` chains."""
        full = {}
        for site in self.sites:
            pad = len(site.batched_shape) - 1 - len(site.unconstrained_shape)
            full[site.name] = values[site.name].broadcast_to(
                (num_chains,) + (1,) * pad + tuple(site.shape))
        return self.pack(full)

    def unpack(self, position: torch.Tensor) -> dict[str, torch.Tensor]:
        """Constrained site values of flat positions ``(C, D)``: ``(C, 1, ..., *site shape)``,
        with size-1 dimensions for the plates the site is not in. Discrete sites get their
        exact values, in the dtype the model gave them (a Categorical's as integers)."""
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
        gives them (or ``(C, *site shape)``); discrete values are stored exactly, as floats."""
        parts = []
        for site in self.sites:
            value = values[site.name]
            unconstrained = site.transform.inv(value)
            parts.append(unconstrained.reshape(value.shape[0], -1))
        dtype = next((p.dtype for p in parts if p.is_floating_point()), torch.get_default_dtype())
        return torch.cat([part.to(dtype) for part in parts], -1)

    def log_joint(self, position: torch.Tensor, *, at_data: bool = False) -> torch.Tensor:
        """:math:`\\log p(x, T(q))` per chain (no Jacobian), differentiable in the model's
        parameters: the quantity Fisher's identity differentiates.

        The model's ``pyro.param`` sites are visible to outer handlers (``SVI`` collects the
        parameters to update this way); its sample sites are not. On the vmap path the
        model's distributions are not validated (vmap cannot run their checks).

        :param torch.Tensor position: ``(C, D)``.
        :param bool at_data: prepend row 0, the log joint at the observed data, from the same
            run (:func:`~pyro_lvmle.traces.plate.log_joint_at_data`).
        """
        if at_data:
            return log_joint_at_data(self, position)
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
        backward pass; both detached. The gradient is zero at discrete coordinates."""
        with torch.enable_grad():
            position = position.detach().requires_grad_(True)
            energy = self(position)
            grad = None
            if energy.requires_grad:  # not when only integer-typed sites are sampled
                (grad,) = torch.autograd.grad(energy.sum(), position, allow_unused=True)
        grad = torch.zeros_like(position) if grad is None else grad
        if self.discrete_mask is not None:
            grad = grad.masked_fill(self.discrete_mask, 0.0)
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

    def block_energy(self, position: torch.Tensor, block: DiscreteBlock) -> torch.Tensor:
        r"""The energy terms that involve a discrete block, per independent element:
        ``(C, *block.batch_shape)``.

        For the block's site :math:`n` with elements :math:`n_e`, the sum over the sites
        :math:`s` in all the block's plates of their log densities, kept per element:

        .. math::

            B_e(q) = -\sum_s \log p_s(\cdot)\big|_e, \qquad
            U(q') - U(q) = \sum_e \big(B_e(q') - B_e(q)\big)

        for :math:`q'` differing from :math:`q` in the block's coordinates only, and a change
        of element :math:`e` alone changes :math:`B_e` alone: a discrete step may accept or
        reject every element in parallel. The potential established this independence at
        construction (no site outside the plates depends on the site, by tracking its value
        through the model, and moving one element changes no other element's terms); where
        it could not, or when the model also has summed-out sites, the block has
        ``batch_shape == ()`` and this is the whole energy (up to terms that do not depend on
        the block; so too on the vmap path). Differentiable in ``position``, discrete
        coordinates included where the model's log densities are (Gibbs-with-gradients
        proposals use that gradient).

        :param torch.Tensor position: ``(C, D)``.
        :param DiscreteBlock block: one of :attr:`discrete_blocks`.

        References:

        [1] Grathwohl, Swersky, Hashemi, Duvenaud & Maddison (2021), "Oops I took a gradient:
        scalable sampling for discrete distributions", ICML.
        """
        return block_energy(self, position, block)

    def _energy(self, position, jacobian):
        check_positions(position, self.dim)
        if self.vectorization == "vmap":
            return _vmap_energy(self, position, jacobian, self._chain_beta(position))
        return plate_energy(self, position, jacobian, self._chain_beta(position))

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
                site["scale"] = site["scale"] / subsample_factor(site)
            if beta is not None and name in self.tempered_sites:
                site["scale"] = site["scale"] * beta
                # beta = 0 ignores the site even where its density is 0 (0 * -inf = nan)
                site["mask"] = beta > 0 if site["mask"] is None else site["mask"] & (beta > 0)

