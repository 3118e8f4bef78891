r"""The comparison harness: several estimators on one model and data, one budget, one start.

Each method, a loss run through :class:`pyro.infer.SVI` or a driver, starts from the same
parameter values and random seed and runs until the budget (wall seconds spent in its own
steps, a number of steps, or a number of runs of the model) is spent. Every ``eval_every``
steps, outside the timed part, an evaluation of the fit, usually an estimate of
:math:`\log p(x; \theta)`, is recorded with the parameters, so that the methods can be
compared on the quantity they all estimate the gradient of, against wall time and against
steps.
"""

from __future__ import annotations

import copy
import functools
import math
import time

import pyro
import pyro.optim
import torch
from pyro.infer import ELBO, SVI

from ._checks import check_int, check_positive
from .comparison import Comparison
from .em.driver import Driver
from .evidence import log_marginal
from .gradients import MCMCGradient, empty_guide
from .traces.params import program_params

__all__ = ["CountedModel", "compare"]

#: the parameters recorded for traces: those with at most this many elements
MAX_RECORDED = 100


def _budget(budget) -> tuple[float, float, float]:
    """``(seconds, steps, evaluations)`` limits, any of them infinite."""
    if isinstance(budget, (int, float)) and not isinstance(budget, bool):
        return check_positive("compare", "budget", budget), math.inf, math.inf
    if isinstance(budget, dict) and budget and set(budget) <= {"seconds", "steps",
                                                               "model_evaluations"}:
        seconds = check_positive("compare", "budget['seconds']",
                                 budget["seconds"]) if "seconds" in budget else math.inf
        steps, evaluations = (check_int("compare", f"budget[{key!r}]", budget[key], 1)
                              if key in budget else math.inf
                              for key in ("steps", "model_evaluations"))
        return seconds, steps, evaluations
    raise ValueError(f"compare: budget must be wall seconds (a number) or a dict with "
                     f"'seconds', 'steps' and/or 'model_evaluations', got {budget!r}")


class CountedModel:
    """The model, counting its runs: what a method's steps cost in model evaluations.

    Every run of the model is one evaluation of its log density (and, for every method here,
    of that density's gradient): a leapfrog step of HMC, a particle of
    :class:`~pyro.infer.Trace_ELBO`, an iteration of an M-step's L-BFGS. A vectorized run
    (particles or chains in a plate) counts once, as it costs about one run on an
    accelerator. Attributes are the model's (a reference model's methods still work) and it
    compares equal to the model (chains kept for the model accept it).

    :param model: the Pyro model.

    Example::

        >>> counted = CountedModel(lambda: None)
        >>> counted(), counted(), counted.calls
        (None, None, 2)
    """

    def __init__(self, model):
        self.model = model
        self.calls = 0
        functools.update_wrapper(self, model, updated=())

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.model(*args, **kwargs)

    def __getattr__(self, name):
        if name == "model":  # not yet set (copying): no recursion
            raise AttributeError(name)
        return getattr(self.model, name)

    def __eq__(self, other):
        other = other.model if isinstance(other, CountedModel) else other
        return self.model == other

    def __hash__(self):
        return hash(self.model)


def _evaluator(evaluate, model, args, kwargs):
    """``evaluate`` as a function of nothing; it leaves the random number generators alone
    (a method's run does not depend on how often it is evaluated)."""
    inner = _inner_evaluator(evaluate, model, args, kwargs)

    def evaluation():
        with torch.random.fork_rng():
            return inner()

    return evaluation


def _inner_evaluator(evaluate, model, args, kwargs):
    if isinstance(evaluate, str) and evaluate == "exact":
        return lambda: float(log_marginal(model, *args, **kwargs).value.detach())
    if isinstance(evaluate, dict):
        settings = dict(evaluate)
        return lambda: float(log_marginal(model, *args, **settings, **kwargs).value.detach())
    if callable(evaluate):
        return lambda: _number(evaluate(*args, **kwargs))
    raise TypeError(f"compare: evaluate must be 'exact', a dict of log_marginal settings "
                    f"(e.g. {{'method': 'is', 'num_samples': 1000}}) or a callable "
                    f"evaluate(*args, **kwargs) -> float, got {evaluate!r}")


def _number(value) -> float:
    """What a user's ``evaluate`` returned, as one float."""
    if isinstance(value, bool) or not (isinstance(value, (int, float)) or (
            torch.is_tensor(value) and value.numel() == 1)):
        shape = f" of shape {tuple(value.shape)}" if torch.is_tensor(value) else ""
        raise TypeError(f"evaluate must return one number (the fit's log p(x)), got "
                        f"{type(value).__name__}{shape}; sum per-datum values")
    return float(value)


def _first_value(evaluation):
    """The evaluation at the start, shared by every method's step 0: an ``evaluate`` that
    fails there fails before any method runs, named as such (not as every method's error)."""
    try:
        return evaluation()
    except Exception as error:
        raise type(error)(f"compare: evaluate failed at the starting parameters, before any "
                          f"method ran: {error}") from error


