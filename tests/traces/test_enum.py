"""EnumeratedPosterior: log p(x), the Q-function and the posterior marginals of a Gaussian
mixture against their closed forms; Fisher's identity at the E-step's parameters."""

import pyro
import pytest
import torch

import pyro_lvmle as lv
from pyro_lvmle.traces import EnumeratedPosterior


def mixture():
    model = lv.models.GaussianMixture(num_components=3, data_dim=2)
    data = model.simulate(40, params={"locs": torch.tensor([[2.0, 0.0], [-2.0, 1.0],
                                                            [0.0, -2.0]])})
    return model, data


def test_log_marginal_q_and_marginals_are_exact():
    model, data = mixture()
    posterior = EnumeratedPosterior(model, (data,), {}, max_plate_nesting=1)
    assert torch.allclose(posterior.log_marginal, model.log_marginal(data).detach())
    resp = model.posterior(data).probs.detach()  # (N, K)
    expected_q = (resp * model.component_log_prob(data)).sum()
    assert torch.allclose(posterior.expected_log_joint(), expected_q)
    marginals = posterior.marginals()
    assert torch.allclose(marginals["assignment"].T, resp)


def test_fisher_identity_at_the_e_step_parameters():
    model, data = mixture()
    posterior = EnumeratedPosterior(model, (data,), {}, max_plate_nesting=1)
    leaves = [pyro.param(n).unconstrained() for n in ("weights", "locs", "scale_tril")]
    grad_q = torch.autograd.grad(posterior.expected_log_joint(), leaves)
    grad_l = torch.autograd.grad(model.log_marginal(data), leaves)
    for a, b in zip(grad_q, grad_l, strict=True):
        assert torch.allclose(a, b, atol=1e-10)


def test_planted_bug_stale_posterior_breaks_fisher_identity():
    """Control: a posterior from other parameters fails the same identity."""
    model, data = mixture()
    posterior = EnumeratedPosterior(model, (data,), {}, max_plate_nesting=1)
    model.set_params({"locs": model.params()["locs"].detach() + 0.5})
    leaves = [pyro.param(n).unconstrained() for n in ("weights", "locs", "scale_tril")]
    grad_q = torch.autograd.grad(posterior.expected_log_joint(), leaves)
    grad_l = torch.autograd.grad(model.log_marginal(data), leaves)
    assert not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grad_q, grad_l, strict=True))


def test_refuses_continuous_latents_and_subsampling():
    linear = lv.models.LinearGaussian(dim=2)
    with pytest.raises(ValueError, match="'z' is not enumerable"):
        EnumeratedPosterior(linear, (linear.simulate(5),), {})
    model, data = mixture()
    with pytest.raises(ValueError, match="subsampled"):
        EnumeratedPosterior(model, (data,), {"subsample_size": 10})
