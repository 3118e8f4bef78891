"""NewtonPreconditioner with MCMCGradient: SGD with one learning rate to the closed-form MLE of
a model whose parameters differ in scale 100-fold (the plain gradient cannot), the direction
against the exact Newton direction from exact posterior draws, exact resume, bad options."""

import copy
import math

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_lvmle as lv
from pyro_lvmle.gradients.newton import newton_step
from pyro_lvmle.gradients.precondition import NewtonPreconditioner, diagonal_newton_step
from pyro_lvmle.traces import Potential
from pyro_lvmle.traces.params import call_with_params
from tests.common import assert_polyak_average, assert_within_stderr

NUM_GROUPS, NUM_REPEATS = 20, 5


def random_effects(y):
    """One-way random effects: z_n ~ N(mu, tau^2), y_nj ~ N(z_n, sigma^2), j = 1..J."""
    mu = pyro.param("mu", torch.tensor(600.0))
    tau = pyro.param("tau", torch.tensor(30.0), constraint=dist.constraints.positive)
    sigma = pyro.param("sigma", torch.tensor(3.0), constraint=dist.constraints.positive)
    with pyro.plate("groups", y.shape[0]):
        z = pyro.sample("z", dist.Normal(mu, tau))
        pyro.sample("y", dist.Normal(z.unsqueeze(-1), sigma).to_event(1), obs=y)


def random_effects_data():
    """A population mean near 700 with a spread of 100 between groups, noise 1 within: the
    log-likelihood's curvatures differ 10^4-fold (mu's natural scale is 100 times sigma's)."""
    z = 700.0 + 100.0 * torch.randn(NUM_GROUPS)
    return z[:, None] + torch.randn(NUM_GROUPS, NUM_REPEATS)


def random_effects_mle(y):
    """The balanced design's closed-form MLE (Searle, Casella & McCulloch 1992, 3.7)."""
    num, rep = y.shape
    means = y.mean(1)
    sigma2 = ((y - means[:, None]) ** 2).sum() / (num * (rep - 1))
    tau2 = ((means - y.mean()) ** 2).mean() - sigma2 / rep
    return {"mu": y.mean(), "tau": tau2.sqrt(), "sigma": sigma2.sqrt()}


def random_effects_log_likelihood(y, mu, log_tau, log_sigma):
    """The exact log p(y): each group's vector is normal, covariance sigma^2 I + tau^2 11'."""
    rep = y.shape[1]
    cov = (2 * log_sigma).exp() * torch.eye(rep) + (2 * log_tau).exp() * torch.ones(rep, rep)
    return dist.MultivariateNormal(mu.expand(rep), cov).log_prob(y).sum()


def sgd_trajectory(y, precondition, lr, num_steps):
    pyro.clear_param_store()  # start from the model's initial values
    loss = lv.MCMCGradient("hmc", num_chains=16, warmup_steps=200, num_steps=10,
                           precondition=precondition)
    svi = pyro.infer.SVI(random_effects, lv.empty_guide, pyro.optim.SGD({"lr": lr}), loss)
    trajectory = []
    for _ in range(num_steps):
        svi.step(y)
        trajectory.append({name: pyro.param(name).detach().clone()
                           for name in ("mu", "tau", "sigma")})
    return trajectory


def test_the_closed_form_mle_is_the_maximum():
    y = random_effects_data()
    mle = random_effects_mle(y)
    theta = torch.stack([mle["mu"], mle["tau"].log(), mle["sigma"].log()]).requires_grad_()
    grad = torch.autograd.grad(random_effects_log_likelihood(y, *theta), theta)[0]
    assert grad.abs().max() < 1e-8
    hessian = torch.autograd.functional.hessian(
        lambda t: random_effects_log_likelihood(y, *t), theta.detach())
    curvatures = torch.linalg.eigvalsh(-hessian)
    assert curvatures.min() > 0 and curvatures.max() / curvatures.min() > 1e4


@pytest.mark.integration
def test_sgd_with_one_learning_rate_reaches_the_mle_of_a_badly_scaled_model():
    y = random_effects_data()
    mle = random_effects_mle(y)
    trajectory = sgd_trajectory(y, "full", lr=0.5, num_steps=100)[50:]
    for name in ("mu", "tau", "sigma"):
        assert_polyak_average([t[name] for t in trajectory], mle[name], what=name)


