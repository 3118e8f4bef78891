"""MCMCGradient: the mean gradient against the exact one, SGD to the closed-form MLE, Kuntz et
al.'s particle gradient descent, per-datum chains under subsampling, persistence, bad input.

Per-call gradients from persistent chains form a Markov chain; their standard error is the
standard deviation over the square root of the effective sample size of that series.
"""

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_lvmle as lv
from pyro_lvmle.traces.params import call_with_params
from tests.common import (
    assert_polyak_average,
    assert_within_stderr,
    capped_effective_sample_size,
)


def _flat(grads, names):
    return torch.cat([grads[n].reshape(-1) for n in names])


def exact_gradient(model, data, names):
    """Exact gradient of log p(x) in the optimizer's (unconstrained) coordinates."""
    leaves = [pyro.param(name).unconstrained() for name in names]
    grads = torch.autograd.grad(model.log_marginal(data), leaves)
    return dict(zip(names, grads, strict=False))


def gradient_series(model, data, loss, num_calls, **kwargs):
    """Per-call MCMCGradient estimates of the gradient of log p(x), stacked ``(T, P)``."""
    rows, names = [], None
    for _ in range(num_calls):
        value, params = call_with_params(
            lambda: loss.differentiable_loss(model, lv.empty_guide, data, **kwargs))
        grads = torch.autograd.grad(-value, list(params.values()))
        names = names or list(params)
        rows.append(_flat(dict(zip(params, grads, strict=False)), names))
    return torch.stack(rows), names


def assert_mean_gradient(model, data, loss, num_calls, **kwargs):
    series, names = gradient_series(model, data, loss, num_calls, **kwargs)
    exact = _flat(exact_gradient(model, data, names), names)
    ess = capped_effective_sample_size(series.unsqueeze(0))
    stderr = series.std(0) / ess.sqrt()
    assert_within_stderr(series.mean(0), exact, stderr, what="mean MCMC gradient")


def linear_gaussian():
    model = lv.models.LinearGaussian(dim=2, init_params={"w": torch.tensor([0.3, -0.2]),
                                                         "sigma": torch.tensor(0.8)})
    data = model.simulate(20, {"w": torch.tensor([1.0, -1.0]), "sigma": torch.tensor(0.6)})
    return model, data


def ppca():
    model = lv.models.PPCA(data_dim=3, latent_dim=1)
    truth = {"W": torch.tensor([[1.0], [0.5], [-0.5]]), "mu": torch.tensor([0.5, 0.0, -0.5]),
             "sigma": torch.tensor(0.5)}
    return model, model.simulate(20, truth)


MODELS = {"linear_gaussian": linear_gaussian, "ppca": ppca}


@pytest.mark.parametrize("name", list(MODELS))
def test_mean_gradient_matches_the_exact_gradient(name):
    model, data = MODELS[name]()
    loss = lv.MCMCGradient("hmc", num_chains=8, warmup_steps=150, num_steps=5)
    assert_mean_gradient(model, data, loss, num_calls=150)


def test_planted_bug_a_biased_sampler_fails_the_gradient_test():
    # unadjusted Langevin with a large step samples an over-dispersed "posterior"
    model, data = linear_gaussian()
    loss = lv.MCMCGradient("ula", num_chains=8, warmup_steps=0, step_size=1.0)
    with pytest.raises(AssertionError, match="standard errors"):
        assert_mean_gradient(model, data, loss, num_calls=150)


def test_nuts_and_mala_give_the_exact_mean_gradient():
    model, data = linear_gaussian()
    assert_mean_gradient(model, data, lv.MCMCGradient("mala", num_chains=8, warmup_steps=150),
                         num_calls=150)
    assert_mean_gradient(model, data, lv.MCMCGradient("nuts", num_chains=1, warmup_steps=50),
                         num_calls=60)


def polyak_fit(model, data, loss, burn_in, window, lr, **kwargs):
    """Adam with a decaying step to the optimum, then constant-step SGD with the iterates
    averaged over ``window`` steps; returns the trajectory in that window ``(window, P)`` of
    the given statistic."""
    # the learning rate falls 100-fold over the burn-in (Robbins-Monro): a constant Adam step
    # ends anywhere in a band of its own noise, which the short SGD window cannot leave
    decay = 0.01 ** (1.0 / burn_in)
    svi = pyro.infer.SVI(model, lv.empty_guide,
                         pyro.optim.ClippedAdam({"lr": lr, "lrd": decay}), loss)
    for _ in range(burn_in):
        svi.step(data, **kwargs)
    svi = pyro.infer.SVI(model, lv.empty_guide, pyro.optim.SGD({"lr": lr / 10}), loss)
    trajectory = []
    for _ in range(window):
        svi.step(data, **kwargs)
        trajectory.append({k: v.detach().clone() for k, v in model.params().items()})
    return trajectory


