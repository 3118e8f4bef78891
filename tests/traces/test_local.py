"""LocalTarget: a potential with local latents as one independent target per datum."""

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_lvmle as lv
from pyro_lvmle.traces import Potential
from pyro_lvmle.traces.local import LocalTarget, local_plate


def mixed_effects(y):
    """Subjects with a positive and a simplex random effect, observations nested per subject."""
    with pyro.plate("subjects", y.shape[0], dim=-2):
        rate = pyro.sample("rate", dist.Gamma(2.0, 1.0))
        mix = pyro.sample("mix", dist.Dirichlet(torch.ones(3)))
        with pyro.plate("times", y.shape[1], dim=-1):
            loc = rate * (mix * torch.tensor([1.0, 2.0, 3.0])).sum(-1)
            pyro.sample("y", dist.Normal(loc, 1.0), obs=y)


def global_and_local(x):
    scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, scale), obs=x)


def _cases():
    ppca = lv.models.PPCA(4, 2)
    return {"ppca": (ppca, (ppca.simulate(5),), "data"),
            "mixed": (mixed_effects, (torch.randn(4, 3),), "subjects")}


@pytest.mark.parametrize("name", ["ppca", "mixed"])
def test_per_datum_energies_and_gradients_are_the_potential_s(name):
    model, args, plate = _cases()[name]
    potential = Potential(model, args)
    assert local_plate(potential) == plate
    local = LocalTarget(potential, plate)
    position = potential.sample_prior(3)
    rows = local.split(position)
    assert rows.shape == (3 * local.num_data, local.dim)
    assert torch.equal(local.join(rows), position)
    energies = local.energies(position)
    assert energies.shape == (3, local.num_data)
    assert torch.allclose(energies.sum(-1), potential(position))
    value, grad = local.value_and_grad(rows)
    _, full_grad = potential.value_and_grad(position)
    assert torch.allclose(value.reshape(3, -1), energies)
    assert torch.allclose(local.join(grad), full_grad)
    # moving one datum's coordinates changes that datum's energy only
    moved = rows.clone()
    moved[1] += 0.3
    change = (local(moved) - local(rows)).reshape(3, -1)
    assert change[0, 1] != 0 and (change.flatten()[torch.arange(change.numel()) != 1] == 0).all()
    # tempering scales each datum's likelihood: beta = 0 leaves the prior's energies
    tempered = local.tempered(0.0)
    prior = potential.tempered(0.0)
    assert torch.allclose(tempered.energies(position).sum(-1), prior(position))


def test_not_local_where_a_latent_or_the_plate_is_shared():
    x = torch.randn(4)
    assert local_plate(Potential(global_and_local, (x,))) is None

    def subsampled(data):
        with pyro.plate("data", data.shape[0], subsample_size=2) as idx:
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=data[idx])

    assert local_plate(Potential(subsampled, (x,))) is None


    def observed_total(data):  # one observation of all the data's latents together
        with pyro.plate("data", data.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("total", dist.Normal(z.sum(-1), 1.0), obs=data.sum())

    potential = Potential(observed_total, (x,))
    assert local_plate(potential) is None
    with pytest.raises(ValueError, match="'total' is not in the plate"):
        LocalTarget(potential, "data").energies(potential.sample_prior(2))
    with pytest.raises(ValueError, match="'scale' is not in the plate"):
        LocalTarget(Potential(global_and_local, (x,)), "data")
    with pytest.raises(ValueError, match="one value for every chain"):
        LocalTarget(Potential(lv.models.LinearGaussian(dim=2), (torch.randn(3, 2),)),
                    "data").tempered(torch.ones(2))


def random_walk(x):
    """Dependent data inside a plate (a plate's independence is the user's promise, not
    checked by Pyro): x_t = eps_1 + ... + eps_t + noise."""
    with pyro.plate("time", x.shape[0]):
        eps = pyro.sample("eps", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(eps.cumsum(-1), 0.5), obs=x)


def test_a_plate_whose_data_depend_on_each_other_is_not_split():
    x = torch.randn(8).cumsum(0)
    potential = Potential(random_walk, (x,))
    assert local_plate(potential) is None
    # planted control: split anyway, a datum's energy moves when another datum's latent does
    local = LocalTarget(potential, "time")
    rows = local.split(potential.sample_prior(1))
    moved = rows.clone()
    moved[0] += 1.0
    assert (local(moved) - local(rows))[1:].abs().max() > 0.1
