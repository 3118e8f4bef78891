"""Cost of the MCMC gradient's sampler: our batched potential and HMC vs Pyro's.

On probabilistic PCA (d = 5 observed, q = 2 latent dimensions, N = 200 data, so 400 latent
coordinates), one thread, float64:

1. one potential-and-gradient evaluation for 1 and for 64 chains, three ways, interleaved
   over ``--rounds`` rounds (medians):

   * ours: :meth:`pyro_lvmle.traces.Potential.value_and_grad`;
   * Pyro: the ``potential_fn`` of ``pyro.infer.mcmc.util.initialize_model`` through
     ``pyro.ops.integrator.potential_grad`` (what Pyro's HMC and NUTS call);
   * by hand: the same log density written in torch (batched over chains),
     ``torch.autograd.grad``;

2. gradient evaluations per second while sampling: our batched HMC (10 leapfrog steps per
   transition) with 1, 16, 64 and 256 chains, against Pyro's NUTS driven transition by
   transition (one chain; Pyro runs further chains one after another, or one per process).

Run: ``python benchmarks/mcmc_gradient.py``.
"""

import argparse
import statistics
import time

import pyro
import pyro.distributions as dist
import torch
from pyro.infer.mcmc.util import initialize_model
from pyro.ops.integrator import potential_grad

import pyro_lvmle as lv
from pyro_lvmle.samplers import hmc_init, hmc_step
from pyro_lvmle.traces import Potential


def _problem():
    pyro.set_rng_seed(0)
    model = lv.models.PPCA(data_dim=5, latent_dim=2)
    data = model.simulate(200)
    model(data)  # create the parameters
    return model, data


def _by_hand(model, data):
    p = {k: v.detach() for k, v in model.params().items()}

    def value_and_grad(z):  # z: (C, N * q)
        z = z.detach().requires_grad_(True)
        zz = z.reshape(z.shape[0], -1, 2)
        log_p = dist.Normal(0.0, 1.0).log_prob(zz).sum((-1, -2)) + dist.Normal(
            zz @ p["W"].T + p["mu"], p["sigma"]).log_prob(data).sum((-1, -2))
        (grad,) = torch.autograd.grad(-log_p.sum(), z)
        return -log_p.detach(), grad

    return value_and_grad


def _median_time(fn, reps):
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps


def potential_costs(rounds, reps, num_chains=1):
    model, data = _problem()
    potential = Potential(model, (data,))
    _, pyro_fn, _, _ = initialize_model(model, (data,))
    hand = _by_hand(model, data)
    q = torch.randn(num_chains, potential.dim)
    z = {"z": q[0].reshape(200, 2)}
    # the three agree before they are timed
    assert torch.allclose(potential(q), hand(q)[0])
    assert torch.allclose(potential(q)[0], pyro_fn(z))
    runs = {"ours": lambda: potential.value_and_grad(q),
            "pyro": lambda: [potential_grad(pyro_fn, {"z": row.reshape(200, 2)}) for row in q],
            "hand": lambda: hand(q)}
    times = {k: [] for k in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            fn()
            times[name].append(_median_time(fn, reps))
    return {k: statistics.median(v) for k, v in times.items()}


def ours_rate(num_chains, transitions, rounds):
    model, data = _problem()
    potential = Potential(model, (data,))
    state = hmc_init(torch.randn(num_chains, potential.dim) * 0.5, potential, step_size=0.05)
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(transitions):
            state, _ = hmc_step(state, potential, num_steps=10, jitter=0.5)
        rates.append(num_chains * 10 * transitions / (time.perf_counter() - start))
    return statistics.median(rates)


def pyro_rate(transitions, rounds):
    model, data = _problem()
    calls = [0]
    kernel = pyro.infer.NUTS(model)
    kernel.setup(0, data)
    fn = kernel.potential_fn

    def counted(z):
        calls[0] += 1
        return fn(z)

    kernel.potential_fn = counted
    params = kernel.initial_params
    rates = []
    for _ in range(rounds):
        calls[0] = 0
        start = time.perf_counter()
        for _ in range(transitions):
            params = kernel.sample(params)
        rates.append(calls[0] / (time.perf_counter() - start))
    return statistics.median(rates)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--transitions", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)

    print("one potential + gradient evaluation of C chains (median, microseconds; Pyro's "
          "potential evaluates one chain at a time)")
    print("| chains | by hand | ours | Pyro | ours / hand | Pyro / hand |")
    print("|---|---|---|---|---|---|")
    for chains in (1, 64):
        cost = potential_costs(args.rounds, max(args.reps // chains, 5), chains)
        print(f"| {chains} | {cost['hand'] * 1e6:,.0f} | {cost['ours'] * 1e6:,.0f} | "
              f"{cost['pyro'] * 1e6:,.0f} | {cost['ours'] / cost['hand']:.2f}x | "
              f"{cost['pyro'] / cost['hand']:.2f}x |")

    pyro_eval = pyro_rate(args.transitions, args.rounds)
    print("\ngradient evaluations per second while sampling (chains x leapfrog steps / s)")
    print("| chains | ours (batched HMC) | Pyro NUTS | ours / Pyro |")
    print("|---|---|---|---|")
    for chains in (1, 16, 64, 256):
        ours = ours_rate(chains, args.transitions, args.rounds)
        print(f"| {chains} | {ours:,.0f} | {pyro_eval:,.0f} | {ours / pyro_eval:.1f}x |")


if __name__ == "__main__":
    main()
