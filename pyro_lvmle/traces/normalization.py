r"""Which observed sites of a model have an unnormalized density, and a check that says so.

An undirected (energy-based) model is written in Pyro with an observed site of an improper
density (:class:`~pyro.distributions.ImproperUniform`, log density 0) and
:func:`pyro.factor` adding :math:`\log \tilde p(x; \theta)`. Its log joint is then
:math:`\log \tilde p(x; \theta) = \log p(x; \theta) + \log Z(\theta)`: every ELBO treats it as
normalized, and its gradient misses :math:`-\nabla_\theta \log Z(\theta)`, the negative phase
(seed 001). Nothing in Pyro says so. :func:`check_model` does, and the package's own
ELBO-based losses and :class:`~pyro_lvmle.MCMCGradient` refuse such a model.

Fisher's identity, :math:`\nabla_\theta \log p(x) = \mathbb{E}_{p(z \mid x)}[\nabla_\theta
\log p(x, z)]`, also needs the latents' support not to move with :math:`\theta` (a moving
boundary adds a term the expectation does not hold): :func:`check_fixed_supports` refuses a
latent site such as ``Uniform(0, theta)`` for the MCMC gradient.
"""

from __future__ import annotations

import warnings

import pyro.distributions as dist
import pyro.poutine as poutine
import torch

from .improper import FlatLatents, data_device, is_improper
from .layout import is_target_site
from .params import _cuda_devices
from .particles import _DetachValues, _is_subsample
from .plate import _trace, subsample_factor

__all__ = ["check_fixed_supports", "check_model", "check_normalized", "check_undirected_target",
           "unnormalized_sites", "warn_constant_factors"]

_ADVICE = ("its density is unnormalized (an improper ImproperUniform observed site, "
           "pyro.factor supplying the log density), so log p(x) misses -log Z(theta) and an "
           "ELBO's gradient misses the negative phase: the gradient is silently wrong. Train "
           "it with lv.ContrastiveDivergence (SVI(model, lv.empty_guide, optim, "
           "loss=lv.ContrastiveDivergence(...))) and evaluate it with lv.log_partition")


def unnormalized_sites(trace) -> list[str]:
    """The observed sites of a trace whose distribution is improper
    (:class:`~pyro.distributions.ImproperUniform`, possibly reshaped or made independent).

    :param trace: a Pyro trace of the model.

    Example::

        >>> import pyro.poutine as poutine, pyro_lvmle as lv
        >>> rbm = lv.models.RBM(num_visible=3, num_hidden=2)
        >>> unnormalized_sites(poutine.trace(rbm.model).get_trace(rbm.simulate(2)))
        ['v']
    """
    return [name for name, site in trace.nodes.items()
            if site["type"] == "sample" and site["is_observed"] and not _is_subsample(site)
            and is_improper(site["fn"])]


def check_normalized(model, args=(), kwargs=None, *, where: str) -> None:
    """Raise if the model has an observed site of unnormalized density (one run of the model,
    hidden from outer handlers, leaving torch's random number generators as they were).

    :param model: a Pyro model.
    :param tuple args: its arguments.
    :param dict kwargs: its keyword arguments.
    :param str where: who checks, for the message.
    :raises ValueError: naming the sites and what to use instead.
    """
    with torch.random.fork_rng(devices=_cuda_devices()), poutine.block(), \
            FlatLatents(data_device(args, kwargs)):
        trace = poutine.trace(model).get_trace(*args, **(kwargs or {}))
    sites = unnormalized_sites(trace)
    if sites:
        raise ValueError(f"{where}: the model's observed sites {sites} have an improper "
                         f"density: {_ADVICE}")
    _warn_factors_of_discrete_data(model, args, kwargs, trace, where)


