r"""Standard errors at the maximum-likelihood estimate by Louis' identity.

The observed information of the marginal likelihood is that of the complete data less the
information the latents carry (Louis 1982):

.. math::

    -\nabla^2_\theta \log p(x; \theta)
      = \mathbb{E}\big[-\nabla^2_\theta \log p(x, z; \theta)\big]
      - \operatorname{Cov}\big[\nabla_\theta \log p(x, z; \theta)\big],

both moments over the posterior :math:`p(z \mid x; \theta)`, so posterior samples (from the
chains of :class:`~pyro_lvmle.MCMCGradient`, or exact ones) give it. Its inverse is the
asymptotic covariance of the MLE; the square roots of its diagonal are the standard errors.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import config_enumerate
from torch.distributions import biject_to

from .._checks import check_int
from ..traces import Potential
from ..traces.params import enumerated_log_marginal, has_only_enumerable_latents
from ..traces.particles import guess_max_plate_nesting
from .fisher import MCMCGradient, empty_guide
from .newton import louis_terms

__all__ = ["ObservedInformation", "observed_information", "standard_errors"]


class ObservedInformation(NamedTuple):
    """Louis' identity's terms, over the model's parameters flattened in ``layout`` order.

    :ivar torch.Tensor matrix: the observed information ``complete - missing``, ``(P, P)``.
    :ivar torch.Tensor complete: :math:`\\mathbb{E}[-\\nabla^2 \\log p(x, z)]`.
    :ivar torch.Tensor missing: :math:`\\operatorname{Cov}[\\nabla \\log p(x, z)]`.
    :ivar dict layout: parameter name to ``(offset, shape)`` in the flat vector.
    :ivar int num_samples: posterior samples used.
    :ivar torch.Tensor batch_matrices: the observed information without each of ``B``
        consecutive batches of the samples (groups of chains, for
        :attr:`MCMCGradient.samples <pyro_lvmle.MCMCGradient.samples>`), ``(B, P, P)``: the
        jackknife behind :meth:`standard_errors_mc`; ``None`` with too few samples.
    """

    matrix: torch.Tensor
    complete: torch.Tensor
    missing: torch.Tensor
    layout: dict
    num_samples: int
    batch_matrices: torch.Tensor | None = None

    def covariance(self) -> torch.Tensor:
        """The inverse of the observed information: the MLE's asymptotic covariance.

        :raises ValueError: if the information is not positive definite; the message gives
            the Monte Carlo error of its smallest eigenvalue (relative to the complete
            information) and about how many draws would make it reliably positive.
        """
        try:
            chol = torch.linalg.cholesky(self.matrix)
        except torch.linalg.LinAlgError:
            raise ValueError(
                "observed information is not positive definite: the parameters are not at a "
                "maximum of the likelihood, a parameter is not identified, or too few "
                f"posterior samples were used{self._eigenvalue_advice()}"
            ) from None
        return torch.cholesky_inverse(chol)

    def _eigenvalue_advice(self) -> str:
        if self.batch_matrices is None:
            return ""
        values = torch.stack([_relative_min_eigenvalue(m, self.complete)
                              for m in self.batch_matrices])
        num = len(values)
        se = float(((num - 1) / num * ((values - values.mean()) ** 2).sum()).sqrt())
        full = float(_relative_min_eigenvalue(self.matrix, self.complete))
        # the error shrinks as 1/sqrt(draws); reliable when the eigenvalue (1 minus the
        # largest fraction of missing information) is 4 errors above 0. Its true value is
        # unknown here, so the estimate assumes at least the error itself.
        needed = self.num_samples * (4 * se / max(full, se)) ** 2 if se > 0 else math.inf
        return (f" (with {self.num_samples} draws, the smallest eigenvalue of the information "
                f"relative to the complete information is {full:.3g} with Monte Carlo error "
                f"{se:.2g}, by a jackknife over {num} batches of chains: about "
                f"{max(needed, 4 * self.num_samples):.3g} draws would make it reliable, if "
                "the parameters are at a maximum)")

    def standard_errors(self) -> dict[str, torch.Tensor]:
        """Standard errors per parameter, in each parameter's shape."""
        return self._unflatten(self.covariance().diagonal().sqrt())

    def standard_errors_mc(self) -> dict[str, torch.Tensor]:
        r"""The Monte Carlo error of each of :meth:`standard_errors`, by a jackknife over the
        batches of samples (:attr:`batch_matrices`): with :math:`\widehat{se}_{-b}` the
        standard errors without batch :math:`b`,

        .. math::

            \operatorname{mc}(\widehat{se}) = \Big(\frac{B-1}{B} \sum_b
                (\widehat{se}_{-b} - \overline{\widehat{se}})^2\Big)^{1/2}.

        Infinite where a batch's information is not positive definite; ``inf`` throughout
        without batches.
        """
        if self.num_samples == 0:  # exact: every latent summed out
            return self._unflatten(torch.zeros_like(self.matrix.diagonal()))
        if self.batch_matrices is None:
            return self._unflatten(torch.full_like(self.matrix.diagonal(), math.inf))
        rows = []
        for matrix in self.batch_matrices:
            try:
                rows.append(torch.cholesky_inverse(torch.linalg.cholesky(matrix))
                            .diagonal().sqrt())
            except torch.linalg.LinAlgError:
                return self._unflatten(torch.full_like(self.matrix.diagonal(), math.inf))
        values = torch.stack(rows)
        num = len(values)
        return self._unflatten(((num - 1) / num * ((values - values.mean(0)) ** 2).sum(0))
                               .sqrt())

    def draws_needed(self, relative: float = 0.1) -> int:
        """About how many posterior draws would bring every standard error's Monte Carlo
        error (:meth:`standard_errors_mc`) below ``relative`` times the standard error (the
        error shrinks as one over the square root of the draws).

        :param float relative: the target relative error.
        """
        se = torch.cat([v.reshape(-1) for v in self.standard_errors().values()])
        mc = torch.cat([v.reshape(-1) for v in self.standard_errors_mc().values()])
        worst = float((mc / se).max())
        if not math.isfinite(worst):
            return 4 * self.num_samples
        return max(self.num_samples, math.ceil(self.num_samples * (worst / relative) ** 2))

    def _unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: flat[offset:offset + math.prod(shape)].reshape(shape)
                for name, (offset, shape) in self.layout.items()}

    @property
    def fraction_missing(self) -> torch.Tensor:
        """Per parameter, the share of the complete-data information the latents hide:
        ``diag(missing) / diag(complete)``."""
        return self.missing.diagonal() / self.complete.diagonal()


