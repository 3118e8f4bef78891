"""The base of every particle objective, and the tensor pieces the objectives share.

A subclass implements :meth:`ParticleObjective.differentiable_loss` only: it asks the trace
layer for :class:`~pyro_lvmle.traces.ParticleTerms` and returns
``-(value + surrogate - surrogate.detach())``, whose value is minus the bound and whose
gradient is minus the chosen estimator. ``loss`` and ``loss_and_grads`` are derived here,
once, so the three always agree.
"""

from __future__ import annotations

import math
import warnings

import pyro
import torch
from pyro.infer import ELBO

from .._checks import check_int
from ..traces import check_normalized, check_programs, guess_max_plate_nesting, particle_terms
from ..traces.params import accumulate_grads, call_with_params
from ..traces.units import independent_units
from ..traces.vectorized import stacked_particle_terms, vectorizes

__all__ = [
    "ParticleObjective",
    "check_unit_subsampling",
    "leave_one_out_signal",
    "negative_loss",
    "renyi_bound",
    "score_surrogate",
]


class ParticleObjective(ELBO):
    """Base class of the package's objectives for :class:`pyro.infer.SVI`.

    :param int num_particles: particles ``K`` per step, vectorized by an outermost plate.
    :param int max_plate_nesting: the deepest plate nesting of model and guide; guessed by
        running them once when left at infinity.
    :param bool retain_graph: passed to ``backward`` by :meth:`loss_and_grads`.
    :param str nonfinite: what :meth:`loss_and_grads` does with a NaN or infinite loss or
        gradient: ``"raise"`` (the default) a ``ValueError`` naming the parameters, or
        ``"skip"`` the step, counted in :attr:`diagnostics`. Either way the parameters, their
        ``.grad`` and the optimizer's state are left as they were.

    :ivar dict diagnostics: ``{"skipped_steps": int, "skipped_params": {name: count}}``, the
        steps ``nonfinite="skip"`` dropped (for a non-finite loss or gradient) and, by name,
        the parameters whose gradient was not finite.
    """

    def __init__(self, num_particles: int = 1, max_plate_nesting: float = math.inf,
                 retain_graph: bool | None = None, *, nonfinite: str = "raise"):
        check_int(type(self).__name__, "num_particles", num_particles, low=1)
        if max_plate_nesting != math.inf:
            check_int(type(self).__name__, "max_plate_nesting", max_plate_nesting, low=0)
        if nonfinite not in ("raise", "skip"):
            raise ValueError(
                f"{type(self).__name__}: nonfinite must be 'raise' or 'skip', got {nonfinite!r}"
            )
        # the particle plate is ours, so Pyro's vectorize_particles stays off
        super().__init__(num_particles=int(num_particles), max_plate_nesting=max_plate_nesting,
                         vectorize_particles=False, retain_graph=retain_graph)
        self.nonfinite = nonfinite
        self._checked = None  # the last model/guide pair checked, see _terms
        self._normalized_model = None  # the last model found normalized, see _terms
        self._independent = (None, None, True)  # (model, guide, units independent)
        self._vectorized = (None, None, True)  # (model, guide, particles vectorize)
        self.diagnostics = {"skipped_steps": 0, "skipped_params": {}}

    def _terms(self, model, guide, args, kwargs, **options):
        # with validation on, each new model/guide pair is checked once as Pyro's Trace_ELBO
        # checks it (unvectorized); the plate nesting is guessed on the same run
        if self._normalized_model != model:  # an undirected model: the ELBO would be wrong
            check_normalized(model, args, kwargs, where=type(self).__name__)
            self._normalized_model = model
        validate = pyro.infer.util.is_validation_enabled() and self._checked != (model, guide)
        if validate:
            nesting = check_programs(model, guide, args, kwargs, self.max_plate_nesting)
            self._checked = (model, guide)
        elif self.max_plate_nesting == math.inf:
            nesting = guess_max_plate_nesting(model, guide, args, kwargs)
        if self.max_plate_nesting == math.inf:
            self.max_plate_nesting = nesting
        # the particles run vectorized where that gives each one the log densities of a run
        # of its own, checked once per pair (a program written for one draw can fail under
        # the particle plate, or be wrong where K fits another dimension: u[group]);
        # elsewhere they are drawn one at a time, as Trace_ELBO draws them
        if self.num_particles > 1 and self._vectorized[:2] != (model, guide):
            self._vectorized = (model, guide, vectorizes(
                model, guide, args, kwargs, num_particles=self.num_particles,
                max_plate_nesting=self.max_plate_nesting))
            if not self._vectorized[2]:
                warnings.warn(
                    f"{type(self).__name__}: the model or the guide does not run vectorized "
                    "over particles as it runs one draw at a time (Python control flow on a "
                    "sampled value, or a latent indexed or stacked along its first dimension: "
                    "write u[..., group] rather than u[group]), so the particles are drawn one "
                    f"at a time, {self.num_particles} runs a step, with one weight for the "
                    "whole batch", UserWarning, stacklevel=3)
        vectorized = self.num_particles == 1 or self._vectorized[2]
        # per-unit weights rest on the units' independence, checked once per pair (one
        # particle needs no split: its log-mean-exp is the log weight itself)
        if self.num_particles > 1 and vectorized and self._independent[:2] != (model, guide):
            self._independent = (model, guide, independent_units(
                model, guide, args, kwargs, max_plate_nesting=self.max_plate_nesting))
            if not self._independent[2]:
                warnings.warn(
                    f"{type(self).__name__}: the model's log density of one element of a "
                    "plate depends on the latent values of other elements (a plate promises "
                    "it does not: a cumsum or a recurrence across the plate breaks it), so "
                    "the bound takes one weight for the whole batch instead of one per "
                    "element: still a valid bound, looser", UserWarning, stacklevel=3)
        split = self.num_particles == 1 or (vectorized and self._independent[2])
        draw = particle_terms if vectorized else stacked_particle_terms
        terms = draw(model, guide, args, kwargs, num_particles=self.num_particles,
                     max_plate_nesting=self.max_plate_nesting, split_units=split, **options)
        if not split and terms.subsampled_sites:
            raise ValueError(
                f"{type(self).__name__}: the log densities of one element of a plate depend "
                "on the latent values of others (a plate promises they do not: a cumsum or "
                "a recurrence across the plate's elements breaks it), so the multi-sample "
                "bound takes one weight for the whole batch, which has no unbiased "
                "mini-batch form; stop subsampling, write the dependent sites outside the "
                "plate, or use an ELBO (TraceSTL_ELBO, or num_particles=1)")
        return terms

    def _get_trace(self, model, guide, args, kwargs):  # pragma: no cover - Pyro's hook, unused
        raise NotImplementedError(f"{type(self).__name__} vectorizes particles itself")

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """Minus the bound, differentiable: its gradient is minus the estimator."""
        raise NotImplementedError

    def loss(self, model, guide, *args, **kwargs) -> float:
        """Minus the bound, as a float (one draw of the particles), without building a graph."""
        with torch.no_grad():
            return self.differentiable_loss(model, guide, *args, **kwargs).item()

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """Minus the bound as a float, with the estimator's gradient accumulated in the
        ``.grad`` of the Pyro parameters the call reads.

        The gradients are computed apart and accumulated only when every one is finite, so
        a NaN or infinite value never reaches ``.grad``. With ``nonfinite="skip"`` the
        parameters' ``.grad`` are then set to ``None``: the optimizer step that
        ``pyro.infer.SVI.step`` takes next skips them (torch optimizers leave a parameter
        without a gradient, and its state, alone), and the step is counted in
        :attr:`diagnostics`.

        :raises ValueError: with ``nonfinite="raise"``, if the loss or a parameter's gradient
            is NaN or infinite, naming the parameters.
        """
        loss, params = call_with_params(self.differentiable_loss, model, guide, *args, **kwargs)
        value = loss.detach().item()
        if not math.isfinite(value):
            return self._nonfinite(
                value, params, [],
                f"the loss is {value}; a log density is NaN or infinite for every particle. "
                "Run with pyro.enable_validation(True) to find the site."
            )
        bad = accumulate_grads(loss, params, self.retain_graph)
        if bad:
            return self._nonfinite(value, params, bad,
                                   f"the gradient of parameters {bad} is NaN or infinite")
        return value

    def _nonfinite(self, value, params, bad, message):
        """Raise, or skip the step: clear the gradients so no optimizer step applies."""
        if self.nonfinite == "raise":
            raise ValueError(
                f"{type(self).__name__}: {message}; the parameters are left as they were. "
                "Pass nonfinite='skip' to skip such steps (counted in .diagnostics)."
            )
        for leaf in params.values():
            leaf.grad = None
        self.diagnostics["skipped_steps"] += 1
        counts = self.diagnostics["skipped_params"]
        for name in bad:
            counts[name] = counts.get(name, 0) + 1
        return value


