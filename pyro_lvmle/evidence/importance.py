r"""Importance sampling of :math:`\log p(x)`, per datum, in bounded memory.

With draws :math:`z_s \sim q` from a guide (or the prior) and weights
:math:`w_s = p(x, z_s) / q(z_s)`,

.. math::

    \widehat{p(x)} = \frac1S \sum_{s=1}^S w_s, \qquad
    \mathbb{E}_q\big[\widehat{p(x)}\big] = p(x),

and where every site lives in a data plate (local latents) the weights factor over the data,
:math:`w_s = \prod_n w_{s,n}`, so each datum gets its own estimate of :math:`p(x_n)` from the
same draws, and :math:`\log p(x) = \sum_n \log p(x_n)`: far less variance than one weight
for the whole batch. That rests on the plate's promise of independence, checked first
(:func:`~pyro_lvmle.traces.units.independent_units`: each datum's log density under the
model must depend on its own latents only); where it fails, one weight is kept.

The draws come ``chunk_size`` at a time; what is kept between chunks is
per datum two running log-sum-exps (of :math:`w` and :math:`w^2`: the estimate, its
delta-method standard error and the effective sample size
:math:`(\sum_s w_s)^2 / \sum_s w_s^2`) and the largest :math:`M = \lceil\min(S/5, 3\sqrt S)
\rceil + 1` log weights, from which the Pareto-smoothed importance sampling diagnostic
:math:`\hat k` is fitted (Vehtari et al. 2015, with :func:`pyro.ops.stats.fit_generalized_pareto`
as in :func:`pyro.infer.importance.psis_diagnostic`): memory grows like :math:`\sqrt S`, not
:math:`S`. :math:`\hat k < 0.5`: the estimate is reliable; :math:`\hat k > 0.7`: the guide's
tails are too light for it, whatever its standard error says.
"""

from __future__ import annotations

import math
import warnings

import torch
from pyro.ops.stats import fit_generalized_pareto

from .._checks import check_int
from ..traces import PriorGuide, guess_max_plate_nesting, particle_terms
from ..traces.units import independent_units
from ..traces.vectorized import stacked_particle_terms, vectorizes
from .estimate import Estimate

__all__ = ["importance_log_marginal", "psis_k_hat"]


def _log_weights(terms) -> torch.Tensor:
    """The log weights ``(K, units)`` of one chunk of particles."""
    return (terms.log_p - terms.log_q).reshape(terms.log_p.shape[0], -1)


def _tail_size(num_samples: int) -> int:
    # PSIS's tail: min(S / 5, 3 sqrt(S)) draws (Vehtari et al. 2015, as Pyro's psis_diagnostic)
    return int(math.ceil(min(0.2 * num_samples, 3.0 * math.sqrt(num_samples))))


def psis_k_hat(top_log_weights: torch.Tensor, num_samples: int) -> float:
    """The Pareto-smoothed importance sampling diagnostic :math:`\\hat k` of one set of
    weights, from its largest log weights.

    :param torch.Tensor top_log_weights: at least the :math:`M + 1` largest of the ``S`` log
        weights, ``M`` the PSIS tail size :math:`\\lceil\\min(S/5, 3\\sqrt S)\\rceil`.
    :param int num_samples: ``S``, the number of weights they came from.
    :returns: :math:`\\hat k`, or ``nan`` when fewer than 10 tail weights are distinct
        enough to fit.

    Example: weights with a heavy (Pareto, :math:`k = 1`) tail::

        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> log_w = -torch.rand(10_000).log()  # log of Pareto(1) draws
        >>> bool(abs(psis_k_hat(log_w, 10_000) - 1.0) < 0.25)
        True
    """
    ordered = top_log_weights.sort(descending=True).values
    ordered = ordered - ordered[0]
    tail = _tail_size(num_samples)
    if ordered.numel() <= tail:
        raise ValueError(f"psis_k_hat: need the {tail + 1} largest of {num_samples} log "
                         f"weights, got {ordered.numel()}")
    cutoff = max(math.log(1e-15), float(ordered[tail]))
    largest = ordered[:tail]
    largest = largest[largest > cutoff]
    if largest.numel() < 10:
        return math.nan
    # Pyro's fit builds its grid on the CPU
    k, _ = fit_generalized_pareto((largest.exp() - math.exp(cutoff)).cpu())
    return float(k)


