"""The comparison harness: same start, one budget, evaluations outside the timed part."""

import csv
import importlib
import itertools
import json
import math

import matplotlib
import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal

import pyro_lvmle as lv

matplotlib.use("Agg")
COMPARE_MODULE = importlib.import_module("pyro_lvmle.compare")  # lv.compare is the function


def _setup():
    model = lv.models.LinearGaussian(dim=2)
    x = model.simulate(50, params={"w": torch.tensor([1.0, -2.0]), "sigma": torch.tensor(0.5)})
    return model, x


def _methods(model):
    return {"MCEM": lv.MCEM(model, num_samples=10, warmup_steps=30, auto=False, m_steps=5),
            "IWAE": lv.TraceIWAE_ELBO(8),
            "Trace_ELBO": Trace_ELBO(),
            "SAEM": lv.SAEM(model, burn_in=5, warmup_steps=30)}


def test_ranking_agrees_with_the_exact_log_likelihoods_and_files_reload(tmp_path):
    model, x = _setup()
    comparison = lv.compare(_methods(model), model, x, guide=AutoNormal(model),
                            budget={"steps": 12}, eval_every=4,
                            evaluate={"method": "is", "num_samples": 4000})
    assert not comparison.errors
    evaluated, exact = {}, {}
    for name, rows in comparison.records.items():
        assert rows[0]["step"] == 0 and rows[-1]["step"] == 12
        params = {k: torch.tensor(v) for k, v in rows[-1]["params"].items()}
        params["sigma"] = params["sigma"].reshape(())
        exact[name] = float(model.log_marginal(x, params).detach())
        evaluated[name] = rows[-1]["value"]
    # every pair the exact values separate clearly is ranked the same way by the estimates
    checked = 0
    for a, b in itertools.combinations(exact, 2):
        if abs(exact[a] - exact[b]) > 1.0:
            checked += 1
            assert (exact[a] > exact[b]) == (evaluated[a] > evaluated[b]), (a, b)
    assert checked >= 3
    ranked = [row["method"] for row in comparison.table()]
    assert ranked == sorted(evaluated, key=lambda n: -evaluated[n])
    # the same start for every method
    starts = [rows[0]["params"] for rows in comparison.records.values()]
    assert all(start == starts[0] for start in starts)

    paths = comparison.save(tmp_path / "out")
    with open(paths["table"]) as file:
        table = list(csv.DictReader(file))
    assert [row["method"] for row in table] == ranked
    with open(paths["evaluations"]) as file:
        assert len(list(csv.DictReader(file))) == sum(map(len, comparison.records.values()))
    image = matplotlib.image.imread(paths["png"])
    assert image.ndim == 3 and image.shape[0] > 100
    loaded = lv.Comparison.load(tmp_path / "out")
    assert loaded.records == comparison.records and loaded.table() == comparison.table()


class FakeClock:
    """The harness's clock, advanced by hand: the tests assert what was counted, never how
    long anything took."""

    def __init__(self, tick):
        self.now, self.tick = 0.0, tick

    def perf_counter(self):
        self.now += self.tick  # every reading: some time passes inside the step
        return self.now


def test_evaluation_is_outside_the_timed_part_and_failures_are_recorded(monkeypatch):
    model, x = _setup()
    clock = FakeClock(tick=0.001)
    monkeypatch.setattr(COMPARE_MODULE, "time", clock)

    def slow(data):
        clock.now += 100.0  # an evaluation that takes long
        return float(model.log_marginal(data).detach())

    def not_a_loss():
        pass

    comparison = lv.compare({"IWAE": lv.TraceIWAE_ELBO(4), "broken": not_a_loss}, model, x,
                            guide=lv.PriorGuide(model), evaluate=slow, budget={"steps": 6},
                            eval_every=1)
    rows = comparison.records["IWAE"]
    assert len(rows) == 7  # step 0 and every step
    # six steps of one tick each; the seven evaluations' 700 s were not counted
    assert rows[-1]["seconds"] == pytest.approx(6 * 0.001, rel=1e-9)
    assert "broken" in comparison.errors and "ELBO" in comparison.errors["broken"]
    assert "failed" in comparison.format()


