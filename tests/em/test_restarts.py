"""Restarts (pyro_lvmle/em/restarts.py): every run recorded, the best kept by the driver's own
objective (the Monte Carlo Q-function for MCEM and SAEM, the ELBO for VariationalEM, the exact
log-likelihood for ExactEM, checked against scikit-learn's optimum on iris)."""

import pyro
import pytest
import torch

import pyro_lvmle as lv
from tests.em.test_driver import _linear, make


def _exact(*names):
    """Helpers of tests/em/test_exact.py, which need scikit-learn (skipped without it)."""
    pytest.importorskip("sklearn")
    from tests.em import test_exact

    return tuple(getattr(test_exact, n) for n in names)


@pytest.mark.parametrize("name", ["mcem", "saem", "vem"])
def test_restarts_keep_the_best_by_the_drivers_objective(name):
    """Every run in the history, the kept one the best by restart_objective; each restart
    starts from its init_params and from the guide's initial values (VariationalEM)."""
    model, data = _linear()
    guides = []

    def init_params(restart, x):
        guides.append({k: v.detach().clone() for k, v in pyro.get_param_store().items()
                       if k.startswith("AutoNormal")})
        return {"w": torch.full((3,), float(restart) - 1.0)}

    driver = make(name, model)
    history = driver.run(data, num_steps=2, num_restarts=3, init_params=init_params,
                         progress=False)
    assert history["restart"] == [0, 0, 1, 1, 2, 2] and history.steps == [1, 2] * 3
    finals = history["restart_objective"][1::2]
    assert driver.best_restart == max(range(3), key=finals.__getitem__)
    assert driver.restart_objective(data) == pytest.approx(finals[driver.best_restart],
                                                           abs=1e-6 if name != "vem" else 50)
    assert torch.equal(history.params["w"][1 + 2 * driver.best_restart],
                       pyro.param("w").detach())
    for guide in guides[1:]:
        assert guide.keys() == guides[0].keys()
        assert all(torch.equal(guide[k], guides[0][k]) for k in guide)
    driver.run(data, num_steps=1, progress=False)  # continues the kept run
    assert driver.iteration == 3 and driver.history.steps[-1] == 3


def test_restarts_keep_the_best_run_and_record_every_run():
    iris, closed_form, sklearn_optimum = _exact("iris", "closed_form", "sklearn_optimum")
    data = iris()
    pyro.set_rng_seed(4)
    em = lv.ExactEM(lv.models.GaussianMixture(3, 4), closed_form, tol=1e-8)
    history = em.run(data, num_steps=300, num_restarts=3, progress=False)
    restarts = history["restart"]
    assert sorted(set(restarts)) == [0, 1, 2]
    assert restarts == sorted(restarts)  # runs in order
    finals = [v for v in history["restart_objective"] if v == v]  # one per run
    assert len(finals) == 3 and em.best_restart == max(range(3), key=finals.__getitem__)
    # the driver holds the kept run: its log-likelihood is the best one, scikit-learn's optimum
    assert abs(em.restart_objective(data) - max(finals)) < 1e-9
    assert abs(max(finals) / len(data) - sklearn_optimum(data)) < 1e-6
    # three different starts: the first step's log-likelihoods differ
    firsts = [history["log_likelihood"][restarts.index(r)] for r in range(3)]
    assert len(set(firsts)) == 3
    # the state saves and loads the kept run
    state = em.state_dict()
    assert state["best_restart"] == em.best_restart


def test_restarts_from_a_fixed_start_warn():
    iris, iris_start, closed_form = _exact("iris", "iris_start", "closed_form")
    data = iris()
    model = lv.models.GaussianMixture(3, 4, init_params=iris_start()[1])
    with pytest.warns(UserWarning, match="same parameter values"):
        lv.ExactEM(model, closed_form).run(data, num_steps=2, num_restarts=2, progress=False)


def test_restarts_with_init_params_and_on_a_driver_that_ran():
    iris_start, closed_form = _exact("iris_start", "closed_form")
    data, start = iris_start()
    model = lv.models.GaussianMixture(3, 4)
    em = lv.ExactEM(model, closed_form)
    em.run(data, num_steps=3, num_restarts=2, progress=False,
           init_params=lambda restart, x: {k: v.clone() for k, v in start.items()}
           if restart == 0 else model.data_init(x))
    assert em.history["restart"][-1] == 1.0 and em.best_restart in (0, 1)
    with pytest.raises(ValueError, match="num_restarts"):
        em.run(data, num_steps=2, num_restarts=2, progress=False)


def test_an_interrupt_keeps_the_completed_runs():
    # the history kept only the interrupted run's 2 steps and best_restart was None: the 8
    # steps of the two completed runs were lost
    model, data = _linear()
    calls = []

    def init_params(restart, x):
        return {"w": torch.full((3,), float(restart) - 1.0)}

    def interrupt(driver, metrics):
        calls.append(1)
        if len(calls) == 10:  # the interrupted run's second step
            raise KeyboardInterrupt

    driver = make("mcem", model)
    with pytest.raises(KeyboardInterrupt):
        driver.run(data, num_steps=4, num_restarts=3, init_params=init_params,
                   progress=False, callback=interrupt)
    history = driver.history
    assert history["restart"][:8] == [0] * 4 + [1] * 4 and set(history["restart"][8:]) == {2}
    finals = [v for v in history["restart_objective"] if v == v]
    assert len(finals) == 3 and driver.best_restart == max(range(3), key=finals.__getitem__)
    kept = [i for i, r in enumerate(history["restart"]) if r == driver.best_restart][-1]
    assert torch.equal(history.params["w"][kept], pyro.param("w").detach())
    driver.run(data, num_steps=1, progress=False)  # continues the kept run
    assert driver.history.steps[-1] == history.steps[kept] + 1
