"""The ELBO with sticking-the-landing gradients."""

from __future__ import annotations

import math

import torch

from .base import (
    ParticleObjective,
    leave_one_out_signal,
    negative_loss,
    renyi_bound,
    score_surrogate,
)

__all__ = ["TraceSTL_ELBO"]


class TraceSTL_ELBO(ParticleObjective):
    r"""The ELBO with the sticking-the-landing gradient (Roeder, Wu & Duvenaud 2017).

    .. math::

        \mathcal{L} = \sum_u s_u \frac1K \sum_{k=1}^K \big(\log p(x_u, z_k) - \log q(z_k)\big),
        \qquad
        \widehat{\nabla_\phi \mathcal{L}} = \frac1K \sum_k
            \partial_z\big(\log p(x, z) - \log q_{\bar\phi}(z)\big)\big|_{z = z_k}
            \,\partial_\phi z_k,

    the reparameterized gradient without the score term
    :math:`-\nabla_\phi \log q_\phi(z)|_{z}`, whose expectation is zero. When :math:`q`
    is the exact posterior the path term vanishes too, so the estimator has zero variance at
    the optimum. Non-reparameterizable guide sites get a score-function gradient with
    leave-one-out baselines. The ELBO is linear in the sites' log densities, so any
    subsampling is fine.

    :param int num_particles: :math:`K`.
    :param int max_plate_nesting: guessed when left at infinity.
    :param bool retain_graph: passed to ``backward``.
    :param str nonfinite: ``"raise"`` or ``"skip"`` a step whose loss or gradient is
        NaN or infinite (see :class:`~pyro_lvmle.objectives.ParticleObjective`).

    References:

    [1] Roeder, Wu & Duvenaud (2017), "Sticking the landing: simple, lower-variance gradient
    estimators for variational inference", NeurIPS.

    Example::

        >>> import pyro_lvmle as lv
        >>> from pyro.infer.autoguide import AutoNormal
        >>> model = lv.models.LinearGaussian()
        >>> data = model.simulate(20)
        >>> isinstance(lv.TraceSTL_ELBO(4).loss(model, AutoNormal(model), data), float)
        True
    """

    def __init__(self, num_particles: int = 1, max_plate_nesting: float = math.inf,
                 retain_graph: bool | None = None, *,
                 nonfinite: str = "raise"):
        super().__init__(num_particles, max_plate_nesting, retain_graph, nonfinite=nonfinite)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """Minus the ELBO; its gradient is minus the STL estimator."""
        terms = self._terms(model, guide, args, kwargs, direct_log_q=True)
        log_q_path = terms.log_q - terms.log_q_direct + terms.log_q_direct.detach()
        elbo = terms.unit_scale * renyi_bound(terms.log_weights, 1.0).sum()
        surrogate = terms.unit_scale * renyi_bound(terms.log_p - log_q_path, 1.0).sum()
        if terms.nonreparam_sites:
            signal = leave_one_out_signal(terms.log_weights, 1.0)
            surrogate = surrogate + score_surrogate(signal, terms.log_q_score, terms.unit_scale)
        return negative_loss(elbo, surrogate)
