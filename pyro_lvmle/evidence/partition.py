r"""The partition function of an undirected model: exactly by enumeration, or by annealed
importance sampling from a tractable base.

For a model whose observed sites carry an unnormalized density :math:`\tilde p(x; \theta)`
(an improper observed site and :func:`pyro.factor`), the partition function is

.. math::

    Z(\theta) = \sum_x \tilde p(x; \theta) \quad\text{(or } \textstyle\int\text{)}, \qquad
    \log p(x; \theta) = \log \tilde p(x; \theta) - \log Z(\theta).

Annealed importance sampling (Neal 2001; Salakhutdinov & Murray 2008) moves chains along the
geometric path from a normalized base :math:`p_0` (independent units at the data's base
rates, by default) to :math:`\tilde p`,

.. math::

    f_\beta(x) = p_0(x)^{1 - \beta}\, \tilde p(x; \theta)^\beta, \qquad
    \mathbb{E}[w] = Z_1 / Z_0 = Z(\theta),

with :func:`~pyro_lvmle.evidence.annealed_importance_sampling` and any negative-phase sampler
as the transition. The target is the model's observed sites with the observations removed
(``Potential(model, args, uncondition=True)``), tempered by
:meth:`~pyro_lvmle.traces.Potential.tempered`.
"""

from __future__ import annotations

import math
import warnings

import pyro.distributions as dist
import torch
from torch.distributions import Independent

from .._checks import check_int
from ..samplers import make_sampler
from ..samplers.kernels import refuse_latent_kernels
from ..traces import Potential
from .ais import annealed_importance_sampling, check_betas
from .estimate import Estimate

__all__ = ["GeometricPath", "GeometricTarget", "MAX_ENUMERATED_CONFIGURATIONS", "log_partition"]

#: Largest number of configurations summed by ``method="exact"`` (as RBM's enumeration).
MAX_ENUMERATED_CONFIGURATIONS = 2**20
_CHUNK = 2**14  # configurations per model run, to bound memory


