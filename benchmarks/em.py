"""Time to the Theophylline maximum likelihood: SAEM, MCEM and variational EM against the
naive Pyro MCEM.

On the real Theophylline data (12 subjects, 3 random effects each), one thread, float64,
each method runs until its own end; after every step the exact log-likelihood (adaptive
Gauss-Hermite quadrature, not timed) is recorded. Reported: the wall time after which the
log-likelihood stays within 0.1 of the maximum (L-BFGS on the quadrature likelihood), and the
final gap; medians over ``--rounds`` interleaved rounds (seeds 0, 1, ...).

* SAEM: :class:`pyro_lvmle.SAEM` with the model's sufficient statistics, 64 batched HMC
  chains of 4 leapfrog steps (one transition per iteration), warm-up 30, burn-in 50: many
  cheap draws per iteration, which the stochastic approximation averages (a batch of 64
  chains costs little more than one: the model runs once for all of them);
* MCEM: :class:`pyro_lvmle.MCEM`, 32 batched HMC chains kept between iterations, the
  ascent-based sample size;
* MCEM, Pyro NUTS re-run each E-step: the loop a Pyro user writes, ``MCMC(NUTS(model),
  warmup_steps=100, num_samples=100).run(data)`` each iteration, then the same L-BFGS M-step;
* variational EM: :class:`pyro_lvmle.VariationalEM`, ``AutoNormal`` guide, ``Trace_ELBO`` with
  8 particles, 10 guide steps and 1 model step (Adam, lr 0.02) per iteration.

**The non-centered model** (``--growth``): :class:`pyro_lvmle.models.LogisticGrowth`, 6
simulated subjects (seed 0), written non-centered (``Asym + b_i``; fraction of missing
information ~0.95-0.98) and centered; for each driver with its default settings the time
after which the exact log-likelihood stays within 0.01 of the exact maximum, side by side.

Run: ``python benchmarks/em.py`` (``--rounds 1`` for a quick look; ``--growth`` for the
logistic-growth table only, ``--theophylline`` for the Theophylline table only).
"""

import argparse
import statistics
import time
from functools import partial

import pyro
import torch
from pyro.infer import MCMC, NUTS, Trace_ELBO
from pyro.infer.autoguide import AutoNormal

import pyro_lvmle as lv
from pyro_lvmle.em.m_step import maximize
from pyro_lvmle.traces import Potential

WITHIN = 0.1


def run_driver(driver, data, num_steps, model, every=1):
    """(time, log-likelihood) after each step; the evaluation is not timed."""
    points = []

    def evaluate(d, metrics):
        if d.iteration % every == 0:
            points.append((d.history.time[-1], model.log_marginal(data).item()))

    driver.run(data, num_steps=num_steps, progress=False, callback=evaluate)
    return points


def saem(model, data):
    driver = lv.SAEM(model, "hmc", burn_in=50, num_chains=64, warmup_steps=30,
                     kernel_options={"num_steps": 4},
                     statistics=model.sufficient_statistics, m_step=model.maximize_statistics,
                     anneal=("omega", "add_sd"))
    return run_driver(driver, data, 400, model)


def mcem(model, data):
    driver = lv.MCEM(model, "hmc", num_samples=5, num_chains=32, warmup_steps=100, tol=0.005,
                     max_num_samples=2000)
    return run_driver(driver, data, 60, model)


def variational_em(model, data):
    guide = AutoNormal(model)
    driver = lv.VariationalEM(model, guide, Trace_ELBO(num_particles=8,
                                                       vectorize_particles=True),
                              pyro.optim.Adam({"lr": 0.02}), e_steps=10, m_steps=1)
    return run_driver(driver, data, 400, model, every=5)


def naive_pyro_mcem(model, data, num_iterations=25):
    """Fresh NUTS run per E-step (warm-up included), L-BFGS M-step on its draws."""
    points, elapsed = [], 0.0
    for _ in range(num_iterations):
        start = time.perf_counter()
        mcmc = MCMC(NUTS(model.model), warmup_steps=100, num_samples=100, disable_progbar=True)
        mcmc.run(data)
        draws = mcmc.get_samples()
        potential = Potential(model.model, (data,))
        positions = potential.pack(draws)
        leaves = dict(pyro.get_param_store().named_parameters())
        maximize(partial(_mean_log_joint, potential, positions), leaves)
        elapsed += time.perf_counter() - start
        points.append((elapsed, model.log_marginal(data).item()))
    return points


def _mean_log_joint(potential, positions):
    return potential.log_joint(positions).mean()


METHODS = {
    "SAEM (sufficient statistics, 64 HMC chains)": saem,
    "MCEM (32 batched HMC chains, persistent)": mcem,
    "MCEM (Pyro NUTS re-run each E-step)": naive_pyro_mcem,
    "Variational EM (AutoNormal, Trace_ELBO)": variational_em,
}


