"""Signal-to-noise ratio of the guide gradient against K on Rainforth et al.'s Gaussian toy.

The model of Rainforth et al. (2018, section 4): D = 20, z ~ N(mu, I), x | z ~ N(z, I), with
an amortized guide q(z | x) = N(A x + b, (2/3) I) whose A, b start near their optimum
(A = I/2, b = mu/2) perturbed by N(0, 0.01^2). For each K and objective this draws the
gradient ``--draws`` times (``lv.check_gradient``) and reports the mean over coordinates of
|mean| / std: for IWAE's reparameterized gradient the guide's SNR falls like 1/sqrt(K)
(their "tighter bounds are not necessarily better"), for DReG and STL it rises.
Run: ``python benchmarks/snr.py``.
"""

import argparse

import pyro
import pyro.distributions as dist
import torch

import pyro_lvmle as lv

D = 20


def make_problem(num_data=512, seed=0):
    gen = torch.Generator().manual_seed(seed)
    mu = torch.randn(D, generator=gen, dtype=torch.float64)
    data = mu + 2**0.5 * torch.randn(num_data, D, generator=gen, dtype=torch.float64)
    A0 = 0.5 * torch.eye(D, dtype=torch.float64) + 0.01 * torch.randn(D, D, generator=gen,
                                                                      dtype=torch.float64)
    b0 = 0.5 * mu + 0.01 * torch.randn(D, generator=gen, dtype=torch.float64)

    def model(x):
        loc = pyro.param("mu", lambda: mu.clone())
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    def guide(x):
        A = pyro.param("A", lambda: A0.clone())
        b = pyro.param("b", lambda: b0.clone())
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(x @ A.T + b, (2 / 3) ** 0.5).to_event(1))

    return model, guide, data


def main(draws=100, particles=(1, 10, 100)):
    torch.set_default_dtype(torch.float64)
    model, guide, data = make_problem()
    objectives = {
        "IWAE (reparam)": lambda k: lv.TraceIWAE_ELBO(k, "reparam", max_plate_nesting=1),
        "IWAE (DReG)": lambda k: lv.TraceIWAE_ELBO(k, "dreg", max_plate_nesting=1),
        "ELBO (STL)": lambda k: lv.TraceSTL_ELBO(k, max_plate_nesting=1),
    }
    print(f"Rainforth et al. (2018) Gaussian toy, D = {D}, N = {len(data)}, {draws} draws: "
          "mean SNR over coordinates\n")
    print("| K | " + " | ".join(f"{n}: guide b | {n}: model mu" for n in objectives) + " |")
    print("|---|" + "---|---|" * len(objectives))
    for k in particles:
        cells = []
        for make in objectives.values():
            pyro.clear_param_store()
            pyro.set_rng_seed(0)
            check = lv.check_gradient(model, guide, make(k), data, num_draws=draws)
            cells += [f"{check.rows['b'].snr.mean().item():.2f}",
                      f"{check.rows['mu'].snr.mean().item():.2f}"]
        print(f"| {k} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=100)
    args = parser.parse_args()
    main(args.draws)
