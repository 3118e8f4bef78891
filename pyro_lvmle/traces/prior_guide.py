"""A guide that samples every latent site from the model's own prior."""

from __future__ import annotations

import pyro.poutine as poutine
from pyro.poutine.messenger import Messenger

from .improper import is_improper

__all__ = ["PriorGuide"]


class PriorGuide:
    r"""The guide :math:`q(z) = p(z; \theta)`: the model run with its observations hidden.

    With it, the importance weights reduce to the likelihood,
    :math:`w_k = p(x, z_k) / p(z_k) = p(x \mid z_k)`, and
    ``TraceIWAE_ELBO(num_particles=K)`` is the plain Monte Carlo estimate of seed 000,

    .. math::

        \log p(x; \theta) \approx \log \frac1K \sum_{k=1}^K p(x \mid z_k),
        \qquad z_k \sim p(z; \theta),

    differentiated through reparameterized prior draws. The guide shares the model's
    parameters; every objective accounts for that (DReG splits their direct and path
    derivatives, reweighted wake-sleep gives them wake-theta alone), so any estimator works.
    A site the model marks for enumeration (``infer={'enumerate': 'parallel'}``) is sampled
    from its prior like the others: a guide samples its sites.

    :param model: the Pyro model whose prior to sample.

    References:

    [1] Kingma (2012), answer to "How to compute the gradient of the marginal likelihood of
    a latent variable model", Cross Validated (seed 000).

    Example::

        >>> import pyro_lvmle as lv
        >>> model = lv.models.LinearGaussian()
        >>> data = model.simulate(10)
        >>> loss = lv.TraceIWAE_ELBO(num_particles=100).loss(model, lv.PriorGuide(model), data)
        >>> abs(loss + model.log_marginal(data).item()) < 1.0
        True
    """

    def __init__(self, model):
        if not callable(model):
            raise TypeError(f"PriorGuide: model must be callable, got {type(model).__name__}")
        self.model = model

    def __call__(self, *args, **kwargs):
        hidden = poutine.block(self.model, hide_fn=lambda msg: msg.get("is_observed", False))
        # a guide samples its sites: the model's marks to enumerate them are not the guide's
        return poutine.infer_config(_RefuseImproper()(hidden), _sampled)(*args, **kwargs)

    def __repr__(self) -> str:
        return f"PriorGuide({self.model!r})"


def _sampled(msg) -> dict:
    return {"enumerate": None} if msg["type"] == "sample" else {}


class _RefuseImproper(Messenger):
    """Name a latent site whose prior is improper: it cannot be sampled, nor be a proposal."""

    def _pyro_sample(self, msg):
        if not msg["is_observed"] and msg["value"] is None and is_improper(msg["fn"]):
            raise ValueError(
                f"PriorGuide: the latent site {msg['name']!r} has an improper prior (a flat "
                "ImproperUniform), which cannot be sampled nor serve as a proposal: give it "
                "a proper prior (a wide Normal, say), or pass a guide that samples it")
