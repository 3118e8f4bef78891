"""Data simulated from a model, with the latents that produced them: what bidirectional Monte
Carlo needs (an exact posterior draw for the simulated data is the latent it was drawn with).
"""

from __future__ import annotations

import pyro.distributions as dist
import pyro.poutine as poutine

from .particles import _is_subsample

__all__ = ["conditioned", "simulate"]


def simulate(model, args=(), kwargs=None) -> tuple[dict, dict]:
    """One joint draw of a model's latent and observed sites: every observation is redrawn
    from the model (as :func:`pyro.poutine.uncondition` does) at the current parameters.

    :param model: a Pyro model.
    :param tuple args: its arguments (the data give the shapes).
    :param dict kwargs: its keyword arguments.
    :returns: ``(observed, latent)``: site name to value; ``latent`` is an exact draw of the
        posterior given ``observed``.
    :raises ValueError: if an observed site's distribution cannot be sampled (an improper
        one, as in an undirected model).

    Example::

        >>> import pyro_lvmle as lv
        >>> model = lv.models.LinearGaussian(dim=2)
        >>> observed, latent = simulate(model, (model.simulate(3),))
        >>> observed["x"].shape, latent["z"].shape
        (torch.Size([3, 2]), torch.Size([3, 2]))
    """
    try:
        with poutine.block():
            trace = poutine.trace(poutine.uncondition(model)).get_trace(*args,
                                                                       **dict(kwargs or {}))
    except NotImplementedError as error:
        raise ValueError(f"simulate: the model's observed sites cannot all be sampled "
                         f"({str(error).splitlines()[0]}); simulation needs a directed model "
                         "with proper distributions") from error
    observed, latent = {}, {}
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or _is_subsample(site) or isinstance(site["fn"], dist.Unit) \
                or site["infer"].get("_deterministic"):
            continue
        (observed if site["infer"].get("was_observed") else latent)[name] = \
            site["value"].detach()
    return observed, latent


def conditioned(model, observed: dict):
    """The model with its observed sites set to ``observed`` (e.g. from :func:`simulate`).

    :param model: a Pyro model.
    :param dict observed: site name to value.
    """
    return poutine.condition(model, data=observed)
