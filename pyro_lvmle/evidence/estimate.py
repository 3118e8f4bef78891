r"""The result of every evidence estimator: a log normalizing constant with its standard error.

Importance sampling and annealed importance sampling give unbiased estimates of a normalizing
constant :math:`Z` (a marginal likelihood :math:`p(x)`, a partition function), as a mean of
weights :math:`w_c`; their logarithm is reported, a stochastic lower bound on :math:`\log Z`
(Jensen). Its standard error follows by the delta method from the weights' spread:

.. math::

    \widehat{\log Z} = \log \frac1C \sum_c w_c, \qquad
    \operatorname{se}\big(\widehat{\log Z}\big) \approx
    \frac{\operatorname{sd}(w)}{\sqrt{C}\,\bar w},

computed from the log weights without overflow.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

__all__ = ["Estimate", "log_mean_exp"]


class Estimate(NamedTuple):
    r"""An estimate of a log normalizing constant (:math:`\log p(x)`, :math:`\log Z`).

    :ivar torch.Tensor value: the estimate (a scalar; with ``method="exact"`` differentiable
        in the model's parameters).
    :ivar torch.Tensor stderr: its standard error (``0`` for an exact value).
    :ivar lower: a stochastic lower bound, where the method gives one (``None`` otherwise).
    :ivar upper: a stochastic upper bound, where the method gives one (``None`` otherwise).
    :ivar per_datum: one estimate per datum ``(N,)`` where the latents are local, else ``None``.
    :ivar str method: the method that produced it (``"exact"``, ``"is"``, ``"ais"``, ...).
    :ivar dict diagnostics: method-specific figures (effective sample size, acceptance, ...).
    """

    value: torch.Tensor
    stderr: torch.Tensor
    lower: torch.Tensor | None = None
    upper: torch.Tensor | None = None
    per_datum: torch.Tensor | None = None
    method: str = ""
    diagnostics: dict | None = None

    def __repr__(self) -> str:
        value, stderr = (float(torch.as_tensor(t).detach()) for t in (self.value, self.stderr))
        return f"Estimate({self.method}: {value:.4f} +/- {stderr:.4f})"


def log_mean_exp(log_weights: torch.Tensor, dim: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The log of the mean of the weights along ``dim`` and its delta-method standard error.

    :param torch.Tensor log_weights: log importance weights, ``C`` along ``dim``.
    :param int dim: the dimension holding the independent draws.
    :returns: ``(value, stderr)``: :math:`\log \bar w` and
        :math:`\operatorname{sd}(w) / (\sqrt{C}\,\bar w)`, reduced over ``dim``.
    :raises ValueError: if any log weight is ``nan`` or ``+inf`` (``-inf``, a zero weight, is
        allowed).

    Example::

        >>> import torch
        >>> value, stderr = log_mean_exp(torch.tensor([0.0, 0.0, 0.0]))
        >>> float(value), float(stderr)
        (0.0, 0.0)
    """
    if torch.isnan(log_weights).any() or (log_weights == math.inf).any():
        raise ValueError("log_mean_exp: the log weights hold nan or +inf; the target's log "
                         "density was not finite where the chains went")
    count = log_weights.shape[dim]
    value = torch.logsumexp(log_weights, dim) - math.log(count)
    normalized = (log_weights - value.unsqueeze(dim)).exp()  # w / mean(w), mean 1
    spread = normalized.std(dim, correction=1) if count > 1 else torch.zeros_like(value)
    return value, spread / math.sqrt(count)
