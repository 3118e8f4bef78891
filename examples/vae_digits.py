"""A VAE on binarized digits trained with the ELBO, IWAE (K = 5, 50) and DReG (K = 50).

Each method trains the same architecture (``benchmarks/_vae.py``: one hidden layer of 200
tanh units each way, 10 latent dimensions) with Adam on 1500 binarized 8x8 digits, and the
held-out log-likelihood of the 297 others is estimated by importance sampling with the
trained encoder as proposal and 5000 samples per digit (``TraceIWAE_ELBO(5000)``, whose
value is the log of the importance-sampling estimate). Tighter bounds train better
generative models: expect the ELBO's VAE worst and IWAE with K = 50 best.

Run: ``python examples/vae_digits.py`` (about 5 minutes on 2 cores; ``--quick`` for a
smoke run).
"""

import argparse
import pathlib
import sys
import time

import pyro
import pyro.optim
import torch
from pyro.infer import SVI, Trace_ELBO

sys.path.insert(0, str(pathlib.Path(__file__).parent.parent / "benchmarks"))
from _vae import VAE, load_binarized_digits  # noqa: E402

import pyro_lvmle as lv  # noqa: E402

METHODS = {
    "VAE (Trace_ELBO)": lambda: Trace_ELBO(),
    "IWAE K=5": lambda: lv.TraceIWAE_ELBO(5, "reparam", max_plate_nesting=1),
    "IWAE K=50": lambda: lv.TraceIWAE_ELBO(50, "reparam", max_plate_nesting=1),
    "IWAE K=50, DReG": lambda: lv.TraceIWAE_ELBO(50, "dreg", max_plate_nesting=1),
}


def held_out_log_likelihood(vae, test, num_samples, chunk=10):
    """Average importance-sampling estimate of log p(x) per test digit."""
    estimator = lv.TraceIWAE_ELBO(num_samples, "reparam", max_plate_nesting=1)
    total = 0.0
    with torch.no_grad():
        for batch in test.split(chunk):
            total += -estimator.loss(vae.model, vae.guide, batch)
    return total / len(test)


def main(epochs=300, num_samples=5000, quick=False):
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    train, test = load_binarized_digits()
    train, test = train.float(), test.float()
    if quick:
        epochs, num_samples, test = 1, 20, test[:20]
    print(f"{'method':<20} {'test log p(x)':>14} {'train ELBO':>11} {'minutes':>8}")
    results = {}
    for name, make_loss in METHODS.items():
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        vae = VAE().float()
        svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), make_loss())
        start = time.perf_counter()
        for _ in range(epochs):
            perm = torch.randperm(len(train))
            for batch in train[perm].split(100):
                svi.step(batch)
        minutes = (time.perf_counter() - start) / 60
        elbo = -Trace_ELBO().loss(vae.model, vae.guide, train) / len(train)
        results[name] = held_out_log_likelihood(vae, test, num_samples)
        print(f"{name:<20} {results[name]:>14.3f} {elbo:>11.3f} {minutes:>8.2f}")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--num-samples", type=int, default=5000)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    main(args.epochs, args.num_samples, args.quick)
