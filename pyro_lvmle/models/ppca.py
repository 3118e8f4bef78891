"""Probabilistic PCA (Tipping & Bishop 1999) with its closed-form MLE."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints

from .base import ReferenceModel, _check_count, _check_matrix, _num_data

__all__ = ["PPCA"]


class PPCA(ReferenceModel):
    r"""Probabilistic principal component analysis, with the closed-form MLE.

    For each datum, with :math:`q` latent dimensions and :math:`d` observed ones,

    .. math::

        z_n \sim \mathcal{N}(0, I_q), \qquad
        x_n \mid z_n \sim \mathcal{N}(W z_n + \mu, \sigma^2 I_d),
        \qquad\text{so}\qquad
        p(x_n) = \mathcal{N}(x_n; \mu, W W^\top + \sigma^2 I_d).

    With :math:`S = \frac1N \sum_n (x_n - \bar x)(x_n - \bar x)^\top` and its eigenvalues
    :math:`\lambda_1 \ge \dots \ge \lambda_d` (eigenvectors :math:`U`), the maximum-likelihood
    estimate is (Tipping & Bishop 1999, eqs. 7-8)

    .. math::

        \hat\mu = \bar x, \qquad
        \hat\sigma^2 = \frac{1}{d - q} \sum_{j > q} \lambda_j, \qquad
        \hat W = U_q (\Lambda_q - \hat\sigma^2 I_q)^{1/2},

    unique up to a rotation of :math:`\hat W` from the right.

    Parameters: ``W`` ``(d, q)``, ``mu`` ``(d,)``, ``sigma`` (positive scalar). Sites: latent
    ``"z"``, observed ``"x"``, in the plate ``"data"``.

    :param int data_dim: :math:`d`.
    :param int latent_dim: :math:`q < d`.
    :param dict init_params: initial values overriding the defaults (``W`` small and random
        from a fixed seed, ``mu = 0``, ``sigma = 1``).
    :param str prefix: prepended to the parameters' names in Pyro's param store.

    References:

    [1] Tipping & Bishop (1999), "Probabilistic principal component analysis", JRSS B 61(3).

    Example::

        >>> import pyro_lvmle as lv
        >>> model = lv.models.PPCA(data_dim=5, latent_dim=2)
        >>> data = model.simulate(200)
        >>> fit = model.mle(data)
        >>> bool(model.log_marginal(data, fit) >= model.log_marginal(data))
        True
    """

    param_names = ("W", "mu", "sigma")

    def __init__(self, data_dim: int, latent_dim: int, init_params=None, *, prefix: str = ""):
        _check_count(data_dim, "data_dim", "PPCA")
        _check_count(latent_dim, "latent_dim", "PPCA")
        if latent_dim >= data_dim:
            raise ValueError(
                f"PPCA: latent_dim={latent_dim} must be smaller than data_dim={data_dim}"
            )
        self.data_dim = data_dim
        self.latent_dim = latent_dim
        super().__init__(init_params, prefix=prefix)

    def __repr__(self) -> str:
        return f"PPCA(data_dim={self.data_dim}, latent_dim={self.latent_dim})"

    def _default_init(self, name, dtype, device):
        if name == "W":
            gen = torch.Generator().manual_seed(0)  # fixed, so every run starts alike
            w = 0.1 * torch.randn(self.data_dim, self.latent_dim, generator=gen, dtype=dtype)
            return w.to(device)
        if name == "mu":
            return torch.zeros(self.data_dim, dtype=dtype, device=device)
        return torch.ones((), dtype=dtype, device=device)

    def _constraint(self, name):
        return constraints.positive if name == "sigma" else constraints.real

    def model(self, data=None, *, num_data=None, subsample_size=None):
        """The Pyro model.

        :param torch.Tensor data: observations ``(N, d)``, or ``None`` to sample.
        :param int num_data: ``N`` when ``data`` is ``None``.
        :param int subsample_size: optional mini-batch size for the plate ``"data"``.
        """
        num_data = _num_data(data, num_data, self.data_dim, "PPCA")
        W = self._param("W", data)
        mu = self._param("mu", data)
        sigma = self._param("sigma", data)
        zeros = W.new_zeros(self.latent_dim)
        with pyro.plate("data", num_data, subsample_size=subsample_size) as idx:
            batch = None if data is None else data[idx]
            z = pyro.sample("z", dist.Normal(zeros, 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ W.T + mu, sigma).to_event(1), obs=batch)

    def marginal(self, params=None, *, like=None) -> dist.Distribution:
        r"""The exact marginal :math:`\mathcal{N}(\mu, W W^\top + \sigma^2 I)` of one datum."""
        p = self.params(params, like=like)
        diag = (p["sigma"] ** 2).expand(self.data_dim)
        return dist.LowRankMultivariateNormal(p["mu"], p["W"], diag)

    def simulate(self, num_data: int, params=None, *, return_latents: bool = False):
        """Draw ``num_data`` observations (and the latents, if asked).

        :param int num_data: how many data.
        :param dict params: parameter values; defaults as in :meth:`params`.
        :param bool return_latents: also return ``z``.
        """
        _check_count(num_data, "num_data", "PPCA.simulate")
        p = {k: v.detach() for k, v in self.params(params).items()}
        z = torch.randn(num_data, self.latent_dim, dtype=p["W"].dtype, device=p["W"].device)
        x = z @ p["W"].T + p["mu"] + p["sigma"] * torch.randn(
            num_data, self.data_dim, dtype=z.dtype, device=z.device
        )
        return (x, z) if return_latents else x

    def log_marginal(self, data, params=None, *, per_datum=False):
        r"""The exact :math:`\sum_n \log\mathcal{N}(x_n; \mu, W W^\top + \sigma^2 I)`.

        :param torch.Tensor data: shape ``(N, d)``.
        :param dict params: parameter values; defaults as in :meth:`params`.
        :param bool per_datum: return the ``N`` terms instead of their sum.
        """
        data = _check_matrix(data, "data", self.data_dim, "PPCA")
        p = self.params(params, like=data)
        # Woodbury and the matrix determinant lemma with M = W^T W + sigma^2 I_q:
        # (x-mu)^T C^{-1} (x-mu) = (|r|^2 - |L_M^{-1} W^T r|^2) / sigma^2,
        # log|C| = (d - q) log sigma^2 + log|M|; O(N d q), no d x d matrix.
        W, s2 = p["W"], p["sigma"] ** 2
        d, q = self.data_dim, self.latent_dim
        chol = torch.linalg.cholesky(W.T @ W + s2 * torch.eye(q, dtype=W.dtype, device=W.device))
        resid = data - p["mu"]
        proj = torch.linalg.solve_triangular(chol, (resid @ W).T, upper=False)  # (q, N)
        maha = (resid.pow(2).sum(-1) - proj.pow(2).sum(0)) / s2
        log_det = (d - q) * s2.log() + 2 * chol.diagonal().log().sum()
        terms = -0.5 * (maha + log_det + d * math.log(2 * math.pi))
        return terms if per_datum else terms.sum()

    def posterior(self, data, params=None) -> dist.Distribution:
        r"""The exact posterior :math:`p(z_n \mid x_n) = \mathcal{N}(M^{-1}W^\top(x_n - \mu),
        \sigma^2 M^{-1})` with :math:`M = W^\top W + \sigma^2 I_q`, batched over data.

        :param torch.Tensor data: shape ``(N, d)``.
        :param dict params: parameter values; defaults as in :meth:`params`.
        """
        data = _check_matrix(data, "data", self.data_dim, "PPCA")
        p = self.params(params, like=data)
        W, s2 = p["W"], p["sigma"] ** 2
        M = W.T @ W + s2 * torch.eye(self.latent_dim, dtype=W.dtype, device=W.device)
        M_inv = torch.linalg.inv(M)
        loc = (data - p["mu"]) @ W @ M_inv.T
        cov = s2 * M_inv
        return dist.MultivariateNormal(loc, covariance_matrix=cov.expand(len(data), -1, -1))

    def mle(self, data) -> dict[str, torch.Tensor]:
        """The closed-form maximum-likelihood estimate of Tipping & Bishop (1999).

        :param torch.Tensor data: shape ``(N, d)``.
        """
        data = _check_matrix(data, "data", self.data_dim, "PPCA")
        mu = data.mean(0)
        centred = data - mu
        cov = centred.T @ centred / len(data)
        eigvals, eigvecs = torch.linalg.eigh(cov)  # ascending
        eigvals, eigvecs = eigvals.flip(0), eigvecs.flip(1)
        q = self.latent_dim
        sigma2 = eigvals[q:].mean()
        # eigenvalues below round-off of the largest one are zero: no noise left for sigma
        if sigma2 <= eigvals[0] * self.data_dim * torch.finfo(data.dtype).eps:
            raise ValueError(
                "PPCA.mle: the data have no variance outside the first latent_dim principal "
                "directions, so sigma has no positive MLE; lower latent_dim"
            )
        W = eigvecs[:, :q] * (eigvals[:q] - sigma2).clamp(min=0.0).sqrt()
        return {"W": W, "mu": mu, "sigma": sigma2.sqrt()}
