r"""The log marginal likelihood :math:`\log p(x; \theta)` of any Pyro model: one entry point,
four methods.

- ``"exact"``: a reference model's closed form (:meth:`ReferenceModel.log_marginal
  <pyro_lvmle.models.ReferenceModel.log_marginal>`), or Pyro's enumeration where every latent
  site is discrete with finite support.
- ``"is"``: importance sampling with the guide or the prior, per datum, chunked
  (:func:`~pyro_lvmle.evidence.importance.importance_log_marginal`).
- ``"ais"``: annealed importance sampling (Neal 2001) from the prior to the posterior along
  :meth:`Potential.tempered <pyro_lvmle.traces.Potential.tempered>`,

  .. math::

      \pi_\beta(z) \propto p(z)\, p(x \mid z)^\beta, \qquad \beta_0 = 0 < \dots < \beta_K = 1,

  with HMC transitions (step sizes per temperature from a pilot run,
  :func:`~pyro_lvmle.evidence.tuning.pilot_step_sizes`), batched over chains. Where the
  latents are local (every site in one plate over the data, not subsampled), the posterior
  factors over the data and so does the path: each datum's chains accept their moves on
  their own and carry their own weights (:class:`~pyro_lvmle.traces.LocalTarget`),
  giving an estimate of :math:`\log p(x_n)` per datum, and
  :math:`\log p(x) = \sum_n \log p(x_n)` with the variances of the data's estimates
  summed. Otherwise (a global latent) the accept is joint over all the data and one weight
  covers the whole batch: no per-datum values (each datum's factor of that weight is not a
  valid weight on its own).
- ``"bdmc"``: bidirectional Monte Carlo (Grosse et al. 2015). Data :math:`\tilde x` are
  simulated from the model together with the latents :math:`\tilde z` that produced them, an
  exact posterior draw. Forward AIS on :math:`\tilde x` gives a stochastic lower bound on
  :math:`\log p(\tilde x)`, reverse AIS started at :math:`\tilde z` a stochastic upper bound
  (:math:`-\log` of an unbiased estimate of :math:`1/p(\tilde x)`); their gap bounds the
  error of AIS with these settings on data like :math:`x`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import torch

from .._checks import check_int
from ..samplers import BatchedKernel, hmc_step
from ..traces import (
    Potential,
    check_normalized,
    conditioned,
    guess_max_plate_nesting,
    simulate,
)
from ..traces.local import LocalTarget, local_plate
from ..traces.params import enumerated_log_marginal, has_only_enumerable_latents
from .ais import annealed_importance_sampling, check_betas
from .estimate import Estimate, log_mean_exp
from .importance import importance_log_marginal
from .tuning import pilot_step_sizes

__all__ = ["log_marginal", "sigmoid_betas"]

METHODS = ("exact", "is", "ais", "bdmc")
#: default draws (``"is"``) or chains (``"ais"``, ``"bdmc"``)
DEFAULT_SAMPLES = {"is": 10_000, "ais": 200, "bdmc": 200}


def sigmoid_betas(num_betas: int, scale: float = 4.0) -> torch.Tensor:
    r"""The sigmoidal schedule of Grosse et al. (2015): :math:`\beta_k \propto
    \sigma(s (2k/K - 1))`, rescaled to :math:`[0, 1]`; denser at both ends than a linear one.

    :param int num_betas: :math:`K + 1 \ge 2`.
    :param float scale: :math:`s`; larger crowds more temperatures near 0 and 1.

    Example::

        >>> sigmoid_betas(3).tolist()
        [0.0, 0.5, 1.0]
    """
    num_betas = check_int("sigmoid_betas", "num_betas", num_betas, 2)
    raw = torch.sigmoid(scale * torch.linspace(-1.0, 1.0, num_betas))
    return (raw - raw[0]) / (raw[-1] - raw[0])


def log_marginal(model, *args, guide=None, method: str = "exact", num_samples: int | None = None,
                 num_betas: int = 200, betas=None, num_transitions: int = 1, num_steps: int = 5,
                 chunk_size: int = 1000, max_plate_nesting: int | None = None,
                 **kwargs) -> Estimate:
    r"""An estimate of :math:`\log p(x; \theta)` for ``model(*args, **kwargs)`` at the current
    parameters.

    .. math::

        \log p(x; \theta) = \log \int p(x, z; \theta)\, dz
        \ \ge\ \mathbb{E}\Big[\log \frac1S \sum_{s=1}^S w_s\Big]
        \quad\text{for unbiased weights } \mathbb{E}[w_s] = p(x; \theta).

    :param model: the Pyro model (a reference model of :mod:`pyro_lvmle.models` too).
    :param args: the model's arguments (the data).
    :param guide: ``"is"``: the proposal (a guide with every latent site); the prior if
        ``None``.
    :param str method: ``"exact"``, ``"is"``, ``"ais"`` or ``"bdmc"`` (see the module).
    :param int num_samples: draws (``"is"``, default 10000) or chains (``"ais"``,
        ``"bdmc"``, default 200).
    :param int num_betas: intermediate distributions plus one (``"ais"``, ``"bdmc"``), on
        :func:`sigmoid_betas`.
    :param betas: an explicit increasing schedule from 0 to 1 instead.
    :param int num_transitions: HMC transitions per intermediate distribution.
    :param int num_steps: leapfrog steps per HMC transition.
    :param int chunk_size: ``"is"``: draws evaluated together (bounds the memory).
    :param int max_plate_nesting: guessed if ``None``.
    :param kwargs: the model's keyword arguments.
    :returns: an :class:`~pyro_lvmle.evidence.Estimate`: ``value`` and ``stderr``; ``lower``
        for the sampling methods (their estimate is a stochastic lower bound) and ``upper``
        for ``"bdmc"``; ``per_datum`` for ``"exact"`` (closed forms), and for ``"is"``,
        ``"ais"`` and ``"bdmc"`` when the latents are local; ``diagnostics`` (``"is"``: ESS
        and PSIS :math:`\hat k` per datum; ``"ais"``: ESS (per datum when local),
        acceptance, step sizes; ``"bdmc"``: the ``gap``, ``upper_stderr``,
        ``upper_per_datum`` and the ``simulated`` data and latents). For ``"bdmc"`` the
        value and bounds are those of the simulated data, not of ``args``.
    :raises ValueError: for an unknown method, a model ``"exact"`` cannot handle (it says
        which method to use instead), or invalid counts.

    Example::

        >>> import torch, pyro_lvmle as lv
        >>> model = lv.models.LinearGaussian(dim=2)
        >>> x = model.simulate(5)
        >>> exact = lv.log_marginal(model, x)
        >>> estimate = lv.log_marginal(model, x, method="is", num_samples=5000)
        >>> bool(abs(estimate.value - exact.value) < 4 * estimate.stderr + 0.01)
        True

    References:

    [1] Neal (2001), "Annealed importance sampling", Statistics and Computing 11.

    [2] Grosse, Ghahramani & Adams (2015), "Sandwiching the marginal likelihood using
    bidirectional Monte Carlo", arXiv:1511.02543.

    [3] Wu, Burda, Salakhutdinov & Grosse (2017), "On the quantitative analysis of
    decoder-based generative models", ICLR.
    """
    if method not in METHODS:
        raise ValueError(f"log_marginal: method must be one of {list(METHODS)}, got {method!r}")
    where = f"log_marginal(method={method!r})"
    if guide is not None and not callable(guide):
        raise TypeError(f"{where}: guide must be a Pyro guide (a callable taking the model's "
                        f"arguments) or None for the prior, got {guide!r}")
    if method == "exact":
        return _exact(model, args, kwargs, max_plate_nesting)
    check_normalized(model, args, kwargs, where=where)
    num_samples = DEFAULT_SAMPLES[method] if num_samples is None else num_samples
    num_samples = check_int(where, "num_samples", num_samples, 2)
    if method == "is":
        return importance_log_marginal(model, args, kwargs, guide=guide, num_samples=num_samples,
                                       chunk_size=chunk_size,
                                       max_plate_nesting=max_plate_nesting)
    check_int(where, "num_transitions", num_transitions, 1)
    check_int(where, "num_steps", num_steps, 1)
    if betas is None:
        betas = sigmoid_betas(check_int(where, "num_betas", num_betas, 2))
    betas = check_betas(where, betas, from_zero_to_one=True)
    settings = {"num_transitions": num_transitions, "num_steps": num_steps}
    potential = Potential(model, args, kwargs, max_plate_nesting=max_plate_nesting)
    if potential.subsampled_plates:
        raise ValueError(f"{where}: the plates {sorted(potential.subsampled_plates)} are "
                         "subsampled; the marginal likelihood needs every datum (drop "
                         "subsample_size)")
    if method == "ais":
        return _ais(potential, num_samples, betas, **settings)
    return _bdmc(model, args, kwargs, num_samples, betas, max_plate_nesting, **settings)


def _exact(model, args, kwargs, max_plate_nesting):
    closed_form = getattr(model, "log_marginal", None)
    if callable(closed_form):
        terms = closed_form(*args, per_datum=True)
        return Estimate(terms.sum(), terms.new_zeros(()), per_datum=terms, method="exact")
    check_normalized(model, args, kwargs, where="log_marginal(method='exact')")
    from pyro.infer import config_enumerate

    enumerated = config_enumerate(model)
    if not has_only_enumerable_latents(enumerated, *args, **kwargs):
        raise ValueError("log_marginal(method='exact'): the model has latent sites Pyro cannot "
                         "enumerate (continuous, or unbounded discrete) and no closed form; "
                         "use method='is' with a guide, 'ais', or 'bdmc' to check AIS")
    if max_plate_nesting is None:
        max_plate_nesting = guess_max_plate_nesting(model, lambda *a, **k: None, args, kwargs)
    try:
        value = enumerated_log_marginal(enumerated, *args, max_plate_nesting=max_plate_nesting,
                                        **kwargs)
    except ValueError as error:  # a model without parameters: Pyro's value, not differentiable
        if "cannot be differentiated" not in str(error):
            raise
        from pyro.infer import TraceEnum_ELBO

        loss = TraceEnum_ELBO(max_plate_nesting=max_plate_nesting).loss(
            enumerated, lambda *a, **k: None, *args, **kwargs)
        value = torch.tensor(-loss)
    return Estimate(value, value.new_zeros(()), method="exact")


def _sampler(num_steps):
    # a jittered trajectory length: a fixed one can be nearly periodic on a Gaussian target
    # (Neal 2011, sec. 5.4.2.2); no adaptation during the run (AIS's weights stay unbiased)
    return BatchedKernel(partial(hmc_step, jitter=0.2), step_size=0.1, adapt_step_size=False,
                         num_steps=num_steps)


class _View(NamedTuple):
    """How AIS sees a potential: the path of targets, the split of its positions into chains,
    and the number of data each chain's weight is split into (``None``: one joint weight)."""

    path: Callable
    split: Callable
    num_data: int | None