def log_partition(model, *args, method: str = "exact", base=None, num_chains: int = 100,
                  num_betas: int = 1000, betas=None, sampler=None, num_transitions: int = 1,
                  max_plate_nesting: int | None = None, **kwargs) -> Estimate:
    r"""The log partition function :math:`\log Z(\theta)` of the model's unnormalized density
    over its observed sites, with a standard error.

    :math:`Z` normalizes the density of *every* observed value the model is run on: for
    ``N`` rows of data in a plate it is :math:`Z_{\text{row}}^N`. Pass one row
    (``data[:1]``) for the per-row :math:`\log Z` of an i.i.d. model; then the average
    log-likelihood of data is the mean of :math:`\log\tilde p(x_n)` minus it.

    ``method="exact"`` sums :math:`\tilde p` over every configuration of discrete observed
    sites (at most :data:`MAX_ENUMERATED_CONFIGURATIONS`; a reference model may know its own,
    e.g. :meth:`~pyro_lvmle.models.RBM.log_partition`). ``method="ais"`` runs annealed
    importance sampling along the geometric path from ``base`` (see the module's text); its
    value is a stochastic lower bound on :math:`\log Z` (Jensen), its standard error that of
    the delta method over the chains, which heavy-tailed weights make too small: trust it
    when ``diagnostics["ess"]`` (the weights' effective sample size) is a good part of
    ``num_chains``, and compare a few seeds otherwise.

    :param model: the Pyro model: observed sites and ``pyro.factor``; latent sites must be
        summed out (enumerable).
    :param args: the model's arguments (the data, which fixes the shapes).
    :param str method: ``"exact"`` or ``"ais"``.
    :param base: the AIS base, one entry per observed site: a distribution of independent
        coordinates (its samples broadcast to the site's shape) or a tensor of values whose
        base rates to use (rows along the last dimension: ``(N, V)`` data for a ``V``-unit
        site). ``None`` uses the observed values in ``args``. Base rates make a Bernoulli for
        boolean sites (smoothed: :math:`(k + 1/2) / (n + 1)`) and a normal with the values'
        mean and standard deviation for real sites; other sites need a distribution.
    :param int num_chains: AIS chains.
    :param int num_betas: inverse temperatures, :math:`\beta` evenly spaced from 0 to 1.
    :param betas: the inverse temperatures themselves (overrides ``num_betas``).
    :param sampler: the transition, a non-adapting :class:`~pyro_lvmle.samplers.Sampler` or a
        name for :func:`~pyro_lvmle.samplers.make_sampler`; by default ``"gibbs"`` (exact full
        conditionals) when every coordinate is discrete, else HMC with 5 leapfrog steps of
        size 0.1 (pass one with a step size suited to the model).
    :param int num_transitions: transitions at each intermediate distribution.
    :param int max_plate_nesting: the model's deepest plate nesting; guessed if ``None``.
    :param kwargs: the model's keyword arguments.
    :raises ValueError: for an unknown method, a model with latent sites that cannot be summed
        out, too many configurations to enumerate, or a site without a default base.

    References:

    [1] Neal (2001), "Annealed importance sampling", Statistics and Computing 11.

    [2] Salakhutdinov & Murray (2008), "On the quantitative analysis of deep belief
    networks", ICML.

    Example::

        >>> import torch, pyro_lvmle as lv
        >>> rbm = lv.models.RBM(num_visible=5, num_hidden=3, prefix="partition_")
        >>> data = rbm.simulate(20)
        >>> exact = lv.log_partition(rbm.model, data[:1])
        >>> bool(torch.isclose(exact.value, rbm.log_partition()))
        True
        >>> ais = lv.log_partition(rbm.model, data[:1], method="ais", base={"v": data},
        ...                        num_chains=50, num_betas=50)
        >>> bool(abs(ais.value - exact.value) < 0.1)
        True
    """
    where = "log_partition"
    if method not in ("exact", "ais"):
        raise ValueError(f"{where}: method must be 'exact' or 'ais', got {method!r}")
    if max_plate_nesting is not None:
        check_int(where, "max_plate_nesting", max_plate_nesting, 0)
    refuse_latent_kernels(where, sampler)
    with torch.enable_grad():
        try:  # the model's own faults, named for the function that found them
            potential = Potential(model, args, kwargs, max_plate_nesting=max_plate_nesting,
                                  uncondition=True)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from error
    latents = [site.name for site in potential.sites if not site.was_observed]
    if latents:
        raise ValueError(f"{where}: the latent sites {latents} cannot be summed out; "
                         "log_partition needs a model of observed sites and pyro.factor "
                         "(mark discrete latents infer={'enumerate': 'parallel'})")
    with torch.no_grad():
        if method == "exact":
            return _exact(potential, where)
    num_chains = check_int(where, "num_chains", num_chains, 1)
    if betas is None:
        betas = torch.linspace(0, 1, check_int(where, "num_betas", num_betas, 2))
    betas = check_betas(where, betas, from_zero_to_one=True)
    path = GeometricPath(potential, _bases(potential, base, where))
    if sampler is None:
        mask = potential.discrete_mask
        sampler = "gibbs" if mask is not None and bool(mask.all()) else "hmc"
    if isinstance(sampler, str):
        sampler = make_sampler(sampler, step_size=0.1, adapt_step_size=False, num_steps=5)
    result = annealed_importance_sampling(path, path.sample_base(num_chains), betas, sampler,
                                          num_transitions=num_transitions)
    return result.estimate


