"""BatchedKernel's adaptation after warm-up: the step-size tracking on the chains' mean
acceptance leaves Neal's funnel (where the acceptance rate depends strongly on the position)
within 4 standard errors over 300 transitions of 4096 chains, where the former per-chain
tracking, the planted control, does not; its rule; the frozen default; the shared step size
of warm-up; make_sampler's settings.

The one-transition invariance harness (``test_invariance.py``) cannot see an adaptation bias:
the step size of a first transition does not depend on where the chains are. Here exact draws
are moved 300 transitions; if every transition leaves the target invariant they stay exact
draws, and the mean and variance of the funnel's log scale ``v ~ N(0, 3^2)`` stay within 4
standard errors (``3 / sqrt(C)`` and ``9 sqrt(2 / (C - 1))``) of 0 and 9.
"""

from __future__ import annotations

import math

import pytest
import torch

from pyro_lvmle.samplers import BatchedKernel, hmc_step, make_sampler, mala_step
from tests.common import assert_within_stderr

NUM_CHAINS = 4096


class Funnel:
    """Neal's funnel in five dimensions: ``v ~ N(0, 3^2)``, ``x_i | v ~ N(0, exp(v / 2)^2)``."""

    dim = 5

    def __call__(self, q):
        v, x = q[:, 0], q[:, 1:]
        return v ** 2 / 18 + 0.5 * x.pow(2).sum(-1) * torch.exp(-v) + 2 * v

    def value_and_grad(self, q):
        q = q.detach().requires_grad_()
        with torch.enable_grad():
            energy = self(q)
            grad, = torch.autograd.grad(energy.sum(), q)
        return energy.detach(), grad

    @staticmethod
    def sample(n):
        v = 3 * torch.randn(n)
        return torch.cat([v[:, None], torch.randn(n, 4) * torch.exp(v / 2)[:, None]], 1)


class PerChainTracking(BatchedKernel):
    """The former tracking: each chain's step size follows its own acceptance at a constant
    rate, so a chain's step size depends on where it is (it shrinks in the funnel's neck)."""

    def step(self, state, target):
        state, info = self._transition(state, target, **self.step_kwargs)
        factor = (0.02 * (info.accept_prob - self.target_accept)).exp()
        return state._replace(step_size=state.step_size * factor), info


def moved_funnel_draws(sampler, num_steps=300):
    target = Funnel()
    state = sampler.init(Funnel.sample(NUM_CHAINS), target)
    for _ in range(num_steps):
        state, _ = sampler.step(state, target)
    return state.position[:, 0]


def assert_funnel_scale(v):
    n = v.shape[0]
    assert_within_stderr(v.mean(), torch.tensor(0.0), torch.tensor(3 / math.sqrt(n)),
                         what="E[v]")
    assert_within_stderr(v.var(), torch.tensor(9.0), torch.tensor(9 * math.sqrt(2 / (n - 1))),
                         what="Var[v]")


KERNELS = {"hmc": dict(num_steps=10, jitter=0.5), "mala": {}}


@pytest.mark.parametrize("name", list(KERNELS))
def test_tracking_keeps_the_funnel_invariant(name):
    sampler = make_sampler(name, step_size=0.3, track_rate=0.02)
    assert sampler.track_rate == 0.02
    assert_funnel_scale(moved_funnel_draws(sampler))


@pytest.mark.parametrize("name", list(KERNELS))
def test_planted_control_per_chain_tracking_shrinks_the_funnel(name):
    # measured: E[v] 6.5 and 3.7, Var[v] 11.8 and 7.2 standard errors off (HMC, MALA)
    step = {"hmc": hmc_step, "mala": mala_step}[name]
    sampler = PerChainTracking(step, step_size=0.3, **KERNELS[name])
    with pytest.raises(AssertionError, match="standard errors"):
        assert_funnel_scale(moved_funnel_draws(sampler))


def test_the_default_freezes_the_step_size_after_warm_up():
    sampler = make_sampler("mala", step_size=0.3)
    assert sampler.track_rate == 0.0
    target = Funnel()
    state, _ = sampler.warmup(sampler.init(Funnel.sample(64), target), target, 100)
    frozen = state.step_size.clone()
    for _ in range(20):
        state, _ = sampler.step(state, target)
    assert torch.equal(state.step_size, frozen)


def test_tracking_moves_every_chain_alike_on_the_mean_acceptance():
    sampler = make_sampler("mala", step_size=0.3, track_rate=0.1, shared_step_size=False)
    target = Funnel()
    state, _ = sampler.warmup(sampler.init(Funnel.sample(64), target), target, 60)
    for _ in range(5):
        before = state.step_size
        state, info = sampler.step(state, target)
        expected = 0.1 * (info.accept_prob.mean() - 0.574)
        torch.testing.assert_close((state.step_size / before).log(),
                                   expected.expand(64), rtol=1e-12, atol=1e-12)


def test_warm_up_shares_one_step_size_by_default():
    target = Funnel()
    for shared in (True, False):
        sampler = make_sampler("mala", step_size=0.3, shared_step_size=shared)
        state, _ = sampler.warmup(sampler.init(Funnel.sample(16), target), target, 60)
        assert (state.step_size.unique().numel() == 1) == shared


def test_track_rate_without_adaptation_is_off_and_a_negative_one_refused():
    assert make_sampler("hmc", adapt_step_size=False, track_rate=0.5).track_rate == 0.0
    with pytest.raises(ValueError, match="track_rate"):
        make_sampler("hmc", track_rate=-1.0)