def _view(potential) -> _View:
    """Per datum where the latents are local (:class:`~pyro_lvmle.traces.LocalTarget`: each
    datum's moves accepted on their own, each its own weight), else the joint potential."""
    plate = local_plate(potential)
    if plate is None:
        return _View(potential.tempered, lambda position: position, None)
    local = LocalTarget(potential, plate)
    return _View(local.tempered, local.split, local.num_data)


def _tuned(potential, view, betas, num_steps, num_transitions):
    """The sampler and the pilot's step sizes and masses along ``betas`` (increasing)."""
    sampler = _sampler(num_steps)
    # a pilot of 32 chains: the step size is shared, a few dozen acceptances per temperature
    # are enough to steer it
    pilot = pilot_step_sizes(view.path, view.split(potential.sample_prior(32)), betas, sampler,
                             num_transitions=max(num_transitions, 2), adapt_mass=True)
    return sampler, pilot


def _estimate(result, view, sign=1.0):
    """The estimate of ``sign`` times the log mean weight: per datum, summed, where the view
    splits the weights by datum."""
    if view.num_data is None:
        value, stderr = result.estimate.value, result.estimate.stderr
        return sign * value, stderr, None, result.estimate.diagnostics
    log_weights = result.log_weights.reshape(-1, view.num_data)
    values, stderrs = log_mean_exp(log_weights, 0)
    ess = (2 * torch.logsumexp(log_weights, 0) - torch.logsumexp(2 * log_weights, 0)).exp()
    diagnostics = dict(result.estimate.diagnostics, ess=ess, min_ess=float(ess.min()),
                       num_chains=log_weights.shape[0], stderr=stderrs)
    return sign * values.sum(), stderrs.pow(2).sum().sqrt(), sign * values, diagnostics


