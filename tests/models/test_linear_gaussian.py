import math

import pyro
import pytest
import torch
from scipy import integrate, stats

from pyro_lvmle.models import LinearGaussian
from tests.common import assert_close, assert_within_stderr, central_difference, mean_and_stderr

# float64 explicitly: module-level tensors are made before conftest sets the default dtype
TRUTH = {
    "w": torch.tensor([0.7, -1.3], dtype=torch.float64),
    "sigma": torch.tensor(0.8, dtype=torch.float64),
}


def test_log_marginal_matches_numerical_quadrature():
    model = LinearGaussian(dim=1)
    params = {"w": torch.tensor([0.4]), "sigma": torch.tensor(0.6)}
    data = model.simulate(5, params)
    for n, x in enumerate(data[:, 0].tolist()):
        # p(x) = int N(z; w, 1) N(x; z, sigma) dz, independently of the closed form
        value, err = integrate.quad(
            lambda z, x=x: stats.norm.pdf(z, 0.4, 1.0) * stats.norm.pdf(x, z, 0.6), -30, 30,
            epsabs=1e-14,
        )
        exact = model.log_marginal(data[n : n + 1], params)
        assert_close(exact, math.log(value), atol=1e-9, what=f"datum {n}")


def _prior_monte_carlo(model, data, params, num_samples):
    """p(x_n) = E_{z ~ p(z)} p(x_n | z): mean and standard error, per datum."""
    w, sigma = params["w"], params["sigma"]
    z = w + torch.randn(num_samples, *data.shape)
    lik = torch.distributions.Normal(z, sigma).log_prob(data).sum(-1).exp()
    return mean_and_stderr(lik)


def test_log_marginal_matches_prior_monte_carlo():
    model = LinearGaussian(dim=2)
    data = model.simulate(4, TRUTH)
    mean, se = _prior_monte_carlo(model, data, TRUTH, 200_000)
    exact = model.log_marginal(data, TRUTH, per_datum=True).exp()
    assert_within_stderr(mean, exact, se, what="p(x_n)")


def test_planted_bug_wrong_marginal_variance_fails_monte_carlo_check():
    # the control: a marginal variance of sigma^2 instead of 1 + sigma^2 must be caught
    model = LinearGaussian(dim=2)
    data = model.simulate(4, TRUTH)
    mean, se = _prior_monte_carlo(model, data, TRUTH, 200_000)
    wrong = torch.distributions.Normal(TRUTH["w"], TRUTH["sigma"]).log_prob(data).sum(-1).exp()
    with pytest.raises(AssertionError):
        assert_within_stderr(mean, wrong, se, what="p(x_n)")


def test_gradient_matches_autograd_and_finite_differences():
    model = LinearGaussian(dim=3)
    data = model.simulate(50, {"w": torch.tensor([1.0, 0.0, -1.0]), "sigma": torch.tensor(1.5)})
    w = torch.tensor([0.2, 0.1, -0.3], requires_grad=True)
    sigma = torch.tensor(0.9, requires_grad=True)
    model.log_marginal(data, {"w": w, "sigma": sigma}).backward()
    analytic = model.grad_log_marginal(data, {"w": w, "sigma": sigma})
    assert_close(analytic["w"], w.grad, atol=1e-10, what="d/dw")
    assert_close(analytic["sigma"], sigma.grad, atol=1e-10, what="d/dsigma")
    numeric = central_difference(
        lambda s: model.log_marginal(data, {"w": w.detach(), "sigma": s}), sigma.detach()
    )
    assert_close(analytic["sigma"], numeric, atol=1e-5, what="d/dsigma numeric")


def test_param_store_values_receive_the_exact_gradient():
    model = LinearGaussian(dim=2)
    data = model.simulate(30, TRUTH)
    pyro.poutine.trace(model).get_trace(data)  # creates the params as a user's SVI run would
    model.log_marginal(data).backward()
    store = pyro.get_param_store()
    grad_w = store.get_param("w").unconstrained().grad
    assert_close(grad_w, model.grad_log_marginal(data)["w"], atol=1e-10, what="store grad")


