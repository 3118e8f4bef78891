"""PCD-1 training of the 64 x 16 RBM on binarized digits: ``lv.ContrastiveDivergence`` against
a hand-written torch loop and scikit-learn's ``BernoulliRBM``, at the same settings.

The data: the 1797 digits of ``load_digits``, pixel > 7. Every method runs PCD-1 (persistent
chains of one batch, one block-Gibbs sweep per step) with a per-datum learning rate of 0.1,
batches of 100 (17 full batches per epoch, shuffled), from the same start (weights
:math:`\\mathcal{N}(0, 0.1^2)` from :class:`~pyro_lvmle.models.RBM`'s fixed seed, biases 0;
scikit-learn draws its own start, :math:`\\mathcal{N}(0, 0.01^2)`, and its batches are
``gen_even_slices`` of the shuffled data):

* ours: ``SVI(rbm.model, lv.empty_guide, SGD, loss=lv.ContrastiveDivergence(persistent=True,
  sampler=BlockGibbs(rbm.hidden_conditional, rbm.visible_conditional)))``, with and without
  ``jit_compile=True``; and the same loss's ``differentiable_loss`` in a plain torch loop with
  ``torch.optim.SGD`` (as Pyro's ELBOs allow), with and without ``jit_compile``;
* torch: the update written out by hand (positive statistics at the data, negative at the
  chains, one Gibbs sweep), the loop a practitioner writes;
* torch with autograd: the same sweep, the gradient of the free energies at the data and at
  the chains by ``backward()`` and ``torch.optim.SGD``;
* scikit-learn: ``BernoulliRBM(n_components=16, learning_rate=0.1, batch_size=100,
  n_iter=epochs)``.

Two floors, timed the same way, show what no loss for ``SVI`` can go below: ``SVI.step``
around a loss that does no work (it reads the three parameters and gives them zero
gradients), and one plain run of the Pyro model a step (a loss that reads the model's log
density runs it at least once). Their sum against the hand-written loop bounds what any such
loss can reach.

Reported: wall time (median over ``--rounds`` interleaved rounds, one thread, float64; the
compiled rows include their tracing), the time a step, the ratios to both torch loops, and
the exact average log-likelihood each reaches (log Z by enumerating the 2^16 hidden
configurations).

Run: ``python benchmarks/ebm.py`` (``--epochs 30 --rounds 1`` for a quick look).
"""

import argparse
import os
import statistics
import time
from functools import partial

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


def _loss(seed, jit_compile):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    rbm = lv.models.RBM(64, HIDDEN)
    loss = lv.ContrastiveDivergence(num_steps=1, persistent=True, sampler=BlockGibbs(
        rbm.hidden_conditional, rbm.visible_conditional), jit_compile=jit_compile)
    return rbm, loss


def ours(data, epochs, seed, jit_compile=False):
    rbm, loss = _loss(seed, jit_compile)
    svi = pyro.infer.SVI(rbm.model, lv.empty_guide, pyro.optim.SGD({"lr": RATE / BATCH}),
                         loss)
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for _ in range(epochs):
        for batch in batches(data, generator):
            svi.step(batch)
    elapsed = time.perf_counter() - start
    return elapsed, {k: v.detach().clone() for k, v in rbm.params().items()}


def ours_torch_optim(data, epochs, seed, jit_compile=False):
    """``loss.differentiable_loss`` in a plain torch loop, as Pyro's ELBOs allow."""
    rbm, loss = _loss(seed, jit_compile)
    rbm.model(data[:BATCH])  # the parameters enter Pyro's param store
    params = [pyro.param(name).unconstrained() for name in rbm.param_names]
    optimizer = torch.optim.SGD(params, lr=RATE / BATCH)
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for _ in range(epochs):
        for batch in batches(data, generator):
            optimizer.zero_grad()
            loss.differentiable_loss(rbm.model, lv.empty_guide, batch).backward()
            optimizer.step()
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


