"""The trace helper: units, scales, detached values and direct guide densities."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_lvmle.traces import PriorGuide, particle_terms
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
