"""Importance sampling of log p(x): unbiased for p(x) per datum, bounded memory, diagnostics."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_lvmle as lv
from pyro_lvmle.evidence import importance, importance_log_marginal, psis_k_hat


def _within(estimate, exact, num_se=4.0):
    return abs(float(estimate.value) - exact) < num_se * float(estimate.stderr) + 1e-3


@pytest.mark.parametrize("name", ["linear-gaussian", "ppca"])
def test_unbiased_for_p_of_x_per_datum_against_the_closed_form(name):
    model = lv.models.LinearGaussian(dim=2) if name == "linear-gaussian" \
        else lv.models.PPCA(5, 2)
    x = model.simulate(8)
    exact = model.log_marginal(x, per_datum=True).detach()
    estimate = importance_log_marginal(model, (x,), num_samples=20_000, chunk_size=4000)
    assert _within(estimate, float(exact.sum()))
    # each datum's estimate of p(x_n) within 4 of its own standard errors
    stderr = estimate.diagnostics["stderr"]
    assert ((estimate.per_datum - exact).abs() < 4 * stderr + 1e-3).all()
    assert estimate.per_datum.shape == (8,) and estimate.lower is estimate.value
    assert (estimate.diagnostics["ess"] > 100).all()
    assert estimate.diagnostics["max_k_hat"] < 0.7


def test_planted_control_a_wrong_weight_is_detected(monkeypatch):
    model = lv.models.LinearGaussian(dim=2)
    x = model.simulate(8)
    exact = float(model.log_marginal(x).detach())
    # the planted bug: the guide's density left out of the weight
    monkeypatch.setattr(importance, "_log_weights",
                        lambda terms: terms.log_p.reshape(terms.log_p.shape[0], -1))
    estimate = importance_log_marginal(model, (x,), num_samples=20_000, chunk_size=4000)
    assert not _within(estimate, exact)


def two_level(x):
    with pyro.plate("data", x.shape[0]):
        a = pyro.sample("a", dist.Normal(0.0, 1.0))
        z = pyro.sample("z", dist.Normal(a, 1.0))
        pyro.sample("x", dist.Normal(z, 0.5), obs=x)


def sequential_guide(x):
    """A guide whose draws for one datum read earlier draws of the others: each datum's
    guide term is still a conditional density, so its weights still estimate p(x_n)."""
    with pyro.plate("data", x.shape[0]):
        a = pyro.sample("a", dist.Normal(0.0, 1.2))
        pyro.sample("z", dist.Normal(0.3 * a.cumsum(-1) + 0.4 * x, 1.0))


def test_a_guide_reading_other_data_s_draws_keeps_per_datum_weights():
    x = torch.tensor([0.5, -1.2, 2.0, 0.1, 1.4])
    exact = dist.Normal(0.0, 2.25 ** 0.5).log_prob(x)
    estimate = importance_log_marginal(two_level, (x,), guide=sequential_guide,
                                       num_samples=20_000, chunk_size=5000)
    assert estimate.per_datum is not None and _within(estimate, float(exact.sum()))
    stderr = estimate.diagnostics["stderr"]
    assert ((estimate.per_datum - exact).abs() < 4 * stderr + 1e-3).all()


def test_the_prior_guide_samples_a_site_the_model_marks_for_enumeration():
    """The prior guide used to keep the model's enumeration mark, and importance sampling
    refused it as 'marked for enumeration in the guide' though the user passed no guide."""
    def mixture(x):
        loc = pyro.param("loc", torch.tensor([-1.0, 2.0]))
        with pyro.plate("data", x.shape[0]):
            k = pyro.sample("k", dist.Categorical(torch.tensor([0.3, 0.7])),
                            infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(loc[k], 1.0), obs=x)

    x = torch.tensor([0.2, -1.5, 2.4, 1.9, -0.7])
    exact = float(lv.log_marginal(mixture, x).value.detach())
    estimate = importance_log_marginal(mixture, (x,), num_samples=4000)
    assert estimate.per_datum is not None and _within(estimate, exact)


def test_a_million_samples_in_bounded_chunks(monkeypatch):
    model = lv.models.LinearGaussian(dim=1)
    x = model.simulate(3)
    sizes = []
    real = importance.particle_terms

    def spy(*args, num_particles, **kwargs):
        sizes.append(num_particles)
        return real(*args, num_particles=num_particles, **kwargs)

    monkeypatch.setattr(importance, "particle_terms", spy)
    estimate = importance_log_marginal(model, (x,), num_samples=10**6, chunk_size=50_000)
    assert sum(sizes) == 10**6 and max(sizes) == 50_000
    assert _within(estimate, float(model.log_marginal(x).detach()))
    # at a million draws the estimate is sharp
    assert float(estimate.stderr) < 0.01


def test_chunking_does_not_change_the_estimate():
    model = lv.models.LinearGaussian(dim=2)
    x = model.simulate(4)
    estimates = []
    for chunk in (7, 1000):
        pyro.set_rng_seed(1)
        estimates.append(importance_log_marginal(model, (x,), num_samples=1000,
                                                 chunk_size=chunk))
    # different chunks draw different numbers: agree within their standard errors
    a, b = estimates
    assert abs(float(a.value - b.value)) < 4 * math.hypot(float(a.stderr), float(b.stderr))


def test_k_hat_flags_a_light_tailed_guide():
    model = lv.models.LinearGaussian(dim=2)
    x = model.simulate(4)

    def narrow_guide(data):  # far too narrow, and off-centre: heavy-tailed weights
        with pyro.plate("data", data.shape[0]):
            pyro.sample("z", dist.Normal(data.new_zeros(2), 0.1).to_event(1))

    estimate = importance_log_marginal(model, (x,), guide=narrow_guide, num_samples=4000)
    assert estimate.diagnostics["max_k_hat"] > 0.7
    good = importance_log_marginal(model, (x,), num_samples=4000)
    assert good.diagnostics["max_k_hat"] < 0.5


def test_one_weight_for_a_global_latent():
    def model(data):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", data.shape[0]):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=data)

    x = torch.tensor([0.3, -0.5, 1.2])
    exact = float(dist.MultivariateNormal(torch.zeros(3), torch.eye(3) + 1.0).log_prob(x))
    estimate = importance_log_marginal(model, (x,), num_samples=20_000)
    assert estimate.per_datum is None
    assert _within(estimate, exact)


def test_psis_k_hat_of_exponential_and_pareto_tails():
    torch.manual_seed(0)
    light = torch.randn(20_000) * 0.1  # log-normal weights with small spread: k near 0
    heavy = -torch.rand(20_000).log() * 2.0  # Pareto tail with k = 2
    assert psis_k_hat(light, 20_000) < 0.3
    assert abs(psis_k_hat(heavy, 20_000) - 2.0) < 0.3
    with pytest.raises(ValueError, match="largest"):
        psis_k_hat(light[:5], 20_000)


def test_bad_input_and_subsampling_refused():
    model = lv.models.LinearGaussian(dim=1)
    x = model.simulate(10)
    with pytest.raises(ValueError, match="num_samples"):
        importance_log_marginal(model, (x,), num_samples=1)
    with pytest.raises(ValueError, match="subsample"):
        importance_log_marginal(model, (x,), {"subsample_size": 3}, num_samples=10)