def test_a_wall_clock_budget_stops_each_method(monkeypatch):
    model, x = _setup()
    monkeypatch.setattr(COMPARE_MODULE, "time", FakeClock(tick=0.0625))
    comparison = lv.compare({"ELBO": Trace_ELBO()}, model, x, guide=AutoNormal(model),
                            budget=0.25, eval_every=1000)
    row = comparison.table()[0]
    assert row["steps"] == 4 and row["seconds"] == 0.25  # a step is one tick
    assert math.isfinite(row["final"])
    fig = comparison.plot()
    assert len(fig.axes) == 3


def test_bad_arguments():
    model, x = _setup()
    with pytest.raises(ValueError, match="budget"):
        lv.compare({"a": Trace_ELBO()}, model, x, budget="fast")
    with pytest.raises(TypeError, match="evaluate"):
        lv.compare({"a": Trace_ELBO()}, model, x, evaluate=3)
    with pytest.raises(TypeError, match="methods"):
        lv.compare({}, model, x)
    with pytest.raises(ValueError, match="eval_every"):
        lv.compare({"a": Trace_ELBO()}, model, x, eval_every=0)
    pyro.clear_param_store()


def test_an_interruption_keeps_what_was_recorded():
    model, x = _setup()
    calls = []

    def interrupt_at_the_third_evaluation(data):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return 0.0

    comparison = lv.compare({"a": lv.TraceIWAE_ELBO(2), "b": lv.TraceIWAE_ELBO(2)}, model, x,
                            guide=lv.PriorGuide(model), evaluate=interrupt_at_the_third_evaluation,
                            budget={"steps": 5}, eval_every=1)
    assert list(comparison.records) == ["a"] and len(comparison.records["a"]) == 2
    assert comparison.info["interrupted"] == "a"


def test_a_budget_of_model_evaluations_counts_every_run_of_the_model():
    model, x = _setup()

    class NoModelRun(Trace_ELBO):
        """A planted fault for the counter: a loss whose steps never run the model."""

        def loss_and_grads(self, model, guide, *args, **kwargs):
            return 0.0

    methods = {"Trace_ELBO": Trace_ELBO(), "MCEM": lv.MCEM(model, num_samples=10,
                                                           warmup_steps=10, auto=False),
               "silent": NoModelRun()}
    comparison = lv.compare(methods, model, x, guide=AutoNormal(model),
                            budget={"model_evaluations": 5}, eval_every=100)
    table = {row["method"]: row for row in comparison.table()}
    # one particle, one run of the model per step: the budget is exactly five steps
    assert table["Trace_ELBO"]["steps"] == 5 and table["Trace_ELBO"]["model_evaluations"] == 5
    # an MCEM iteration runs the model at every leapfrog step and L-BFGS iteration
    assert table["MCEM"]["steps"] == 1 and table["MCEM"]["model_evaluations"] > 30
    assert "no model evaluation" in comparison.errors["silent"]
    rows = comparison.records["Trace_ELBO"]
    assert [r["model_evaluations"] for r in rows] == [0, 5]
    # the driver runs its own model again after the comparison
    assert methods["MCEM"].model is model
    with pytest.raises(ValueError, match="model_evaluations"):
        lv.compare({"a": Trace_ELBO()}, model, x, budget={"model_evaluations": 0})


def test_the_counted_model_stands_in_for_the_model():
    from pyro_lvmle.compare import CountedModel

    model, x = _setup()
    counted = CountedModel(model)
    assert counted == model and model == counted and hash(counted) == hash(model)
    assert counted.log_marginal(x).shape == ()  # a reference model's methods
    assert counted.calls == 0
    pyro.poutine.trace(counted).get_trace(x)
    assert counted.calls == 1


