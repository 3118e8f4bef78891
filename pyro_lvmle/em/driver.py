"""The protocol every EM-style driver follows: ``step``, ``run``, ``History``, and an exact
``state_dict``.

A driver owns a Pyro model's parameters (those in Pyro's param store that the model reads)
and moves them by its own rule, one :meth:`Driver.step` at a time, like ``SVI.step``.
A step that raises (a ``KeyboardInterrupt`` included) puts the driver back where it was
before the step, exactly: parameters, optimizer, chains and random number generator.
:meth:`Driver.run` loops with a progress bar, records a :class:`History`, and offers several
starts (``num_restarts``), keeping the best by the driver's own objective.
"""

from __future__ import annotations

import time
import warnings

import pyro
import torch
from tqdm.auto import tqdm

from .._checks import check_callable, check_int
from ..traces.normalization import check_normalized
from ..traces.params import assign_params, program_params
from .convergence import check_convergence
from .history import History
from .ranks import OneProcess, RankFailure, RankSum
from .restarts import monte_carlo_objective, run_restarts
from .state import (
    STATE_KIND,
    STATE_VERSION,
    check_param_shapes,
    check_state,
    clone_state,
    rng_state,
    set_rng_state,
    truncate_history,
)

#: a mean acceptance rate below this means the chains did not move (warned about)
FROZEN_ACCEPT = 1e-3

__all__ = ["Driver"]