def _fresh(guide):
    """A copy of a guide with its own parameters and state (an autoguide's ``__getstate__``
    drops its reference to the model, from the original too: it is put back in both)."""
    model_ref = getattr(guide, "_model", None)
    copied = copy.deepcopy(guide)
    if isinstance(model_ref, tuple):
        guide._model = copied._model = model_ref
    return copied


def _stepper(method, model, guide, optim):
    """``step(*args, **kwargs)`` for one method: a driver as it is (running ``model``); a loss
    with its own copy of the loss (chains of :class:`~pyro_lvmle.MCMCGradient` included), of
    the guide and of the optimizer."""
    if isinstance(method, Driver):
        def step(*args, **kwargs):
            own, method.model = method.model, model
            try:
                return method.step(*args, **kwargs)
            finally:
                method.model = own

        return step
    loss, own_guide = method if isinstance(method, tuple) else (method, None)
    if isinstance(loss, type):
        raise TypeError(f"a method must be a loss instance, got the class {loss.__name__}: "
                        f"pass {loss.__name__}()")
    if not isinstance(loss, ELBO) and not hasattr(loss, "loss_and_grads"):
        raise TypeError(f"a method must be a pyro.infer.ELBO (a loss), a (loss, guide) pair "
                        f"or a driver such as lv.MCEM, got {type(loss).__name__}")
    if own_guide is None:
        own_guide = empty_guide if isinstance(loss, MCMCGradient) else guide
    if own_guide is None:
        raise ValueError("compare: a loss needs a guide: pass guide=..., or the method as a "
                         "(loss, guide) pair")
    svi = SVI(model, _fresh(own_guide), copy.deepcopy(optim), loss=copy.deepcopy(loss))
    return svi.step


def _warm_up():
    """Pay the process's one-time costs before any timed step: torch's first optimizer step
    imports its compiler stack (about 2.5 s), which would otherwise be charged to whichever
    method runs first."""
    leaf = torch.zeros(1, requires_grad=True)
    leaf.grad = torch.zeros(1)
    torch.optim.Adam([leaf]).step()


def _constrained_params(names):
    store = pyro.get_param_store()
    return {name: store[name].detach().reshape(-1).tolist() for name in names
            if name in store and store[name].numel() <= MAX_RECORDED}


