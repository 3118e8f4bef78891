"""Laplace modes and adaptive Gauss-Hermite quadrature over independent low-dimensional units.

Used by the models whose per-datum latent is a few dimensions (mixed-effects models): the
integral of each unit's joint density over its latent is computed by a tensor-product
Gauss-Hermite rule centred at the unit's posterior mode and scaled by its Laplace covariance
(Liu & Pierce 1994; Pinheiro & Bates 1995).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch

__all__ = []


def _derivatives(log_joint, x):
    """Value, gradient and Hessian of each unit's ``log_joint`` at ``x`` of shape (U, k)."""
    k = x.shape[-1]
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        value = log_joint(x)
        (grad,) = torch.autograd.grad(value.sum(), x, create_graph=True)
        rows = [torch.autograd.grad(grad[..., i].sum(), x, retain_graph=i < k - 1)[0]
                for i in range(k)]
    return value.detach(), grad.detach(), torch.stack(rows, -2).detach()


def laplace_mode(log_joint, init, *, max_iter=200, tol=1e-9, max_step=1.0):
    """Maximize each unit's ``log_joint`` by damped Newton steps with backtracking.

    :param log_joint: maps latents of shape ``(..., U, k)`` to ``(..., U)``; units are
        independent, so one call's gradient gives every unit's.
    :param torch.Tensor init: starting point ``(U, k)``.
    :param float max_step: largest change of one coordinate in one step.
    :returns: ``(mode, neg_hessian)`` of shapes ``(U, k)`` and ``(U, k, k)``.
    :raises ValueError: if the log joint is not finite at ``init`` or Newton fails to converge.
    """
    x = init.detach().clone()
    value, grad, hess = _derivatives(log_joint, x)
    if not torch.isfinite(value).all():
        raise ValueError("laplace_mode: the log joint is not finite at the starting point")
    eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
    for _ in range(max_iter):
        if grad.abs().max() < tol:
            break
        # Levenberg damping makes the step an ascent direction where the Hessian is indefinite
        neg_h = -hess
        min_eig = torch.linalg.eigvalsh(neg_h)[..., 0]
        damping = torch.where(min_eig > 0, torch.zeros_like(min_eig), 1e-3 - min_eig)
        step = torch.linalg.solve(neg_h + damping[:, None, None] * eye, grad)
        # a trust region of max_step per coordinate keeps the first steps from overshooting
        step = step / (step.abs().amax(-1, keepdim=True) / max_step).clamp(min=1.0)
        t = torch.ones_like(value)
        for _ in range(60):
            trial = x + t[:, None] * step
            trial_value = log_joint(trial).detach()
            ok = torch.isfinite(trial_value) & (trial_value >= value - 1e-12 * value.abs())
            if ok.all():
                break
            t = torch.where(ok, t, t / 2)
        x = torch.where(ok[:, None], trial, x)
        value, grad, hess = _derivatives(log_joint, x)
    else:
        raise ValueError(
            f"laplace_mode: Newton did not converge in {max_iter} iterations "
            f"(largest gradient {grad.abs().max().item():.3g})"
        )
    neg_h = -hess
    if (torch.linalg.eigvalsh(neg_h)[..., 0] <= 0).any():
        raise ValueError("laplace_mode: the mode found is not a strict maximum for every unit")
    return x, neg_h


def gauss_hermite_log_integral(log_joint, mode, neg_hessian, num_points):
    r"""Adaptive Gauss-Hermite estimate of :math:`\log\int e^{f_u(x)}\,dx` for each unit ``u``.

    With :math:`\Sigma_u = L_u L_u^\top` the inverse of ``neg_hessian`` and the
    :math:`n^k` product nodes :math:`y_j` and weights :math:`w_j` of the rule for
    :math:`e^{-\|y\|^2}`,

    .. math::

        \int e^{f(x)} dx \approx 2^{k/2} |L| \sum_j w_j\, e^{\|y_j\|^2}
            e^{f(\hat x + \sqrt2 L y_j)}.

    The nodes are fixed (detached), so the result is differentiable in whatever
    ``log_joint`` closes over, e.g. the model's parameters.
    """
    k = mode.shape[-1]
    nodes, weights = np.polynomial.hermite.hermgauss(num_points)
    grid = torch.tensor(list(itertools.product(nodes, repeat=k)), dtype=mode.dtype,
                        device=mode.device)
    log_w = torch.tensor(np.log(weights), dtype=mode.dtype, device=mode.device)
    log_w = log_w[torch.tensor(list(itertools.product(range(num_points), repeat=k)),
                               device=mode.device)].sum(-1)
    chol = torch.linalg.cholesky(torch.linalg.inv(neg_hessian)).detach()  # (U, k, k)
    points = mode.detach() + math.sqrt(2.0) * torch.einsum("uij,nj->nui", chol, grid)
    log_f = log_joint(points)  # (n^k, U)
    log_det = chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    correction = (log_w + grid.pow(2).sum(-1)).unsqueeze(-1)
    return 0.5 * k * math.log(2.0) + log_det + torch.logsumexp(correction + log_f, 0)
