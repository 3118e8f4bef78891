"""The pilot run that gives AIS its step sizes and masses per temperature."""

import pytest
import torch

import pyro_lvmle as lv
from pyro_lvmle.evidence import pilot_step_sizes
from pyro_lvmle.samplers import BatchedKernel, hmc_step
from pyro_lvmle.traces import Potential


def _setup(sigma):
    model = lv.models.LinearGaussian(dim=2, sigma=sigma)
    potential = Potential(model, (model.simulate(4),))
    sampler = BatchedKernel(hmc_step, step_size=1.0, adapt_step_size=False, num_steps=3)
    return potential, sampler


def test_step_sizes_follow_the_posterior_scale_and_masses_its_variance():
    potential, sampler = _setup(sigma=0.1)
    betas = torch.linspace(0, 1, 60)
    pilot = pilot_step_sizes(potential.tempered, potential.sample_prior(64), betas, sampler,
                             num_transitions=3, adapt_mass=True)
    assert pilot.step_sizes.shape == (60,) and pilot.inverse_masses.shape == (60, 8)
    # the posterior variance is sigma^2 / (1 + sigma^2) = 0.0099, the prior's 1
    final = pilot.inverse_masses[-1]
    assert ((final > 0.003) & (final < 0.03)).all()
    assert (pilot.inverse_masses[1] > 0.1).all()


def test_the_tuned_run_accepts_near_the_target_where_a_fixed_step_does_not():
    potential, sampler = _setup(sigma=0.05)
    betas = torch.linspace(0, 1, 40)
    pilot = pilot_step_sizes(potential.tempered, potential.sample_prior(32), betas, sampler,
                             target_accept=0.7)
    tuned = lv.evidence.annealed_importance_sampling(
        potential.tempered, potential.sample_prior(64), betas, sampler,
        step_sizes=pilot.step_sizes)
    fixed = lv.evidence.annealed_importance_sampling(
        potential.tempered, potential.sample_prior(64), betas, sampler)
    assert abs(float(tuned.accept_prob[-10:].mean()) - 0.7) < 0.2
    assert float(fixed.accept_prob[-10:].mean()) < 0.2  # step 1.0 on a posterior of sd 0.05
    assert pilot.inverse_masses is None


def test_bad_arguments():
    potential, sampler = _setup(sigma=1.0)
    start = potential.sample_prior(4)
    with pytest.raises(ValueError, match="target_accept"):
        pilot_step_sizes(potential.tempered, start, [0.0, 1.0], sampler, target_accept=1.5)
    with pytest.raises(ValueError, match="num_transitions"):
        pilot_step_sizes(potential.tempered, start, [0.0, 1.0], sampler, num_transitions=0)
    with pytest.raises(ValueError, match="monotone"):
        pilot_step_sizes(potential.tempered, start, [0.0], sampler)


def test_ais_takes_the_pilots_masses_and_refuses_misshapen_ones():
    potential, sampler = _setup(sigma=0.1)
    betas = torch.linspace(0, 1, 30)
    pilot = pilot_step_sizes(potential.tempered, potential.sample_prior(32), betas, sampler,
                             adapt_mass=True)
    result = lv.evidence.annealed_importance_sampling(
        potential.tempered, potential.sample_prior(16), betas, sampler,
        step_sizes=pilot.step_sizes, inverse_masses=pilot.inverse_masses)
    assert torch.equal(result.state.inverse_mass[0], pilot.inverse_masses[-2])
    with pytest.raises(ValueError, match="inverse_masses"):
        lv.evidence.annealed_importance_sampling(
            potential.tempered, potential.sample_prior(16), betas, sampler,
            inverse_masses=pilot.inverse_masses[:, :3])
