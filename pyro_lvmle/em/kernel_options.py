"""The ``kernel_options`` of the drivers with Markov chains (:class:`~pyro_lvmle.em.MCEM`,
:class:`~pyro_lvmle.em.SAEM`): the keyword arguments they pass on to
:class:`~pyro_lvmle.MCMCGradient` (and through it to
:func:`~pyro_lvmle.samplers.make_sampler`), checked when the driver is built.
"""

from __future__ import annotations

import inspect

from .._checks import check_int, check_positive, check_probability
from ..gradients import MCMCGradient
from ..samplers import make_sampler

__all__ = ["check_kernel_options"]


def check_kernel_options(where: str, options, taken=()) -> dict:
    """A driver's ``kernel_options`` for :class:`~pyro_lvmle.MCMCGradient`, checked: a dict of
    its keyword arguments, none of them one the driver sets itself (``taken``), with a finite
    positive ``step_size`` (an infinite one would reject every proposal: frozen chains).

    :param str where: the driver, for messages.
    :param options: what the user passed (``None`` for none).
    :param taken: the names the driver passes itself, with the driver argument to use instead.
    :returns: the options as a new dict.
    :raises TypeError: for options that are not a dict.
    :raises ValueError: naming an option the driver sets itself, an unknown one, or a bad value.

    Example::

        >>> check_kernel_options("MCEM", {"step_size": 0.1}, {"num_chains": "num_chains"})
        {'step_size': 0.1}
    """
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise TypeError(f"{where}: kernel_options must be a dict of MCMCGradient options such "
                        f"as {{'step_size': 0.1}}, got {type(options).__name__}")
    taken = dict(taken)
    signatures = (inspect.signature(MCMCGradient.__init__), inspect.signature(make_sampler))
    accepted = [n for sig in signatures for n, p in sig.parameters.items()
                if p.kind != p.VAR_KEYWORD and n not in ("self", "kernel", "model")
                and n not in taken]
    for key in options:
        if key in taken:
            raise ValueError(f"{where}: kernel_options sets {key!r}, which the driver sets "
                             f"itself; pass {taken[key]}= to {where} instead")
        if key not in accepted:
            raise ValueError(f"{where}: kernel_options has an unknown option {key!r}; "
                             f"MCMCGradient accepts {accepted}")
    if "step_size" in options:
        check_positive(where, "kernel_options['step_size']", options["step_size"])
    if "num_steps" in options:
        check_int(where, "kernel_options['num_steps']", options["num_steps"], low=1)
    if options.get("target_accept") is not None:
        check_probability(where, "kernel_options['target_accept']", options["target_accept"])
    if options.get("max_plate_nesting") is not None:
        check_int(where, "kernel_options['max_plate_nesting']", options["max_plate_nesting"])
    return dict(options)

