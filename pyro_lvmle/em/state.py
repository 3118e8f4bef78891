"""A driver's saved state: its tag, the checks a state passes before it is loaded, and the
snapshot helpers (random number generator, deep copy) that :class:`~pyro_lvmle.em.Driver`'s
``step``, ``run`` and ``state_dict`` share.

:meth:`~pyro_lvmle.em.Driver.load_state_dict` changes nothing until :func:`check_state` has
accepted the whole state: a state of another driver class, of a model with other parameter
names or shapes, of a driver with another ``num_chains``, or with a missing or corrupted
entry raises a ``ValueError`` saying what does not match.
"""

from __future__ import annotations

import numbers

import pyro
import torch

from .._checks import check_int
from .history import History

#: ``state_dict()["kind"]``: what a driver's saved state says it is
STATE_KIND = "pyro_lvmle.Driver"
#: ``state_dict()["version"]``: the layout of the saved state; bumped when it changes
STATE_VERSION = 1

__all__ = ["STATE_KIND", "STATE_VERSION", "check_param_shapes", "check_state", "clone_state",
           "rng_state", "set_rng_state", "truncate_history"]


def check_state(driver, state) -> None:
    """Raise a ``ValueError`` (a ``TypeError`` for a state that is not a dict) naming what in
    ``state`` does not fit ``driver``: the tag (``kind``, ``version``, ``driver_class``), the
    entries and their types, the parameter names and shapes against the model's, the RNG
    state, the structure of the driver's own entry against ``driver._extra_state()``, the
    chains against ``driver.sampler.num_chains`` and the history.

    :param driver: the :class:`~pyro_lvmle.em.Driver` that is to load the state.
    :param state: what :meth:`~pyro_lvmle.em.Driver.state_dict` returned (or ``torch.load``
        of its file).

    Example::

        >>> check_state(driver, driver.state_dict())  # doctest: +SKIP
    """
    name = type(driver).__name__
    where = f"{name}.load_state_dict"
    if not isinstance(state, dict):
        raise TypeError(f"{where}: state must be the dict that state_dict() returned (or "
                        f"torch.load of its file), got {type(state).__name__}")
    if state.get("kind") != STATE_KIND:
        raise ValueError(f"{where}: this is not a driver's saved state (its 'kind' is "
                         f"{state.get('kind')!r}, expected {STATE_KIND!r}); pass what "
                         "Driver.state_dict() returned")
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"{where}: the state has layout version {state.get('version')!r}; "
                         f"this pyro_lvmle reads version {STATE_VERSION}")
    if state.get("driver_class") != name:
        raise ValueError(f"{where}: the state was saved by {state.get('driver_class')!r}, "
                         f"not {name!r}; load it into a {state.get('driver_class')}")
    missing = [k for k in ("iteration", "elapsed", "converged", "param_names", "params",
                           "rng", "driver") if k not in state]
    if missing:
        raise ValueError(f"{where}: the state has no entry {missing}; it is incomplete or "
                         "corrupted")
    try:
        check_int(where, "state['iteration']", state["iteration"], low=0)
    except TypeError as error:
        raise ValueError(str(error)) from None
    for key in ("elapsed", "converged"):
        if isinstance(state[key], bool) and key == "elapsed" or \
                not isinstance(state[key], numbers.Real):
            raise ValueError(f"{where}: state[{key!r}] must be a number, got "
                             f"{state[key]!r}")
    names, params = state["param_names"], state["params"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{where}: state['param_names'] must be a list of names, got "
                         f"{names!r}")
    if not isinstance(params, dict) or not all(torch.is_tensor(v) for v in params.values()):
        raise ValueError(f"{where}: state['params'] must map parameter names to tensors")
    extra = set(params) - set(names) if not driver._params_beyond_model else set()
    if set(names) - set(params) or extra:
        raise ValueError(f"{where}: state['params'] holds {sorted(params)} but "
                         f"state['param_names'] lists {names}; the state is corrupted")
    if driver._param_names is not None and names and set(names) != set(driver._param_names):
        raise ValueError(f"{where}: the state holds parameters {sorted(names)}, but this "
                         f"driver's model has {sorted(driver._param_names)}: it was saved "
                         "from another model")
    check_param_shapes(name, params)
    rng = state["rng"]
    reference = torch.get_rng_state()
    if not isinstance(rng, dict) or not torch.is_tensor(rng.get("torch")) \
            or rng["torch"].dtype != reference.dtype or rng["torch"].shape != reference.shape:
        raise ValueError(f"{where}: state['rng']['torch'] must be a torch RNG state (a "
                         f"uint8 tensor of shape {tuple(reference.shape)}); the state is "
                         "corrupted")
    _check_like(state["driver"], driver._extra_state(), f"{where}: state['driver']")
    chains = state["driver"].get("chains") if isinstance(state["driver"], dict) else None
    sampler = getattr(driver, "sampler", None)
    if chains is not None and sampler is not None:
        _check_chains(chains, sampler.num_chains, f"{where}: state['driver']['chains']")
    if "history" in state:
        History.check_dict(state["history"], f"{where}: state['history']")


