"""Royle's N-mixture abundance model: a latent Poisson count per site, binomial detections."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints

from .base import ReferenceModel, _check_count, _check_matrix

__all__ = ["NMixture"]

#: The Poisson tail mass left out of the exact marginal's sum over each site's count.
TAIL_MASS = 1e-12


class NMixture(ReferenceModel):
    r"""Royle's (2004) N-mixture model for repeated counts of an unmarked population.

    For each site :math:`i = 1, \dots, N` and visit :math:`j = 1, \dots, J`,

    .. math::

        n_i \sim \mathrm{Poisson}(\lambda), \qquad
        y_{ij} \mid n_i \sim \mathrm{Binomial}(n_i, p),

    with the abundance :math:`n_i` latent (a count with unbounded support: it cannot be
    enumerated, so an MCMC estimator samples it). The marginal likelihood of a site is the sum

    .. math::

        p(y_i; \lambda, p) = \sum_{n = m_i}^{\infty} \mathrm{Poisson}(n; \lambda)
            \prod_{j=1}^J \binom{n}{y_{ij}} p^{y_{ij}} (1 - p)^{n - y_{ij}},
        \qquad m_i = \max_j y_{ij},

    which :meth:`log_marginal` truncates at the smallest :math:`K \ge \max_i m_i` with
    :math:`P(\mathrm{Poisson}(\lambda) > K) < 10^{-12}`. Every omitted term is at most its
    Poisson weight (the binomial factors are at most one), so each :math:`p(y_i)` is
    computed with an absolute error below :math:`10^{-12}` (in practice far smaller: the
    omitted terms also carry :math:`(1-p)^{J n}`).

    Parameters (Pyro param store names): ``rate`` (:math:`\lambda`, positive) and
    ``detection`` (:math:`p`, in the unit interval). The latent site is ``"n"`` in the plate
    ``"sites"``; the observed site ``"y"`` is in the plates ``"sites"`` and ``"visits"``.
    The model is written as a user writes it: plain plates, no enumeration marks.

    :param int num_visits: :math:`J`, the repeated counts per site.
    :param dict init_params: initial values overriding the defaults (``rate = 5``,
        ``detection = 0.5``).
    :param str prefix: prepended to the parameters' names in Pyro's param store.

    References:

    [1] Royle (2004), "N-mixture models for estimating population size from spatially
    replicated counts", Biometrics 60(1).

    [2] Dennis, Morgan & Ridout (2015), "Computational aspects of N-mixture models",
    Biometrics 71(1) (the truncation bound and the likelihood's boundary behaviour).

    Example::

        >>> import torch, pyro_lvmle as lv
        >>> model = lv.models.NMixture(num_visits=3)
        >>> data = model.simulate(100, params={"rate": torch.tensor(4.0),
        ...                                    "detection": torch.tensor(0.6)})
        >>> data.shape
        torch.Size([100, 3])
        >>> mle = model.mle(data)
        >>> sorted(mle)
        ['detection', 'rate']
        >>> bool(model.log_marginal(data, mle) >= model.log_marginal(data))
        True
    """

    param_names = ("rate", "detection")

    def __init__(self, num_visits: int = 3, init_params=None, *, prefix: str = ""):
        self.num_visits = _check_count(num_visits, "num_visits", "NMixture")
        super().__init__(init_params, prefix=prefix)

    def __repr__(self) -> str:
        return f"NMixture(num_visits={self.num_visits})"

    def _default_init(self, name, dtype, device):
        value = 5.0 if name == "rate" else 0.5
        return torch.tensor(value, dtype=dtype, device=device)

    def _constraint(self, name):
        return constraints.positive if name == "rate" else constraints.unit_interval

    def _check(self, data) -> torch.Tensor:
        data = _check_matrix(data, "data", self.num_visits, "NMixture")
        if not ((data >= 0) & (data == data.round())).all():
            raise ValueError("NMixture: data must hold non-negative integer counts")
        return data

    def model(self, data=None, *, num_sites=None):
        """The Pyro model.

        :param torch.Tensor data: counts of shape ``(N, J)`` (floats holding integers), or
            ``None`` to sample.
        :param int num_sites: ``N`` when ``data`` is ``None``.
        """
        if data is None:
            num_sites = _check_count(num_sites, "num_sites", "NMixture.model")
        else:
            _check_matrix(data, "data", self.num_visits, "NMixture", check_finite=False)
            num_sites = data.shape[0]
        rate = self._param("rate", data)
        detection = self._param("detection", rate)
        with pyro.plate("sites", num_sites, dim=-2):
            n = pyro.sample("n", dist.Poisson(rate))
            with pyro.plate("visits", self.num_visits, dim=-1):
                pyro.sample("y", dist.Binomial(n, detection), obs=data)

    def simulate(self, num_sites: int, params=None, *, return_latents: bool = False):
        """Draw the counts of ``num_sites`` sites (and their abundances, if asked).

        :param int num_sites: :math:`N`.
        :param dict params: parameter values; defaults as in :meth:`params`.
        :param bool return_latents: also return the abundances ``n`` of shape ``(N,)``.
        :returns: ``y`` of shape ``(N, J)``, or ``(y, n)``.
        """
        _check_count(num_sites, "num_sites", "NMixture.simulate")
        p = {k: v.detach() for k, v in self.params(params).items()}
        n = dist.Poisson(p["rate"]).sample((num_sites,))
        y = dist.Binomial(n.unsqueeze(-1).expand(num_sites, self.num_visits),
                          p["detection"]).sample()
        return (y, n) if return_latents else y

    def truncation(self, data, params=None) -> int:
        r"""The bound :math:`K` of :meth:`log_marginal`'s sum: the smallest
        :math:`K \ge \max_{ij} y_{ij}` with :math:`P(\mathrm{Poisson}(\lambda) > K) <
        10^{-12}`.

        :param torch.Tensor data: shape ``(N, J)``.
        :param dict params: parameter values; defaults as in :meth:`params`.
        """
        data = self._check(data)
        rate = self.params(params, like=data)["rate"].detach()
        if not (torch.isfinite(rate) and rate > 0):
            raise ValueError(f"NMixture: rate must be positive and finite, got {rate.item()}")
        return _poisson_bound(rate, int(data.max().item()) if data.numel() else 0)

    def log_marginal(self, data, params=None, *, per_datum=False, bound=None):
        r"""The exact :math:`\log p(y; \lambda, p) = \sum_i \log p(y_i; \lambda, p)`, each
        site's sum over its abundance truncated at :meth:`truncation` and computed in log
        space (``logsumexp``); differentiable in the parameters.

        :param torch.Tensor data: shape ``(N, J)``.
        :param dict params: parameter values; defaults as in :meth:`params`.
        :param bool per_datum: return the ``N`` per-site terms instead of their sum.
        :param int bound: sum up to this :math:`K` instead (for checks of the truncation).
        """
        data = self._check(data)
        p = self.params(params, like=data)
        if bound is None:
            bound = self.truncation(data, p)
        terms = _log_terms(data, p["rate"], p["detection"], bound).logsumexp(-1)
        return terms if per_datum else terms.sum()

    def posterior(self, data, params=None) -> dist.Categorical:
        """The exact posterior of each site's abundance, on ``0..K`` (:meth:`truncation`).

        :param torch.Tensor data: shape ``(N, J)``.
        :param dict params: parameter values; defaults as in :meth:`params`.
        :returns: a ``Categorical`` with batch shape ``(N,)`` over ``0..K``.
        """
        data = self._check(data)
        p = {k: v.detach() for k, v in self.params(params, like=data).items()}
        logits = _log_terms(data, p["rate"], p["detection"], self.truncation(data, p))
        return dist.Categorical(logits=logits)

    def mle(self, data, *, tol: float = 1e-8, max_iter: int = 200) -> dict[str, torch.Tensor]:
        r"""The maximum-likelihood estimate, by L-BFGS and then Newton steps on the exact
        log-likelihood in :math:`(\log\lambda, \operatorname{logit} p)`, in float64.

        The N-mixture likelihood can increase without bound along :math:`\lambda \to \infty,
        p \to 0` for data with little information on detection (Dennis et al. 2015); then
        no interior maximum exists and this raises.

        :param torch.Tensor data: shape ``(N, J)``.
        :param float tol: the largest gradient norm, per site, accepted at the optimum.
        :param int max_iter: L-BFGS iterations.
        :raises RuntimeError: if the gradient norm does not fall below ``tol * N``, or the
            rate heads beyond 100 times the largest count.
        """
        data = self._check(data).to(torch.float64)
        # a moment start: E[y] = lambda p, and p = 1/2
        start = torch.stack([(2 * data.mean()).clamp(min=0.1).log(), data.new_tensor(0.0)])
        x = start.clone().requires_grad_(True)
        # abundances beyond 100 times the largest count: the run heads for the boundary
        # (and the truncation bound, hence the cost, grows with the rate)
        log_cap = math.log(100.0 * (float(data.max()) + 1.0))

        def negative(x):
            if x[0] > log_cap:
                raise _Boundary
            params = {"rate": x[0].exp(), "detection": torch.sigmoid(x[1])}
            return -self.log_marginal(data, params)

        optim = torch.optim.LBFGS([x], lr=1.0, max_iter=max_iter, tolerance_grad=1e-12,
                                  tolerance_change=1e-15, line_search_fn="strong_wolfe")

        def closure():
            optim.zero_grad()
            value = negative(x)
            value.backward()
            return value

        try:
            optim.step(closure)
            x = x.detach()
            for _ in range(20):  # Newton polish: quadratic convergence from L-BFGS's answer
                grad = torch.autograd.functional.jacobian(negative, x)
                if grad.norm() < 1e-12 * data.shape[0]:
                    break
                hessian = torch.autograd.functional.hessian(negative, x)
                if torch.linalg.eigvalsh(hessian).min() <= 0:
                    break
                x = x - torch.linalg.solve(hessian, grad)
            grad = torch.autograd.functional.jacobian(negative, x)
        except _Boundary:
            x, grad = x.detach(), torch.full((2,), math.inf, dtype=data.dtype)
        if not (torch.isfinite(grad).all() and grad.norm() < tol * data.shape[0]):
            raise RuntimeError(
                f"NMixture.mle: no interior maximum found (gradient norm {grad.norm():.3g} at "
                f"rate {x[0].exp():.4g}, detection {torch.sigmoid(x[1]):.4g}); the data may "
                "carry too little information on detection (Dennis et al. 2015)")
        return {"rate": x[0].exp(), "detection": torch.sigmoid(x[1])}


class _Boundary(Exception):
    """Raised inside :meth:`NMixture.mle` when the rate runs off towards infinity."""


def _poisson_bound(rate: torch.Tensor, at_least: int) -> int:
    r"""The smallest :math:`K \ge` ``at_least`` with :math:`P(\mathrm{Poisson}(\lambda) > K)
    = P(K + 1, \lambda) <` :data:`TAIL_MASS` (the regularized lower incomplete gamma
    function), searched on a grid wide enough for any rate."""
    rate = rate.to(torch.float64)
    top = at_least + int(rate.item() + 20 * math.sqrt(rate.item()) + 60)
    grid = torch.arange(at_least, top + 1, dtype=torch.float64)
    tail = torch.special.gammainc(grid + 1, rate)
    below = (tail < TAIL_MASS).nonzero()
    return int(grid[below[0, 0]].item()) if len(below) else top


def _log_terms(data, rate, detection, bound):
    """``log Poisson(n; rate) + sum_j log Binomial(y_ij; n, detection)`` for ``n = 0..bound``,
    shape ``(N, bound + 1)``; ``-inf`` where ``n < max_j y_ij``."""
    n = torch.arange(bound + 1, dtype=data.dtype, device=data.device)
    y = data.unsqueeze(-1)  # (N, J, 1)
    rest = (n - y).clamp(min=0)  # finite everywhere, so the masked terms' gradients are 0
    log_binomial = (torch.lgamma(n + 1) - torch.lgamma(y + 1) - torch.lgamma(rest + 1)
                    + y * detection.log() + rest * torch.log1p(-detection)).sum(-2)
    log_poisson = n * rate.log() - rate - torch.lgamma(n + 1)
    possible = n >= data.max(-1, keepdim=True).values
    return torch.where(possible, log_poisson + log_binomial,
                       torch.full_like(log_binomial, -math.inf))
