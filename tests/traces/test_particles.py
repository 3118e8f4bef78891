"""The trace helper: units, scales, detached values and direct guide densities."""

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_lvmle as lv
from pyro_lvmle.traces import (
    PriorGuide,
    check_programs,
    guess_max_plate_nesting,
    particle_terms,
)
from tests.common import assert_close


def model(x, subsample_size=None):
    w = pyro.param("w", torch.tensor(0.2))
    with pyro.plate("data", len(x), subsample_size=subsample_size) as idx:
        z = pyro.sample("z", dist.Normal(w, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x[idx])


def guide(x, subsample_size=None):
    loc = pyro.param("loc", lambda: torch.zeros(len(x)))
    with pyro.plate("data", len(x), subsample_size=subsample_size) as idx:
        pyro.sample("z", dist.Normal(loc[idx], 1.0))


def test_one_unit_per_datum_and_log_weights_by_hand():
    x = torch.randn(5)
    pyro.set_rng_seed(1)
    terms = particle_terms(model, guide, (x,), {}, num_particles=3, max_plate_nesting=1)
    assert terms.unit_plates == ("data",) and terms.log_p.shape == (3, 5)
    pyro.set_rng_seed(1)
    z = torch.randn(3, 5)  # the guide's draws, loc = 0
    expected = dist.Normal(0.2, 1.0).log_prob(z) + dist.Normal(z, 1.0).log_prob(x) \
        - dist.Normal(0.0, 1.0).log_prob(z)
    assert_close(terms.log_weights, expected, atol=1e-12)


def test_subsampling_scale_is_kept_outside():
    x = torch.randn(12)
    terms = particle_terms(model, guide, (x,), {"subsample_size": 4}, num_particles=2,
                           max_plate_nesting=1)
    assert terms.unit_scale == 3.0
    assert terms.log_p.shape == (2, 4)
    assert terms.subsampled_sites == ()


def test_direct_log_q_has_the_value_and_only_the_direct_gradient():
    x = torch.randn(4)
    terms = particle_terms(model, guide, (x,), {}, num_particles=2, max_plate_nesting=1,
                           direct_log_q=True)
    assert_close(terms.log_q_direct, terms.log_q, atol=1e-12)
    loc = pyro.get_param_store().get_param("loc").unconstrained()
    total = torch.autograd.grad(terms.log_q.sum(), loc, retain_graph=True)[0]
    direct = torch.autograd.grad(terms.log_q_direct.sum(), loc)[0]
    # q(z) = N(z; loc, 1) with z = loc + eps: the total derivative is 0, the direct one is not
    assert_close(total, torch.zeros(4), atol=1e-12)
    assert direct.abs().min() > 0


def test_detached_values_leave_only_direct_gradients():
    x = torch.randn(4)
    terms = particle_terms(model, guide, (x,), {}, num_particles=2, max_plate_nesting=1,
                           detach_values=True)
    loc = pyro.get_param_store().get_param("loc").unconstrained()
    grad = torch.autograd.grad(terms.log_p.sum(), loc, allow_unused=True)[0]
    assert grad is None or torch.all(grad == 0)


def test_planted_bug_attached_values_leak_path_gradients():
    x = torch.randn(4)
    terms = particle_terms(model, guide, (x,), {}, num_particles=2, max_plate_nesting=1)
    loc = pyro.get_param_store().get_param("loc").unconstrained()
    assert torch.autograd.grad(terms.log_p.sum(), loc)[0].abs().max() > 0


def test_prior_guide_weights_are_the_likelihood():
    x = torch.randn(6)
    terms = particle_terms(model, PriorGuide(model), (x,), {}, num_particles=4,
                           max_plate_nesting=1)
    # w = p(x, z) / p(z) = p(x | z): the prior terms cancel
    assert terms.log_weights.shape == (4, 6)
    assert (terms.log_weights <= dist.Normal(0.0, 1.0).log_prob(torch.tensor(0.0))).all()


def test_guide_site_marked_for_enumeration_is_refused():
    def enum_guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})

    def bern_model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    with pytest.raises(ValueError, match="TraceEnum_ELBO"):
        particle_terms(bern_model, enum_guide, (torch.randn(3),), {}, num_particles=2,
                       max_plate_nesting=1)


def _bernoulli_guide(x, scale=1.0):
    logits = pyro.param("q_logits", lambda: torch.zeros(len(x)))
    with pyro.plate("data", len(x)), pyro.poutine.scale(scale=scale):
        pyro.sample("z", dist.Bernoulli(logits=logits))


def _bernoulli_model(x, scale=1.0):
    with pyro.plate("data", len(x)):
        with pyro.poutine.scale(scale=scale):
            z = pyro.sample("z", dist.Bernoulli(0.3))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def test_the_score_function_is_unscaled_and_the_log_weight_scaled():
    # the root of issue 12's scale bug: a scale belongs to the log weight, not to the score
    x = torch.randn(4)
    terms = particle_terms(_bernoulli_model, _bernoulli_guide, (x, 2.0), {}, num_particles=3,
                           max_plate_nesting=1)
    assert terms.nonreparam_sites == ("z",)
    assert_close(terms.log_q, 2.0 * terms.log_q_score, atol=1e-12)
    assert_close(terms.log_q_score.exp(), torch.full((3, 4), 0.5), atol=1e-12)  # q = 1/2


