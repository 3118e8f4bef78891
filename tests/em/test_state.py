"""The saved state (pyro_lvmle/em/state.py): tagged, checked before anything changes; the
bad states every driver refuses are in tests/test_bad_inputs.py."""

import pytest
import torch

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
