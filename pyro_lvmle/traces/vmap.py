"""A :class:`~pyro_lvmle.traces.Potential` evaluated chain by chain under
:func:`torch.func.vmap`, and the automatic choice between that and the chain plate.

The *plate* path runs the model once, with every latent carrying a chain dimension left of the
model's own plates. It is the fast path, but only a model written for batches survives it: one
that indexes a latent plainly (``u[herd]`` for a random effect per group, ``x[:, 0]``) meets
the chain dimension where it expects its own. The *vmap* path conditions the model on one
chain's values, in the one-sample shapes it was written for, computes its log joint, and maps
that over the rows of the position with :func:`torch.func.vmap`:

.. math::

    U(q)_c = -\\log p\\big(x, T(q_c)\\big) - \\log|\\det J_T(q_c)|, \\qquad c = 1, \\dots, C.

Pyro runs under ``vmap`` as under a loop over chains, with the same values and gradients (in
the position and in the ``pyro.param`` leaves), given three things: the params exist before
(the potential's first, plain run creates them), distribution validation is off inside the
transform (its checks are data-dependent Python branches), and nothing is sampled while
evaluating (``randomness="error"``; prior draws use ``randomness="different"``).

:func:`choose_vectorization` evaluates a few prior draws by both paths and keeps the plate path
when it runs and agrees with the vmap path (or, when vmap cannot run the model, with the model
run one chain at a time); otherwise the vmap path.

References:

[1] PyTorch, ``torch.func.vmap``; NumPyro vectorizes chains the same way (``jax.vmap``).
"""

from __future__ import annotations

import warnings
from functools import partial

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer.mcmc.util import TraceEinsumEvaluator

from .params import _cuda_devices
from .plate import plate_energy

__all__ = ["VECTORIZATIONS", "choose_vectorization"]

#: The ways a :class:`~pyro_lvmle.traces.Potential` can evaluate many chains.
VECTORIZATIONS = ("plate", "vmap")

# vmap warns on every call when an op lacks a batching rule; the values are right
_SLOW_BATCHING_WARNING = ".*There is a performance drop because we have not yet implemented"


def _vmap_energy(potential, position: torch.Tensor, jacobian: bool, beta=None) -> torch.Tensor:
    """Energies ``(C,)`` (or ``-log_joint`` without the Jacobian) of positions ``(C, D)``, one
    model run per chain under :func:`torch.func.vmap`; ``beta`` is ``None`` or ``(C,)``, each
    chain's power on the potential's tempered sites.

    :raises ValueError: if the model has enumerated discrete sites: Pyro reads ``.data`` of
        sample values when enumerating and sums them out with a custom ``autograd.Function``,
        neither of which runs under vmap (the plate path sums them out).
    """
    if potential.enumerated:
        raise ValueError(
            f"Potential: vectorization='vmap' cannot sum out the enumerated sites "
            f"{list(potential.enumerated)} (Pyro's enumeration does not run under "
            "torch.func.vmap); use vectorization='plate'"
        )
    energy = partial(_chain_energy, potential, jacobian=jacobian)
    in_dims = (0, None if beta is None else 0)
    with pyro.validation_enabled(False), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_SLOW_BATCHING_WARNING)
        return torch.func.vmap(energy, in_dims=in_dims)(position, beta)


def _chain_energy(potential, q, beta, jacobian):
    """The energy of one chain's flat position ``q`` ``(D,)``, the model in its own shapes."""
    values, log_det = {}, 0.0
    for site in potential.sites:
        unconstrained = q[site.offset:site.offset + site.numel].reshape(site.unconstrained_shape)
        values[site.name] = site.transform(unconstrained)
        log_det = log_det + site.transform.log_abs_det_jacobian(
            unconstrained, values[site.name]).sum()
    model = poutine.condition(potential.model, data=values)
    if potential.enumerated:
        model = poutine.enum(model, first_available_dim=-(potential.max_plate_nesting + 1))
    # the sampler's energies hide everything; the gradient's log joint shows its params
    with poutine.block(expose_types=[] if jacobian else ["param"]):
        trace = poutine.trace(model).get_trace(*potential.args, **potential.kwargs)
    potential._rescale(trace, jacobian, beta)
    # sums the log densities, or contracts the enumerated ones (Pyro's HMC does the same)
    log_joint = TraceEinsumEvaluator(trace, bool(potential.enumerated),
                                     potential.max_plate_nesting).log_prob(trace)
    return -(log_joint + log_det) if jacobian else -log_joint


