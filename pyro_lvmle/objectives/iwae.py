"""The importance-weighted bound with reparameterized, DReG and VIMCO gradients."""

from __future__ import annotations

import math

import torch

from .base import (
    ParticleObjective,
    check_unit_subsampling,
    leave_one_out_signal,
    negative_loss,
    renyi_bound,
    score_surrogate,
)

__all__ = ["TraceIWAE_ELBO", "iwae_surrogate"]

_ESTIMATORS = ("reparam", "dreg", "vimco", "auto")


class TraceIWAE_ELBO(ParticleObjective):
    r"""The importance-weighted bound (Burda et al. 2016), per independent unit.

    With :math:`K` particles :math:`z_k \sim q` and weights
    :math:`w_k = p(x_u, z_k) / q(z_k)` per unit :math:`u` (per datum when every site lives
    in the data plate),

    .. math::

        \mathcal{L}_K = \sum_u s_u \log \frac1K \sum_{k=1}^K w_{k,u}
        \ \le\ \log p(x),

    where :math:`s_u = N/B` under a subsampled data plate, outside the logarithm, so that the
    mini-batch bound is unbiased for the full one. Estimators of its gradient, with
    :math:`\tilde w_k = w_k / \sum_j w_j`:

    * ``"reparam"``: :math:`\sum_k \tilde w_k \nabla \log w_k` through reparameterized draws;
      every guide site must be reparameterizable.
    * ``"dreg"``: doubly reparameterized (Tucker et al. 2019) for the guide,
      :math:`\sum_k \tilde w_k^2 \,\partial_z \log w_k\, \partial_\phi z_k` with
      :math:`q`'s parameters held fixed inside :math:`\log w`; the model keeps
      :math:`\sum_k \tilde w_k \nabla_\theta \log w_k`. Its variance vanishes when
      :math:`q` is the posterior and its signal-to-noise ratio grows with :math:`K`.
    * ``"vimco"``: for non-reparameterizable guide sites, the score-function gradient with
      VIMCO's leave-one-out baselines (Mnih & Rezende 2016),
      :math:`\sum_k (\mathcal{L} - \mathcal{L}_{-k}) \nabla \log q(z_k)` on top of
      ``"reparam"`` for the rest.
    * ``"auto"``: DReG for the reparameterizable sites, VIMCO for the others.

    Parameters the guide shares with the model (every model parameter under
    :class:`~pyro_lvmle.traces.PriorGuide`) get DReG's weights on their path derivative
    and the plain :math:`\tilde w_k` on their direct model derivative (one extra model
    evaluation); under ``poutine.scale(scale=s)`` on the guide's sites the DReG weights are
    :math:`(1 - s)\tilde w_k + s\tilde w_k^2`. Non-reparameterizable sites are assumed not
    to be computed from reparameterized ones in ``"auto"``.

    :param int num_particles: :math:`K`.
    :param str estimator: ``"reparam"``, ``"dreg"``, ``"vimco"`` or ``"auto"``.
    :param int max_plate_nesting: guessed when left at infinity.
    :param bool retain_graph: passed to ``backward``.
    :param str nonfinite: ``"raise"`` or ``"skip"`` a step whose loss or gradient is
        NaN or infinite (see :class:`~pyro_lvmle.objectives.ParticleObjective`).

    References:

    [1] Burda, Grosse & Salakhutdinov (2016), "Importance weighted autoencoders", ICLR.

    [2] Tucker, Lawson, Gu & Maddison (2019), "Doubly reparameterized gradient estimators for
    Monte Carlo objectives", ICLR.

    [3] Mnih & Rezende (2016), "Variational inference for Monte Carlo objectives", ICML.

    Example::

        >>> import pyro, pyro_lvmle as lv
        >>> from pyro.infer.autoguide import AutoNormal
        >>> model = lv.models.LinearGaussian()
        >>> data = model.simulate(20)
        >>> svi = pyro.infer.SVI(model, AutoNormal(model), pyro.optim.Adam({"lr": 0.01}),
        ...                      lv.TraceIWAE_ELBO(num_particles=8, estimator="dreg"))
        >>> isinstance(svi.step(data), float)
        True
    """

    def __init__(self, num_particles: int = 8, estimator: str = "auto",
                 max_plate_nesting: float = math.inf, retain_graph: bool | None = None, *,
                 nonfinite: str = "raise"):
        if estimator not in _ESTIMATORS:
            raise ValueError(
                f"TraceIWAE_ELBO: estimator must be one of {_ESTIMATORS}, got {estimator!r}"
            )
        super().__init__(num_particles, max_plate_nesting, retain_graph, nonfinite=nonfinite)
        self.estimator = estimator

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """Minus the bound; its gradient is minus the chosen estimator."""
        direct = self.estimator in ("dreg", "auto")
        terms = self._terms(model, guide, args, kwargs, direct_log_q=direct)
        value, surrogate = iwae_surrogate(terms, self.estimator)
        return negative_loss(value, surrogate)


