"""The stochastic Newton step's pure parts: Louis' moments against the exact gradient and
information of LinearGaussian, the safeguarded step against hand-solved cases, and the
importance estimate of a log-likelihood change against its closed form."""

import math

import pytest
import torch

import pyro_lvmle as lv
from pyro_lvmle.gradients.newton import importance_log_ratio, louis_moments, newton_step
from tests.common import assert_within_stderr


def linear_gaussian_moments(num_draws):
    """Louis' moments of LinearGaussian(dim=1) from exact posterior draws, and the exact
    gradient and observed information (autograd of the closed-form log-likelihood)."""
    model = lv.models.LinearGaussian(dim=1, init_params={"w": torch.tensor([0.3]),
                                                         "sigma": torch.tensor(1.5)})
    data = model.simulate(40, {"w": torch.tensor([1.0]), "sigma": torch.tensor(1.5)})
    w = torch.tensor([0.3], requires_grad=True)
    sigma = torch.tensor(1.5, requires_grad=True)
    z = model.posterior(data, {"w": w.detach(), "sigma": sigma.detach()}).sample((num_draws,))
    log_joint = (torch.distributions.Normal(w, 1.0).log_prob(z).sum((-1, -2))
                 + torch.distributions.Normal(z, sigma).log_prob(data).sum((-1, -2)))
    moments = louis_moments(log_joint, [w, sigma])
    theta = torch.cat([w.detach(), sigma.detach()[None]])

    def exact(flat):
        return model.log_marginal(data, {"w": flat[:1], "sigma": flat[1]})

    gradient = torch.autograd.functional.jacobian(exact, theta)
    information = -torch.autograd.functional.hessian(exact, theta)
    return moments, gradient, information


def test_louis_moments_match_the_exact_gradient_and_information():
    moments, gradient, information = linear_gaussian_moments(20000)
    assert_within_stderr(moments.gradient, gradient, moments.gradient_se, what="gradient")
    # the information's Monte Carlo error: that of a covariance, about sqrt(2 / n) relative
    tolerance = 4 * math.sqrt(2 / 20000) * moments.missing.diagonal().max()
    assert (moments.information - information).abs().max() < tolerance
    # control: the complete information alone (EM's curvature) is far off
    assert (moments.complete - information).abs().max() > 10 * tolerance


def test_newton_step_solves_the_quadratic_and_is_safeguarded():
    g = torch.tensor([1.0, -2.0])
    complete = torch.tensor([[4.0, 1.0], [1.0, 3.0]])
    missing = torch.tensor([[3.0, 0.5], [0.5, 1.0]])
    newton = torch.linalg.solve(complete - missing, g)
    step = newton_step(g, complete, missing, max_step=100.0)
    assert torch.allclose(step.step, newton) and not step.truncated and step.num_clamped == 0
    assert step.decrement == pytest.approx(float(g @ newton))
    assert newton_step(g, complete, missing, 0.25, max_step=100.0).step.allclose(newton / 4)
    # max_speedup = 1: the EM-gradient step
    assert newton_step(g, complete, missing, max_speedup=1.0).step.allclose(
        torch.linalg.solve(complete, g))
    # more missing than complete information: clamped, never a step downhill
    step = newton_step(g, complete, 2 * complete, max_speedup=10.0, max_step=100.0)
    assert step.num_clamped == 2 and float(step.step @ g) > 0
    assert step.step.allclose(10 * torch.linalg.solve(complete, g))
    # the trust region: the step's length in the complete information's metric
    short = newton_step(g, complete, missing, max_step=0.5)
    assert short.truncated
    assert float(short.step @ complete @ short.step).__round__(10) == 0.25
    # an indefinite complete information (a nonlinear model far from the optimum)
    assert torch.isfinite(newton_step(g, torch.diag(torch.tensor([2.0, -1.0])),
                                      torch.zeros(2, 2)).step).all()


def test_importance_log_ratio_matches_the_normal_moment_generating_function():
    """z ~ N(0, 1), weights exp(c z): the log-likelihood change is c^2 / 2."""
    z = torch.randn(20000)
    c = 0.7
    estimate, se = importance_log_ratio(-0.5 * z**2, -0.5 * z**2 + c * z)
    assert abs(estimate - c**2 / 2) < 4 * se
    # control: the mean log weight (the Monte Carlo Q-function's change) misses it
    assert abs(float((c * z).mean()) - c**2 / 2) > 4 * se


def test_newton_step_in_mixed_dtypes_returns_the_gradient_s_dtype():
    """float32 parameters meeting float64 data's moments (MCEM and SAEM with default-dtype
    float32 parameters raised torch's 'expected m1 and m2 to have the same dtype')."""
    torch.manual_seed(0)
    root = torch.randn(3, 3)
    complete = root @ root.T + 3 * torch.eye(3)
    missing = 0.5 * complete
    gradient = torch.randn(3)
    exact = newton_step(gradient, complete, missing).step
    mixed = newton_step(gradient.float(), complete, missing).step
    assert mixed.dtype == torch.float32
    assert torch.allclose(mixed.double(), exact, rtol=1e-6, atol=1e-6)

