"""An RBM on binarized digits: CD-1, PCD-1 and PCD-1 with a decaying learning rate.

The 64-visible x 16-hidden :class:`pyro_lvmle.models.RBM` (an ordinary Pyro model: an
improper observed site and ``pyro.factor``) is trained on the 1797 digits of scikit-learn's
``load_digits`` binarized at pixel > 7, with ``SVI`` and ``lv.ContrastiveDivergence``
(block Gibbs from the RBM's conditionals), SGD with a per-datum learning rate of 0.1 and
batches of 100. Every few epochs the average training log-likelihood is measured exactly
(log Z by enumerating the 2^16 hidden configurations) and by annealed importance sampling
(``lv.log_partition``, base at the data's pixel rates); the independent-Bernoulli baseline
is about -25.1 nats. Writes ``rbm_digits_loglik.png`` (the curves) and
``rbm_digits_samples.png`` (fantasy particles of 1000 block-Gibbs steps from each model).

scikit-learn is needed for the data only (a dev dependency; the package does not import it).

Run: ``python examples/rbm_digits.py`` (about 5 minutes on one core; ``--quick`` for a smoke
run).
"""

import argparse
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pyro  # noqa: E402
import torch  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import pyro_lvmle as lv  # noqa: E402
from pyro_lvmle.samplers import BlockGibbs  # noqa: E402
from pyro_lvmle.traces import Potential  # noqa: E402

RUNS = {  # name: (persistent, learning rate schedule epoch -> per-datum rate)
    "CD-1": (False, lambda epoch: 0.1),
    "PCD-1": (True, lambda epoch: 0.1),
    "PCD-1, decaying rate": (True, lambda epoch: 0.1 / (1 + epoch / 50)),
}


def binarized_digits():
    """The 1797 digits, 64 pixels each, as 0/1 (pixel > 7)."""
    return torch.tensor(load_digits().data > 7, dtype=torch.get_default_dtype())


def average_log_likelihood(rbm, data, log_z):
    """Mean over the data of log p~(v) - log Z."""
    return float(-rbm.free_energy(data).mean().detach() - log_z)


def train(name, data, epochs, every, num_betas, batch_size=100):
    persistent, rate = RUNS[name]
    pyro.clear_param_store()
    rbm = lv.models.RBM(64, 16)
    loss = lv.ContrastiveDivergence(num_steps=1, persistent=persistent, sampler=BlockGibbs(
        rbm.hidden_conditional, rbm.visible_conditional))
    optim = pyro.optim.LambdaLR({"optimizer": torch.optim.SGD,
                                 "optim_args": {"lr": 1.0 / batch_size},
                                 "lr_lambda": rate})
    svi = pyro.infer.SVI(rbm.model, lv.empty_guide, optim, loss)
    curve = []
    for epoch in range(1, epochs + 1):
        order = torch.randperm(data.shape[0])
        for start in range(0, data.shape[0] - batch_size + 1, batch_size):
            svi.step(data[order[start:start + batch_size]])
        optim.step()
        if epoch % every == 0 or epoch == epochs:
            exact = average_log_likelihood(rbm, data, float(rbm.log_partition().detach()))
            ais = lv.log_partition(rbm.model, data[:1], method="ais", base={"v": data},
                                   num_chains=100, num_betas=num_betas, sampler="gwg")
            curve.append((epoch, exact, average_log_likelihood(rbm, data, float(ais.value))))
            print(f"{name:<22} epoch {epoch:>4}  exact {exact:8.3f}  AIS {curve[-1][2]:8.3f}",
                  flush=True)
    return rbm, curve


def fantasies(rbm, data, num_steps):
    """Block-Gibbs samples of the trained RBM, 16 chains started at random digits."""
    target = Potential(rbm.model, (data[:16],), uncondition=True)
    sampler = BlockGibbs(rbm.hidden_conditional, rbm.visible_conditional)
    state = sampler.init(target.initial_position(1), target)
    for _ in range(num_steps):
        state, _ = sampler.step(state, target)
    return state.position.reshape(16, 8, 8)


def main(epochs=300, quick=False, out="."):
    torch.set_default_dtype(torch.float64)
    pyro.set_rng_seed(0)
    data = binarized_digits()
    rates = data.mean(0)
    baseline = float(torch.distributions.Bernoulli(rates.clamp(1e-6, 1 - 1e-6))
                     .log_prob(data).sum(-1).mean())
    print(f"independent-Bernoulli baseline: {baseline:.3f} nats")
    epochs, every, num_betas, steps = (1, 1, 10, 5) if quick else (epochs, 25, 1000, 1000)
    curves, samples = {}, {}
    for name in RUNS:
        rbm, curves[name] = train(name, data, epochs, every, num_betas)
        samples[name] = fantasies(rbm, data, steps)
    out = pathlib.Path(out)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in curves.items():
        epochs_, exact, ais = zip(*curve, strict=True)
        line, = ax.plot(epochs_, exact, label=f"{name} (exact)")
        ax.plot(epochs_, ais, "o", color=line.get_color(), label=f"{name} (AIS)")
    ax.axhline(baseline, color="gray", ls=":", label="independent pixels")
    ax.set(xlabel="epoch", ylabel="average log-likelihood (nats)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "rbm_digits_loglik.png", dpi=120)
    fig, axes = plt.subplots(len(samples), 16, figsize=(12, 0.9 * len(samples)))
    for row, (name, images) in zip(axes, samples.items(), strict=True):
        for ax, image in zip(row, images, strict=True):
            ax.imshow(image.numpy(), cmap="gray_r")
            ax.axis("off")
        row[0].set_title(name, fontsize=7, loc="left")
    fig.savefig(out / "rbm_digits_samples.png", dpi=120)
    plt.close("all")
    print("final exact average log-likelihood:")
    for name, curve in curves.items():
        print(f"  {name:<22} {curve[-1][1]:8.3f}")
    return curves


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=".")
    args = parser.parse_args()
    main(args.epochs, args.quick, args.out)