def importance_log_marginal(model, args=(), kwargs=None, *, guide=None,
                            num_samples: int = 1000, chunk_size: int = 1000,
                            max_plate_nesting: int | None = None) -> Estimate:
    r"""Importance sampling estimate of :math:`\log p(x)` with the guide (or the prior),
    per datum where the latents are local, in chunks.

    :param model: the Pyro model.
    :param tuple args: its arguments (the data).
    :param dict kwargs: its keyword arguments.
    :param guide: a guide with every latent site; :class:`~pyro_lvmle.PriorGuide` of the
        model if ``None``.
    :param int num_samples: draws :math:`S` (per datum, when per datum).
    :param int chunk_size: draws evaluated together (vectorized); memory is bounded by it.
    :param int max_plate_nesting: guessed if ``None``.
    :returns: an :class:`Estimate` with ``per_datum`` (or ``None`` for one joint weight),
        ``lower`` (the estimate: a stochastic lower bound on :math:`\log p(x)`) and
        ``diagnostics`` ``ess``, ``k_hat`` and ``stderr`` (per datum, tensors), ``min_ess``,
        ``max_k_hat``, ``num_samples``.
    :raises ValueError: under a subsampled data plate (the estimate needs every datum).

    Example::

        >>> import torch, pyro_lvmle as lv
        >>> model = lv.models.LinearGaussian(dim=2)
        >>> x = model.simulate(4)
        >>> estimate = importance_log_marginal(model, (x,), num_samples=4000)
        >>> bool(abs(estimate.value - model.log_marginal(x)) < 4 * estimate.stderr + 0.01)
        True

    References:

    [1] Vehtari, Simpson, Gelman, Yao & Gabry (2015), "Pareto smoothed importance sampling",
    arXiv:1507.02646.
    """
    where = "log_marginal(method='is')"
    kwargs = dict(kwargs or {})
    num_samples = check_int(where, "num_samples", num_samples, 2)
    chunk_size = check_int(where, "chunk_size", chunk_size, 1)
    guide = PriorGuide(model) if guide is None else guide
    if max_plate_nesting is None:
        max_plate_nesting = guess_max_plate_nesting(model, guide, tuple(args), kwargs)
    keep = _tail_size(num_samples) + 1
    sum_w = sum_w2 = top = None
    done, per_datum = 0, False
    draw = particle_terms
    if num_samples > 1 and not vectorizes(model, guide, tuple(args), kwargs,
                                          num_particles=min(chunk_size, num_samples),
                                          max_plate_nesting=max_plate_nesting):
        warnings.warn(
            f"{where}: the model or the guide does not run vectorized over samples as it runs "
            "one draw at a time (Python control flow on a sampled value, or a latent indexed "
            "or stacked along its first dimension: write u[..., group] rather than "
            f"u[group]), so the {num_samples} samples are drawn one at a time, with one "
            "weight for the whole data set", UserWarning, stacklevel=3)
        draw = stacked_particle_terms
    with torch.no_grad():
        while done < num_samples:
            size = min(chunk_size, num_samples - done)
            terms = draw(model, guide, tuple(args), kwargs, num_particles=size,
                         max_plate_nesting=max_plate_nesting)
            if terms.unit_scale != 1.0:
                raise ValueError(f"{where}: the plates {terms.unit_plates} are subsampled; "
                                 "the marginal likelihood needs every datum (drop "
                                 "subsample_size)")
            if done == 0:
                per_datum = draw is particle_terms and bool(terms.unit_plates) and \
                    independent_units(
                    model, guide, tuple(args), kwargs, max_plate_nesting=max_plate_nesting)
            log_w = _log_weights(terms).detach()
            if not per_datum:  # one weight for the whole data set
                log_w = log_w.sum(-1, keepdim=True)
            if torch.isnan(log_w).any() or (log_w == math.inf).any():
                raise ValueError(f"{where}: log weights hold nan or +inf; the model's or the "
                                 "guide's log density is not finite at the guide's draws")
            chunk_w, chunk_w2 = torch.logsumexp(log_w, 0), torch.logsumexp(2 * log_w, 0)
            sum_w = chunk_w if sum_w is None else torch.logaddexp(sum_w, chunk_w)
            sum_w2 = chunk_w2 if sum_w2 is None else torch.logaddexp(sum_w2, chunk_w2)
            top = log_w if top is None else torch.cat([top, log_w])
            top = top.topk(min(keep, top.shape[0]), dim=0).values
            done += size
    values = sum_w - math.log(num_samples)
    # sd(w) / mean(w) with Bessel's correction, from S sum w^2 / (sum w)^2
    ratio = (sum_w2 - 2 * sum_w).exp() * num_samples
    variance = ((ratio - 1) * num_samples / (num_samples - 1)).clamp(min=0)
    stderrs = (variance / num_samples).sqrt()
    ess = (2 * sum_w - sum_w2).exp()
    top = top.cpu()  # one transfer; the fits are small and sequential
    k_hat = torch.tensor([psis_k_hat(top[:, u], num_samples) for u in range(top.shape[1])],
                         dtype=values.dtype, device=values.device)
    value = values.sum()
    diagnostics = {"ess": ess, "k_hat": k_hat, "stderr": stderrs, "min_ess": float(ess.min()),
                   "max_k_hat": float(k_hat.max()) if k_hat.numel() else math.nan,
                   "num_samples": num_samples, "chunk_size": chunk_size}
    return Estimate(value, stderrs.pow(2).sum().sqrt(), lower=value,
                    per_datum=values if per_datum else None, method="is",
                    diagnostics=diagnostics)
