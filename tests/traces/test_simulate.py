"""Joint draws of data and latents, and the model conditioned on simulated data."""

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_lvmle as lv
from pyro_lvmle.traces import Potential, conditioned, simulate


def test_joint_draws_follow_the_model():
    model = lv.models.LinearGaussian(dim=1, sigma=0.5, init_params={"w": torch.tensor([2.0])})
    observed, latent = simulate(model, (torch.zeros(20_000, 1),))
    x, z = observed["x"], latent["z"]
    assert not x.requires_grad and x.shape == (20_000, 1)
    # z ~ N(2, 1), x - z ~ N(0, 0.25): means and variances within 4 standard errors
    assert abs(float(z.mean()) - 2.0) < 4 * (1 / 20_000) ** 0.5
    assert abs(float((x - z).var()) - 0.25) < 4 * 0.25 * (2 / 20_000) ** 0.5
    # the control: the data the model was called with are not what comes back
    assert float(x.abs().mean()) > 1.0


def test_conditioned_model_sees_the_simulated_data():
    model = lv.models.LinearGaussian(dim=2)
    data = model.simulate(3)
    observed, latent = simulate(model, (data,))
    potential = Potential(conditioned(model, observed), (data,))
    position = potential.pack({"z": latent["z"].unsqueeze(0)})
    by_hand = (dist.Normal(0.0, 1.0).log_prob(latent["z"]).sum()
               + dist.Normal(latent["z"], 1.0).log_prob(observed["x"]).sum())
    assert float(potential.log_joint(position).detach()) == pytest.approx(float(by_hand))


def test_factor_sites_are_left_out_and_improper_sites_refused():
    def model(data):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.factor("penalty", -z**2)
        pyro.sample("x", dist.Normal(z, 1.0), obs=data)

    observed, latent = simulate(model, (torch.tensor(0.3),))
    assert set(observed) == {"x"} and set(latent) == {"z"}
    rbm = lv.models.RBM(num_visible=3, num_hidden=2)
    with pytest.raises(ValueError, match="cannot all be sampled"):
        simulate(rbm, (rbm.simulate(4),))
