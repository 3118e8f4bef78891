"""Annealed importance sampling against the exact marginal likelihood of a conjugate model."""

import math

import pytest
import torch

import pyro_lvmle as lv
from pyro_lvmle.evidence import annealed_importance_sampling, check_betas
from pyro_lvmle.samplers import BatchedKernel, hmc_step
from pyro_lvmle.traces import Potential


def _setup(num_data=5):
    torch.manual_seed(0)
    model = lv.models.LinearGaussian(dim=2)
    x = model.simulate(num_data)
    exact = float(model.log_marginal(x).detach())
    sampler = BatchedKernel(hmc_step, step_size=0.3, adapt_step_size=False, num_steps=3)
    return model, Potential(model, (x,)), exact, sampler


def _within(estimate, exact, num_se=4.0):
    return abs(float(estimate.value) - exact) < num_se * float(estimate.stderr) + 1e-3


def test_forward_estimate_matches_exact_and_error_shrinks_with_more_betas():
    _, potential, exact, sampler = _setup()
    errors = []
    for num_betas in (5, 50, 300):
        result = annealed_importance_sampling(potential.tempered, potential.sample_prior(400),
                                              torch.linspace(0, 1, num_betas), sampler)
        errors.append(abs(float(result.estimate.value) - exact))
        assert result.accept_prob.shape == (num_betas - 2,)
    assert _within(result.estimate, exact)
    assert errors[-1] < errors[0]


def test_reverse_run_from_exact_posterior_draws_bounds_from_above():
    model, potential, exact, sampler = _setup()
    # exact posterior draws of z given x: N((x + w) / 2, sigma^2 / 2 + ...) from the model
    z = model.posterior(potential.args[0]).sample((400,))
    start = potential.pack({"z": z})
    result = annealed_importance_sampling(potential.tempered, start, torch.linspace(1, 0, 300),
                                          sampler)
    upper = -result.estimate.value  # estimates log(Z_0 / Z_1) = -log p(x)
    assert float(upper) > exact - 4 * float(result.estimate.stderr)
    assert abs(float(upper) - exact) < 0.1


def test_planted_control_wrong_initial_distribution_is_detected():
    _, potential, exact, sampler = _setup()
    wrong = 2.0 * potential.sample_prior(400)  # not draws of the prior: weights invalid
    result = annealed_importance_sampling(potential.tempered, wrong, torch.linspace(0, 1, 50),
                                          sampler)
    assert not _within(result.estimate, exact)


def test_refuses_adaptive_sampler_and_bad_betas():
    _, potential, _, _ = _setup()
    adaptive = BatchedKernel(hmc_step, step_size=0.3, track_rate=0.02)
    with pytest.raises(ValueError, match="adapt_step_size=False"):
        annealed_importance_sampling(potential.tempered, potential.sample_prior(4), [0, 1],
                                     adaptive)
    for bad in ([1.0], [0.0, 0.5, 0.2], [0.0, math.nan], [[0.0, 1.0]]):
        with pytest.raises(ValueError, match="monotone"):
            check_betas("ais", bad)