def test_posterior_is_the_exact_conditional_of_the_pyro_model():
    # log p(x, z) from Pyro's trace minus log p(z | x) is log p(x), whatever z is
    model = LinearGaussian(dim=2)
    data = model.simulate(7, TRUTH)
    posterior = model.posterior(data, TRUTH)
    exact = model.log_marginal(data, TRUTH)
    for _ in range(3):
        z = posterior.sample()
        conditioned = pyro.poutine.condition(model, data={"z": z})
        trace = pyro.poutine.trace(pyro.poutine.substitute(conditioned, TRUTH)).get_trace(data)
        log_joint = trace.log_prob_sum()
        assert_close(log_joint - posterior.log_prob(z).sum(), exact, atol=1e-10)


def test_mle_is_the_maximum():
    model = LinearGaussian(dim=2)
    data = model.simulate(400, TRUTH)
    mle = model.mle(data)
    grads = model.grad_log_marginal(data, mle)
    assert_close(grads["w"], torch.zeros(2), atol=1e-9, what="score at the MLE")
    assert_close(grads["sigma"], 0.0, atol=1e-9, what="score at the MLE")
    best = model.log_marginal(data, mle)
    for name in ("w", "sigma"):
        for delta in (-1e-3, 1e-3):
            moved = {**mle, name: mle[name] + delta}
            assert model.log_marginal(data, moved) < best


def test_mle_sits_on_the_boundary_when_data_are_underdispersed():
    model = LinearGaussian(dim=1)
    data = 0.5 * torch.randn(200, 1)  # variance 0.25 < 1: no sigma > 0 fits better
    assert model.mle(data)["sigma"] == 0.0


def test_fixed_sigma_model_has_only_w():
    model = LinearGaussian(dim=1, sigma=1.0, learn_sigma=False)
    assert model.param_names == ("w",)
    data = model.simulate(500, {"w": torch.tensor([2.0])})
    trace = pyro.poutine.trace(model).get_trace(data)
    assert "sigma" not in trace.nodes
    assert_close(model.mle(data)["w"], data.mean(0), atol=1e-12)


def test_simulate_moments():
    model = LinearGaussian(dim=2)
    x, z = model.simulate(20_000, TRUTH, return_latents=True)
    mean, se = mean_and_stderr(x)
    assert_within_stderr(mean, TRUTH["w"], se, what="mean of x")
    resid = x - z
    var_mean, var_se = mean_and_stderr(resid.pow(2))
    assert_within_stderr(var_mean, TRUTH["sigma"] ** 2, var_se, what="noise variance")


def test_model_runs_under_a_subsampled_plate_and_scales_the_likelihood():
    model = LinearGaussian(dim=2)
    data = model.simulate(100, TRUTH)
    trace = pyro.poutine.trace(model).get_trace(data, subsample_size=10)
    trace.compute_log_prob()
    assert trace.nodes["x"]["value"].shape == (10, 2)
    assert trace.nodes["data"]["value"].shape == (10,)
    assert trace.nodes["x"]["scale"] == 10.0


def test_sampling_from_the_model_without_data():
    model = LinearGaussian(dim=2)
    trace = pyro.poutine.trace(model).get_trace(num_data=6)
    assert trace.nodes["x"]["value"].shape == (6, 2)


def test_bad_input_is_reported():
    with pytest.raises(ValueError, match="dim"):
        LinearGaussian(dim=0)
    with pytest.raises(ValueError, match="sigma"):
        LinearGaussian(sigma=-1.0)
    model = LinearGaussian(dim=2)
    with pytest.raises(ValueError, match="columns"):
        model.log_marginal(torch.zeros(5, 3))
    with pytest.raises(TypeError, match="floating"):
        model.log_marginal(torch.zeros(5, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN"):
        model.log_marginal(torch.full((5, 2), float("nan")))
    with pytest.raises(ValueError, match="num_data"):
        model.model()
    with pytest.raises(ValueError, match="unknown names"):
        model.log_marginal(torch.zeros(5, 2), {"mu": torch.zeros(2)})
    with pytest.raises(ValueError, match="shape"):
        model.log_marginal(torch.zeros(5, 2), {"w": torch.zeros(3)})


def test_runs_on_the_data_device(device):
    model = LinearGaussian(dim=2)
    data = model.simulate(50, TRUTH).to(device)
    trace = pyro.poutine.trace(model).get_trace(data)
    assert trace.nodes["w"]["value"].device.type == device.type
    value = model.log_marginal(data)
    assert value.device.type == device.type
    assert_close(value.cpu(), model.log_marginal(data.cpu(), model.params()), atol=1e-9)