def test_sgd_reaches_the_linear_gaussian_mle():
    # 32 chains: sigma enters log p(x) through 1 + sigma^2, a flat direction where the
    # iterate's noise (proportional to the gradient's) wanders slowly
    model, data = linear_gaussian()
    mle = model.mle(data)
    loss = lv.MCMCGradient("hmc", num_chains=32, warmup_steps=100, num_steps=5)
    trajectory = polyak_fit(model, data, loss, burn_in=300, window=300, lr=0.05)
    for name in ("w", "sigma"):
        assert_polyak_average([t[name] for t in trajectory], mle[name], what=name)


def test_sgd_reaches_the_ppca_mle():
    # with one latent dimension W is identified up to its sign: align the MLE's to the fit's
    model, data = ppca()
    mle = model.mle(data)
    loss = lv.MCMCGradient("hmc", num_chains=8, warmup_steps=100, num_steps=5)
    trajectory = polyak_fit(model, data, loss, burn_in=400, window=300, lr=0.05)
    fitted = torch.stack([t["W"] for t in trajectory]).mean(0)
    sign = torch.sign((fitted * mle["W"]).sum())
    assert_polyak_average([t["W"] for t in trajectory], sign * mle["W"], what="W")
    for name in ("mu", "sigma"):
        assert_polyak_average([t[name] for t in trajectory], mle[name], what=name)


def test_planted_bug_a_biased_sampler_misses_the_mle():
    model, data = linear_gaussian()
    mle = model.mle(data)
    loss = lv.MCMCGradient("ula", num_chains=8, warmup_steps=0, step_size=1.0)
    trajectory = polyak_fit(model, data, loss, burn_in=300, window=300, lr=0.05)
    with pytest.raises(AssertionError, match="standard errors"):
        assert_polyak_average([t["sigma"] for t in trajectory], mle["sigma"], what="sigma")


def test_particle_gradient_descent_on_kuntz_toy():
    # Kuntz, Lim & Johansen (2023), sec. 4.1: z_d ~ N(theta, 1), y_d ~ N(z_d, 1); the MLE is
    # mean(y). ULA particles, a fixed step, one transition per parameter step (their PGD).
    model = lv.models.LinearGaussian(dim=1, learn_sigma=False)
    y = model.simulate(100, {"w": torch.tensor([2.0])})
    loss = lv.MCMCGradient("ula", num_chains=100, warmup_steps=0, step_size=0.3,
                           adapt_mass=False)
    svi = pyro.infer.SVI(model, lv.empty_guide, pyro.optim.SGD({"lr": 0.005}), loss)
    trajectory = []
    for i in range(600):
        svi.step(y)
        if i >= 300:
            trajectory.append(model.params()["w"].detach().clone())
    assert_polyak_average(trajectory, y.mean(0), what="theta")


def subsampled_model():
    model = lv.models.LinearGaussian(dim=1, init_params={"w": torch.tensor([0.3]),
                                                         "sigma": torch.tensor(0.8)})
    return model, model.simulate(12, {"w": torch.tensor([1.0]), "sigma": torch.tensor(0.6)})


def test_mini_batches_keep_every_datum_chain():
    model, data = subsampled_model()
    loss = lv.MCMCGradient("hmc", num_chains=4, warmup_steps=100, num_steps=3)
    loss.differentiable_loss(model, lv.empty_guide, data, subsample_size=12)  # all data seen
    before = loss.state_dict()["position"]["z"].clone()
    potential = loss.draw(model, (data,), {"subsample_size": 4}).potential
    batch = potential.subsample_indices["data"]
    after = loss.state_dict()["position"]["z"]
    others = torch.ones(12, dtype=torch.bool)
    others[batch] = False
    assert loss.diagnostics["warmup"] is False
    assert torch.equal(after[:, others], before[:, others])
    assert not torch.equal(after[:, batch], before[:, batch])
    assert after.shape == (4, 12, 1)


