"""Restarts: run a driver from several starts and keep the best run by the driver's own
objective, as scikit-learn's ``n_init`` does (EM finds a local maximum).

:meth:`~pyro_lvmle.em.Driver.run` with ``num_restarts > 1`` or ``init_params`` calls
:func:`run_restarts`; :func:`monte_carlo_objective` is the objective of the drivers with
Markov chains (:class:`~pyro_lvmle.em.MCEM`, :class:`~pyro_lvmle.em.SAEM`):

.. math::

    \\hat Q(\\theta) = \\frac1m \\sum_{j=1}^m \\log p(x, z_j; \\theta),

at the chains' current states :math:`z_1, \\dots, z_m`.
"""

from __future__ import annotations

import math
import warnings

import pyro
import torch

from ..traces.params import _cuda_devices
from .history import History
from .state import clone_state, rng_state

__all__ = ["monte_carlo_objective", "run_restarts"]


def run_restarts(driver, args, kwargs, num_steps, progress, callback, num_restarts,
                 init_params) -> History:
    """Run ``driver`` (which has not run yet; the arguments checked by
    :meth:`~pyro_lvmle.em.Driver.run`) ``num_restarts`` times, each up to ``num_steps``
    steps, and leave it at the end of the run whose ``restart_objective`` is highest.

    Each restart creates its parameters from its own seed (drawn once from the global random
    number generator), so a driver whose steps draw no random numbers
    (:class:`~pyro_lvmle.em.ExactEM`) still gets different random starts; the runs' own draws
    continue the global stream. Restart 0 starts from the parameters as they are, later ones
    from the model's initial values (the parameters are deleted from Pyro's param store and
    created again), or each from ``init_params(restart, *args, **kwargs)`` when given; a
    warning says when two starts coincide. The history holds every run, in order, with the
    metric ``restart`` on each record and ``restart_objective`` on each run's last;
    ``driver.best_restart`` is the kept run. If a run raises (a ``KeyboardInterrupt``), it is
    put back to its last completed step and competes with the runs before it (if it completed
    a step); the driver is left at the best of them, with their records, and the error
    propagates.

    :param driver: the :class:`~pyro_lvmle.em.Driver`.
    :param tuple args: the model's arguments.
    :param dict kwargs: its keyword arguments.
    :param int num_steps: the most steps per run.
    :param bool progress: show a progress bar.
    :param callback: ``callback(driver, metrics)`` or ``None``, as in
        :meth:`~pyro_lvmle.em.Driver.run`.
    :param int num_restarts: independent starts.
    :param init_params: ``None`` or ``init_params(restart, *args, **kwargs) -> dict`` of
        constrained starting values.
    :returns: the driver's history, every run included.
    :raises ValueError: for a driver that has already run steps.

    Example::

        >>> run_restarts(em, (data,), {}, 100, False, None, 5, None)  # doctest: +SKIP
    """
    where = f"{type(driver).__name__}.run"
    if driver.iteration != 0:
        raise ValueError(f"{where}: num_restarts/init_params start the fit over, but this "
                         f"driver has already run {driver.iteration} steps; build a new "
                         "driver (or load a fresh state) to use restarts")
    seed = int(torch.randint(2**62, ()))
    records = History()
    best = None  # (objective, restart, state)
    starts = []
    fresh = None  # the state before the first run's first step, parameters created
    for restart in range(num_restarts):
        if restart > 0:
            state = fresh
            if init_params is None:  # the model creates them again from its initial values
                _delete_params(driver)
                state = {**fresh, "params": {}, "param_names": []}
            driver._restore({**state, "rng": rng_state()})
        driver.history = History()
        with torch.random.fork_rng(devices=_cuda_devices()):
            torch.manual_seed(seed + restart)
            driver._discover(args, kwargs)
        if fresh is None:
            fresh = clone_state(driver.state_dict(with_history=False))
        if init_params is not None:
            driver.set_params(init_params(restart, *args, **kwargs))
        start = {n: v.clone() for n, v in driver.constrained_params().items()}
        if any(all(torch.equal(start[n], other[n]) for n in start) for other in starts):
            warnings.warn(f"{where}: restart {restart} starts from the "
                          "same parameter values as an earlier one (the model's initial "
                          "values are not random): pass init_params to give each restart "
                          "its own start", UserWarning, stacklevel=3)
        starts.append(start)
        try:
            driver._run(args, kwargs, num_steps, progress, callback, restart=restart)
        except BaseException:
            # an interrupted run (put back to its last completed step) still competes if it
            # completed a step; the completed runs are kept, and the error propagates
            if driver.history:
                best = _score(driver, args, kwargs, restart, records, best)
            _keep(driver, best, records)
            raise
        best = _score(driver, args, kwargs, restart, records, best)
    _keep(driver, best, records)
    return driver.history


def _score(driver, args, kwargs, restart, records, best):
    """Record the run that just ended in ``records`` with its objective; the better of it
    and ``best``, as ``(objective, restart, state)``."""
    objective = float(driver.restart_objective(*args, **kwargs))
    if driver.history:
        driver.history.update({"restart_objective": objective})
    records.extend(driver.history)
    if best is None or objective > best[0] or (math.isnan(best[0]) and not math.isnan(objective)):
        best = (objective, restart, clone_state(driver.state_dict(with_history=False)))
    return best


def _keep(driver, best, records) -> None:
    """Leave the driver at the end of the best run, with every run's records; a driver
    interrupted before any run completed a step is left as it is."""
    if best is None:
        return
    _, kept, state = best
    driver._restore({**state, "rng": rng_state()})
    driver.best_restart = kept
    driver.history = records


def monte_carlo_objective(driver, args, kwargs) -> float:
    """The Monte Carlo Q-function :math:`\\frac1m \\sum_j \\log p(x, z_j; \\theta)` at the
    current parameters and the chains' current states of ``driver.sampler``
    (a :class:`~pyro_lvmle.MCMCGradient`).

    :param driver: a driver with a ``sampler`` that has drawn.
    :param tuple args: the model's arguments.
    :param dict kwargs: its keyword arguments.
    :raises NotImplementedError: for a driver without chains, or before they have drawn.

    Example::

        >>> monte_carlo_objective(mcem, (data,), {})  # doctest: +SKIP
    """
    sampler = getattr(driver, "sampler", None)
    if sampler is None or sampler.chains.step_size is None:
        raise NotImplementedError(f"{type(driver).__name__} has no restart objective")
    from ..traces import Potential

    potential = Potential(driver.model, args, kwargs,
                          max_plate_nesting=sampler.max_plate_nesting)
    # the chains' current states are part of the driver's saved state: a restored run
    # scores as it did when it ended
    with torch.no_grad():
        return potential.log_joint(sampler.chains.gather("position", potential)).mean().item()


def _delete_params(driver) -> None:
    """Delete the driver's parameters from Pyro's param store (the model creates them again
    from its initial values) and forget their names."""
    store = pyro.get_param_store()
    for name in driver._param_names or ():
        if name in store:
            del store[name]
    driver._param_names = None
