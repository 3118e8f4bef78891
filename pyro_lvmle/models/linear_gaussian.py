"""Seed 000's model: z ~ N(w, I), x | z ~ N(z, sigma^2 I), per datum."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints

from .._checks import check_int, check_positive
from .base import ReferenceModel, _check_count, _check_matrix, _num_data

__all__ = ["LinearGaussian"]


class LinearGaussian(ReferenceModel):
    r"""The linear-Gaussian latent-variable model of seed 000, with every answer in closed form.

    For each datum :math:`n = 1, \dots, N` and dimension :math:`D`,

    .. math::

        z_n \sim \mathcal{N}(w, I_D), \qquad x_n \mid z_n \sim \mathcal{N}(z_n, \sigma^2 I_D),

    so the latent integrates out exactly:

    .. math::

        p(x_n; w, \sigma) = \mathcal{N}(x_n; w, (1 + \sigma^2) I_D), \qquad
        p(z_n \mid x_n) = \mathcal{N}\Big(\frac{\sigma^2 w + x_n}{1 + \sigma^2},
                                          \frac{\sigma^2}{1 + \sigma^2} I_D\Big),

    and the maximum-likelihood estimate is :math:`\hat w = \bar x` and
    :math:`\hat\sigma^2 = \max(0, \tfrac{1}{ND}\sum_n \|x_n - \bar x\|^2 - 1)`.

    Parameters (Pyro param store names): ``w`` of shape ``(D,)`` and ``sigma`` (positive
    scalar; a fixed constant when ``learn_sigma=False``). The latent site is ``"z"``, the
    observed one ``"x"``, both in the plate ``"data"``.

    :param int dim: the dimension :math:`D` of :math:`z_n` and :math:`x_n`.
    :param float sigma: the initial (or, with ``learn_sigma=False``, fixed) noise scale.
    :param bool learn_sigma: whether ``sigma`` is a parameter or a constant.
    :param dict init_params: initial values overriding the defaults (``w = 0``).
    :param str prefix: prepended to the parameters' names in Pyro's param store.

    References:

    [1] Kingma (2012), answer to "How to compute the gradient of the marginal likelihood
    of a latent variable model", Cross Validated (seed 000 of this project).

    [2] Kuntz, Lim & Johansen (2023), "Particle algorithms for maximum likelihood training
    of latent variable models", AISTATS (the toy with :math:`\sigma = 1`).

    Example::

        >>> import torch, pyro_lvmle as lv
        >>> model = lv.models.LinearGaussian(dim=2)
        >>> data = model.simulate(500, params={"w": torch.tensor([1.0, -1.0])})
        >>> model.mle(data)["w"].shape
        torch.Size([2])
    """

    def __init__(
        self, dim: int = 1, sigma: float = 1.0, learn_sigma: bool = True, init_params=None, *,
        prefix: str = "",
    ):
        check_int("LinearGaussian", "dim", dim, low=1)
        check_positive("LinearGaussian", "sigma", sigma)
        self.dim = dim
        self.sigma = float(sigma)
        self.learn_sigma = bool(learn_sigma)
        self.param_names = ("w", "sigma") if learn_sigma else ("w",)
        super().__init__(init_params, prefix=prefix)

    def __repr__(self) -> str:
        return f"LinearGaussian(dim={self.dim}, sigma={self.sigma}, learn_sigma={self.learn_sigma})"

    def _default_init(self, name, dtype, device):
        if name == "w":
            return torch.zeros(self.dim, dtype=dtype, device=device)
        return torch.tensor(self.sigma, dtype=dtype, device=device)

    def _constraint(self, name):
        return constraints.positive if name == "sigma" else constraints.real

    def _sigma(self, params, like):
        if self.learn_sigma:
            return params["sigma"]
        return torch.tensor(self.sigma, dtype=like.dtype, device=like.device)

    def model(self, data=None, *, num_data=None, subsample_size=None):
        """The Pyro model.

        :param torch.Tensor data: observations of shape ``(N, D)``, or ``None`` to sample.
        :param int num_data: ``N`` when ``data`` is ``None``.
        :param int subsample_size: optional mini-batch size for the plate ``"data"``.
        """
        num_data = _num_data(data, num_data, self.dim, "LinearGaussian")
        w = self._param("w", data)
        sigma = self._param("sigma", w) if self.learn_sigma else self.sigma
        with pyro.plate("data", num_data, subsample_size=subsample_size) as idx:
            batch = None if data is None else data[idx]
            z = pyro.sample("z", dist.Normal(w, 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, sigma).to_event(1), obs=batch)

    def simulate(self, num_data: int, params=None, *, return_latents: bool = False):
        """Draw ``num_data`` observations (and the latents, if asked) from the model.

        :param int num_data: how many data.
        :param dict params: parameter values; defaults as in :meth:`params`.
        :param bool return_latents: also return ``z``.
        :returns: ``x`` of shape ``(num_data, D)``, or ``(x, z)``.
        """
        _check_count(num_data, "num_data", "LinearGaussian.simulate")
        p = self.params(params)
        w = p["w"].detach()
        sigma = self._sigma(p, w).detach()
        z = w + torch.randn(num_data, self.dim, dtype=w.dtype, device=w.device)
        x = z + sigma * torch.randn_like(z)
        return (x, z) if return_latents else x

    def log_marginal(self, data, params=None, *, per_datum=False):
        r"""The exact :math:`\log p(x; w, \sigma) = \sum_n \log\mathcal{N}(x_n; w, (1+\sigma^2) I)`.

        :param torch.Tensor data: shape ``(N, D)``.
        :param dict params: parameter values; defaults as in :meth:`params`.
        :param bool per_datum: return the ``N`` terms instead of their sum.
        """
        data = _check_matrix(data, "data", self.dim, "LinearGaussian")
        p = self.params(params, like=data)
        var = 1.0 + self._sigma(p, data) ** 2
        terms = dist.Normal(p["w"], var.sqrt()).log_prob(data).sum(-1)
        return terms if per_datum else terms.sum()

    def grad_log_marginal(self, data, params=None) -> dict[str, torch.Tensor]:
        r"""The exact gradient of :meth:`log_marginal`, in closed form.

        .. math::

            \frac{\partial \log p}{\partial w} = \sum_n \frac{x_n - w}{1 + \sigma^2}, \qquad
            \frac{\partial \log p}{\partial \sigma} = \sum_n \Big(
                \frac{\sigma \|x_n - w\|^2}{(1+\sigma^2)^2} - \frac{D\sigma}{1 + \sigma^2}\Big).

        :param torch.Tensor data: shape ``(N, D)``.
        :param dict params: parameter values; defaults as in :meth:`params`.
        :returns: a dict with the gradient for each name in :attr:`param_names`.
        """
        data = _check_matrix(data, "data", self.dim, "LinearGaussian")
        p = {k: v.detach() for k, v in self.params(params, like=data).items()}
        sigma = self._sigma(p, data)
        var = 1.0 + sigma**2
        resid = data - p["w"]
        grads = {"w": resid.sum(0) / var}
        if self.learn_sigma:
            sq = resid.pow(2).sum(-1)
            grads["sigma"] = (sigma * sq / var**2 - self.dim * sigma / var).sum()
        return grads

    def posterior(self, data, params=None) -> dist.Distribution:
        """The exact posterior :math:`p(z_n \\mid x_n)`, batched over data.

        :param torch.Tensor data: shape ``(N, D)``.
        :param dict params: parameter values; defaults as in :meth:`params`.
        :returns: a ``Normal(...).to_event(1)`` with batch shape ``(N,)``.
        """
        data = _check_matrix(data, "data", self.dim, "LinearGaussian")
        p = self.params(params, like=data)
        s2 = self._sigma(p, data) ** 2
        loc = (s2 * p["w"] + data) / (1.0 + s2)
        scale = (s2 / (1.0 + s2)).sqrt().expand_as(loc)
        return dist.Normal(loc, scale).to_event(1)

    def mle(self, data) -> dict[str, torch.Tensor]:
        r"""The closed-form maximum-likelihood estimate.

        :math:`\hat\sigma` is 0 (the boundary) when the sample variance per dimension is at
        most 1: no positive noise scale explains data less spread than the prior.

        :param torch.Tensor data: shape ``(N, D)``.
        """
        data = _check_matrix(data, "data", self.dim, "LinearGaussian")
        w = data.mean(0)
        out = {"w": w}
        if self.learn_sigma:
            spread = (data - w).pow(2).sum(-1).mean() / self.dim
            out["sigma"] = (spread - 1.0).clamp(min=0.0).sqrt()
        return out

