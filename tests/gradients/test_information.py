"""Louis' identity: standard errors against the analytic ones of the linear-Gaussian model.

With sigma near 1.5 the latents hide about 70% of the information about w and 50% of that
about sigma, so the missing-information term matters; the relative error of a standard error
from S effectively independent draws is about sqrt(2 / S) * m / (1 - m) / 2 for a fraction m
missing: 1.1% for w with S = 20000, which a 5% tolerance covers at over 4 standard errors.
"""

import pyro
import pytest
import torch

import pyro_lvmle as lv
from tests.common import assert_close, assert_within_stderr


def fitted_linear_gaussian():
    model = lv.models.LinearGaussian(dim=2)
    data = model.simulate(50, {"w": torch.tensor([0.5, -1.0]), "sigma": torch.tensor(1.5)})
    model.set_params(model.mle(data))
    return model, data


def analytic_standard_errors(model, data):
    """Inverse Hessian of the exact log-likelihood, in the constrained parameters."""
    p = model.params()
    theta = torch.cat([p["w"].detach(), p["sigma"].detach().reshape(1)])
    hessian = torch.autograd.functional.hessian(
        lambda t: model.log_marginal(data, {"w": t[:2], "sigma": t[2]}), theta)
    se = torch.linalg.inv(-hessian).diagonal().sqrt()
    return {"w": se[:2], "sigma": se[2]}


def test_standard_errors_from_exact_posterior_draws_match_the_analytic_ones():
    model, data = fitted_linear_gaussian()
    exact = model.posterior(data).sample((20000,))
    info = lv.observed_information(model, data, samples={"z": exact})
    analytic = analytic_standard_errors(model, data)
    for name, se in info.standard_errors().items():
        assert_close(se, analytic[name], atol=0.0, rtol=0.05, what=name)
    # the latents hide sigma^2 / (1 + sigma^2) of the information about w
    sigma2 = model.params()["sigma"].detach() ** 2
    assert_close(info.fraction_missing[:2], (sigma2 / (1 + sigma2)).expand(2), atol=0.02)


def test_standard_errors_from_the_chains_match_the_analytic_ones():
    # within 4 of their Monte Carlo errors (jackknife over batches of whole chains), which
    # are 1.3-2.6% of the standard errors here: a fixed 5% tolerance would be a 2-error test
    model, data = fitted_linear_gaussian()
    analytic = analytic_standard_errors(model, data)
    ses, errors = lv.standard_errors(model, data, num_samples=16000, num_chains=64,
                                     return_mc_error=True)
    for name, se in ses.items():
        assert (errors[name] < 0.04 * analytic[name]).all(), (name, errors[name])
        assert_within_stderr(se, analytic[name], errors[name], what=name)


def test_planted_bug_complete_data_information_alone_fails():
    # dropping Louis' missing-information term understates the standard error of w by
    # 1 - sqrt(1 - 0.7), about 45%
    model, data = fitted_linear_gaussian()
    exact = model.posterior(data).sample((20000,))
    info = lv.observed_information(model, data, samples={"z": exact})
    wrong = torch.linalg.inv(info.complete).diagonal().sqrt()[:2]
    with pytest.raises(AssertionError, match="w"):
        assert_close(wrong, analytic_standard_errors(model, data)["w"], atol=0.0, rtol=0.05,
                     what="w")


def test_bad_input():
    model, data = fitted_linear_gaussian()
    with pytest.raises(ValueError, match="samples lack latent sites"):
        lv.observed_information(model, data, samples={"y": torch.zeros(3)})
    with pytest.raises(ValueError, match="full data"):
        lv.observed_information(model, data, samples={"z": torch.zeros(3, 4, 2)},
                                subsample_size=4)
    with pytest.raises(ValueError, match="num_samples"):
        lv.observed_information(model, data, num_samples=1)
    info = lv.observed_information(model, data, samples={"z": model.posterior(data).sample(
        (50,))})
    broken = info._replace(matrix=-info.matrix)
    with pytest.raises(ValueError, match="not positive definite"):
        broken.standard_errors()


def exact_standard_errors(model, data, layout):
    """Inverse Hessian of a reference model's exact log-likelihood, flat in ``layout``."""
    p = {n: v.detach() for n, v in model.params().items()}
    theta = torch.cat([p[name].reshape(-1) for name in layout])

    def log_likelihood(flat):
        return model.log_marginal(data, {name: flat[o:o + max(1, int(torch.tensor(s).prod()))]
                                         .reshape(s) for name, (o, s) in layout.items()})

    return torch.linalg.inv(-torch.autograd.functional.hessian(log_likelihood, theta)) \
        .diagonal().sqrt()


