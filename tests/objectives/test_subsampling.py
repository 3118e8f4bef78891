"""Under a subsampled data plate the bound is scaled outside the log-mean-exp: unbiased."""

import pyro
import pytest
import torch
from pyro.infer import RenyiELBO

import pyro_lvmle as lv
from tests.common import assert_within_stderr, mean_and_stderr
from tests.objectives import exact
from tests.objectives.exact import GAUSSIAN_DATA, GAUSSIAN_MODEL, gaussian_guide


def _init():
    pyro.poutine.trace(gaussian_guide).get_trace(GAUSSIAN_DATA)
    pyro.poutine.trace(GAUSSIAN_MODEL).get_trace(GAUSSIAN_DATA)


def _subsampled_bounds(loss, num_draws):
    return torch.tensor([-loss.loss(GAUSSIAN_MODEL, gaussian_guide, GAUSSIAN_DATA,
                                    subsample_size=1) for _ in range(num_draws)])


def test_subsampled_bound_is_unbiased_for_the_full_data_bound():
    _init()
    full = exact.gaussian_expected(exact.iwae, 2).item()
    mean, se = mean_and_stderr(_subsampled_bounds(lv.TraceIWAE_ELBO(2, max_plate_nesting=1),
                                                  4000))
    assert_within_stderr(mean, full, se, what="E[subsampled bound]")


def test_planted_bug_pyros_scale_inside_the_log_is_biased():
    # Pyro's RenyiELBO multiplies the log weight by N/B inside the log-mean-exp
    _init()
    full = exact.gaussian_expected(exact.iwae, 2).item()
    pyros = RenyiELBO(alpha=0.0, num_particles=2, vectorize_particles=True, max_plate_nesting=1)
    mean, se = mean_and_stderr(_subsampled_bounds(pyros, 4000))
    with pytest.raises(AssertionError):
        assert_within_stderr(mean, full, se)


def test_subsampled_gradient_is_unbiased_for_the_full_data_gradient():
    _init()
    truth = exact.exact_gradient(exact.gaussian_expected(exact.iwae, 2))
    check = lv.check_gradient(GAUSSIAN_MODEL, gaussian_guide,
                              lv.TraceIWAE_ELBO(2, "dreg", max_plate_nesting=1), GAUSSIAN_DATA,
                              num_draws=3000, exact=truth, subsample_size=2)
    assert check.biased == [], check.table()


def test_a_global_latent_under_subsampling_is_refused_by_multi_sample_bounds():
    def model(x, subsample_size=None):
        mu = pyro.sample("mu", pyro.distributions.Normal(0.0, 1.0))
        with pyro.plate("data", len(x), subsample_size=subsample_size) as idx:
            pyro.sample("x", pyro.distributions.Normal(mu, 1.0), obs=x[idx])

    def guide(x, subsample_size=None):
        loc = pyro.param("mu_loc", torch.tensor(0.0))
        pyro.sample("mu", pyro.distributions.Normal(loc, 1.0))

    data = torch.randn(10)
    with pytest.raises(ValueError, match="mini-batch"):
        lv.TraceIWAE_ELBO(4).loss(model, guide, data, subsample_size=5)
    # an ELBO is linear in the sites' log densities: subsampling is fine there
    assert torch.isfinite(torch.tensor(lv.TraceSTL_ELBO(4).loss(model, guide, data,
                                                                subsample_size=5)))