def torch_autograd_loop(data, epochs, seed):
    """The same loop with the gradient by autograd (free energies at the data and at the
    chains) and ``torch.optim.SGD``, as a practitioner writes it for a model without a
    hand-derived gradient."""
    pyro.clear_param_store()
    torch.manual_seed(seed)
    init = lv.models.RBM(64, HIDDEN).params()
    w, b, c = (init[k].detach().clone().requires_grad_() for k in
               ("weights", "visible_bias", "hidden_bias"))
    optimizer = torch.optim.SGD([w, b, c], lr=RATE / BATCH)
    generator = torch.Generator().manual_seed(seed)
    chains = data[:BATCH].clone()

    def free_energy(v):
        return -(v @ b) - torch.nn.functional.softplus(v @ w + c).sum(-1)

    start = time.perf_counter()
    for _ in range(epochs):
        for batch in batches(data, generator):
            with torch.no_grad():
                hidden = torch.bernoulli(torch.sigmoid(chains @ w + c))
                chains = torch.bernoulli(torch.sigmoid(hidden @ w.T + b))
            optimizer.zero_grad()
            (free_energy(batch).sum() - free_energy(chains).sum()).backward()
            optimizer.step()
    elapsed = time.perf_counter() - start
    return elapsed, {"weights": w.detach(), "visible_bias": b.detach(),
                     "hidden_bias": c.detach()}


class _NoWork(pyro.infer.ELBO):
    """A loss that reads the parameters and gives them a zero gradient: what ``SVI.step``
    costs around any loss."""

    def __init__(self, names):
        super().__init__()
        self.names = names

    def _get_trace(self, *args):  # pragma: no cover - never called
        raise NotImplementedError

    def loss(self, model, guide, *args, **kwargs):
        return 0.0

    def loss_and_grads(self, model, guide, *args, **kwargs):
        for name in self.names:
            leaf = pyro.param(name).unconstrained()
            leaf.grad = torch.zeros_like(leaf)
        return 0.0


def svi_floor(data, epochs, seed):
    """``SVI.step`` around a loss that does no work: the per-step cost of SVI itself."""
    rbm, _ = _loss(seed, False)
    rbm.model(data[:BATCH])
    svi = pyro.infer.SVI(rbm.model, lv.empty_guide, pyro.optim.SGD({"lr": RATE / BATCH}),
                         _NoWork(rbm.param_names))
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for _ in range(epochs):
        for batch in batches(data, generator):
            svi.step(batch)
    return time.perf_counter() - start, None


def model_floor(data, epochs, seed):
    """One run of the Pyro model a step (no handler around it): what any loss that reads
    the model's log density costs at least, on top of SVI."""
    rbm, _ = _loss(seed, False)
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for _ in range(epochs):
        for batch in batches(data, generator):
            rbm.model(batch)
    return time.perf_counter() - start, None


HAND, AUTOGRAD = "hand-written torch PCD-1", "hand-written, autograd + torch.optim"
FLOORS = {"floor: SVI.step, a loss doing no work": svi_floor,
          "floor: one run of the Pyro model": model_floor}
METHODS = {
    "lv.CD (PCD-1), SVI": ours,
    "lv.CD (PCD-1), SVI, jit_compile": partial(ours, jit_compile=True),
    "lv.CD differentiable_loss + torch.optim": ours_torch_optim,
    "  the same, jit_compile": partial(ours_torch_optim, jit_compile=True),
    HAND: torch_loop,
    AUTOGRAD: torch_autograd_loop,
    "scikit-learn BernoulliRBM": sklearn,
    **FLOORS,
}


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
            if params is not None:
                loglik.setdefault(name, []).append(
                    float(reference.log_marginal(data, params).detach()) / data.shape[0])
    base = statistics.median(times[HAND])
    autograd = statistics.median(times[AUTOGRAD])
    steps = epochs * (data.shape[0] // BATCH)
    print(f"PCD-1, 64 x {HIDDEN} RBM, binarized digits, {epochs} epochs ({steps} steps), lr "
          f"{RATE}, batch {BATCH}, {rounds} rounds (median time; log-likelihood per round); "
          f"load average {os.getloadavg()[0]:.2f} at the end")
    print(f"{'method':<42} {'time (s)':>9} {'ms/step':>8} {'x torch':>8} {'x autograd':>10}"
          "  exact avg log-lik")
    for name in METHODS:
        median = statistics.median(times[name])
        values = ", ".join(f"{v:.3f}" for v in loglik.get(name, []))
        print(f"{name:<42} {median:9.2f} {1e3 * median / steps:8.3f} {median / base:8.2f} "
              f"{median / autograd:10.2f}  {values}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    main(args.epochs, args.rounds)
