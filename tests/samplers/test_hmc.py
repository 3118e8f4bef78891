"""The batched samplers leave their target invariant; long runs match moments within ESS."""

import math

import pytest
import torch

from pyro_lvmle.samplers import hmc_init, hmc_step, mala_step, ula_step, warmup
from tests.common import assert_within_stderr, capped_effective_sample_size, mean_and_stderr

NUM_CHAINS = 20_000


class Gaussian:
    """U(q) = 0.5 (q - loc)^T diag(scale^-2) (q - loc), with exact draws."""

    def __init__(self, loc, scale):
        self.loc, self.scale = torch.as_tensor(loc), torch.as_tensor(scale)

    def value_and_grad(self, q):
        z = (q - self.loc) / self.scale
        return 0.5 * z.pow(2).sum(-1), z / self.scale

    def sample(self, n):
        return self.loc + self.scale * torch.randn(n, len(self.loc))


class Banana:
    """x1 ~ N(0, 1), x2 | x1 ~ N(b (x1^2 - 1), 0.5^2): curved, with exact draws."""

    b = 1.0

    def value_and_grad(self, q):
        with torch.enable_grad():
            q = q.detach().requires_grad_(True)
            x1, x2 = q.unbind(-1)
            energy = 0.5 * x1**2 + 0.5 * ((x2 - self.b * (x1**2 - 1)) / 0.5) ** 2
            (grad,) = torch.autograd.grad(energy.sum(), q)
        return energy.detach(), grad

    def sample(self, n):
        x1 = torch.randn(n)
        return torch.stack([x1, self.b * (x1**2 - 1) + 0.5 * torch.randn(n)], -1)


def _moments(x):
    """First and second moments per coordinate, with standard errors."""
    stats = torch.cat([x, x.pow(2)], -1)
    return mean_and_stderr(stats)


def _one_transition(target, proposal_target, step, **kwargs):
    exact = target.sample(NUM_CHAINS)
    state = hmc_init(exact, proposal_target, step_size=kwargs.pop("step_size"))
    for _ in range(3):
        state, _ = step(state, proposal_target, **kwargs)
    return exact, state.position


TARGETS = {
    "gaussian": lambda: Gaussian([1.0, -2.0, 0.5], [0.5, 1.0, 2.0]),
    "banana": Banana,
}
STEPS = {
    "hmc": (hmc_step, {"num_steps": 5, "step_size": 0.3}),
    "mala": (mala_step, {"step_size": 0.5}),
}


@pytest.mark.parametrize("step_name", list(STEPS))
@pytest.mark.parametrize("target_name", list(TARGETS))
def test_transitions_leave_the_target_invariant(target_name, step_name):
    target = TARGETS[target_name]()
    step, kwargs = STEPS[step_name]
    exact, moved = _one_transition(target, target, step, **dict(kwargs))
    truth, _ = _moments(target.sample(NUM_CHAINS * 10))
    mean, se = _moments(moved)
    assert_within_stderr(mean, truth, se * 1.05, what="moments after 3 transitions")
    assert not torch.equal(exact, moved)  # it did move


@pytest.mark.parametrize("step_name", list(STEPS))
def test_planted_bug_aimed_at_a_wrong_target_fails(step_name):
    target = Gaussian([1.0, -2.0, 0.5], [0.5, 1.0, 2.0])
    wrong = Gaussian([1.2, -2.0, 0.5], [0.5, 1.0, 2.0])
    step, kwargs = STEPS[step_name]
    _, moved = _one_transition(target, wrong, step, **dict(kwargs))
    truth, _ = _moments(target.sample(NUM_CHAINS * 10))
    mean, se = _moments(moved)
    with pytest.raises(AssertionError):
        assert_within_stderr(mean, truth, se * 1.05)


def test_ula_is_biased_where_mala_is_not():
    # ULA's stationary variance for N(0, 1) with Langevin step h is 1 / (1 - h/2) > 1
    target = Gaussian([0.0], [1.0])
    state = hmc_init(target.sample(NUM_CHAINS), target, step_size=1.0)  # h = 0.5
    for _ in range(20):
        state, _ = ula_step(state, target)
    var, se = mean_and_stderr(state.position.pow(2))
    assert_within_stderr(var, 1 / (1 - 0.25), se, what="ULA's stationary variance")


def test_long_run_moments_within_effective_sample_size():
    target = Gaussian([1.0, -2.0, 0.5], [0.1, 1.0, 10.0])
    state = hmc_init(torch.zeros(8, 3), target, step_size=0.05)
    adapted = warmup(state, target, 400, num_steps=10)
    state, draws = adapted.state, []
    for _ in range(1000):
        state, _ = hmc_step(state, target, num_steps=10)
        draws.append(state.position)
    draws = torch.stack(draws, 1)  # (chains, draws, dim)
    ess = capped_effective_sample_size(draws)
    assert (ess > 200).all(), ess
    mean = draws.mean((0, 1))
    assert_within_stderr(mean, target.loc, target.scale / ess.sqrt(), what="mean")
    # warm-up found the scales: the inverse mass is the variance, within 30%
    ratio = adapted.state.inverse_mass.mean(0) / target.scale.pow(2)
    assert ((ratio > 0.7) & (ratio < 1.3)).all(), ratio


def test_dual_averaging_reaches_the_target_acceptance():
    target = Gaussian([0.0] * 5, [1.0] * 5)
    state = hmc_init(torch.randn(64, 5), target, step_size=2.0)
    adapted = warmup(state, target, 300, num_steps=5, adapt_mass=False, target_accept=0.8)
    accepts = [hmc_step(adapted.state, target, num_steps=5)[1].accept_prob.mean()
               for _ in range(50)]
    assert 0.65 < torch.stack(accepts).mean() < 0.95


def test_shared_step_size_is_one_number():
    target = Gaussian([0.0, 0.0], [1.0, 3.0])
    state = hmc_init(torch.randn(10, 2), target, step_size=0.5)
    adapted = warmup(state, target, 100, num_steps=3, shared_step_size=True)
    assert torch.allclose(adapted.state.step_size, adapted.state.step_size[0])


def test_bad_input():
    target = Gaussian([0.0], [1.0])
    with pytest.raises(ValueError, match="num_chains"):
        hmc_init(torch.zeros(3), target)
    with pytest.raises(ValueError, match="step_size"):
        hmc_init(torch.zeros(3, 1), target, step_size=0.0)


class _HalfLine:
    """The exponential density on ``q > 0``: energy ``q``, +inf below 0."""

    def value_and_grad(self, q):
        energy = torch.where(q[:, 0] > 0, q[:, 0], torch.full_like(q[:, 0], math.inf))
        return energy, torch.ones_like(q)


def test_chains_started_outside_the_support_are_refused():
    # they were accepted silently; a chain at energy +inf with a useless gradient never
    # moved (5 of 32 such chains of a count below its binomial total, last session)
    start = torch.tensor([[1.0], [-1.0], [2.0], [-3.0]])
    with pytest.raises(ValueError, match=r"energy is inf at 2 of 4 .*chains \[1, 3\]"):
        hmc_init(start, _HalfLine())
    hmc_init(start.abs(), _HalfLine())  # inside: fine
