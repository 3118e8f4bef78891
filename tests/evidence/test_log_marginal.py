"""log_marginal: exact, importance sampling, AIS and BDMC against closed forms."""

import importlib
import math

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_lvmle as lv
from pyro_lvmle.evidence import sigmoid_betas
from pyro_lvmle.traces import Potential

# the module (the package's attribute of that name is the function)
lm = importlib.import_module("pyro_lvmle.evidence.log_marginal")


def _within(estimate, exact, num_se=4.0):
    return abs(float(estimate.value) - exact) < num_se * float(estimate.stderr) + 1e-3


def _reference(name):
    model = lv.models.LinearGaussian(dim=2) if name == "linear-gaussian" \
        else lv.models.PPCA(5, 2, init_params={"sigma": 0.5})
    x = model.simulate(6)
    return model, x, float(model.log_marginal(x).detach())


def gamma_poisson(data):
    """A positive latent (log-transformed by the potential: the Jacobian matters)."""
    with pyro.plate("data", data.shape[0]):
        rate = pyro.sample("rate", dist.Gamma(2.0, 1.0))
        pyro.sample("x", dist.Poisson(rate), obs=data)


def gamma_poisson_exact(data, a=2.0, b=1.0):
    """The negative binomial marginal of :func:`gamma_poisson`."""
    return float((torch.lgamma(data + a) - math.lgamma(a) - torch.lgamma(data + 1)
                  + a * math.log(b / (b + 1)) - data * math.log(b + 1)).sum())


COUNTS = torch.tensor([0.0, 3.0, 1.0, 6.0, 2.0])


def test_exact_closed_form_and_enumeration():
    model, x, exact = _reference("linear-gaussian")
    estimate = lv.log_marginal(model, x)
    assert float(estimate.value) == pytest.approx(exact)
    assert estimate.per_datum.shape == (6,) and float(estimate.stderr) == 0.0

    def mixture(data):  # a user's model, latent label not marked for enumeration
        weights = torch.tensor([0.3, 0.7])
        locs = torch.tensor([-1.0, 2.0])
        with pyro.plate("data", data.shape[0]):
            label = pyro.sample("label", dist.Categorical(weights))
            pyro.sample("x", dist.Normal(locs[label], 1.0), obs=data)

    data = torch.tensor([0.1, 2.5, -1.2])
    by_hand = torch.logsumexp(torch.tensor([0.3, 0.7]).log()
                              + dist.Normal(torch.tensor([-1.0, 2.0]), 1.0).log_prob(
                                  data.unsqueeze(-1)), -1).sum()
    assert float(lv.log_marginal(mixture, data).value) == pytest.approx(float(by_hand))
    with pytest.raises(ValueError, match="cannot enumerate"):
        lv.log_marginal(gamma_poisson, COUNTS)


@pytest.mark.parametrize("name", ["linear-gaussian", "ppca"])
def test_ais_unbiased_for_p_of_x(name):
    model, x, exact = _reference(name)
    estimate = lv.log_marginal(model, x, method="ais", num_samples=100, num_betas=60)
    assert _within(estimate, exact)
    assert estimate.lower is estimate.value
    # local latents: each datum its own chains, accepts and weight
    per_datum = model.log_marginal(x, per_datum=True).detach()
    stderrs = estimate.diagnostics["stderr"]
    assert estimate.per_datum.shape == (6,) and stderrs.shape == (6,)
    assert ((estimate.per_datum - per_datum).abs() < 4 * stderrs + 1e-3).all()
    assert float(estimate.value) == pytest.approx(float(estimate.per_datum.sum()))
    assert 0.5 < estimate.diagnostics["accept_prob"] < 0.9  # the pilot's target is 0.7
    assert estimate.diagnostics["step_sizes"].shape == (60,)


def test_ais_error_shrinks_with_more_intermediate_distributions():
    model, x, exact = _reference("linear-gaussian")
    # the mean absolute error of four runs of 20 chains each (per datum: the data's
    # estimates are already good at 3 distributions, one run alone would not tell)
    errors = [sum(abs(float(lv.log_marginal(model, x, method="ais", num_samples=20,
                                            num_betas=num).value) - exact)
                  for _ in range(4)) / 4 for num in (3, 100)]
    assert errors[1] < 0.5 * errors[0]


