r"""Variational EM: coordinate ascent on a variational bound, the guide (E) then the model (M).

With a bound :math:`\mathcal{L}(\theta, \phi) \le \log p(x; \theta)` (the ELBO, or a tighter
one such as :class:`~pyro_lvmle.TraceIWAE_ELBO`), each iteration takes ``e_steps`` optimizer
steps on the guide's parameters :math:`\phi` with :math:`\theta` fixed, then ``m_steps`` on
the model's :math:`\theta` with :math:`\phi` fixed (Neal & Hinton 1998). With the ELBO and a
guide family that holds the posterior, a fully converged E-step makes this exact EM.
"""

from __future__ import annotations

import math
import warnings

import pyro
import torch
from pyro.infer import ELBO, Trace_ELBO
from pyro.optim import PyroOptim

from .._checks import check_callable, check_int
from ..traces.params import call_with_params, program_params
from .driver import Driver
from .m_step import load_optim_state, optim_state
from .state import check_param_shapes

__all__ = ["VariationalEM"]


class VariationalEM(Driver):
    r"""Alternating guide (E) and model (M) updates with any objective of the package or Pyro.

    :param model: the Pyro model.
    :param guide: the Pyro guide (an autoguide too).
    :param loss: a ``pyro.infer.ELBO`` instance (``Trace_ELBO()`` by default;
        :class:`~pyro_lvmle.TraceIWAE_ELBO`, :class:`~pyro_lvmle.TraceRWS_ELBO`, ...).
    :param optim: a ``pyro.optim`` optimizer for the E-steps (``Adam(lr=0.01)`` by default),
        and for the M-steps unless ``m_optim`` is given.
    :param int e_steps: guide updates per iteration.
    :param int m_steps: model updates per iteration.
    :param m_optim: an optimizer for the M-steps.
    :param record_params: see :class:`~pyro_lvmle.em.Driver` (model parameters only).

    Metrics per step: ``e_loss`` and ``m_loss`` (the loss at the last E and M update; for the
    ELBO, minus the bound). Restarts (:meth:`~pyro_lvmle.em.Driver.run`) are ranked by minus
    the loss at the end of each run (one evaluation: the ELBO, or the chosen bound).

    References:

    [1] Neal & Hinton (1998), "A view of the EM algorithm that justifies incremental, sparse,
    and other variants", in Learning in Graphical Models.

    Example::

        >>> import pyro, torch, pyro_lvmle as lv
        >>> model = lv.models.LinearGaussian(dim=2)
        >>> data = model.simulate(40)
        >>> guide = pyro.infer.autoguide.AutoNormal(model)
        >>> vem = lv.VariationalEM(model, guide, e_steps=5, m_steps=1)
        >>> history = vem.run(data, num_steps=3, progress=False)
        >>> sorted(history.metric_names)
        ['e_loss', 'm_loss']
    """

    progress_metric = "m_loss"
    _params_beyond_model = True  # loaded guide values wait in params until the guide runs

    def __init__(self, model, guide, loss=None, optim=None, *, e_steps: int = 10,
                 m_steps: int = 1, m_optim=None, record_params=True):
        super().__init__(model, record_params=record_params)
        check_callable("VariationalEM", "guide", guide, "a callable Pyro guide")
        if guide is model:
            raise ValueError("VariationalEM: guide is the model itself; pass a guide (for "
                             "example pyro.infer.autoguide.AutoNormal(model))")
        loss = Trace_ELBO() if loss is None else loss
        if isinstance(loss, type):
            raise TypeError(f"VariationalEM: loss must be an instance, got the class "
                            f"{loss.__name__}; write loss={loss.__name__}()")
        if not isinstance(loss, ELBO) and not hasattr(loss, "loss_and_grads"):
            raise TypeError(f"VariationalEM: loss must be a pyro.infer.ELBO instance such as "
                            f"Trace_ELBO(), got {type(loss).__name__}")
        optim = pyro.optim.Adam({"lr": 0.01}) if optim is None else optim
        for name, value in (("optim", optim), ("m_optim", m_optim)):
            if value is not None and not isinstance(value, PyroOptim):
                raise TypeError(f"VariationalEM: {name} must be a pyro.optim optimizer such as "
                                f"pyro.optim.Adam({{'lr': 0.01}}), got {type(value).__name__}")
        check_int("VariationalEM", "e_steps", e_steps, low=0)
        check_int("VariationalEM", "m_steps", m_steps, low=1)
        self.guide, self.loss = guide, loss
        self.optim, self.m_optim = optim, m_optim or optim
        self.e_steps, self.m_steps = e_steps, m_steps
        self._guide_names: list[str] | None = None

    def _update(self, names, optim, args, kwargs) -> float:
        value, leaves = call_with_params(self.loss.loss_and_grads, self.model, self.guide,
                                         *args, **kwargs)
        bad = [name for name, leaf in leaves.items() if name in names and leaf.grad is not None
               and not torch.isfinite(leaf.grad).all()]
        if bad or not math.isfinite(float(value)):
            pyro.infer.util.zero_grads(set(leaves.values()))
            raise ValueError(f"VariationalEM: the loss ({float(value)}) or the gradient of "
                             f"parameters {bad} is NaN or infinite; the step is undone. With "
                             "one of the package's objectives, nonfinite='skip' skips such "
                             "steps instead (counted in loss.diagnostics)")
        optim([leaf for name, leaf in leaves.items() if name in names])
        pyro.infer.util.zero_grads(set(leaves.values()))
        return float(value)

    def _discover(self, args, kwargs) -> None:
        super()._discover(args, kwargs)
        if self._guide_names is None:
            self._guide_names = list(program_params(self.guide, *args, **kwargs))
            own = [n for n in self._guide_names if n not in self._param_names]
            if self.e_steps > 0 and not own:
                warnings.warn("VariationalEM: the guide has no parameters of its own, so the "
                              "E-steps only move the model's; pass e_steps=0 (or a guide with "
                              "parameters)", UserWarning, stacklevel=4)
            elif self.e_steps == 0 and own:
                warnings.warn(f"VariationalEM: e_steps=0, so the guide's parameters {own} are "
                              "never fitted and the M-step maximizes a bound for a fixed "
                              "guide; pass e_steps >= 1", UserWarning, stacklevel=4)
        if self._pending:  # loaded guide values wait for the guide's parameters to exist
            program_params(self.guide, *args, **kwargs)
        self._apply_pending()

    def _forget_names(self) -> None:
        super()._forget_names()
        self._guide_names = None

    def restart_objective(self, *args, **kwargs) -> float:
        """Minus the loss at the current parameters (one evaluation; for the ELBO, the
        bound itself).

        :param args: the model's arguments.
        :param kwargs: its keyword arguments.
        """
        with torch.no_grad():
            return -float(self.loss.loss(self.model, self.guide, *args, **kwargs))

    def _step(self, args, kwargs):
        model_names = set(self.model_params(*args, **kwargs))
        metrics = {}
        for _ in range(self.e_steps):
            metrics["e_loss"] = self._update(set(self._guide_names), self.optim, args, kwargs)
        for _ in range(self.m_steps):
            metrics["m_loss"] = self._update(model_names, self.m_optim, args, kwargs)
        return metrics

    def state_dict(self, with_history: bool = True) -> dict:
        """As :meth:`Driver.state_dict <pyro_lvmle.em.Driver.state_dict>`, the guide's
        parameters included."""
        state = super().state_dict(with_history)
        leaves = dict(pyro.get_param_store().named_parameters())
        state["guide_params"] = {n: leaves[n].detach().clone() for n in self._guide_names or ()
                                 if n in leaves}
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`, the guide's parameters included (set when the guide
        first runs if they do not exist yet).

        :param dict state: as :meth:`state_dict` returned it.
        """
        super().load_state_dict(state)

    def _check_state(self, state) -> None:
        super()._check_state(state)
        guide = state.get("guide_params")
        where = "VariationalEM.load_state_dict"
        if not isinstance(guide, dict) or not all(torch.is_tensor(v) for v in guide.values()):
            raise ValueError(f"{where}: state['guide_params'] must map the guide's parameter "
                             "names to tensors; the state is missing it or is corrupted")
        check_param_shapes("VariationalEM", guide)

    def _restore(self, state: dict) -> None:
        super()._restore(state)
        guide = state.get("guide_params", {})
        self._guide_names = list(guide) or None
        self._pending = {**(self._pending or {}), **{n: v.clone() for n, v in guide.items()}}
        self._apply_pending()  # those in the store now; the rest when the guide first runs

    def _extra_state(self) -> dict:
        state = {"optim": optim_state(self.optim)}
        if self.m_optim is not self.optim:
            state["m_optim"] = optim_state(self.m_optim)
        return state

    def _load_extra_state(self, state: dict) -> None:
        load_optim_state(self.optim, state["optim"])
        if "m_optim" in state:
            load_optim_state(self.m_optim, state["m_optim"])
