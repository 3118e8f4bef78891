"""The guard: undirected models (improper observed site + pyro.factor) are refused by ELBOs,
ordinary normalized models are not."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO

import pyro_lvmle as lv


def _rbm():
    rbm = lv.models.RBM(4, 3, init_params={"weights": torch.randn(4, 3)})
    return rbm, rbm.simulate(20)


def factor_likelihood(data):
    """pyro.factor as the likelihood of a latent-only model: normalized, must pass."""
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    pyro.factor("likelihood", dist.Normal(z, 1.0).log_prob(data).sum())


def test_check_model_refuses_the_rbm_and_names_the_site():
    rbm, data = _rbm()
    with pytest.raises(ValueError, match=r"\['v'\].*ContrastiveDivergence"):
        lv.check_model(rbm.model, lv.empty_guide, data)


@pytest.mark.parametrize("make", [
    lambda: (factor_likelihood, (torch.randn(5),)),
    lambda: (lv.models.LinearGaussian(), (lv.models.LinearGaussian().simulate(5),)),
    lambda: (lv.models.GaussianMixture(num_components=2, data_dim=1),
             (lv.models.GaussianMixture(num_components=2, data_dim=1).simulate(5),)),
], ids=["factor-likelihood", "linear-gaussian", "mixture"])
def test_check_model_passes_normalized_models(make):
    model, args = make()
    lv.check_model(model, None, *args)


def flat_prior(data):
    """A flat improper prior on a latent (cannot be sampled), a normalized likelihood: a
    normalized model Trace_ELBO fits with a guide, so the guard must run it without one."""
    loc = pyro.sample("loc", dist.ImproperUniform(dist.constraints.real, (), ()))
    scale = pyro.sample("scale", dist.ImproperUniform(dist.constraints.positive, (), ()))
    with pyro.plate("data", data.shape[0]):
        pyro.sample("x", dist.Normal(loc, scale), obs=data)


def flat_prior_guide(data):
    for name, start in (("loc", 0.0), ("scale", 0.0)):
        mean = pyro.param(f"{name}_mean", torch.tensor(start))
        spread = pyro.param(f"{name}_spread", torch.tensor(0.2),
                            constraint=dist.constraints.positive)
        base = dist.Normal(mean, spread)
        pyro.sample(name, base if name == "loc" else dist.LogNormal(mean, spread))


@pytest.mark.parametrize("loss", [lv.TraceIWAE_ELBO, lv.TraceSTL_ELBO])
def test_a_flat_prior_on_a_latent_passes_the_guard(loss):
    """The guard ran the model without its guide and crashed on the flat prior
    (``NotImplementedError: ImproperUniform does not support sampling``)."""
    data = torch.randn(10) + 1.0
    lv.check_model(flat_prior, flat_prior_guide, data)
    pyro.set_rng_seed(0)
    ours = loss(num_particles=1).differentiable_loss(flat_prior, flat_prior_guide, data)
    pyro.set_rng_seed(0)
    pyros = Trace_ELBO().differentiable_loss(flat_prior, flat_prior_guide, data)
    assert torch.allclose(ours, pyros)  # one particle: the ELBO itself


def test_our_objectives_and_mcmc_gradient_refuse_the_rbm():
    rbm, data = _rbm()
    for loss in (lv.TraceIWAE_ELBO(num_particles=2), lv.MCMCGradient("hmc")):
        with pytest.raises(ValueError, match="improper density"):
            loss.loss(rbm.model, lv.PriorGuide(rbm.model), data)


def enumerated_rbm(data):
    """The RBM as users write it with its hidden units as enumerated sites: Pyro sums them
    out, and the result is log p~(v), not log p(v)."""
    weights = pyro.param("weights", torch.ones(4, 3))
    with pyro.plate("data", data.shape[0]):
        v = pyro.sample("v", dist.ImproperUniform(dist.constraints.boolean, (), (4,)), obs=data)
        energy = 0.0
        for j in range(3):
            h = pyro.sample(f"h{j}", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})
            energy = energy + h * (v @ weights)[..., j]
        pyro.factor("energy", energy)


def test_every_em_driver_and_log_marginal_method_refuses_an_undirected_model():
    """ExactEM took one step to weights of 1e119 on it, and log_marginal(method='exact')
    returned log p~ (+44 for ten binary vectors)."""
    data = torch.bernoulli(0.5 * torch.ones(10, 4))
    for driver in (lv.ExactEM(enumerated_rbm),
                   lv.VariationalEM(enumerated_rbm, lv.PriorGuide(enumerated_rbm))):
        with pytest.raises(ValueError, match=f"{type(driver).__name__}: .*improper density"):
            driver.step(data)
    for method in ("exact", "is", "ais", "bdmc"):
        with pytest.raises(ValueError, match=r"log_marginal\(method=.*improper density"):
            lv.log_marginal(enumerated_rbm, data, method=method, num_samples=10, num_betas=3)
    rbm, rbm_data = _rbm()  # a closed form that includes log Z is exact
    assert float(lv.log_marginal(rbm, rbm_data).value.detach()) < 0


def test_an_improper_site_behind_a_transform_is_found():
    def model(data):
        flat = dist.ImproperUniform(dist.constraints.real, (), ())
        with pyro.plate("data", data.shape[0]):
            x = pyro.sample("x", dist.TransformedDistribution(
                flat, [dist.transforms.ExpTransform()]), obs=data)
            pyro.factor("f", -x)

    with pytest.raises(ValueError, match=r"\['x'\].*improper density"):
        lv.check_model(model, None, torch.ones(3))


def test_control_pyros_elbo_gradient_on_the_rbm_is_silently_wrong():
    """What the guard is for: Trace_ELBO runs on the RBM and gives only the positive phase."""
    rbm, data = _rbm()
    rbm.model(data)
    params = dict(pyro.get_param_store().named_parameters())
    elbo_loss = Trace_ELBO().differentiable_loss(rbm.model, lv.empty_guide, data)
    elbo = torch.autograd.grad(elbo_loss, [params["weights"]])[0]
    exact = torch.autograd.grad(-rbm.log_marginal(data), [params["weights"]])[0]
    assert (elbo - exact).abs().max() > 1.0


def flat_prior_with_param(data):
    scale = pyro.param("scale", torch.tensor(1.0), constraint=dist.constraints.positive)
    loc = pyro.sample("loc", dist.ImproperUniform(dist.constraints.real, (), ()))
    with pyro.plate("data", data.shape[0]):
        pyro.sample("x", dist.Normal(loc, scale), obs=data)


@pytest.mark.parametrize("run", [
    lambda data: pyro.infer.SVI(flat_prior_with_param, lv.empty_guide,
                                pyro.optim.Adam({"lr": 0.01}),
                                lv.MCMCGradient("hmc", num_samples=5)).step(data),
    lambda data: lv.MCEM(flat_prior_with_param, num_samples=5).run(data, num_steps=1,
                                                                   progress=False),
    lambda data: lv.SAEM(flat_prior_with_param).run(data, num_steps=1, progress=False),
    lambda data: lv.log_marginal(flat_prior_with_param, data, method="is"),
    lambda data: lv.log_marginal(flat_prior_with_param, data, method="ais"),
    lambda data: lv.standard_errors(flat_prior_with_param, data),
], ids=["mcmc-gradient", "mcem", "saem", "log-marginal-is", "log-marginal-ais",
        "standard-errors"])
def test_methods_without_a_guide_name_a_flat_prior(run):
    """Chains cannot start from, and importance sampling cannot propose from, a flat prior:
    each method said ``NotImplementedError: ImproperUniform does not support sampling``."""
    with pytest.raises(ValueError, match=r"'loc'.*improper prior"):
        run(torch.randn(10) + 1.0)


def bernoulli_rbm(data):
    """An RBM written as Bernoulli(1/2) observations plus its free energy: unnormalized (the
    base measure is normalized, the factor is not), with no improper site to find."""
    weights = pyro.param("weights", torch.full((4, 2), 0.5))
    with pyro.plate("data", data.shape[0]):
        v = pyro.sample("v", dist.Bernoulli(0.5 * torch.ones(4)).to_event(1), obs=data)
        pyro.factor("free_energy", torch.nn.functional.softplus(v @ weights).sum(-1))


def discrete_with_penalty(data):
    """A normalized model of counts with a penalty on its parameter: passes."""
    rate = pyro.param("rate", torch.tensor(2.0), constraint=dist.constraints.positive)
    pyro.factor("penalty", -0.1 * rate**2)
    with pyro.plate("data", data.shape[0]):
        pyro.sample("x", dist.Poisson(rate), obs=data)


def log_normal_by_jacobian(data):
    """A continuous observation with its Jacobian as a factor: normalized, passes."""
    loc = pyro.param("loc", torch.tensor(0.0))
    with pyro.plate("data", data.shape[0]):
        pyro.sample("log_x", dist.Normal(loc, 1.0), obs=data.log())
        pyro.factor("jacobian", -data.log())


def test_a_factor_changing_with_discrete_observations_is_named():
    """Found from outside: this model passed every check, log_marginal(method='exact')
    returned -184.5 against the true -160.9, ExactEM reported a log-likelihood of +2e119."""
    data = torch.bernoulli(torch.full((6, 4), 0.5))
    with pytest.warns(UserWarning, match=r"\['free_energy'\] change with the discrete "
                                         r"observed sites \['v'\].*ContrastiveDivergence"):
        lv.check_model(bernoulli_rbm, None, data)


@pytest.mark.parametrize("model, data", [
    (discrete_with_penalty, torch.tensor([1.0, 3.0, 0.0])),
    (log_normal_by_jacobian, torch.tensor([0.5, 2.0, 1.5])),
    (factor_likelihood, torch.randn(5)),
], ids=["penalty-on-counts", "jacobian", "factor-likelihood"])
def test_factors_of_normalized_models_pass_without_a_warning(model, data):
    lv.check_model(model, None, data)  # warnings are errors in the tests
