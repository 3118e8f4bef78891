import math

import pyro
import pytest
import torch

from pyro_lvmle.models import PKData, Theophylline, load_theophylline
from pyro_lvmle.models._quadrature import laplace_mode
from tests.common import assert_close, assert_within_stderr

# nlmixr2's published SAEM fit of theo_sd (Fidler et al. 2019): ka 1.57 1/h, CL 2.76 L/h,
# V 31.5 L, additive sd 0.693, between-subject CV 71.5%, 27.6%, 13.4%.
NLMIXR2 = {"ka": 1.57, "cl": 2.76, "v": 31.5, "add_sd": 0.693, "cv": (0.715, 0.276, 0.134)}


@pytest.fixture(scope="module")
def data():
    return load_theophylline(dtype=torch.float64)


@pytest.fixture(scope="module")
def mle(data):
    return Theophylline().mle(data)


def test_packaged_data_is_the_theoph_table(data):
    assert data.conc.shape == (12, 11) and bool(data.mask.all())
    assert_close(data.dose[0], 4.02 * 79.6, atol=1e-12, what="subject 1 dose in mg")
    assert_close(data.time[0, :3], [0.0, 0.25, 0.57], atol=1e-12)
    assert_close(data.conc[0, :3], [0.74, 2.84, 6.57], atol=1e-12)
    assert_close(data.conc.sum(), 654.78, atol=1e-9, what="sum of all concentrations")
    assert 300 < data.dose.mean().item() < 340


def test_concentration_curve_and_its_limit():
    dose, time = torch.tensor([320.0]), torch.tensor([[0.0, 1.0, 5.0, 24.0]])
    ka, cl, v = 1.5, 2.8, 32.0
    k = cl / v
    log_params = torch.tensor([[math.log(ka), math.log(cl), math.log(v)]])
    expected = 320 * ka / (v * (ka - k)) * (torch.exp(-k * time) - torch.exp(-ka * time))
    assert_close(Theophylline.concentration(log_params, dose, time), expected, atol=1e-12)
    # ka == k: the curve's limit D k t e^{-k t} / V, finite and differentiable
    log_params = torch.tensor([[math.log(k), math.log(cl), math.log(v)]], requires_grad=True)
    curve = Theophylline.concentration(log_params, dose, time)
    assert_close(curve, 320 * k * time * torch.exp(-k * time) / v, atol=1e-12)
    curve.sum().backward()
    assert torch.isfinite(log_params.grad).all()


def test_log_joint_agrees_with_the_pyro_model(data):
    model = Theophylline()
    eta = 0.3 * torch.randn(12, 3)
    trace = pyro.poutine.trace(pyro.poutine.condition(model, data={"eta": eta})).get_trace(data)
    assert_close(trace.log_prob_sum(), model._log_joint(eta, data, model.params()).sum(),
                 atol=1e-9)


def test_quadrature_converges(data, mle):
    model = Theophylline()
    fine = model.log_marginal(data, mle, num_points=30)
    assert_close(model.log_marginal(data, mle), fine, atol=1e-4, what="15 vs 30 points")


def _importance_sampling(model, data, params, num_samples):
    """Per-subject IS estimate with a Student-t proposal at the Laplace mode; log and stderr."""
    p = {k: v.detach() for k, v in params.items()}
    log_joint = lambda eta: model._log_joint(eta, data, p)  # noqa: E731
    mode, neg_h = laplace_mode(log_joint, torch.zeros(12, 3))
    scale_tril = 1.2 * torch.linalg.cholesky(torch.linalg.inv(neg_h))
    proposal = pyro.distributions.MultivariateStudentT(8.0, mode, scale_tril)
    eta = proposal.sample((num_samples,))
    log_w = log_joint(eta) - proposal.log_prob(eta)  # (S, subjects)
    w = (log_w - log_w.max(0).values).exp()
    log_est = w.mean(0).log() + log_w.max(0).values
    rel_se = w.std(0) / w.mean(0) / num_samples**0.5  # delta method: se of the log
    return log_est.sum(), rel_se.pow(2).sum().sqrt()


def test_log_marginal_matches_importance_sampling_to_001(data, mle):
    model = Theophylline()
    for params in (model.params(), mle):
        estimate, se = _importance_sampling(model, data, params, 100_000)
        assert se < 0.01, "the IS check itself must be sharper than the 0.01 claimed"
        assert_within_stderr(model.log_marginal(data, params), estimate, se, what="log p(y)")


def test_planted_bug_coarse_quadrature_fails_the_importance_sampling_check(data):
    # the control: a 3-point rule (off by about 0.05 here) and the Laplace approximation (1
    # point, off by 0.26) must both be caught by the same check
    model = Theophylline()
    estimate, se = _importance_sampling(model, data, model.params(), 100_000)
    for num_points in (1, 3):
        with pytest.raises(AssertionError):
            assert_within_stderr(model.log_marginal(data, num_points=num_points), estimate, se)


def test_mle_is_a_stationary_point_and_matches_nlmixr2(data, mle):
    model = Theophylline()
    assert_close(model.log_marginal(data, mle), -180.3504, atol=2e-3, what="max log-lik")
    leaves = {k: v.clone().requires_grad_(True) for k, v in mle.items()}
    model.log_marginal(data, leaves).backward()
    for name, leaf in leaves.items():
        assert_close(leaf.grad, torch.zeros_like(leaf), atol=1e-3, what=f"score for {name}")
    # a likelihood maximum, against nlmixr2's SAEM estimates: within 5%
    ours = {"ka": mle["tka"].exp(), "cl": mle["tcl"].exp(), "v": mle["tv"].exp(),
            "add_sd": mle["add_sd"]}
    for name, value in ours.items():
        assert_close(value, NLMIXR2[name], atol=0, rtol=0.05, what=name)
    cv = (mle["omega"] ** 2).expm1().sqrt()
    assert_close(cv, NLMIXR2["cv"], atol=0, rtol=0.05, what="between-subject CV")


def test_simulate_on_the_design():
    model = Theophylline()
    sim, eta = model.simulate(30, return_latents=True)
    assert sim.conc.shape == (30, 11) and eta.shape == (30, 3)
    design = load_theophylline()
    assert_close(sim.time[12], design.time[0], atol=0)
    assert torch.isfinite(model.log_marginal(sim))


def test_model_runs_under_a_subsampled_plate(data):
    trace = pyro.poutine.trace(Theophylline()).get_trace(data, subsample_size=4)
    assert trace.nodes["eta"]["value"].shape == (4, 3)
    assert trace.nodes["conc"]["scale"] == 3.0


def test_bad_input_is_reported(data):
    model = Theophylline()
    with pytest.raises(TypeError, match="PKData"):
        model.log_marginal(data.conc)
    with pytest.raises(ValueError, match="conc is None"):
        model.log_marginal(data._replace(conc=None))
    with pytest.raises(ValueError, match="shape"):
        model.log_marginal(PKData(data.dose, data.time, data.conc[:, :5], data.mask))
