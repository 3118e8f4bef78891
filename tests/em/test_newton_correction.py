"""Louis' Newton correction of an M-step: on LinearGaussian (w only), where EM's map is
linear with rate sigma^2 / (1 + sigma^2), one corrected step from a start within the trust
region (0.8 complete-data standard deviations away) lands on the closed-form MLE within
Monte Carlo error, where EM moves only a tenth of the way."""

import math

import pytest
import torch

import pyro_lvmle as lv
from pyro_lvmle.em.newton_correction import (
    INITIAL_SPEEDUP,
    NEWTON_MAX_PARAMS,
    CorrectionState,
    default_newton,
    newton_correction,
    verify_speedup,
)
from pyro_lvmle.gradients.newton import louis_moments


def test_one_corrected_step_reaches_the_linear_gaussian_mle():
    sigma = 3.0  # fraction of missing information 0.9: EM moves a tenth of the way
    model = lv.models.LinearGaussian(dim=1, sigma=sigma, learn_sigma=False)
    data = model.simulate(100, {"w": torch.tensor([2.0])})
    mle = float(model.mle(data)["w"])
    w = torch.tensor([mle - 0.08], requires_grad=True)  # I_c = N = 100: 0.8 sd of Q
    z = model.posterior(data, {"w": w.detach()}).sample((40000,))  # (m, N, 1)

    def log_joint():
        return (torch.distributions.Normal(w, 1.0).log_prob(z).sum((-1, -2))
                + torch.distributions.Normal(z, sigma).log_prob(data).sum((-1, -2)))

    before = log_joint()
    moments = louis_moments(before, [w])
    start = w.detach().clone()
    with torch.no_grad():
        w.copy_(z.mean((0, 1)))  # the M-step: the mean of the imputed z
    em_move = float(w.detach() - start)
    # a speedup earned by earlier verified corrections (the first is held to 4 EM moves)
    state, metrics = newton_correction(CorrectionState(speedup=100.0), [w], start, moments,
                                       1.0, log_joint, before.detach())
    # the Monte Carlo error of the corrected point: that of the mean of z (the M-step),
    # times 1 / (1 - 0.9)
    se = float(z.mean(1).std()) / 40000**0.5 * (1 + sigma**2)
    assert metrics["newton_accepted"]
    assert abs(float(w.detach()) - mle) < 4 * se, (float(w.detach()), mle, se)
    assert abs(metrics["fraction_missing"] - sigma**2 / (1 + sigma**2)) < 0.05
    # control: the M-step alone is nowhere near
    assert abs(float(start) + em_move - mle) > 4 * se
    assert state.count == 1
    assert torch.equal(state.em_point, start + em_move)  # for the next draws to judge
    # the first correction of a run may outrun EM 4 times (INITIAL_SPEEDUP), no more
    with torch.no_grad():
        w.copy_(start + em_move)
    newton_correction(CorrectionState(), [w], start, moments, 1.0, log_joint, before.detach())
    assert abs(float(w.detach() - start) - INITIAL_SPEEDUP * em_move) < 1e-6 * abs(em_move)


def test_verify_speedup_doubles_when_the_next_draws_find_the_correction_paid():
    """Draws of p(z | x; theta) = N(theta, 1) at the corrected point theta = 1, for a model
    whose log-likelihood is -(theta - 1)^2 a / 2: the M-step's point 0.5 is worse by a / 8.
    The speedup doubles when it is (curvature 8), halves when the M-step's point is the better
    one, and never leaves [1, max_speedup]."""
    z = 1 + torch.randn(4000)

    def log_joint(theta, a):
        return -0.5 * (z - theta) ** 2 - 0.5 * a * (theta - 1) ** 2

    state = CorrectionState(speedup=8.0, em_point=torch.tensor([0.5]))
    new, paid, gain = verify_speedup(state, log_joint(1.0, 8.0), log_joint(0.5, 8.0), 100.0)
    assert paid and new.speedup == 16.0 and new.em_point is None
    assert abs(gain - 1.0) < 0.1  # the exact gain: 8 (1 - 0.5)^2 / 2
    # control: the M-step's point better than the corrected one
    new, paid, gain = verify_speedup(state, log_joint(0.5, 8.0), log_joint(1.0, 8.0), 100.0)
    assert new == state._replace(speedup=4.0, em_point=None) and not paid and gain < 0
    assert verify_speedup(state._replace(speedup=80.0), log_joint(1.0, 8.0),
                          log_joint(0.5, 8.0), 100.0)[0].speedup == 100.0
    assert verify_speedup(state._replace(speedup=1.0), log_joint(0.5, 8.0),
                          log_joint(1.0, 8.0), 100.0)[0].speedup == 1.0
    # after an iteration that did not outrun EM, the next may try twice as far
    new, paid, gain = verify_speedup(CorrectionState(speedup=1.0, count=3),
                                     log_joint(1.0, 0.0), None, 100.0)
    assert new.speedup == 2.0 and not paid and math.isnan(gain)
    # before the first correction there is nothing to judge
    assert verify_speedup(CorrectionState(), log_joint(1.0, 0.0), None, 100.0)[0].speedup == 4


def test_damped_newton_gain_and_the_frozen_decreasing_steps_it_replaces():
    """On the linearized recursion of a direction whose fraction of missing information is
    0.97 (the non-centered logistic growth's), starting 1 off: SAEM's decreasing steps
    gamma_j = 1/j (the EM-gradient step times gamma, the planted control) leave it 0.83
    off after 300 iterations (the log-likelihood gap 0.68 of the start); the damped Newton
    steps, gain 1 / (j (1 - mu) + 2), leave
    it 0.18 off (gap 0.033 of the start: the product of (1 - gain (1 - mu)) over the
    steps, about 66.7 / (66.7 + 300))."""
    from pyro_lvmle.em.newton_correction import DAMPING, damped_newton

    mu = 0.97
    complete, missing = torch.eye(1), torch.full((1, 1), mu)
    newton = saem = torch.ones(1)
    for j in range(1, 301):
        gamma = 1.0 / j
        step = damped_newton(-(1 - mu) * newton, complete, missing, gamma)
        assert step.fraction_missing == pytest.approx(mu)
        assert float(step.step / (-(1 - mu) * newton)) == pytest.approx(
            gamma / ((1 - mu) + DAMPING * gamma))
        newton = newton + step.step
        saem = saem - gamma * (1 - mu) * saem
    assert float(saem) > 0.8 and float(newton) < 0.19, (float(saem), float(newton))


def test_newton_is_on_by_default_only_where_louis_information_is_affordable():
    """``newton=None``: one backward pass per parameter entry, so on up to NEWTON_MAX_PARAMS
    entries in one process; off above, and off across data-parallel ranks."""
    from pyro_lvmle.em.ranks import OneProcess

    small = [torch.zeros(NEWTON_MAX_PARAMS)]
    large = [torch.zeros(NEWTON_MAX_PARAMS - 1), torch.zeros(2)]
    assert default_newton(small, OneProcess()) and not default_newton(large, OneProcess())

    class TwoRanks(OneProcess):
        distributed = True

    assert not default_newton(small, TwoRanks())
    model = lv.models.PPCA(data_dim=30, latent_dim=7)  # 210 + 30 + 1 entries
    data = model.simulate(10)
    mcem = lv.MCEM(model, num_samples=2, num_chains=2, warmup_steps=30, auto=False, m_steps=1)
    mcem.step(data)
    assert mcem.newton is False and "speedup" not in mcem.history.metric_names
