"""Data-parallel maximum likelihood on torch.distributed: a user's PPCA model, two ways.

Launch with two processes (gloo on CPU; NCCL with ``--backend nccl`` on GPUs)::

    torchrun --standalone --nproc_per_node=2 examples/distributed_fit.py --quick

Each process holds a shard of the data and runs the same model on it, the plate declared
over the *whole* data set with this rank's global indices (so Pyro scales each rank's loss
to the full data); :class:`pyro_lvmle.parallel.DataParallel` averages the gradients over the
ranks, so every rank takes the same step. Fitted three ways:

* SVI with the importance-weighted bound (:class:`pyro_lvmle.TraceIWAE_ELBO`, 8 particles)
  and a mean-field guide with one location per datum (each rank touches only its own rows);
* SGD on Fisher's identity (:class:`pyro_lvmle.MCMCGradient`, batched HMC chains kept per
  datum: each rank's chains are those of its own data);
* stochastic-approximation EM (:class:`pyro_lvmle.SAEM`, generic form) with
  ``ranks=RankSum()``: each rank keeps the HMC chains of its data, and the Q-function's value
  and gradient are summed over the ranks in every M-step, so every rank takes the same one.

The exact log-likelihood of each fit and of the closed-form MLE (Tipping & Bishop 1999,
:class:`pyro_lvmle.models.PPCA`) are printed by rank 0. Run without ``torchrun`` it fits in
one process.
"""

from __future__ import annotations

import argparse
import os
import time

import pyro
import pyro.distributions as dist
import torch
import torch.distributed as distributed
from pyro.infer import SVI
from pyro.optim import Adam

import pyro_lvmle as lv
from pyro_lvmle.parallel import DataParallel, RankSum, shard

DATA_DIM, LATENT_DIM = 6, 2


def model(x, idx, num_data):
    """PPCA written as a user would: the plate over the whole data set, subsampled by idx."""
    W = pyro.param("W", 0.1 * torch.ones(DATA_DIM, LATENT_DIM))
    mu = pyro.param("mu", torch.zeros(DATA_DIM))
    sigma = pyro.param("sigma", torch.tensor(1.0), constraint=dist.constraints.positive)
    with pyro.plate("data", num_data, subsample=idx):
        z = pyro.sample("z", dist.Normal(torch.zeros(LATENT_DIM), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ W.T + mu, sigma).to_event(1), obs=x)


def guide(x, idx, num_data):
    loc = pyro.param("z_loc", torch.zeros(num_data, LATENT_DIM))
    scale = pyro.param("z_scale", torch.ones(num_data, LATENT_DIM),
                       constraint=dist.constraints.positive)
    with pyro.plate("data", num_data, subsample=idx):
        pyro.sample("z", dist.Normal(loc[idx], scale[idx]).to_event(1))


def fit(name, loss, guide_fn, x, idx, num_data, num_steps, lr):
    pyro.clear_param_store()
    pyro.set_rng_seed(1 + distributed.get_rank())  # each rank its own draws
    svi = SVI(model, guide_fn, Adam({"lr": lr}), loss=DataParallel(loss))
    start = time.perf_counter()
    for _ in range(num_steps):
        svi.step(x[idx], idx, num_data)
    seconds = time.perf_counter() - start
    params = {n: pyro.param(n).detach() for n in ("W", "mu", "sigma")}
    return name, params, seconds


def fit_saem(x, idx, num_data, num_steps):
    """SAEM on this rank's shard, its sums over data reduced across the ranks."""
    pyro.clear_param_store()
    pyro.set_rng_seed(1 + distributed.get_rank())
    saem = lv.SAEM(model, "hmc", burn_in=num_steps // 2, num_chains=2, warmup_steps=50,
                   m_steps=10, ranks=RankSum())
    start = time.perf_counter()
    saem.run(x[idx], idx, num_data, num_steps=num_steps, progress=False)
    seconds = time.perf_counter() - start
    params = {n: pyro.param(n).detach() for n in ("W", "mu", "sigma")}
    return "SAEM (HMC)", params, seconds


def main(quick: bool = False, backend: str = "gloo"):
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    if not distributed.is_initialized():
        if "RANK" not in os.environ:  # a plain `python` run: one process
            os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29531", RANK="0",
                              WORLD_SIZE="1")
        distributed.init_process_group(backend)
    rank, world_size = distributed.get_rank(), distributed.get_world_size()
    reference = lv.models.PPCA(DATA_DIM, LATENT_DIM, prefix="truth_")
    pyro.set_rng_seed(0)  # the same data set on every rank; each keeps its shard
    num_data = 400 if quick else 2000
    data = reference.simulate(num_data).detach()
    idx = shard(num_data)
    num_steps = 300 if quick else 2000
    runs = [
        fit("SVI + IWAE (K=8)", lv.TraceIWAE_ELBO(num_particles=8), guide, data, idx,
            num_data, num_steps, 0.02),
        fit("SGD + MCMCGradient (HMC)", lv.MCMCGradient("hmc", num_samples=1, warmup_steps=50,
                                                        num_chains=1), lv.empty_guide,
            data, idx, num_data, num_steps, 0.02),
        fit_saem(data, idx, num_data, 40 if quick else 200),
    ]
    best = reference.log_marginal(data, reference.mle(data)).item() / num_data
    if rank == 0:
        print(f"{world_size} process(es), {num_data} data ({len(idx)} on rank 0)")
        print("| method | log p(x) / N | gap to MLE | seconds |")
        print("|---|---|---|---|")
        for name, params, seconds in runs:
            value = reference.log_marginal(data, params).item() / num_data
            print(f"| {name} | {value:.4f} | {best - value:.4f} | {seconds:.1f} |")
        print(f"| closed-form MLE | {best:.4f} | 0 | |")
    distributed.destroy_process_group()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run")
    parser.add_argument("--backend", default="gloo", choices=["gloo", "nccl"])
    arguments = parser.parse_args()
    main(quick=arguments.quick, backend=arguments.backend)