@pytest.mark.parametrize("name", ["linear-gaussian", "ppca"])
def test_bdmc_sandwiches_the_exact_value_of_the_simulated_data(name):
    model, x, _ = _reference(name)
    estimate = lv.log_marginal(model, x, method="bdmc", num_samples=100, num_betas=60)
    simulated = estimate.diagnostics["simulated"]["observed"]["x"]
    assert simulated.shape == x.shape
    exact = float(model.log_marginal(simulated).detach())
    se_low, se_up = float(estimate.stderr), float(estimate.diagnostics["upper_stderr"])
    assert float(estimate.lower) - 4 * se_low - 1e-3 < exact < float(estimate.upper) \
        + 4 * se_up + 1e-3
    assert abs(estimate.diagnostics["gap"]) < 0.5


def test_positive_latent_ais_and_is_match_the_negative_binomial():
    exact = gamma_poisson_exact(COUNTS)
    assert _within(lv.log_marginal(gamma_poisson, COUNTS, method="is", num_samples=5000), exact)
    assert _within(lv.log_marginal(gamma_poisson, COUNTS, method="ais", num_samples=200,
                                   num_betas=100), exact)


class _NoJacobian:
    """A planted bug: the potential's log joint without the change of variables' Jacobian."""

    def __init__(self, potential):
        self.potential, self.dim = potential, potential.dim

    def tempered(self, beta):
        return _NoJacobian(self.potential.tempered(beta))

    def sample_prior(self, num):
        return self.potential.sample_prior(num)

    def __call__(self, position):
        return -self.potential.log_joint(position).detach()

    def value_and_grad(self, position):
        with torch.enable_grad():
            position = position.detach().requires_grad_(True)
            energy = -self.potential.log_joint(position)
            (grad,) = torch.autograd.grad(energy.sum(), position)
        return energy.detach(), grad


def test_planted_control_a_missing_jacobian_is_detected():
    exact = gamma_poisson_exact(COUNTS)
    potential = Potential(gamma_poisson, (COUNTS,))
    betas = sigmoid_betas(100)
    settings = {"num_transitions": 1, "num_steps": 5}
    correct = lm._ais(potential, 200, betas, **settings)
    wrong = lm._ais(_NoJacobian(potential), 200, betas, **settings)
    assert _within(correct, exact)
    assert not _within(wrong, exact)


def _global_scale(data):
    """A global latent: the posterior does not factor over the data."""
    scale = pyro.sample("scale", dist.LogNormal(0.0, 0.5))
    with pyro.plate("data", data.shape[0]):
        pyro.sample("x", dist.Normal(0.0, scale), obs=data)


def test_ais_with_a_global_latent_has_one_joint_weight():
    data = torch.tensor([0.3, -1.2, 2.0])
    estimate = lv.log_marginal(_global_scale, data, method="ais", num_samples=100, num_betas=60)
    assert estimate.per_datum is None
    grid = torch.linspace(-6, 6, 20001)  # log scale, a quadrature of the exact value
    log_scale_prior = dist.Normal(0.0, 0.5).log_prob(grid)
    log_lik = dist.Normal(0.0, grid.exp().unsqueeze(-1)).log_prob(data).sum(-1)
    exact = float(torch.logsumexp(log_scale_prior + log_lik, 0) + math.log(grid[1] - grid[0]))
    assert _within(estimate, exact)


def test_planted_control_per_datum_weights_without_jacobian_are_detected(monkeypatch):
    from pyro_lvmle.traces.local import LocalTarget

    class NoJacobian(LocalTarget):
        def tempered(self, beta):
            return NoJacobian(self.potential.tempered(beta), self.plate)

        def energies(self, position):
            with torch.enable_grad():
                log_joint = self.potential.log_joint(position)
            # the right per-datum log densities less each datum's log Jacobian
            right = super().energies(position)
            log_det = torch.stack([self.potential._unpack(position)[s.name][1].reshape(
                position.shape[0], -1) for s in self.potential.sites], -1).sum(-1)
            return right + log_det + 0 * log_joint.unsqueeze(-1)

    exact = gamma_poisson_exact(COUNTS)
    potential = Potential(gamma_poisson, (COUNTS,))
    betas = sigmoid_betas(100)
    settings = {"num_transitions": 1, "num_steps": 5}
    correct = lm._ais(potential, 200, betas, **settings)
    assert correct.per_datum is not None and _within(correct, exact)
    monkeypatch.setattr(lm, "LocalTarget", NoJacobian)
    wrong = lm._ais(potential, 200, betas, **settings)
    assert wrong.per_datum is not None and not _within(wrong, exact)