def check_unit_subsampling(terms, objective: str) -> None:
    """Refuse a multi-sample bound when a subsampled plate does not hold every site.

    The log-mean-exp over particles is then taken over the whole batch, and no scaling of a
    mini-batch makes it unbiased for the full-data bound.

    :param ParticleTerms terms: the trace layer's output.
    :param str objective: the objective's name, for the message.
    :raises ValueError: naming the sites and the ways out.
    """
    if terms.num_particles > 1 and terms.subsampled_sites:
        raise ValueError(
            f"{objective}: sites {list(terms.subsampled_sites)} are scaled by a subsampled "
            "plate that not every site lives in, so a multi-sample bound has no unbiased "
            "mini-batch form; put every latent and observed site in the subsampled plate, "
            "stop subsampling, or use an ELBO (TraceSTL_ELBO, or num_particles=1)"
        )


def negative_loss(value: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """``-(value + surrogate - surrogate.detach())``: value of minus the bound, gradient of
    minus the surrogate (the value itself is detached).

    :param torch.Tensor value: the bound.
    :param torch.Tensor surrogate: a tensor whose gradient is the estimator.
    """
    return -(value.detach() + (surrogate - surrogate.detach()))


def renyi_bound(log_weights: torch.Tensor, alpha: float) -> torch.Tensor:
    r"""The Renyi bound per unit: :math:`\frac{1}{1-\alpha}\log\frac1K\sum_k w_k^{1-\alpha}`.

    ``alpha = 0`` is the importance-weighted bound, ``alpha = 1`` the ELBO (the mean of the
    log weights). Reduces the particle dimension 0, keeping it as size 1.

    :param torch.Tensor log_weights: ``(K, *units)``.
    :param float alpha: the order.
    """
    if alpha == 1.0:
        return log_weights.mean(0, keepdim=True)
    scaled = (1.0 - alpha) * log_weights
    lme = torch.logsumexp(scaled, 0, keepdim=True) - math.log(log_weights.shape[0])
    return lme / (1.0 - alpha)


def leave_one_out_signal(log_weights: torch.Tensor, alpha: float) -> torch.Tensor:
    r"""VIMCO's per-particle learning signal :math:`\hat L - \hat L_{-k}`.

    :math:`\hat L_{-k}` is the bound with :math:`\log w_k` replaced by the mean of the other
    particles' log weights (their geometric mean, Mnih & Rezende 2016): independent of
    :math:`z_k`, so it is a baseline that keeps the score-function estimator unbiased.
    With one particle there is no baseline and the signal is the bound itself.

    :param torch.Tensor log_weights: ``(K, *units)``; detached here.
    :param float alpha: the order of the Renyi bound (0 for VIMCO proper, 1 for the ELBO).
    :returns: ``(K, *units)``.
    """
    log_weights = log_weights.detach()
    num = log_weights.shape[0]
    bound = renyi_bound(log_weights, alpha)
    if num == 1:
        return bound
    others = (log_weights.sum(0, keepdim=True) - log_weights) / (num - 1)
    if alpha == 1.0:
        return (log_weights - others) / num
    # row k of the (K, K, ...) matrix is the log weights with entry k replaced by others[k]
    eye = torch.eye(num, dtype=torch.bool, device=log_weights.device)
    eye = eye.reshape((num, num) + (1,) * (log_weights.dim() - 1))
    replaced = torch.where(eye, others.unsqueeze(1), log_weights.unsqueeze(0))
    return bound - renyi_bound(replaced.transpose(0, 1), alpha).squeeze(0)


def score_surrogate(signal: torch.Tensor, log_q_score: torch.Tensor, unit_scale: float):
    """:math:`\\sum_{k,u} \\mathrm{signal}_{k,u} \\log q(z_{k,u})`, the score-function term.

    :param torch.Tensor signal: the per-particle learning signal (detached here).
    :param torch.Tensor log_q_score: the non-reparameterized sites' log density.
    :param float unit_scale: the subsampling scale of the units.
    """
    return unit_scale * (signal.detach() * log_q_score).sum()
