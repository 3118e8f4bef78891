"""The saved state (pyro_lvmle/em/state.py): tagged, checked before anything changes; the
bad states every driver refuses are in tests/test_bad_inputs.py."""

import copy

import pyro
import pytest
import torch

import pyro_lvmle as lv
from tests.em.test_driver import _linear, _params, make


def test_saved_state_is_tagged_and_a_refused_load_changes_nothing(tmp_path):
    model, data = _linear()
    driver = make("mcem", model)
    driver.run(data, num_steps=2, progress=False)
    state = driver.state_dict()
    assert (state["kind"], state["version"], state["driver_class"]) == \
        ("pyro_lvmle.Driver", 1, "MCEM")
    torch.save(state, tmp_path / "state.pt")
    loaded = torch.load(tmp_path / "state.pt", weights_only=True)
    before = _params(), driver.iteration, list(driver.history.steps)
    bad = {**loaded, "iteration": 7, "params": {**loaded["params"], "w": torch.zeros(5)}}
    with pytest.raises(ValueError, match="'w' has shape"):
        driver.load_state_dict(bad)
    assert driver.iteration == before[1] and driver.history.steps == before[2]
    assert all(torch.equal(v, before[0][k]) for k, v in _params().items())
    driver.load_state_dict(loaded)  # the good one still loads
    assert driver.iteration == 2


def _gmm_adam():
    model = lv.models.GaussianMixture(num_components=2, data_dim=2)
    data = model.simulate(60, params={"locs": torch.tensor([[1.0, 1.0], [-1.0, 0.0]]),
                                      "weights": torch.tensor([0.3, 0.7])})
    return model, data, lambda: lv.ExactEM(model, pyro.optim.Adam({"lr": 0.05}), m_steps=3)


def _leaves():
    return {n: p.detach().clone() for n, p in pyro.get_param_store().named_parameters()}


def _roundtrip(state, path):
    torch.save(state, path)
    return torch.load(path, weights_only=True)


@pytest.mark.filterwarnings("ignore::pyro_lvmle.ConvergenceWarning")
def test_a_checkpoint_saved_again_after_loading_keeps_the_optimizer_state(tmp_path):
    # Pyro parks a loaded optimizer state until each parameter's next step, and get_state()
    # does not see it: the re-saved checkpoint had no Adam moments, and the run resumed from
    # it ended 0.113 away from the uninterrupted one (an interrupted step, rolled back, did
    # the same)
    model, data, make = _gmm_adam()
    pyro.set_rng_seed(1)
    make().run(data, num_steps=4, progress=False)
    uninterrupted = _leaves()
    pyro.clear_param_store()
    pyro.set_rng_seed(1)
    first = make()
    first.run(data, num_steps=2, progress=False)
    saved = _roundtrip(first.state_dict(), tmp_path / "first.pt")
    pyro.clear_param_store()
    loaded = make()
    loaded.load_state_dict(saved)
    again = _roundtrip(loaded.state_dict(), tmp_path / "again.pt")
    assert sorted(again["driver"]["optim"]) == sorted(saved["driver"]["optim"]) != []
    pyro.clear_param_store()
    resumed = make()
    resumed.load_state_dict(again)
    resumed.run(data, num_steps=2, progress=False)
    assert all(torch.equal(v, uninterrupted[k]) for k, v in _leaves().items())


def _equal(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return torch.equal(a, b) if torch.is_tensor(a) else a == b


@pytest.mark.filterwarnings("ignore::pyro_lvmle.ConvergenceWarning")
def test_a_state_kept_in_memory_does_not_follow_the_run():
    # the Adam moments were the optimizer's own tensors, updated in place by later steps
    model, data, make = _gmm_adam()
    driver = make()
    driver.run(data, num_steps=2, progress=False)
    state = driver.state_dict()
    snapshot = copy.deepcopy(state)
    driver.run(data, num_steps=2, progress=False)
    assert _equal(state, snapshot)
