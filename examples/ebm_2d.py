"""A continuous 2-D energy-based model trained by PCD with Langevin chains.

The model is an ordinary Pyro model: an improper observed site on the plane and
``pyro.factor`` adding the log unnormalized density

.. math::

    \\log \\tilde p(x; \\theta) = \\sum_{j=1}^{49} \\theta_j
        \\exp\\Big(-\\frac{|x - c_j|^2}{2 \\cdot 0.8^2}\\Big) - \\frac{|x|^2}{2 \\cdot 2^2},

radial features on a 7 x 7 grid of centres :math:`c_j` over :math:`[-3, 3]^2` (an exponential
family: the log-likelihood is concave in :math:`\\theta`). It is fit by
``lv.ContrastiveDivergence(persistent=True, sampler="ula")`` (unadjusted Langevin, 10 steps
of size 0.2 per optimization step, Adam with rate 0.01) to 1000 draws of a mixture of three
Gaussians. The KL divergence from the target to the model is measured on a 120 x 120 grid
over :math:`[-4, 4]^2` (both densities normalized on the grid). Writes ``ebm_2d.png``:
the target's and the model's densities.

Run: ``python examples/ebm_2d.py`` (about half a minute; ``--quick`` for a smoke run).
"""

import argparse
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pyro  # noqa: E402
import pyro.distributions as dist  # noqa: E402
import torch  # noqa: E402
from torch.distributions import constraints  # noqa: E402

import pyro_lvmle as lv  # noqa: E402

GRID = torch.linspace(-3, 3, 7)


def target():
    """The mixture of three Gaussians (standard deviation 0.5) the model should recover."""
    means = torch.tensor([[-1.2, -0.6], [1.2, 0.6], [0.0, 1.2]])
    return dist.MixtureSameFamily(dist.Categorical(torch.ones(3)),
                                  dist.Independent(dist.Normal(means, 0.5), 1))


def log_density(x, theta):
    """The unnormalized log density at points ``(..., 2)``."""
    centers = torch.cartesian_prod(GRID, GRID).to(x)
    features = torch.exp(-((x.unsqueeze(-2) - centers) ** 2).sum(-1) / (2 * 0.8**2))
    return features @ theta - (x**2).sum(-1) / (2 * 2.0**2)


def model(data):
    """The energy model: ImproperUniform on the plane plus pyro.factor."""
    theta = pyro.param("theta", data.new_zeros(GRID.numel() ** 2))
    with pyro.plate("data", data.shape[0]):
        x = pyro.sample("x", dist.ImproperUniform(constraints.real, (), (2,)), obs=data)
        pyro.factor("log_density", log_density(x, theta))


def grid_kl(theta, points=120):
    """KL(target || model), both normalized on a grid over [-4, 4]^2."""
    axis = torch.linspace(-4, 4, points)
    xy = torch.cartesian_prod(axis, axis)
    log_target = target().log_prob(xy)
    log_model = log_density(xy, theta)
    log_target = log_target - torch.logsumexp(log_target, 0)
    log_model = log_model - torch.logsumexp(log_model, 0)
    return float((log_target.exp() * (log_target - log_model)).sum())


def train(num_steps=400, loss=None, every=50, num_data=1000):
    """Fit by PCD; returns ``[(step, KL)]`` and leaves the fit in Pyro's param store."""
    torch.set_default_dtype(torch.float64)
    pyro.set_rng_seed(0)
    data = target().sample((num_data,))
    loss = loss or lv.ContrastiveDivergence(num_steps=10, persistent=True, sampler="ula",
                                            step_size=0.2, adapt_step_size=False)
    svi = pyro.infer.SVI(model, lv.empty_guide, pyro.optim.Adam({"lr": 0.01}), loss)
    curve = []
    for step in range(1, num_steps + 1):
        svi.step(data)
        if step % every == 0 or step == num_steps:
            curve.append((step, grid_kl(pyro.param("theta").detach())))
    return curve


def main(num_steps=400, quick=False, out="."):
    curve = train(5 if quick else num_steps, every=5 if quick else 50)
    for step, kl in curve:
        print(f"step {step:>4}  KL(target || model) on the grid: {kl:.4f}")
    axis = torch.linspace(-4, 4, 120)
    xy = torch.cartesian_prod(axis, axis)
    theta = pyro.param("theta").detach()
    fig, axes = plt.subplots(1, 2, figsize=(8, 4))
    for ax, values, title in ((axes[0], target().log_prob(xy), "target"),
                              (axes[1], log_density(xy, theta), "PCD + Langevin")):
        ax.imshow(values.exp().reshape(120, 120).T.numpy(), origin="lower",
                  extent=(-4, 4, -4, 4))
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(pathlib.Path(out) / "ebm_2d.png", dpi=120)
    plt.close(fig)
    return curve


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-steps", type=int, default=400)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=".")
    args = parser.parse_args()
    main(args.num_steps, args.quick, args.out)
