"""A Gaussian mixture with full covariances and an enumerable assignment."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import config_enumerate
from torch.distributions import constraints

from .base import ReferenceModel, _check_count, _check_matrix, _num_data

__all__ = ["GaussianMixture"]


class GaussianMixture(ReferenceModel):
    r"""A :math:`K`-component Gaussian mixture with full covariances.

    .. math::

        c_n \sim \mathrm{Categorical}(\pi), \qquad
        x_n \mid c_n \sim \mathcal{N}(\mu_{c_n}, L_{c_n} L_{c_n}^\top), \qquad
        \log p(x_n) = \log \sum_{k=1}^K \pi_k\, \mathcal{N}(x_n; \mu_k, L_k L_k^\top).

    The assignment site ``"assignment"`` is marked for parallel enumeration
    (:func:`~pyro.infer.config_enumerate`), so :class:`~pyro.infer.TraceEnum_ELBO` with an
    empty guide computes the exact
    marginal too. Parameters: ``weights`` ``(K,)`` on the simplex, ``locs`` ``(K, d)``,
    ``scale_tril`` ``(K, d, d)`` lower Cholesky factors. Observed site ``"x"`` in the plate
    ``"data"``.

    There is no closed-form MLE; :meth:`mle` runs the classical closed-form EM updates
    (Dempster, Laird & Rubin 1977) to convergence from several starts and returns the best
    local maximum found, the same procedure as scikit-learn's ``GaussianMixture``.

    **Initial values.** The first time the model runs on data (the first step of a driver, of
    ``SVI``), the parameters it creates start from the data, as scikit-learn's do: k-means++
    seeds (Arthur & Vassilvitskii 2007, the seeding :meth:`mle` uses) drawn from torch's
    global RNG, each datum assigned to its nearest seed, and the weights, means and covariances
    (plus ``reg_covar`` on the diagonal) of these groups (:meth:`data_init`). Each such start
    is random, so :meth:`~pyro_lvmle.em.Driver.run` with ``num_restarts`` explores several.
    Without data (:meth:`params`, :meth:`simulate`, or the model run with ``num_data``) the
    fixed defaults apply: equal weights, unit covariances, means drawn from a fixed seed. A
    start from these on real data can end in a collapsing component.

    :param int num_components: :math:`K`.
    :param int data_dim: :math:`d`.
    :param dict init_params: initial values overriding both the data-driven start and the
        defaults.
    :param str prefix: prepended to the parameters' names in Pyro's param store.

    References:

    [1] Dempster, Laird & Rubin (1977), "Maximum likelihood from incomplete data via the EM
    algorithm", JRSS B 39(1).

    [2] Bishop (2006), Pattern Recognition and Machine Learning, section 9.2.

    Example::

        >>> import pyro_lvmle as lv
        >>> model = lv.models.GaussianMixture(num_components=2, data_dim=2)
        >>> data = model.simulate(300)
        >>> model.log_marginal(data).shape
        torch.Size([])
    """

    param_names = ("weights", "locs", "scale_tril")

    def __init__(self, num_components: int, data_dim: int, init_params=None, *, prefix: str = ""):
        _check_count(num_components, "num_components", "GaussianMixture")
        _check_count(data_dim, "data_dim", "GaussianMixture")
        self.num_components = num_components
        self.data_dim = data_dim
        super().__init__(init_params, prefix=prefix)

    def __repr__(self) -> str:
        return f"GaussianMixture(num_components={self.num_components}, data_dim={self.data_dim})"

    def _default_init(self, name, dtype, device):
        K, d = self.num_components, self.data_dim
        if name == "weights":
            return torch.full((K,), 1.0 / K, dtype=dtype, device=device)
        if name == "locs":
            gen = torch.Generator().manual_seed(0)  # fixed, so every run starts alike
            return (2.0 * torch.randn(K, d, generator=gen, dtype=dtype)).to(device)
        return torch.eye(d, dtype=dtype, device=device).expand(K, d, d).clone()

    def _constraint(self, name):
        return {
            "weights": constraints.simplex,
            "locs": constraints.real,
            "scale_tril": constraints.lower_cholesky,
        }[name]

    @config_enumerate
    def model(self, data=None, *, num_data=None, subsample_size=None):
        """The Pyro model (the assignment is enumerated in parallel).

        :param torch.Tensor data: observations ``(N, d)``, or ``None`` to sample.
        :param int num_data: ``N`` when ``data`` is ``None``.
        :param int subsample_size: optional mini-batch size for the plate ``"data"``.
        """
        num_data = _num_data(data, num_data, self.data_dim, "GaussianMixture")
        store = pyro.get_param_store()
        start = {}
        if data is not None and any(self.store_name(n) not in store
                                    and n not in self._init_overrides for n in self.param_names):
            start = self.data_init(data)  # only when a parameter is created: not per step
        weights, locs, scale_tril = (
            pyro.param(self.store_name(n), start[n], constraint=self._constraint(n))
            if n in start and self.store_name(n) not in store and n not in self._init_overrides
            else self._param(n, data) for n in self.param_names)
        with pyro.plate("data", num_data, subsample_size=subsample_size) as idx:
            batch = None if data is None else data[idx]
            c = pyro.sample("assignment", dist.Categorical(weights))
            pyro.sample("x", dist.MultivariateNormal(locs[c], scale_tril=scale_tril[c]), obs=batch)

    def simulate(self, num_data: int, params=None, *, return_latents: bool = False):
        """Draw ``num_data`` observations (and the assignments, if asked).

        :param int num_data: how many data.
        :param dict params: parameter values; defaults as in :meth:`params`.
        :param bool return_latents: also return the assignments.
        """
        _check_count(num_data, "num_data", "GaussianMixture.simulate")
        p = {k: v.detach() for k, v in self.params(params).items()}
        c = dist.Categorical(p["weights"]).sample((num_data,))
        x = dist.MultivariateNormal(p["locs"][c], scale_tril=p["scale_tril"][c]).sample()
        return (x, c) if return_latents else x

    def component_log_prob(self, data, params=None) -> torch.Tensor:
        r""":math:`\log \pi_k + \log \mathcal{N}(x_n; \mu_k, \Sigma_k)`, shape ``(N, K)``."""
        data = _check_matrix(data, "data", self.data_dim, "GaussianMixture")
        p = self.params(params, like=data)
        comp = dist.MultivariateNormal(p["locs"], scale_tril=p["scale_tril"])
        return comp.log_prob(data.unsqueeze(-2)) + p["weights"].log()

    def log_marginal(self, data, params=None, *, per_datum=False):
        r"""The exact :math:`\sum_n \log \sum_k \pi_k \mathcal{N}(x_n; \mu_k, \Sigma_k)`.

        :param torch.Tensor data: shape ``(N, d)``.
        :param dict params: parameter values; defaults as in :meth:`params`.
        :param bool per_datum: return the ``N`` terms instead of their sum.
        """
        terms = self.component_log_prob(data, params).logsumexp(-1)
        return terms if per_datum else terms.sum()

    def posterior(self, data, params=None) -> dist.Distribution:
        """The exact posterior of the assignments, ``Categorical`` with batch shape ``(N,)``."""
        return dist.Categorical(logits=self.component_log_prob(data, params))

    def mle(
        self, data, *, num_starts: int = 5, max_iter: int = 2000, tol: float = 1e-12,
        reg_covar: float = 1e-6,
    ) -> dict[str, torch.Tensor]:
        """The best local maximum found by closed-form EM from ``num_starts`` starts.

        Starts are k-means++ seeds (Arthur & Vassilvitskii 2007) drawn from torch's global
        RNG; each runs until the log-likelihood gains less than ``tol`` per datum.

        :param torch.Tensor data: shape ``(N, d)``.
        :param int num_starts: number of EM runs.
        :param int max_iter: iteration cap per run.
        :param float tol: stopping tolerance on the per-datum log-likelihood gain.
        :param float reg_covar: added to the covariance diagonals (scikit-learn's default is
            ``1e-6`` too). The likelihood is unbounded as a covariance collapses onto a point,
            so 0 can return such a degenerate solution.
        """
        data = _check_matrix(data, "data", self.data_dim, "GaussianMixture")
        _check_count(num_starts, "num_starts", "GaussianMixture.mle")
        if len(data) <= self.num_components:
            raise ValueError(
                f"GaussianMixture.mle: need more data ({len(data)}) than components "
                f"({self.num_components})"
            )
        best, best_ll = None, -float("inf")
        eye = torch.eye(self.data_dim, dtype=data.dtype, device=data.device)
        for _ in range(num_starts):
            resp = self._kmeanspp_responsibilities(data)
            params, ll_old = None, -float("inf")
            for _ in range(max_iter):
                # M-step in closed form, then E-step
                nk = resp.sum(0) + 10 * torch.finfo(data.dtype).tiny
                locs = resp.T @ data / nk[:, None]
                diff = data.unsqueeze(1) - locs  # (N, K, d)
                cov = torch.einsum("nk,nki,nkj->kij", resp, diff, diff) / nk[:, None, None]
                chol, info = torch.linalg.cholesky_ex(cov + reg_covar * eye)
                if (info != 0).any():
                    params = None  # a component collapsed: abandon this start
                    break
                params = {"weights": nk / nk.sum(), "locs": locs, "scale_tril": chol}
                log_joint = self.component_log_prob(data, params)
                ll = log_joint.logsumexp(-1).mean().item()
                resp = (log_joint - log_joint.logsumexp(-1, keepdim=True)).exp()
                converged = ll - ll_old < tol
                ll_old = ll
                if converged:
                    break
            if params is not None and ll_old > best_ll:
                best, best_ll = params, ll_old
        if best is None:
            raise ValueError(
                "GaussianMixture.mle: every EM start collapsed a component onto too few points; "
                "pass reg_covar > 0 or use fewer components"
            )
        return best

    def data_init(self, data, *, reg_covar: float = 1e-6) -> dict[str, torch.Tensor]:
        """A random data-driven start: k-means++ seeds from torch's global RNG, each datum
        assigned to its nearest seed, and each group's share, mean and covariance (plus
        ``reg_covar`` on the diagonal; the whole data's covariance for a group of fewer than
        ``d + 1`` points).

        :param torch.Tensor data: shape ``(N, d)``, with more rows than components.
        :param float reg_covar: added to the covariance diagonals.
        :returns: ``{"weights", "locs", "scale_tril"}``.

        Example::

            >>> import pyro_lvmle as lv
            >>> model = lv.models.GaussianMixture(2, 2)
            >>> start = model.data_init(model.simulate(50))
            >>> start["scale_tril"].shape
            torch.Size([2, 2, 2])
        """
        data = _check_matrix(data, "data", self.data_dim, "GaussianMixture")
        if len(data) <= self.num_components:
            raise ValueError(
                f"GaussianMixture: need more data ({len(data)}) than components "
                f"({self.num_components}) to start from the data; pass init_params"
            )
        data = data.detach()
        resp = self._kmeanspp_responsibilities(data)
        nk = resp.sum(0)
        locs = resp.T @ data / nk[:, None]
        diff = data.unsqueeze(1) - locs
        cov = torch.einsum("nk,nki,nkj->kij", resp, diff, diff) / nk[:, None, None]
        small = nk < self.data_dim + 1  # too few points for a covariance
        cov = torch.where(small[:, None, None], torch.cov(data.T, correction=0).reshape(
            self.data_dim, self.data_dim).expand_as(cov), cov)
        eye = torch.eye(self.data_dim, dtype=data.dtype, device=data.device)
        return {"weights": nk / nk.sum(), "locs": locs,
                "scale_tril": torch.linalg.cholesky(cov + reg_covar * eye)}

    def _kmeanspp_responsibilities(self, data):
        """Hard responsibilities from k-means++ seeding (nearest seed)."""
        N, K = len(data), self.num_components
        centres = data[torch.randint(N, (1,), device=data.device)]
        for _ in range(1, K):
            d2 = torch.cdist(data, centres).pow(2).min(-1).values
            idx = torch.multinomial(d2 / d2.sum(), 1)
            centres = torch.cat([centres, data[idx]])
        nearest = torch.cdist(data, centres).argmin(-1)
        return torch.nn.functional.one_hot(nearest, K).to(data.dtype)
