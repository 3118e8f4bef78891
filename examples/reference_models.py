"""Tour of the reference models: each is an ordinary Pyro model that knows its answers.

For every model: simulate data, fit it with Pyro's own SVI (Trace_ELBO and an AutoNormal
guide, or TraceEnum_ELBO for the mixture), and compare the exact log-likelihood reached with
the one at the closed-form or trusted MLE. Then the Theophylline MLE beside nlmixr2's
published estimates.

Run: ``python examples/reference_models.py`` (``--quick`` for a smoke run).
"""

import argparse
import math

import pyro
import pyro.optim
import torch
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO
from pyro.infer.autoguide import AutoNormal

import pyro_lvmle as lv


def fit_svi(model, data, num_steps, enumerate_=False):
    """Maximize the ELBO with Adam; return the model's fitted parameters."""
    pyro.clear_param_store()
    if enumerate_:
        guide, loss = (lambda *args, **kwargs: None), TraceEnum_ELBO(max_plate_nesting=1)
    else:
        guide, loss = AutoNormal(model), Trace_ELBO()
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), loss)
    for _ in range(num_steps):
        svi.step(data)
    return {k: v.detach() for k, v in model.params().items()}


def main(quick=False):
    torch.set_default_dtype(torch.float64)
    pyro.set_rng_seed(0)
    steps = 20 if quick else 500
    n = 50 if quick else 1000
    print(f"{'model':<20} {'log p(x)/N at SVI fit':>22} {'at MLE':>10}")
    cases = [
        ("LinearGaussian", lv.models.LinearGaussian(dim=3), False),
        ("PPCA", lv.models.PPCA(data_dim=8, latent_dim=2), False),
        ("GaussianMixture", lv.models.GaussianMixture(num_components=2, data_dim=2), True),
    ]
    for name, model, enumerate_ in cases:
        pyro.clear_param_store()
        data = model.simulate(n, {k: 1.5 * v for k, v in model.params().items()}
                              if isinstance(model, lv.models.LinearGaussian) else None)
        fitted = fit_svi(model, data, steps, enumerate_)
        mle = model.mle(data)
        print(f"{name:<20} {model.log_marginal(data, fitted).item() / n:>22.4f} "
              f"{model.log_marginal(data, mle).item() / n:>10.4f}")

    pyro.clear_param_store()
    rbm = lv.models.RBM(num_visible=12, num_hidden=6)
    v = rbm.simulate(n)
    print(f"{'RBM':<20} exact log Z = {rbm.log_partition().item():.4f}, "
          f"log p(v)/N = {rbm.log_marginal(v).item() / n:.4f}")

    model = lv.models.Theophylline()
    data = lv.models.load_theophylline()
    mle = model.mle(data, max_iter=5 if quick else 200)
    cv = [math.sqrt(math.expm1(o**2)) for o in mle["omega"].tolist()]
    print(f"\nTheophylline MLE, log-likelihood {model.log_marginal(data, mle).item():.3f}")
    print(f"{'':<12} {'ours':>8} {'nlmixr2':>8}")
    rows = [("ka (1/h)", mle["tka"].exp().item(), 1.57),
            ("CL (L/h)", mle["tcl"].exp().item(), 2.76),
            ("V (L)", mle["tv"].exp().item(), 31.5), ("add. sd", mle["add_sd"].item(), 0.693),
            ("CV ka", cv[0], 0.715), ("CV CL", cv[1], 0.276), ("CV V", cv[2], 0.134)]
    for name, ours, theirs in rows:
        print(f"{name:<12} {ours:>8.3f} {theirs:>8.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few steps only")
    main(parser.parse_args().quick)