@pytest.mark.integration
def test_planted_control_the_plain_gradient_has_no_learning_rate_that_works():
    y = random_effects_data()
    mle = random_effects_mle(y)
    # the preconditioned run's learning rate overshoots sigma's curvature (160) 40-fold
    with pytest.raises((ValueError, AssertionError)):
        trajectory = sgd_trajectory(y, None, lr=0.5, num_steps=100)[50:]
        assert_polyak_average([t["sigma"] for t in trajectory], mle["sigma"], what="sigma")
    # a stable one (one over the largest curvature at the start and at the MLE: 772 and
    # 160) leaves mu where it started (its curvature is 0.0022)
    start = torch.tensor([600.0, math.log(30.0), math.log(3.0)])
    theta = torch.stack([mle["mu"], mle["tau"].log(), mle["sigma"].log()])
    hessians = [torch.autograd.functional.hessian(
        lambda t: random_effects_log_likelihood(y, *t), point) for point in (start, theta)]
    lr = 1.0 / max(float(torch.linalg.eigvalsh(-hessian).max()) for hessian in hessians)
    hessian = hessians[1]
    trajectory = sgd_trajectory(y, None, lr=lr, num_steps=100)[50:]
    with pytest.raises(AssertionError, match="standard errors"):
        assert_polyak_average([t["mu"] for t in trajectory], mle["mu"], what="mu")
    se_mu = float(torch.linalg.inv(-hessian)[0, 0].sqrt())  # the MLE's own standard error
    assert abs(float(trajectory[-1]["mu"] - mle["mu"])) > 3 * se_mu


def linear_gaussian_draws(num_batches, num_draws):
    """LinearGaussian(dim=1) away from its MLE (fraction of missing information 0.6), the
    log joints of ``num_batches`` sets of exact posterior draws with their parameters, and
    the exact gradient and observed information in the optimizer's coordinates (w, log
    sigma)."""
    model = lv.models.LinearGaussian(dim=1, init_params={"w": torch.tensor([0.3]),
                                                         "sigma": torch.tensor(1.2)})
    data = model.simulate(40, {"w": torch.tensor([1.0]), "sigma": torch.tensor(1.5)})
    potential = Potential(model.model, (data,), {}, max_plate_nesting=1)
    batches = []
    for _ in range(num_batches):
        draws = model.posterior(data).sample((num_draws,))
        log_joint, params = call_with_params(potential.log_joint, potential.pack({"z": draws}))
        batches.append((log_joint, list(params.values())))
    theta = torch.tensor([0.3, math.log(1.2)])

    def exact(t):
        return model.log_marginal(data, {"w": t[:1], "sigma": t[1].exp()})

    grad = torch.func.grad(exact)(theta)
    information = -torch.autograd.functional.hessian(exact, theta)
    return batches, grad, information


@pytest.mark.parametrize("diagonal", [False, True])
def test_the_direction_is_the_exact_newton_direction_with_exact_draws(diagonal):
    batches, grad, information = linear_gaussian_draws(num_batches=8, num_draws=500)
    preconditioner = NewtonPreconditioner(diagonal, max_step=None)
    directions = torch.stack([preconditioner(None, log_joint, leaves)[0].newton.step
                              for log_joint, leaves in batches])
    exact = grad / information.diagonal() if diagonal else torch.linalg.solve(information, grad)
    assert_within_stderr(directions.mean(0), exact, directions.std(0) / len(batches) ** 0.5,
                         what="preconditioned direction")


def test_planted_control_the_direction_without_louis_missing_term_is_caught():
    batches, grad, information = linear_gaussian_draws(num_batches=8, num_draws=500)
    preconditioner = NewtonPreconditioner(max_step=None)
    rows = []
    for log_joint, leaves in batches:
        state = preconditioner(None, log_joint, leaves)[1]
        gradient = torch.autograd.grad(log_joint.mean(), leaves)
        gradient = torch.cat([g.reshape(-1) for g in gradient])
        rows.append(newton_step(gradient, state.complete, torch.zeros_like(state.missing)).step)
    directions = torch.stack(rows)
    with pytest.raises(AssertionError, match="standard errors"):
        assert_within_stderr(directions.mean(0), torch.linalg.solve(information, grad),
                             directions.std(0) / len(batches) ** 0.5, what="EM-gradient")


def test_the_information_is_averaged_over_memory_steps():
    preconditioner = NewtonPreconditioner(memory=2)
    state = preconditioner.update(None, torch.eye(2), torch.zeros(2, 2))
    state = preconditioner.update(state, 3 * torch.eye(2), torch.zeros(2, 2))  # weight 1/2
    state = preconditioner.update(state, 4 * torch.eye(2), torch.eye(2))  # weight 1/memory
    assert torch.equal(state.complete, 3 * torch.eye(2))
    assert torch.equal(state.missing, 0.5 * torch.eye(2))
    assert state.num_updates == 3


def test_diagonal_step_equals_newton_step_with_diagonal_matrices():
    gradient = torch.tensor([1.0, -2.0, 3.0])
    complete, missing = torch.tensor([4.0, 1e4, 2.0]), torch.tensor([1.0, 0.0, 2.5])
    for max_step in (math.inf, 0.5):
        full = newton_step(gradient, complete.diag(), missing.diag(), max_speedup=100.0,
                           max_step=max_step)
        diag = diagonal_newton_step(gradient, complete, missing, max_step=max_step)
        assert torch.allclose(full.step, diag.step)
        assert (full.num_clamped, full.truncated) == (diag.num_clamped, diag.truncated)