def test_masked_guide_site_is_masked_in_the_weight_but_not_in_the_score():
    def guide(x):
        logits = pyro.param("q_logits", lambda: torch.zeros(len(x)))
        with pyro.plate("data", len(x)), pyro.poutine.mask(mask=torch.tensor([1, 0, 1, 1]).bool()):
            pyro.sample("z", dist.Bernoulli(logits=logits))

    terms = particle_terms(_bernoulli_model, guide, (torch.randn(4),), {}, num_particles=2,
                           max_plate_nesting=1)
    assert terms.log_q[:, 1].abs().max() == 0
    assert_close(terms.log_q_score[:, 1], torch.full((2,), -math.log(2.0)), atol=1e-12)


def test_guide_scale_is_common_or_none():
    x = torch.randn(3)
    terms = particle_terms(model, lambda x: pyro.poutine.scale(guide, scale=0.5)(x), (x,), {},
                           num_particles=2, max_plate_nesting=1)
    assert terms.guide_scale == 0.5

    def two_scales(x):
        loc = pyro.param("loc", lambda: torch.zeros(len(x)))
        with pyro.plate("data", len(x)):
            with pyro.poutine.scale(scale=2.0):
                pyro.sample("z", dist.Normal(loc, 1.0))
            pyro.sample("u", dist.Normal(0.0, 1.0), infer={"is_auxiliary": True})

    terms = particle_terms(model, two_scales, (x,), {}, num_particles=2, max_plate_nesting=1)
    assert terms.guide_scale is None
    with pytest.raises(ValueError, match="scales differ"):
        lv.TraceIWAE_ELBO(2, "dreg", max_plate_nesting=1).loss(model, two_scales, x)


def test_shared_parameters_and_the_models_direct_part():
    x = torch.randn(5)
    terms = particle_terms(model, PriorGuide(model), (x,), {}, num_particles=3,
                           max_plate_nesting=1, direct_log_q=True)
    assert terms.shared_params == ("w",)
    assert_close(terms.log_p_direct, terms.log_p, atol=1e-12)
    w = pyro.get_param_store().get_param("w").unconstrained()
    # log p(z; w) with z = w + eps: total derivative of the prior term 0, the direct one not
    direct = torch.autograd.grad(terms.log_p_direct.sum(), w, retain_graph=True)[0]
    total = torch.autograd.grad(terms.log_p.sum(), w)[0]
    assert direct.abs() > 0 and not torch.allclose(direct, total)
    own = particle_terms(model, guide, (x,), {}, num_particles=3, max_plate_nesting=1,
                         direct_log_q=True)
    assert own.shared_params == () and own.log_p_direct is None


@pytest.mark.parametrize("validation", [True, False])
def test_model_site_marked_for_enumeration_and_not_guided_is_refused(validation):
    def enum_model(x):
        with pyro.plate("data", len(x)):
            c = pyro.sample("c", dist.Bernoulli(0.3), infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(c, 1.0), obs=x)

    pyro.enable_validation(validation)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pyro's own "vars in model but not guide" warning
        with pytest.raises(ValueError, match="'c' is marked for enumeration.*TraceEnum_ELBO"):
            particle_terms(enum_model, lambda x: None, (torch.randn(3),), {}, num_particles=2,
                           max_plate_nesting=1)


def test_nan_in_the_data_names_the_site():
    x = torch.tensor([0.5, float("nan"), 1.0])
    with pytest.raises(ValueError, match="at site 'x'"):
        particle_terms(model, guide, (x,), {}, num_particles=2, max_plate_nesting=1)


def test_plate_in_guide_but_not_in_model_is_reported():
    def own_plate_guide(x):
        loc = pyro.param("loc", lambda: torch.zeros(len(x)))
        with pyro.plate("datum", len(x)):
            pyro.sample("z", dist.Normal(loc, 1.0))

    with pytest.warns(UserWarning, match="plate statements in guide but not model.*datum"):
        particle_terms(model, own_plate_guide, (torch.randn(3),), {}, num_particles=2,
                       max_plate_nesting=1)


def test_guessing_the_plate_nesting_leaves_the_rng_alone(device):
    x = torch.randn(4, device=device)

    def device_guide(x):
        loc = pyro.param("loc", lambda: torch.zeros(len(x), device=x.device))
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(loc, 1.0))

    states = (torch.get_rng_state(), torch.cuda.get_rng_state() if device.type == "cuda" else None)
    assert guess_max_plate_nesting(model, device_guide, (x,), {}) == 1
    assert check_programs(model, device_guide, (x,), {}) == 1
    assert torch.equal(torch.get_rng_state(), states[0])
    if device.type == "cuda":
        assert torch.equal(torch.cuda.get_rng_state(), states[1])
