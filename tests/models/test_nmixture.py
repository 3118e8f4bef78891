"""NMixture: the truncated exact marginal against a far longer sum and against scipy, the
MLE's stationarity and optimality, the simulator's moments, the Pyro model's log joint."""

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy import stats

import pyro_lvmle as lv
from tests.common import assert_close, assert_within_stderr, central_difference, mean_and_stderr

TRUTH = {"rate": torch.tensor(5.0, dtype=torch.float64),
         "detection": torch.tensor(0.5, dtype=torch.float64)}


def data(num_sites=40, params=TRUTH):
    return lv.models.NMixture(num_visits=3).simulate(num_sites, params)


def scipy_log_marginal(y, rate, detection, bound=600):
    """Each site's log marginal by scipy's pmfs, summed in linear space (an independent
    computation: no log-space terms, no shared code)."""
    n = np.arange(bound + 1)
    out = []
    for row in y.numpy():
        terms = stats.poisson.pmf(n, rate)
        for count in row:
            terms = terms * stats.binom.pmf(count, n, detection)
        out.append(np.log(terms.sum()))
    return torch.tensor(out)


@pytest.mark.parametrize("rate,detection", [(5.0, 0.5), (30.0, 0.2), (0.7, 0.9)])
def test_log_marginal_matches_a_longer_sum_and_scipy(rate, detection):
    model = lv.models.NMixture(num_visits=3)
    params = {"rate": torch.tensor(rate), "detection": torch.tensor(detection)}
    y = model.simulate(30, params)
    exact = model.log_marginal(y, params, per_datum=True)
    assert_close(exact, model.log_marginal(y, params, per_datum=True, bound=600), atol=1e-10,
                 what="bound K against 600")
    assert_close(exact, scipy_log_marginal(y, rate, detection), atol=1e-10, what="scipy")
    # the bound is the smallest one leaving a Poisson tail below 1e-12
    bound = model.truncation(y, params)
    assert stats.poisson.sf(bound, rate) < 1e-12
    assert bound == y.max() or stats.poisson.sf(bound - 1, rate) >= 1e-12


def test_planted_bug_truncating_at_the_largest_count_is_caught():
    model = lv.models.NMixture(num_visits=3)
    y = data()
    early = model.log_marginal(y, TRUTH, bound=int(y.max()))
    with pytest.raises(AssertionError, match="tolerance"):
        assert_close(early, scipy_log_marginal(y, 5.0, 0.5).sum(), atol=1e-10, what="early")


def test_log_marginal_gradient_matches_finite_differences():
    model = lv.models.NMixture(num_visits=3)
    y = data()
    x = torch.tensor([4.0, 0.6], requires_grad=True)
    value = model.log_marginal(y, {"rate": x[0], "detection": x[1]})
    (grad,) = torch.autograd.grad(value, x)
    numeric = central_difference(lambda v: model.log_marginal(
        y, {"rate": v[0], "detection": v[1]}, bound=200), x.detach())
    assert_close(grad, numeric, atol=1e-6, rtol=1e-7, what="gradient")


def test_log_marginal_backpropagates_into_the_param_store():
    model = lv.models.NMixture(num_visits=3)
    y = data()
    pyro.param("rate", torch.tensor(4.0))
    model.log_marginal(y).backward()
    assert pyro.param("rate").unconstrained().grad is not None


def test_mle_is_stationary_and_beats_perturbed_parameters():
    model = lv.models.NMixture(num_visits=3)
    y = data(num_sites=60)
    mle = model.mle(y)
    x = torch.stack([mle["rate"], mle["detection"]]).requires_grad_(True)
    (grad,) = torch.autograd.grad(model.log_marginal(y, {"rate": x[0], "detection": x[1]}), x)
    assert grad.abs().max() < 1e-6, grad
    best = model.log_marginal(y, mle)
    for d_rate, d_detection in [(1e-3, 0), (-1e-3, 0), (0, 1e-4), (0, -1e-4), (0.05, -0.005),
                                (-0.05, 0.005)]:
        other = {"rate": mle["rate"] + d_rate, "detection": mle["detection"] + d_detection}
        assert model.log_marginal(y, other) < best
    # within a few sampling standard errors of the truth (a sanity check on the optimizer)
    assert abs(mle["detection"] - 0.5) < 0.2 and abs(mle["rate"] - 5.0) < 2.5


def test_mle_refuses_data_without_an_interior_maximum():
    # counts that vary much more between visits than a binomial allows: the likelihood keeps
    # rising towards detection -> 1 or lambda -> infinity, p -> 0
    y = torch.tensor([[0.0, 9.0, 0.0], [9.0, 0.0, 0.0], [0.0, 0.0, 9.0]])
    with pytest.raises(RuntimeError, match="no interior maximum"):
        lv.models.NMixture(num_visits=3).mle(y)


def test_simulate_has_the_models_moments():
    model = lv.models.NMixture(num_visits=2)
    y, n = model.simulate(20_000, TRUTH, return_latents=True)
    mean_n, se_n = mean_and_stderr(n)
    assert_within_stderr(mean_n, 5.0, se_n, what="E[n]")
    mean_y, se_y = mean_and_stderr(y)
    assert_within_stderr(mean_y, torch.tensor([2.5, 2.5]), se_y, what="E[y]")
    # Cov(y_i1, y_i2) = p^2 Var(n) = p^2 lambda
    cov = ((y[:, 0] - y[:, 0].mean()) * (y[:, 1] - y[:, 1].mean()))
    mean_cov, se_cov = mean_and_stderr(cov)
    assert_within_stderr(mean_cov, 0.25 * 5.0, se_cov, what="Cov(y1, y2)")
    assert (y <= n.unsqueeze(-1)).all()


def test_pyro_model_log_joint_matches_the_hand_written_density():
    model = lv.models.NMixture(num_visits=3)
    y, n = model.simulate(10, TRUTH, return_latents=True)
    conditioned = pyro.condition(model.model, data={"n": n.unsqueeze(-1)})
    trace = pyro.poutine.trace(conditioned).get_trace(y)
    hand = (dist.Poisson(5.0).log_prob(n).sum()
            + dist.Binomial(n.unsqueeze(-1), 0.5).log_prob(y).sum())
    assert_close(trace.log_prob_sum(), hand, atol=1e-10, what="log joint")


def test_posterior_is_normalized_and_respects_the_largest_count():
    model = lv.models.NMixture(num_visits=3)
    y = data()
    posterior = model.posterior(y, TRUTH)
    probs = posterior.probs
    assert_close(probs.sum(-1), torch.ones(len(y)), atol=1e-12)
    below = torch.arange(probs.shape[-1]) < y.max(-1, keepdim=True).values
    assert (probs[below] == 0).all()


def test_bad_input():
    model = lv.models.NMixture(num_visits=3)
    with pytest.raises(ValueError, match="num_visits"):
        lv.models.NMixture(num_visits=0)
    with pytest.raises(ValueError, match="non-negative integer"):
        model.log_marginal(torch.tensor([[1.0, 0.5, 2.0]]))
    with pytest.raises(ValueError, match="non-negative integer"):
        model.log_marginal(torch.tensor([[1.0, -1.0, 2.0]]))
    with pytest.raises(ValueError, match="3"):
        model.log_marginal(torch.ones(4, 2))
    with pytest.raises(TypeError, match="num_sites"):
        model.model()
