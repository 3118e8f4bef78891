"""The record of a :func:`~pyro_lvmle.compare` run: its table, plot and files."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from ._checks import check_positive

__all__ = ["Comparison"]


class Comparison:
    """The record of a :func:`compare` run: per method, the evaluation and the parameters at
    each evaluated step, with the wall seconds spent in the method's steps so far.

    :param dict records: method name to a list of ``{"step", "seconds", "value", "params"}``.
    :param dict errors: method name to the error message of a method that failed.
    :param dict info: settings of the run (budget, evaluation, seed), saved with it.

    Example::

        >>> comparison = Comparison({"a": [{"step": 0, "seconds": 0.0, "value": -3.0,
        ...                                  "params": {}},
        ...                                 {"step": 5, "seconds": 0.1, "value": -1.0,
        ...                                  "params": {}}]})
        >>> comparison.table()[0]["final"]
        -1.0
    """

    def __init__(self, records: dict, errors: dict | None = None, info: dict | None = None):
        self.records = {name: list(rows) for name, rows in records.items()}
        for name, rows in self.records.items():
            if not rows or not all(isinstance(r, dict) and {"step", "seconds", "value"} <= set(r)
                                   for r in rows):
                raise ValueError(f"Comparison: the records of {name!r} must be a non-empty list "
                                 "of dicts with 'step', 'seconds' and 'value' (a method that "
                                 "recorded nothing belongs in errors)")
        self.errors = dict(errors or {})
        self.info = dict(info or {})

    def __repr__(self) -> str:
        return f"Comparison({list(self.records)}, failed={list(self.errors)})"

    @property
    def best(self) -> float:
        """The best evaluation any method reached (``nan`` if none)."""
        values = [r["value"] for rows in self.records.values() for r in rows
                  if math.isfinite(r["value"])]
        return max(values) if values else math.nan

    def table(self, tolerance: float = 0.1) -> list[dict]:
        """One row per method: ``method``, ``steps``, ``seconds`` (timed),
        ``model_evaluations`` (runs of the model in its steps; ``nan`` in records without
        them), ``final`` and ``best`` evaluation, and ``time_to_best``: the wall seconds
        after which its evaluation first came within ``tolerance`` of the best of all
        methods (``nan`` if never); failed methods have ``error``. Rows are sorted by final
        value, best first.

        :param float tolerance: in the evaluation's units (nats for log-likelihoods).
        """
        check_positive("Comparison.table", "tolerance", tolerance, allow_zero=True)
        best = self.best
        rows = []
        for name, records in self.records.items():
            values = [r["value"] for r in records]
            finite = [v for v in values if math.isfinite(v)]
            reached = [r["seconds"] for r in records
                       if math.isfinite(r["value"]) and r["value"] >= best - tolerance]
            rows.append({"method": name, "steps": records[-1]["step"],
                         "seconds": records[-1]["seconds"],
                         "model_evaluations": records[-1].get("model_evaluations", math.nan),
                         "final": values[-1],
                         "best": max(finite) if finite else math.nan,
                         "time_to_best": reached[0] if reached else math.nan, "error": ""})
        rows.sort(key=lambda r: -r["final"] if math.isfinite(r["final"]) else math.inf)
        for name, message in self.errors.items():
            rows.append({"method": name, "steps": 0, "seconds": math.nan,
                         "model_evaluations": math.nan, "final": math.nan,
                         "best": math.nan, "time_to_best": math.nan, "error": message})
        return rows

    def format(self, tolerance: float = 0.1) -> str:
        """:meth:`table` as aligned text.

        :param float tolerance: as for :meth:`table`.
        """
        width = max([len("method")] + [len(r["method"]) for r in self.table(tolerance)])
        header = (f"{'method':<{width}} {'final':>12} {'best':>12} {'steps':>6} "
                  f"{'evals':>7} {'seconds':>8} {'to best':>8}")
        lines = [header, "-" * len(header)]
        for r in self.table(tolerance):
            if r["error"]:
                lines.append(f"{r['method']:<{width}} failed: {r['error']}")
                continue
            lines.append(f"{r['method']:<{width}} {r['final']:>12.4f} {r['best']:>12.4f} "
                         f"{r['steps']:>6d} {r['model_evaluations']:>7} {r['seconds']:>8.2f} "
                         f"{r['time_to_best']:>8.2f}")
        return "\n".join(lines)

    def plot(self, *, params: bool = True):
        """The evaluation against wall time and against steps, and the parameter traces (up
        to 4 coordinates per method) against steps.

        :param bool params: draw the parameter panel.
        :returns: the matplotlib figure.
        """
        import matplotlib.pyplot as plt

        panels = 3 if params else 2
        fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.8), squeeze=False)
        axes = axes[0]
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for i, (name, rows) in enumerate(self.records.items()):
            color = colors[i % len(colors)]
            steps = [r["step"] for r in rows]
            values = [r["value"] for r in rows]
            axes[0].plot([r["seconds"] for r in rows], values, color=color, label=name)
            axes[1].plot(steps, values, color=color, label=name)
            if params:
                coords = [(p, j) for p in sorted(rows[0]["params"])
                          for j in range(len(rows[0]["params"][p]))][:4]
                for k, (p, j) in enumerate(coords):
                    axes[2].plot(steps, [r["params"][p][j] for r in rows], color=color,
                                 linestyle=("-", "--", ":", "-.")[k], linewidth=1)
        finals = [rows[-1]["value"] for rows in self.records.values()
                  if math.isfinite(rows[-1]["value"])]
        if finals and math.isfinite(self.best):
            # the interesting range: where the methods end, not where they all start
            margin = max(5.0, 3.0 * (self.best - min(finals)))
            for ax in axes[:2]:
                ax.set_ylim(self.best - margin, self.best + 0.1 * margin)
        label = self.info.get("evaluation", "evaluation")
        axes[0].set(xlabel="wall seconds in the method's steps", ylabel=label)
        axes[1].set(xlabel="step", ylabel=label)
        if params:
            axes[2].set(xlabel="step", ylabel="parameters (first 4 coordinates)")
        if self.records:  # no method recorded anything: nothing to label
            axes[0].legend(fontsize="small")
        fig.tight_layout()
        return fig

    def to_dict(self) -> dict:
        """Everything, as plain JSON-ready data."""
        return {"records": self.records, "errors": self.errors, "info": self.info}

    def save(self, directory) -> dict[str, Path]:
        """Write ``comparison.csv`` (the table), ``evaluations.csv`` (every evaluation),
        ``comparison.json`` (everything, for :meth:`load`) and ``comparison.png``
        (:meth:`plot`) into ``directory`` (created if missing).

        :param directory: a path.
        :returns: the paths written, by kind.
        """
        import matplotlib.pyplot as plt

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = {"table": directory / "comparison.csv",
                 "evaluations": directory / "evaluations.csv",
                 "json": directory / "comparison.json", "png": directory / "comparison.png"}
        rows = self.table()
        with open(paths["table"], "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=list(rows[0]) if rows else ["method"])
            writer.writeheader()
            writer.writerows(rows)
        with open(paths["evaluations"], "w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["method", "step", "seconds", "model_evaluations", "value"])
            for name, records in self.records.items():
                writer.writerows([name, r["step"], r["seconds"],
                                  r.get("model_evaluations", ""), r["value"]] for r in records)
        paths["json"].write_text(json.dumps(_tag_floats(self.to_dict()), indent=1,
                                            allow_nan=False))
        fig = self.plot()
        fig.savefig(paths["png"], dpi=100)
        plt.close(fig)
        return paths

    @classmethod
    def load(cls, directory) -> Comparison:
        """The comparison :meth:`save` wrote into ``directory``.

        :param directory: a path.
        """
        data = json.loads((Path(directory) / "comparison.json").read_text(),
                          object_hook=_untag_float)
        return cls(data["records"], data.get("errors"), data.get("info"))


_FLOAT_TAG = "non-finite float"


def _tag_floats(obj):
    """``obj`` with every NaN or infinite float replaced by ``{"non-finite float": "nan"}``
    (or ``"inf"``, ``"-inf"``): strict JSON has no token for them, and Python's ``NaN``
    makes the file unreadable to other JSON readers."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return {_FLOAT_TAG: repr(obj)}
    if isinstance(obj, dict):
        return {key: _tag_floats(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return [_tag_floats(value) for value in obj]
    return obj


def _untag_float(obj: dict):
    """The float :func:`_tag_floats` tagged, else the dict itself (a ``json`` object hook)."""
    if len(obj) == 1 and _FLOAT_TAG in obj:
        return float(obj[_FLOAT_TAG])
    return obj
