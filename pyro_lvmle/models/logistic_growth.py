"""Logistic growth with a random asymptote, centered or non-centered (nlme's ``Orange`` model)."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints, transform_to

from .._checks import check_bool
from .base import ReferenceModel, _check_count, _check_matrix

__all__ = ["LogisticGrowth"]

#: the sampling ages (days) of R's ``datasets::Orange`` trees
ORANGE_TIMES = (118.0, 484.0, 664.0, 1004.0, 1231.0, 1372.0, 1582.0)


class LogisticGrowth(ReferenceModel):
    r"""Logistic growth curves with a random asymptote per subject, written centered or
    non-centered; the exact likelihood is that of a multivariate normal per subject.

    For subject :math:`i` measured at times :math:`t_1, \dots, t_T`, with
    :math:`f_j = 1 / (1 + e^{(x_{mid} - t_j) / s})`:

    .. math::

        \text{non-centered:}\quad & b_i \sim \mathcal{N}(0, \omega^2), \quad
            y_{ij} \mid b_i \sim \mathcal{N}\big((A + b_i) f_j, \sigma^2\big),\\
        \text{centered:}\quad & a_i \sim \mathcal{N}(A, \omega^2), \quad
            y_{ij} \mid a_i \sim \mathcal{N}(a_i f_j, \sigma^2).

    Both are the same model (nlme's ``Asym + b`` and the hierarchical form), but EM behaves
    very differently on them: non-centered, almost all the information about :math:`A` is
    carried by the latents (the fraction of missing information is close to one with few
    subjects), and EM's rate for :math:`A` is that fraction. The random effect enters
    linearly, so each subject's vector is normal:

    .. math::

        y_i \sim \mathcal{N}\big(A f,\ \omega^2 f f^\top + \sigma^2 I_T\big),

    which gives :meth:`log_marginal` exactly and :meth:`mle` by L-BFGS on it.

    Parameters: ``asym`` (:math:`A`), ``xmid``, ``scal`` (:math:`s`), ``omega`` (positive),
    ``sigma`` (positive). Sites: latent ``"b"`` (non-centered) or ``"a"`` (centered) and
    observed ``"y"``, in the plate ``"subject"``. Data: ``(S, T)`` measurements.

    :param bool centered: write the random effect centered (``a_i ~ N(asym, omega)``).
    :param times: the ``T`` sampling times (default: the ``Orange`` trees' ages in days).
    :param dict init_params: initial values overriding the defaults (``asym = 150``,
        ``xmid = 600``, ``scal = 300``, ``omega = 20``, ``sigma = 10``).
    :param str prefix: prepended to the parameters' names in Pyro's param store.

    References:

    [1] Pinheiro & Bates (2000), *Mixed-Effects Models in S and S-PLUS*, Springer (the
    ``Orange`` trees, section 8.2).

    [2] Papaspiliopoulos, Roberts & Skold (2007), "A general framework for the
    parametrization of hierarchical models", Statistical Science 22(1).

    Example::

        >>> import pyro_lvmle as lv
        >>> model = lv.models.LogisticGrowth()
        >>> data = model.simulate(6, params=model.truth)
        >>> tuple(data.shape), bool(model.log_marginal(data) < 0)
        ((6, 7), True)
    """

    param_names = ("asym", "xmid", "scal", "omega", "sigma")
    _defaults = {"asym": 150.0, "xmid": 600.0, "scal": 300.0, "omega": 20.0, "sigma": 10.0}
    #: the simulation truth (nlme's fit to the ``Orange`` trees)
    truth = {"asym": 192.0, "xmid": 728.0, "scal": 353.0, "omega": 31.6, "sigma": 7.8}

    def __init__(self, centered: bool = False, times=ORANGE_TIMES, init_params=None, *,
                 prefix: str = ""):
        check_bool("LogisticGrowth", "centered", centered)
        times = torch.as_tensor(times, dtype=torch.float64)
        if times.dim() != 1 or len(times) < 2 or not torch.isfinite(times).all():
            raise ValueError("LogisticGrowth: times must be a 1-d sequence of at least two "
                             f"finite sampling times, got {times!r}")
        self.centered, self.times = centered, times
        super().__init__(init_params, prefix=prefix)

    def __repr__(self) -> str:
        return f"LogisticGrowth(centered={self.centered})"

    def _default_init(self, name, dtype, device):
        return torch.tensor(self._defaults[name], dtype=dtype, device=device)

    def _constraint(self, name):
        return constraints.positive if name in ("omega", "sigma") else constraints.real

    def curve(self, xmid, scal, like):
        """The growth curve :math:`f_j` at the sampling times, ``(T,)``.

        :param xmid: the inflection time.
        :param scal: the time scale.
        :param torch.Tensor like: a tensor whose dtype and device the times are given.
        """
        times = self.times.to(dtype=like.dtype, device=like.device)
        return torch.sigmoid((times - xmid) / scal)

    def model(self, data=None, *, num_subjects=None):
        """The Pyro model, as a user writes it.

        :param torch.Tensor data: measurements ``(S, T)``, or ``None`` to sample.
        :param int num_subjects: ``S`` when ``data`` is ``None``.
        """
        num = self._num_subjects(data, num_subjects)
        asym = self._param("asym", data)
        xmid, scal = self._param("xmid", asym), self._param("scal", asym)
        omega, sigma = self._param("omega", asym), self._param("sigma", asym)
        f = self.curve(xmid, scal, asym)
        with pyro.plate("subject", num):
            if self.centered:
                a = pyro.sample("a", dist.Normal(asym, omega))
            else:
                a = asym + pyro.sample("b", dist.Normal(torch.zeros_like(asym), omega))
            pyro.sample("y", dist.Normal(a.unsqueeze(-1) * f, sigma).to_event(1), obs=data)

    def _num_subjects(self, data, num_subjects):
        if data is None:
            if num_subjects is None:
                raise ValueError("LogisticGrowth.model: pass data, or num_subjects to sample")
            return _check_count(num_subjects, "num_subjects", "LogisticGrowth.model")
        _check_matrix(data, "data", len(self.times), "LogisticGrowth", check_finite=False)
        return data.shape[0]

    def simulate(self, num_subjects: int, params=None, *, return_latents: bool = False):
        """Measurements of ``num_subjects`` subjects (and their asymptotes, if asked).

        :param int num_subjects: how many subjects.
        :param dict params: parameter values; defaults as in :meth:`params`
            (:attr:`truth` is the usual choice).
        :param bool return_latents: also return the subjects' asymptotes :math:`A + b_i`.
        """
        _check_count(num_subjects, "num_subjects", "LogisticGrowth.simulate")
        p = {k: v.detach() for k, v in self.params(params).items()}
        a = p["asym"] + p["omega"] * torch.randn(num_subjects, dtype=p["asym"].dtype)
        mean = a[:, None] * self.curve(p["xmid"], p["scal"], p["asym"])
        y = mean + p["sigma"] * torch.randn_like(mean)
        return (y, a) if return_latents else y

    def log_marginal(self, data, params=None, *, per_datum=False):
        r"""The exact :math:`\sum_i \log \mathcal{N}(y_i; A f, \omega^2 f f^\top + \sigma^2 I)`.

        Differentiable in the parameters.

        :param torch.Tensor data: ``(S, T)``.
        :param dict params: parameter values; defaults as in :meth:`params`.
        :param bool per_datum: return the ``S`` terms instead of their sum.
        """
        data = _check_matrix(data, "data", len(self.times), "LogisticGrowth")
        p = self.params(params, like=data)
        f = self.curve(p["xmid"], p["scal"], data)
        eye = torch.eye(len(f), dtype=data.dtype, device=data.device)
        cov = p["omega"] ** 2 * torch.outer(f, f) + p["sigma"] ** 2 * eye
        terms = dist.MultivariateNormal(p["asym"] * f, cov).log_prob(data)
        return terms if per_datum else terms.sum()

    def mle(self, data, *, max_iter: int = 500, tol: float = 1e-9) -> dict[str, torch.Tensor]:
        """The maximum-likelihood estimate: L-BFGS on the exact log-likelihood, on the
        unconstrained scale, started from the current parameters (see :meth:`params`).

        :param torch.Tensor data: ``(S, T)``.
        :param int max_iter: L-BFGS iteration cap (per round; up to five rounds).
        :param float tol: gradient tolerance.
        """
        data = _check_matrix(data, "data", len(self.times), "LogisticGrowth")
        free = {n: transform_to(self._constraint(n)).inv(v.detach()).clone().requires_grad_()
                for n, v in self.params(like=data).items()}

        def constrained():
            return {n: transform_to(self._constraint(n))(u) for n, u in free.items()}

        def closure():
            optim.zero_grad()
            loss = -self.log_marginal(data, constrained())
            loss.backward()
            return loss

        for _ in range(5):  # L-BFGS restarted: the scales differ by 100x (xmid vs omega)
            optim = torch.optim.LBFGS(list(free.values()), lr=1.0, max_iter=max_iter,
                                      tolerance_grad=tol, tolerance_change=1e-15,
                                      line_search_fn="strong_wolfe")
            optim.step(closure)
            grad = torch.cat([u.grad.reshape(-1) for u in free.values()])
            if grad.abs().max() < tol * 10:
                break
        return {n: v.detach() for n, v in constrained().items()}
