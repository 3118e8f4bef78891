r"""Throughput of data-parallel SVI and SAEM: one process against two on the same data.

Probabilistic PCA written as a user would (``examples/distributed_fit.py``'s model: d = 6,
q = 2, a mean-field guide with one location per datum), N data per step, IWAE with 8
particles, Adam; gloo on CPU, one thread per process, float64. For each round, interleaved:

1. **1 process**: one rank runs every datum each step (its loss still wrapped in
   :class:`~pyro_lvmle.parallel.DataParallel`, whose all-reduce then costs next to nothing);
2. **2 processes**: each rank runs its half, then the gradients are averaged.

Reported per setting (medians over ``--rounds``): steps per second, data per second and
their ratio (2 processes / 1), and the cost of the synchronization alone per step (the
status exchange and the ``all_reduce`` of every gradient, timed on their own at the real
gradient size). A speed-up near 2 needs two free cores: on a machine shared with other work
the ratio is lower.

With ``--method saem``: :class:`~pyro_lvmle.SAEM` (generic form, HMC, 2 chains, 5 L-BFGS
iterations per M-step) with ``ranks=RankSum()`` instead of SVI; the synchronization is then
the time spent in the ranks' reductions (share check, M-step evaluations, metrics), waiting
for the slower rank included.

Run: ``python benchmarks/distributed.py [--num-data 20000] [--steps 30] [--rounds 3]
[--method svi|saem]``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import tempfile
import time

import pyro
import torch
import torch.distributed as distributed
import torch.multiprocessing as mp
from pyro.infer import SVI
from pyro.optim import Adam

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import pyro_lvmle as lv  # noqa: E402
from pyro_lvmle.em.ranks import exchange_status  # noqa: E402
from pyro_lvmle.parallel import DataParallel, RankSum, shard  # noqa: E402


class TimedRankSum(RankSum):
    """:class:`RankSum` that adds up the time its reductions take."""

    seconds = 0.0

    def sum(self, tensors):
        start = time.perf_counter()
        out = super().sum(tensors)
        self.seconds += time.perf_counter() - start
        return out


def _saem(rank, directory, num_data, steps, data, idx, model):
    ranks = TimedRankSum()
    saem = lv.SAEM(model, "hmc", burn_in=steps + 1, num_chains=2, warmup_steps=100, m_steps=5,
                   ranks=ranks)
    saem.step(data[idx], idx, num_data)  # create the parameters, warm the chains up
    ranks.seconds = 0.0
    distributed.barrier()
    start = time.perf_counter()
    for _ in range(steps):
        saem.step(data[idx], idx, num_data)
    seconds = time.perf_counter() - start
    if rank == 0:
        torch.save({"seconds": seconds, "sync": ranks.seconds},
                   os.path.join(directory, "result.pt"))
    distributed.barrier()
    distributed.destroy_process_group()


def _rank(rank, world_size, directory, num_data, steps, method):
    from distributed_fit import guide, model  # the example's user-written model

    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    distributed.init_process_group("gloo", init_method=f"file://{directory}/store",
                                   rank=rank, world_size=world_size,
                                   timeout=datetime.timedelta(seconds=120))
    pyro.set_rng_seed(0)  # the same data on every rank
    data = lv.models.PPCA(6, 2, prefix="truth_").simulate(num_data).detach()
    pyro.set_rng_seed(1 + rank)
    idx = shard(num_data)
    if method == "saem":
        return _saem(rank, directory, num_data, steps, data, idx, model)
    loss = DataParallel(lv.TraceIWAE_ELBO(num_particles=8))
    svi = SVI(model, guide, Adam({"lr": 0.01}), loss=loss)
    svi.step(data[idx], idx, num_data)  # create the parameters, warm the caches
    distributed.barrier()
    start = time.perf_counter()
    for _ in range(steps):
        svi.step(data[idx], idx, num_data)
    seconds = time.perf_counter() - start
    grads = [p.detach().clone() for _, p in pyro.get_param_store().named_parameters()]
    distributed.barrier()
    start = time.perf_counter()
    for _ in range(steps):
        exchange_status(None, sum(g.numel() for g in grads) + 1, None)
        loss._mean([torch.zeros(1)] + grads)
    sync = time.perf_counter() - start
    if rank == 0:
        torch.save({"seconds": seconds, "sync": sync}, os.path.join(directory, "result.pt"))
    distributed.destroy_process_group()


def measure(world_size, num_data, steps, method):
    with tempfile.TemporaryDirectory() as directory:
        mp.start_processes(_rank, args=(world_size, directory, num_data, steps, method),
                           nprocs=world_size, start_method="spawn")
        return torch.load(os.path.join(directory, "result.pt"), weights_only=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-data", type=int, default=20000)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--method", default="svi", choices=["svi", "saem"])
    args = parser.parse_args()
    results = {1: [], 2: []}
    for _ in range(args.rounds):  # interleaved
        for world_size in (1, 2):
            results[world_size].append(measure(world_size, args.num_data, args.steps,
                                               args.method))
    what = "IWAE K=8" if args.method == "svi" else "SAEM (HMC, 2 chains, L-BFGS 5)"
    print(f"PPCA d=6 q=2, N={args.num_data} data per step, {what}, {args.steps} steps, "
          f"medians of {args.rounds} rounds")
    print("| processes | steps / s | data / s | sync per step (ms) | speed-up |")
    print("|---|---|---|---|---|")
    rate = {}
    for world_size, runs in results.items():
        seconds = statistics.median(r["seconds"] for r in runs)
        sync = statistics.median(r["sync"] for r in runs) / args.steps * 1e3
        rate[world_size] = args.steps / seconds
        print(f"| {world_size} | {rate[world_size]:.2f} | {rate[world_size] * args.num_data:.0f}"
              f" | {sync:.2f} | {rate[world_size] / rate[1]:.2f}x |")


if __name__ == "__main__":
    main()
