"""STL and DReG guide gradients vanish, draw by draw, when the guide is the exact posterior."""

import pyro
import pytest
import torch

import pyro_lvmle as lv
from tests.objectives.exact import GAUSSIAN_DATA, GAUSSIAN_MODEL, gaussian_guide


def _set_guide_to_posterior():
    posterior = GAUSSIAN_MODEL.posterior(GAUSSIAN_DATA)
    store = pyro.get_param_store()
    for name in ("q_loc", "q_scale"):
        if name in store:
            del store[name]
    pyro.param("q_loc", posterior.base_dist.loc[:, 0].detach())
    pyro.param("q_scale", posterior.base_dist.scale[:, 0].detach(),
               constraint=torch.distributions.constraints.positive)


@pytest.mark.parametrize("make_loss", [
    lambda: lv.TraceSTL_ELBO(1, max_plate_nesting=1),
    lambda: lv.TraceSTL_ELBO(5, max_plate_nesting=1),
    lambda: lv.TraceIWAE_ELBO(5, "dreg", max_plate_nesting=1),
], ids=["stl-1", "stl-5", "dreg-5"])
def test_path_estimators_have_zero_variance_at_the_posterior(make_loss):
    _set_guide_to_posterior()
    check = lv.check_gradient(GAUSSIAN_MODEL, gaussian_guide, make_loss(), GAUSSIAN_DATA,
                              num_draws=50)
    for name in ("q_loc", "q_scale"):
        row = check.rows[name]
        assert row.stderr.max() < 1e-12 and row.mean.abs().max() < 1e-12, check.table()


@pytest.mark.parametrize("make_loss", [
    lambda: lv.TraceIWAE_ELBO(5, "reparam", max_plate_nesting=1),
    lambda: lv.TraceRenyi_ELBO(1.0, 5, max_plate_nesting=1),
], ids=["iwae-reparam", "elbo-reparam"])
def test_planted_bug_score_term_keeps_variance_at_the_posterior(make_loss):
    # the control: the plain reparameterized gradients keep the score term, hence noise
    _set_guide_to_posterior()
    check = lv.check_gradient(GAUSSIAN_MODEL, gaussian_guide, make_loss(), GAUSSIAN_DATA,
                              num_draws=50)
    assert check.rows["q_loc"].stderr.max() > 1e-3
