"""The protocol every EM-style driver follows: ``step``, ``run``, ``History``, and an exact
``state_dict``.

A driver owns a Pyro model's parameters (those in Pyro's param store that the model reads)
and moves them by its own rule, one :meth:`Driver.step` at a time, like ``SVI.step``.
:meth:`Driver.run` loops with a progress bar, records a :class:`History`, and on an
interruption puts the driver back at the end of the last completed step.
"""

from __future__ import annotations

import time

import pyro
import torch
from tqdm.auto import tqdm

from ..traces.params import assign_params, program_params
from .history import History

__all__ = ["Driver"]


class Driver:
    """Base class of the drivers (:class:`~pyro_lvmle.em.MCEM`, :class:`~pyro_lvmle.em.SAEM`,
    :class:`~pyro_lvmle.em.VariationalEM`, :class:`~pyro_lvmle.em.ExactEM`).

    Subclasses implement ``_step(args, kwargs) -> dict`` (one iteration, returning its
    metrics) and, when they keep state beyond the parameters, ``_extra_state()`` and
    ``_load_extra_state(state)``.

    :param model: the Pyro model whose ``pyro.param`` sites are estimated.
    :param record_params: record parameter values in the :class:`History` each step: ``True``
        (those with at most 1000 elements), ``False``, or a list of names.

    :ivar int iteration: completed steps.
    :ivar History history: the record of every completed step.
    :ivar bool converged: set by drivers with a stopping rule; :meth:`run` then stops.
    """

    #: metric shown in the progress bar
    progress_metric: str | None = None

    def __init__(self, model, *, record_params=True):
        if not callable(model):
            raise TypeError(f"{type(self).__name__}: model must be a callable Pyro model, got "
                            f"{type(model).__name__}")
        if not isinstance(record_params, (bool, list, tuple)):
            raise TypeError(f"{type(self).__name__}: record_params must be a bool or a list of "
                            f"names, got {type(record_params).__name__}")
        self.model = model
        self.record_params = record_params
        self.iteration = 0
        self.history = History()
        self.converged = False
        self._elapsed = 0.0
        self._param_names: list[str] | None = None
        self._pending: dict[str, torch.Tensor] | None = None

    # ---------------------------------------------------------------------- parameters
    def model_params(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        """The model's parameters, ``{name: unconstrained leaf}``; the first call runs the
        model once to find them (and applies values loaded by :meth:`load_state_dict`).

        :param args: the model's arguments.
        :param kwargs: its keyword arguments.
        """
        if self._param_names is None:
            self._param_names = list(program_params(self.model, *args, **kwargs))
            if not self._param_names:
                raise ValueError(f"{type(self).__name__}: the model reads no pyro.param: "
                                 "there is nothing to estimate")
        leaves = dict(pyro.get_param_store().named_parameters())
        missing = [n for n in self._param_names if n not in leaves]
        if missing:  # the store was cleared: let the model create them again
            program_params(self.model, *args, **kwargs)
            leaves = dict(pyro.get_param_store().named_parameters())
        self._apply_pending()
        return {n: leaves[n] for n in self._param_names}

    def _apply_pending(self) -> None:
        """Copy loaded parameter values into the store's leaves that exist by now."""
        if not self._pending:
            self._pending = None
            return
        leaves = dict(pyro.get_param_store().named_parameters())
        with torch.no_grad():
            for name in [n for n in self._pending if n in leaves]:
                leaves[name].copy_(self._pending.pop(name))
        self._pending = self._pending or None

    def constrained_params(self) -> dict[str, torch.Tensor]:
        """The model's current (constrained) parameter values, detached; empty before the
        first step."""
        store = pyro.get_param_store()
        return {n: store[n].detach() for n in self._param_names or () if n in store}

    def set_params(self, values: dict[str, torch.Tensor]) -> None:
        """Set model parameters to constrained values, in place.

        :param dict values: ``{name: value}``.
        """
        assign_params(values)

    # ---------------------------------------------------------------------- the loop
    def _step(self, args, kwargs) -> dict:
        raise NotImplementedError

    def step(self, *args, **kwargs) -> dict:
        """One iteration; records it in :attr:`history` and returns its metrics.

        :param args: the model's arguments (data).
        :param kwargs: its keyword arguments.
        """
        start = time.perf_counter()
        metrics = self._step(args, kwargs)
        self._elapsed += time.perf_counter() - start
        self.iteration += 1
        self.history.append(self.iteration, self._elapsed, metrics, self._recorded())
        return metrics

    def run(self, *args, num_steps: int = 100, progress: bool = True, callback=None,
            **kwargs) -> History:
        """Run up to ``num_steps`` steps (fewer if the driver's stopping rule fires).

        If a step raises (a ``KeyboardInterrupt`` included), the driver is put back to the
        end of the last completed step, exactly, and the exception propagates:
        :attr:`history` keeps every completed step and :meth:`run` can be called again.

        :param args: the model's arguments (data).
        :param int num_steps: the most steps to run.
        :param bool progress: show a tqdm progress bar (notebooks and terminals).
        :param callback: called as ``callback(driver, metrics)`` after each step; a returned
            dict is added to the step's metrics (its time is not counted).
        :param kwargs: the model's keyword arguments.
        :returns: :attr:`history`.
        """
        if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
            raise ValueError(f"{type(self).__name__}.run: num_steps must be an int >= 1, got "
                             f"{num_steps!r}")
        if callback is not None and not callable(callback):
            raise TypeError(f"{type(self).__name__}.run: callback must be callable")
        bar = tqdm(total=num_steps, desc=type(self).__name__, disable=not progress)
        try:
            for _ in range(num_steps):
                checkpoint = _clone(self.state_dict(with_history=False))
                try:
                    metrics = self.step(*args, **kwargs)
                except BaseException:
                    self.load_state_dict(checkpoint)
                    raise
                if callback is not None:
                    extra = callback(self, metrics)
                    if extra:
                        self.history.update(extra)
                        metrics = {**metrics, **extra}
                bar.update(1)
                if self.progress_metric in metrics:
                    bar.set_postfix({self.progress_metric: f"{metrics[self.progress_metric]:.4g}"})
                if self.converged:
                    break
        finally:
            bar.close()
        return self.history

    # ------------------------------------------------------------------- state (exact)
    def state_dict(self, with_history: bool = True) -> dict:
        """Everything needed to continue exactly: iteration, parameters (unconstrained),
        the driver's own state (chains, adaptation, optimizer, statistics), the torch RNG
        state and the history; tensors and plain Python values only, for ``torch.save`` and
        ``torch.load(weights_only=True)``.

        :param bool with_history: include :attr:`history`.
        """
        leaves = dict(pyro.get_param_store().named_parameters())
        params = {n: leaves[n].detach().clone() for n in self._param_names or ()
                  if n in leaves}
        if self._pending is not None:
            params = {**params, **self._pending}
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        state = {"iteration": self.iteration, "elapsed": self._elapsed,
                 "converged": self.converged, "param_names": list(self._param_names or ()),
                 "params": params, "rng": rng, "driver": self._extra_state()}
        if with_history:
            state["history"] = self.history.to_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`; parameters not yet in Pyro's param store are set
        when the model first runs.

        :param dict state: as :meth:`state_dict` returned it.
        """
        self.iteration = int(state["iteration"])
        self._elapsed = float(state["elapsed"])
        self.converged = bool(state["converged"])
        self._param_names = list(state["param_names"]) or None
        leaves = dict(pyro.get_param_store().named_parameters())
        if all(n in leaves for n in state["params"]):
            with torch.no_grad():
                for name, value in state["params"].items():
                    leaves[name].copy_(value)
            self._pending = None
        else:
            self._pending = {n: v.clone() for n, v in state["params"].items()}
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        if "history" in state:
            self.history = History.from_dict(state["history"])
        else:
            self.history = _truncate(self.history, self.iteration)
        self._load_extra_state(state["driver"])

    def _extra_state(self) -> dict:
        return {}

    def _load_extra_state(self, state: dict) -> None:
        pass

    def _recorded(self) -> dict[str, torch.Tensor]:
        if self.record_params is False:
            return {}
        values = self.constrained_params()
        if self.record_params is True:
            return {n: v for n, v in values.items() if v.numel() <= 1000}
        return {n: values[n] for n in self.record_params if n in values}


def _truncate(history: History, num_steps: int) -> History:
    """The history's first records up to iteration ``num_steps``."""
    state = history.to_dict()
    keep = sum(1 for s in state["step"] if s <= num_steps)
    return History.from_dict({
        "step": state["step"][:keep], "time": state["time"][:keep],
        "metrics": {n: col[:keep] for n, col in state["metrics"].items()},
        "params": {n: v[:keep] for n, v in state["params"].items()},
    })


def _clone(obj):
    """A deep copy of nested dicts/lists/tuples of tensors and plain values."""
    if torch.is_tensor(obj):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_clone(v) for v in obj)
    return obj
