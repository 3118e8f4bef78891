"""independent_units: the model's per-unit log densities depend on their own latents only."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoNormal

import pyro_lvmle as lv
from pyro_lvmle.traces import PriorGuide
from pyro_lvmle.traces.units import independent_units


def walk(x, lag=1):
    """x_t = eps_{t-lag} + eps_t + noise inside one plate: a model term of one datum reads
    another datum's latent (a plate's independence is the user's promise, unchecked by
    Pyro)."""
    with pyro.plate("time", x.shape[0]):
        eps = pyro.sample("eps", dist.Normal(0.0, 1.0))
        loc = eps if lag == 0 else eps + torch.cat([eps.new_zeros(lag), eps[:-lag]])
        pyro.sample("x", dist.Normal(loc, 0.5), obs=x)


def switching(x):
    """Discrete labels, each datum's mean set by its own label and its neighbour's."""
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Categorical(torch.ones(4) / 4))
        pyro.sample("x", dist.Normal((z + z.roll(1)).double(), 1.0), obs=x)


def labels(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Categorical(torch.ones(4) / 4))
        pyro.sample("x", dist.Normal(z.double(), 1.0), obs=x)


def autoregressive(x):
    """Dependence through observed values only: x_t | x_{t-1}, z_t; still one factor per
    datum given the data."""
    with pyro.plate("time", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        previous = torch.cat([x.new_zeros(1), x[:-1]])
        pyro.sample("x", dist.Normal(0.8 * previous + z, 0.5), obs=x)


def nested(y):
    with pyro.plate("subjects", y.shape[0], dim=-2):
        rate = pyro.sample("rate", dist.Gamma(2.0, 1.0))
        with pyro.plate("times", y.shape[1], dim=-1):
            pyro.sample("y", dist.Normal(rate, 1.0), obs=y)


def nested_dependent(y):
    """Subjects sharing their neighbour's effect."""
    with pyro.plate("subjects", y.shape[0], dim=-2):
        rate = pyro.sample("rate", dist.Gamma(2.0, 1.0))
        with pyro.plate("times", y.shape[1], dim=-1):
            pyro.sample("y", dist.Normal(rate + rate.roll(1, 0), 1.0), obs=y)


def subsampled_walk(x):
    with pyro.plate("time", x.shape[0], subsample_size=4) as idx:
        eps = pyro.sample("eps", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(eps.cumsum(-1), 0.5), obs=x[idx])


def _check(model, *args, guide=None, nesting=1):
    guide = PriorGuide(model) if guide is None else guide
    return independent_units(model, guide, args, max_plate_nesting=nesting)


def test_independent_models_keep_their_split():
    x = torch.randn(9)
    assert _check(walk, x, 0)
    assert _check(labels, x)
    assert _check(autoregressive, x)
    assert _check(nested, torch.randn(5, 3), nesting=2)
    ppca = lv.models.PPCA(4, 2)
    data = ppca.simulate(6)
    assert _check(ppca.model, data)
    assert _check(ppca.model, data, guide=AutoNormal(ppca.model))


@pytest.mark.parametrize("size,lag", [(2, 1), (3, 1), (3, 2), (9, 1), (9, 2), (9, 8), (33, 1),
                                      (33, 2), (33, 7), (33, 32)])
def test_a_dependence_between_any_two_units_is_found(size, lag):
    assert not _check(walk, torch.randn(size), lag)


def test_dependence_through_discrete_latents_and_nested_plates_is_found():
    assert not _check(switching, torch.randn(9))
    assert not _check(nested_dependent, torch.randn(5, 3), nesting=2)


def test_a_subsampled_plate_is_checked_on_one_mini_batch():
    assert not _check(subsampled_walk, torch.randn(12))


def test_one_unit_or_none_needs_no_check_and_the_random_state_is_kept():
    assert _check(walk, torch.randn(1))
    x = torch.randn(6)
    state = torch.get_rng_state()
    _check(walk, x)
    assert torch.equal(torch.get_rng_state(), state)


def test_a_model_with_randomness_outside_pyro_sample_keeps_the_split():
    """Dropout in a decoder: the log density is not reproducible at the same values, so
    nothing can be compared and the split is kept (as without the check)."""
    def dropout_walk(x):
        with pyro.plate("time", x.shape[0]):
            eps = pyro.sample("eps", dist.Normal(0.0, 1.0))
            loc = torch.nn.functional.dropout(eps.cumsum(-1), 0.5, training=True)
            pyro.sample("x", dist.Normal(loc, 0.5), obs=x)

    assert _check(dropout_walk, torch.randn(6))
