"""Gradient diagnostics: mean, standard error and signal-to-noise of an objective's gradient."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ..models import ReferenceModel
from ..traces.params import (
    call_with_params,
    enumerated_log_marginal,
    has_only_enumerable_latents,
)

__all__ = ["GradientCheck", "GradientRow", "check_gradient"]

#: Bias is flagged beyond this many standard errors (a false alarm about 6e-5 of the time
#: per coordinate under normality).
NUM_STDERR = 4.0


class GradientRow(NamedTuple):
    """The statistics of one parameter's gradient estimates (unconstrained coordinates).

    :ivar str name: the param store name.
    :ivar torch.Tensor mean: the mean of the draws.
    :ivar torch.Tensor stderr: the standard error of the mean.
    :ivar torch.Tensor snr: ``|mean| / std``, elementwise (the signal-to-noise ratio).
    :ivar torch.Tensor exact: the exact gradient of :math:`\\log p(x)`, or ``None``.
    :ivar bool biased: whether any coordinate is more than 4 standard errors from ``exact``.
    """

    name: str
    mean: torch.Tensor
    stderr: torch.Tensor
    snr: torch.Tensor
    exact: torch.Tensor | None
    biased: bool


class GradientCheck(NamedTuple):
    """What :func:`check_gradient` measured: one :class:`GradientRow` per parameter.

    :ivar dict rows: ``name -> GradientRow``.
    :ivar int num_draws: the number of gradient draws.
    """

    rows: dict[str, GradientRow]
    num_draws: int

    @property
    def biased(self) -> list[str]:
        """The parameters whose mean gradient is off the exact one by > 4 standard errors."""
        return [name for name, row in self.rows.items() if row.biased]

    def table(self) -> str:
        """A plain-text table: one line per parameter (norms over coordinates)."""
        lines = [f"{'parameter':<32} {'|mean|':>10} {'stderr':>10} {'SNR':>8} "
                 f"{'|exact|':>10} {'bias/se':>8}"]
        for row in self.rows.values():
            exact = "-" if row.exact is None else f"{row.exact.norm().item():.3e}"
            if row.exact is None:
                z = "-"
            else:
                z = f"{((row.mean - row.exact).abs() / row.stderr).max().item():.1f}"
            lines.append(
                f"{row.name:<32} {row.mean.norm().item():>10.3e} "
                f"{row.stderr.norm().item():>10.3e} {row.snr.mean().item():>8.2f} "
                f"{exact:>10} {z:>8}"
            )
        return "\n".join(lines)


def check_gradient(model, guide, loss, *args, num_draws: int = 100, exact=None,
                   **kwargs) -> GradientCheck:
    r"""Draw an objective's gradient ``num_draws`` times and summarize it per parameter.

    For each parameter :math:`\theta_i` (unconstrained coordinates, as an optimizer sees
    them) and draws :math:`g^{(1)}, \dots, g^{(M)}` of the gradient of the bound,

    .. math::

        \bar g = \frac1M \sum_m g^{(m)}, \qquad
        \mathrm{se} = \frac{\mathrm{sd}(g)}{\sqrt M}, \qquad
        \mathrm{SNR} = \frac{|\bar g|}{\mathrm{sd}(g)}.

    Where the model is a reference model (:mod:`pyro_lvmle.models`), or all its latents are
    enumerable, the exact :math:`\nabla \log p(x)` of its parameters is computed too and a
    parameter is flagged ``biased`` when :math:`|\bar g - \nabla \log p(x)| > 4\,\mathrm{se}`
    in any coordinate: for a bound this is its bias as a likelihood gradient, what maximum
    likelihood cares about.

    :param model: the Pyro model.
    :param guide: the Pyro guide.
    :param loss: any ``pyro.infer.ELBO`` (the package's or Pyro's).
    :param args: the model's and guide's arguments.
    :param int num_draws: :math:`M \ge 2`.
    :param dict exact: the exact expected gradient by parameter name (unconstrained), to
        compare with instead of :math:`\nabla\log p(x)`.
    :param kwargs: the model's and guide's keyword arguments.

    Example::

        >>> import pyro_lvmle as lv
        >>> from pyro.infer.autoguide import AutoNormal
        >>> model = lv.models.LinearGaussian()
        >>> data = model.simulate(30)
        >>> check = lv.check_gradient(model, AutoNormal(model), lv.TraceIWAE_ELBO(10), data,
        ...                           num_draws=20)
        >>> sorted(check.rows)[:2]
        ['AutoNormal.locs.z', 'AutoNormal.scales.z']
    """
    if isinstance(num_draws, bool) or not isinstance(num_draws, int) or num_draws < 2:
        raise ValueError(f"check_gradient: num_draws must be an int >= 2, got {num_draws!r}")
    draws: dict[str, list[torch.Tensor]] = {}
    for _ in range(num_draws):
        for name, grad in _gradient_draw(loss, model, guide, args, kwargs).items():
            draws.setdefault(name, []).append(grad)
    if exact is None:
        exact = _exact_log_marginal_gradient(model, args, kwargs)
    rows = {}
    for name, values in draws.items():
        stacked = torch.stack(values)
        mean, std = stacked.mean(0), stacked.std(0)
        stderr = std / math.sqrt(num_draws)
        snr = mean.abs() / std.clamp(min=torch.finfo(std.dtype).tiny)
        target = None if exact is None or name not in exact else torch.as_tensor(exact[name])
        biased = False
        if target is not None:
            tol = NUM_STDERR * stderr + 1e-12 * (1 + target.abs())
            biased = bool(((mean - target).abs() > tol).any())
        rows[name] = GradientRow(name, mean, stderr, snr, target, biased)
    return GradientCheck(rows, num_draws)


def _gradient_draw(loss, model, guide, args, kwargs):
    """One draw of the gradient of the bound (minus the loss), by parameter name."""
    if hasattr(loss, "differentiable_loss"):
        value, params = call_with_params(loss.differentiable_loss, model, guide, *args, **kwargs)
        names = [n for n, p in params.items() if p.requires_grad]
        grads = torch.autograd.grad(-value, [params[n] for n in names], allow_unused=True)
    else:  # an ELBO with loss_and_grads only (e.g. Pyro's RenyiELBO): read .grad
        _, params = call_with_params(loss.loss, model, guide, *args, **kwargs)
        names = [n for n, p in params.items() if p.requires_grad]
        for name in names:
            params[name].grad = None
        loss.loss_and_grads(model, guide, *args, **kwargs)
        grads = [None if params[n].grad is None else -params[n].grad for n in names]
        for name in names:
            params[name].grad = None
    return {n: (torch.zeros_like(params[n]) if g is None else g.detach())
            for n, g in zip(names, grads, strict=True)}


def _exact_log_marginal_gradient(model, args, kwargs):
    """:math:`\\nabla \\log p(x)` in unconstrained coordinates, where it is known."""
    kwargs = {k: v for k, v in kwargs.items() if k != "subsample_size"}
    if isinstance(model, ReferenceModel):
        def log_marginal():
            model.model(*args, **kwargs)  # touch (and create) the model's parameters
            return model.log_marginal(args[0])
    elif has_only_enumerable_latents(model, *args, **kwargs):
        def log_marginal():
            return enumerated_log_marginal(model, *args, **kwargs)
    else:
        return None
    value, params = call_with_params(log_marginal)
    names = [n for n, p in params.items() if p.requires_grad]
    grads = torch.autograd.grad(value, [params[n] for n in names], allow_unused=True)
    return {n: (torch.zeros_like(params[n]) if g is None else g)
            for n, g in zip(names, grads, strict=True)}