def _warn_factors_of_discrete_data(model, args, kwargs, trace, where) -> None:
    """Warn where a ``pyro.factor`` changes with the value of a discrete observed site: the
    density of the observations is then the site's times the factor's, a sum to one only if
    the user made it so (an RBM written as ``Bernoulli(0.5)`` observations plus its energy
    is not: log p(x) then misses log Z). Found by one more run of the model with every
    discrete observation moved to another value of its support; a continuous observation's
    factor (a Jacobian) is not looked at."""
    factors = {name: site["fn"].log_factor for name, site in trace.nodes.items()
               if site["type"] == "sample" and isinstance(site["fn"], dist.Unit)
               and torch.is_tensor(getattr(site["fn"], "log_factor", None))}
    if not factors:
        return
    moved = {}
    for name, site in trace.nodes.items():
        if site["type"] == "sample" and site["is_observed"] and name not in factors \
                and not _is_subsample(site) and site["fn"].support.is_discrete:
            other = _another_value(site["fn"].support, site["value"])
            if other is not None:
                moved[name] = other
    if not moved:
        return
    with torch.random.fork_rng(devices=_cuda_devices()), poutine.block(), \
            FlatLatents(data_device(args, kwargs)):
        again = poutine.trace(poutine.replay(poutine.condition(model, data=moved), trace=trace)
                              ).get_trace(*args, **(kwargs or {}))
    changed = [name for name, value in factors.items() if name in again.nodes
               and isinstance(again.nodes[name]["fn"], dist.Unit)
               and not torch.equal(again.nodes[name]["fn"].log_factor, value)]
    if changed:
        warnings.warn(
            f"{where}: the pyro.factor sites {changed} change with the discrete observed sites "
            f"{sorted(moved)}: the density of the observations is then the sites' times "
            "exp(factor), which sums to one only if you made it so. If the factor is an "
            "energy (an RBM written as Bernoulli observations plus its free energy), the "
            "model is undirected: every ELBO and log p(x) miss its log Z. Write it with an "
            "ImproperUniform observed site and use lv.ContrastiveDivergence and "
            "lv.log_partition", UserWarning, stacklevel=3)


def _another_value(support, value):
    """``value`` moved to another value of a discrete support, or ``None`` if unknown."""
    if support is dist.constraints.boolean:
        return 1 - value
    if isinstance(support, dist.constraints.integer_interval):
        low, high = support.lower_bound, support.upper_bound
        return low + (value - low + 1) % (high - low + 1) if high > low else None
    if support in (dist.constraints.nonnegative_integer, dist.constraints.positive_integer):
        return value + 1
    if support is dist.constraints.one_hot:
        return value.roll(1, -1)
    base = getattr(support, "base_constraint", None)  # an independent constraint
    return None if base is None else _another_value(base, value)


def check_model(model, guide=None, *args, **kwargs) -> None:
    r"""Check that an ELBO (Pyro's ``Trace_ELBO`` and friends, or this package's) gives the
    gradient of :math:`\log p(x; \theta)` for this model: refuse an undirected model.

    An observed site of improper density with ``pyro.factor`` supplying
    :math:`\log \tilde p(x; \theta)` makes the log joint unnormalized,

    .. math::

        \nabla_\theta \log p(x; \theta) = \nabla_\theta \log \tilde p(x; \theta)
            - \mathbb{E}_{p(x'; \theta)}\big[\nabla_\theta \log \tilde p(x'; \theta)\big],

    and every ELBO drops the second term (its normalizer :math:`Z(\theta)`) without a word.
    Use :class:`~pyro_lvmle.ContrastiveDivergence` for such a model. ``pyro.factor`` used as a
    likelihood term of a latent-variable model (its observations normalized elsewhere, or
    none) passes.

    :param model: the Pyro model, run once on the arguments (hidden from outer handlers).
    :param guide: the guide an ELBO would pair with it; not run (accepted so that the call
        reads like the loss's own ``(model, guide, *args)``).
    :param args: the model's arguments.
    :param kwargs: the model's keyword arguments.
    :raises ValueError: naming the unnormalized observed sites and what to use instead.

    References:

    [1] Goodfellow, Bengio & Courville (2016), Deep Learning, chapter 18 (seed 001).

    Example::

        >>> import pyro_lvmle as lv
        >>> model = lv.models.LinearGaussian()
        >>> lv.check_model(model, lv.empty_guide, model.simulate(3))  # passes
        >>> rbm = lv.models.RBM(num_visible=3, num_hidden=2)
        >>> lv.check_model(rbm.model, lv.empty_guide, rbm.simulate(3))
        Traceback (most recent call last):
        ...
        ValueError: check_model: the model's observed sites ['v'] have an improper density: ...
    """
    check_normalized(model, args, kwargs, where="check_model")


