"""Reweighted wake-sleep with per-datum weights and mini-batches."""

from __future__ import annotations

import math

import torch

from .base import ParticleObjective, check_unit_subsampling, negative_loss, renyi_bound

__all__ = ["TraceRWS_ELBO"]


class TraceRWS_ELBO(ParticleObjective):
    r"""Reweighted wake-sleep (Bornschein & Bengio 2015; Le et al. 2019) as one scalar loss.

    With self-normalized weights :math:`\tilde w_{k,u} \propto p(x_u, z_k) / q(z_k)` per
    unit, and sample values held fixed (so discrete guides need no score function):

    .. math::

        \text{wake-}\theta:\ \sum_u s_u \sum_k \tilde w_{k,u} \nabla_\theta \log p(x_u, z_k),
        \qquad
        \text{wake-}\phi:\ \sum_u s_u \sum_k \tilde w_{k,u} \nabla_\phi \log q(z_k),

    the first an estimate of :math:`\nabla_\theta \log p(x)`, the second of
    :math:`-\nabla_\phi \mathrm{KL}(p(z \mid x) \,\|\, q)`. Both are ascended; the loss's
    value is minus the importance-weighted bound, and the two surrogate components of the
    last call are kept in :attr:`components`. Unlike Pyro's ``ReweightedWakeSleep``, which
    forms one weight per particle for the whole data set and refuses mini-batches, the
    weights here are per datum and a subsampled data plate is scaled outside them.
    The sleep-phase update of the guide is not included (Le et al. find wake-phi better).

    Under ``poutine.scale`` the weights come from the scaled log weights and wake-phi
    differentiates the *unscaled* :math:`\log q`, the density the particles are drawn from
    (as Pyro's score functions are unscaled): it is
    :math:`-\nabla_\phi \mathrm{KL}(\pi \,\|\, q_\phi)` for the target
    :math:`\pi \propto q\, w` the weights self-normalize. A parameter both the model and the
    guide read (every model parameter under :class:`~pyro_lvmle.traces.PriorGuide`) gets
    wake-theta alone, the self-normalized estimate of :math:`\nabla_\theta \log p(x)`.

    :param int num_particles: :math:`K \ge 2`.
    :param int max_plate_nesting: guessed when left at infinity.
    :param bool retain_graph: passed to ``backward``.
    :param str nonfinite: ``"raise"`` or ``"skip"`` a step whose loss or gradient is
        NaN or infinite (see :class:`~pyro_lvmle.objectives.ParticleObjective`).

    References:

    [1] Bornschein & Bengio (2015), "Reweighted wake-sleep", ICLR.

    [2] Le, Kosiorek, Siddharth, Teh & Wood (2019), "Revisiting reweighted wake-sleep for
    models with stochastic control flow", UAI.

    Example::

        >>> import pyro_lvmle as lv
        >>> from pyro.infer.autoguide import AutoNormal
        >>> model = lv.models.LinearGaussian()
        >>> data = model.simulate(20)
        >>> rws = lv.TraceRWS_ELBO(num_particles=5)
        >>> _ = rws.loss(model, AutoNormal(model), data)
        >>> sorted(rws.components)
        ['wake_phi', 'wake_theta']
    """

    def __init__(self, num_particles: int = 5, max_plate_nesting: float = math.inf,
                 retain_graph: bool | None = None, *,
                 nonfinite: str = "raise"):
        super().__init__(num_particles, max_plate_nesting, retain_graph, nonfinite=nonfinite)
        if num_particles < 2:
            raise ValueError("TraceRWS_ELBO: num_particles must be >= 2 for the weights to "
                             "carry information")
        #: the last call's surrogate terms, ``{"wake_theta": tensor, "wake_phi": tensor}``
        self.components: dict[str, torch.Tensor] = {}

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """Minus the importance-weighted bound; its gradient is minus wake-theta plus
        wake-phi."""
        terms = self._terms(model, guide, args, kwargs, detach_values=True)
        check_unit_subsampling(terms, "TraceRWS_ELBO")
        w = torch.softmax(terms.log_weights.detach(), 0)
        wake_theta = terms.unit_scale * (w * terms.log_p).sum()
        log_q_score = terms.log_q_score if terms.log_q_score is not None \
            else torch.zeros_like(terms.log_q)
        wake_phi = terms.unit_scale * (w * log_q_score).sum()
        bound = terms.unit_scale * renyi_bound(terms.log_weights, 0.0).sum()
        self.components = {"wake_theta": wake_theta.detach(), "wake_phi": wake_phi.detach()}
        surrogate = wake_theta + _guide_only(wake_phi, terms)
        return negative_loss(bound, surrogate)


def _guide_only(wake_phi, terms):
    """``wake_phi`` with its gradient kept for the guide-only parameters: a parameter the model
    reads too gets wake-theta's likelihood gradient alone (linearized at the current values,
    so the surrogate's gradient is unchanged for every other parameter)."""
    if not terms.shared_params or not torch.is_grad_enabled() or not wake_phi.requires_grad:
        return wake_phi
    own = [p for n, p in terms.guide_params.items()
           if n not in terms.shared_params and p.requires_grad]
    linear = wake_phi.detach()
    if own:
        grads = torch.autograd.grad(wake_phi, own, retain_graph=True, allow_unused=True)
        for param, grad in zip(own, grads, strict=True):
            if grad is not None:
                linear = linear + (grad.detach() * (param - param.detach())).sum()
    return linear
