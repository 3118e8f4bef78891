"""Cost of the reference models' exact log-likelihoods, against Pyro and hand-written torch.

The exact evaluators are the yardstick of every comparison the package runs, called after
each step of every method, so they must be cheap. For each model this times, in one run with
one thread and interleaved repetitions (medians of ``--rounds`` rounds):

* ours: ``model.log_marginal(data)``;
* Pyro: the same number from Pyro's built-in machinery where it has one
  (``TraceEnum_ELBO`` with an empty guide for the mixture);
* torch: a hand-written torch expression of the same formula.

Run: ``python benchmarks/reference_models.py``.
"""

import argparse
import statistics
import time

import pyro
import torch
from pyro.infer import TraceEnum_ELBO

import pyro_lvmle as lv


def _time(fn, repeats):
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def _cases():
    pyro.set_rng_seed(0)
    gmm = lv.models.GaussianMixture(num_components=3, data_dim=4)
    x_gmm = gmm.simulate(2000)
    p = {k: v.detach() for k, v in gmm.params().items()}
    elbo = TraceEnum_ELBO(max_plate_nesting=1)

    def gmm_torch():
        diff = x_gmm.unsqueeze(-2) - p["locs"]  # (N, K, d)
        sol = torch.linalg.solve_triangular(p["scale_tril"], diff.unsqueeze(-1), upper=False)
        maha = sol.squeeze(-1).pow(2).sum(-1)
        logdet = p["scale_tril"].diagonal(dim1=-2, dim2=-1).log().sum(-1)
        log_comp = -0.5 * maha - logdet - 0.5 * 4 * torch.log(torch.tensor(2 * torch.pi))
        return (log_comp + p["weights"].log()).logsumexp(-1).sum()

    ppca = lv.models.PPCA(data_dim=64, latent_dim=10)
    x_ppca = ppca.simulate(2000)
    q = {k: v.detach() for k, v in ppca.params().items()}

    def ppca_torch():
        cov = q["W"] @ q["W"].T + q["sigma"] ** 2 * torch.eye(64)
        return torch.distributions.MultivariateNormal(q["mu"], cov).log_prob(x_ppca).sum()

    lg = lv.models.LinearGaussian(dim=10)
    x_lg = lg.simulate(2000)

    def lg_torch():
        r = lg.params()
        var = 1 + r["sigma"].detach() ** 2
        return torch.distributions.Normal(r["w"].detach(), var.sqrt()).log_prob(x_lg).sum()

    return [
        ("GaussianMixture K=3 d=4 N=2000", lambda: gmm.log_marginal(x_gmm, p),
         lambda: elbo.loss(gmm, lambda *a, **k: None, x_gmm), gmm_torch),
        ("PPCA d=64 q=10 N=2000", lambda: ppca.log_marginal(x_ppca, q), None, ppca_torch),
        ("LinearGaussian D=10 N=2000", lambda: lg.log_marginal(x_lg), None, lg_torch),
    ]


def main(rounds=7, repeats=20):
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    rows = []
    for name, ours, pyro_fn, torch_fn in _cases():
        times = {"ours": [], "pyro": [], "torch": []}
        for _ in range(rounds):  # interleaved: each round times all three back to back
            times["ours"].append(_time(ours, repeats))
            if pyro_fn is not None:
                times["pyro"].append(_time(pyro_fn, repeats))
            times["torch"].append(_time(torch_fn, repeats))
        med = {k: statistics.median(v) if v else float("nan") for k, v in times.items()}
        rows.append((name, med))
    print(f"median of {rounds} interleaved rounds x {repeats} calls, 1 thread, float64\n")
    print("| model | ours (ms) | Pyro / ours | torch by hand / ours |")
    print("|---|---|---|---|")
    for name, med in rows:
        pyro_ratio = "-" if med["pyro"] != med["pyro"] else f"{med['pyro'] / med['ours']:.2f}"
        print(f"| {name} | {1e3 * med['ours']:.3f} | {pyro_ratio} | "
              f"{med['torch'] / med['ours']:.2f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    main(args.rounds, args.repeats)
