"""The parameter machinery every reference model shares."""

import pyro
import pytest
import torch

from pyro_lvmle.models import RBM, GaussianMixture, LinearGaussian
from tests.common import assert_close


def test_prefixes_let_models_share_the_param_store():
    a, b = GaussianMixture(2, 2, prefix="gmm."), RBM(4, 3, prefix="rbm.")
    pyro.poutine.trace(a).get_trace(a.simulate(10))
    pyro.poutine.trace(b).get_trace(b.simulate(10))
    store = pyro.get_param_store()
    assert {"gmm.weights", "rbm.weights"} <= set(store.keys())
    assert a.params()["weights"].shape == (2,) and b.params()["weights"].shape == (4, 3)


def test_a_name_clash_is_reported_with_the_fix():
    mixture, rbm = GaussianMixture(2, 2), RBM(4, 3)
    pyro.poutine.trace(mixture).get_trace(mixture.simulate(10))
    with pytest.raises(ValueError, match="prefix="):
        rbm.log_partition()


def test_lookup_order_given_then_store_then_init():
    model = LinearGaussian(dim=2, init_params={"w": [1.0, 2.0]})
    assert_close(model.params()["w"], [1.0, 2.0], atol=0, what="init override")
    model.set_params({"w": torch.tensor([3.0, 4.0])})
    assert_close(model.params()["w"], [3.0, 4.0], atol=0, what="param store")
    assert_close(model.params({"w": torch.zeros(2)})["w"], [0.0, 0.0], atol=0, what="given")
    # set_params leaves names it was not given alone
    assert_close(model.params()["sigma"], 1.0, atol=0, what="untouched sigma")


def test_values_from_the_store_are_constrained_and_keep_their_graph():
    model = LinearGaussian(dim=1)
    model.set_params({"sigma": torch.tensor(2.0)})
    sigma = model.params()["sigma"]
    assert sigma.requires_grad
    unconstrained = pyro.get_param_store().get_param("sigma").unconstrained()
    assert_close(unconstrained, torch.tensor(2.0).log(), atol=1e-12)


def test_bad_init_params_are_reported():
    with pytest.raises(ValueError, match="unknown names"):
        LinearGaussian(init_params={"mu": 0.0})
    with pytest.raises(TypeError, match="dict"):
        LinearGaussian(init_params=[1.0])
    with pytest.raises(TypeError, match="prefix"):
        LinearGaussian(prefix=3)
    with pytest.raises(ValueError, match="unknown parameter"):
        LinearGaussian().initial_value("nope")