def compare(methods: dict, model, *args, evaluate="exact", budget=10.0, eval_every: int = 10,
            guide=None, optim=None, seed: int = 0, **kwargs) -> Comparison:
    r"""Run several estimators on one model and data under one budget from the same start.

    Every method runs from the parameter values in Pyro's param store when ``compare`` is
    called (those the model creates at their initial values otherwise) and from the random
    seed ``seed``. Its steps, and only they, are timed; evaluations happen at step 0, every
    ``eval_every`` steps and at the end. A method that raises is recorded as failed (its
    message in the table) and the others still run. An interruption (``KeyboardInterrupt``)
    ends the comparison with what was recorded (``info["interrupted"]`` names the method).
    Afterwards the param store holds the starting values again.

    .. math::

        \text{value}_m(t) = \widehat{\log p}(x; \theta_m(t)),
        \qquad t = \text{seconds spent in method } m\text{'s steps}.

    :param dict methods: name to a loss (``pyro.infer.ELBO`` instance, run through
        :class:`~pyro.infer.SVI` with ``guide`` and ``optim``; :class:`~pyro_lvmle.MCMCGradient`
        gets :func:`~pyro_lvmle.empty_guide`), a ``(loss, guide)`` pair, or a driver
        (:class:`~pyro_lvmle.MCEM`, :class:`~pyro_lvmle.SAEM`, ...). Losses and guides are
        copied per method; drivers run as given (pass fresh ones).
    :param model: the Pyro model.
    :param args: its arguments (the data).
    :param evaluate: ``"exact"`` (:func:`~pyro_lvmle.log_marginal`'s exact method: a
        reference model's closed form or enumeration), a dict of
        :func:`~pyro_lvmle.log_marginal` settings (``{"method": "is", "num_samples": 1000}``),
        or a callable ``evaluate(*args, **kwargs) -> float`` reading the param store.
    :param budget: wall seconds per method, or a dict of limits, any of ``{"seconds": s}``,
        ``{"steps": n}`` and ``{"model_evaluations": n}``: runs of the model in the method's
        steps (:class:`CountedModel`; a vectorized run counts once), a cost that does not
        depend on the machine or its load. Each method stops at the first limit it reaches
        (a step is not cut short: it may overshoot ``model_evaluations`` by one step's runs).
    :param int eval_every: steps between evaluations.
    :param guide: the guide for the losses (copied per method).
    :param optim: the ``pyro.optim`` optimizer for the losses (copied per method);
        ``Adam(lr=0.05)`` if ``None``.
    :param int seed: the random seed every method starts from.
    :param kwargs: the model's keyword arguments.
    :returns: a :class:`Comparison`.

    Example::

        >>> import pyro, torch, pyro_lvmle as lv
        >>> model = lv.models.LinearGaussian(dim=2)
        >>> data = model.simulate(50, params={"w": torch.tensor([1.0, -1.0])})
        >>> comparison = lv.compare(
        ...     {"IWAE": lv.TraceIWAE_ELBO(8), "MCEM": lv.MCEM(model, num_samples=10,
        ...                                                           warmup_steps=20, auto=False)},
        ...     model, data, guide=lv.PriorGuide(model), budget={"steps": 4}, eval_every=2)
        >>> [row["steps"] for row in comparison.table()]
        [4, 4]
    """
    if not isinstance(methods, dict) or not methods:
        raise TypeError(f"compare: methods must be a non-empty dict of name -> loss or "
                        f"driver, got {methods!r}")
    unnamed = [name for name in methods if not isinstance(name, str)]
    if unnamed:
        raise TypeError(f"compare: the methods' names must be strings (they label the table, "
                        f"the plot and the files), got {unnamed!r}")
    max_seconds, max_steps, max_evaluations = _budget(budget)
    eval_every = check_int("compare", "eval_every", eval_every, 1)
    seed = check_int("compare", "seed", seed, 0, 2**32 - 1)
    optim = pyro.optim.Adam({"lr": 0.05}) if optim is None else optim
    if not isinstance(optim, pyro.optim.PyroOptim):
        raise TypeError(f"compare: optim must be a pyro.optim optimizer such as "
                        f"pyro.optim.Adam({{'lr': 0.05}}), got {optim!r}")
    evaluation = _evaluator(evaluate, model, args, kwargs)
    names = list(program_params(model, *args, **kwargs))  # creates them at their start
    _warm_up()
    start = copy.deepcopy(pyro.get_param_store().get_state())
    try:
        records, errors, interrupted = _run_methods(
            methods, model, args, kwargs, guide, optim, evaluation, names, start, seed,
            eval_every, (max_seconds, max_steps, max_evaluations))
    finally:  # whatever happened, the param store holds the starting values again
        pyro.get_param_store().set_state(start)
    info = {"budget": budget, "eval_every": eval_every, "seed": seed, "interrupted": interrupted,
            "evaluation": evaluate if isinstance(evaluate, str) else
            "log p(x)" if isinstance(evaluate, dict) else getattr(evaluate, "__name__",
                                                                   "evaluation")}
    if isinstance(evaluate, dict):
        info["evaluation_settings"] = {k: v for k, v in evaluate.items()
                                       if isinstance(v, (int, float, str))}
    if isinstance(evaluate, str):
        info["evaluation"] = "log p(x)"
    return Comparison(records, errors, info)


def _run_methods(methods, model, args, kwargs, guide, optim, evaluation, names, start, seed,
                 eval_every, limits):
    """Every method from ``start``: ``(records, errors, interrupted)``. A method's error of
    any kind is recorded and the next method runs; an interruption ends the loop."""
    max_seconds, max_steps, max_evaluations = limits
    pyro.get_param_store().set_state(copy.deepcopy(start))
    first = _first_value(evaluation)
    records, errors, interrupted = {}, {}, None
    for name, method in methods.items():
        pyro.get_param_store().set_state(copy.deepcopy(start))
        pyro.set_rng_seed(seed)
        rows, elapsed, step = [], 0.0, 0
        counted = CountedModel(model)
        try:
            run = _stepper(method, counted, guide, optim)
            rows.append({"step": 0, "seconds": 0.0, "model_evaluations": 0,
                         "value": first, "params": _constrained_params(names)})
            while (elapsed < max_seconds and step < max_steps
                   and counted.calls < max_evaluations):
                calls, tic = counted.calls, time.perf_counter()
                run(*args, **kwargs)
                elapsed += time.perf_counter() - tic
                step += 1
                if counted.calls == calls and max_evaluations < math.inf:
                    raise ValueError(f"compare: a step of {name!r} ran no model evaluation "
                                     "that could be counted (a driver whose sampler was set "
                                     "up with the model before compare, or a compiled loss "
                                     "such as jit_compile=True, which replays a graph instead "
                                     "of running the model); pass a fresh driver, or a "
                                     "budget in seconds or steps")
                done = elapsed >= max_seconds or step >= max_steps \
                    or counted.calls >= max_evaluations
                if step % eval_every == 0 or done:
                    rows.append({"step": step, "seconds": elapsed,
                                 "model_evaluations": counted.calls, "value": evaluation(),
                                 "params": _constrained_params(names)})
        except Exception as error:  # a method's fault of any kind; the others still run
            message = str(error).splitlines()[0] if str(error) else repr(error)
            errors[name] = f"{type(error).__name__}: {message}"
            continue
        except KeyboardInterrupt:  # keep what was recorded; the other methods do not run
            if rows:
                records[name] = rows
            interrupted = name
            break
        records[name] = rows
    return records, errors, interrupted