def test_bad_arguments():
    model, x, _ = _reference("linear-gaussian")
    with pytest.raises(ValueError, match="method must be one of"):
        lv.log_marginal(model, x, method="laplace")
    with pytest.raises(ValueError, match="num_samples"):
        lv.log_marginal(model, x, method="ais", num_samples=0)
    with pytest.raises(ValueError, match="increase from 0 to 1"):
        lv.log_marginal(model, x, method="ais", betas=[0.0, 0.5])
    with pytest.raises(ValueError, match="num_betas"):
        lv.log_marginal(model, x, method="ais", num_betas=1)
    with pytest.raises(ValueError, match="increase from 0 to 1"):
        lv.log_marginal(model, x, method="bdmc", betas=[0.5, 1.0])
    with pytest.raises(TypeError, match="guide must be a Pyro guide"):
        lv.log_marginal(model, x, method="is", guide="auto")


def test_a_subsampled_plate_is_refused_by_every_sampling_method():
    """AIS gave -45.7 +/- 0.07 on half of the data against an exact -96.2 for all of it."""
    def model(x):
        w = pyro.param("w", torch.tensor(1.5))
        with pyro.plate("data", x.shape[0], subsample_size=4) as idx:
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(w * z, 0.5), obs=x[idx])

    for method in ("is", "ais", "bdmc"):
        with pytest.raises(ValueError, match="subsampled"):
            lv.log_marginal(model, torch.randn(8), method=method, num_samples=10, num_betas=3)


def test_an_exact_estimate_prints_without_a_warning():
    model, x, _ = _reference("linear-gaussian")
    model(x)  # the parameters enter Pyro's param store: the closed form reads them there
    estimate = lv.log_marginal(model, x)
    assert estimate.value.requires_grad  # differentiable in the parameters
    assert repr(estimate).startswith("Estimate(exact: -")


@pytest.mark.integration
def test_theophylline_at_its_mle_ais_and_is_agree_with_quadrature():
    data = lv.models.load_theophylline()
    # the MLE (Theophylline().mle(data), as tests/models/test_theophylline.py checks)
    mle = {"tka": 0.45930, "tcl": 1.01167, "tv": 3.45385,
           "omega": [0.63646, 0.26517, 0.13596], "add_sd": 0.69591}
    model = lv.models.Theophylline(init_params=mle)
    exact = float(model.log_marginal(data).detach())
    assert _within(lv.log_marginal(model, data, method="is", num_samples=50_000), exact)
    assert _within(lv.log_marginal(model, data, method="ais", num_samples=100, num_betas=300,
                                   num_steps=10), exact)


def test_estimates_follow_the_data_to_its_device(device):
    model = lv.models.LinearGaussian(dim=2)
    x = model.simulate(6).to(device)
    exact = float(model.log_marginal(x).detach())
    for method, settings in (("is", {"num_samples": 2000}),
                             ("ais", {"num_samples": 50, "num_betas": 40})):
        estimate = lv.log_marginal(model, x, method=method, **settings)
        assert estimate.value.device.type == device.type
        assert estimate.per_datum.device.type == device.type
        assert _within(estimate, exact)


def test_dependent_data_inside_a_plate_keep_one_weight():
    x = torch.tensor([0.3, 1.1, 0.4, -0.8, -0.2, 0.9])

    def random_walk(data):
        with pyro.plate("time", data.shape[0]):
            eps = pyro.sample("eps", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(eps.cumsum(-1), 0.5), obs=data)

    lower = torch.tril(torch.ones(6, 6))
    exact = float(dist.MultivariateNormal(torch.zeros(6), lower @ lower.T + 0.25 * torch.eye(6))
                  .log_prob(x))
    estimate = lv.log_marginal(random_walk, x, method="ais", num_samples=100, num_betas=100)
    assert estimate.per_datum is None and _within(estimate, exact)
    # importance sampling too: one weight for the whole series (split per datum it was 2.5
    # nats off with a standard error of 0.05)
    estimate = lv.log_marginal(random_walk, x, method="is", num_samples=50_000)
    assert estimate.per_datum is None and _within(estimate, exact)
