"""A binary restricted Boltzmann machine with an exact partition function by enumeration."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch.distributions import constraints

from .base import ReferenceModel, _check_count, _check_matrix

__all__ = ["RBM"]

#: Largest layer summed over exactly: 2**20 configurations (16 s on one CPU core with 784
#: units in the other layer; under a second with 64).
MAX_ENUMERATED_UNITS = 20
_CHUNK = 2**14  # configurations per enumeration chunk, to bound memory


class RBM(ReferenceModel):
    r"""A binary restricted Boltzmann machine, written in Pyro with ``pyro.factor``.

    Visible units :math:`v \in \{0,1\}^V`, hidden units :math:`h \in \{0,1\}^H`, energy
    :math:`E(v, h) = -b^\top v - c^\top h - v^\top W h`, and the hidden units summed out:

    .. math::

        \log \tilde p(v) = -F(v)
            = b^\top v + \sum_{j=1}^H \operatorname{softplus}(c_j + (v^\top W)_j),
        \qquad
        \log p(v) = -F(v) - \log Z, \quad Z = \sum_{v} e^{-F(v)}.

    The Pyro model observes ``"v"`` from an improper uniform density on the boolean cube
    (:class:`~pyro.distributions.ImproperUniform`, log density 0) and adds :math:`-F(v)` with
    :func:`pyro.factor` (site ``"free_energy"``): its
    trace's log joint is the unnormalized :math:`\log\tilde p(v)`, the positive phase of
    seed 001. :meth:`log_partition` computes :math:`\log Z` exactly by summing over the
    smaller layer (:math:`2^{\min(V, H)}` terms), when :math:`\min(V, H) \le 20`:

    .. math::

        \log Z = \operatorname{logsumexp}_{h} \Big(c^\top h
                 + \sum_{i=1}^V \operatorname{softplus}(b_i + (W h)_i)\Big).

    The block-Gibbs conditionals are :meth:`hidden_conditional` and
    :meth:`visible_conditional`:
    :math:`p(h_j = 1 \mid v) = \sigma(c_j + (v^\top W)_j)`,
    :math:`p(v_i = 1 \mid h) = \sigma(b_i + (W h)_i)`.

    Parameters: ``weights`` ``(V, H)``, ``visible_bias`` ``(V,)``, ``hidden_bias`` ``(H,)``.

    :param int num_visible: :math:`V`.
    :param int num_hidden: :math:`H`.
    :param dict init_params: initial values overriding the defaults (weights
        :math:`\mathcal{N}(0, 0.1^2)` from a fixed seed, biases 0).
    :param str prefix: prepended to the parameters' names in Pyro's param store.

    References:

    [1] Smolensky (1986); Hinton (2002), "Training products of experts by minimizing
    contrastive divergence", Neural Computation 14(8).

    [2] Goodfellow, Bengio & Courville (2016), Deep Learning, chapter 18 (seed 001).

    Example::

        >>> import pyro_lvmle as lv
        >>> rbm = lv.models.RBM(num_visible=6, num_hidden=4)
        >>> v = rbm.simulate(50)
        >>> v.shape
        torch.Size([50, 6])
        >>> bool(rbm.log_marginal(v) < 0)
        True
    """

    param_names = ("weights", "visible_bias", "hidden_bias")

    def __init__(self, num_visible: int, num_hidden: int, init_params=None, *, prefix: str = ""):
        _check_count(num_visible, "num_visible", "RBM")
        _check_count(num_hidden, "num_hidden", "RBM")
        self.num_visible = num_visible
        self.num_hidden = num_hidden
        super().__init__(init_params, prefix=prefix)

    def __repr__(self) -> str:
        return f"RBM(num_visible={self.num_visible}, num_hidden={self.num_hidden})"

    def _default_init(self, name, dtype, device):
        if name == "weights":
            gen = torch.Generator().manual_seed(0)  # fixed, so every run starts alike
            w = 0.1 * torch.randn(self.num_visible, self.num_hidden, generator=gen, dtype=dtype)
            return w.to(device)
        size = self.num_visible if name == "visible_bias" else self.num_hidden
        return torch.zeros(size, dtype=dtype, device=device)

    # ------------------------------------------------------------------ the model
    def model(self, data, *, subsample_size=None):
        """The Pyro model: an improper observed site ``"v"`` plus the factor :math:`-F(v)`.

        :param torch.Tensor data: binary observations ``(N, V)`` as a floating tensor.
        :param int subsample_size: optional mini-batch size for the plate ``"data"``.
        """
        if data is None:
            raise ValueError(
                "RBM.model needs observed data: an RBM's density is unnormalized, so the model "
                "cannot be sampled forwards; draw data with RBM.simulate() instead"
            )
        _check_matrix(data, "data", self.num_visible, "RBM", check_finite=False)
        weights = self._param("weights", data)
        visible_bias = self._param("visible_bias", data)
        hidden_bias = self._param("hidden_bias", data)
        cube = dist.ImproperUniform(constraints.boolean, (), (self.num_visible,))
        with pyro.plate("data", data.shape[0], subsample_size=subsample_size) as idx:
            v = pyro.sample("v", cube, obs=data[idx])
            neg_free_energy = v @ visible_bias + F.softplus(v @ weights + hidden_bias).sum(-1)
            pyro.factor("free_energy", neg_free_energy)

    # ------------------------------------------------------------------ exact answers
    def free_energy(self, v, params=None) -> torch.Tensor:
        r"""The free energy :math:`F(v)` of each row of ``v`` (any batch shape ``(..., V)``)."""
        p = self.params(params, like=v)
        return -(v @ p["visible_bias"]) - F.softplus(v @ p["weights"] + p["hidden_bias"]).sum(-1)

    def log_partition(self, params=None, *, like=None) -> torch.Tensor:
        r"""The exact :math:`\log Z`, summing over the smaller layer.

        :param dict params: parameter values; defaults as in :meth:`params`.
        :param torch.Tensor like: a tensor giving the dtype and device.
        :raises ValueError: when both layers have more than 20 units.
        """
        p = self.params(params, like=like)
        return torch.logsumexp(self._smaller_layer_log_weights(p), 0)

    def _smaller_layer_log_weights(self, p):
        """Unnormalized log marginal of every configuration of the smaller layer."""
        n = min(self.num_visible, self.num_hidden)
        if n > MAX_ENUMERATED_UNITS:
            raise ValueError(
                f"RBM: exact enumeration needs min(num_visible, num_hidden) <= "
                f"{MAX_ENUMERATED_UNITS}, got {n}; estimate log Z by annealed importance sampling"
            )
        W = p["weights"]
        if self.num_visible <= self.num_hidden:
            fn = lambda v: v @ p["visible_bias"] + F.softplus(v @ W + p["hidden_bias"]).sum(-1)  # noqa: E731
        else:
            fn = lambda h: h @ p["hidden_bias"] + F.softplus(h @ W.T + p["visible_bias"]).sum(-1)  # noqa: E731
        return torch.cat([fn(chunk) for chunk in _binary_configurations(n, W)])

    def log_marginal(self, data, params=None, *, per_datum=False):
        r"""The exact :math:`\sum_n \log p(v_n) = -\sum_n F(v_n) - N \log Z`.

        :param torch.Tensor data: binary observations ``(N, V)``.
        :param dict params: parameter values; defaults as in :meth:`params`.
        :param bool per_datum: return the ``N`` terms instead of their sum.
        """
        data = self._check_binary(data)
        p = self.params(params, like=data)
        terms = -self.free_energy(data, p) - self.log_partition(p)
        return terms if per_datum else terms.sum()

    def hidden_conditional(self, v, params=None) -> dist.Distribution:
        r"""Block-Gibbs conditional :math:`p(h \mid v)`, ``Bernoulli(...).to_event(1)``."""
        p = self.params(params, like=v)
        return dist.Bernoulli(logits=v @ p["weights"] + p["hidden_bias"]).to_event(1)

    def visible_conditional(self, h, params=None) -> dist.Distribution:
        r"""Block-Gibbs conditional :math:`p(v \mid h)`, ``Bernoulli(...).to_event(1)``."""
        p = self.params(params, like=h)
        return dist.Bernoulli(logits=h @ p["weights"].T + p["visible_bias"]).to_event(1)

    def simulate(self, num_data: int, params=None, *, return_latents: bool = False):
        """Exact draws of ``v`` (and ``h``, if asked) from the RBM.

        The smaller layer is drawn from its exact marginal by enumeration, the other from
        its conditional, so the draws are independent and exact (no Markov chain).

        :param int num_data: how many draws.
        :param dict params: parameter values; defaults as in :meth:`params`.
        :param bool return_latents: also return the hidden units.
        """
        _check_count(num_data, "num_data", "RBM.simulate")
        p = {k: v.detach() for k, v in self.params(params).items()}
        n = min(self.num_visible, self.num_hidden)
        index = dist.Categorical(logits=self._smaller_layer_log_weights(p)).sample((num_data,))
        bits = torch.arange(n, device=index.device)
        smaller = ((index.unsqueeze(-1) >> bits) & 1).to(p["weights"].dtype)
        if self.num_visible <= self.num_hidden:
            v = smaller
            h = self.hidden_conditional(v, p).sample()
        else:
            h = smaller
            v = self.visible_conditional(h, p).sample()
        return (v, h) if return_latents else v

    def _check_binary(self, data):
        data = _check_matrix(data, "data", self.num_visible, "RBM")
        if not ((data == 0) | (data == 1)).all():
            raise ValueError("RBM: data must hold only 0 and 1")
        return data


def _binary_configurations(n, like):
    """Every vector in {0,1}^n, in chunks, bit i of row k being bit i of the integer k."""
    bits = torch.arange(n, device=like.device)
    total = 2**n
    for start in range(0, total, _CHUNK):
        index = torch.arange(start, min(start + _CHUNK, total), device=like.device)
        yield ((index.unsqueeze(-1) >> bits) & 1).to(like.dtype)
