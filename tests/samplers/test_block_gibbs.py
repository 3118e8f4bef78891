"""Block Gibbs from an RBM's conditionals leaves the exact marginal p(v) invariant."""

import pyro.distributions as dist
import pytest
import torch

import pyro_lvmle as lv
from pyro_lvmle.models.rbm import _binary_configurations
from pyro_lvmle.samplers import BatchedKernel, BlockGibbs, make_sampler
from pyro_lvmle.traces import Potential


def _setup():
    torch.manual_seed(0)
    rbm = lv.models.RBM(3, 2, init_params={"weights": 1.5 * torch.randn(3, 2),
                                           "visible_bias": torch.randn(3)})
    target = Potential(rbm.model, (rbm.simulate(1),), uncondition=True)
    configurations = next(_binary_configurations(3, torch.zeros(1)))
    exact = (-rbm.free_energy(configurations) - rbm.log_partition()).exp().detach()
    return rbm, target, configurations, exact


def _frequencies(sampler, target, configurations, num_chains=4000, num_steps=10):
    state = sampler.init(torch.zeros(num_chains, target.dim), target)
    for _ in range(num_steps):
        state, info = sampler.step(state, target)
    match = (state.position.unsqueeze(1) == configurations).all(-1).to(state.position)
    return match.mean(0), info


def _max_z(frequencies, exact, num_chains=4000):
    se = (exact * (1 - exact) / num_chains).sqrt()
    return float(((frequencies - exact) / se).abs().max())


def test_block_gibbs_draws_the_exact_marginal():
    rbm, target, configurations, exact = _setup()
    sampler = BlockGibbs(rbm.hidden_conditional, rbm.visible_conditional)
    frequencies, info = _frequencies(sampler, target, configurations)
    assert _max_z(frequencies, exact) < 4
    assert bool((info.accept_prob == 1).all())


def test_planted_control_wrong_conditional_is_detected():
    rbm, target, configurations, exact = _setup()

    def wrong(h):  # the visible biases' sign flipped
        p = rbm.params()
        return dist.Bernoulli(
            logits=h @ p["weights"].T - p["visible_bias"]).to_event(1)

    frequencies, _ = _frequencies(BlockGibbs(rbm.hidden_conditional, wrong), target,
                                  configurations)
    assert _max_z(frequencies, exact) > 10


def test_generic_gibbs_on_the_unconditioned_potential_draws_the_exact_marginal():
    _, target, configurations, exact = _setup()
    sampler = make_sampler("gibbs")
    assert isinstance(sampler, BatchedKernel) and not sampler.adapt_step_size
    frequencies, _ = _frequencies(sampler, target, configurations, num_steps=5)
    assert _max_z(frequencies, exact) < 4


def test_refuses_tempered_targets_and_bad_conditionals():
    rbm, target, _, _ = _setup()
    sampler = BlockGibbs(rbm.hidden_conditional, rbm.visible_conditional)
    with pytest.raises(ValueError, match="tempered"):
        sampler.init(torch.zeros(2, target.dim), target.tempered(0.5))
    with pytest.raises(TypeError, match="latent_conditional"):
        BlockGibbs(None, rbm.visible_conditional)
    with pytest.raises(ValueError, match="positions must be"):
        sampler.init(torch.zeros(2, target.dim + 1), target)


def test_discrete_only_samplers_refuse_continuous_coordinates():
    model = lv.models.LinearGaussian()
    target = Potential(model, (model.simulate(3),))
    sampler = make_sampler("gibbs")
    state = sampler.init(torch.zeros(2, target.dim), target)
    with pytest.raises(ValueError, match="discrete coordinates only"):
        sampler.step(state, target)