def iwae_surrogate(terms, estimator: str):
    """``(bound, surrogate)`` of the importance-weighted bound for one estimator.

    :param ParticleTerms terms: from :func:`~pyro_lvmle.traces.particle_terms`, with
        ``log_q_direct`` for ``"dreg"`` and ``"auto"``.
    :param str estimator: ``"reparam"``, ``"dreg"``, ``"vimco"`` or ``"auto"``.
    """
    if terms.nonreparam_sites and estimator in ("reparam", "dreg"):
        raise ValueError(
            f"TraceIWAE_ELBO(estimator={estimator!r}) needs reparameterizable guide sites, but "
            f"{list(terms.nonreparam_sites)} are not; use estimator='vimco' or 'auto'"
        )
    check_unit_subsampling(terms, "TraceIWAE_ELBO")
    if terms.nonreparam_sites and terms.num_particles < 2:
        raise ValueError(
            f"TraceIWAE_ELBO: the guide's sites {list(terms.nonreparam_sites)} are not "
            "reparameterized, and VIMCO's leave-one-out baselines for them need num_particles "
            ">= 2; pass num_particles >= 2, or use Trace_ELBO or TraceSTL_ELBO for one particle")
    log_w = terms.log_weights
    bound = terms.unit_scale * renyi_bound(log_w, 0.0).sum()
    if estimator in ("reparam", "vimco"):
        surrogate = bound
    else:  # dreg, auto
        surrogate = _dreg_surrogate(terms)
    if terms.nonreparam_sites:
        signal = leave_one_out_signal(log_w, 0.0)
        surrogate = surrogate + score_surrogate(signal, terms.log_q_score, terms.unit_scale)
        if estimator == "auto":
            # the direct term -sum_k w~_k grad log q(z_k) of non-reparameterized sites, which
            # the path-only weights of DReG leave out
            w = torch.softmax(log_w.detach(), 0)
            surrogate = surrogate - terms.unit_scale * (w * terms.log_q_nonreparam_direct).sum()
    return bound, surrogate


def _dreg_surrogate(terms):
    r"""The doubly reparameterized surrogate (Tucker et al. 2019, eq. 5), for shared
    parameters and scaled guide sites too.

    With :math:`\log w_k = f_k` (guide sites scaled by :math:`s`) and
    :math:`\tilde w = \mathrm{softmax}(f)`, the direct derivative of :math:`f_k` through
    :math:`-s \log q_\phi(z_k)` satisfies, by the reparameterization identity
    :math:`\mathbb{E}_q[h(z)\,\partial_\phi \log q_\phi(z)] =
    \mathbb{E}[\partial_z h\,\partial_\phi z]` with :math:`h = \tilde w_k`,

    .. math::

        \mathbb{E}\Big[\sum_k \tilde w_k\, s\, \partial_\phi \log q_\phi(z_k)\Big]
        = s\,\mathbb{E}\Big[\sum_k (\tilde w_k - \tilde w_k^2)\,
            \nabla^{\mathrm{path}} f_k\Big],

    so the gradient of the bound, for any parameter (the model's, the guide's, or one both
    read), is estimated without the score term by

    .. math::

        \sum_k \tilde w_k\, \partial^{\mathrm{direct}} \log p(x, z_k)
        + \sum_k \big((1 - s)\tilde w_k + s \tilde w_k^2\big)\, \nabla^{\mathrm{path}} f_k.

    A model-only parameter has no path term, a guide-only one no direct model term; a shared
    one has both, and needs the model's direct part (``terms.log_p_direct``)."""
    if terms.guide_scale is None:
        raise ValueError(
            "TraceIWAE_ELBO: DReG needs one scale on every reparameterized guide site (one "
            "poutine.scale over the guide's latents), but their scales differ; use "
            "estimator='reparam' (or 'vimco')"
        )
    scale = terms.guide_scale
    w = torch.softmax(terms.log_weights.detach(), 0)
    weight = (1.0 - scale) * w + scale * w**2
    # log q with the parameters held fixed: value log q, gradient along paths only
    log_q_path = terms.log_q - terms.log_q_direct + terms.log_q_direct.detach()
    if terms.log_p_direct is not None:  # parameters shared by model and guide
        path = (terms.log_p - terms.log_p_direct) - (terms.log_q - terms.log_q_direct)
        return terms.unit_scale * ((w * terms.log_p_direct).sum() + (weight * path).sum())
    # no shared parameter: log p's gradient is direct in the model's parameters and a path
    # derivative in the guide's, so the guide's weight change is applied to the guide's alone
    log_w_path = terms.log_p - log_q_path
    surrogate = terms.unit_scale * (w * log_w_path).sum()
    params = [p for p in terms.guide_params.values() if p.requires_grad]
    if not params or not torch.is_grad_enabled() or not log_w_path.requires_grad:
        return surrogate
    extra = terms.unit_scale * ((weight - w) * log_w_path).sum()
    grads = torch.autograd.grad(extra, params, retain_graph=True, allow_unused=True)
    for param, grad in zip(params, grads, strict=True):
        if grad is not None:
            surrogate = surrogate + (grad.detach() * param).sum()
    return surrogate
