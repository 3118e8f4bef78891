"""The record of a driver's run: per-step metrics, parameter values and wall time."""

from __future__ import annotations

import math

import torch

__all__ = ["History"]


class History:
    """Per-step metrics, parameter values and cumulative wall time of a driver's run.

    A driver appends one record per completed step (:meth:`append`); a ``callback`` of
    :meth:`~pyro_lvmle.em.Driver.run` may add metrics to the last one (:meth:`update`).
    Metrics missing from a step are ``nan`` in the columns.

    :ivar list steps: the driver's iteration number after each step (1, 2, ...).
    :ivar list time: seconds spent in the driver's steps up to each one (callbacks excluded).

    Example::

        >>> import torch
        >>> from pyro_lvmle.em import History
        >>> history = History()
        >>> history.append(1, 0.5, {"loss": 3.0}, {"w": torch.tensor([1.0, 2.0])})
        >>> history.append(2, 1.0, {"loss": 2.5}, {"w": torch.tensor([1.5, 2.0])})
        >>> history["loss"], history.params["w"].shape
        ([3.0, 2.5], torch.Size([2, 2]))
    """

    def __init__(self):
        self.steps: list[int] = []
        self.time: list[float] = []
        self._metrics: list[dict[str, float]] = []
        self._params: list[dict[str, torch.Tensor]] = []

    def __len__(self) -> int:
        return len(self.steps)

    def __repr__(self) -> str:
        return f"History({len(self)} steps, metrics={self.metric_names})"

    def append(self, step: int, time: float, metrics: dict, params: dict) -> None:
        """Add the record of one step.

        :param int step: the driver's iteration number after the step.
        :param float time: cumulative seconds spent in steps.
        :param dict metrics: name to number (tensors are converted with ``float``).
        :param dict params: name to (constrained) parameter value; cloned and detached.
        """
        self.steps.append(int(step))
        self.time.append(float(time))
        self._metrics.append({k: _number(v) for k, v in metrics.items()})
        self._params.append({k: v.detach().clone() for k, v in params.items()})

    def extend(self, other: History) -> None:
        """Append every record of another history (the runs of several restarts).

        :param History other: its records are copied in order.
        """
        if not isinstance(other, History):
            raise TypeError(f"History.extend: other must be a History, got "
                            f"{type(other).__name__}")
        for i, step in enumerate(other.steps):
            self.append(step, other.time[i], other._metrics[i], other._params[i])

    def update(self, metrics: dict) -> None:
        """Add metrics to the last record (a callback's evaluation, say).

        :param dict metrics: name to number.
        """
        if not self._metrics:
            raise ValueError("History.update: there is no step to add metrics to yet")
        self._metrics[-1].update({k: _number(v) for k, v in metrics.items()})

    @property
    def metric_names(self) -> list[str]:
        """Every metric recorded in some step, in order of first appearance."""
        names: dict[str, None] = {}
        for row in self._metrics:
            names.update(dict.fromkeys(row))
        return list(names)

    def __getitem__(self, name: str) -> list[float]:
        """The column of one metric (``nan`` where a step did not record it)."""
        if name not in self.metric_names:
            raise KeyError(f"History has no metric {name!r}; it has {self.metric_names}")
        return [row.get(name, math.nan) for row in self._metrics]

    @property
    def params(self) -> dict[str, torch.Tensor]:
        """Each recorded parameter's values stacked over steps, ``(num_steps, *shape)``."""
        names: dict[str, None] = {}
        for row in self._params:
            names.update(dict.fromkeys(row))
        return {n: torch.stack([row[n] for row in self._params if n in row]) for n in names}

    def to_dict(self) -> dict:
        """Plain columns: ``{"step", "time", "metrics": {name: list}, "params": {name:
        tensor}}``, loadable with ``torch.load(weights_only=True)`` after ``torch.save``."""
        return {"step": list(self.steps), "time": list(self.time),
                "metrics": {n: self[n] for n in self.metric_names}, "params": self.params}

    @classmethod
    def from_dict(cls, state: dict) -> History:
        """The history :meth:`to_dict` exported.

        :param dict state: as :meth:`to_dict` returned it.
        """
        cls.check_dict(state)
        history = cls()
        for i, (step, time) in enumerate(zip(state["step"], state["time"], strict=True)):
            # a NaN is kept as recorded: a metric NaN at every step (a diverged evaluation)
            # keeps its name, and a missing value reads as NaN either way
            metrics = {n: col[i] for n, col in state["metrics"].items()}
            params = {n: value[i] for n, value in state["params"].items()}
            history.append(step, time, metrics, params)
        return history

    @staticmethod
    def check_dict(state, where: str = "History.from_dict") -> None:
        """Raise a ``ValueError`` naming what in ``state`` is not a :meth:`to_dict` export.

        :param state: the dict to check.
        :param str where: named in the message.
        """
        if not isinstance(state, dict):
            raise ValueError(f"{where} must be the dict History.to_dict() returned, got "
                             f"{type(state).__name__}")
        missing = [k for k in ("step", "time", "metrics", "params") if k not in state]
        if missing:
            raise ValueError(f"{where} has no entry {missing}; it is incomplete or corrupted")
        if not isinstance(state["step"], list) or not isinstance(state["time"], list) \
                or not isinstance(state["metrics"], dict) or not isinstance(state["params"], dict):
            raise ValueError(f"{where}: 'step' and 'time' must be lists, 'metrics' and "
                             "'params' dicts; the history is corrupted")
        n = len(state["step"])
        columns = {"time": state["time"], **{f"metrics[{k!r}]": v
                                             for k, v in state["metrics"].items()}}
        for name, column in columns.items():
            if not isinstance(column, list) or len(column) != n:
                got = len(column) if isinstance(column, list) else repr(column)
                raise ValueError(f"{where}: {name} must be a list of {n} values (one per "
                                 f"step), got {got}")
        for name, value in state["params"].items():
            if not torch.is_tensor(value) or value.dim() == 0 or len(value) != n:
                raise ValueError(f"{where}: params[{name!r}] must be a tensor of {n} rows (one "
                                 "per step); the history is corrupted")

    def plot(self, metrics=None, *, x: str = "step", params: bool = True, axes=None):
        """One panel per metric (and per scalar parameter coordinate group) against the step
        or the wall time.

        :param metrics: a name or names to draw; default every metric.
        :param str x: ``"step"`` or ``"time"``.
        :param bool params: also draw the recorded parameters (up to 10 coordinates each).
        :param axes: a sequence of matplotlib axes to draw into (one per panel).
        :returns: the matplotlib figure.
        """
        import matplotlib.pyplot as plt

        if x not in ("step", "time"):
            raise ValueError(f"History.plot: x must be 'step' or 'time', got {x!r}")
        if isinstance(metrics, str):
            metrics = [metrics]
        if not (metrics is None or (isinstance(metrics, (list, tuple))
                                    and all(isinstance(m, str) for m in metrics))):
            raise TypeError(f"History.plot: metrics must be a metric's name or a list of "
                            f"names, got {metrics!r}")
        names = self.metric_names if metrics is None else list(metrics)
        for name in names:
            if name not in self.metric_names:
                raise ValueError(f"History.plot: no metric {name!r}; have {self.metric_names}")
        recorded = self.params if params else {}
        panels = len(names) + len(recorded)
        if panels == 0:
            raise ValueError("History.plot: nothing to draw (no metrics or parameters recorded)")
        if axes is None:
            cols = min(panels, 3)
            rows = math.ceil(panels / cols)
            fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
            axes = axes.ravel()
        axes = _axes_list(axes, panels)
        fig = axes[0].figure
        xs = self.steps if x == "step" else self.time
        for ax, name in zip(axes, names, strict=False):
            ax.plot(xs, self[name])
            ax.set_title(name)
        for ax, (name, value) in zip(axes[len(names):], recorded.items(), strict=False):
            flat = value.reshape(len(value), -1)[:, :10].cpu()
            ax.plot([xs[-len(flat) + i] for i in range(len(flat))], flat.numpy())
            ax.set_title(name)
        for ax in axes[:panels]:
            ax.set_xlabel("step" if x == "step" else "wall time (s)")
        for ax in axes[panels:]:
            ax.set_visible(False)
        fig.tight_layout()
        return fig


def _axes_list(axes, panels: int) -> list:
    """``axes`` (one matplotlib Axes, a sequence or an array of them, as ``plt.subplots``
    returns) as a flat list of at least ``panels``."""
    import numpy as np

    flat = list(np.asarray(axes, dtype=object).ravel())
    if not flat or not all(hasattr(ax, "plot") and hasattr(ax, "figure") for ax in flat):
        raise TypeError(f"History.plot: axes must be matplotlib axes (one, a list, or the "
                        f"array plt.subplots returns), got {type(axes).__name__}")
    if len(flat) < panels:
        raise ValueError(f"History.plot: {panels} panels to draw but {len(flat)} axes given; "
                         f"pass {panels} axes, or fewer metrics (metrics=..., params=False)")
    return flat


def _number(value) -> float:
    if torch.is_tensor(value):
        if value.numel() != 1:
            raise ValueError(f"History: a metric must be a number, got a tensor of shape "
                             f"{tuple(value.shape)}")
        return float(value.detach())
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    raise TypeError(f"History: a metric must be a number, got {type(value).__name__}")
