"""The pure tensor pieces shared by the objectives, against direct computations, and the
base's ``loss_and_grads`` (non-finite gradients) and plate-nesting guess (the RNG)."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI

import pyro_lvmle as lv
from pyro_lvmle.objectives.base import leave_one_out_signal, renyi_bound
from tests.common import assert_close


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 2.0])
def test_renyi_bound_matches_its_formula(alpha):
    log_w = torch.randn(6, 3)
    expected = log_w.mean(0) if alpha == 1.0 else torch.log(
        (log_w * (1 - alpha)).exp().mean(0)) / (1 - alpha)
    assert_close(renyi_bound(log_w, alpha).squeeze(0), expected, atol=1e-12)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_leave_one_out_signal_matches_a_loop(alpha):
    log_w = torch.randn(5, 4)
    signal = leave_one_out_signal(log_w, alpha)
    for k in range(5):
        others = torch.cat([log_w[:k], log_w[k + 1:]])
        replaced = log_w.clone()
        replaced[k] = others.mean(0)
        expected = renyi_bound(log_w, alpha) - renyi_bound(replaced, alpha)
        assert_close(signal[k], expected.squeeze(0), atol=1e-12, what=f"particle {k}")


def test_leave_one_out_baseline_does_not_depend_on_its_own_particle():
    # L_{-k} must not change when z_k (hence log w_k) changes: that is what keeps VIMCO
    # unbiased
    log_w = torch.randn(4, 1)
    moved = log_w.clone()
    moved[2] += 3.0
    base = renyi_bound(log_w, 0.0) - leave_one_out_signal(log_w, 0.0)
    base_moved = renyi_bound(moved, 0.0) - leave_one_out_signal(moved, 0.0)
    assert_close(base[2], base_moved[2], atol=1e-12)
    assert not torch.allclose(base[0], base_moved[0])


def test_one_particle_signal_is_the_bound():
    log_w = torch.randn(1, 3)
    assert_close(leave_one_out_signal(log_w, 0.0), log_w, atol=0)


def test_renyi_bound_is_stable_for_extreme_weights():
    log_w = torch.tensor([[-1000.0], [-1001.0]])
    assert math.isfinite(renyi_bound(log_w, 0.0).item())


# --- ParticleObjective.loss_and_grads: non-finite gradients (issue 12, item 4) ---

def _sqrt_model(x):
    # d sqrt(|w|) / dw at w = 0 is inf * 0 = NaN, while the loss is finite
    w = pyro.param("w", torch.tensor(0.0))
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(w.abs().sqrt(), 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def _guide(x):
    loc = pyro.param("q_loc", lambda: torch.zeros(len(x)))
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Normal(loc, 1.0))


OBJECTIVES = {
    "iwae": lambda **kw: lv.TraceIWAE_ELBO(4, **kw),
    "stl": lambda **kw: lv.TraceSTL_ELBO(2, **kw),
    "renyi": lambda **kw: lv.TraceRenyi_ELBO(0.5, 3, **kw),
    "tvo": lambda **kw: lv.TraceTVO_ELBO(3, 2, **kw),
    "rws": lambda **kw: lv.TraceRWS_ELBO(3, **kw),
}


def _store():
    return {n: v.detach().clone() for n, v in pyro.get_param_store().items()}


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_a_nan_gradient_is_refused_naming_the_parameter_and_nothing_moves(name):
    x = torch.tensor([0.3, -1.2, 0.8])
    svi = SVI(_sqrt_model, _guide, pyro.optim.Adam({"lr": 0.1}), OBJECTIVES[name]())
    svi.evaluate_loss(x)  # creates the parameters
    before = _store()
    with pytest.raises(ValueError, match=r"gradient of parameters \['w'\] is NaN"):
        svi.step(x)
    after = _store()
    assert all(torch.equal(before[n], after[n]) for n in before)
    store = dict(pyro.get_param_store().named_parameters())
    assert all(leaf.grad is None for leaf in store.values())  # .grad as it was


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_skip_policy_counts_the_skipped_steps_and_leaves_the_optimizer_alone(name):
    x = torch.tensor([0.3, -1.2, 0.8])
    loss = OBJECTIVES[name](nonfinite="skip")
    optim = pyro.optim.Adam({"lr": 0.1})
    svi = SVI(_sqrt_model, _guide, optim, loss)
    svi.evaluate_loss(x)
    before = _store()
    for _ in range(3):
        assert torch.isfinite(torch.tensor(svi.step(x)))
    after = _store()
    assert all(torch.equal(before[n], after[n]) for n in before)  # Adam took no step either
    assert loss.diagnostics == {"skipped_steps": 3, "skipped_params": {"w": 3}}
    assert all(not o.state for o in optim.optim_objs.values())  # no moment was updated
    # a good step afterwards moves the parameters again
    pyro.get_param_store()["w"] = torch.tensor(0.5)
    svi.step(x)
    assert not torch.equal(before["q_loc"], pyro.param("q_loc").detach())
    assert loss.diagnostics["skipped_steps"] == 3


def test_nonfinite_policy_is_validated():
    with pytest.raises(ValueError, match="nonfinite"):
        lv.TraceIWAE_ELBO(4, nonfinite="ignore")


def test_a_nan_loss_is_skipped_and_counted():
    def model(x):
        with pyro.plate("data", len(x)):
            pyro.factor("energy", x * float("nan"))

    pyro.enable_validation(False)
    loss = lv.TraceIWAE_ELBO(2, nonfinite="skip")
    assert math.isnan(loss.loss_and_grads(model, lambda x: None, torch.ones(3)))
    assert loss.diagnostics["skipped_steps"] == 1


# --- a fresh objective leaves the RNG alone (issue 12, item 6) ---

@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_a_fresh_objective_consumes_the_same_random_numbers_as_one_told_the_nesting(name):
    x = torch.tensor([0.3, -1.2, 0.8])

    def model(x):
        w = pyro.param("w", torch.tensor(0.2))
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(w, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    runs = []
    for given in ({}, {"max_plate_nesting": 1}):
        pyro.clear_param_store()
        pyro.set_rng_seed(11)
        loss = OBJECTIVES[name](**given)
        svi = SVI(model, _guide, pyro.optim.Adam({"lr": 0.1}), loss)
        losses = [svi.step(x) for _ in range(3)]
        runs.append((losses, _store(), torch.rand(())))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(runs[0][1][n], runs[1][1][n]) for n in runs[0][1])
    assert torch.equal(runs[0][2], runs[1][2])
