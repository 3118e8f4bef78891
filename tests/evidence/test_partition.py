"""log_partition against exact partition functions: RBMs (enumeration over the smaller layer),
a small Ising model (brute force), a Gaussian energy (closed form)."""

import itertools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.distributions import constraints

import pyro_lvmle as lv
from pyro_lvmle.evidence import GeometricPath, annealed_importance_sampling
from pyro_lvmle.samplers import make_sampler
from pyro_lvmle.traces import Potential

COUPLING = torch.tensor([[0.0, 1.0, -0.5], [1.0, 0.0, 0.8], [-0.5, 0.8, 0.0]])


def ising(data):
    """Three boolean spins with pairwise couplings: an unnormalized density by pyro.factor."""
    x = pyro.sample("x", dist.ImproperUniform(constraints.boolean, (), (3,)), obs=data)
    coupling = COUPLING.to(x)
    pyro.factor("coupling", 0.5 * ((x @ coupling) * x).sum(-1) + x.sum(-1) * 0.3)


def _rbm(num_visible=8, num_hidden=4):
    torch.manual_seed(0)
    rbm = lv.models.RBM(num_visible, num_hidden, init_params={
        "weights": torch.randn(num_visible, num_hidden), "visible_bias": torch.randn(num_visible)})
    return rbm, rbm.simulate(200)


def test_exact_matches_brute_force_and_the_rbm_enumeration():
    states = torch.tensor(list(itertools.product([0.0, 1.0], repeat=3)))
    energies = 0.5 * ((states @ COUPLING.to(states)) * states).sum(-1) + 0.3 * states.sum(-1)
    brute = torch.logsumexp(energies, 0)
    estimate = lv.log_partition(ising, torch.zeros(3))
    assert float(estimate.value) == pytest.approx(float(brute), abs=1e-10)
    assert float(estimate.stderr) == 0 and estimate.method == "exact"
    rbm, data = _rbm()
    exact = lv.log_partition(rbm.model, data[:1])
    assert float(exact.value) == pytest.approx(float(rbm.log_partition().detach()), abs=1e-9)
    # two rows in the plate: Z^2
    two = lv.log_partition(rbm.model, data[:2])
    assert float(two.value) == pytest.approx(2 * float(rbm.log_partition().detach()), abs=1e-9)


def test_ais_matches_exact_within_its_standard_error_and_error_shrinks():
    rbm, data = _rbm()
    exact = float(rbm.log_partition().detach())
    errors, stderrs = [], []
    for num_betas in (3, 100):
        estimate = lv.log_partition(rbm.model, data[:1], method="ais", base={"v": data},
                                    num_chains=100, num_betas=num_betas, sampler="gwg")
        errors.append(abs(float(estimate.value) - exact))
        stderrs.append(float(estimate.stderr))
    assert errors[-1] < 4 * stderrs[-1] + 1e-3
    # the weights' spread (hence the error's scale) falls as the path gets finer
    assert stderrs[-1] < stderrs[0] / 3, stderrs


def test_ais_on_continuous_sites_with_hmc_transitions():
    def gaussian_energy(data):  # Z = (2 pi s^2)^(D / 2), D = 2, s = 1.5
        x = pyro.sample("x", dist.ImproperUniform(constraints.real, (), (2,)), obs=data)
        pyro.factor("energy", -((x - 1.0) ** 2).sum(-1) / (2 * 1.5**2))

    torch.manual_seed(0)
    exact = math.log(2 * math.pi * 1.5**2)
    sampler = make_sampler("hmc", step_size=0.5, adapt_step_size=False, num_steps=3)
    estimate = lv.log_partition(gaussian_energy, torch.zeros(2), method="ais",
                                base={"x": dist.Normal(torch.zeros(2), 2.0)}, num_chains=200,
                                num_betas=100, sampler=sampler)
    assert abs(float(estimate.value) - exact) < 4 * float(estimate.stderr) + 1e-3


def test_a_default_base_from_one_row_of_real_data_is_named():
    """N(row, 1) from a single row gave heavy-tailed weights whose reported error was a third
    of the spread across seeds (outside-in review): the user is told to pass the rows."""
    def gaussian_energy(data):
        x = pyro.sample("x", dist.ImproperUniform(constraints.real, (), (2,)), obs=data)
        pyro.factor("energy", -((x - 1.0) ** 2).sum(-1) / (2 * 1.5**2))

    with pytest.warns(UserWarning, match=r"one row has no spread.*base=\{'x': data\}"):
        lv.log_partition(gaussian_energy, torch.zeros(2), method="ais", num_chains=10,
                         num_betas=3)


def test_planted_control_wrong_base_draws_are_detected():
    rbm, data = _rbm()
    potential = Potential(rbm.model, (data[:1],), uncondition=True)
    path = GeometricPath(potential, {"v": dist.Bernoulli(data.mean(0).clamp(0.01, 0.99))
                                     .expand((1, 8))})
    wrong = torch.ones(200, potential.dim)  # not draws of the base: the weights are invalid
    result = annealed_importance_sampling(path, wrong, torch.linspace(0, 1, 30),
                                          make_sampler("gwg"))
    exact = float(rbm.log_partition().detach())
    assert abs(float(result.estimate.value) - exact) > 4 * float(result.estimate.stderr) + 1e-3


def test_bad_input_is_refused():
    rbm, data = _rbm()
    with pytest.raises(ValueError, match="method"):
        lv.log_partition(rbm.model, data[:1], method="nope")
    with pytest.raises(ValueError, match="configurations"):
        lv.log_partition(rbm.model, data[:3])  # 2^24 configurations
    with pytest.raises(ValueError, match="not observed sites"):
        lv.log_partition(rbm.model, data[:1], method="ais", base={"w": data})
    # a partial path estimates a ratio of other constants (2.27 for [0, 0.5] against 4.85)
    for betas in ([0.0, 0.5], [0.5, 1.0], [0.0, 0.4, 0.2, 1.0]):
        with pytest.raises(ValueError, match="betas"):
            lv.log_partition(rbm.model, data[:1], method="ais", betas=betas)

    def continuous(data):
        pyro.sample("x", dist.ImproperUniform(constraints.real, (), ()), obs=data)
        pyro.factor("f", -data**2)

    with pytest.raises(ValueError, match="discrete observed sites only"):
        lv.log_partition(continuous, torch.zeros(()))


@pytest.mark.integration
def test_ais_on_the_trained_digits_rbm_within_003_nats():
    from tests.gradients.test_contrastive import train_digits_rbm

    rbm, data = train_digits_rbm(persistent=False)
    exact = float(rbm.log_partition().detach())
    errors, stderrs = {}, {}
    for num_betas in (100, 1000):  # exact full conditionals ("gibbs") as the transition
        estimate = lv.log_partition(rbm.model, data[:1], method="ais", base={"v": data},
                                    num_chains=100, num_betas=num_betas)
        errors[num_betas] = abs(float(estimate.value) - exact)
        stderrs[num_betas] = float(estimate.stderr)
    assert errors[1000] < 0.03, errors
    assert stderrs[1000] < stderrs[100] / 2, stderrs
