"""Sites of improper density (:class:`~pyro.distributions.ImproperUniform`): found behind
reshaping wrappers, and given values where a program must run without a guide."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro.poutine.messenger import Messenger
from torch.distributions import Independent, transform_to

__all__ = ["FlatLatents", "data_device", "improper_latents", "is_improper",
           "refuse_improper_latents"]


def is_improper(fn) -> bool:
    """Whether a distribution is an :class:`~pyro.distributions.ImproperUniform`, possibly
    made independent, masked, expanded or transformed.

    :param fn: a distribution.

    Example::

        >>> import pyro.distributions as dist
        >>> flat = dist.ImproperUniform(dist.constraints.real, (3,), ())
        >>> is_improper(flat.to_event(1)), is_improper(dist.Normal(0.0, 1.0))
        (True, False)
    """
    while True:
        if isinstance(fn, dist.ImproperUniform):
            return True
        inner = getattr(fn, "base_dist", None)
        if inner is None or not isinstance(fn, Independent | dist.MaskedDistribution |
                                           dist.ExpandedDistribution |
                                           torch.distributions.TransformedDistribution):
            return False
        fn = inner


def improper_latents(trace) -> list[str]:
    """The latent sites of a trace with an improper prior (a flat ``ImproperUniform``).

    :param trace: a Pyro trace.
    """
    return [name for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"] and is_improper(site["fn"])]


def refuse_improper_latents(trace) -> None:
    """Refuse latent sites with an improper prior, where chains must start from the prior
    and evidence is estimated from it.

    :param trace: a Pyro trace of the model (run under :class:`FlatLatents`).
    :raises ValueError: naming the sites and the fix.
    """
    flat = improper_latents(trace)
    if flat:
        raise ValueError(
            f"the latent sites {flat} have an improper prior (a flat ImproperUniform), from "
            "which chains cannot be started, nor evidence estimated: give them a proper prior "
            "(a wide Normal, say), or fit the model with a guide and an ELBO (SVI with "
            "lv.TraceIWAE_ELBO)")


class FlatLatents(Messenger):
    """Give each latent site of improper density (a flat ``ImproperUniform`` prior, which
    cannot be sampled) a value in its support, so that a model runs without its guide: the
    image of 0 in the unconstrained space, on ``device`` (the data's).

    :param device: where the values are made; torch's default device if ``None``.
    """

    def __init__(self, device=None):
        super().__init__()
        self.device = device

    def _pyro_sample(self, msg):
        if not msg["is_observed"] and msg["value"] is None and is_improper(msg["fn"]):
            fn = msg["fn"]
            msg["value"] = transform_to(fn.support)(torch.zeros(fn.shape(), device=self.device))


def data_device(args=(), kwargs=None):
    """The device of the first tensor among a program's arguments (``None`` if none).

    :param tuple args: positional arguments.
    :param dict kwargs: keyword arguments.
    """
    tensors = [a for a in (*args, *(kwargs or {}).values()) if torch.is_tensor(a)]
    return tensors[0].device if tensors else None
