"""The drivers' estimator math as pure functions (issue 11, item 5): SAEM's stochastic
approximation, its weighted memory, MCEM's ascent-based rule; and MCEM's defects."""

import math
from statistics import NormalDist

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_lvmle as lv
from pyro_lvmle.em.mcem import AscentRule, ascent_rule
from pyro_lvmle.em.saem import stochastic_approximation, update_memory

Z = NormalDist().inv_cdf
RULE = AscentRule(Z(0.75), Z(0.75), Z(0.95), 1e-3, 1000)


def test_stochastic_approximation_is_a_running_average_with_gamma_one_over_k():
    draws = torch.randn(50, 3)
    stats = None
    for k, row in enumerate(draws, 1):
        stats = stochastic_approximation(stats, {"s": row}, 1.0 / k)
    assert torch.allclose(stats["s"], draws.mean(0), atol=1e-12)
    with pytest.raises(ValueError, match="same keys"):
        stochastic_approximation(stats, {"t": draws[0]}, 0.5)


def test_update_memory_weights_sum_to_one_and_match_the_recursion():
    memory = weights = None
    rows = [torch.full((2, 1), float(k)) for k in range(1, 6)]
    gammas = [1.0, 0.5, 1 / 3, 0.25, 0.2]
    for row, gamma in zip(rows, gammas, strict=True):
        memory, weights = update_memory(memory, weights, row, gamma, min_weight=0.0,
                                        max_memory=None)
    assert math.isclose(weights.sum().item(), 1.0, abs_tol=1e-12)
    # with gamma_k = 1/k the weighted memory is the plain mean of every draw
    assert math.isclose((weights * memory[:, 0]).sum().item(), 3.0, abs_tol=1e-12)
    dropped, _ = update_memory(memory, weights, rows[0], 0.5, min_weight=0.2,
                               max_memory=None)
    assert len(dropped) == 2  # every old weight is 0.1 < 0.2 after the update


def test_ascent_rule_accepts_established_ascents_and_grows_the_sample():
    accept = ascent_rule(1.0, 0.1, 50, 50, RULE)
    assert accept.accept and not accept.converged and accept.next_num_samples == 50
    noisy = ascent_rule(0.05, 0.1, 50, 50, RULE)
    assert not noisy.accept and noisy.extra == 17
    wanted = math.ceil(0.1**2 * 50 * (RULE.z_alpha + RULE.z_beta) ** 2 / 0.05**2)
    assert noisy.next_num_samples == wanted
    assert ascent_rule(1e-5, 1e-5, 50, 50, RULE).converged


def test_ascent_rule_with_frozen_chains_does_not_divide_by_zero():
    # chains that never moved: every term equal, se = 0, increase 0
    decision = ascent_rule(0.0, 0.0, 20, 20, RULE)
    assert decision.accept and decision.next_num_samples == 20


def test_mcem_reports_chains_that_did_not_move():
    model = lv.models.LinearGaussian(dim=2)
    data = model.simulate(20)
    mcem = lv.MCEM(model, "mala", num_samples=5, num_chains=2, warmup_steps=0,
                   kernel_options={"step_size": 1e4})
    with pytest.raises(ValueError, match="chains did not move.*warmup_steps"):
        mcem.step(data)


def test_mcem_does_not_write_into_its_samplers_settings():
    model = lv.models.LinearGaussian(dim=2)
    data = model.simulate(20)
    mcem = lv.MCEM(model, "mala", num_samples=7, num_chains=2, warmup_steps=100, m_steps=5)
    mcem.run(data, num_steps=4, progress=False)
    assert mcem.num_samples > 7  # the rule grew the E-step's sample ...
    assert mcem.sampler.num_samples == 7  # ... without touching the sampler's settings


def test_mcem_refuses_a_subsampled_plate():
    def model(x, subsample_size=None):
        loc = pyro.param("loc", torch.tensor(0.0))
        with pyro.plate("data", len(x), subsample_size=subsample_size) as i:
            z = pyro.sample("z", dist.Normal(loc, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x[i])

    mcem = lv.MCEM(model, "mala", num_samples=3, num_chains=2, warmup_steps=5)
    with pytest.raises(ValueError, match="MCEM: the model subsampled a plate"):
        mcem.step(torch.randn(20), subsample_size=5)