def _prior_draws(potential, num_chains: int, model=None) -> torch.Tensor:
    """Flat positions ``(num_chains, D)`` drawn from the model's prior (or from ``model``, the
    potential's own conditioned model to start at the data), one model run per chain (under
    :func:`torch.func.vmap` with independent randomness, else in a loop)."""
    model = potential._prior_model if model is None else model

    def draw(_):
        with poutine.block():
            trace = poutine.trace(model).get_trace(*potential.args, **potential.kwargs)
        return torch.cat([site.transform.inv(trace.nodes[site.name]["value"]).reshape(-1)
                          for site in potential.sites])

    with pyro.validation_enabled(False), torch.no_grad():
        try:
            return torch.func.vmap(draw, randomness="different")(torch.empty(num_chains))
        except Exception:  # noqa: BLE001 -- any failure: the loop is always right
            return torch.stack([draw(None) for _ in range(num_chains)])


def choose_vectorization(potential, vectorization: str | None = None,
                         num_checks: int = 3) -> str:
    """``"plate"`` or ``"vmap"``: the given one, or the one that evaluates the potential right.

    :param potential: a :class:`~pyro_lvmle.traces.Potential` (evaluated on the plate path by
        :func:`~pyro_lvmle.traces.plate.plate_energy` too).
    :param str vectorization: ``"plate"``, ``"vmap"`` (taken as is, unchecked) or ``None``.
    :param int num_checks: how many prior draws to compare the paths on.
    :raises ValueError: if neither path evaluates the model's chains right, saying what to
        change in the model.

    Example::

        >>> import pyro, torch, pyro.distributions as dist
        >>> from pyro_lvmle.traces import Potential
        >>> def model(group, y):  # u[group]: written for one sample
        ...     with pyro.plate("groups", 3):
        ...         u = pyro.sample("u", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", len(y)):
        ...         pyro.sample("y", dist.Normal(u[group], 1.0), obs=y)
        >>> group = torch.tensor([0, 0, 1, 2, 2])
        >>> Potential(model, (group, torch.randn(5))).vectorization
        'vmap'
        >>> Potential(model, (group, torch.randn(5)), vectorization="plate").vectorization
        'plate'
    """
    if vectorization is not None:
        if vectorization not in VECTORIZATIONS:
            raise ValueError(f"Potential: vectorization must be one of {VECTORIZATIONS} or "
                             f"None (choose automatically), got {vectorization!r}")
        return vectorization
    with torch.random.fork_rng(devices=_cuda_devices()):  # the check leaves the random stream alone
        # observed sites that are the target may be improper: start those at the data
        draws = _prior_draws(potential, num_checks,
                             potential.model if potential.uncondition else None)
    with torch.no_grad():
        plate, plate_error = _attempt(lambda: _plate(potential, draws))
        mapped, vmap_error = _attempt(lambda: _vmap_energy(potential, draws, True))
        if vmap_error is None:
            reference = mapped
        else:  # the model one chain at a time, as it was written
            with pyro.validation_enabled(False):
                reference, _ = _attempt(lambda: torch.stack(
                    [_chain_energy(potential, q, None, True) for q in draws]))
        if plate_error is None:
            if reference is None or _agree(plate, reference):
                return "plate"
            plate_error = "gives other energies than the model run one chain at a time"
        if vmap_error is None:
            return "vmap"
    raise ValueError(
        f"Potential: cannot evaluate the model for many chains: with a chain plate it "
        f"{plate_error}; under torch.func.vmap it {vmap_error}. Index latents from the right "
        "(u[..., herd], x[..., 0]) and keep .item() and Python branches on latent values "
        "out of the model"
    )


def _plate(potential, draws):
    with pyro.validation_enabled(False):
        return plate_energy(potential, draws, True)


def _attempt(evaluate):
    """``(value, None)``, or ``(None, "raised ...")`` in one line."""
    try:
        return evaluate(), None
    except Exception as error:  # noqa: BLE001 -- whatever the model raises decides the path
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return None, f"raised {type(error).__name__}: {message[:120]}"


def _agree(a, b):
    """Same energies up to rounding in the positions' dtype (non-finite ones alike)."""
    tol = torch.finfo(a.dtype).eps ** 0.5
    return a.shape == b.shape and torch.allclose(a, b, rtol=tol, atol=tol, equal_nan=True)