def check_fixed_supports(model, args=(), kwargs=None, *, where: str) -> None:
    """Raise if a latent site's support depends on the model's parameters (a bound computed
    from a ``pyro.param``), found on one run of the model with gradients recorded (the
    latents' draws detached: a bound set by another latent is allowed), hidden from outer
    handlers, torch's random number generators left as they were.

    :param model: a Pyro model.
    :param tuple args: its arguments.
    :param dict kwargs: its keyword arguments.
    :param str where: who checks, for the message.
    :raises ValueError: naming the sites and how to reparameterize them.

    Example::

        >>> import pyro, pyro.distributions as dist, torch
        >>> def model(x):
        ...     upper = pyro.param("upper", torch.tensor(2.0))
        ...     z = pyro.sample("z", dist.Uniform(0.0, upper))
        ...     pyro.sample("x", dist.Normal(z, 1.0), obs=x)
        >>> check_fixed_supports(model, (torch.tensor(0.5),), where="example")
        Traceback (most recent call last):
        ...
        ValueError: example: the support of latent sites ['z'] depends on the parameters ...
    """
    # latent values detached: a bound computed from another latent moves with it, not with
    # the parameters, and Fisher's identity holds on the joint support
    flat = FlatLatents(data_device(args, kwargs))  # a flat prior's latent gets a value
    with torch.enable_grad(), torch.random.fork_rng(devices=_cuda_devices()), poutine.block():
        trace = poutine.trace(_DetachValues()(flat(model))).get_trace(*args, **(kwargs or {}))
    moving = [name for name, site in trace.nodes.items()
              if site["type"] == "sample" and not site["is_observed"]
              and not _is_subsample(site) and _tracks_gradient(site["fn"].support)]
    if moving:
        raise ValueError(
            f"{where}: the support of latent sites {moving} depends on the parameters (a bound "
            "computed from a pyro.param): Fisher's identity misses the moving boundary's term, "
            "and the gradient would be silently wrong. Write the site on a fixed support and "
            "transform it (z = upper * pyro.sample('u', Uniform(0, 1)) for Uniform(0, upper)), "
            "or fit with an ELBO")


def _tracks_gradient(constraint, depth: int = 0) -> bool:
    """Whether a constraint holds a tensor that records gradients (nested constraints too)."""
    if depth > 5:
        return False
    for value in vars(constraint).values():
        if torch.is_tensor(value) and value.requires_grad:
            return True
        if isinstance(value, torch.distributions.constraints.Constraint) and \
                _tracks_gradient(value, depth + 1):
            return True
    return False


def check_undirected_target(trace) -> None:
    """Refuse what makes an undirected model's negative phase ambiguous or wrong, on a trace
    of the model: no observed site (a ``pyro.factor`` alone), a user's ``poutine.scale`` and
    observed values outside their support.

    :param trace: a trace of the model on its data.
    :raises ValueError: naming the sites.
    """
    if not any(is_target_site(site, True) and site["is_observed"]
               for site in trace.nodes.values()):
        raise ValueError(
            "the model has no observed site for the chains to move on: an undirected model "
            "observes its data from an improper density and adds its log density with "
            "pyro.factor (x = pyro.sample('x', ImproperUniform(support, (), event_shape), "
            "obs=data); pyro.factor('energy', -E(x)))")
    _refuse_scales(trace)
    _check_observed_support(trace)


