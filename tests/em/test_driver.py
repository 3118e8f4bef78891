"""The driver protocol, for every driver: History, exact resume from a saved state_dict, an
interruption mid-step keeps the completed steps and the driver resumable, bad input."""

import math

import pyro
import pytest
import torch
from pyro.infer.autoguide import AutoNormal

import pyro_lvmle as lv
from pyro_lvmle.em import History


def _gmm():
    model = lv.models.GaussianMixture(num_components=2, data_dim=2)
    truth = {"locs": torch.tensor([[1.0, 1.0], [-1.0, 0.0]]), "weights": torch.tensor([0.3, 0.7])}
    return model, model.simulate(60, params=truth)


def _linear():
    model = lv.models.LinearGaussian(dim=3)
    return model, model.simulate(30, params={"w": torch.tensor([1.0, -0.5, 2.0])})


def make(name, model):
    """A driver of each kind, small enough to run a few steps quickly."""
    if name == "mcem":
        return lv.MCEM(model, "hmc", num_samples=4, num_chains=3, warmup_steps=20, m_steps=20)
    if name == "mcem_nuts":
        return lv.MCEM(model, "nuts", num_samples=4, num_chains=2, warmup_steps=20, m_steps=20)
    if name == "saem":
        # 50 warm-up steps: MALA's step size well adapted before the first E-step
        return lv.SAEM(model, "mala", burn_in=2, num_chains=3, warmup_steps=50, m_steps=10)
    if name == "saem_auto":  # the automatic burn-in's trajectory is part of the state
        return lv.SAEM(model, "mala", num_chains=3, warmup_steps=50, m_steps=10,
                       min_burn_in=20)
    if name == "mcem_newton":
        return lv.MCEM(model, "hmc", num_samples=4, num_chains=3, warmup_steps=20, m_steps=20,
                       newton=True)
    if name == "newton":
        return lv.StochasticNewton(model, num_samples=4, num_chains=3, warmup_steps=20)
    if name == "vem":
        return lv.VariationalEM(model, AutoNormal(model), e_steps=3, m_steps=2)
    if name == "exact_adam":
        return lv.ExactEM(model, pyro.optim.Adam({"lr": 0.05}), m_steps=3)
    if name == "exact_squarem":
        return lv.ExactEM(model, m_steps=5, acceleration="squarem")
    raise ValueError(name)


DRIVERS = ["mcem", "mcem_nuts", "saem", "saem_auto", "mcem_newton", "newton", "vem",
           "exact_adam", "exact_squarem"]


def setup(name):
    return _gmm() if name.startswith("exact") else _linear()


def _params():
    return {n: v.detach().clone() for n, v in pyro.get_param_store().items()}


@pytest.mark.parametrize("name", DRIVERS)
def test_resume_from_saved_state_is_exact(name, tmp_path):
    model, data = setup(name)
    pyro.set_rng_seed(1)
    make(name, model).run(data, num_steps=6, progress=False)
    expected = _params()

    pyro.clear_param_store()
    pyro.set_rng_seed(1)
    driver = make(name, model)
    driver.run(data, num_steps=3, progress=False)
    torch.save(driver.state_dict(), tmp_path / "state.pt")
    pyro.clear_param_store()
    pyro.set_rng_seed(123)  # the saved RNG state must win
    resumed = make(name, model)
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    history = resumed.run(data, num_steps=3, progress=False)
    assert history.steps == [1, 2, 3, 4, 5, 6]
    actual = _params()
    assert actual.keys() == expected.keys()
    for key in expected:
        assert torch.allclose(actual[key], expected[key], atol=1e-10, rtol=0), key


