"""Particles drawn one at a time where the model or guide does not run vectorized over them
as it runs one draw at a time (found from outside: ``u[group]`` with K equal to the number of
groups gave IWAE -19.9 against the exact -9.47; control flow on a sampled value crashed)."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_lvmle as lv
from pyro_lvmle.traces import vectorized

GROUP = torch.tensor([2, 0, 3, 1])  # as many data as groups: K = 4 lines up silently
NUM_GROUPS = 4


def random_effects(y):
    """The README's random-effects idiom: a latent indexed along its first dimension."""
    with pyro.plate("groups", NUM_GROUPS):
        u = pyro.sample("u", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(u[GROUP], 1.0), obs=y)


def _posterior_guide(y):
    """The exact posterior of u (independent across groups)."""
    counts = torch.bincount(GROUP, minlength=NUM_GROUPS).to(y)
    sums = torch.zeros(NUM_GROUPS, dtype=y.dtype).index_add(0, GROUP, y)
    precision = 1.0 + counts

    def guide(y):
        with pyro.plate("groups", NUM_GROUPS):
            pyro.sample("u", dist.Normal(sums / precision, precision**-0.5))
    return guide


def _exact_log_p(y):
    design = torch.nn.functional.one_hot(GROUP, NUM_GROUPS).to(y)
    covariance = design @ design.T + torch.eye(len(y), dtype=y.dtype)
    return float(dist.MultivariateNormal(torch.zeros_like(y), covariance).log_prob(y))


Y = torch.tensor([0.5, -1.0, 2.0, 0.3], dtype=torch.float64)


@pytest.mark.parametrize("make_loss", [
    lambda: lv.TraceIWAE_ELBO(NUM_GROUPS), lambda: lv.TraceSTL_ELBO(NUM_GROUPS),
    lambda: lv.TraceRWS_ELBO(NUM_GROUPS), lambda: lv.TraceTVO_ELBO(NUM_GROUPS),
], ids=["iwae", "stl", "rws", "tvo"])
def test_latents_indexed_along_their_first_dimension_are_drawn_one_at_a_time(make_loss):
    guide, exact = _posterior_guide(Y), _exact_log_p(Y)
    loss = make_loss()
    with pytest.warns(UserWarning, match=r"does not run vectorized.*u\[\.\.\., group\]"):
        first = -loss.loss(random_effects, guide, Y)
    values = [first] + [-loss.loss(random_effects, guide, Y) for _ in range(2)]
    assert values == pytest.approx([exact] * 3, abs=1e-9)  # the exact posterior: no noise


def test_control_vectorized_anyway_the_bound_is_silently_wrong(monkeypatch):
    """The planted control: the particle plate lines up with the groups when K is their
    number, and the value is far from the exact one, without an error."""
    monkeypatch.setattr(lv.objectives.base, "vectorizes", lambda *a, **k: True)
    value = -lv.TraceIWAE_ELBO(NUM_GROUPS).loss(random_effects, _posterior_guide(Y), Y)
    assert abs(value - _exact_log_p(Y)) > 1.0


def test_log_marginal_draws_samples_one_at_a_time_there():
    with pytest.warns(UserWarning, match="does not run vectorized over samples"):
        estimate = lv.log_marginal(random_effects, Y, method="is", guide=_posterior_guide(Y),
                                   num_samples=NUM_GROUPS)
    assert float(estimate.value) == pytest.approx(_exact_log_p(Y), abs=1e-9)


def switching(x):
    """Python control flow on a sampled value: Trace_ELBO runs it, a particle plate cannot."""
    s = pyro.sample("s", dist.Normal(0.0, 1.0))
    loc = 1.0 if s > 0 else -1.0
    pyro.sample("x", dist.Normal(loc, 1.0), obs=x)


def prior_guide(x):
    pyro.sample("s", dist.Normal(0.0, 1.0))


def test_control_flow_on_a_sampled_value_runs_and_matches_the_exact_evidence():
    x = torch.tensor(0.7, dtype=torch.float64)
    exact = math.log(0.5 * math.exp(dist.Normal(1.0, 1.0).log_prob(x))
                     + 0.5 * math.exp(dist.Normal(-1.0, 1.0).log_prob(x)))
    pyro.set_rng_seed(0)
    loss = lv.TraceIWAE_ELBO(400)
    with pytest.warns(UserWarning, match="does not run vectorized"):
        values = torch.tensor([-loss.loss(switching, prior_guide, x) for _ in range(20)])
    # IWAE with K=400 from the prior: its bias is below 1e-3 here; 4 standard errors
    assert abs(float(values.mean()) - exact) < 4 * float(values.std()) / 20**0.5 + 1e-3


def test_vectorizable_programs_pass_the_check():
    model = lv.models.LinearGaussian(dim=2)
    data = model.simulate(6)
    assert vectorized.vectorizes(model, lv.PriorGuide(model), (data,), num_particles=6,
                                 max_plate_nesting=1)
    assert not vectorized.vectorizes(switching, prior_guide, (torch.tensor(0.7),),
                                     num_particles=3, max_plate_nesting=0)