def test_a_state_kept_in_memory_does_not_follow_the_chains():
    # the chains' flags and positions are updated in place: a state_dict() kept in memory
    # went from 26 to 34 data marked seen, and a run resumed from it differed by 0.09
    model, data = subsampled_model()
    loss = lv.MCMCGradient("hmc", num_chains=2, warmup_steps=20, num_steps=2)
    loss.loss(model, lv.empty_guide, data, subsample_size=4)
    state = loss.state_dict()
    kept = {key: state[key]["data" if key == "visited" else "z"].clone()
            for key in ("visited", "position")}
    for _ in range(3):
        loss.loss(model, lv.empty_guide, data, subsample_size=4)
    resumed = lv.MCMCGradient("hmc", num_chains=2, warmup_steps=20, num_steps=2)
    resumed.load_state_dict(state)  # nor does a run resumed from it write into it
    resumed.loss(model, lv.empty_guide, data, subsample_size=4)
    assert torch.equal(state["visited"]["data"], kept["visited"])
    assert torch.equal(state["position"]["z"], kept["position"])


def test_mini_batch_gradient_is_unbiased():
    model, data = subsampled_model()
    loss = lv.MCMCGradient("hmc", num_chains=8, warmup_steps=100, num_steps=5)
    assert_mean_gradient(model, data, loss, num_calls=300, subsample_size=4)


def test_state_dict_resumes_exactly(tmp_path):
    model, data = linear_gaussian()
    loss = lv.MCMCGradient("hmc", num_chains=3, warmup_steps=50, num_steps=3)
    loss.loss(model, lv.empty_guide, data)
    torch.save(loss.state_dict(), tmp_path / "chains.pt")
    resumed = lv.MCMCGradient("hmc", num_chains=3, warmup_steps=50, num_steps=3)
    resumed.load_state_dict(torch.load(tmp_path / "chains.pt", weights_only=True))
    pyro.set_rng_seed(5)
    expected = loss.loss(model, lv.empty_guide, data)
    pyro.set_rng_seed(5)
    assert resumed.loss(model, lv.empty_guide, data) == expected
    assert resumed.diagnostics["warmup"] is False


def test_non_persistent_chains_restart_every_call():
    model, data = linear_gaussian()
    loss = lv.MCMCGradient("mala", num_chains=2, warmup_steps=10, persistent=False)
    loss.loss(model, lv.empty_guide, data)
    loss.loss(model, lv.empty_guide, data)
    assert loss.diagnostics["warmup"] is True
    assert loss.diagnostics["num_transitions"] == 1


def test_diagnostics_report_the_effective_sample_size():
    model, data = linear_gaussian()
    loss = lv.MCMCGradient("hmc", num_samples=20, num_chains=4, warmup_steps=50, thinning=2)
    loss.loss(model, lv.empty_guide, data)
    assert loss.diagnostics["num_transitions"] == 40
    assert 0 < loss.diagnostics["ess"] <= 4 * 20 * 1.5
    assert 0 < loss.diagnostics["accept_prob"] <= 1
    assert loss.samples["z"].shape == (80, 20, 2)


def test_enumerated_discrete_latents_are_summed_out():
    # z_n continuous, c_n ~ Bernoulli enumerated: the exact gradient by 1-d quadrature
    data = torch.tensor([-1.0, 0.5, 2.0, 3.0])

    @pyro.infer.config_enumerate
    def model(x):
        loc = pyro.param("loc", torch.tensor(0.5))
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            c = pyro.sample("c", dist.Bernoulli(0.3))
            pyro.sample("x", dist.Normal(z + loc * c, 0.5), obs=x)

    def exact(loc):  # x_n ~ 0.7 N(0, 1.25) + 0.3 N(loc, 1.25)
        comp = torch.stack([dist.Normal(0.0, 1.25**0.5).log_prob(data) + torch.tensor(0.7).log(),
                            dist.Normal(loc, 1.25**0.5).log_prob(data) + torch.tensor(0.3).log()])
        return comp.logsumexp(0).sum()

    loc = torch.tensor(0.5, requires_grad=True)
    (truth,) = torch.autograd.grad(exact(loc), loc)
    loss = lv.MCMCGradient("hmc", num_chains=8, warmup_steps=100, num_steps=5)
    series = []
    for _ in range(200):
        value, params = call_with_params(lambda: loss.differentiable_loss(model, None, data))
        series.append(torch.autograd.grad(-value, [params["loc"]])[0].reshape(1))
    series = torch.stack(series)
    ess = capped_effective_sample_size(series.unsqueeze(0))
    assert_within_stderr(series.mean(0), truth.reshape(1), series.std(0) / ess.sqrt(),
                         what="gradient with c summed out")


