"""Degenerate equivalences: with one particle the bounds are the ELBO, value and gradient."""

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal

import pyro_lvmle as lv
from tests.common import assert_close


def _value_and_grads(loss, model, guide, data, seed):
    pyro.set_rng_seed(seed)
    with pyro.poutine.trace(param_only=True) as capture:
        value = loss.loss_and_grads(model, guide, data)
    params = {n: s["value"].unconstrained() for n, s in capture.trace.nodes.items()}
    grads = {n: p.grad.clone() for n, p in params.items()}
    for p in params.values():
        p.grad = None
    return value, grads


@pytest.mark.parametrize("make_loss", [
    lambda: lv.TraceIWAE_ELBO(1, "reparam", max_plate_nesting=1),
    lambda: lv.TraceIWAE_ELBO(1, "vimco", max_plate_nesting=1),
    lambda: lv.TraceRenyi_ELBO(0.0, 1, max_plate_nesting=1),
    lambda: lv.TraceRenyi_ELBO(0.7, 1, max_plate_nesting=1),
], ids=["iwae-reparam", "iwae-vimco", "renyi-0", "renyi-0.7"])
def test_one_particle_equals_trace_elbo(make_loss):
    model = lv.models.LinearGaussian(dim=2)
    data = model.simulate(30)
    guide = AutoNormal(model)
    guide(data)
    expected = _value_and_grads(Trace_ELBO(), model, guide, data, seed=1)
    actual = _value_and_grads(make_loss(), model, guide, data, seed=1)
    assert_close(actual[0], expected[0], atol=1e-10, what="value")
    for name in expected[1]:
        assert_close(actual[1][name], expected[1][name], atol=1e-10, what=name)


def test_planted_bug_two_particles_differ_from_trace_elbo():
    model = lv.models.LinearGaussian(dim=2)
    data = model.simulate(30)
    guide = AutoNormal(model)
    guide(data)
    expected = _value_and_grads(Trace_ELBO(), model, guide, data, seed=1)
    actual = _value_and_grads(lv.TraceIWAE_ELBO(2, "reparam", max_plate_nesting=1), model,
                              guide, data, seed=1)
    with pytest.raises(AssertionError):
        assert_close(actual[0], expected[0], atol=1e-10)


def test_tvo_with_a_single_beta_at_zero_is_the_elbo_value():
    model = lv.models.LinearGaussian(dim=2)
    data = model.simulate(30)
    guide = AutoNormal(model)
    guide(data)
    pyro.set_rng_seed(3)
    elbo = Trace_ELBO(num_particles=6, vectorize_particles=True, max_plate_nesting=1)
    expected = elbo.loss(model, guide, data)
    pyro.set_rng_seed(3)
    actual = lv.TraceTVO_ELBO(6, betas=[0.0], max_plate_nesting=1).loss(model, guide, data)
    assert_close(actual, expected, atol=1e-10)
    # its gradient equals the ELBO's in expectation: see test_exactness (tvo-beta0)


def test_no_latent_sites_every_bound_is_the_log_likelihood():
    # a model with no latents: every objective's value is log p(x) exactly
    def model(x):
        loc = pyro.param("loc", torch.tensor(0.5))
        with pyro.plate("data", len(x)):
            pyro.sample("x", pyro.distributions.Normal(loc, 1.0), obs=x)

    data = torch.randn(20)
    exact = torch.distributions.Normal(0.5, 1.0).log_prob(data).sum()
    for loss in (lv.TraceIWAE_ELBO(4), lv.TraceRenyi_ELBO(0.5, 3), lv.TraceSTL_ELBO(2),
                 lv.TraceTVO_ELBO(4, 3), lv.TraceRWS_ELBO(3)):
        assert_close(-loss.loss(model, lambda x: None, data), exact, atol=1e-10,
                     what=type(loss).__name__)
