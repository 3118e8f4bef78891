"""The ``pyro-lvmle`` command line.

``pyro-lvmle`` (or ``pyro-lvmle compare``) fits a built-in reference model to simulated data
with every estimator available and prints, for each, the exact log-likelihood it reached,
the gap to the closed-form maximum, the distance of its parameters from the MLE and its wall
time. It needs no input file and no network.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence

import pyro
import pyro.optim
import torch
from pyro.infer import SVI, RenyiELBO, Trace_ELBO
from pyro.infer.autoguide import AutoNormal

from . import __version__
from .models import PPCA, LinearGaussian, ReferenceModel
from .objectives import TraceIWAE_ELBO, TraceSTL_ELBO

__all__ = ["main"]

#: The reference models ``compare`` can run, with the true parameters data are simulated from.
_MODELS: dict[str, Callable[[], tuple[ReferenceModel, dict]]] = {
    "linear-gaussian": lambda: (
        LinearGaussian(dim=2),
        {"w": torch.tensor([1.0, -2.0]), "sigma": torch.tensor(0.5)},
    ),
    "ppca": lambda: (
        PPCA(data_dim=6, latent_dim=2),
        {
            "W": torch.linspace(-1.0, 1.0, 12).reshape(6, 2),
            "mu": torch.linspace(0.0, 1.0, 6),
            "sigma": torch.tensor(0.3),
        },
    ),
}


#: the fewest simulated data each model's closed-form MLE needs (PPCA: variance left outside
#: the latent_dim = 2 principal directions of the centred data)
_MIN_DATA = {"linear-gaussian": 1, "ppca": 4}


def _svi_method(loss_factory):
    def fit(model, data, num_steps, lr):
        guide = AutoNormal(model)
        svi = SVI(model, guide, pyro.optim.Adam({"lr": lr}), loss=loss_factory())
        for _ in range(num_steps):
            svi.step(data)
        return model.params(like=data)

    return fit


#: name -> fit(model, data, num_steps, lr) returning the fitted parameters.
_METHODS = {
    "SVI Trace_ELBO, AutoNormal (Pyro)": _svi_method(Trace_ELBO),
    "SVI RenyiELBO(alpha=0, K=8), AutoNormal (Pyro)": _svi_method(
        lambda: RenyiELBO(alpha=0.0, num_particles=8, vectorize_particles=True, max_plate_nesting=1)
    ),
    "SVI TraceSTL_ELBO(K=1), AutoNormal": _svi_method(
        lambda: TraceSTL_ELBO(1, max_plate_nesting=1)
    ),
    "SVI TraceIWAE_ELBO(K=8, DReG), AutoNormal": _svi_method(
        lambda: TraceIWAE_ELBO(8, "dreg", max_plate_nesting=1)
    ),
}


def _distance(params: dict, reference: dict) -> float:
    """Largest absolute difference between two parameter dicts (PPCA's W up to rotation)."""
    out = 0.0
    for name, ref in reference.items():
        value = params[name].detach()
        if name == "W":  # compare W W^T, the identifiable part
            value, ref = value @ value.T, ref @ ref.T
        out = max(out, (value - ref).abs().max().item())
    return out


def compare(model_name: str, num_data: int, num_steps: int, lr: float, seed: int) -> list[dict]:
    """Run every method on one reference model and return one row per method."""
    if model_name not in _MODELS:
        raise ValueError(f"compare: model_name must be one of {sorted(_MODELS)}, got "
                         f"{model_name!r}")
    model, truth = _MODELS[model_name]()
    pyro.set_rng_seed(seed)
    data = model.simulate(num_data, truth)
    mle = model.mle(data)
    best = model.log_marginal(data, mle).item()
    rows = [{"method": "closed-form MLE", "loglik": best, "gap": 0.0, "dist": 0.0,
             "seconds": float("nan")}]
    for name, fit in _METHODS.items():
        pyro.clear_param_store()
        pyro.set_rng_seed(seed)
        start = time.perf_counter()
        params = fit(model, data, num_steps, lr)
        seconds = time.perf_counter() - start
        loglik = model.log_marginal(data, params).item()
        rows.append({"method": name, "loglik": loglik, "gap": best - loglik,
                     "dist": _distance(params, mle), "seconds": seconds})
    return rows


def format_table(rows: Sequence[dict], num_data: int) -> str:
    """A plain-text table of :func:`compare` rows."""
    header = f"{'method':<48} {'log p(x)/N':>12} {'gap/N':>10} {'|theta-mle|':>12} {'seconds':>8}"
    lines = [header, "-" * len(header)]
    for r in rows:
        seconds = "-" if r["seconds"] != r["seconds"] else f"{r['seconds']:.2f}"  # NaN: no fit
        lines.append(
            f"{r['method']:<48} {r['loglik'] / num_data:>12.5f} {r['gap'] / num_data:>10.2e} "
            f"{r['dist']:>12.2e} {seconds:>8}"
        )
    return "\n".join(lines)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite positive number, got {text}")
    return value


def _seed(text: str) -> int:
    value = int(text)
    if not 0 <= value < 2**32:  # numpy's seeds, which pyro.set_rng_seed sets too
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**32), got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyro-lvmle",
        description="Maximum-likelihood estimation of latent-variable models for Pyro. "
        "Without a command, runs 'compare' on its defaults.",
    )
    parser.add_argument("--version", action="version", version=f"pyro-lvmle {__version__}")
    sub = parser.add_subparsers(dest="command")
    cmp = sub.add_parser(
        "compare",
        help="fit a reference model to simulated data with every estimator and print a table",
        description="Fit a built-in reference model to simulated data with every available "
        "estimator; print the exact log-likelihood each reaches against the closed-form MLE.",
    )
    cmp.add_argument("--model", choices=sorted(_MODELS), default="linear-gaussian",
                     help="reference model (default: %(default)s)")
    cmp.add_argument("--num-data", type=_positive_int, default=500,
                     help="simulated data points (default: %(default)s)")
    cmp.add_argument("--num-steps", type=_positive_int, default=500,
                     help="optimizer steps per method (default: %(default)s)")
    cmp.add_argument("--lr", type=_positive_float, default=0.05,
                     help="Adam learning rate (default: %(default)s)")
    cmp.add_argument("--seed", type=_seed, default=0,
                     help="random seed, in [0, 2**32) (default: %(default)s)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pyro-lvmle`` console script.

    :param argv: arguments without the program name; defaults to ``sys.argv[1:]``.
    :returns: the process exit status.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:  # the default action: compare on its defaults
        args = parser.parse_args(["compare"])
    if args.num_data < _MIN_DATA[args.model]:
        parser.error(f"argument --num-data: the {args.model} model needs at least "
                     f"{_MIN_DATA[args.model]} data for its maximum-likelihood estimate, got "
                     f"{args.num_data}")
    torch.set_default_dtype(torch.float64)
    print(f"pyro-lvmle {__version__}: {args.model}, {args.num_data} simulated data, "
          f"{args.num_steps} steps per method (seed {args.seed})")
    rows = compare(args.model, args.num_data, args.num_steps, args.lr, args.seed)
    print(format_table(rows, args.num_data))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