def observed_information(model, *args, samples: dict | None = None, num_samples: int = 4000,
                         kernel="hmc", num_chains: int = 32, warmup_steps: int = 200,
                         thinning: int = 1, max_plate_nesting: int | None = None,
                         num_batches: int = 8, **kwargs) -> ObservedInformation:
    r"""The observed information of the model's parameters by Louis' identity.

    Derivatives are taken with respect to the parameters' constrained values (so the
    standard errors are on the scale the parameters are reported on), at their current
    values in the param store (or the model's defaults).

    :param model: a Pyro model with ``pyro.param`` parameters and continuous (or
        enumerable) latents. Where every latent is discrete with finite support, the
        information is exact: minus the Hessian of the enumerated log-likelihood (no draws;
        ``num_samples`` 0, Monte Carlo errors 0).
    :param args: the model's arguments (the full data: no subsampling).
    :param dict samples: posterior draws, site name to ``(S, *site shape)`` constrained values,
        e.g. :attr:`MCMCGradient.samples`. Drawn here if ``None``.
    :param int num_samples: draws to take when ``samples`` is ``None``.
    :param kernel: the sampler then (see :class:`~pyro_lvmle.MCMCGradient`).
    :param int num_chains: chains then.
    :param int warmup_steps: warm-up transitions then.
    :param int thinning: transitions between kept draws then.
    :param int max_plate_nesting: the model's deepest plate nesting; guessed if ``None``.
    :param int num_batches: consecutive batches of the samples for the jackknife Monte Carlo
        errors (:meth:`ObservedInformation.standard_errors_mc`); with draws of
        :class:`~pyro_lvmle.MCMCGradient` (chain after chain), batches of whole chains when
        it divides ``num_chains`` (the default 8 divides 32). Fewer than two, or fewer than
        two samples per batch: no jackknife.
    :param kwargs: the model's keyword arguments.

    Example::

        >>> import torch, pyro_lvmle as lv
        >>> model = lv.models.LinearGaussian(dim=1)
        >>> truth = {"w": torch.tensor([0.5]), "sigma": torch.tensor(2.0)}
        >>> data = model.simulate(100, params=truth)
        >>> model.set_params(model.mle(data))
        >>> exact = model.posterior(data).sample((4000,))
        >>> info = lv.observed_information(model, data, samples={"z": exact})
        >>> sorted(info.standard_errors())
        ['sigma', 'w']
    """
    check_int("observed_information", "num_batches", num_batches, low=1)
    if max_plate_nesting is None:
        max_plate_nesting = guess_max_plate_nesting(model, empty_guide, args, kwargs)
    enumerated = config_enumerate(model)
    exact = has_only_enumerable_latents(enumerated, *args, **kwargs)
    if samples is None and not exact:
        if not (isinstance(num_samples, int) and num_samples >= 2):
            raise ValueError(f"observed_information: num_samples must be an int >= 2, got "
                             f"{num_samples!r}")
        per_chain = -(-num_samples // num_chains)
        sampler = MCMCGradient(kernel, num_samples=per_chain, warmup_steps=warmup_steps,
                               num_chains=num_chains, thinning=thinning,
                               max_plate_nesting=max_plate_nesting)
        sampler.draw(model, args, kwargs)
        samples = dict(sampler.samples)
    with poutine.block(), poutine.trace(param_only=True) as capture:
        model(*args, **kwargs)
    values = {name: site["value"].detach() for name, site in capture.trace.nodes.items()}
    if not values:
        raise ValueError("observed_information: the model has no pyro.param parameters")
    curved = [name for name, value in values.items() if _free_coordinates(name, value)
              < value.numel()]
    if curved:
        raise ValueError(
            f"observed_information: the parameters {curved} live on a constraint with fewer "
            "free coordinates than entries (a simplex: its entries add up to one), so their "
            "information, taken in the entries, is singular along the constraint whatever "
            "the draws; write them with free coordinates (logits, normalized in the model) "
            "and ask for those")
    layout, offset = {}, 0
    for name, value in values.items():
        layout[name] = (offset, tuple(value.shape))
        offset += value.numel()
    theta = torch.cat([v.reshape(-1) for v in values.values()]).requires_grad_(True)

    def split(flat):
        return {name: flat[o:o + math.prod(shape)].reshape(shape)
                for name, (o, shape) in layout.items()}

    if exact:  # every latent summed out: minus the Hessian of the exact log-likelihood
        def log_likelihood(flat):
            return enumerated_log_marginal(poutine.substitute(enumerated, data=split(flat)),
                                           *args, max_plate_nesting=max_plate_nesting,
                                           **kwargs)

        with torch.enable_grad():
            matrix = -torch.autograd.functional.hessian(log_likelihood, theta.detach())
        return ObservedInformation(matrix, matrix, torch.zeros_like(matrix), layout, 0)
    with torch.enable_grad():
        substituted = poutine.substitute(model, data=split(theta))
        potential = Potential(substituted, args, kwargs, max_plate_nesting=max_plate_nesting)
        if potential.batched_plates:
            raise ValueError("observed_information: Louis' identity needs the full data; "
                             "call the model without subsampling")
        missing_sites = [site.name for site in potential.sites if site.name not in samples]
        if missing_sites:
            raise ValueError(f"observed_information: samples lack latent sites "
                             f"{missing_sites}; pass every continuous latent site")
        positions = potential.pack({name: samples[name].detach() for name in
                                    (site.name for site in potential.sites)})
        num = positions.shape[0]
        bounds = torch.linspace(0, num, num_batches + 1).round().long().tolist() \
            if num >= 2 * num_batches and num_batches >= 2 else [0, num]
        parts = []
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):  # one graph per batch
            log_joint = potential.log_joint(positions[lo:hi])
            if not torch.isfinite(log_joint).all():
                raise ValueError("observed_information: log p(x, z) is not finite at some "
                                 "samples")
            parts.append(louis_terms(log_joint, [theta]))
    sizes = torch.tensor([hi - lo for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)],
                         dtype=positions.dtype)
    grads = torch.cat([g for g, _ in parts])
    completes = torch.stack([c for _, c in parts])  # (B, P, P), batch means
    complete = (sizes[:, None, None] * completes).sum(0) / num
    matrix, missing = _information(grads, complete)
    batch_matrices = None
    if len(parts) > 1:
        batch_matrices = torch.stack([
            _information(torch.cat([g for j, (g, _) in enumerate(parts) if j != b]),
                         ((sizes[:, None, None] * completes).sum(0)
                          - sizes[b] * completes[b]) / (num - sizes[b]))[0]
            for b in range(len(parts))])
    return ObservedInformation(matrix, complete, missing, layout, num, batch_matrices)