def test_grad_is_the_direction_and_state_dict_resumes_exactly(tmp_path):
    model = lv.models.LinearGaussian(dim=2)
    data = model.simulate(30, {"w": torch.tensor([1.0, -1.0]), "sigma": torch.tensor(0.8)})

    def run(loss, num_steps):
        svi = pyro.infer.SVI(model.model, lv.empty_guide, pyro.optim.SGD({"lr": 0.5}), loss)
        for _ in range(num_steps):
            svi.step(data)
        return {k: v.detach().clone() for k, v in model.params().items()}

    loss = lv.MCMCGradient("hmc", num_chains=16, warmup_steps=30, precondition="full")
    run(loss, 3)
    value, params = call_with_params(
        lambda: loss.differentiable_loss(model.model, lv.empty_guide, data))
    grads = torch.autograd.grad(value, list(params.values()))
    direction = torch.cat([g.reshape(-1) for g in grads])
    assert loss.diagnostics["radius"] > 0 and "fraction_missing" in loss.diagnostics
    assert direction.abs().max() > 0
    torch.save(loss.state_dict(), tmp_path / "loss.pt")
    store = copy.deepcopy(pyro.get_param_store().get_state())  # SGD updates it in place
    pyro.set_rng_seed(7)
    expected = run(loss, 3)
    resumed = lv.MCMCGradient("hmc", num_chains=16, warmup_steps=30, precondition="full")
    resumed.load_state_dict(torch.load(tmp_path / "loss.pt", weights_only=True))
    pyro.get_param_store().set_state(store)
    pyro.set_rng_seed(7)
    assert all(torch.equal(expected[k], v) for k, v in run(resumed, 3).items())
    for a, b in zip(loss.preconditioner_state, resumed.preconditioner_state, strict=True):
        assert torch.equal(torch.as_tensor(a), torch.as_tensor(b))


def test_bad_options_are_refused_by_name():
    with pytest.raises(ValueError, match="memory"):
        NewtonPreconditioner(memory=0)
    with pytest.raises(ValueError, match="max_speedup"):
        NewtonPreconditioner(max_speedup=0.5)
    with pytest.raises(ValueError, match="max_step"):
        NewtonPreconditioner(max_step=-1.0)
    with pytest.raises(TypeError, match="diagonal"):
        NewtonPreconditioner(diagonal="yes")
    with pytest.raises(ValueError, match="precondition"):
        lv.MCMCGradient("hmc", precondition="newton")
    with pytest.raises(ValueError, match="at least 2 draws"):
        lv.MCMCGradient("hmc", precondition="full")  # one chain, one draw: EM's direction
    model = lv.models.LinearGaussian(dim=1)
    data = model.simulate(20)
    loss = lv.MCMCGradient("hmc", num_chains=2, warmup_steps=5, precondition="diagonal")
    svi = pyro.infer.SVI(model.model, lv.empty_guide, pyro.optim.SGD({"lr": 0.1}), loss)
    with pytest.raises(ValueError, match="subsample_size"):
        svi.step(data, subsample_size=5)
    svi.step(data)
    with pytest.raises(ValueError, match="precondition=None"):
        lv.MCMCGradient("hmc", num_chains=2).load_state_dict(loss.state_dict())


def test_other_optimizers_and_the_torch_module_take_the_preconditioned_gradient():
    model = lv.models.LinearGaussian(dim=1)
    data = model.simulate(20, {"w": torch.tensor([2.0])})
    loss = lv.MCMCGradient("hmc", num_chains=16, warmup_steps=20, precondition="diagonal")
    optim = pyro.optim.ClippedAdam({"lr": 0.1})
    svi = pyro.infer.SVI(model.model, lv.empty_guide, optim, loss)
    svi.step(data)
    assert float(pyro.param("w").detach()) > 0.05  # Adam's first step: lr times a sign
    module = loss(model.model, lv.empty_guide)  # Pyro's ELBOModule, for plain torch
    module(data).backward()
    assert loss.preconditioner_state.num_updates == 2
    assert "precondition='diagonal'" not in repr(loss) and "diagonal=True" in repr(loss)


@pytest.mark.parametrize("diagonal", [False, True])
def test_the_preconditioned_step_follows_the_data_device(diagonal, device):
    model = lv.models.LinearGaussian(dim=2)
    data = model.simulate(20).to(device)
    loss = lv.MCMCGradient("hmc", num_chains=16, warmup_steps=10,
                           precondition=NewtonPreconditioner(diagonal))
    svi = pyro.infer.SVI(model.model, lv.empty_guide, pyro.optim.SGD({"lr": 0.5}), loss)
    svi.step(data)
    svi.step(data)
    assert all(v.device.type == device.type for v in pyro.get_param_store().values())
    assert all(torch.isfinite(v).all() for v in pyro.get_param_store().values())
    assert loss.preconditioner_state.complete.device.type == device.type
