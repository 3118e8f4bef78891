"""Persistent samplers across calls: Pyro's kernels keep their adaptation, and a refreshed
energy keeps the target invariant after a parameter change where a stale one does not."""

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_lvmle as lv
from pyro_lvmle.samplers import BatchedKernel, PyroKernel, mala_step
from pyro_lvmle.traces import Potential
from tests.common import assert_within_stderr


def shifted(x):
    """z | x ~ N(x, 1) whatever the parameter: ``shift`` only adds a constant to log p."""
    shift = pyro.param("shift", torch.tensor(0.0))
    pyro.sample("z", dist.Normal(x, 1.0))
    pyro.factor("offset", shift)


SAMPLERS = {
    "pyro_hmc": lambda: PyroKernel(pyro.infer.HMC(shifted, step_size=1.5, num_steps=1,
                                                  adapt_step_size=False,
                                                  adapt_mass_matrix=False)),
    "batched_mala": lambda: BatchedKernel(mala_step, step_size=1.5, adapt_step_size=False),
}


def one_transition_after_a_parameter_change(sampler, refresh, num_chains):
    """Exact draws of the target; one transition caches the energies under shift = 0; the
    parameter moves to shift = 30 (the target does not change); one transition."""
    x = torch.tensor(0.5)
    potential = Potential(shifted, (x,))
    draws = x + torch.randn(num_chains, 1)
    state = sampler.init(draws, potential)
    state, _ = sampler.step(state, potential)  # still exact draws; energies now cached
    pyro.get_param_store()["shift"] = torch.tensor(30.0)
    if refresh:
        state = sampler.init(state.position, potential, like=state)
    state, _ = sampler.step(state, potential)
    return state.position[:, 0] - x


def assert_standard_normal(z):
    n = z.numel()
    assert_within_stderr(z.mean(), 0.0, 1.0 / n**0.5, what="mean")
    assert_within_stderr(z.var(), 1.0, (2.0 / n) ** 0.5, what="variance")


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_refreshed_energy_keeps_the_target_invariant(name):
    z = one_transition_after_a_parameter_change(SAMPLERS[name](), True, num_chains=400)
    assert_standard_normal(z)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_planted_bug_a_stale_energy_fails(name):
    # the cached energy is 30 too high: every proposal is accepted, and a MALA step of 1.5
    # that is always accepted more than doubles the variance
    z = one_transition_after_a_parameter_change(SAMPLERS[name](), False, num_chains=400)
    with pytest.raises(AssertionError, match="variance"):
        assert_standard_normal(z)


def test_pyro_nuts_keeps_its_adaptation_across_calls():
    model = lv.models.LinearGaussian(dim=2)
    data = model.simulate(10)
    loss = lv.MCMCGradient("nuts", num_chains=2, warmup_steps=60)
    svi = pyro.infer.SVI(model, lv.empty_guide, pyro.optim.Adam({"lr": 0.05}), loss)
    svi.step(data)
    kernels = loss.sampler.kernels
    steps = [k.step_size for k in kernels]
    masses = [{n: m.clone() for n, m in k.inverse_mass_matrix.items()} for k in kernels]
    assert all(s != 1.0 for s in steps)  # warm-up did adapt
    assert loss.diagnostics["warmup"] is True
    svi.step(data)
    svi.step(data)
    assert loss.diagnostics["warmup"] is False
    assert loss.sampler.kernels is kernels  # not set up again
    assert [k.step_size for k in kernels] == steps
    for kernel, mass in zip(kernels, masses, strict=True):
        for names, matrix in kernel.inverse_mass_matrix.items():
            assert torch.equal(matrix, mass[names])
    assert torch.equal(loss.sampler._state(torch.zeros(2, 20), Potential(model, (data,)))
                       .step_size, torch.tensor(steps))


def test_pyro_kernel_bad_input():
    with pytest.raises(TypeError, match="HMC or NUTS"):
        PyroKernel(object())
    with pytest.raises(ValueError, match="potential_fn"):
        PyroKernel(pyro.infer.NUTS(potential_fn=lambda z: 0.0))
    with pytest.raises(ValueError, match="jit_compile"):
        PyroKernel(pyro.infer.NUTS(shifted, jit_compile=True))