@pytest.mark.parametrize("name", ["mcem", "saem", "vem"])
def test_interrupt_mid_step_keeps_history_and_resumes_exactly(name):
    model, data = setup(name)
    pyro.set_rng_seed(2)
    make(name, model).run(data, num_steps=5, progress=False)
    expected = _params()

    calls = {"n": 0, "stop_at": None}

    def interruptible(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == calls["stop_at"]:
            raise KeyboardInterrupt
        return model.model(*args, **kwargs)

    pyro.clear_param_store()
    pyro.set_rng_seed(2)
    driver = make(name, interruptible)
    driver.run(data, num_steps=3, progress=False)
    calls["stop_at"] = calls["n"] + 5  # inside the fourth step
    with pytest.raises(KeyboardInterrupt):
        driver.run(data, num_steps=2, progress=False)
    assert driver.iteration == 3 and driver.history.steps == [1, 2, 3]
    calls["stop_at"] = None
    driver.run(data, num_steps=2, progress=False)
    assert driver.history.steps == [1, 2, 3, 4, 5]
    for key, value in _params().items():
        assert torch.allclose(value, expected[key], atol=1e-10, rtol=0), key


def test_planted_bug_resume_without_rng_state_differs(tmp_path):
    """Control: the exact-resume check detects a state missing the RNG state."""
    model, data = _linear()
    pyro.set_rng_seed(1)
    make("mcem", model).run(data, num_steps=4, progress=False)
    expected = _params()
    pyro.clear_param_store()
    pyro.set_rng_seed(1)
    driver = make("mcem", model)
    driver.run(data, num_steps=2, progress=False)
    state = driver.state_dict()
    state["rng"]["torch"] = torch.manual_seed(5).get_state()  # the planted bug
    resumed = make("mcem", model)
    resumed.load_state_dict(state)
    resumed.run(data, num_steps=2, progress=False)
    assert not all(torch.allclose(v, expected[k], atol=1e-10) for k, v in _params().items())


def test_history_records_metrics_params_time_and_callback():
    model, data = _gmm()
    em = lv.ExactEM(model)
    seen = []

    def callback(driver, metrics):
        seen.append(driver.iteration)
        return {"double": 2 * metrics["log_likelihood"]} if driver.iteration % 2 == 0 else None

    history = em.run(data, num_steps=4, progress=False, callback=callback)
    assert seen == [1, 2, 3, 4] and len(history) == 4
    assert history.time == sorted(history.time) and history.time[0] > 0
    assert math.isnan(history["double"][0])
    assert history["double"][1] == 2 * history["log_likelihood"][1]
    assert set(history.params) == {"weights", "locs", "scale_tril"}
    assert history.params["locs"].shape == (4, 2, 2)
    exported = history.to_dict()
    again = History.from_dict(exported)
    assert again.to_dict()["metrics"].keys() == exported["metrics"].keys()
    # a metric NaN at every step (a diverged evaluation) survives the round trip
    diverged = History()
    for step in (1, 2):
        diverged.append(step, 0.1 * step, {"loss": 1.0, "diverged": math.nan}, {})
    reloaded = History.from_dict(diverged.to_dict())
    assert reloaded.metric_names == ["loss", "diverged"]
    assert all(map(math.isnan, reloaded["diverged"]))
    assert torch.equal(again.params["locs"], history.params["locs"])
    import matplotlib

    matplotlib.use("Agg")
    fig = history.plot(x="time")
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 3 + 3  # 3 metrics, 3 params
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_record_params_choice():
    model, data = _gmm()
    assert lv.ExactEM(model, record_params=False).run(data, num_steps=1, progress=False) \
        .params == {}
    pyro.clear_param_store()
    history = lv.ExactEM(model, record_params=["weights"]).run(data, num_steps=1,
                                                                progress=False)
    assert list(history.params) == ["weights"]


def test_bad_input_is_named():
    model, data = _linear()
    with pytest.raises(TypeError, match="model must be a callable"):
        lv.MCEM("not a model")
    with pytest.raises(ValueError, match="num_steps"):
        lv.ExactEM(model.model).run(data, num_steps=0)
    with pytest.raises(TypeError, match="m_step"):
        lv.MCEM(model, m_step="adam")
    with pytest.raises(ValueError, match="alpha"):
        lv.MCEM(model, alpha=0.7)
    with pytest.raises(ValueError, match="both statistics and m_step"):
        lv.SAEM(model, statistics=lambda s: s)
    with pytest.raises(ValueError, match="alpha must be in"):
        lv.SAEM(model, step_size=0.3)
    with pytest.raises(ValueError, match="anneal names"):
        lv.SAEM(model, anneal=("nope",), warmup_steps=5).step(data)
    with pytest.raises(TypeError, match="optim"):
        lv.VariationalEM(model, AutoNormal(model), optim=torch.optim.Adam)
    with pytest.raises(TypeError, match="callback"):
        lv.ExactEM(model).run(data, callback=3)
    with pytest.raises(ValueError, match="not enumerable"):
        lv.ExactEM(model).step(data)

    def no_params(x):
        with pyro.plate("n", len(x)):
            pyro.sample("x", pyro.distributions.Normal(0.0, 1.0), obs=x)

    with pytest.raises(ValueError, match="reads no pyro.param"):
        lv.ExactEM(no_params).step(torch.zeros(3))


def test_frozen_chains_warn_and_adapted_ones_do_not():
    """SAEM whose MALA chains keep a step size far too large (no warm-up) accepts nothing:
    a warning says so (control: warmed up 20 steps, the same run is silent, warnings being
    errors; before the warm-up kept a final window of 20 steps, these 20 froze the chains)."""
    model, data = _linear()
    pyro.set_rng_seed(1)
    frozen = lv.SAEM(model, "mala", burn_in=2, num_chains=3, warmup_steps=0, m_steps=5,
                     kernel_options={"step_size": 20.0})
    with pytest.warns(UserWarning, match="did not move.*warmup_steps"):
        frozen.run(data, num_steps=3, progress=False)
    assert max(frozen.history["accept_prob"]) < 1e-3
    pyro.clear_param_store()
    pyro.set_rng_seed(1)
    lv.SAEM(model, "mala", burn_in=2, num_chains=3, warmup_steps=20, m_steps=5).run(
        data, num_steps=3, progress=False)


def test_variational_em_settings_that_do_nothing_warn():
    model, data = _linear()
    with pytest.warns(UserWarning, match="no parameters of its own"):
        lv.VariationalEM(model, lv.PriorGuide(model), e_steps=2).step(data)
    pyro.clear_param_store()
    with pytest.warns(UserWarning, match="e_steps=0"):
        lv.VariationalEM(model, AutoNormal(model), e_steps=0).step(data)
    pyro.clear_param_store()
    lv.VariationalEM(model, lv.PriorGuide(model), e_steps=0).step(data)  # fine: no warning


def test_history_plot_takes_one_metric_name():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = History()
    history.append(1, 0.1, {"loss": 2.0, "other": 1.0}, {})
    fig = history.plot("loss")  # before: read as the metrics 'l', 'o', 's', 's'
    assert [ax.get_title() for ax in fig.axes if ax.get_visible()] == ["loss"]
    plt.close(fig)


def test_history_plot_takes_the_axes_plt_subplots_returns_and_refuses_too_few():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = History()
    history.append(1, 0.1, {"a": 2.0, "b": 1.0, "c": 0.0, "d": 3.0}, {})
    fig, grid = plt.subplots(2, 2)  # an array: was "no attribute 'figure'"
    assert history.plot(axes=grid) is fig
    assert [ax.get_title() for ax in grid.ravel()] == ["a", "b", "c", "d"]
    fig, one = plt.subplots()  # one Axes for one panel: was "not subscriptable"
    history.plot("a", axes=one)
    assert one.get_title() == "a"
    with pytest.raises(ValueError, match="4 panels to draw but 1 axes"):  # drew 1, silently
        history.plot(axes=[one])
    with pytest.raises(TypeError, match="metrics must be"):
        history.plot(metrics=3)
    with pytest.raises(TypeError, match="axes must be matplotlib axes"):
        history.plot(axes="left")
    plt.close("all")
