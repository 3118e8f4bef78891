"""The M-step every driver shares: maximize an objective over the model's parameters."""

from __future__ import annotations

import copy
import math

import torch
from pyro.optim import PyroOptim

from .._checks import check_int

__all__ = ["check_m_step", "load_optim_state", "maximize", "optim_state"]


def check_m_step(m_step, m_steps, where: str) -> None:
    """Validate a driver's ``m_step`` (``"lbfgs"`` or a ``pyro.optim`` optimizer) and
    ``m_steps`` arguments.

    :param m_step: the optimizer choice.
    :param int m_steps: L-BFGS iterations or optimizer steps per M-step.
    :param str where: the driver's name, for messages.
    """
    if not (m_step == "lbfgs" or isinstance(m_step, PyroOptim)):
        raise TypeError(f"{where}: m_step must be 'lbfgs' or a pyro.optim optimizer such as "
                        f"pyro.optim.Adam({{'lr': 0.01}}), got {m_step!r}")
    check_int(where, "m_steps", m_steps, low=1)


def load_optim_state(optim: PyroOptim, state: dict) -> None:
    """Restore a ``pyro.optim`` optimizer's ``get_state()``, also for parameters it already
    optimizes (``set_state`` alone only reaches parameters it has not seen yet).

    :param optim: the optimizer.
    :param dict state: as ``optim.get_state()`` returned it.
    """
    optim.optim_objs.clear()
    optim.grad_clip.clear()
    optim.set_state(state)


def optim_state(optim: PyroOptim) -> dict:
    """A copy of a ``pyro.optim`` optimizer's state, with what was loaded into it and not yet
    used: ``get_state()`` alone sees only the parameters stepped since :func:`load_optim_state`
    (after a load, or after an interrupted step rolled back, it returned ``{}``, and a run
    resumed from that checkpoint restarted Adam's moments).

    :param optim: the optimizer.
    """
    return copy.deepcopy({**optim._state_waiting_to_be_consumed, **optim.get_state()})


def maximize(objective, params: dict[str, torch.Tensor], m_step="lbfgs", *,
             m_steps: int = 100, tol: float = 1e-9, where: str = "M-step",
             ranks=None, keep_best: bool = False) -> int:
    """Maximize ``objective()`` over the unconstrained parameter leaves, in place.

    With ``"lbfgs"``, :class:`torch.optim.LBFGS` with a strong-Wolfe line search (monotone:
    the objective never decreases) for up to ``m_steps`` iterations, stopping when the
    gradient's largest entry is below ``tol``; trial points where the objective is not finite
    are rejected by the line search. With a ``pyro.optim`` optimizer, ``m_steps`` of its steps;
    with ``keep_best``, the best of the points it visited (the start and the last included),
    so that, as with L-BFGS, the objective never decreases (a generalized EM's M-step).
    With ``ranks`` (a data-parallel run), each evaluation's value and gradient are summed over
    the ranks before the optimizer sees them, so every rank takes the same iterates.

    :param objective: a callable returning a scalar tensor, differentiable in the leaves.
    :param dict params: ``{name: unconstrained leaf}``.
    :param m_step: ``"lbfgs"`` or a ``pyro.optim.PyroOptim``.
    :param int m_steps: iterations.
    :param float tol: L-BFGS's gradient tolerance.
    :param str where: named in errors.
    :param ranks: a :class:`~pyro_lvmle.em.ranks.RankSum`, or ``None`` for one process.
    :param bool keep_best: a ``pyro.optim`` optimizer ends at the best point it visited
        (one more evaluation, at its last point); for a deterministic objective only.
    :returns: the number of objective evaluations.
    :raises ValueError: if the objective or its gradient is not finite at the start.
    """
    leaves = list(params.values())
    evals = [0]

    def loss_and_grad():
        for leaf in leaves:
            leaf.grad = None
        with torch.enable_grad():
            loss = -objective()
            if torch.isfinite(loss):
                loss.backward()
        loss = loss.detach().reshape(1)
        grads = [torch.zeros_like(leaf) if leaf.grad is None else leaf.grad
                 for leaf in leaves]
        if ranks is not None:  # a rank's non-finite value makes the sum non-finite too
            loss, *grads = ranks.sum([loss] + grads)
        first = evals[0] == 0
        evals[0] += 1
        if not torch.isfinite(loss):
            if first:
                raise ValueError(f"{where}: the objective is not finite at the current "
                                 "parameters; check their values and the data")
            return loss.new_tensor(math.inf)  # a trial point the search rejects
        for leaf, grad in zip(leaves, grads, strict=True):
            leaf.grad = grad
        for name, leaf in params.items():
            if not torch.isfinite(leaf.grad).all():
                if first:
                    raise ValueError(f"{where}: the gradient of parameter {name!r} is not "
                                     "finite")
                leaf.grad = torch.zeros_like(leaf)
                return loss.new_tensor(math.inf)
        return loss[0]

    if m_step == "lbfgs":
        optim = torch.optim.LBFGS(leaves, lr=1.0, max_iter=m_steps, tolerance_grad=tol,
                                  tolerance_change=1e-14, line_search_fn="strong_wolfe")
        optim.step(loss_and_grad)
    else:
        best_loss, best = math.inf, None
        for step in range(m_steps + keep_best):
            loss = loss_and_grad()
            if not torch.isfinite(loss):
                raise ValueError(f"{where}: the objective became non-finite; lower the "
                                 "optimizer's learning rate")
            if keep_best and loss < best_loss:
                best_loss, best = loss, [leaf.detach().clone() for leaf in leaves]
            if step < m_steps:
                m_step(leaves)
        if keep_best:  # the best point evaluated (the last one included), never worse
            with torch.no_grad():
                for leaf, value in zip(leaves, best, strict=True):
                    leaf.copy_(value)
    for leaf in leaves:
        leaf.grad = None
    return evals[0]
