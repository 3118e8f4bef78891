import pyro
import pytest
import torch
from pyro.infer import TraceEnum_ELBO
from pyro.infer.autoguide import AutoNormal

import pyro_lvmle as lv
from tests.objectives.exact import GAUSSIAN_DATA, GAUSSIAN_MODEL, gaussian_guide
from tests.objectives.test_zero_variance import _set_guide_to_posterior


def test_exact_posterior_guide_gives_the_likelihood_gradient():
    # with q the posterior, every weight is p(x): the model gradient is exactly grad log p(x)
    _set_guide_to_posterior()
    check = lv.check_gradient(GAUSSIAN_MODEL, gaussian_guide,
                              lv.TraceIWAE_ELBO(4, "dreg", max_plate_nesting=1), GAUSSIAN_DATA,
                              num_draws=20)
    assert check.rows["w"].exact is not None
    assert check.biased == [], check.table()
    assert "bias/se" in check.table()


def test_planted_bug_a_poor_guide_biases_the_likelihood_gradient():
    model = lv.models.LinearGaussian()
    data = model.simulate(30)
    check = lv.check_gradient(model, AutoNormal(model), lv.TraceSTL_ELBO(1), data,
                              num_draws=30)
    assert "w" in check.biased


def test_enumerable_models_get_the_exact_gradient_by_enumeration():
    mixture = lv.models.GaussianMixture(2, 2)
    data = mixture.simulate(40)
    # TraceEnum_ELBO with an empty guide is exact: zero variance, no bias
    check = lv.check_gradient(mixture, lambda *a, **k: None,
                              TraceEnum_ELBO(max_plate_nesting=1), data, num_draws=3)
    assert set(check.rows) == {"weights", "locs", "scale_tril"}
    assert check.biased == []
    assert all(row.stderr.max() < 1e-12 for row in check.rows.values())


def test_models_without_a_known_answer_get_none():
    def model(x):
        loc = pyro.param("loc", torch.tensor(0.0))
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", pyro.distributions.Normal(loc, 1.0))
            pyro.sample("x", pyro.distributions.Normal(z, 1.0), obs=x)

    check = lv.check_gradient(model, AutoNormal(model), lv.TraceSTL_ELBO(), torch.randn(5),
                              num_draws=5)
    assert check.rows["loc"].exact is None and check.biased == []


def test_bad_num_draws():
    with pytest.raises(ValueError, match="num_draws"):
        lv.check_gradient(GAUSSIAN_MODEL, gaussian_guide, lv.TraceSTL_ELBO(), GAUSSIAN_DATA,
                          num_draws=1)
