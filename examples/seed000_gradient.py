"""Seed 000's question answered four ways, on a model outside the exponential family.

    z_n ~ N(w, 1),    x_n | z_n ~ StudentT(3, tanh(z_n), 0.5),    n = 1..N.

The exact gradient d log p(x; w) / dw = sum_n E[z_n - w | x_n] comes from 1-d quadrature (a
fine grid per datum). Each estimator is called repeatedly at the same w, and the table gives
its bias, standard deviation and time per estimate:

* prior Monte Carlo (the seed's suggestion): log mean_k p(x | z_k), z_k ~ p(z; w),
  differentiated through the draws (``lv.TraceIWAE_ELBO`` with ``lv.PriorGuide``): biased
  for a finite number of draws, since the log of a mean is not the mean of the logs;
* IWAE with a learned guide (an ``AutoNormal`` fitted by IWAE first): biased too, less so;
* Fisher's identity with Pyro's NUTS (``lv.MCMCGradient("nuts")``, persistent chain);
* Fisher's identity with the batched HMC (``lv.MCMCGradient("hmc", num_chains=...)``).

Fisher's estimates are unbiased once the chains have mixed; they are correlated from call to
call (the table's standard deviation is per call). A plot of the estimates goes to ``--out``.

Run: ``python examples/seed000_gradient.py`` (``--quick`` for a smoke run).
"""

import argparse
import math
import pathlib
import time

import pyro
import pyro.distributions as dist
import pyro.optim
import torch
from pyro.infer.autoguide import AutoNormal
from pyro.ops.stats import effective_sample_size

import pyro_lvmle as lv
from pyro_lvmle.traces.params import call_with_params


def model(x):
    w = pyro.param("w", torch.tensor(0.0))
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(w, 1.0))
        pyro.sample("x", dist.StudentT(3.0, torch.tanh(z), 0.5), obs=x)


def exact_gradient(x, w, num_points=20001):
    """sum_n E[z_n - w | x_n] by the trapezoid rule on [w - 12, w + 12]."""
    z = torch.linspace(w - 12.0, w + 12.0, num_points).unsqueeze(-1)
    log_joint = dist.Normal(w, 1.0).log_prob(z) + dist.StudentT(3.0, torch.tanh(z), 0.5) \
        .log_prob(x)
    weights = (log_joint - log_joint.max(0).values).exp()
    return (((z - w) * weights).sum(0) / weights.sum(0)).sum().item()


def estimates(loss, guide, x, num_calls):
    """Repeated gradient estimates of log p(x) in w, and the seconds each took."""
    values, times = [], []
    for _ in range(num_calls):
        start = time.perf_counter()
        value, params = call_with_params(lambda: loss.differentiable_loss(model, guide, x))
        (grad,) = torch.autograd.grad(-value, [params["w"]])
        times.append(time.perf_counter() - start)
        values.append(grad.item())
    return torch.tensor(values), sorted(times)[len(times) // 2]


def main(quick=False, out="seed000_gradient"):
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    pyro.set_rng_seed(0)
    num_data, w = 20, 0.5
    x = dist.StudentT(3.0, torch.tanh(w + torch.randn(num_data)), 0.5).sample()
    pyro.param("w", torch.tensor(w))
    truth = exact_gradient(x, w)
    calls = 10 if quick else 200

    # a guide fitted by IWAE at the current w (the guide's parameters only)
    guide = AutoNormal(model)
    iwae = lv.TraceIWAE_ELBO(num_particles=10)
    optim = pyro.optim.Adam({"lr": 0.05})
    fixed_w = pyro.poutine.block(model, hide=["w"])  # SVI does not see (or move) w
    svi = pyro.infer.SVI(fixed_w, guide, optim, iwae)
    for _ in range(20 if quick else 1000):
        svi.step(x)
    assert pyro.param("w").item() == w

    methods = [
        ("prior MC, K=100", lv.TraceIWAE_ELBO(num_particles=100), lv.PriorGuide(model)),
        ("IWAE K=10, learned guide", iwae, guide),
        ("Fisher, Pyro NUTS (1 chain)", lv.MCMCGradient("nuts", warmup_steps=50 if quick
                                                        else 300), lv.empty_guide),
        ("Fisher, batched HMC (16 chains)", lv.MCMCGradient(
            "hmc", num_chains=16, warmup_steps=50 if quick else 300), lv.empty_guide),
    ]
    print(f"exact d log p(x) / dw at w = {w}: {truth:.4f} (quadrature, N = {num_data})")
    print(f"| {'estimator':<32} | {'bias':>8} | {'sd':>8} | {'ESS':>6} | {'bias/se':>7} | "
          f"{'ms/estimate':>11} |")
    print(f"|{'-' * 34}|{'-' * 10}|{'-' * 10}|{'-' * 8}|{'-' * 9}|{'-' * 13}|")
    results = {}
    for name, loss, g in methods:
        values, seconds = estimates(loss, g, x, calls)
        results[name] = values
        bias, sd = values.mean().item() - truth, values.std().item()
        # successive Fisher estimates share chains: their standard error uses the ESS
        ess = min(float(effective_sample_size(values.reshape(1, -1, 1))), len(values))
        print(f"| {name:<32} | {bias:>8.4f} | {sd:>8.4f} | {ess:>6.0f} | "
              f"{bias / (sd / math.sqrt(ess)):>7.1f} | {1e3 * seconds:>11.2f} |")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.boxplot([v.numpy() for v in results.values()], orientation="horizontal",
               tick_labels=list(results))
    ax.axvline(truth, color="k", linestyle="--", label="exact (quadrature)")
    ax.set_xlabel("estimate of d log p(x) / dw")
    ax.legend(loc="lower right")
    fig.tight_layout()
    path = pathlib.Path(out)
    path.mkdir(parents=True, exist_ok=True)
    fig.savefig(path / "seed000_gradient.png", dpi=120)
    plt.close(fig)
    print(f"plot: {path / 'seed000_gradient.png'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="seed000_gradient")
    args = parser.parse_args()
    main(quick=args.quick, out=args.out)
