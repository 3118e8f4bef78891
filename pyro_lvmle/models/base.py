"""The base class of the reference models: a Pyro model that knows its answers."""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping

import pyro
import torch
from torch.distributions import constraints

from .._checks import check_int

__all__ = ["ReferenceModel"]


class ReferenceModel(abc.ABC):
    r"""A Pyro model with known answers, for tests, docs, benchmarks and the CLI.

    A subclass writes an ordinary Pyro ``model(...)`` (``pyro.param``, ``pyro.plate``,
    ``obs=``) and supplies what the model is known to satisfy: the exact log marginal
    likelihood

    .. math::

        \log p(x; \theta) = \sum_{n=1}^N \log \int p(x_n, z_n; \theta) \, dz_n

    at the current or given parameters, a simulator, and a closed-form or trusted
    maximum-likelihood estimate where one exists. An instance is itself the model:
    ``SVI(lv.models.PPCA(64, 2), guide, optim, loss)`` works (see :class:`pyro.infer.SVI`).

    Parameters are looked up by name, in this order: a ``params`` mapping passed to a
    method, then Pyro's global param store (:func:`pyro.param`), then the model's initial
    values. Values taken from the param store keep their autograd graph, so
    ``model.log_marginal(data).backward()`` puts the exact gradient into the store's
    parameters.

    :param dict init_params: optional initial values overriding the model's defaults,
        keyed by parameter name.
    :param str prefix: prepended to every parameter's name in Pyro's param store, so that
        several models can share one store (``prefix="ppca."`` stores ``"ppca.W"``); the
        ``params`` dicts of the methods always use the plain names.

    References:

    [1] Bingham et al. (2019), "Pyro: Deep universal probabilistic programming", JMLR 20(28).

    Example::

        >>> import pyro_lvmle as lv
        >>> model = lv.models.LinearGaussian()
        >>> data = model.simulate(100)
        >>> sorted(model.mle(data))
        ['sigma', 'w']
    """

    #: Parameter names in a fixed order, set by each subclass.
    param_names: tuple[str, ...] = ()

    def __init__(self, init_params: Mapping[str, object] | None = None, *, prefix: str = ""):
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, got {type(prefix).__name__}")
        self.prefix = prefix
        self._init_overrides: dict[str, object] = {}
        if init_params is not None:
            if not isinstance(init_params, Mapping):
                raise TypeError(
                    f"init_params must be a dict of parameter name -> value, got "
                    f"{type(init_params).__name__}"
                )
            unknown = set(init_params) - set(self.param_names)
            if unknown:
                raise ValueError(
                    f"init_params has unknown names {sorted(unknown)}; "
                    f"{type(self).__name__} has parameters {list(self.param_names)}"
                )
            self._init_overrides = dict(init_params)

    # ----------------------------------------------------------------- subclass hooks
    @abc.abstractmethod
    def _default_init(self, name: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The default initial value of parameter ``name``."""

    def _constraint(self, name: str) -> constraints.Constraint:
        return constraints.real

    @abc.abstractmethod
    def model(self, *args, **kwargs):
        """The Pyro model, written the way a user would write it."""

    @abc.abstractmethod
    def log_marginal(self, data, params=None, *, per_datum=False) -> torch.Tensor:
        """The exact log marginal likelihood of ``data`` (its sum, or per datum)."""

    @abc.abstractmethod
    def simulate(self, num_data, params=None, *, return_latents=False):
        """Data drawn from the model at the given (or current) parameters."""

    # ----------------------------------------------------------------- shared machinery
    def __call__(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def initial_value(
        self, name: str, dtype: torch.dtype | None = None, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """The initial (constrained) value of parameter ``name``.

        :param str name: one of :attr:`param_names`.
        :param torch.dtype dtype: defaults to ``torch.get_default_dtype()``.
        :param device: defaults to the CPU.
        """
        self._check_name(name)
        dtype = torch.get_default_dtype() if dtype is None else dtype
        device = torch.device("cpu") if device is None else torch.device(device)
        if name in self._init_overrides:
            return torch.as_tensor(self._init_overrides[name], dtype=dtype, device=device).clone()
        return self._default_init(name, dtype, device)

    def _param(self, name: str, like: torch.Tensor | None) -> torch.Tensor:
        """``pyro.param(name, init, constraint=...)`` with the init on ``like``'s device."""
        dtype = like.dtype if like is not None and like.is_floating_point() else None
        device = like.device if like is not None else None
        init: Callable[[], torch.Tensor] = lambda: self.initial_value(name, dtype, device)  # noqa: E731
        return pyro.param(self.store_name(name), init, constraint=self._constraint(name))

    def store_name(self, name: str) -> str:
        """The name of parameter ``name`` in Pyro's param store: ``prefix + name``."""
        return self.prefix + name

    def params(
        self, params: Mapping[str, object] | None = None, *, like: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """The parameter values a method uses, as a dict of constrained tensors.

        :param dict params: values that take precedence, by name; any name missing is taken
            from Pyro's param store, else from the initial values.
        :param torch.Tensor like: a tensor whose dtype (if floating) and device the values
            are given.
        """
        if params is not None and not isinstance(params, Mapping):
            raise TypeError(f"params must be a dict of name -> tensor, got {type(params).__name__}")
        given = dict(params or {})
        unknown = set(given) - set(self.param_names)
        if unknown:
            raise ValueError(
                f"params has unknown names {sorted(unknown)}; "
                f"{type(self).__name__} has parameters {list(self.param_names)}"
            )
        dtype = like.dtype if like is not None and like.is_floating_point() else None
        device = like.device if like is not None else None
        store = pyro.get_param_store()
        out = {}
        for name in self.param_names:
            if name in given:
                value = torch.as_tensor(given[name])
                if value.is_floating_point() and dtype is not None:
                    value = value.to(dtype=dtype)
                if device is not None:
                    value = value.to(device=device)
            elif self.store_name(name) in store:
                value = store[self.store_name(name)]
                if value.shape != self._param_shape(name):
                    raise ValueError(
                        f"Pyro's param store holds {self.store_name(name)!r} of shape "
                        f"{tuple(value.shape)}, but {type(self).__name__} expects "
                        f"{tuple(self._param_shape(name))}: another model used the same name. "
                        "Call pyro.clear_param_store(), or build this model with a prefix="
                    )
            else:
                value = self.initial_value(name, dtype, device)
            if value.shape != self._param_shape(name):
                raise ValueError(
                    f"parameter {name!r} has shape {tuple(value.shape)}, "
                    f"{type(self).__name__} expects {tuple(self._param_shape(name))}"
                )
            out[name] = value
        return out

    def _param_shape(self, name: str) -> torch.Size:
        shapes = self.__dict__.setdefault("_shapes", {})
        if name not in shapes:
            shapes[name] = self.initial_value(name, torch.float64).shape
        return shapes[name]

    def set_params(self, params: Mapping[str, object]) -> None:
        """Write ``params`` into Pyro's param store (replacing values already there).

        :param dict params: constrained values by name, e.g. the output of :meth:`mle`.
        """
        store = pyro.get_param_store()
        for name, value in self.params(params).items():
            if name not in params:
                continue
            key = self.store_name(name)
            if key in store:
                del store[key]
            pyro.param(key, value.detach().clone(), constraint=self._constraint(name))

    def mle(self, data, **kwargs) -> dict[str, torch.Tensor]:
        """The maximum-likelihood estimate; only models that have a trusted one define it."""
        raise NotImplementedError(
            f"{type(self).__name__} has no closed-form or trusted maximum-likelihood estimate; "
            "fit it with one of the package's estimators instead"
        )

    def _check_name(self, name: str) -> None:
        if name not in self.param_names:
            raise ValueError(
                f"unknown parameter {name!r}; {type(self).__name__} has {list(self.param_names)}"
            )


def _check_matrix(
    data, name: str, num_cols: int | None, cls: str, check_finite: bool = True
) -> torch.Tensor:
    """Validate a (num_data, num_cols) floating data tensor and return it.

    The finiteness check synchronizes with the device, so the models skip it per step.
    """
    if not isinstance(data, torch.Tensor):
        raise TypeError(f"{cls}: {name} must be a torch.Tensor, got {type(data).__name__}")
    if data.dim() != 2:
        raise ValueError(
            f"{cls}: {name} must have shape (num_data, {num_cols or 'dim'}), "
            f"got shape {tuple(data.shape)}"
        )
    if num_cols is not None and data.shape[-1] != num_cols:
        raise ValueError(
            f"{cls}: {name} has {data.shape[-1]} columns but the model was built for {num_cols}"
        )
    if not data.is_floating_point():
        raise TypeError(
            f"{cls}: {name} must be a floating tensor, got {data.dtype}; "
            "convert it with data.to(torch.get_default_dtype())"
        )
    if check_finite and not torch.isfinite(data).all():
        raise ValueError(f"{cls}: {name} contains NaN or inf")
    return data


def _num_data(data, num_data, dim, cls):
    if data is None:
        if num_data is None:
            raise ValueError(f"{cls}.model: pass data, or num_data to sample from the model")
        return _check_count(num_data, "num_data", f"{cls}.model")
    _check_matrix(data, "data", dim, cls, check_finite=False)
    if num_data is not None and num_data != data.shape[0]:
        raise ValueError(f"{cls}.model: num_data={num_data} but data has {data.shape[0]} rows")
    return data.shape[0]


def _check_count(value, name, where):
    return check_int(where, name, value, low=1)