def assert_covered(info, exact):
    """Each Louis SE within four of its reported Monte Carlo errors of the exact one."""
    se = torch.cat([v.reshape(-1) for v in info.standard_errors().values()])
    mc = torch.cat([v.reshape(-1) for v in info.standard_errors_mc().values()])
    assert torch.isfinite(mc).all() and (mc > 0).all(), mc
    assert ((se - exact).abs() <= 4 * mc).all(), (se, exact, mc)
    return se, mc


def test_monte_carlo_errors_cover_the_linear_gaussian_standard_errors():
    model, data = fitted_linear_gaussian()
    info = lv.observed_information(model, data, num_samples=4000)
    assert info.batch_matrices.shape == (8, 3, 3)
    exact = exact_standard_errors(model, data, info.layout)
    se, mc = assert_covered(info, exact)
    assert info.draws_needed(relative=float((mc / se).max()) / 2) > 3 * 4000
    # control: the complete information alone (EM's curvature) is far outside the errors
    wrong = torch.linalg.inv(info.complete).diagonal().sqrt()
    assert ((wrong - exact).abs() > 4 * mc).any()


@pytest.mark.integration
def test_monte_carlo_errors_cover_the_logistic_growth_standard_errors():
    """Non-centered, fraction missing ~0.95: 4000 draws may leave the information not
    positive definite; the error then says how many draws would do, and with those the
    reported errors cover the exact standard errors."""
    import pyro

    pyro.set_rng_seed(0)
    model = lv.models.LogisticGrowth()
    data = model.simulate(6, params=model.truth)
    model.set_params(model.mle(data))
    num_samples = 4000
    while True:
        info = lv.observed_information(model, data, num_samples=num_samples)
        try:
            mc = info.standard_errors_mc()
        except ValueError as error:  # the full information is not positive definite
            assert "draws would make it reliable" in str(error)
            mc = None
        if mc is not None and all(torch.isfinite(v).all() for v in mc.values()):
            break
        assert num_samples < 64000, "not reliable with 64000 draws"
        num_samples *= 4  # what draws_needed() and the error ask for when not reliable
    exact = exact_standard_errors(model, data, info.layout)
    assert_covered(info, exact)


def enumerated_mixture(x):
    loc = pyro.param("loc", torch.tensor([-1.0, 2.0]))
    with pyro.plate("data", x.shape[0]):
        c = pyro.sample("c", pyro.distributions.Categorical(torch.tensor([0.3, 0.7])),
                        infer={"enumerate": "parallel"})
        pyro.sample("x", pyro.distributions.Normal(loc[c], 1.0), obs=x)


def test_a_model_whose_latents_are_all_summed_out_gets_the_exact_information():
    """It was refused as 'no latent sites to sample'; its information is minus the Hessian
    of the enumerated log-likelihood, exact."""
    x = torch.tensor([-1.3, -0.2, 2.5, 1.7, 3.1, -0.8, 2.2])
    info = lv.observed_information(enumerated_mixture, x)

    def log_likelihood(loc):
        weights = torch.tensor([0.3, 0.7]).log()
        terms = weights + torch.distributions.Normal(loc, 1.0).log_prob(x.unsqueeze(-1))
        return terms.logsumexp(-1).sum()

    exact = -torch.autograd.functional.hessian(log_likelihood, torch.tensor([-1.0, 2.0]))
    assert torch.allclose(info.matrix, exact, rtol=1e-10, atol=1e-12)
    assert info.num_samples == 0
    assert torch.equal(info.standard_errors_mc()["loc"], torch.zeros(2))


def test_a_simplex_parameter_is_refused_by_name():
    """A simplex's entries add up to one: the information in them is singular whatever the
    draws (the message blamed the number of draws)."""
    def model(x):
        weights = pyro.param("weights", torch.tensor([0.4, 0.6]),
                             constraint=pyro.distributions.constraints.simplex)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", pyro.distributions.Normal(0.0, 1.0))
            c = pyro.sample("c", pyro.distributions.Categorical(weights),
                            infer={"enumerate": "parallel"})
            pyro.sample("x", pyro.distributions.Normal(2.0 * c + z, 1.0), obs=x)

    with pytest.raises(ValueError, match=r"parameters \['weights'\] live on a constraint"):
        lv.observed_information(model, torch.randn(5), samples={"z": torch.randn(10, 5)})
