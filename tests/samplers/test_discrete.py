"""The discrete steps' contracts: what they move, what they report, what they refuse.
(Their invariance is checked in ``test_invariance.py``.)"""

import math
from functools import partial

import pytest
import torch

from pyro_lvmle.samplers import (
    BatchedKernel,
    DiscreteBlock,
    gibbs_with_gradients_step,
    hmc_init,
    metropolis_within_gibbs_step,
    mixed_step,
    stack_info,
)
from tests.common import assert_within_stderr, capped_effective_sample_size
from tests.samplers.test_invariance import (
    BernoulliGaussian,
    Gaussian,
    Ising,
    Poisson,
    PoissonGamma,
    Tilted,
)

DISCRETE_STEPS = [metropolis_within_gibbs_step, gibbs_with_gradients_step]


@pytest.mark.parametrize("step", DISCRETE_STEPS)
def test_only_discrete_coordinates_move_and_the_cache_is_exact(step):
    target = BernoulliGaussian()
    state = hmc_init(target.sample(500), target)
    new, info = step(state, target)
    continuous = ~target.discrete_mask
    assert torch.equal(new.position[:, continuous], state.position[:, continuous])
    energy, grad = target.value_and_grad(new.position)
    assert torch.equal(new.potential_energy, energy) and torch.equal(new.grad, grad)
    torch.testing.assert_close(info.energy_error, energy - state.potential_energy)
    assert torch.equal(info.accepted, (new.position != state.position).any(-1))
    assert not info.divergent.any()
    assert info.accept_prob.shape == (500,)
    assert ((info.accept_prob >= 0) & (info.accept_prob <= 1)).all()


def test_gibbs_draws_are_always_accepted():
    target = Ising()
    _, info = metropolis_within_gibbs_step(hmc_init(target.sample(100), target), target)
    assert torch.equal(info.accept_prob, torch.ones(100))


def test_random_walk_never_leaves_the_support():
    target = Poisson()
    state = hmc_init(torch.zeros(2000, 3), target)
    for _ in range(3):
        state, info = metropolis_within_gibbs_step(state, target, window=3)
        assert (state.position >= 0).all()
        assert torch.equal(state.position, state.position.round())
    # from 0 half of the +-1 proposals (those below 0) are rejected outright
    state = hmc_init(torch.zeros(4000, 3), target)
    _, info = metropolis_within_gibbs_step(state, target)
    assert info.accept_prob.mean() < 0.5


def test_mixed_step_reports_both_acceptances_and_warms_up():
    target = BernoulliGaussian()
    kernel = BatchedKernel(partial(mixed_step, num_steps=3), step_size=0.5)
    state = kernel.init(target.sample(64), target)
    state, warm = kernel.warmup(state, target, 30)
    assert warm.discrete_accept_prob.shape == (30, 64)
    assert torch.isfinite(state.step_size).all() and (state.step_size != 0.5).any()
    _, info = kernel.step(state, target)
    assert info.discrete_accept_prob.shape == (64,)


def test_mixed_step_skips_a_missing_half():
    # no continuous coordinate: the discrete step's info, step size untouched by adaptation
    target = Poisson()
    state = hmc_init(target.sample(10), target, step_size=0.3)
    new, info = mixed_step(state, target, adapt_step_size=True)
    assert torch.equal(new.step_size, state.step_size)
    assert info.discrete_accept_prob is None and info.accept_prob.shape == (10,)
    # no discrete block: plain HMC
    target = Gaussian()
    torch.manual_seed(1)
    new, info = mixed_step(hmc_init(target.sample(10), target), target, num_steps=2)
    assert info.discrete_accept_prob is None


def test_stack_info_keeps_absent_fields_absent():
    target = Gaussian()
    state = hmc_init(target.sample(4), target)
    _, info = mixed_step(state, target)
    stacked = stack_info([info, info], state)
    assert stacked.discrete_accept_prob is None and stacked.accept_prob.shape == (2, 4)


def test_bad_input():
    target = Gaussian()
    state = hmc_init(target.sample(3), target)
    with pytest.raises(ValueError, match="no discrete_blocks"):
        metropolis_within_gibbs_step(state, target)
    target = Poisson()
    state = hmc_init(target.sample(3), target)
    with pytest.raises(ValueError, match="window"):
        metropolis_within_gibbs_step(state, target, window=0)
    with pytest.raises(TypeError, match="window"):
        gibbs_with_gradients_step(state, target, window=1.5)
    target.discrete_blocks = (DiscreteBlock("n", 0, 3, (3,), 1, 0.0, math.inf, "poisson"),)
    with pytest.raises(ValueError, match="kind 'poisson'"):
        metropolis_within_gibbs_step(state, target)
    target.discrete_blocks = (DiscreteBlock("n", 1, 3, (3,), 1, 0.0, math.inf, "count"),)
    with pytest.raises(ValueError, match="does not fit"):
        metropolis_within_gibbs_step(state, target)
    target.discrete_blocks = (DiscreteBlock("n", 0, 3, (3,), 1, 0.0, math.inf, "binary"),)
    with pytest.raises(ValueError, match="finite upper"):
        metropolis_within_gibbs_step(state, target)


def _long_run(target, num_chains=32, warmup_steps=100, num_samples=300):
    """Chains started at n = 0, lam = 1, warmed up, then run: ``(chains, draws, dim)``."""
    kernel = BatchedKernel(partial(mixed_step, num_steps=5, discrete_step=partial(
        metropolis_within_gibbs_step, window=2)), step_size=0.3)
    state = kernel.init(torch.zeros(num_chains, 3), target)
    state, _ = kernel.warmup(state, target, warmup_steps)
    draws = []
    for _ in range(num_samples):
        state, _ = kernel.step(state, target)
        draws.append(state.position)
    return torch.stack(draws, 1)


def _long_run_means(draws):
    ess = capped_effective_sample_size(draws)
    return draws.mean((0, 1)), draws.std((0, 1)) / ess.sqrt()


def test_mixed_step_converges_from_a_bad_start():
    # invariance (test_invariance.py) says nothing of reaching the target: every chain starts
    # far below E n = 3; after warm-up the means match within ESS-based standard errors
    target = PoissonGamma()
    truth, _ = target.exact_moments()
    mean, stderr = _long_run_means(_long_run(target))
    assert_within_stderr(mean, truth, stderr, what="long-run means")
    # control: the same run aimed at a target tilted by one sd per coordinate misses
    wrong = Tilted(target, 1.0 / torch.tensor([2.4, 2.4, 0.6]))
    mean, stderr = _long_run_means(_long_run(wrong))
    with pytest.raises(AssertionError):
        assert_within_stderr(mean, truth, stderr)
