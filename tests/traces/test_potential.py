"""The batched potential: energies by hand, gradients, layout, and exact posteriors by HMC."""

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_lvmle as lv
from pyro_lvmle.samplers import hmc_init, hmc_step, warmup
from pyro_lvmle.traces import Potential
from tests.common import (
    assert_close,
    assert_within_stderr,
    capped_effective_sample_size,
    central_difference,
)


def global_model(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    s = pyro.sample("s", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(mu, s), obs=x)


def test_energy_of_a_plated_model_by_hand():
    model = lv.models.LinearGaussian(dim=2)
    data = model.simulate(5)
    potential = Potential(model, (data,))
    q = torch.randn(3, potential.dim)
    z, p = q.reshape(3, 5, 2), model.params()
    log_joint = dist.Normal(p["w"], 1.0).log_prob(z).sum((-1, -2)) \
        + dist.Normal(z, p["sigma"]).log_prob(data).sum((-1, -2))
    assert_close(potential(q), -log_joint, atol=1e-10)
    assert_close(potential.log_joint(q), log_joint, atol=1e-10)


def test_energy_with_constrained_global_sites_includes_the_jacobian():
    x = torch.randn(7)
    potential = Potential(global_model, (x,))
    q = torch.randn(4, 2)
    mu, log_s = q[:, 0], q[:, 1]
    log_joint = dist.Normal(0.0, 1.0).log_prob(mu) + dist.LogNormal(0.0, 1.0).log_prob(
        log_s.exp()) + dist.Normal(mu[:, None], log_s.exp()[:, None]).log_prob(x).sum(-1)
    assert_close(potential(q), -(log_joint + log_s), atol=1e-10)


def test_gradient_matches_finite_differences():
    potential = Potential(global_model, (torch.randn(7),))
    q = torch.randn(1, 2)
    _, grad = potential.value_and_grad(q)
    numeric = central_difference(lambda v: potential(v.unsqueeze(0)).sum(), q[0])
    assert_close(grad[0], numeric, atol=1e-6)


def test_pack_inverts_unpack():
    potential = Potential(lv.models.Theophylline(), (lv.models.load_theophylline(),))
    q = torch.randn(3, potential.dim)
    assert_close(potential.pack(potential.unpack(q)), q, atol=1e-12)
    assert potential.dim == 36


def test_discrete_latent_is_refused():
    def model():
        pyro.sample("c", dist.Bernoulli(0.5))

    with pytest.raises(ValueError, match="discrete"):
        Potential(model)


def test_hmc_on_the_potential_recovers_the_exact_posterior():
    model = lv.models.LinearGaussian(dim=1)
    data = model.simulate(3, {"w": torch.tensor([0.5]), "sigma": torch.tensor(0.7)})
    potential = Potential(model, (data,))
    state = hmc_init(torch.zeros(8, potential.dim), potential, step_size=0.3)
    state = warmup(state, potential, 200, num_steps=5).state
    draws = []
    for _ in range(600):
        state, _ = hmc_step(state, potential, num_steps=5)
        draws.append(state.position)
    draws = torch.stack(draws, 1)
    ess = capped_effective_sample_size(draws)
    posterior = model.posterior(data)
    truth = posterior.base_dist.loc.reshape(-1)
    sd = posterior.base_dist.scale.reshape(-1)
    assert_within_stderr(draws.mean((0, 1)), truth, sd / ess.sqrt(), what="posterior mean")


def test_energy_of_a_model_without_plates_is_per_chain():
    # max_plate_nesting = 0: the chain dimension is the only one
    def model(x):
        pyro.sample("z", dist.Normal(x, 1.0))

    potential = Potential(model, (torch.tensor(0.5),))
    q = torch.tensor([[0.0], [1.0]])
    assert_close(potential(q), -dist.Normal(0.5, 1.0).log_prob(q[:, 0]), atol=1e-12)


def test_enumerated_discrete_latents_are_summed_out_of_the_energy():
    x = torch.tensor([-1.0, 0.5, 2.0, 3.0])

    @pyro.infer.config_enumerate
    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            c = pyro.sample("c", dist.Bernoulli(0.3))
            pyro.sample("x", dist.Normal(z + 2.0 * c, 1.0), obs=x)

    potential = Potential(model, (x,))
    assert potential.enumerated == ("c",) and potential.dim == 4
    q = torch.randn(3, 4)
    mixture = torch.stack([torch.tensor(0.7).log() + dist.Normal(q, 1.0).log_prob(x),
                           torch.tensor(0.3).log() + dist.Normal(q + 2.0, 1.0).log_prob(x)])
    log_joint = dist.Normal(0.0, 1.0).log_prob(q) + mixture.logsumexp(0)
    assert_close(potential(q), -log_joint.sum(-1), atol=1e-10)


def test_subsampled_plate_keeps_its_indices_and_samples_without_the_scale():
    model = lv.models.LinearGaussian(dim=1)
    data = model.simulate(10)
    potential = Potential(model, (data,), {"subsample_size": 4})
    index = potential.subsample_indices["data"]
    assert potential.sites[0].subsampled == (("data", 1, 10),)
    q = torch.randn(2, 4)
    p = model.params()
    log_joint = dist.Normal(p["w"], 1.0).log_prob(q) \
        + dist.Normal(q, p["sigma"]).log_prob(data[index, 0])
    assert_close(potential(q), -log_joint.sum(-1), atol=1e-10)
    assert_close(potential.log_joint(q), 2.5 * log_joint.sum(-1), atol=1e-10)  # N/B = 10/4