def time_to_within(points, best, within=WITHIN):
    """The first time from which every later log-likelihood is within ``within`` of best."""
    reached = None
    for t, ll in points:
        if best - ll <= within:
            reached = t if reached is None else reached
        else:
            reached = None
    return reached


GROWTH_WITHIN = 0.01

GROWTH_METHODS = {
    "StochasticNewton (defaults)": (lambda m: lv.StochasticNewton(m), 150),
    "MCEM (defaults: verified Newton correction)": (lambda m: lv.MCEM(m), 40),
    "MCEM (newton=False: plain MCEM)": (lambda m: lv.MCEM(m, newton=False), 15),
    "SAEM (defaults)": (lambda m: lv.SAEM(m), 500),
    "SAEM (former defaults: 4 chains, no Newton steps)":
        (lambda m: lv.SAEM(m, num_chains=4, newton=False), 300),
}


def growth(rounds=1):
    """The logistic-growth table: time to within 0.01 of the exact maximum, both forms."""
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    reference = lv.models.LogisticGrowth(prefix="reference_")
    data = reference.simulate(6, params=reference.truth)
    best = reference.log_marginal(data, reference.mle(data)).item()
    print(f"maximum log-likelihood {best:.4f}")
    rows = {}
    for r in range(rounds):
        for name, (build, num_steps) in GROWTH_METHODS.items():
            for centered in (False, True):
                pyro.clear_param_store()
                pyro.set_rng_seed(r)
                model = lv.models.LogisticGrowth(centered=centered)
                points = run_driver(build(model), data, num_steps, model)
                reached = time_to_within(points, best, GROWTH_WITHIN)
                rows.setdefault((name, centered), []).append(
                    (reached, best - points[-1][1], points[-1][0]))
                print(f"round {r}: {name}, centered={centered}: reached {reached}, final gap "
                      f"{best - points[-1][1]:.4f}, run {points[-1][0]:.1f} s", flush=True)
    print(f"\n| method | non-centered: time to within {GROWTH_WITHIN} (s) / final gap | "
          "centered: time (s) / final gap |")
    print("|---|---|---|")
    for name in GROWTH_METHODS:
        cells = []
        for centered in (False, True):
            got = rows[(name, centered)]
            times = [g[0] for g in got if g[0] is not None]
            shown = f"{statistics.median(times):.1f}" if len(times) == len(got) else \
                f"not reached ({len(got) - len(times)} of {len(got)})"
            cells.append(f"{shown} / {statistics.median(g[1] for g in got):.4f}")
        print(f"| {name} | {cells[0]} | {cells[1]} |")


def main(rounds=3):
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    data = lv.models.load_theophylline()
    pyro.clear_param_store()
    reference = lv.models.Theophylline()
    best = reference.log_marginal(data, reference.mle(data)).item()
    print(f"maximum log-likelihood {best:.4f}")
    results = {name: [] for name in METHODS}
    for r in range(rounds):
        for name, fn in METHODS.items():  # interleaved: each round runs every method
            pyro.clear_param_store()
            pyro.set_rng_seed(r)
            points = fn(lv.models.Theophylline(), data)
            results[name].append((time_to_within(points, best), best - points[-1][1],
                                  points[-1][0]))
            print(f"round {r}: {name}: reached {results[name][-1][0]}, "
                  f"final gap {results[name][-1][1]:.4f}, run {points[-1][0]:.1f} s", flush=True)
    print(f"\n| method | time to within {WITHIN} (s) | final gap | run time (s) |")
    print("|---|---|---|---|")
    medians = {}
    for name, rows in results.items():
        reached = [r[0] for r in rows if r[0] is not None]
        medians[name] = statistics.median(reached) if len(reached) == len(rows) else None
        shown = f"{medians[name]:.1f}" if medians[name] is not None else \
            f"not reached in {len(rows) - len(reached)} of {len(rows)} rounds"
        print(f"| {name} | {shown} | {statistics.median(r[1] for r in rows):.4f} | "
              f"{statistics.median(r[2] for r in rows):.1f} |")
    naive = medians["MCEM (Pyro NUTS re-run each E-step)"]
    for name, value in medians.items():
        if value is not None and naive is not None and "NUTS" not in name:
            print(f"{name}: {naive / value:.1f}x faster than the naive Pyro MCEM")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--growth", action="store_true", help="the logistic-growth table only")
    parser.add_argument("--theophylline", action="store_true", help="the Theophylline table only")
    options = parser.parse_args()
    if not options.growth:
        main(options.rounds)
    if not options.theophylline:
        growth(options.rounds)