class Driver:
    """Base class of the drivers (:class:`~pyro_lvmle.em.MCEM`, :class:`~pyro_lvmle.em.SAEM`,
    :class:`~pyro_lvmle.em.VariationalEM`, :class:`~pyro_lvmle.em.ExactEM`).

    Subclasses implement ``_step(args, kwargs) -> dict`` (one iteration, returning its
    metrics), ``restart_objective(*args, **kwargs)`` (the number :meth:`run` ranks restarts
    by) and, when they keep state beyond the parameters, ``_extra_state()`` and
    ``_load_extra_state(state)``; :meth:`load_state_dict` checks a loaded ``"driver"`` entry
    against the structure of ``_extra_state()``.

    :param model: the Pyro model whose ``pyro.param`` sites are estimated.
    :param record_params: record parameter values in the :class:`History` each step: ``True``
        (those with at most 1000 elements), ``False``, or a list of names.
    :param ranks: a :class:`~pyro_lvmle.em.ranks.RankSum` for a data-parallel run (each
        process holds a shard of the data; the driver's sums over data are reduced across
        processes, so every process takes the same steps and records the same history but
        for the ``time`` column, its own), or ``None`` for one process.

    :ivar int iteration: completed steps.
    :ivar History history: the record of every completed step.
    :ivar bool converged: set by drivers with a stopping rule; :meth:`run` then stops.
    """

    #: metric shown in the progress bar
    progress_metric: str | None = None
    #: whether a state's ``params`` may hold values of parameters other than the model's
    _params_beyond_model = False

    def __init__(self, model, *, record_params=True, ranks=None):
        check_callable(type(self).__name__, "model", model, "a callable Pyro model")
        if not isinstance(record_params, (bool, list, tuple)) or (
                isinstance(record_params, (list, tuple))
                and not all(isinstance(n, str) for n in record_params)):
            raise TypeError(f"{type(self).__name__}: record_params must be True, False or a "
                            f"list of parameter names, got {record_params!r}")
        if ranks is not None and not isinstance(ranks, RankSum):
            raise TypeError(f"{type(self).__name__}: ranks must be None or a "
                            f"lv.parallel.RankSum(), got {ranks!r}")
        self.model = model
        self.record_params = record_params
        #: sums over the processes of a data-parallel run (:class:`~pyro_lvmle.em.ranks.RankSum`)
        self.ranks = OneProcess() if ranks is None else ranks
        self.iteration = 0
        self.history = History()
        self.converged = False
        self._elapsed = 0.0
        self._param_names: list[str] | None = None
        self._pending: dict[str, torch.Tensor] | None = None
        self._warned_frozen = False
        #: the run kept by :meth:`run` with ``num_restarts`` (``None`` without restarts)
        self.best_restart: int | None = None
        #: the :func:`~pyro_lvmle.em.convergence.convergence_report` of the last :meth:`run`
        self.convergence = None

    # ---------------------------------------------------------------------- parameters
    def model_params(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        """The model's parameters, ``{name: unconstrained leaf}``; the first call runs the
        model once to find them (and applies values loaded by :meth:`load_state_dict`).

        :param args: the model's arguments.
        :param kwargs: its keyword arguments.
        """
        if self._param_names is None:
            names = list(program_params(self.model, *args, **kwargs))
            if not names:
                raise ValueError(f"{type(self).__name__}: the model reads no pyro.param: "
                                 "there is nothing to estimate")
            if isinstance(self.record_params, (list, tuple)):
                unknown = [n for n in self.record_params if n not in names]
                if unknown:
                    raise ValueError(f"{type(self).__name__}: record_params names {unknown}, "
                                     f"which the model does not read; its parameters are "
                                     f"{names}")
            self._param_names = names
        leaves = dict(pyro.get_param_store().named_parameters())
        missing = [n for n in self._param_names if n not in leaves]
        if missing:  # the store was cleared, or a state was loaded: let the model create them
            reads = list(program_params(self.model, *args, **kwargs))
            leaves = dict(pyro.get_param_store().named_parameters())
            unknown = [n for n in self._param_names if n not in reads]
            if unknown:
                raise ValueError(f"{type(self).__name__}: the loaded state holds parameters "
                                 f"{unknown} that the model does not read (it reads {reads}): "
                                 "the state was saved from another model")
        self._apply_pending()
        return {n: leaves[n] for n in self._param_names}

    def _apply_pending(self) -> None:
        """Copy loaded parameter values into the store's leaves that exist by now."""
        if not self._pending:
            self._pending = None
            return
        leaves = dict(pyro.get_param_store().named_parameters())
        ready = [n for n in self._pending if n in leaves]
        check_param_shapes(type(self).__name__, {n: self._pending[n] for n in ready})
        with torch.no_grad():
            for name in ready:
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

        If the iteration raises (a ``KeyboardInterrupt`` included), the driver is put back
        exactly as it was before it: parameters (those the model created in this step at
        their initial values), optimizer, chains, counters and torch's random number
        generator; :attr:`history` is untouched; the exception propagates.

        :param args: the model's arguments (data).
        :param kwargs: its keyword arguments.
        """
        rng = rng_state()
        fresh = self._param_names is None
        checkpoint = None
        try:
            if fresh:  # an undirected model's log p(x) misses log Z: no EM applies
                check_normalized(self.model, args, kwargs, where=type(self).__name__)
            self._discover(args, kwargs)  # first step: the parameters exist from here on
            if fresh and self.iteration == 0:  # every rank starts from rank 0's parameters
                self.ranks.broadcast(self.model_params(*args, **kwargs).values())
            checkpoint = clone_state(self.state_dict(with_history=False))
            start = time.perf_counter()
            metrics = self._step(args, kwargs)
        except BaseException as error:
            if checkpoint is not None:
                self._restore(checkpoint)
            set_rng_state(rng)
            if fresh:
                self._forget_names()
            if isinstance(error, Exception) and not isinstance(error, RankFailure):
                self.ranks.fail(error)  # the other ranks raise instead of waiting for this one
            raise
        self._elapsed += time.perf_counter() - start
        self.iteration += 1
        self.history.append(self.iteration, self._elapsed, metrics, self._recorded())
        self._check_moving(metrics)
        return metrics

    def _discover(self, args, kwargs) -> None:
        """Create and list the parameters a step will move (the model's; drivers with more
        add theirs), without touching the random number generator."""
        self.model_params(*args, **kwargs)

    def _forget_names(self) -> None:
        """Undo :meth:`_discover` (after a failed first step)."""
        self._param_names = None

    def _check_moving(self, metrics) -> None:
        accept = metrics.get("accept_prob")
        if accept is None or self._warned_frozen or not accept < FROZEN_ACCEPT:
            return
        self._warned_frozen = True
        warnings.warn(
            f"{type(self).__name__}: the Markov chains of the E-step accepted almost no "
            f"proposal in step {self.iteration} (mean acceptance rate {accept:.2g}): they did "
            "not move, so the estimates cannot improve. Give the sampler a longer warm-up "
            "(warmup_steps) to adapt its step size, or a smaller initial step size "
            "(kernel_options={'step_size': ...})", UserWarning, stacklevel=3)

    def restart_objective(self, *args, **kwargs) -> float:
        """The driver's own objective at the current parameters (higher is better), by which
        :meth:`run` keeps the best of several restarts: by default the Monte Carlo Q-function
        :math:`\\frac1m \\sum_j \\log p(x, z_j; \\theta)` at the chains' last kept draws.

        :param args: the model's arguments.
        :param kwargs: its keyword arguments.
        """
        return monte_carlo_objective(self, args, kwargs)

    def run(self, *args, num_steps: int = 100, progress: bool = True, callback=None,
            num_restarts: int = 1, init_params=None, **kwargs) -> History:
        """Run up to ``num_steps`` steps (fewer if the driver's stopping rule fires).

        If a step raises (a ``KeyboardInterrupt`` included), the driver is put back to the
        end of the last completed step, exactly, and the exception propagates:
        :attr:`history` keeps every completed step and :meth:`run` can be called again.

        **Restarts.** EM finds a local maximum. With ``num_restarts > 1`` (a driver that has
        not run yet), the driver runs from ``num_restarts`` starts, each up to ``num_steps``
        steps, as scikit-learn's ``n_init`` does, and keeps the run whose
        :meth:`restart_objective` is highest: the exact log-likelihood for
        :class:`~pyro_lvmle.em.ExactEM`, the ELBO (minus the loss, one evaluation) for
        :class:`~pyro_lvmle.em.VariationalEM`, the Monte Carlo Q-function at the last draws
        for :class:`~pyro_lvmle.em.MCEM` and :class:`~pyro_lvmle.em.SAEM`. Every run is in
        :attr:`history`, in order, with the metric ``restart`` (its index from 0) on each
        record and ``restart_objective`` on each run's last; :attr:`best_restart` is the kept
        one, and the driver continues from its end. Each start is ``init_params(restart,
        *args, **kwargs) -> {name: constrained value}`` if given; otherwise restart 0 starts
        from the parameters as they are and later ones from the model's initial values
        (parameters are deleted from Pyro's param store and created again), which differ only
        if the model draws them at random (:class:`~pyro_lvmle.models.GaussianMixture` does,
        from the data; a warning says when two starts coincide). Interrupted, restarts keep
        what they completed: the driver is left at the best run so far (the interrupted one
        included, at its last completed step), with every completed step in
        :attr:`history`; ``run`` (without restarts) continues it.

        :param args: the model's arguments (data).
        :param int num_steps: the most steps to run (per restart).
        :param bool progress: show a tqdm progress bar (notebooks and terminals).
        :param callback: called as ``callback(driver, metrics)`` after each step; a returned
            dict is added to the step's metrics (its time is not counted).
        :param int num_restarts: independent starts; the best run is kept.
        :param init_params: optional ``init_params(restart, *args, **kwargs) -> dict`` of
            constrained starting values for each restart.
        :param kwargs: the model's keyword arguments.
        :returns: :attr:`history`.

        **Diagnosis.** At the end, :func:`~pyro_lvmle.em.convergence.check_convergence`
        looks at the history (the objective's last increases and their Monte Carlo error, the
        estimated fraction of missing information, a trend in the last iterates, a burn-in
        not finished) and warns with a :class:`~pyro_lvmle.em.convergence.ConvergenceWarning`
        saying what to do if the run looks unconverged; the report is kept in
        :attr:`convergence`.
        """
        where = f"{type(self).__name__}.run"
        check_int(where, "num_steps", num_steps, low=1)
        check_int(where, "num_restarts", num_restarts, low=1)
        if callback is not None:
            check_callable(where, "callback", callback, "callable as callback(driver, metrics)")
        if init_params is not None:
            check_callable(where, "init_params", init_params,
                           "callable as init_params(restart, *args, **kwargs) -> dict")
        if num_restarts > 1 and self.ranks.distributed:
            raise ValueError(f"{where}: restarts are not data-parallel (each rank would start "
                             "from its own shard's initial values); run num_restarts=1")
        if num_restarts == 1 and init_params is None:
            history = self._run(args, kwargs, num_steps, progress, callback)
        else:
            history = run_restarts(self, args, kwargs, num_steps, progress, callback,
                                   num_restarts, init_params)
        self.convergence = check_convergence(self)
        return history

    def _run(self, args, kwargs, num_steps, progress, callback, restart=None) -> History:
        desc = type(self).__name__ if restart is None else \
            f"{type(self).__name__} (restart {restart})"
        bar = tqdm(total=num_steps, desc=desc, disable=not progress)
        try:
            for _ in range(num_steps):
                metrics = self.step(*args, **kwargs)
                if restart is not None:
                    self.history.update({"restart": restart})
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
        ``torch.load(weights_only=True)``. Tagged with ``kind``, ``version`` and the driver's
        class, which :meth:`load_state_dict` checks.

        :param bool with_history: include :attr:`history`.
        """
        leaves = dict(pyro.get_param_store().named_parameters())
        params = {n: leaves[n].detach().clone() for n in self._param_names or ()
                  if n in leaves}
        if self._pending is not None:
            params = {**params, **{n: v.clone() for n, v in self._pending.items()}}
        rng = rng_state()
        state = {"kind": STATE_KIND, "version": STATE_VERSION, "driver_class": type(self).__name__,
                 "iteration": self.iteration, "elapsed": self._elapsed,
                 "converged": self.converged, "best_restart": self.best_restart,
                 "param_names": list(self._param_names or ()),
                 "params": params, "rng": rng,
                 # a copy: a state kept in memory must not follow the run (optimizer moments
                 # and chain flags are updated in place)
                 "driver": clone_state(self._extra_state())}
        if with_history:
            state["history"] = self.history.to_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`; parameters not yet in Pyro's param store are set
        when the model first runs.

        The state is checked before anything changes: a state of another driver class, of a
        model with other parameter names or shapes, with a missing or corrupted entry, raises a
        ``ValueError`` saying what does not match, and leaves the driver as it was.

        :param dict state: as :meth:`state_dict` returned it.
        """
        self._check_state(state)
        self._restore(state)
        if "history" in state:
            self.history = History.from_dict(state["history"])
        else:
            self.history = truncate_history(self.history, self.iteration)

    def _restore(self, state: dict) -> None:
        """Set everything but the history from a (checked) state."""
        self.iteration = int(state["iteration"])
        self._elapsed = float(state["elapsed"])
        self.converged = bool(state["converged"])
        self.best_restart = state.get("best_restart")
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
        self._load_extra_state(state["driver"])

    def _check_state(self, state) -> None:
        """Raise a ``ValueError`` naming what in ``state`` does not fit this driver (see
        :func:`~pyro_lvmle.em.state.check_state`); subclasses check their own entries too."""
        check_state(self, state)

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