class _Failing(Trace_ELBO):
    """A loss whose third step raises ``error`` (a user's loss, or a bug in one)."""

    def __init__(self, error):
        super().__init__()
        self.error, self.calls = error, 0

    def loss_and_grads(self, model, guide, *args, **kwargs):
        self.calls += 1
        if self.calls == 3:
            raise self.error("boom")
        return super().loss_and_grads(model, guide, *args, **kwargs)


@pytest.mark.parametrize("error", [KeyError, AssertionError, ZeroDivisionError])
def test_a_method_failing_with_any_error_is_recorded_and_the_others_run(error):
    # only ValueError, TypeError, RuntimeError and NotImplementedError were caught: any other
    # ended the comparison, lost the finished methods and left the failing one's parameters
    model, x = _setup()
    pyro.clear_param_store()
    start = {k: v.detach().clone() for k, v in model.params().items()}
    comparison = lv.compare({"before": Trace_ELBO(), "failing": _Failing(error),
                             "after": Trace_ELBO()}, model, x, guide=AutoNormal(model),
                            budget={"steps": 4})
    assert list(comparison.records) == ["before", "after"]
    assert comparison.errors["failing"].startswith(error.__name__)
    assert all(torch.equal(v, start[k]) for k, v in model.params().items())


def test_wrong_methods_evaluations_and_records_are_named():
    model, x = _setup()
    guide = lv.PriorGuide(model)
    comparison = lv.compare({"a": Trace_ELBO}, model, x, guide=guide, budget={"steps": 1})
    assert "pass Trace_ELBO()" in comparison.errors["a"]  # was: no attribute 'item'
    with pytest.raises(TypeError, match="names must be strings"):
        lv.compare({1: Trace_ELBO()}, model, x, guide=guide, budget={"steps": 1})
    with pytest.raises(TypeError, match="optim must be a pyro.optim"):
        lv.compare({"a": Trace_ELBO()}, model, x, guide=guide, optim=torch.optim.Adam)
    # an evaluate that cannot work fails once, named, before any method runs (it was each
    # method's error, blamed on the method)
    for evaluate, match in [(lambda data: None, "must return one number"),
                            (lambda data: torch.zeros(2), r"shape \(2,\)"),
                            (lambda data: {}["x"], "evaluate failed at the starting")]:
        with pytest.raises((TypeError, KeyError), match=match):
            lv.compare({"a": Trace_ELBO()}, model, x, guide=guide, evaluate=evaluate,
                       budget={"steps": 1})
    with pytest.raises(ValueError, match="records of 'a' must be a non-empty list"):
        lv.Comparison({"a": []})
    pyro.clear_param_store()


def _strict(text):
    """Parse JSON as strict readers do: no NaN or Infinity tokens."""
    def refuse(token):
        raise ValueError(f"not JSON: {token}")
    return json.loads(text, parse_constant=refuse)


def test_saved_json_is_strict_json_and_non_finite_values_reload(tmp_path):
    records = {"diverged": [{"step": 0, "seconds": 0.0, "value": -3.0, "params": {}},
                            {"step": 4, "seconds": 0.2, "value": math.nan, "params": {}}],
               "fine": [{"step": 0, "seconds": 0.0, "value": -3.0, "params": {}},
                        {"step": 4, "seconds": 0.1, "value": -math.inf, "params": {}}]}
    info = {"budget": {"seconds": math.inf, "steps": 4}, "note": "nan"}
    paths = lv.Comparison(records, {}, info).save(tmp_path)
    saved = _strict(paths["json"].read_text())  # Python's NaN/Infinity tokens would fail here
    assert saved["info"]["note"] == "nan"  # a string stays a string
    loaded = lv.Comparison.load(tmp_path)
    assert math.isnan(loaded.records["diverged"][1]["value"])
    assert loaded.records["fine"][1]["value"] == -math.inf
    assert loaded.info == info
