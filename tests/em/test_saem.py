"""SAEM reaches the closed-form PPCA maximum likelihood within Monte Carlo error, by the
sufficient-statistics fast path and by the generic form; a step size that never decreases
does not; annealing keeps variances from collapsing during the burn-in."""

import pyro
import pytest
import torch
from pyro.ops.stats import effective_sample_size

import pyro_lvmle as lv
from pyro_lvmle.em.saem import resample
from tests.common import likelihood_gap_tolerance
from tests.em.test_mcem import NUM_PARAMS, ppca


def ppca_statistics(samples, data):
    """Complete-data sufficient statistics of PPCA with z augmented by a constant 1."""
    z = samples["z"]  # (C, N, k)
    z1 = torch.cat([z, torch.ones_like(z[..., :1])], -1)
    return {"zz": z1.mT @ z1, "xz": data.mT @ z1}


def ppca_m_step(stats, data):
    """Tipping & Bishop's EM update: [W, mu] = B A^-1, sigma^2 = (sum |x|^2 - tr(W~ B^T))/(Nd)."""
    wmu = torch.linalg.solve(stats["zz"], stats["xz"].mT).mT
    resid = (data**2).sum() - (wmu * stats["xz"]).sum()
    return {"W": wmu[:, :-1], "mu": wmu[:, -1], "sigma": (resid / data.numel()).sqrt()}


def effective_draws(history, burn_in, num_chains):
    """Chains times the ESS of the per-iteration log joint after the burn-in."""
    series = torch.tensor(history["log_joint"][burn_in:])
    return float(effective_sample_size(series[None, :, None])) * num_chains


def run_fast(step_size, num_steps=300, burn_in=50):
    model, data, best = ppca()
    saem = lv.SAEM(model, "hmc", burn_in=burn_in, step_size=step_size, num_chains=16,
                   warmup_steps=100, statistics=ppca_statistics, m_step=ppca_m_step)
    history = saem.run(data, num_steps=num_steps, progress=False)
    gap = best - model.log_marginal(data).item()
    return gap, likelihood_gap_tolerance(NUM_PARAMS, effective_draws(history, burn_in, 16))


def test_fast_path_reaches_the_ppca_mle_and_constant_steps_do_not():
    gap, tol = run_fast(step_size=1.0)
    assert -1e-8 <= gap < tol, (gap, tol)
    # control: gamma = 1 throughout keeps only the last draws (no averaging); it fails the
    # same check, with the tolerance of the same number of draws
    pyro.clear_param_store()
    with pytest.warns(lv.ConvergenceWarning, match="burn-in"):  # and the diagnosis says so
        bad_gap, _ = run_fast(step_size=lambda k: 1.0)
    assert bad_gap > tol, (bad_gap, tol)


def run_generic(**options):
    # sigma well inside its range: EM's rate for it is fast, so the burn-in reaches the optimum
    model = lv.models.LinearGaussian(dim=2, init_params={"w": torch.tensor([0.3, -0.2]),
                                                         "sigma": torch.tensor(1.2)})
    data = model.simulate(50, {"w": torch.tensor([1.0, -1.0]), "sigma": torch.tensor(1.5)})
    best = model.log_marginal(data, model.mle(data)).item()
    options.setdefault("newton", False)  # SAEM's own decreasing steps and memory
    saem = lv.SAEM(model, "hmc", burn_in=50, num_chains=8, warmup_steps=100, m_steps=10,
                   **options)
    history = saem.run(data, num_steps=300, progress=False)
    return best - model.log_marginal(data).item(), history


def test_generic_form_reaches_the_linear_gaussian_mle():
    gap, history = run_generic()
    tol = likelihood_gap_tolerance(3, effective_draws(history, 50, 8))
    assert -1e-8 <= gap < tol, (gap, tol)
    assert history["memory"][-1] == 8 * 250  # every draw after the burn-in is kept


def test_newton_steps_reach_the_linear_gaussian_mle():
    """With Newton steps after the burn-in (the generic form's default) the memory stops
    growing and the estimate still reaches the MLE within the same Monte Carlo error."""
    gap, history = run_generic(newton=True)
    tol = likelihood_gap_tolerance(3, effective_draws(history, 50, 8))
    assert -1e-8 <= gap < tol, (gap, tol)
    assert history["memory"][-1] == 8  # the burn-in's last draws
    assert 0 < history["fraction_missing"][-1] < 1


def test_generic_form_with_bounded_memory_reaches_the_mle():
    gap, history = run_generic(max_memory=256)
    assert max(history["memory"]) <= 256
    assert min(history["memory"][100:]) >= 128  # halved, never emptied
    # the kept rows are a thinning of the 2000 post-burn-in draws down to 128..256 of them:
    # their effective number is at least 128/2000 of the chains' (thinning never does worse).
    # A worst-case bound, hence loose (about 0.5 against gaps of about 0.002): this checks that
    # the run still converges with compression; that the compression is unbiased is pinned by
    # the resampling test below and its control
    tol = likelihood_gap_tolerance(3, effective_draws(history, 50, 8) * 128 / 2000)
    assert -1e-8 <= gap < tol, (gap, tol)