def check_param_shapes(driver: str, values: dict[str, torch.Tensor]) -> None:
    """Raise a ``ValueError`` if a loaded value has another shape than the parameter of the
    same name in Pyro's param store (values of parameters not in the store yet pass: they are
    checked when the model creates them).

    :param str driver: the driver, for messages.
    :param dict values: ``{name: unconstrained value}`` as a saved state holds them.

    Example::

        >>> check_param_shapes("MCEM", {"nowhere": torch.zeros(3)})  # not in the store: passes
    """
    leaves = dict(pyro.get_param_store().named_parameters())
    for name, value in values.items():
        if name in leaves and value.shape != leaves[name].shape:
            raise ValueError(f"{driver}: the loaded value of parameter {name!r} has shape "
                             f"{tuple(value.shape)}, but the model's has "
                             f"{tuple(leaves[name].shape)}: the state was saved from another "
                             "model (or another size of it)")


def _check_like(value, template, path: str) -> None:
    """``value`` has the structure of ``template`` (a driver's own ``_extra_state()``): the
    same keys, tensors where it has tensors (``None`` allowed either way), numbers where it
    has numbers."""
    if template is None or value is None:
        return
    if isinstance(template, dict):
        if not isinstance(value, dict):
            raise ValueError(f"{path} must be a dict, got {type(value).__name__}; the state is "
                             "corrupted")
        if not template:  # e.g. an optimizer that has not run yet: any content
            return
        missing = [k for k in template if k not in value]
        extra = [k for k in value if k not in template]
        if missing or extra:
            raise ValueError(f"{path} has no entry {missing} / unexpected entries {extra}: it "
                             "was saved by a driver with other settings, or is corrupted")
        for key in template:
            _check_like(value[key], template[key], f"{path}[{key!r}]")
    elif torch.is_tensor(template):
        if not torch.is_tensor(value):
            raise ValueError(f"{path} must be a tensor, got {type(value).__name__}; the state is "
                             "corrupted")
    elif isinstance(template, numbers.Real) and not isinstance(value, numbers.Real):
        raise ValueError(f"{path} must be a number, got {value!r}; the state is corrupted")


def _check_chains(chains, num_chains: int, path: str) -> None:
    """The chains' entry from the driver's side: its keys, and tensors with one row per chain."""
    if not isinstance(chains, dict):
        raise ValueError(f"{path} must be a dict, got {type(chains).__name__}")
    for key in ("position", "inverse_mass"):
        sites = chains.get(key)
        if not isinstance(sites, dict) or not all(torch.is_tensor(v) for v in sites.values()):
            raise ValueError(f"{path}[{key!r}] must map latent sites to tensors; the state is "
                             "corrupted")
        for site, value in sites.items():
            held = value.shape[0] if value.dim() else 0
            if held != num_chains:
                raise ValueError(f"{path}[{key!r}][{site!r}] holds {held} chains, this driver "
                                 f"has num_chains={num_chains}: the state was saved with "
                                 "another num_chains")
    step_size = chains.get("step_size")
    if step_size is not None and (not torch.is_tensor(step_size)
                                  or step_size.shape != (num_chains,)):
        raise ValueError(f"{path}['step_size'] must be a tensor of shape ({num_chains},) (one "
                         "step size per chain); the state was saved with another num_chains or "
                         "is corrupted")


def rng_state() -> dict:
    """The state of torch's random number generators: ``{"torch": ...}``, with ``"cuda"``
    (every device's) once CUDA is initialized.

    Example::

        >>> set_rng_state(rng_state())  # a no-op round trip
    """
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def set_rng_state(rng: dict) -> None:
    """Set torch's random number generators to what :func:`rng_state` returned.

    :param dict rng: ``{"torch": ..., "cuda": ...}`` (``"cuda"`` optional).
    """
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng:
        torch.cuda.set_rng_state_all(rng["cuda"])


def truncate_history(history: History, num_steps: int) -> History:
    """The history's first records, up to iteration ``num_steps`` (a state loaded without its
    history keeps the records it had up to the loaded iteration).

    :param History history: the record to cut.
    :param int num_steps: the last iteration kept.

    Example::

        >>> history = History()
        >>> for step in (1, 2, 3):
        ...     history.append(step, 0.1 * step, {"loss": float(step)}, {})
        >>> truncate_history(history, 2).steps
        [1, 2]
    """
    state = history.to_dict()
    keep = sum(1 for s in state["step"] if s <= num_steps)
    return History.from_dict({
        "step": state["step"][:keep], "time": state["time"][:keep],
        "metrics": {n: col[:keep] for n, col in state["metrics"].items()},
        "params": {n: v[:keep] for n, v in state["params"].items()},
    })


def clone_state(obj):
    """A deep copy of nested dicts/lists/tuples of tensors (detached) and plain values.

    :param obj: a state, as :meth:`~pyro_lvmle.em.Driver.state_dict` returns it.

    Example::

        >>> state = {"params": {"w": torch.zeros(2)}, "iteration": 3}
        >>> copy = clone_state(state)
        >>> copy["params"]["w"] is state["params"]["w"]
        False
    """
    if torch.is_tensor(obj):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: clone_state(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(clone_state(v) for v in obj)
    return obj
