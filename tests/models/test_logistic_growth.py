"""LogisticGrowth: the exact likelihood against numerical integration of the Pyro model's own
joint density (both forms), the MLE a stationary point, and bad input."""

import pyro
import pyro.poutine as poutine
import pytest
import torch

import pyro_lvmle as lv


def integrated(model, data, num_points=4001):
    """sum_i log of the trapezoid integral of p(y_i, latent_i) over a fine grid, with the
    joint taken from the Pyro model's trace (the grid runs in the plate's place)."""
    p = model.params()
    site = "a" if model.centered else "b"
    centre = p["asym"].detach() if model.centered else 0.0
    grid = centre + p["omega"].detach() * torch.linspace(-12, 12, num_points)
    values = grid[:, None].expand(-1, data.shape[0])
    conditioned = poutine.condition(model.model, data={site: values})
    with pyro.plate("grid", num_points, dim=-2):
        trace = poutine.trace(conditioned).get_trace(data)
    trace.compute_log_prob()
    log_joint = trace.nodes[site]["log_prob"] + trace.nodes["y"]["log_prob"]  # (G, S)
    step = grid[1] - grid[0]
    return (torch.logsumexp(log_joint, 0) + step.log()).sum()


@pytest.mark.parametrize("centered", [False, True])
def test_log_marginal_is_the_integral_of_the_joint(centered):
    model = lv.models.LogisticGrowth(centered=centered)
    data = model.simulate(6, params=model.truth)
    exact = model.log_marginal(data)
    assert torch.allclose(exact, integrated(model, data), atol=1e-8, rtol=0)
    # control: the likelihood without the random effect's covariance term fails the check
    p = model.params()
    f = model.curve(p["xmid"], p["scal"], data)
    no_effect = torch.distributions.Normal(p["asym"] * f, p["sigma"]).log_prob(data).sum()
    assert abs(no_effect - integrated(model, data)) > 1.0


def test_both_forms_share_the_likelihood_and_the_mle_is_stationary():
    centered = lv.models.LogisticGrowth(centered=True)
    plain = lv.models.LogisticGrowth()
    data = plain.simulate(6, params=plain.truth)
    assert torch.allclose(centered.log_marginal(data), plain.log_marginal(data))
    mle = plain.mle(data)
    free = {n: v.clone().requires_grad_() for n, v in mle.items()}
    plain.log_marginal(data, free).backward()
    for name, value in free.items():  # gradient times scale: relative stationarity
        assert abs(value.grad * mle[name]) < 1e-4, (name, value.grad)
    assert plain.log_marginal(data, mle) > plain.log_marginal(data, plain.truth)


def test_bad_input():
    with pytest.raises(TypeError, match="centered"):
        lv.models.LogisticGrowth(centered="yes")
    with pytest.raises(ValueError, match="times"):
        lv.models.LogisticGrowth(times=[1.0])
    model = lv.models.LogisticGrowth()
    with pytest.raises(ValueError, match="columns"):
        model.log_marginal(torch.zeros(6, 3))
    with pytest.raises(ValueError, match="num_subjects"):
        model.model()
