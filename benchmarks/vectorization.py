"""Time per evaluation of a batched potential: chain plate vs torch.func.vmap over chains.

Median seconds of ``value_and_grad`` (what HMC calls) and of the energy alone, 64 chains,
one thread, the two paths interleaved; and the cost of the automatic choice (building a
``Potential`` with ``vectorization=None`` vs a forced one). Models: PPCA (both paths run it)
and a binomial GLMM written twice, with ``u[herd]`` (vmap only) and ``u[..., herd]`` (plate).

Run: ``PYTHONPATH=. python benchmarks/vectorization.py``
"""

import statistics
import time

import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints

import pyro_lvmle as lv
from pyro_lvmle.traces import Potential

NUM_CHAINS, REPEATS, INNER = 64, 15, 10


def glmm(ellipsis):
    def model(herd, size, y):
        mu = pyro.param("mu", torch.tensor(0.0))
        sd = pyro.param("sd", torch.tensor(1.0), constraint=constraints.positive)
        with pyro.plate("herds", 15):
            u = pyro.sample("u", dist.Normal(0.0, sd))
        with pyro.plate("obs", len(y)):
            logits = mu + (u[..., herd] if ellipsis else u[herd])
            pyro.sample("y", dist.Binomial(size, logits=logits), obs=y)
    return model


def per_call(fn, position):
    start = time.perf_counter()
    for _ in range(INNER):
        fn(position)
    return (time.perf_counter() - start) / INNER


def compare(name, potentials):
    position = potentials[0].sample_prior(NUM_CHAINS)
    times = {label: {"energy": [], "value_and_grad": []} for label, _ in potentials[1:]}
    for _ in range(REPEATS):  # interleaved: drifts in machine load hit both paths alike
        for label, potential in potentials[1:]:
            times[label]["energy"].append(per_call(potential, position))
            times[label]["value_and_grad"].append(per_call(potential.value_and_grad, position))
    for label, row in times.items():
        print(f"{name:10s} {label:22s} " + "  ".join(
            f"{k} {statistics.median(v) * 1e3:7.2f} ms" for k, v in row.items()))


def construction(name, model, args):
    times = {"auto": [], "forced": []}
    for _ in range(REPEATS):
        for label, vec in (("auto", None), ("forced", "plate")):
            start = time.perf_counter()
            Potential(model, args, vectorization=vec)
            times[label].append(time.perf_counter() - start)
    print(f"{name:10s} construction: automatic choice "
          f"{statistics.median(times['auto']) * 1e3:.1f} ms, forced "
          f"{statistics.median(times['forced']) * 1e3:.1f} ms")


def main():
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    pyro.set_rng_seed(0)
    ppca = lv.models.PPCA(data_dim=10, latent_dim=3)
    data = ppca.simulate(200)
    auto = Potential(ppca, (data,))
    print(f"PPCA automatic choice: {auto.vectorization}")
    compare("PPCA", [auto, ("plate", Potential(ppca, (data,), vectorization="plate")),
                     ("vmap", Potential(ppca, (data,), vectorization="vmap"))])
    construction("PPCA", ppca, (data,))
    pyro.clear_param_store()
    herd = torch.arange(15).repeat_interleave(8)
    size = torch.full((120,), 10.0)
    y = dist.Binomial(size, logits=torch.randn(15)[herd]).sample()
    plain = Potential(glmm(False), (herd, size, y))
    print(f"GLMM u[herd] automatic choice: {plain.vectorization}")
    compare("GLMM", [plain, ("u[herd], vmap", plain),
                     ("u[..., herd], plate", Potential(glmm(True), (herd, size, y)))])


if __name__ == "__main__":
    main()
