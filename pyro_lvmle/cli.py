"""The ``pyro-lvmle`` command line.

``pyro-lvmle`` (or ``pyro-lvmle compare``) simulates data from a built-in reference model and
fits it with the package's estimators, IWAE, DReG, STL, the MCMC (Fisher) gradient, MCEM,
SAEM and variational EM, and Pyro's ``Trace_ELBO`` as the baseline, each from the same start
under the same budget of wall seconds (:func:`~pyro_lvmle.compare`). Every few steps the
model's exact log-likelihood at the current parameters is recorded, outside the timed part.
It prints the table and writes ``comparison.csv``, ``evaluations.csv``, ``comparison.json``
and ``comparison.png`` into ``./pyro-lvmle-results/``. It needs no input file and no network.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pyro
import pyro.optim
import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO, config_enumerate
from pyro.infer.autoguide import AutoNormal

from . import __version__
from .compare import compare
from .em import MCEM, SAEM, ExactEM, VariationalEM
from .gradients import ContrastiveDivergence, MCMCGradient, empty_guide
from .models import PPCA, RBM, GaussianMixture, LinearGaussian, Theophylline
from .objectives import TraceIWAE_ELBO, TraceSTL_ELBO
from .samplers import BlockGibbs

__all__ = ["main"]

DEFAULT_OUTPUT = "pyro-lvmle-results"


def _linear_gaussian(num_data):
    model = LinearGaussian(dim=2)
    return model, model.simulate(num_data, {"w": torch.tensor([1.0, -2.0]),
                                            "sigma": torch.tensor(0.5)})


def _ppca(num_data):
    model = PPCA(data_dim=6, latent_dim=2)
    truth = {"W": torch.linspace(-1.0, 1.0, 12).reshape(6, 2), "mu": torch.linspace(0.0, 1.0, 6),
             "sigma": torch.tensor(0.3)}
    return model, model.simulate(num_data, truth)


def _gmm(num_data):
    model = GaussianMixture(num_components=2, data_dim=2)
    truth = {"weights": torch.tensor([0.4, 0.6]),
             "locs": torch.tensor([[-2.0, 0.0], [2.0, 1.0]]),
             "scale_tril": torch.eye(2).expand(2, 2, 2)}
    return model, model.simulate(num_data, truth)


def _theophylline(num_data):
    model = Theophylline()  # simulated at nlmixr2's estimates, on the study's design
    return model, model.simulate(num_data)


def _rbm(num_data):
    model = RBM(num_visible=6, num_hidden=3)
    return model, model.simulate(num_data)


#: the fewest simulated data each model's maximum-likelihood estimate needs (PPCA: variance
#: left outside the latent_dim = 2 principal directions of the centred data; the mixture:
#: more data than its 2 components)
MIN_DATA = {"ppca": 4, "gmm": 3}

#: name -> (build(num_data) -> (model, data), default number of data)
MODELS: dict[str, tuple[Callable, int]] = {
    "linear-gaussian": (_linear_gaussian, 200),
    "ppca": (_ppca, 200),
    "gmm": (_gmm, 200),
    "theophylline": (_theophylline, 12),
    "rbm": (_rbm, 200),
}


def _continuous_methods(model, lr):
    """The estimators for a model with continuous latents, by key: (label, method)."""
    return {
        "elbo": ("Trace_ELBO (Pyro), AutoNormal", Trace_ELBO()),
        "iwae": ("IWAE K=8, AutoNormal", TraceIWAE_ELBO(8)),
        "dreg": ("DReG K=8, AutoNormal", TraceIWAE_ELBO(8, "dreg")),
        "stl": ("STL, AutoNormal", TraceSTL_ELBO(1)),
        "mcmc": ("MCMC gradient (HMC, 4 chains)",
                 MCMCGradient("hmc", num_chains=4, warmup_steps=50, num_steps=5)),
        "mcem": ("MCEM (HMC, 20 draws)",
                 MCEM(model, "hmc", num_samples=20, warmup_steps=50, auto=False, m_steps=10,
                      kernel_options={"num_steps": 5}, record_params=False)),
        "saem": ("SAEM (HMC)", SAEM(model, "hmc", burn_in=20, num_chains=4, warmup_steps=50,
                                    kernel_options={"num_steps": 5}, record_params=False)),
        "vem": ("variational EM, AutoNormal",
                VariationalEM(model, AutoNormal(model), optim=pyro.optim.Adam({"lr": lr}),
                              e_steps=5, record_params=False)),
    }


def _methods(name, model, lr):
    """The methods that apply to the model ``name``: (label -> method, guide)."""
    if name == "gmm":  # a discrete latent: summed out by Pyro's enumeration or exact EM
        enumerated = config_enumerate(model)
        return {"elbo": ("TraceEnum_ELBO (Pyro), labels summed out",
                         (TraceEnum_ELBO(max_plate_nesting=1), empty_guide)),
                "exact-em": ("exact EM", ExactEM(model, record_params=False))}, None, enumerated
    if name == "rbm":  # undirected: the positive/negative-phase gradient, chains by block Gibbs
        gibbs = BlockGibbs(model.hidden_conditional, model.visible_conditional)
        return {"cd": ("CD-1, block Gibbs", ContrastiveDivergence(1, sampler=gibbs)),
                "pcd": ("PCD-1, block Gibbs", ContrastiveDivergence(1, persistent=True,
                                                                  num_chains=4,
                                                                  sampler=gibbs))
                }, empty_guide, model
    return _continuous_methods(model, lr), AutoNormal(model), model


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line: ``pyro-lvmle: error: ...``."""

    def error(self, message):
        self.exit(2, f"pyro-lvmle: error: {message} (see pyro-lvmle --help)\n")


