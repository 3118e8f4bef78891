r"""Cost of the MCMC gradient's sampler: our batched potential and HMC vs Pyro's.

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

3. a count model, the N-mixture model of Royle (2004) (R = 50 sites, T = 3 visits,
   :math:`n_i \sim \mathrm{Poisson}(\lambda)` latent, :math:`y_{ij} \sim
   \mathrm{Binomial}(n_i, p)` observed), and the same with a continuous site effect
   (:math:`\epsilon_i \sim N(0, \sigma^2)`, :math:`n_i \sim \mathrm{Poisson}(\lambda
   e^{\epsilon_i})`), sampled by ``MCMCGradient("hmc").draw`` (Metropolis-within-Gibbs on
   the counts, then 10 leapfrog steps on the continuous latents, if any): potential
   evaluations with gradient per second (chains x ``value_and_grad`` calls / s; the
   discrete step's per-site energies, ``block_energy``, counted apart) and the effective
   samples per second of the counts (``pyro.ops.stats.effective_sample_size`` over the
   chains, smallest and median over sites). Pyro's NUTS cannot sample a Poisson latent:
   the error it raises is printed.

Run: ``python benchmarks/mcmc_gradient.py``.
"""

import argparse
import contextlib
import statistics
import time

import pyro
import pyro.distributions as dist
import torch
from pyro.infer.mcmc.util import initialize_model
from pyro.ops.integrator import potential_grad
from pyro.ops.stats import effective_sample_size
from torch.distributions import constraints

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


def nmixture(y):
    """Royle's N-mixture model: site abundances ``n`` latent, ``y`` ``(R, T)`` visit counts."""
    lam = pyro.param("lam", torch.tensor(5.0), constraint=constraints.positive)
    p = pyro.param("p", torch.tensor(0.4), constraint=constraints.unit_interval)
    with pyro.plate("sites", y.shape[0], dim=-2):
        n = pyro.sample("n", dist.Poisson(lam))
        with pyro.plate("visits", y.shape[1], dim=-1):
            pyro.sample("y", dist.Binomial(n, p), obs=y)


def nmixture_site_effect(y):
    """The N-mixture model with a continuous site effect on the log abundance."""
    lam = pyro.param("lam", torch.tensor(5.0), constraint=constraints.positive)
    p = pyro.param("p", torch.tensor(0.4), constraint=constraints.unit_interval)
    sigma = pyro.param("sigma", torch.tensor(0.5), constraint=constraints.positive)
    with pyro.plate("sites", y.shape[0], dim=-2):
        effect = pyro.sample("effect", dist.Normal(0.0, sigma))
        n = pyro.sample("n", dist.Poisson(lam * effect.exp()))
        with pyro.plate("visits", y.shape[1], dim=-1):
            pyro.sample("y", dist.Binomial(n, p), obs=y)


def nmixture_long(y):
    """:func:`nmixture` on the data in long format, indexed plainly (``n[site]``): the
    potential evaluates it under vmap, where the counts form one block."""
    lam = pyro.param("lam", torch.tensor(5.0), constraint=constraints.positive)
    p = pyro.param("p", torch.tensor(0.4), constraint=constraints.unit_interval)
    site = torch.arange(y.shape[0]).repeat_interleave(y.shape[1])
    with pyro.plate("sites", y.shape[0]):
        n = pyro.sample("n", dist.Poisson(lam))
    with pyro.plate("visits", y.numel()):
        pyro.sample("y", dist.Binomial(n[site], p), obs=y.reshape(-1))


#: model, chains, rounds (the vmap one is slow: one round, 16 chains)
COUNT_MODELS = {"N-mixture": (nmixture, (1, 16, 64), None),
                "N-mixture + site effect": (nmixture_site_effect, (1, 16, 64), None),
                "N-mixture, n[site] (vmap)": (nmixture_long, (16,), 1)}


def _count_data(num_sites=50, num_visits=3):
    generator = torch.Generator().manual_seed(0)
    effect = 0.5 * torch.randn(num_sites, 1, generator=generator, dtype=torch.float64)
    n = torch.poisson(5.0 * effect.exp(), generator=generator)
    return torch.binomial(n.expand(num_sites, num_visits).contiguous(),
                          torch.full((num_sites, num_visits), 0.4), generator=generator)


def pyro_says(model, data):
    """What Pyro's NUTS says when asked to sample ``model`` (its error's first line)."""
    try:
        pyro.infer.MCMC(pyro.infer.NUTS(model), num_samples=2, warmup_steps=2,
                        disable_progbar=True).run(data)
    except Exception as error:  # noqa: BLE001 -- any error is the answer
        return f"{type(error).__name__}: {str(error).splitlines()[0]}"
    return "ran"


@contextlib.contextmanager
def _counting(calls):
    """Count the potential's ``value_and_grad`` and ``block_energy`` calls (times chains)."""
    originals = {name: getattr(Potential, name) for name in ("value_and_grad", "block_energy")}

    def counted(name):
        def method(self, position, *args):
            calls[name] += position.shape[0]
            return originals[name](self, position, *args)
        return method

    for name in originals:
        setattr(Potential, name, counted(name))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(Potential, name, original)


def count_model_rates(model, data, num_chains, num_samples, rounds, warmup_steps=100):
    """Medians over rounds of value_and_grad and block_energy evaluations per second, and the
    smallest and median effective samples per second of the counts, while the chains of a
    warmed-up ``MCMCGradient("hmc")`` draw ``num_samples`` states."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    loss = lv.MCMCGradient("hmc", num_chains=num_chains, warmup_steps=warmup_steps)
    loss.draw(model, (data,), num_samples=1)  # warm-up
    rows = []
    for _ in range(rounds):
        calls = {"value_and_grad": 0, "block_energy": 0}
        with _counting(calls):
            start = time.perf_counter()
            draws = loss.draw(model, (data,), num_samples=num_samples)
            seconds = time.perf_counter() - start
        counts = draws.positions[..., draws.potential.discrete_mask]
        ess = effective_sample_size(counts, chain_dim=0, sample_dim=1)
        ess = ess[torch.isfinite(ess)]
        rows.append((calls["value_and_grad"] / seconds, calls["block_energy"] / seconds,
                     ess.min().item() / seconds, ess.median().item() / seconds))
    return [statistics.median(column) for column in zip(*rows, strict=True)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--transitions", type=int, default=20)
    parser.add_argument("--count-samples", type=int, default=200)
    parser.add_argument("--count-rounds", type=int, default=3)
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

    data = _count_data()
    print("\ncount models (R = 50 sites, T = 3 visits): MCMCGradient('hmc') drawing "
          f"{args.count_samples} states per chain after 100 warm-up transitions (medians of "
          f"{args.count_rounds} rounds)")
    for name, (model, _, _) in COUNT_MODELS.items():
        print(f"{name}: Pyro's NUTS: cannot run ({pyro_says(model, data)})")
    print("| model | chains | value_and_grad / s | block_energy / s | count ESS / s (min) | "
          "count ESS / s (median) | Pyro |")
    print("|---|---|---|---|---|---|---|")
    for name, (model, num_chains, rounds) in COUNT_MODELS.items():
        for chains in num_chains:
            grad, block, ess_min, ess_median = count_model_rates(
                model, data, chains, args.count_samples, rounds or args.count_rounds)
            print(f"| {name} | {chains} | {grad:,.0f} | {block:,.0f} | {ess_min:,.1f} | "
                  f"{ess_median:,.1f} | cannot run |")


if __name__ == "__main__":
    main()
