"""SQUAREM: the pure extrapolation against a linear map's fixed point, and ExactEM with
``acceleration="squarem"`` on a mixture of two overlapping components, where plain EM
creeps: the same optimum in fewer EM updates, the log-likelihood never decreasing."""

import pyro
import pytest
import torch

import pyro_lvmle as lv
from pyro_lvmle.em.squarem import squarem_alpha, squarem_point


def test_one_cycle_solves_a_linear_contraction():
    """F(theta) = c + A theta with one eigenvalue per coordinate: S3 lands on the fixed
    point exactly when A is a multiple of the identity."""
    a, fixed = 0.98, torch.tensor([3.0, -2.0])

    def em_map(theta):
        return fixed + a * (theta - fixed)

    theta0 = torch.zeros(2)
    theta1 = em_map(theta0)
    theta2 = em_map(theta1)
    alpha = squarem_alpha(theta0, theta1, theta2)
    assert torch.allclose(squarem_point(theta0, theta1, theta2, alpha), fixed)
    assert squarem_point(theta0, theta1, theta2, -1.0).equal(theta2)  # alpha=-1 is EM
    assert squarem_alpha(theta2, theta2, theta2) == -1.0  # at the fixed point


def overlapping_mixture():
    truth = {"weights": torch.tensor([0.4, 0.6]), "locs": torch.tensor([[0.0], [1.2]]),
             "scale_tril": torch.ones(2, 1, 1)}
    model = lv.models.GaussianMixture(2, 1, init_params=truth)
    data = model.simulate(300, truth)
    start = {"weights": torch.tensor([0.5, 0.5]), "locs": torch.tensor([[-0.5], [0.5]]),
             "scale_tril": torch.ones(2, 1, 1)}
    return data, start


def fit(data, start, acceleration, num_steps):
    pyro.clear_param_store()
    model = lv.models.GaussianMixture(2, 1, init_params=start)
    em = lv.ExactEM(model, m_steps=20, tol=1e-7, acceleration=acceleration)
    history = em.run(data, num_steps=num_steps, progress=False)
    return em, history


def test_squarem_climbs_faster_and_never_decreases():
    """Default suite (a few seconds): with the same 45 EM updates SQUAREM is far higher, and
    neither ever decreases the log-likelihood."""
    data, start = overlapping_mixture()
    with pytest.warns(lv.ConvergenceWarning, match="still rises"):  # plain EM creeps
        _, plain = fit(data, start, None, 45)
    _, fast = fit(data, start, "squarem", 15)
    assert len(plain) == sum(fast["em_updates"]) == 45
    assert min(plain["increase"]) > -1e-9 and min(fast["increase"]) > -1e-9
    assert fast["log_likelihood"][-1] > plain["log_likelihood"][-1] + 0.1


@pytest.mark.integration
def test_squarem_reaches_the_em_optimum_in_fewer_updates():
    """Plain EM needs 576 updates (20 s) to converge; SQUAREM reaches the same optimum in
    about a fifth of them."""
    data, start = overlapping_mixture()
    plain, plain_history = fit(data, start, None, 2000)
    fast, fast_history = fit(data, start, "squarem", 2000)
    assert plain.converged and fast.converged
    # same optimum; the stopping tolerance 1e-7 on a slow contraction leaves plain EM about
    # 1e-7 / (1 - rate) short
    assert abs(plain_history["log_likelihood"][-1] - fast_history["log_likelihood"][-1]) < 1e-4
    assert min(fast_history["increase"]) > -1e-9
    plain_updates = len(plain_history)
    fast_updates = sum(fast_history["em_updates"])
    assert fast_updates < plain_updates / 3, (fast_updates, plain_updates)
