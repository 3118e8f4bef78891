"""Which parameters a Pyro program touches: the unconstrained leaves, by name."""

from __future__ import annotations

import pyro.poutine as poutine
import torch

from .improper import FlatLatents, data_device

__all__ = [
    "accumulate_grads",
    "assign_params",
    "call_with_params",
    "enumerated_log_marginal",
    "has_only_enumerable_latents",
    "nonfinite_params",
    "program_params",
]


def call_with_params(fn, *args, **kwargs) -> tuple[object, dict[str, torch.Tensor]]:
    """Call ``fn`` and return its result with the parameters it touched.

    :param fn: any callable running Pyro programs, e.g. ``lambda: loss.differentiable_loss(
        model, guide, data)``.
    :returns: ``(result, {name: unconstrained leaf tensor})``, the leaves being those an
        optimizer of ``pyro.infer.SVI`` would update.
    """
    with poutine.trace(param_only=True) as capture:
        result = fn(*args, **kwargs)
    params = {name: site["value"].unconstrained() for name, site in capture.trace.nodes.items()}
    return result, params


def accumulate_grads(loss: torch.Tensor, params: dict[str, torch.Tensor],
                     retain_graph: bool | None = None) -> list[str]:
    """Add the gradient of ``loss`` to each parameter's ``.grad``, only if every gradient is
    finite, so a NaN or infinite value never reaches ``.grad``.

    :param torch.Tensor loss: a scalar.
    :param dict params: ``{name: unconstrained leaf}``, as :func:`call_with_params` gives them.
    :param bool retain_graph: passed to :func:`torch.autograd.grad`.
    :returns: the names of the parameters whose gradient is not finite (nothing was
        accumulated then); ``[]`` otherwise.
    """
    names = [name for name, leaf in params.items() if leaf.requires_grad]
    if not (loss.requires_grad and names):
        return []
    grads = torch.autograd.grad(loss, [params[n] for n in names], retain_graph=retain_graph,
                                allow_unused=True)
    grads = {n: g for n, g in zip(names, grads, strict=True) if g is not None}
    if not _all_finite(grads.values()):
        return [n for n, g in grads.items() if not torch.isfinite(g).all()]
    for name, grad in grads.items():
        leaf = params[name]
        leaf.grad = grad if leaf.grad is None else leaf.grad + grad
    return []


def _all_finite(tensors) -> bool:
    """Whether every tensor is finite, with one device synchronization per device."""
    flags: dict = {}
    for tensor in tensors:
        flags.setdefault(tensor.device, []).append(torch.isfinite(tensor).all())
    return all(bool(torch.stack(group).all()) for group in flags.values())


def program_params(fn, *args, **kwargs) -> dict[str, torch.Tensor]:
    """The parameters a Pyro program (a model or a guide) creates or reads, by name: runs it
    once on the arguments, its sample sites hidden from outer handlers, and leaves torch's
    random number generators as they were.

    :param fn: the model or guide.
    :returns: ``{name: unconstrained leaf}`` in the order the program reads them.
    """
    devices = _cuda_devices()
    with torch.random.fork_rng(devices=devices):  # leave the RNG as it was: resumable runs
        return call_with_params(poutine.block(FlatLatents(data_device(args, kwargs))(fn),
                                              hide_types=["sample"]), *args, **kwargs)[1]


def _cuda_devices() -> list[int]:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return list(range(torch.cuda.device_count()))
    return []


def assign_params(values: dict[str, torch.Tensor]) -> None:
    """Set parameters of Pyro's param store to constrained values, in place (optimizers
    holding the leaves keep them).

    :param dict values: ``{name: constrained value}`` of existing parameters.
    :raises ValueError: for a name not in the store, a shape that differs, or a value outside
        the parameter's constraint.
    """
    import pyro
    from torch.distributions import transform_to

    store = pyro.get_param_store()
    for name, value in values.items():
        if name not in store:
            raise ValueError(f"no parameter {name!r} in Pyro's param store; run the model "
                             "once first")
        leaf = dict(store.named_parameters())[name]
        constraint = store._constraints[name]
        value = torch.as_tensor(value, dtype=leaf.dtype, device=leaf.device)
        if value.shape != store[name].shape:
            raise ValueError(f"parameter {name!r} has shape {tuple(store[name].shape)}, got a "
                             f"value of shape {tuple(value.shape)}")
        if not bool(constraint.check(value).all()):
            raise ValueError(f"the value given to parameter {name!r} is outside its "
                             f"constraint {constraint}")
        with torch.no_grad():
            leaf.copy_(transform_to(constraint).inv(value))


def enumerated_log_marginal(model, *args, max_plate_nesting: int = 1, **kwargs) -> torch.Tensor:
    """:math:`\\log p(x)` of a model whose every latent site is enumerable, by Pyro's
    enumeration (``TraceEnum_ELBO`` with an empty guide), differentiable in the parameters.

    :param model: a Pyro model with ``infer={"enumerate": "parallel"}`` on its latent sites.
    :param int max_plate_nesting: the model's deepest plate nesting.
    """
    from pyro.infer import TraceEnum_ELBO

    elbo = TraceEnum_ELBO(max_plate_nesting=max_plate_nesting)
    return -elbo.differentiable_loss(model, lambda *a, **k: None, *args, **kwargs)


def has_only_enumerable_latents(model, *args, **kwargs) -> bool:
    """Whether the model has latent sites and every one is marked for parallel enumeration.

    :param model: a Pyro model, run once (hidden from outer handlers) on the arguments.
    """
    with poutine.block(), FlatLatents(data_device(args, kwargs)):
        trace = poutine.trace(model).get_trace(*args, **kwargs)
    latents = [
        site for site in trace.nodes.values()
        if site["type"] == "sample" and not site["is_observed"]
        and type(site["fn"]).__name__ != "_Subsample"
    ]
    return bool(latents) and all(s["infer"].get("enumerate") == "parallel" for s in latents)


def nonfinite_params(model, args, kwargs) -> list[str]:
    """The parameters the model reads that are NaN or infinite, found by running it once
    more as far as it goes (for an error path: a distribution refusing a parameter).

    :param model: a Pyro model.
    :param tuple args: its arguments.
    :param dict kwargs: its keyword arguments.
    """
    with poutine.trace(param_only=True) as capture, torch.no_grad():
        try:
            poutine.block(model, hide_types=["sample"])(*args, **kwargs)
        except Exception:  # noqa: BLE001 - it fails again where it failed: the reads are in
            pass
    return [name for name, site in capture.trace.nodes.items()
            if not bool(torch.isfinite(site["value"]).all())]
