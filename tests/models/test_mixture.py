import pyro
import pytest
import torch
from pyro.infer import TraceEnum_ELBO
from sklearn.datasets import load_iris
from sklearn.mixture import GaussianMixture as SklearnGaussianMixture

from pyro_lvmle.models import GaussianMixture
from tests.common import assert_close, assert_within_stderr, mean_and_stderr


@pytest.fixture(scope="module")
def iris():
    return torch.tensor(load_iris().data, dtype=torch.float64)


@pytest.fixture(scope="module")
def sklearn_fit(iris):
    gm = SklearnGaussianMixture(3, covariance_type="full", tol=1e-12, max_iter=2000, n_init=10,
                                random_state=0)
    return gm.fit(iris.numpy())


def _sklearn_params(gm):
    return {
        "weights": torch.tensor(gm.weights_),
        "locs": torch.tensor(gm.means_),
        "scale_tril": torch.linalg.cholesky(torch.tensor(gm.covariances_)),
    }


def _separated_truth():
    return {
        "weights": torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64),
        "locs": torch.tensor([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]], dtype=torch.float64),
        "scale_tril": torch.tensor([[[1.0, 0.0], [0.5, 1.0]], [[0.7, 0.0], [0.0, 1.2]],
                                    [[1.0, 0.0], [-0.3, 0.5]]], dtype=torch.float64),
    }


def test_log_marginal_matches_sklearn_score_samples(iris, sklearn_fit):
    model = GaussianMixture(3, 4)
    ours = model.log_marginal(iris, _sklearn_params(sklearn_fit), per_datum=True)
    assert_close(ours, sklearn_fit.score_samples(iris.numpy()), atol=1e-9)


def test_log_marginal_matches_pyro_enumeration(iris, sklearn_fit):
    # TraceEnum_ELBO with an empty guide sums the enumerated assignment out exactly
    model = GaussianMixture(3, 4)
    model.set_params(_sklearn_params(sklearn_fit))
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    assert_close(-elbo.loss(model, lambda data: None, iris), model.log_marginal(iris), atol=1e-8)


def test_posterior_matches_sklearn_responsibilities(iris, sklearn_fit):
    model = GaussianMixture(3, 4)
    probs = model.posterior(iris, _sklearn_params(sklearn_fit)).probs
    assert_close(probs, sklearn_fit.predict_proba(iris.numpy()), atol=1e-9)


def test_mle_on_iris_is_at_least_as_good_as_sklearn(iris, sklearn_fit):
    model = GaussianMixture(3, 4)
    mle = model.mle(iris, num_starts=10)
    ours = model.log_marginal(iris, mle) / len(iris)
    assert ours >= sklearn_fit.score(iris.numpy()) - 1e-8


def test_mle_matches_sklearn_on_separated_data():
    model = GaussianMixture(3, 2)
    data = model.simulate(3000, _separated_truth())
    mle = model.mle(data)
    gm = SklearnGaussianMixture(3, covariance_type="full", tol=1e-12, max_iter=2000,
                                random_state=0).fit(data.numpy())
    assert_close(model.log_marginal(data, mle) / len(data), gm.score(data.numpy()), atol=1e-8)
    # and the EM fixed point is a stationary point of the exact log-likelihood
    leaves = {k: v.clone().requires_grad_(True) for k, v in mle.items()}
    model.log_marginal(data, leaves).backward()
    assert_close(leaves["locs"].grad, torch.zeros(3, 2), atol=1e-4, what="score for locs")


def test_simulate_assignment_frequencies():
    truth = _separated_truth()
    model = GaussianMixture(3, 2)
    _, c = model.simulate(20_000, truth, return_latents=True)
    onehot = torch.nn.functional.one_hot(c, 3).double()
    mean, se = mean_and_stderr(onehot)
    assert_within_stderr(mean, truth["weights"], se, what="assignment frequencies")


def test_planted_bug_wrong_weights_fail_the_frequency_check():
    truth = _separated_truth()
    model = GaussianMixture(3, 2)
    _, c = model.simulate(20_000, truth, return_latents=True)
    mean, se = mean_and_stderr(torch.nn.functional.one_hot(c, 3).double())
    with pytest.raises(AssertionError):
        assert_within_stderr(mean, truth["weights"].flip(0), se)


def test_subsampled_enumeration_is_unbiased_for_the_full_loss():
    # TraceEnum_ELBO under subsample_size scales each batch by N / B; its mean is the full loss
    model = GaussianMixture(2, 2)
    data = model.simulate(60)
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    guide = lambda *args, **kwargs: None  # noqa: E731
    full = elbo.loss(model, guide, data)
    draws = torch.tensor([elbo.loss(model, guide, data, subsample_size=15) for _ in range(400)])
    mean, se = mean_and_stderr(draws)
    assert_within_stderr(mean, full, se, what="subsampled loss")


def test_mle_rejects_too_little_data():
    model = GaussianMixture(3, 2)
    with pytest.raises(ValueError, match="more data"):
        model.mle(torch.randn(3, 2))


def test_first_run_on_data_starts_from_kmeanspp_seeds(iris):
    """The parameters the model creates on data are the groups around k-means++ seeds of the
    data (random: another seed gives another start), not the fixed defaults; once created
    they are read, never replaced."""

    model = GaussianMixture(3, 4)
    pyro.set_rng_seed(1)
    expected = model.data_init(iris)
    pyro.set_rng_seed(1)
    model.model(iris)
    created = model.params()
    for name in model.param_names:  # (up to the constraints' round trip)
        assert torch.allclose(created[name], expected[name], atol=1e-12, rtol=0), name
    # the groups are the nearest-seed cells, so their means lie inside the data's range
    assert (created["locs"] >= iris.min(0).values).all()
    assert (created["locs"] <= iris.max(0).values).all()
    assert torch.allclose(created["weights"].sum(), torch.tensor(1.0, dtype=torch.float64))
    assert not torch.allclose(created["locs"], model.initial_value("locs"))
    model.model(iris)  # a second run reads the store
    assert torch.equal(model.params()["locs"], created["locs"])
    pyro.clear_param_store()
    pyro.set_rng_seed(2)
    model.model(iris)
    assert not torch.equal(model.params()["locs"], created["locs"])


def test_init_params_override_the_data_driven_start(iris):
    """A value given in init_params wins; the others still start from the data."""
    start = {"locs": torch.zeros(3, 4, dtype=torch.float64)}
    model = GaussianMixture(3, 4, init_params=start)
    pyro.set_rng_seed(1)
    expected = model.data_init(iris)
    pyro.set_rng_seed(1)
    model.model(iris)
    assert torch.equal(model.params()["locs"], start["locs"])
    assert torch.allclose(model.params()["weights"], expected["weights"], atol=1e-12)
