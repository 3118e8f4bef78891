"""The end-of-run diagnosis: the pure report on planted histories (creeping, converged, noisy,
trending, in the burn-in), and the warning every driver's ``run`` gives: it fires on plain EM
stopped while it creeps on a mixture of two overlapping components (the planted short run)
and stays silent once EM has reached the optimum."""

import math
import warnings

import pyro
import pytest
import torch

import pyro_lvmle as lv
from pyro_lvmle.em import History
from pyro_lvmle.em.convergence import convergence_report
from tests.em.test_squarem import fit, overlapping_mixture


def history_of(metrics, params=None):
    history = History()
    for k, row in enumerate(metrics):
        history.append(k + 1, float(k), row, {} if params is None else {"theta": params[k]})
    return history


def test_creeping_em_is_unconverged_and_a_fast_one_is_not():
    # increases shrinking by 0.98 per iteration: their mean times 0.98 / 0.02 still to come
    increases = [0.5 * 0.98**k for k in range(30)]
    creeping = convergence_report(history_of([{"increase": v} for v in increases]))
    assert creeping.unconverged and "still rises" in creeping.reasons[0]
    mean = sum(increases[-3:]) / 3
    assert creeping.remaining == pytest.approx(mean * 0.98 / 0.02, rel=1e-6)
    fast = convergence_report(history_of([{"increase": 2.0**-k} for k in range(1, 30)]))
    assert not fast.unconverged and fast.reasons == ()
    # too short to judge
    assert not convergence_report(history_of([{"increase": v} for v in increases[:10]])
                                  ).unconverged


def test_fraction_missing_sets_the_rate_and_noise_is_not_an_ascent():
    # MCEM: an increase of 0.001 at a fraction missing of 0.99 leaves ~0.05 to gain
    rows = [{"q_increase": 1e-3, "q_increase_se": 1e-4, "fraction_missing": 0.99}] * 30
    report = convergence_report(history_of(rows))
    assert report.unconverged and "0.99" in report.reasons[-1]
    assert report.remaining == pytest.approx(1e-3 * 0.99**2 / (1 - 0.99**2))
    noisy = [{"q_increase": 1e-3, "q_increase_se": 1e-2, "fraction_missing": 0.99}] * 30
    assert not convergence_report(history_of(noisy)).unconverged  # within its Monte Carlo error


def test_trend_and_burn_in():
    torch.manual_seed(0)
    steady = [torch.randn(2) for _ in range(40)]
    drifting = [s + 0.5 * k for k, s in enumerate(steady)]
    rows = [{"gamma": 0.1}] * 40
    assert not convergence_report(history_of(rows, steady), trend=True).unconverged
    report = convergence_report(history_of(rows, drifting), trend=True)
    assert report.unconverged and report.trend > 3
    assert math.isnan(convergence_report(history_of(rows, drifting)).trend)  # not applied
    in_burn_in = convergence_report(history_of([{"gamma": 1.0}] * 30))
    assert in_burn_in.unconverged and "burn-in" in in_burn_in.reasons[0]


def test_planted_short_em_run_warns_and_a_converged_one_does_not():
    """Plain EM on two overlapping components creeps (about 580 updates to the optimum):
    stopped after 45 it warns, naming the rate; on two well separated components EM
    converges within its tolerance and the run is silent."""
    data, start = overlapping_mixture()
    with pytest.warns(lv.ConvergenceWarning, match="still rises") as record:
        em, _ = fit(data, start, None, 45)
    assert "EM's rate" in str(record[0].message)
    assert em.convergence.unconverged and em.convergence.remaining > 0.01
    pyro.clear_param_store()
    separated = torch.cat([torch.randn(100) - 2, torch.randn(100) + 2])[:, None]
    model = lv.models.GaussianMixture(2, 1, init_params={
        "weights": torch.tensor([0.5, 0.5]), "locs": torch.tensor([[-0.3], [0.3]]),
        "scale_tril": 3 * torch.ones(2, 1, 1)})
    done = lv.ExactEM(model, tol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error", lv.ConvergenceWarning)
        done.run(separated, num_steps=300, progress=False)
    assert done.converged and len(done.history) >= 20
    assert not done.convergence.unconverged


def test_a_stochastic_run_that_ends_in_its_burn_in_warns():
    model = lv.models.LinearGaussian(dim=2)
    data = model.simulate(20, params={"w": torch.tensor([1.0, -1.0])})
    saem = lv.SAEM(model, burn_in=50, num_chains=4, warmup_steps=20)
    with pytest.warns(lv.ConvergenceWarning, match="burn-in"):
        saem.run(data, num_steps=25, progress=False)