def _refuse_scales(trace) -> None:
    """Refuse a ``poutine.scale`` (beyond a subsampled plate's ``N/B``) on an undirected
    model's sites: whether it weights the data's log-likelihood or tempers the density is
    the user's to say."""
    scaled = []
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or _is_subsample(site):
            continue
        scale = site["scale"] / subsample_factor(site)
        if not bool((torch.as_tensor(scale) == 1).all()):
            scaled.append(name)
    if scaled:
        raise ValueError(
            f"sites {scaled} carry a poutine.scale other than a subsampled plate's N/B. On an "
            "undirected model it could weight the data's log-likelihood (s log p(x): the "
            "chains and log Z of the unscaled density) or temper the density (p~(x)^s, "
            "another log Z), and the two give different gradients; say which: scale the loss "
            "or the learning rate to weight the data, subsample with pyro.plate(..., "
            "subsample_size=) for mini-batches, or multiply the pyro.factor by s to temper")


def _check_observed_support(trace) -> None:
    """Refuse observed values outside their site's support: an undirected model's chains
    live on the support, so a positive phase outside it compares unlike things."""
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or not site["is_observed"] or _is_subsample(site):
            continue
        inside = site["fn"].support.check(site["value"])
        if not bool(inside.all()):
            raise ValueError(
                f"site {name!r}: observed values lie outside its support "
                f"({site['fn'].support}), where the negative phase's chains live; check the "
                "data (binarize it for a boolean site, rescale it into an interval)")


def warn_constant_factors(potential, data, chains) -> bool:
    r"""Warn about ``pyro.factor`` sites that the chains' states do not reach: computed
    without any of the observed sites' values (from the parameters alone, or from the
    model's ``data`` argument instead of the value ``pyro.sample`` returns). Such a term is a
    constant of :math:`\tilde p` for the chains and cancels with :math:`\log Z`: a penalty
    on the parameters written so is silently lost (Pyro's ELBOs would apply it), an energy
    of ``data`` gives no gradient at all. Found on one run of the model under the chains'
    plate: the factor's value has no chain dimension, or only a broadcast one (the plate
    path; a vmapped model is not checked).

    :param potential: the chains' :class:`~pyro_lvmle.traces.Potential` (``uncondition``).
    :param data: the data's position ``(1, D)``, or ``None`` to make it.
    :param chains: chain positions ``(C, D)``.
    :returns: ``True`` (the check is made once).
    """
    if potential.vectorization != "plate":
        return True
    targets = {site.name for site in potential.sites}
    factors = [name for name in potential.likelihood_sites if name not in targets]
    if not factors:
        return True
    with torch.no_grad():
        if data is None:
            data = potential.initial_position(1)
        position = torch.cat([data, chains[:3]])
        trace, _ = _trace(potential, position, jacobian=True, beta=None,
                          enumerate=bool(potential.enumerated))
    dim = potential.max_plate_nesting + 1  # the chain plate's, from the right
    constant = []
    for name in factors:
        value = getattr(trace.nodes[name]["fn"], "log_factor", None)
        if not torch.is_tensor(value):
            continue
        if value.dim() < dim or value.shape[-dim] == 1 or value.stride(-dim) == 0:
            constant.append(name)
    if constant:
        warnings.warn(
            f"ContrastiveDivergence: the pyro.factor sites {constant} do not depend on the "
            "observed sites' values (a factor of the parameters alone, or of the model's data "
            "argument instead of the value pyro.sample returns): for the chains they are a "
            "constant of the unnormalized density, which cancels with log Z, so they add "
            "nothing to the gradient. Compute an energy from the sample site's value (x = "
            "pyro.sample('x', ..., obs=data); pyro.factor('energy', -E(x))); for a penalty "
            "on the parameters use the optimizer's weight_decay or add it to the loss "
            "outside the model", UserWarning, stacklevel=4)
    return True
