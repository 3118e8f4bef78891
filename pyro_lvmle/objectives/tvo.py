"""The thermodynamic variational objective with its covariance gradient estimator."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .base import ParticleObjective, check_unit_subsampling, negative_loss

__all__ = ["TraceTVO_ELBO", "tvo_surrogate"]


class TraceTVO_ELBO(ParticleObjective):
    r"""The thermodynamic variational objective (Masrani, Le & Wood 2019).

    :math:`\log p(x)` is the integral over :math:`\beta \in [0, 1]` of
    :math:`\mathbb{E}_{\pi_\beta}[\log w]`, with :math:`\pi_\beta(z) \propto q(z)^{1-\beta}
    p(x, z)^\beta`, and the left Riemann sum over a partition
    :math:`0 = \beta_0 < \beta_1 < \dots < \beta_{J-1} < \beta_J = 1` is a lower bound:

    .. math::

        \mathcal{L}_{\mathrm{TVO}} = \sum_u s_u \sum_{j=0}^{J-1} (\beta_{j+1} - \beta_j)\,
            \mathbb{E}_{\pi_{\beta_j}}\big[\log w_u\big] \ \le\ \log p(x).

    Each expectation is estimated by self-normalized importance sampling from :math:`K`
    draws of :math:`q` (weights :math:`\propto w_k^{\beta_j}`), and its gradient by the
    covariance estimator, with sample values held fixed (no reparameterization needed, so
    discrete guides work):

    .. math::

        \nabla \mathbb{E}_{\pi_\beta}[f] = \mathbb{E}_{\pi_\beta}[\nabla f]
            + \mathrm{Cov}_{\pi_\beta}\big(f,\ \nabla \log q + \beta \nabla f\big),
        \qquad f = \log w,

    the covariance centred on leave-one-out means, so that a single :math:`\beta_0 = 0` gives
    the unbiased score-function gradient of the ELBO. Under ``poutine.scale`` the log weight
    :math:`f` is scaled as its sites are, while :math:`q` in
    :math:`\pi_\beta \propto q\, w^\beta` and in the score stays the unscaled density the
    particles are drawn from.

    :param int num_particles: :math:`K`.
    :param int num_betas: :math:`J`, the number of partition points: :math:`\beta_0 = 0`
        and :math:`J - 1` points log-spaced from ``min_beta`` up to, not including, 1.
    :param float min_beta: :math:`\beta_1` (0.1 by default; Masrani et al. found values of
        this order best).
    :param betas: an explicit partition :math:`[\beta_0 = 0, \dots, \beta_{J-1}]`,
        increasing and below 1, instead of ``num_betas``.
    :param int max_plate_nesting: guessed when left at infinity.
    :param bool retain_graph: passed to ``backward``.
    :param str nonfinite: ``"raise"`` or ``"skip"`` a step whose loss or gradient is
        NaN or infinite (see :class:`~pyro_lvmle.objectives.ParticleObjective`).

    References:

    [1] Masrani, Le & Wood (2019), "The thermodynamic variational objective", NeurIPS.

    Example::

        >>> import pyro_lvmle as lv
        >>> from pyro.infer.autoguide import AutoNormal
        >>> model = lv.models.LinearGaussian()
        >>> data = model.simulate(20)
        >>> tvo = lv.TraceTVO_ELBO(num_particles=10, num_betas=5)
        >>> [round(b, 3) for b in tvo.betas]
        [0.0, 0.1, 0.178, 0.316, 0.562]
    """

    def __init__(self, num_particles: int = 10, num_betas: int = 5, *,
                 betas: Sequence[float] | None = None, min_beta: float = 0.1,
                 max_plate_nesting: float = math.inf, retain_graph: bool | None = None,
                 nonfinite: str = "raise"):
        super().__init__(num_particles, max_plate_nesting, retain_graph, nonfinite=nonfinite)
        if betas is None:
            if isinstance(num_betas, bool) or not isinstance(num_betas, int) or num_betas < 1:
                raise ValueError(f"TraceTVO_ELBO: num_betas must be a positive int, got "
                                 f"{num_betas!r}")
            if not 0 < min_beta < 1:
                raise ValueError(f"TraceTVO_ELBO: min_beta must be in (0, 1), got {min_beta!r}")
            ratio = (1.0 / min_beta) ** (1.0 / max(num_betas - 1, 1))
            betas = [0.0] + [min_beta * ratio**j for j in range(num_betas - 1)]
        betas = [float(b) for b in betas]
        if not betas or betas[0] != 0.0 or any(b >= 1 for b in betas) or \
                any(b1 <= b0 for b0, b1 in zip(betas, betas[1:], strict=False)):
            raise ValueError(
                f"TraceTVO_ELBO: betas must start at 0, increase strictly and stay below 1, "
                f"got {betas}"
            )
        if self.num_particles < 2 and len(betas) > 1:
            raise ValueError(
                "TraceTVO_ELBO: the covariance gradient at betas > 0 needs num_particles >= 2 "
                "(its centring leaves one particle out; with one its gradient is biased); pass "
                "num_particles >= 2, or betas=[0.0] (the ELBO), or use Trace_ELBO or "
                "TraceSTL_ELBO for one particle")
        self.betas = betas

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """Minus the TVO bound; its gradient is minus the covariance estimator."""
        terms = self._terms(model, guide, args, kwargs, detach_values=True)
        check_unit_subsampling(terms, "TraceTVO_ELBO")
        log_q_score = terms.log_q_score if terms.log_q_score is not None \
            else torch.zeros_like(terms.log_q)
        value, surrogate = tvo_surrogate(terms.log_weights, log_q_score, self.betas)
        value, surrogate = terms.unit_scale * value, terms.unit_scale * surrogate
        return negative_loss(value, surrogate)


def tvo_surrogate(log_weights, log_q_score, betas):
    """``(bound, surrogate)`` summed over units, for log densities at detached samples.

    :param torch.Tensor log_weights: ``(K, *units)`` log weights :math:`f = \\log p - \\log q`
        (scaled as the sites are), differentiable directly in the parameters.
    :param torch.Tensor log_q_score: ``(K, *units)`` the guide's unscaled log density, the
        score of the distribution the particles are drawn from.
    :param list betas: the partition, starting at 0.
    """
    f = log_weights
    f_det = f.detach()
    num = f.shape[0]
    widths = [b1 - b0 for b0, b1 in zip(betas, [*betas[1:], 1.0], strict=True)]
    value, surrogate = f.new_zeros(()), f.new_zeros(())
    for beta, width in zip(betas, widths, strict=True):
        pi = torch.softmax(beta * f_det, 0)  # self-normalized weights of pi_beta
        mean = (pi * f_det).sum(0, keepdim=True)
        if num > 1:  # leave-one-out centring: mean of the others under pi_beta
            loo = (mean - pi * f_det) / (1.0 - pi).clamp(min=torch.finfo(f.dtype).tiny)
        else:
            loo = torch.zeros_like(f_det)
        score = log_q_score + beta * f  # grad log pi~_beta(z) with z fixed
        value = value + width * mean.sum()
        surrogate = surrogate + width * ((pi * f).sum() + (pi * (f_det - loo) * score).sum())
    return value, surrogate