def biased_resample(rows, weights, size):
    """Planted bug: rows drawn evenly, ignoring the weights."""
    return resample(rows, torch.ones_like(weights), size)[0], \
        (weights.sum() / size).expand(size)


def resampled_sums(resampler, values, weights, size, repeats=4000):
    sums = []
    for _ in range(repeats):
        kept, kept_weights = resampler(values[:, None], weights, size)
        sums.append((kept_weights * kept[:, 0]).sum())
    return torch.stack(sums)


def test_resampling_keeps_weighted_sums_unbiased_and_counts_within_one():
    values = torch.randn(60)
    weights = torch.rand(60) ** 3  # far from uniform
    exact = (weights * values).sum()
    sums = resampled_sums(resample, values, weights, 20)
    stderr = sums.std() / len(sums) ** 0.5
    assert (sums.mean() - exact).abs() < 4 * stderr, (sums.mean(), exact, stderr)
    # systematic resampling: each row is kept floor or ceil of its expected count
    kept, kept_weights = resample(torch.arange(60.0)[:, None], weights, 20)
    counts = torch.bincount(kept[:, 0].long(), minlength=60).double()
    expected = 20 * weights / weights.sum()
    assert ((counts - expected).abs() < 1).all()
    assert torch.allclose(kept_weights.sum(), weights.sum())
    # control: ignoring the weights biases the sum far outside the same bound
    bad = resampled_sums(biased_resample, values, weights, 20)
    assert (bad.mean() - exact).abs() > 4 * bad.std() / len(bad) ** 0.5


def annealed_sigma_path(anneal):
    """sigma over 10 burn-in steps from 3.0 on data whose sigma is 0.5, start included."""
    model = lv.models.PPCA(data_dim=5, latent_dim=2, init_params={"sigma": torch.tensor(3.0)})
    data = model.simulate(200, params={"sigma": torch.tensor(0.5)})
    saem = lv.SAEM(model, "hmc", burn_in=10, num_chains=4, warmup_steps=50,
                   statistics=ppca_statistics, m_step=ppca_m_step, anneal=anneal,
                   anneal_rate=0.9)
    history = saem.run(data, num_steps=10, progress=False)
    return torch.cat([torch.tensor([3.0]), history.params["sigma"]])


def test_annealing_bounds_variance_shrinkage_during_burn_in():
    sigma = annealed_sigma_path(("sigma",))
    assert (sigma[1:] >= 0.9 * sigma[:-1] - 1e-12).all()
    # control: without annealing the same run shrinks sigma by far more in one step
    pyro.clear_param_store()
    free = annealed_sigma_path(())
    assert (free[1:] / free[:-1]).min() < 0.5


@pytest.mark.integration
@pytest.mark.parametrize("centered", [False, True])
def test_defaults_reach_the_exact_maximum_however_the_model_is_written(centered):
    """SAEM() as a user builds it, on the logistic-growth mixed model (6 subjects), written
    non-centered (fraction of missing information 0.97 at the MLE, where plain SAEM's
    decreasing steps freeze it 0.12 short) and centered (0.88): within 0.01 of the exact
    maximum after 500 iterations (measured 0.0059 and 0.0001, seed 0; the planted control,
    SAEM with the old fixed burn-in, is in test_stochastic_newton.py)."""
    from tests.em.test_stochastic_newton import WITHIN, growth_data

    data, best = growth_data()
    pyro.set_rng_seed(0)
    model = lv.models.LogisticGrowth(centered=centered)
    saem = lv.SAEM(model)
    history = saem.run(data, num_steps=500, progress=False)
    gap = best - model.log_marginal(data).item()
    assert -1e-6 < gap < WITHIN, gap
    assert history["gamma"][-1] < 1 and not saem.convergence.unconverged


def test_newton_options_are_checked():
    model = lv.models.PPCA(data_dim=3, latent_dim=1)
    with pytest.raises(TypeError, match="newton"):
        lv.SAEM(model, newton="yes")
    with pytest.raises(ValueError, match="fast path"):
        lv.SAEM(model, newton=True, statistics=ppca_statistics, m_step=ppca_m_step)
    with pytest.raises(ValueError, match="max_speedup"):
        lv.SAEM(model, max_speedup=0.5)
    assert lv.SAEM(model, statistics=ppca_statistics, m_step=ppca_m_step).newton is False
    data = model.simulate(20)

    def first_step(**options):
        saem = lv.SAEM(model, num_chains=2, warmup_steps=30, **options)
        assert saem.newton is options.get("newton")  # None: decided with the parameters
        saem.step(data)
        return saem

    on, off = first_step(), first_step(newton=False)
    assert on.newton and on.max_burn_in == 150 and off.max_burn_in == 500
    # a longer shortest burn-in raises the default cap with it; a bad one is named
    assert first_step(min_burn_in=200).max_burn_in == 200
    with pytest.raises(TypeError, match="min_burn_in"):
        lv.SAEM(model, min_burn_in="x")