def test_svi_updates_the_parameters():
    model, data = linear_gaussian()
    loss = lv.MCMCGradient("mala", num_chains=2, warmup_steps=10)
    svi = pyro.infer.SVI(model, lv.empty_guide, pyro.optim.Adam({"lr": 0.1}), loss)
    before = model.params()["w"].detach().clone()
    svi.step(data)
    assert not torch.equal(model.params()["w"].detach(), before)


def test_bad_input():
    with pytest.raises(ValueError, match="num_chains"):
        lv.MCMCGradient("hmc", num_chains=0)
    with pytest.raises(ValueError, match="unknown kernel"):
        lv.MCMCGradient("metropolis")
    with pytest.raises(TypeError, match="kernel"):
        lv.MCMCGradient(3)
    with pytest.raises(ValueError, match="step_size"):
        lv.MCMCGradient("hmc", step_size=-1.0)
    model, data = linear_gaussian()
    loss = lv.MCMCGradient("mala", warmup_steps=5)
    loss.loss(model, lv.empty_guide, data)
    with pytest.raises(ValueError, match="another model"):
        loss.loss(lv.models.LinearGaussian(dim=2), lv.empty_guide, data)
    with pytest.raises(ValueError, match="subsampled plate"):
        lv.MCMCGradient("nuts", warmup_steps=5).loss(model, lv.empty_guide, data,
                                                     subsample_size=5)

    def discrete(x):
        c = pyro.sample("c", dist.Bernoulli(0.5))
        pyro.sample("x", dist.Normal(c, 1.0), obs=x)

    with pytest.raises(ValueError, match="'c' is discrete.*enumerat"):
        lv.MCMCGradient("hmc").loss(discrete, lv.empty_guide, torch.tensor(0.0))


def test_svi_updates_only_the_models_parameters():
    # an unrelated parameter in the store keeps its value (no momentum step on it)
    model, data = linear_gaussian()
    other = pyro.param("other", torch.tensor(1.0))
    other.unconstrained().grad = torch.tensor(0.5)
    loss = lv.MCMCGradient("mala", num_chains=2, warmup_steps=10)
    svi = pyro.infer.SVI(model, lv.empty_guide, pyro.optim.Adam({"lr": 0.1}), loss)
    svi.step(data)
    assert pyro.param("other").item() == 1.0


def test_nested_plates_keep_per_datum_chains_and_globals_are_refused_with_mini_batches():
    def model(x, subsample_size=None):
        loc = pyro.param("loc", torch.tensor(0.0))
        with pyro.plate("dim", x.shape[1], dim=-1):
            with pyro.plate("data", x.shape[0], subsample_size=subsample_size, dim=-2) as i:
                z = pyro.sample("z", dist.Normal(loc, 1.0))
                pyro.sample("x", dist.Normal(z, 0.5), obs=x[i])

    x = torch.randn(10, 3)
    loss = lv.MCMCGradient("mala", num_chains=2, warmup_steps=20)
    loss.loss(model, lv.empty_guide, x)
    before = loss.state_dict()["position"]["z"].clone()
    potential = loss.draw(model, (x,), {"subsample_size": 4}).potential
    others = torch.ones(10, dtype=torch.bool)
    others[potential.subsample_indices["data"]] = False
    after = loss.state_dict()["position"]["z"]
    assert after.shape == (2, 10, 3) and loss.diagnostics["warmup"] is False
    assert torch.equal(after[:, others], before[:, others])

    def with_global(x, subsample_size=None):
        scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
        with pyro.plate("data", len(x), subsample_size=subsample_size) as i:
            pyro.sample("x", dist.Normal(pyro.sample("z", dist.Normal(0.0, scale)), 1.0),
                        obs=x[i])

    with pytest.raises(ValueError, match="'scale' is outside the subsampled plate"):
        lv.MCMCGradient("mala").loss(with_global, lv.empty_guide, torch.randn(10), 4)
