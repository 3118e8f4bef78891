"""Assertion helpers shared by the statistical tests."""

from __future__ import annotations

import math

import torch


def mean_and_stderr(samples: torch.Tensor, dim: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample mean and its standard error along ``dim`` for independent draws."""
    n = samples.shape[dim]
    return samples.mean(dim), samples.std(dim) / n**0.5


def assert_within_stderr(estimate, truth, stderr, num_stderr: float = 4.0, what: str = ""):
    """Assert ``|estimate - truth| <= num_stderr * stderr`` elementwise.

    The default of 4 standard errors makes a false failure rare (about 6e-5 per scalar
    under normality) while a planted bug of a few standard errors still fails.
    """
    estimate, truth, stderr = (torch.as_tensor(t, dtype=torch.float64)
                               for t in (estimate, truth, stderr))
    if not (stderr > 0).all():
        raise AssertionError(f"{what}: standard error must be positive, got {stderr}")
    z = ((estimate - truth) / stderr).abs()
    if not (z <= num_stderr).all():
        raise AssertionError(
            f"{what}: estimate {estimate} differs from {truth} by {z.max().item():.2f} "
            f"standard errors (> {num_stderr}); stderr {stderr}"
        )


def assert_close(actual, expected, atol: float, rtol: float = 0.0, what: str = ""):
    """Assert two tensors agree to ``atol + rtol * |expected|``, with a readable message."""
    actual = torch.as_tensor(actual, dtype=torch.float64)
    expected = torch.as_tensor(expected, dtype=torch.float64)
    err = (actual - expected).abs()
    bound = atol + rtol * expected.abs()
    if not (err <= bound).all():
        raise AssertionError(
            f"{what}: max error {err.max().item():.3g} exceeds tolerance; "
            f"actual {actual}, expected {expected}"
        )


def central_difference(fn, x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Numerical gradient of scalar ``fn`` at ``x`` by central differences."""
    grad = torch.zeros_like(x)
    flat = grad.view(-1)
    for i in range(x.numel()):
        step = torch.zeros_like(x).view(-1)
        step[i] = eps
        step = step.view_as(x)
        flat[i] = (fn(x + step) - fn(x - step)) / (2 * eps)
    return grad


def capped_effective_sample_size(draws: torch.Tensor) -> torch.Tensor:
    """Effective sample size of ``(chains, draws, dim)`` MCMC output, per coordinate.

    Pyro's estimator (Geyer's initial monotone sequence over chains) can return values above
    the number of draws, or negative ones, for antithetic chains such as HMC near half a
    period; those are capped at the number of draws, which only widens the tolerances.
    """
    from pyro.ops.stats import effective_sample_size

    total = draws.shape[0] * draws.shape[1]
    ess = effective_sample_size(draws, chain_dim=0, sample_dim=1)
    ess = torch.where(torch.isfinite(ess) & (ess > 0), ess, torch.full_like(ess, total))
    return ess.clamp(max=total)


def assert_polyak_average(values, truth, what, num_batches: int = 5):
    """The averaged iterate against the truth, with the larger of two standard errors: the
    trajectory's ESS-based one, and the batch-means one (the spread of ``num_batches``
    consecutive block means over ``sqrt(num_batches)``), which keeps the slow wandering of an
    iterate along a flat direction of the likelihood (a small noise scale) that a short
    trajectory's ESS estimate misses."""
    values = torch.stack(list(values))
    flat = values.reshape(values.shape[0], -1)
    ess = capped_effective_sample_size(values.reshape(1, values.shape[0], -1))
    size = flat.shape[0] // num_batches
    means = flat[:size * num_batches].reshape(num_batches, size, -1).mean(1)
    stderr = torch.maximum(flat.std(0) / ess.sqrt(), means.std(0) / num_batches**0.5)
    assert_within_stderr(values.mean(0).reshape(-1), truth.reshape(-1), stderr, what=what)


def likelihood_gap_tolerance(num_params: int, effective_draws: float) -> float:
    """How far below the maximum a Monte Carlo EM estimate's log-likelihood may fall.

    An estimate off the MLE by delta loses delta' I delta / 2 of log-likelihood, distributed
    about as tr(I Sigma) / p times a chi-square with p degrees of freedom over 2, for Monte
    Carlo covariance Sigma. With n effective draws, I Sigma <= I_missing I^-1 / n <= 1 / n,
    so the loss exceeds (p + 4 sqrt(2p)) / (2n) (chi-square mean plus 4 sd) only rarely.
    """
    return (num_params + 4 * math.sqrt(2 * num_params)) / (2 * effective_draws)