def _number(kind, check, what):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if not check(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    parse.__name__ = what  # argparse names the type in some messages
    return parse


_positive_int = _number(int, lambda v: v >= 1, "a positive integer")
_positive_float = _number(float, lambda v: v > 0 and math.isfinite(v),
                          "a finite positive number")
# numpy's seeds, which pyro.set_rng_seed sets too
_seed = _number(int, lambda v: 0 <= v < 2**32, "an integer in [0, 2**32)")

ALL_METHODS = ("elbo", "iwae", "dreg", "stl", "mcmc", "mcem", "saem", "vem", "exact-em",
               "cd", "pcd")


def _method_list(text):
    keys = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in keys if k not in ALL_METHODS]
    if not keys or unknown:
        raise argparse.ArgumentTypeError(f"must be a comma-separated list of "
                                         f"{', '.join(ALL_METHODS)}; got {text!r}")
    return keys


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pyro-lvmle",
        description="Maximum-likelihood estimation of latent-variable models for Pyro. "
        "Without a command, runs 'compare' (its options may be given directly).",
    )
    parser.add_argument("--version", action="version", version=f"pyro-lvmle {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    cmp = sub.add_parser(
        "compare",
        help="compare the estimators on a reference model with simulated data",
        description="Fit a built-in reference model to simulated data with each estimator "
        "under the same budget; print the exact log-likelihood each reaches and write CSV, "
        "JSON and PNG results.",
    )
    cmp.add_argument("--model", choices=sorted(MODELS), default="linear-gaussian",
                     help="reference model (default: %(default)s)")
    cmp.add_argument("--methods", type=_method_list, default=None,
                     help="comma-separated subset of: " + ", ".join(ALL_METHODS)
                     + " (default: all that apply to the model)")
    cmp.add_argument("--num-data", type=_positive_int, default=None,
                     help="simulated data (default: 200; 12 subjects for theophylline)")
    cmp.add_argument("--budget", type=_positive_float, default=4.0,
                     help="wall seconds per method, evaluations excluded (default: %(default)s)")
    cmp.add_argument("--max-steps", type=_positive_int, default=None,
                     help="also stop each method after this many steps")
    cmp.add_argument("--max-evaluations", type=_positive_int, default=None,
                     help="also stop each method after this many runs of the model (a cost "
                          "independent of the machine's speed and load)")
    cmp.add_argument("--eval-every", type=_positive_int, default=10,
                     help="steps between evaluations (default: %(default)s)")
    cmp.add_argument("--lr", type=_positive_float, default=0.05,
                     help="Adam learning rate (default: %(default)s)")
    cmp.add_argument("--seed", type=_seed, default=0,
                     help="random seed, in [0, 2**32) (default: %(default)s)")
    cmp.add_argument("--output", default=DEFAULT_OUTPUT,
                     help="directory for the results (default: ./%(default)s)")
    cmp.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                     help="where data, parameters and chains live (default: %(default)s)")
    return parser


