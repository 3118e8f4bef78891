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

import pyro.poutine as poutine
import torch

from ..traces import Potential
from ..traces.particles import guess_max_plate_nesting
from .fisher import MCMCGradient, empty_guide

__all__ = ["ObservedInformation", "louis_terms", "observed_information", "standard_errors"]


class ObservedInformation(NamedTuple):
    """Louis' identity's terms, over the model's parameters flattened in ``layout`` order.

    :ivar torch.Tensor matrix: the observed information ``complete - missing``, ``(P, P)``.
    :ivar torch.Tensor complete: :math:`\\mathbb{E}[-\\nabla^2 \\log p(x, z)]`.
    :ivar torch.Tensor missing: :math:`\\operatorname{Cov}[\\nabla \\log p(x, z)]`.
    :ivar dict layout: parameter name to ``(offset, shape)`` in the flat vector.
    :ivar int num_samples: posterior samples used.
    """

    matrix: torch.Tensor
    complete: torch.Tensor
    missing: torch.Tensor
    layout: dict
    num_samples: int

    def covariance(self) -> torch.Tensor:
        """The inverse of the observed information: the MLE's asymptotic covariance.

        :raises ValueError: if the information is not positive definite.
        """
        try:
            chol = torch.linalg.cholesky(self.matrix)
        except torch.linalg.LinAlgError:
            raise ValueError(
                "observed information is not positive definite: the parameters are not at a "
                "maximum of the likelihood, a parameter is not identified, or too few "
                "posterior samples were used"
            ) from None
        return torch.cholesky_inverse(chol)

    def standard_errors(self) -> dict[str, torch.Tensor]:
        """Standard errors per parameter, in each parameter's shape."""
        se = self.covariance().diagonal().sqrt()
        return {name: se[offset:offset + math.prod(shape)].reshape(shape)
                for name, (offset, shape) in self.layout.items()}

    @property
    def fraction_missing(self) -> torch.Tensor:
        """Per parameter, the share of the complete-data information the latents hide:
        ``diag(missing) / diag(complete)``."""
        return self.missing.diagonal() / self.complete.diagonal()


def observed_information(model, *args, samples: dict | None = None, num_samples: int = 4000,
                         kernel="hmc", num_chains: int = 32, warmup_steps: int = 200,
                         thinning: int = 1, max_plate_nesting: int | None = None,
                         **kwargs) -> ObservedInformation:
    r"""The observed information of the model's parameters by Louis' identity.

    Derivatives are taken with respect to the parameters' constrained values (so the
    standard errors are on the scale the parameters are reported on), at their current
    values in the param store (or the model's defaults).

    :param model: a Pyro model with ``pyro.param`` parameters and continuous (or
        enumerable) latents.
    :param args: the model's arguments (the full data: no subsampling).
    :param dict samples: posterior draws, site name to ``(S, *site shape)`` constrained values,
        e.g. :attr:`MCMCGradient.samples`. Drawn here if ``None``.
    :param int num_samples: draws to take when ``samples`` is ``None``.
    :param kernel: the sampler then (see :class:`~pyro_lvmle.MCMCGradient`).
    :param int num_chains: chains then.
    :param int warmup_steps: warm-up transitions then.
    :param int thinning: transitions between kept draws then.
    :param int max_plate_nesting: the model's deepest plate nesting; guessed if ``None``.
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
    if max_plate_nesting is None:
        max_plate_nesting = guess_max_plate_nesting(model, empty_guide, args, kwargs)
    if samples is None:
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
    layout, offset = {}, 0
    for name, value in values.items():
        layout[name] = (offset, tuple(value.shape))
        offset += value.numel()
    theta = torch.cat([v.reshape(-1) for v in values.values()]).requires_grad_(True)

    def split(flat):
        return {name: flat[o:o + math.prod(shape)].reshape(shape)
                for name, (o, shape) in layout.items()}

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
        log_joint = potential.log_joint(positions)  # (S,)
        if not torch.isfinite(log_joint).all():
            raise ValueError("observed_information: log p(x, z) is not finite at some samples")
        grads, complete = louis_terms(log_joint, [theta])
    num = log_joint.shape[0]
    centred = grads - grads.mean(0)
    missing = centred.T @ centred / num
    return ObservedInformation(complete - missing, complete, missing, layout, num)


def louis_terms(log_joint: torch.Tensor, leaves) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The two ingredients of Louis' identity from ``S`` draws: the per-draw complete-data
    scores and the mean complete-data information,

    .. math::

        s_j = \nabla_\theta \log p(x, z_j; \theta), \qquad
        \bar I_c = -\frac1S \sum_j \nabla^2_\theta \log p(x, z_j; \theta),

    by one backward pass for the scores (the weights trick) and one per parameter
    coordinate for the Hessian.

    :param torch.Tensor log_joint: ``(S,)`` values of :math:`\log p(x, z_j; \theta)`, built
        with a graph to the ``leaves``.
    :param leaves: the parameter tensors :math:`\theta` (flattened and concatenated in order).
    :returns: the scores ``(S, P)`` and :math:`\bar I_c` ``(P, P)``, symmetrized, detached.

    Example::

        >>> import torch
        >>> from pyro_lvmle.gradients.information import louis_terms
        >>> theta = torch.tensor([0.5], requires_grad=True)
        >>> z = torch.tensor([0.0, 1.0])
        >>> scores, complete = louis_terms(-0.5 * (z - theta) ** 2, [theta])
        >>> scores[:, 0], complete
        (tensor([-0.5000,  0.5000]), tensor([[1.]]))
    """
    leaves = list(leaves)
    with torch.enable_grad():
        weights = torch.ones_like(log_joint, requires_grad=True)
        firsts = torch.autograd.grad(log_joint, leaves, grad_outputs=weights, create_graph=True,
                                     allow_unused=True)
        grad_sum = torch.cat([(torch.zeros_like(leaf) if g is None else g).reshape(-1)
                              for leaf, g in zip(leaves, firsts, strict=True)])
        per_sample, hessian = [], []
        for p in range(grad_sum.numel()):
            if not grad_sum[p].requires_grad:  # the parameter does not enter log p
                per_sample.append(torch.zeros_like(log_joint))
                hessian.append(torch.zeros_like(grad_sum))
                continue
            g_p, *h_p = torch.autograd.grad(grad_sum[p], [weights, *leaves], retain_graph=True,
                                            allow_unused=True)
            per_sample.append(torch.zeros_like(log_joint) if g_p is None else g_p)
            hessian.append(torch.cat([(torch.zeros_like(leaf) if h is None else h).reshape(-1)
                                      for leaf, h in zip(leaves, h_p, strict=True)]))
    grads = torch.stack(per_sample, -1).detach()  # (S, P)
    complete = -torch.stack(hessian).detach() / log_joint.shape[0]
    return grads, 0.5 * (complete + complete.T)


def standard_errors(model, *args, **kwargs) -> dict[str, torch.Tensor]:
    """Standard errors of the model's parameters at their current values (the MLE) by Louis'
    identity: :func:`observed_information` (same arguments), inverted.

    :param model: the Pyro model.
    :param args: its arguments.
    :param kwargs: :func:`observed_information`'s keywords and the model's.
    """
    return observed_information(model, *args, **kwargs).standard_errors()