def _free_coordinates(name, value) -> int:
    """The free coordinates of a Pyro parameter: those of a bijection onto its constraint (a
    simplex of K entries has K - 1); its entries where that is not known."""
    constraint = getattr(pyro.get_param_store(), "_constraints", {}).get(name)
    if constraint is None:
        return value.numel()
    try:
        return math.prod(biject_to(constraint).inverse_shape(value.shape))
    except (NotImplementedError, ValueError, TypeError):
        return value.numel()


def _information(grads, complete):
    centred = grads - grads.mean(0)
    missing = centred.T @ centred / grads.shape[0]
    return complete - missing, missing


def _relative_min_eigenvalue(matrix, complete):
    """The smallest eigenvalue of ``L^-1 matrix L^-T`` for ``complete = L L^T`` (1 minus the
    largest fraction of missing information); that of ``matrix`` scaled by the diagonal if
    ``complete`` is not positive definite."""
    try:
        chol = torch.linalg.cholesky(complete)
    except torch.linalg.LinAlgError:
        chol = torch.diag(complete.diagonal().abs().sqrt())
    half = torch.linalg.solve_triangular(chol, matrix, upper=False)
    whitened = torch.linalg.solve_triangular(chol, half.mT, upper=False)
    return torch.linalg.eigvalsh(0.5 * (whitened + whitened.mT)).min()


def standard_errors(model, *args, return_mc_error: bool = False, **kwargs):
    """Standard errors of the model's parameters at their current values (the MLE) by Louis'
    identity: :func:`observed_information` (same arguments), inverted.

    With few draws and a large fraction of missing information (a non-centered random
    effect on a population mean), Louis' estimate is noisy: check its Monte Carlo error
    (``return_mc_error=True``, or :meth:`ObservedInformation.standard_errors_mc` and
    :meth:`ObservedInformation.draws_needed`). When the information is not positive definite
    the error says how many draws would make it reliable.

    :param model: the Pyro model.
    :param args: its arguments.
    :param bool return_mc_error: also return each standard error's Monte Carlo error
        (jackknife over batches of chains).
    :param kwargs: :func:`observed_information`'s keywords and the model's.
    :returns: ``{name: se}``, or ``({name: se}, {name: Monte Carlo error})``.
    """
    info = observed_information(model, *args, **kwargs)
    if return_mc_error:
        return info.standard_errors(), info.standard_errors_mc()
    return info.standard_errors()
