"""A fault (an exception or a KeyboardInterrupt) in any step of any driver, the first
included, leaves the parameters, the random number generator, the counters and the history
exactly as they were before the step, and the driver then continues exactly as an
uninterrupted run would."""

import pyro
import pytest
import torch
from pyro.infer.autoguide import AutoNormal

import pyro_lvmle as lv
from pyro_lvmle.traces.params import program_params
from tests.em.test_saem import ppca_m_step, ppca_statistics


class Faulty:
    """A model that, once armed with the parameters' values, raises ``KeyboardInterrupt`` on
    its first call after any of them moved: a fault in the middle of a step."""

    def __init__(self, model):
        self.model, self.start = model, None

    def __call__(self, *args, **kwargs):
        if self.start is not None and any(not torch.equal(value, self.start[name])
                                          for name, value in _store().items()
                                          if name in self.start):
            raise KeyboardInterrupt
        return self.model(*args, **kwargs)


class FaultyMStep:
    """A closed-form M-step that, when armed, returns an invalid last value: the driver
    assigns the values in order, so the earlier parameters have already moved when it
    raises."""

    def __init__(self, m_step, bad):
        self.m_step, self.bad, self.armed = m_step, bad, False

    def __call__(self, *args, **kwargs):
        values = self.m_step(*args, **kwargs)
        if self.armed:
            values[self.bad] = -values[self.bad].abs() - 1.0  # outside its constraint
        return values


def gmm_m_step(marginals, data):
    resp = marginals["assignment"].T
    nk = resp.sum(0)
    locs = resp.T @ data / nk[:, None]
    diff = data[:, None] - locs
    cov = torch.einsum("nk,nki,nkj->kij", resp, diff, diff) / nk[:, None, None]
    scale_tril = torch.linalg.cholesky(cov)
    return {"weights": nk / nk.sum(), "locs": locs, "scale_tril": scale_tril}


def data_for(name):
    if name.startswith("exact"):
        model = lv.models.GaussianMixture(2, 2, init_params={
            "locs": torch.tensor([[0.5, 0.5], [-0.5, 0.0]])})
        data = model.simulate(50, params={"locs": torch.tensor([[1.0, 1.0], [-1.0, 0.0]])})
    elif name == "saem_fast":
        model = lv.models.PPCA(data_dim=3, latent_dim=1)
        data = model.simulate(30)
    else:
        model = lv.models.LinearGaussian(dim=3)
        data = model.simulate(30, params={"w": torch.tensor([1.0, -0.5, 2.0])})
    return model, data


def make(name, model, closed_form=None):
    if name == "mcem":
        return lv.MCEM(model, "hmc", num_samples=4, num_chains=3, warmup_steps=20, m_steps=20)
    if name == "mcem_nuts":
        return lv.MCEM(model, "nuts", num_samples=3, num_chains=2, warmup_steps=10, m_steps=10)
    if name == "mcem_adam":
        return lv.MCEM(model, "mala", num_samples=4, num_chains=3, warmup_steps=50,
                       m_step=pyro.optim.Adam({"lr": 0.05}), m_steps=5)
    if name == "saem":
        return lv.SAEM(model, "mala", burn_in=2, num_chains=3, warmup_steps=50, m_steps=10)
    if name == "saem_fast":
        return lv.SAEM(model, "hmc", burn_in=2, num_chains=3, warmup_steps=30,
                       statistics=ppca_statistics, m_step=closed_form)
    if name == "vem":
        return lv.VariationalEM(model, AutoNormal(model), e_steps=3, m_steps=2)
    if name == "exact":
        return lv.ExactEM(model, m_steps=10)
    if name == "exact_adam":
        return lv.ExactEM(model, pyro.optim.Adam({"lr": 0.05}), m_steps=3)
    if name == "exact_closed_form":
        return lv.ExactEM(model, closed_form)
    raise ValueError(name)


# the invalid value is the last one assigned
CLOSED_FORM = {"saem_fast": (ppca_m_step, "sigma"),
               "exact_closed_form": (gmm_m_step, "scale_tril")}
DRIVERS = ["mcem", "mcem_nuts", "mcem_adam", "saem", "saem_fast", "vem", "exact",
           "exact_adam", "exact_closed_form"]


def _store():
    return {n: v.detach().clone() for n, v in pyro.get_param_store().items()}


def _fresh(model, data):
    """An empty store, then the model's parameters at their initial values, seed 3."""
    pyro.clear_param_store()
    pyro.set_rng_seed(3)
    program_params(model.model, data)
    pyro.set_rng_seed(3)


def _build(name, model):
    """The driver on a fault-injecting model (and M-step)."""
    faulty = Faulty(model.model)
    m_step = FaultyMStep(*CLOSED_FORM[name]) if name in CLOSED_FORM else None
    driver = make(name, faulty, m_step)
    if hasattr(driver, "guide"):  # its parameters too exist before the first step
        program_params(driver.guide, data_for.data)
    return driver, faulty, m_step


@pytest.mark.parametrize("name", DRIVERS)
@pytest.mark.parametrize("fault_at", [1, 2])
def test_a_fault_in_any_step_rolls_back_exactly(name, fault_at):
    model, data = data_for(name)
    data_for.data = data
    _fresh(model, data)
    reference, _, _ = _build(name, model)
    reference.run(data, num_steps=fault_at + 1, progress=False)
    expected = _store()

    _fresh(model, data)
    driver, faulty, m_step = _build(name, model)
    if fault_at > 1:
        driver.run(data, num_steps=fault_at - 1, progress=False)
    before_params, before_rng = _store(), torch.get_rng_state()
    before_steps = list(driver.history.steps)
    if m_step is not None:
        m_step.armed = True  # the closed form's last value is invalid
    else:  # the model raises once the M-step has moved a parameter
        faulty.start = before_params
    with pytest.raises((KeyboardInterrupt, ValueError)):
        driver.run(data, num_steps=1, progress=False)
    faulty.start = None
    if m_step is not None:
        m_step.armed = False
    after = _store()
    assert after.keys() == before_params.keys()
    for key, value in before_params.items():
        assert torch.equal(after[key], value), key
    assert torch.equal(torch.get_rng_state(), before_rng)
    assert driver.iteration == fault_at - 1 and driver.history.steps == before_steps
    # and the driver continues exactly as the uninterrupted run did
    driver.run(data, num_steps=2, progress=False)
    for key, value in _store().items():
        assert torch.allclose(value, expected[key], atol=1e-10, rtol=0), key


def test_variational_em_refuses_a_nan_gradient_and_keeps_the_parameters():
    # Pyro's Trace_ELBO (the default loss) lets a NaN gradient through: the driver catches it
    import pyro.distributions as dist

    def model(x):
        rate = pyro.param("rate", torch.tensor(0.0))
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)
        pyro.factor("kink", rate.abs().sqrt())  # finite at rate = 0, its gradient is not

    def guide(x):
        loc = pyro.param("loc", torch.tensor(0.0))
        pyro.sample("z", dist.Normal(loc, 1.0))

    driver = lv.VariationalEM(model, guide, e_steps=1, m_steps=1)
    x = torch.tensor(0.5)
    pyro.param("rate", torch.tensor(0.0))
    pyro.param("loc", torch.tensor(0.0))
    with pytest.raises(ValueError, match=r"VariationalEM: .*\['rate'\] is NaN or infinite"):
        driver.step(x)
    assert pyro.param("rate").item() == 0.0 and pyro.param("loc").item() == 0.0
    assert all(p.grad is None or not p.grad.any()
               for p in pyro.get_param_store()._params.values())
