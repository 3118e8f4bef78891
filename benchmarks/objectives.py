"""Time per SVI step on the binarized-digits VAE: ours vs Pyro's RenyiELBO vs a torch loop.

For K = 1, 5, 50 particles and a batch of 100, one thread, float32 (the precision VAEs
train in), each round times ``--steps`` optimizer steps of

* ours: ``SVI(vae.model, vae.guide, Adam, lv.TraceIWAE_ELBO(K, estimator="reparam"))``;
* Pyro: ``SVI(..., RenyiELBO(alpha=0, num_particles=K, vectorize_particles=True))``, the
  same bound (and the same gradient on this all-reparameterized model);
* by hand: the bound written directly in torch with ``torch.optim.Adam``;

interleaved, and reports medians over ``--rounds`` rounds and their ratios.
Run: ``python benchmarks/objectives.py``.
"""

import argparse
import pathlib
import statistics
import sys
import time

import pyro
import pyro.optim
import torch
from pyro.infer import SVI, RenyiELBO

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from _vae import VAE, load_binarized_digits  # noqa: E402

import pyro_lvmle as lv  # noqa: E402


def _time_svi(loss, batches, steps):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    vae = VAE()
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), loss)
    svi.step(batches[0])  # warm up: parameter creation, plate-nesting guess
    start = time.perf_counter()
    for i in range(steps):
        svi.step(batches[i % len(batches)])
    return (time.perf_counter() - start) / steps


def _time_by_hand(num_particles, batches, steps):
    torch.manual_seed(0)
    vae = VAE()
    optim = torch.optim.Adam(vae.parameters(), lr=1e-3)

    def step(x):
        optim.zero_grad()
        loss = vae.iwae_loss_by_hand(x, num_particles)
        loss.backward()
        optim.step()
        return loss.item()

    step(batches[0])
    start = time.perf_counter()
    for i in range(steps):
        step(batches[i % len(batches)])
    return (time.perf_counter() - start) / steps


def main(rounds=5, steps=30, particles=(1, 5, 50)):
    torch.set_num_threads(1)
    train, _ = load_binarized_digits()
    train = train.float()
    batches = list(train.split(100))[:15]
    print(f"median of {rounds} interleaved rounds x {steps} steps, batch 100, 1 thread, "
          f"float32, pyro validation {'on' if pyro.infer.util.is_validation_enabled() else 'off'}")
    print("\n| K | ours (ms/step) | Pyro RenyiELBO (ms/step) | torch by hand (ms/step) | "
          "ours / Pyro | ours / by hand |")
    print("|---|---|---|---|---|---|")
    for k in particles:
        times = {"ours": [], "pyro": [], "hand": []}
        for _ in range(rounds):
            times["ours"].append(_time_svi(lv.TraceIWAE_ELBO(k, "reparam"), batches, steps))
            times["pyro"].append(_time_svi(
                RenyiELBO(alpha=0.0, num_particles=k, vectorize_particles=True), batches, steps))
            times["hand"].append(_time_by_hand(k, batches, steps))
        med = {name: statistics.median(v) for name, v in times.items()}
        print(f"| {k} | {1e3 * med['ours']:.2f} | {1e3 * med['pyro']:.2f} | "
              f"{1e3 * med['hand']:.2f} | {med['ours'] / med['pyro']:.2f} | "
              f"{med['ours'] / med['hand']:.2f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    main(args.rounds, args.steps)
