r"""The exact E-step of EM for models whose latent sites Pyro can enumerate.

At fixed parameters :math:`\theta_0` the posterior :math:`p(z \mid x; \theta_0)` of the
enumerated sites is implicit in the factors :math:`f_s = \log p_s(\cdot; \theta_0)` of one
enumerated trace; a tensor-variable elimination (:func:`pyro.ops.contract.contract_to_tensor`,
exact under plates) sums them to :math:`\log p(x; \theta_0)`. The derivative of that sum with
respect to a factor's entries is the posterior marginal of the factor's variables (one backward
pass gives all of them, pairwise ones included), so that

.. math::

    Q(\theta) = \mathbb{E}_{p(z \mid x; \theta_0)}\big[\log p(x, z; \theta)\big]
        = \sum_s \sum_{\text{entries}} \frac{\partial \log p(x; \theta_0)}{\partial f_s}
          \log p_s(\cdot; \theta),

with no posterior written out.
"""

from __future__ import annotations

from collections import OrderedDict

import pyro.poutine as poutine
import torch
from pyro.ops.contract import contract_to_tensor
from pyro.ops.packed import unpack

from .particles import _is_subsample

__all__ = ["EnumeratedPosterior"]


class EnumeratedPosterior:
    r"""The exact posterior of a model's enumerated latent sites at its current parameters.

    :param model: a Pyro model whose every latent site is discrete and marked for parallel
        enumeration (e.g. by :func:`~pyro.infer.config_enumerate`).
    :param tuple args: the model's arguments.
    :param dict kwargs: its keyword arguments.
    :param int max_plate_nesting: the model's deepest plate nesting.
    :param float data_share: for a data-parallel rank whose data plate is subsampled to its
        shard, the shard's share :math:`B / N` of the data
        (:func:`~pyro_lvmle.traces.plate.data_share`): every factor is multiplied by it, which
        cancels the plate's :math:`N / B` in the factors of the shard's data (an exact
        posterior of each datum) and gives the factors outside the plate this share, so that
        the ranks' :attr:`log_marginal` and :meth:`expected_log_joint` add up to the full
        data's. The enumerated sites must lie in the plate. ``None``: no plate may be
        subsampled.
    :raises ValueError: for a latent site that is not enumerable, or a subsampled plate
        (without ``data_share``), or an enumerated site outside it (with ``data_share``).

    :ivar torch.Tensor log_marginal: :math:`\log p(x; \theta_0)`, exact (detached).

    Example::

        >>> import torch, pyro_lvmle as lv
        >>> from pyro_lvmle.traces import EnumeratedPosterior
        >>> model = lv.models.GaussianMixture(num_components=2, data_dim=1)
        >>> data = model.simulate(20)
        >>> posterior = EnumeratedPosterior(model, (data,), {}, max_plate_nesting=1)
        >>> torch.allclose(posterior.log_marginal, model.log_marginal(data))
        True
    """

    def __init__(self, model, args=(), kwargs=None, max_plate_nesting: int = 1,
                 data_share: float | None = None):
        self.model, self.args, self.kwargs = model, tuple(args), dict(kwargs or {})
        self.max_plate_nesting = max_plate_nesting
        self.data_share = data_share
        trace = self._trace()
        for name, site in trace.nodes.items():
            if site["type"] != "sample":
                continue
            if _is_subsample(site) and site["value"].numel() != site["fn"].size \
                    and data_share is None:
                raise ValueError(f"plate {name!r} is subsampled; the exact E-step needs all "
                                 "the data (drop subsample_size)")
            if not site["is_observed"] and not _is_subsample(site) \
                    and site["infer"].get("enumerate") != "parallel":
                raise ValueError(
                    f"latent site {name!r} is not enumerable: exact EM needs every latent "
                    "site discrete and marked for parallel enumeration "
                    "(pyro.infer.config_enumerate); use MCEM or SAEM otherwise"
                )
        self._symbol_to_dim = trace.symbol_to_dim
        self._enum_dims = set(trace.symbol_to_dim) - set(trace.plate_to_symbol.values())
        self._factors = self._collect(trace, detach=True)
        with torch.no_grad():
            self.log_marginal = self._contract(self._factors)
        self._packed_marginals = None

    def _trace(self):
        enumerated = poutine.enum(self.model, first_available_dim=-(self.max_plate_nesting + 1))
        with poutine.block(expose_types=["param"]):
            trace = poutine.trace(enumerated).get_trace(*self.args, **self.kwargs)
        if self.data_share is not None:
            for name, site in trace.nodes.items():
                if site["type"] != "sample" or _is_subsample(site):
                    continue
                site["scale"] = site["scale"] * self.data_share
                # by its plates, not its scale (a user's poutine.scale is not a plate)
                shares = {f.size / f.full_size for f in site["cond_indep_stack"]
                          if f.full_size is not None and f.size != f.full_size}
                if shares and any(abs(share - self.data_share) > 1e-9 for share in shares):
                    raise ValueError(
                        f"EnumeratedPosterior: data_share={self.data_share} does not match the "
                        f"share {sorted(shares)} of the data that site {name!r}'s subsampled "
                        "plate holds; pass the rank's share B / N")
                if not site["is_observed"] and not shares:
                    raise ValueError(
                        f"latent site {name!r} is outside the data plate subsampled to this "
                        "rank's shard: its posterior depends on every rank's data, which "
                        "data-parallel exact EM does not combine; put it in the data plate")
        trace.compute_log_prob()
        trace.pack_tensors()
        return trace

    def _collect(self, trace, detach):
        factors = OrderedDict()
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or _is_subsample(site):
                continue
            packed = site["packed"]["log_prob"]
            ordinal = frozenset(trace.plate_to_symbol[f.name] for f in site["cond_indep_stack"]
                                if f.vectorized)
            factors[name] = (ordinal, packed.detach() if detach else packed,
                             packed._pyro_dims)
        return factors

    def _contract(self, factors):
        tree = OrderedDict()
        for ordinal, tensor, dims in factors.values():
            tensor._pyro_dims = dims
            tree.setdefault(ordinal, []).append(tensor)
        return contract_to_tensor(tree, self._enum_dims, target_ordinal=frozenset())

    def expected_log_joint(self) -> torch.Tensor:
        r""":math:`Q(\theta)` at the model's current parameters: a scalar differentiable in
        them, :math:`\sum_s \sum p(\text{factor } s\text{'s variables} \mid x; \theta_0)
        \log p_s(\cdot; \theta)` (one run of the model; the marginals are computed once)."""
        new = self._collect(self._trace(), detach=False)
        if [v[2] for v in new.values()] != [v[2] for v in self._factors.values()]:
            raise ValueError("EnumeratedPosterior: the model's structure changed since the "
                             "E-step (different sites or plates)")
        if self._packed_marginals is None:
            self._packed_marginals = self._factor_marginals()
        return sum((self._packed_marginals[name] * tensor).sum()
                   for name, (_, tensor, _) in new.items())

    def _factor_marginals(self):
        """The derivative of log p(x) with respect to each factor's entries."""
        with torch.enable_grad():
            offsets = {name: torch.zeros_like(t, requires_grad=True)
                       for name, (_, t, _) in self._factors.items()}
            shifted = OrderedDict((name, (ordinal, t + offsets[name], dims))
                                  for name, (ordinal, t, dims) in self._factors.items())
            grads = torch.autograd.grad(self._contract(shifted), list(offsets.values()))
        return dict(zip(self._factors, grads, strict=True))

    def marginals(self) -> dict[str, torch.Tensor]:
        """Posterior marginals of each site's factor variables: for site ``s`` a tensor shaped
        like its ``log_prob`` in the enumerated trace (enumeration dimensions on the left, in
        the order of ``enumerate_support``, then plate dimensions), holding
        :math:`p(\\text{the enumerated values of s and of its enumerated parents} \\mid x)`;
        for an observed site, the posterior of its enumerated parents."""
        if self._packed_marginals is None:
            self._packed_marginals = self._factor_marginals()
        out = {}
        for name, (_, _, dims) in self._factors.items():
            grad = self._packed_marginals[name].clone()
            grad._pyro_dims = dims
            out[name] = unpack(grad, self._symbol_to_dim)
        return out
