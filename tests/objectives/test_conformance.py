"""Every objective with every kind of guide and model structure a Pyro user writes."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI
from pyro.infer.autoguide import AutoDiagonalNormal, AutoMultivariateNormal, AutoNormal
from pyro.nn import PyroModule, PyroParam
from torch.distributions import constraints

import pyro_lvmle as lv
from pyro_lvmle.traces import particle_terms
from tests.common import assert_close

OBJECTIVES = {
    "iwae-reparam": lambda: lv.TraceIWAE_ELBO(4, "reparam"),
    "iwae-dreg": lambda: lv.TraceIWAE_ELBO(4, "dreg"),
    "iwae-vimco": lambda: lv.TraceIWAE_ELBO(4, "vimco"),
    "iwae-auto": lambda: lv.TraceIWAE_ELBO(4, "auto"),
    "stl": lambda: lv.TraceSTL_ELBO(3),
    "renyi": lambda: lv.TraceRenyi_ELBO(0.5, 3),
    "tvo": lambda: lv.TraceTVO_ELBO(5, 3),
    "rws": lambda: lv.TraceRWS_ELBO(4),
}

MODEL = lv.models.LinearGaussian(dim=2)


class Encoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(2, 4)

    def forward(self, x):
        loc, raw_scale = self.net(x).chunk(2, -1)
        return loc, torch.nn.functional.softplus(raw_scale) + 1e-3


class PyroEncoder(PyroModule):
    def __init__(self):
        super().__init__()
        self.weight = PyroParam(0.1 * torch.ones(2, 2))
        self.scale = PyroParam(torch.ones(2), constraint=constraints.positive)

    def forward(self, x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(x @ self.weight, self.scale).to_event(1))


def hand_guide(x, subsample_size=None):
    loc = pyro.param("q_loc", lambda: torch.zeros(len(x), 2))
    scale = pyro.param("q_scale", lambda: torch.ones(len(x), 2), constraint=constraints.positive)
    with pyro.plate("data", len(x), subsample_size=subsample_size) as idx:
        pyro.sample("z", dist.Normal(loc[idx], scale[idx]).to_event(1))


def make_module_guide():
    network = Encoder().double()

    def module_guide(x, subsample_size=None):
        encoder = pyro.module("encoder", network)
        with pyro.plate("data", len(x), subsample_size=subsample_size) as idx:
            loc, scale = encoder(x[idx])
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    return module_guide


GUIDES = {
    "AutoNormal": lambda: AutoNormal(MODEL),
    "AutoDiagonalNormal": lambda: AutoDiagonalNormal(MODEL),
    "AutoMultivariateNormal": lambda: AutoMultivariateNormal(MODEL),
    "hand-written": lambda: hand_guide,
    "pyro.module encoder": make_module_guide,
    "PyroModule encoder": lambda: PyroEncoder(),
}


@pytest.mark.parametrize("guide_name", list(GUIDES))
@pytest.mark.parametrize("loss_name", list(OBJECTIVES))
def test_svi_step_and_the_three_entry_points_agree(loss_name, guide_name):
    data = MODEL.simulate(12)
    guide = GUIDES[guide_name]()
    loss = OBJECTIVES[loss_name]()
    svi = SVI(MODEL, guide, pyro.optim.Adam({"lr": 0.01}), loss)
    svi.evaluate_loss(data)  # creates the parameters
    before = {n: v.detach().clone() for n, v in pyro.get_param_store().items()}
    assert torch.isfinite(torch.tensor(svi.step(data)))
    after = pyro.get_param_store()
    assert all(not torch.equal(before[n], after[n].detach()) for n in before), "a param froze"
    values = []
    for call in ("loss", "differentiable_loss", "loss_and_grads", "module"):
        pyro.set_rng_seed(7)
        if call == "module":
            values.append(loss(MODEL, guide)(data).item())
        elif call == "differentiable_loss":
            values.append(loss.differentiable_loss(MODEL, guide, data).item())
        else:
            values.append(getattr(loss, call)(MODEL, guide, data))
    for name, value in zip(["differentiable_loss", "loss_and_grads", "module"], values[1:],
                           strict=True):
        assert_close(value, values[0], atol=1e-9, what=name)


def nested_model(x):
    w = pyro.param("w", torch.tensor(0.5))
    with pyro.plate("data", x.shape[0], dim=-2):
        z = pyro.sample("z", dist.Normal(w, 1.0))
        with pyro.plate("time", x.shape[1], dim=-1):
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def global_model(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(mu, 1.0))
        pyro.sample("x", dist.Normal(z, 0.5), obs=x)


def sequential_model(x):
    w = pyro.param("w", torch.tensor(0.0))
    for i in pyro.plate("data", len(x)):
        z = pyro.sample(f"z_{i}", dist.Normal(w, 1.0))
        pyro.sample(f"x_{i}", dist.Normal(z, 1.0), obs=x[i])


def sequential_guide(x):
    loc = pyro.param("q_loc", lambda: torch.zeros(len(x)))
    for i in pyro.plate("data", len(x)):
        pyro.sample(f"z_{i}", dist.Normal(loc[i], 1.0))


STRUCTURES = {
    # name: (model, guide, data, unit plates the trace layer must find)
    "nested plates": (nested_model, AutoNormal, lambda: torch.randn(6, 3), ("data",)),
    "global beside local": (global_model, AutoNormal, lambda: torch.randn(6), ()),
    "sequential plates": (sequential_model, lambda m: sequential_guide, lambda: torch.randn(4),
                          ()),
}


@pytest.mark.parametrize("structure", list(STRUCTURES))
@pytest.mark.parametrize("loss_name", list(OBJECTIVES))
def test_model_structures(loss_name, structure):
    model, make_guide, make_data, units = STRUCTURES[structure]
    data = make_data()
    guide = make_guide(model)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), OBJECTIVES[loss_name]())
    for _ in range(2):
        assert torch.isfinite(torch.tensor(svi.step(data)))
    terms = particle_terms(model, guide, (data,), {}, num_particles=3,
                           max_plate_nesting=2 if structure == "nested plates" else 1)
    assert terms.unit_plates == units
    if units:  # one log weight per datum
        assert terms.log_weights.shape == (3, 6, 1)


@pytest.mark.parametrize("loss_name", list(OBJECTIVES))
def test_subsampled_plate_runs(loss_name):
    data = MODEL.simulate(20)
    svi = SVI(MODEL, hand_guide, pyro.optim.Adam({"lr": 0.01}), OBJECTIVES[loss_name]())
    for _ in range(2):
        assert torch.isfinite(torch.tensor(svi.step(data, subsample_size=5)))


def test_discrete_and_continuous_latents_together():
    def model(x):
        with pyro.plate("data", len(x)):
            c = pyro.sample("c", dist.Bernoulli(0.4))
            z = pyro.sample("z", dist.Normal(2.0 * c, 1.0))
            pyro.sample("x", dist.Normal(z, 0.5), obs=x)

    def guide(x):
        p = pyro.param("p", lambda: torch.full((len(x),), 0.5),
                       constraint=constraints.unit_interval)
        loc = pyro.param("loc", lambda: torch.zeros(len(x)))
        with pyro.plate("data", len(x)):
            pyro.sample("c", dist.Bernoulli(p))
            pyro.sample("z", dist.Normal(loc, 1.0))

    data = torch.randn(8)
    for name in ("iwae-vimco", "iwae-auto", "stl", "renyi", "tvo", "rws"):
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), OBJECTIVES[name]())
        assert torch.isfinite(torch.tensor(svi.step(data)))
    for name in ("iwae-reparam", "iwae-dreg"):
        with pytest.raises(ValueError, match="vimco"):
            OBJECTIVES[name]().loss(model, guide, data)


def test_bad_arguments_are_reported():
    with pytest.raises(ValueError, match="num_particles"):
        lv.TraceIWAE_ELBO(0)
    with pytest.raises(ValueError, match="estimator"):
        lv.TraceIWAE_ELBO(4, estimator="dreg2")
    with pytest.raises(ValueError, match="alpha"):
        lv.TraceRenyi_ELBO(alpha=-1.0)
    with pytest.raises(ValueError, match="betas"):
        lv.TraceTVO_ELBO(4, betas=[0.1, 0.5])
    with pytest.raises(ValueError, match="num_particles"):
        lv.TraceRWS_ELBO(1)
    # one particle: TVO's covariance gradient at betas > 0 was biased (216 standard errors
    # from Trace_ELBO's on a linear-Gaussian model); betas=[0.0] is the ELBO and is kept
    with pytest.raises(ValueError, match="num_particles >= 2"):
        lv.TraceTVO_ELBO(1)
    lv.TraceTVO_ELBO(1, betas=[0.0])

    def model(x):
        z = pyro.sample("z", dist.Bernoulli(0.3))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        pyro.sample("z", dist.Bernoulli(0.6))

    with pytest.raises(ValueError, match=r"\['z'\].*num_particles >= 2.*TraceSTL_ELBO"):
        lv.TraceIWAE_ELBO(1).loss(model, guide, torch.tensor(0.5))


def test_nan_is_caught_where_it_appears():
    def model(x):
        with pyro.plate("data", len(x)):
            pyro.factor("energy", x * float("nan"))

    # with validation (the default in tests) Pyro's own check names the distribution ...
    with pytest.raises(ValueError, match="log_factor"):
        lv.TraceIWAE_ELBO(2).loss(model, lambda x: None, torch.ones(3))
    # ... and without it, the step refuses a NaN loss instead of corrupting the parameters
    pyro.enable_validation(False)
    with pytest.raises(ValueError, match="NaN or infinite"):
        lv.TraceIWAE_ELBO(2).loss_and_grads(model, lambda x: None, torch.ones(3))


@pytest.mark.parametrize("loss_name", list(OBJECTIVES))
def test_objectives_follow_the_data_device(loss_name, device):
    data = MODEL.simulate(10).to(device)

    def guide(x):
        loc = pyro.param("q_loc", lambda: torch.zeros(len(x), 2, device=x.device))
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))

    svi = SVI(MODEL, guide, pyro.optim.Adam({"lr": 0.01}), OBJECTIVES[loss_name]())
    assert torch.isfinite(torch.tensor(svi.step(data)))
    assert all(v.device.type == device.type for v in pyro.get_param_store().values())
