import itertools

import pyro
import pytest
import torch

from pyro_lvmle.models import RBM
from tests.common import assert_close, assert_within_stderr, mean_and_stderr


def _random_params(num_visible, num_hidden, seed=3):
    gen = torch.Generator().manual_seed(seed)
    return {
        "weights": torch.randn(num_visible, num_hidden, generator=gen, dtype=torch.float64),
        "visible_bias": 0.5 * torch.randn(num_visible, generator=gen, dtype=torch.float64),
        "hidden_bias": 0.5 * torch.randn(num_hidden, generator=gen, dtype=torch.float64),
    }


def _brute_force_log_joint(p):
    """log exp(-E(v, h)) for every (v, h), by two nested loops over both layers."""
    V, H = p["weights"].shape
    table = torch.zeros(2**V, 2**H, dtype=torch.float64)
    for i, v in enumerate(itertools.product([0.0, 1.0], repeat=V)):
        for j, h in enumerate(itertools.product([0.0, 1.0], repeat=H)):
            v_, h_ = torch.tensor(v, dtype=torch.float64), torch.tensor(h, dtype=torch.float64)
            table[i, j] = v_ @ p["visible_bias"] + h_ @ p["hidden_bias"] + v_ @ p["weights"] @ h_
    return table


@pytest.mark.parametrize("shape", [(5, 3), (3, 5), (4, 4)])
def test_log_partition_matches_brute_force_over_both_layers(shape):
    p = _random_params(*shape)
    expected = _brute_force_log_joint(p).logsumexp((0, 1))
    assert_close(RBM(*shape).log_partition(p), expected, atol=1e-10)


def test_exact_marginal_sums_to_one_and_matches_brute_force():
    p = _random_params(4, 6)
    rbm = RBM(4, 6)
    all_v = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4)), dtype=torch.float64)
    log_p = rbm.log_marginal(all_v, p, per_datum=True)
    assert_close(log_p.logsumexp(0), 0.0, atol=1e-12, what="normalization")
    table = _brute_force_log_joint(p)
    assert_close(log_p, table.logsumexp(1) - table.logsumexp((0, 1)), atol=1e-10)


def test_pyro_model_log_joint_is_the_negative_free_energy():
    rbm = RBM(6, 4)
    v = rbm.simulate(10)
    trace = pyro.poutine.trace(rbm).get_trace(v)
    assert_close(trace.log_prob_sum(), -rbm.free_energy(v).sum(), atol=1e-10)
    assert_close(trace.log_prob_sum() - 10 * rbm.log_partition(), rbm.log_marginal(v), atol=1e-10)


def test_block_gibbs_conditionals_match_the_joint():
    p = _random_params(3, 2)
    rbm = RBM(3, 2)
    table = _brute_force_log_joint(p)  # rows v, columns h, bit order as itertools.product
    all_v = torch.tensor(list(itertools.product([0.0, 1.0], repeat=3)), dtype=torch.float64)
    all_h = torch.tensor(list(itertools.product([0.0, 1.0], repeat=2)), dtype=torch.float64)
    for i, v in enumerate(all_v):
        cond = (table[i] - table[i].logsumexp(0)).exp()
        expected = cond @ all_h  # p(h_j = 1 | v)
        assert_close(rbm.hidden_conditional(v, p).base_dist.probs, expected, atol=1e-12)
    for j, h in enumerate(all_h):
        cond = (table[:, j] - table[:, j].logsumexp(0)).exp()
        assert_close(rbm.visible_conditional(h, p).base_dist.probs, cond @ all_v, atol=1e-12)


def _configuration_frequencies(v):
    """One-hot rows over the 2**V configurations, bit i of the index being v_i."""
    index = (v @ 2.0 ** torch.arange(v.shape[-1], dtype=torch.float64)).long()
    return torch.nn.functional.one_hot(index, 2 ** v.shape[-1]).double()


@pytest.mark.parametrize("shape", [(4, 6), (4, 2)])
def test_simulate_draws_exactly_from_the_model(shape):
    # both routes: the visible layer enumerated (V <= H), or the hidden one (V > H)
    p = _random_params(*shape)
    rbm = RBM(*shape)
    v = rbm.simulate(40_000, p)
    freq, se = mean_and_stderr(_configuration_frequencies(v))
    all_v = torch.tensor([[(k >> i) & 1 for i in range(shape[0])] for k in range(2 ** shape[0])],
                         dtype=torch.float64)
    exact = rbm.log_marginal(all_v, p, per_datum=True).exp()
    assert_within_stderr(freq, exact, se.clamp(min=1e-3), what="configuration frequencies")


def test_planted_bug_flipped_conditional_fails_the_exactness_check():
    p = _random_params(4, 2)
    rbm = RBM(4, 2)
    _, h = rbm.simulate(40_000, p, return_latents=True)
    wrong_v = torch.bernoulli(torch.sigmoid(-(h @ p["weights"].T + p["visible_bias"])))
    freq, se = mean_and_stderr(_configuration_frequencies(wrong_v))
    all_v = torch.tensor([[(k >> i) & 1 for i in range(4)] for k in range(16)],
                         dtype=torch.float64)
    exact = rbm.log_marginal(all_v, p, per_datum=True).exp()
    with pytest.raises(AssertionError):
        assert_within_stderr(freq, exact, se.clamp(min=1e-3))


def test_too_large_to_enumerate_is_reported():
    with pytest.raises(ValueError, match="annealed importance sampling"):
        RBM(30, 25).log_partition()


def test_bad_input_is_reported():
    rbm = RBM(3, 2)
    with pytest.raises(ValueError, match="simulate"):
        rbm.model(None)
    with pytest.raises(ValueError, match="0 and 1"):
        rbm.log_marginal(torch.full((2, 3), 0.5))
    with pytest.raises(ValueError, match="num_hidden"):
        RBM(3, 0)


def test_subsampled_plate_scales_the_factor():
    rbm = RBM(5, 3)
    v = rbm.simulate(40)
    trace = pyro.poutine.trace(rbm).get_trace(v, subsample_size=8)
    assert trace.nodes["free_energy"]["scale"] == 5.0
    assert trace.nodes["v"]["value"].shape == (8, 5)
