"""PCD-1 training of the 64 x 16 RBM on binarized digits: ``lv.ContrastiveDivergence`` against
a hand-written torch loop and scikit-learn's ``BernoulliRBM``, at the same settings.

The data: the 1797 digits of ``load_digits``, pixel > 7. Every method runs PCD-1 (persistent
chains of one batch, one block-Gibbs sweep per step) with a per-datum learning rate of 0.1,
batches of 100 (17 full batches per epoch, shuffled), from the same start (weights
:math:`\\mathcal{N}(0, 0.1^2)` from :class:`~pyro_lvmle.models.RBM`'s fixed seed, biases 0;
scikit-learn draws its own start, :math:`\\mathcal{N}(0, 0.01^2)`, and its batches are
``gen_even_slices`` of the shuffled data):

* ours: ``SVI(rbm.model, lv.empty_guide, SGD, loss=lv.ContrastiveDivergence(persistent=True,
  sampler=BlockGibbs(rbm.hidden_conditional, rbm.visible_conditional)))``;
* torch: the update written out by hand (positive statistics at the data, negative at the
  chains, one Gibbs sweep), the loop a practitioner writes;
* scikit-learn: ``BernoulliRBM(n_components=16, learning_rate=0.1, batch_size=100,
  n_iter=epochs)``.

Reported: wall time (median over ``--rounds`` interleaved rounds, one thread, float64), the
ratios to the torch loop, and the exact average log-likelihood each reaches (log Z by
enumerating the 2^16 hidden configurations).

Run: ``python benchmarks/ebm.py`` (``--epochs 30 --rounds 1`` for a quick look).
"""

import argparse
import statistics
import time

import pyro
import torch
from sklearn.datasets import load_digits
from sklearn.neural_network import BernoulliRBM

import pyro_lvmle as lv
from pyro_lvmle.samplers import BlockGibbs

BATCH, RATE, HIDDEN = 100, 0.1, 16


def batches(data, generator):
    order = torch.randperm(data.shape[0], generator=generator)
    for start in range(0, data.shape[0] - BATCH + 1, BATCH):
        yield data[order[start:start + BATCH]]


def ours(data, epochs, seed):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    rbm = lv.models.RBM(64, HIDDEN)
    loss = lv.ContrastiveDivergence(num_steps=1, persistent=True, sampler=BlockGibbs(
        rbm.hidden_conditional, rbm.visible_conditional))
    svi = pyro.infer.SVI(rbm.model, lv.empty_guide, pyro.optim.SGD({"lr": RATE / BATCH}),
                         loss)
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for _ in range(epochs):
        for batch in batches(data, generator):
            svi.step(batch)
    elapsed = time.perf_counter() - start
    return elapsed, {k: v.detach().clone() for k, v in rbm.params().items()}


def torch_loop(data, epochs, seed):
    pyro.clear_param_store()  # the RBM's initial values, not a previous run's
    torch.manual_seed(seed)
    init = lv.models.RBM(64, HIDDEN).params()
    w, b, c = (init[k].detach().clone() for k in ("weights", "visible_bias", "hidden_bias"))
    generator = torch.Generator().manual_seed(seed)
    chains = data[:BATCH].clone()
    start = time.perf_counter()
    for _ in range(epochs):
        for batch in batches(data, generator):
            positive = torch.sigmoid(batch @ w + c)
            hidden = torch.bernoulli(torch.sigmoid(chains @ w + c))
            chains = torch.bernoulli(torch.sigmoid(hidden @ w.T + b))
            negative = torch.sigmoid(chains @ w + c)
            w += RATE / BATCH * (batch.T @ positive - chains.T @ negative)
            b += RATE / BATCH * (batch.sum(0) - chains.sum(0))
            c += RATE / BATCH * (positive.sum(0) - negative.sum(0))
    elapsed = time.perf_counter() - start
    return elapsed, {"weights": w, "visible_bias": b, "hidden_bias": c}


def sklearn(data, epochs, seed):
    model = BernoulliRBM(n_components=HIDDEN, learning_rate=RATE, batch_size=BATCH,
                         n_iter=epochs, random_state=seed)
    array = data.numpy()
    start = time.perf_counter()
    model.fit(array)
    elapsed = time.perf_counter() - start
    return elapsed, {"weights": torch.as_tensor(model.components_.T),
                     "visible_bias": torch.as_tensor(model.intercept_visible_),
                     "hidden_bias": torch.as_tensor(model.intercept_hidden_)}


METHODS = {"lv.ContrastiveDivergence (PCD-1)": ours, "hand-written torch PCD-1": torch_loop,
           "scikit-learn BernoulliRBM": sklearn}


def main(epochs=300, rounds=3):
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    data = torch.tensor(load_digits().data > 7, dtype=torch.float64)
    reference = lv.models.RBM(64, HIDDEN)
    times = {name: [] for name in METHODS}
    loglik = {}
    for round_ in range(rounds):  # interleaved
        for name, fn in METHODS.items():
            elapsed, params = fn(data, epochs, round_)
            times[name].append(elapsed)
            loglik.setdefault(name, []).append(
                float(reference.log_marginal(data, params).detach()) / data.shape[0])
    base = statistics.median(times["hand-written torch PCD-1"])
    print(f"PCD-1, 64 x {HIDDEN} RBM, binarized digits, {epochs} epochs, lr {RATE}, "
          f"batch {BATCH}, {rounds} rounds (median time; log-likelihood per round)")
    print(f"{'method':<36} {'time (s)':>9} {'x torch':>8}  exact avg log-lik")
    for name in METHODS:
        median = statistics.median(times[name])
        values = ", ".join(f"{v:.3f}" for v in loglik[name])
        print(f"{name:<36} {median:9.2f} {median / base:8.2f}  {values}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    main(args.epochs, args.rounds)