def _ais(potential, num_chains, betas, *, num_transitions, num_steps, tuned=None):
    view = _view(potential)
    sampler, pilot = tuned or _tuned(potential, view, betas, num_steps, num_transitions)
    start = view.split(potential.sample_prior(num_chains))
    result = annealed_importance_sampling(view.path, start, betas.to(start), sampler,
                                          num_transitions=num_transitions,
                                          step_sizes=pilot.step_sizes,
                                          inverse_masses=pilot.inverse_masses)
    value, stderr, per_datum, diagnostics = _estimate(result, view)
    return Estimate(value, stderr, lower=value, per_datum=per_datum, method="ais",
                    diagnostics=dict(diagnostics, step_sizes=pilot.step_sizes))


def _bdmc(model, args, kwargs, num_chains, betas, max_plate_nesting, *, num_transitions,
          num_steps):
    observed, latent = simulate(model, args, kwargs)
    potential = Potential(conditioned(model, observed), args, kwargs,
                          max_plate_nesting=max_plate_nesting)
    view = _view(potential)
    tuned = _tuned(potential, view, betas, num_steps, num_transitions)
    forward = _ais(potential, num_chains, betas, num_transitions=num_transitions,
                   num_steps=num_steps, tuned=tuned)
    sampler, pilot = tuned
    exact_draw = potential.pack({site.name: latent[site.name].unsqueeze(0)
                                 for site in potential.sites})
    start = view.split(exact_draw.expand(num_chains, -1))
    backward = annealed_importance_sampling(view.path, start, betas.flip(0).to(start),
                                            sampler, num_transitions=num_transitions,
                                            step_sizes=pilot.step_sizes.flip(0),
                                            inverse_masses=pilot.inverse_masses.flip(0))
    upper, upper_stderr, upper_per_datum, _ = _estimate(backward, view, sign=-1.0)
    gap = float(upper - forward.value)
    diagnostics = dict(forward.diagnostics, gap=gap, upper_stderr=upper_stderr,
                       upper_per_datum=upper_per_datum,
                       simulated={"observed": observed, "latent": latent},
                       reverse_accept_prob=float(backward.accept_prob.mean())
                       if backward.accept_prob.numel() else math.nan)
    return Estimate(forward.value, forward.stderr, lower=forward.value, upper=upper,
                    per_datum=forward.per_datum, method="bdmc", diagnostics=diagnostics)