def _exact(potential, where):
    mask, blocks = potential.discrete_mask, potential.discrete_blocks
    if mask is None or not bool(mask.all()):
        raise ValueError(f"{where}: method='exact' enumerates discrete observed sites only; "
                         "use method='ais' for continuous ones")
    sizes = []
    for block in blocks:
        if not math.isfinite(block.upper):
            raise ValueError(f"{where}: site {block.name!r} has an unbounded support; use "
                             "method='ais'")
        sizes += [int(block.upper - block.lower) + 1] * block.numel
    count = math.prod(sizes)
    if count > MAX_ENUMERATED_CONFIGURATIONS:
        raise ValueError(f"{where}: {count} configurations of the observed sites, more than "
                         f"{MAX_ENUMERATED_CONFIGURATIONS}; use method='ais' (or a reference "
                         "model's own log_partition)")
    like = mask.new_zeros((), dtype=torch.get_default_dtype())
    lower = torch.cat([torch.full((b.numel,), b.lower) for b in blocks]).to(like)
    radix = torch.tensor(sizes, device=mask.device)
    place = torch.cat([radix.new_ones(1), radix.cumprod(0)[:-1]])
    parts = []
    for start in range(0, count, _CHUNK):
        index = torch.arange(start, min(start + _CHUNK, count), device=mask.device)
        digits = (index.unsqueeze(-1) // place) % radix
        parts.append(-potential(lower + digits.to(like)))
    value = torch.logsumexp(torch.cat(parts), 0)
    return Estimate(value, torch.zeros_like(value), method="exact",
                    diagnostics={"num_configurations": count})


def _bases(potential, base, where):
    """One distribution of independent coordinates per site, expanded to the site's shape."""
    given = dict(base or {})
    unknown = set(given) - {site.name for site in potential.sites}
    if unknown:
        raise ValueError(f"{where}: base has entries {sorted(unknown)} that are not observed "
                         f"sites; they are {[s.name for s in potential.sites]}")
    observed = potential.unpack(potential.initial_position(1))
    kinds = {block.name: block.kind for block in potential.discrete_blocks}
    out = {}
    for site in potential.sites:
        choice = given.get(site.name, observed[site.name])
        if isinstance(choice, torch.distributions.Distribution):
            while isinstance(choice, Independent):
                choice = choice.base_dist
            out[site.name] = choice.expand(site.shape)
            continue
        values = torch.as_tensor(choice).to(observed[site.name])
        rows = values.reshape(-1, site.shape[-1]) if site.shape else values.reshape(-1, 1)
        if kinds.get(site.name) == "binary":
            rates = (rows.sum(0) + 0.5) / (rows.shape[0] + 1)
            out[site.name] = dist.Bernoulli(probs=rates.reshape(site.shape[-1:]),
                                            validate_args=False).expand(site.shape)
        elif site.name not in kinds and _is_identity(site.transform):
            if rows.shape[0] < 2:
                warnings.warn(
                    f"{where}: the default AIS base of real site {site.name!r} is a normal at "
                    "the data's mean and standard deviation, but one row has no spread: "
                    "N(row, 1) is used, which can make the weights heavy-tailed and the "
                    "standard error too small (2-D Gaussian energy: spread 0.20 against a "
                    f"reported 0.07); pass base={{{site.name!r}: data}} (all rows) or a "
                    "distribution", UserWarning, stacklevel=3)
            scale = rows.std(0) if rows.shape[0] > 1 else torch.ones_like(rows[0])
            out[site.name] = dist.Normal(rows.mean(0).reshape(site.shape[-1:]),
                                         scale.clamp(min=1e-3).reshape(site.shape[-1:]),
                                         validate_args=False).expand(site.shape)
        else:
            raise ValueError(f"{where}: no default base for site {site.name!r}; give "
                             "base={name: distribution}")
    return out


def _is_identity(transform) -> bool:
    """Whether a site's transform is the identity (a real site), possibly made independent."""
    while isinstance(transform, torch.distributions.transforms.IndependentTransform):
        transform = transform.base_transform
    return isinstance(transform, torch.distributions.transforms.ComposeTransform) \
        and not transform.parts


class GeometricPath:
    r"""The geometric path :math:`f_\beta = p_0^{1-\beta} \tilde p^\beta` from a base
    :math:`p_0` to a model's unnormalized density over its observed sites, as
    :func:`~pyro_lvmle.evidence.annealed_importance_sampling` takes a path: ``path(beta)`` is
    the target at ``beta``.

    .. math::

        U_\beta(q) = -(1 - \beta) \log p_0(x(q)) - \beta \log \tilde p(x(q))
            - \log |\det J(q)|,

    the model's part from :meth:`~pyro_lvmle.traces.Potential.tempered` (a chain at
    :math:`\beta = 0` ignores the model altogether).

    :param potential: ``Potential(model, args, uncondition=True)`` with observed sites only.
    :param dict bases: one distribution of independent coordinates per site, of the site's
        shape (``batch_shape`` the site's shape, ``event_shape`` empty).

    Example::

        >>> import torch, pyro.distributions as dist, pyro_lvmle as lv
        >>> from pyro_lvmle.traces import Potential
        >>> rbm = lv.models.RBM(num_visible=3, num_hidden=2, prefix="path_")
        >>> potential = Potential(rbm.model, (rbm.simulate(1),), uncondition=True)
        >>> path = GeometricPath(potential, {"v": dist.Bernoulli(0.5 * torch.ones(1, 3))})
        >>> q = path.sample_base(4)
        >>> bool(torch.allclose(path(1.0)(q), potential(q)))
        True
    """

    def __init__(self, potential, bases: dict):
        self.potential = potential
        self.bases = bases

    def __call__(self, beta) -> GeometricTarget:
        """The target at ``beta`` (a scalar or one per chain).

        :param beta: the inverse temperature.
        """
        return GeometricTarget(self, torch.as_tensor(beta))

    def sample_base(self, num_chains: int) -> torch.Tensor:
        """Exact draws ``(num_chains, D)`` of the base.

        :param int num_chains: how many.
        """
        return self.potential.pack({name: base.sample((num_chains,))
                                    for name, base in self.bases.items()})

    def base_log_probs(self, position: torch.Tensor) -> dict[str, torch.Tensor]:
        """The base's log density of each site's coordinates, ``(C, *site shape)``.

        :param torch.Tensor position: ``(C, D)``.
        """
        values = self.potential.unpack(position)
        return {name: base.log_prob(values[name].reshape((-1,) + base.batch_shape))
                for name, base in self.bases.items()}


class GeometricTarget:
    """One target of a :class:`GeometricPath`: the sampler protocol's target (energies,
    gradients, discrete blocks and their energies), at the path's ``beta``.

    :param GeometricPath path: the path.
    :param torch.Tensor beta: a scalar or one per chain.
    """

    def __init__(self, path: GeometricPath, beta: torch.Tensor):
        potential = path.potential
        self.path, self.beta = path, beta
        self.dim = potential.dim
        self.sites = potential.sites
        self.discrete_mask = potential.discrete_mask
        self.discrete_blocks = potential.discrete_blocks
        self.unpack, self.pack = potential.unpack, potential.pack

    def _beta(self, position):
        return self.beta.to(position).expand(position.shape[:1])

    def _energy(self, position):
        beta = self._beta(position)
        base = -sum(lp.reshape(position.shape[0], -1).sum(-1)
                    for lp in self.path.base_log_probs(position).values())
        return self.path.potential.tempered(beta)(position) + (1 - beta) * base

    def __call__(self, position: torch.Tensor) -> torch.Tensor:
        """:math:`U_\\beta` per chain ``(C,)``.

        :param torch.Tensor position: ``(C, D)``.
        """
        with torch.no_grad():
            return self._energy(position)

    def value_and_grad(self, position: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:math:`U_\\beta` and its gradient (zero at discrete coordinates), detached.

        :param torch.Tensor position: ``(C, D)``.
        """
        with torch.enable_grad():
            position = position.detach().requires_grad_(True)
            energy = self._energy(position)
            grad = None
            if energy.requires_grad:
                (grad,) = torch.autograd.grad(energy.sum(), position, allow_unused=True)
        grad = torch.zeros_like(position) if grad is None else grad
        if self.discrete_mask is not None:
            grad = grad.masked_fill(self.discrete_mask, 0.0)
        return energy.detach(), grad.detach()

    def block_energy(self, position: torch.Tensor, block) -> torch.Tensor:
        """A discrete block's energy terms per element: :math:`\\beta` times the model's
        (:meth:`~pyro_lvmle.traces.Potential.block_energy`) plus :math:`1 - \\beta` times the
        base's.

        :param torch.Tensor position: ``(C, D)``.
        :param block: one of :attr:`discrete_blocks`.
        """
        beta = self._beta(position).reshape((-1,) + (1,) * len(block.batch_shape))
        base = -self.path.base_log_probs(position)[block.name].reshape(
            position.shape[0], *block.batch_shape, block.event_numel).sum(-1)
        model = self.path.potential.block_energy(position, block)
        model = torch.where(beta > 0, beta * model, torch.zeros_like(model))
        return model + (1 - beta) * base
