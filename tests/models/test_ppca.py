import numpy as np
import pyro
import pytest
import torch
from scipy import stats
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA

from pyro_lvmle.models import PPCA
from tests.common import assert_close, assert_within_stderr, mean_and_stderr

# Average log-likelihood per sample of the PPCA MLE on sklearn's load_digits (1797 x 64, raw
# pixels), the figures of the foundation issue; sklearn's PCA(n_components=q).score agrees.
DIGITS_LOGLIK = {2: -177.43997, 10: -159.99373}


def _truth(d=6, q=2):
    gen = torch.Generator().manual_seed(1)
    return {
        "W": torch.randn(d, q, generator=gen, dtype=torch.float64),
        "mu": torch.randn(d, generator=gen, dtype=torch.float64),
        "sigma": torch.tensor(0.4, dtype=torch.float64),
    }


@pytest.fixture(scope="module")
def digits():
    return torch.tensor(load_digits().data, dtype=torch.float64)


@pytest.mark.parametrize("q", [2, 10])
def test_digits_mle_loglik_reproduces_the_published_figures(digits, q):
    model = PPCA(data_dim=64, latent_dim=q)
    per_sample = model.log_marginal(digits, model.mle(digits)) / len(digits)
    assert_close(per_sample, DIGITS_LOGLIK[q], atol=1e-5, what=f"q={q}")
    sklearn_score = PCA(n_components=q).fit(digits.numpy()).score(digits.numpy())
    assert_close(per_sample, sklearn_score, atol=1e-5, what="sklearn PCA.score")


def test_planted_bug_noise_from_all_eigenvalues_misses_the_digits_figure(digits):
    # the control: sigma^2 as the mean of all eigenvalues (not the discarded ones) must fail
    model = PPCA(data_dim=64, latent_dim=2)
    mle = model.mle(digits)
    eigvals = torch.linalg.eigvalsh(torch.cov(digits.T, correction=0))
    wrong = {**mle, "sigma": eigvals.mean().sqrt()}
    per_sample = model.log_marginal(digits, wrong) / len(digits)
    with pytest.raises(AssertionError):
        assert_close(per_sample, DIGITS_LOGLIK[2], atol=1e-5)


def test_log_marginal_matches_scipy_dense_gaussian():
    truth = _truth()
    model = PPCA(6, 2)
    data = model.simulate(20, truth)
    cov = (truth["W"] @ truth["W"].T + truth["sigma"] ** 2 * torch.eye(6)).numpy()
    expected = stats.multivariate_normal(truth["mu"].numpy(), cov).logpdf(data.numpy())
    assert_close(model.log_marginal(data, truth, per_datum=True), expected, atol=1e-10)


def test_log_marginal_matches_prior_monte_carlo():
    truth = _truth(d=3, q=1)
    model = PPCA(3, 1)
    data = model.simulate(3, truth)
    z = torch.randn(200_000, 1, 1)
    loc = z @ truth["W"].T + truth["mu"]  # (S, 1, d)
    lik = torch.distributions.Normal(loc, truth["sigma"]).log_prob(data).sum(-1).exp()
    mean, se = mean_and_stderr(lik)
    exact = model.log_marginal(data, truth, per_datum=True).exp()
    assert_within_stderr(mean, exact, se, what="p(x_n)")


def test_posterior_is_the_exact_conditional_of_the_pyro_model():
    truth = _truth()
    model = PPCA(6, 2)
    data = model.simulate(9, truth)
    posterior = model.posterior(data, truth)
    z = posterior.sample()
    conditioned = pyro.poutine.condition(model, data={"z": z})
    trace = pyro.poutine.trace(pyro.poutine.substitute(conditioned, truth)).get_trace(data)
    lhs = trace.log_prob_sum() - posterior.log_prob(z).sum()
    assert_close(lhs, model.log_marginal(data, truth), atol=1e-9)


def test_mle_is_a_stationary_point_and_a_maximum():
    model = PPCA(6, 2)
    data = model.simulate(500, _truth())
    mle = model.mle(data)
    leaves = {k: v.clone().requires_grad_(True) for k, v in mle.items()}
    model.log_marginal(data, leaves).backward()
    for name, leaf in leaves.items():
        assert_close(leaf.grad, torch.zeros_like(leaf), atol=1e-7, what=f"score for {name}")
    best = model.log_marginal(data, mle)
    for _ in range(20):
        moved = {k: v + 1e-2 * torch.randn_like(v) for k, v in mle.items()}
        assert model.log_marginal(data, moved) < best


def test_mle_recovers_the_generating_covariance():
    truth = _truth()
    model = PPCA(6, 2)
    data = model.simulate(50_000, truth)
    mle = model.mle(data)
    cov_true = truth["W"] @ truth["W"].T + truth["sigma"] ** 2 * torch.eye(6)
    cov_mle = mle["W"] @ mle["W"].T + mle["sigma"] ** 2 * torch.eye(6)
    # entries of a sample covariance have standard error about |Sigma| / sqrt(N)
    assert_close(cov_mle, cov_true, atol=4 * cov_true.abs().max().item() / 50_000**0.5)


def test_mle_rejects_noise_free_data():
    model = PPCA(3, 2)
    data = torch.randn(50, 2) @ torch.randn(2, 3)  # rank 2: no variance left for sigma
    with pytest.raises(ValueError, match="latent_dim"):
        model.mle(data)


def test_model_runs_under_a_subsampled_plate():
    model = PPCA(6, 2)
    data = model.simulate(40)
    trace = pyro.poutine.trace(model).get_trace(data, subsample_size=8)
    assert trace.nodes["z"]["value"].shape == (8, 2)
    assert np.isfinite(trace.log_prob_sum().item())


def test_bad_construction_is_reported():
    with pytest.raises(ValueError, match="smaller"):
        PPCA(3, 3)
    with pytest.raises(ValueError, match="data_dim"):
        PPCA(0, 1)


def test_runs_on_the_data_device(device):
    model = PPCA(6, 2)
    data = model.simulate(30, _truth()).to(device)
    mle = model.mle(data)
    assert mle["W"].device.type == device.type
    assert_close(model.log_marginal(data, mle).cpu(),
                 model.log_marginal(data.cpu(), {k: v.cpu() for k, v in mle.items()}), atol=1e-8)