def _argv(argv):
    """``compare`` inserted where no command is given (``pyro-lvmle --model ppca``)."""
    argv = list(argv)
    if not argv or (argv[0] not in ("compare", "-h", "--help", "--version")
                    and argv[0].startswith("-")):
        argv.insert(0, "compare")
    return argv


def run_compare(args) -> int:
    """Run the ``compare`` command on parsed arguments; returns the exit status.

    :param argparse.Namespace args: the parsed options.
    """
    build, default_num = MODELS[args.model]
    num_data = default_num if args.num_data is None else args.num_data
    pyro.set_rng_seed(args.seed)
    pyro.clear_param_store()
    model, data = build(num_data)
    available, guide, fitted = _methods(args.model, model, args.lr)
    keys = list(available) if args.methods is None else args.methods
    missing = [k for k in keys if k not in available]
    if missing:
        print(f"pyro-lvmle: error: the {args.model} model has no method {missing}; it has "
              f"{', '.join(available)}", file=sys.stderr)
        return 2
    methods = {available[k][0]: available[k][1] for k in keys}
    budget = {"seconds": args.budget}
    if args.max_steps is not None:
        budget["steps"] = args.max_steps
    if args.max_evaluations is not None:
        budget["model_evaluations"] = args.max_evaluations
    print(f"pyro-lvmle {__version__}: {args.model}, {num_data} simulated data, "
          f"{len(methods)} methods, {args.budget:g} s each (seed {args.seed}, {args.device})")

    def exact(*model_args, **model_kwargs):
        return float(model.log_marginal(data).detach())

    comparison = compare(methods, fitted, data, evaluate=exact, budget=budget,
                         eval_every=args.eval_every, guide=guide,
                         optim=pyro.optim.Adam({"lr": args.lr}), seed=args.seed)
    comparison.info.update(model=args.model, num_data=num_data, evaluation="log p(x) (exact)")
    print(comparison.format())
    if args.model in ("linear-gaussian", "ppca"):  # closed-form MLEs: the ceiling
        best = float(model.log_marginal(data, model.mle(data)).detach())
        comparison.info["max_log_likelihood"] = best
        print(f"maximum log-likelihood (closed-form MLE): {best:.4f}")
    paths = comparison.save(args.output)
    print(f"wrote {paths['table']}, {paths['png']} and the evaluations (CSV, JSON)")
    interrupted = comparison.info.get("interrupted")
    if interrupted is not None:
        left = [name for name in methods if name != interrupted
                and name not in comparison.records and name not in comparison.errors]
        print(f"pyro-lvmle: interrupted during {interrupted!r}: the table holds what was "
              f"recorded until then" + (f"; not run: {', '.join(left)}" if left else ""),
              file=sys.stderr)
        return 130
    if not comparison.records:
        print("pyro-lvmle: every method failed (see the table)", file=sys.stderr)
        return 1
    return 0


def _writable_directory(path: str) -> str | None:
    """Why the results cannot be written to directory ``path`` (``None`` if they can),
    found before the methods run, not after: the directory is created now if missing."""
    if not path:
        return "give a directory"
    target = Path(path).expanduser()
    if target.exists() and not target.is_dir():
        return f"{path} exists and is not a directory"
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        return f"cannot create {path}: {error.strerror}"
    return None if os.access(target, os.W_OK | os.X_OK) else f"{path} is not writable"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pyro-lvmle`` console script.

    :param argv: arguments without the program name; defaults to ``sys.argv[1:]``.
    :returns: the process exit status.
    """
    parser = _parser()
    args = parser.parse_args(_argv(sys.argv[1:] if argv is None else argv))
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("argument --device: cuda is not available on this machine")
    if args.num_data is not None and args.num_data < MIN_DATA.get(args.model, 1):
        parser.error(f"argument --num-data: the {args.model} model needs at least "
                     f"{MIN_DATA[args.model]} data, got {args.num_data}")
    problem = _writable_directory(args.output)
    if problem is not None:
        parser.error(f"argument --output: {problem}")
    dtype, device = torch.get_default_dtype(), torch.get_default_device()
    torch.set_default_dtype(torch.float64)
    torch.set_default_device(args.device)
    try:
        return run_compare(args)
    finally:
        torch.set_default_dtype(dtype)
        torch.set_default_device(device)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
