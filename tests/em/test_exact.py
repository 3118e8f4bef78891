"""ExactEM: scikit-learn's GaussianMixture log-likelihood on iris (k = 3) from the same start,
a log-likelihood that never decreases, L-BFGS and closed-form M-steps agreeing."""

import numpy as np
import pyro
import pytest
import torch

import pyro_lvmle as lv

sklearn = pytest.importorskip("sklearn")


def iris_start():
    """Data and a k-means start shared by scikit-learn and ExactEM."""
    from sklearn.cluster import KMeans
    from sklearn.datasets import load_iris

    x = load_iris().data
    labels = KMeans(3, n_init=1, random_state=0).fit(x).labels_
    data = torch.tensor(x)
    groups = [data[torch.tensor(labels == k)] for k in range(3)]
    weights = torch.tensor([len(g) / len(data) for g in groups])
    locs = torch.stack([g.mean(0) for g in groups])
    covs = torch.stack([torch.cov(g.T, correction=0) for g in groups])
    return data, {"weights": weights, "locs": locs, "scale_tril": torch.linalg.cholesky(covs)}


def sklearn_log_likelihood(data, start):
    from sklearn.mixture import GaussianMixture

    fit = GaussianMixture(3, covariance_type="full", tol=1e-12, max_iter=5000, reg_covar=0.0,
                          weights_init=start["weights"].numpy(),
                          means_init=start["locs"].numpy(),
                          precisions_init=np.linalg.inv(
                              (start["scale_tril"] @ start["scale_tril"].mT).numpy()))
    fit.fit(data.numpy())
    return fit.score(data.numpy())  # mean log-likelihood per sample


def closed_form(marginals, data, *, center=True):
    """The classical GMM M-step from the posterior of the assignments."""
    resp = marginals["assignment"].T  # (N, K)
    nk = resp.sum(0)
    locs = resp.T @ data / nk[:, None]
    diff = data[:, None] - locs if center else data[:, None].expand(-1, 3, -1)
    cov = torch.einsum("nk,nki,nkj->kij", resp, diff, diff) / nk[:, None, None]
    return {"weights": nk / nk.sum(), "locs": locs, "scale_tril": torch.linalg.cholesky(cov)}


def run(m_step, **kwargs):
    data, start = iris_start()
    model = lv.models.GaussianMixture(3, 4, init_params=start)
    history = lv.ExactEM(model, m_step, **kwargs).run(data, num_steps=500, progress=False)
    return data, start, history


def test_matches_sklearn_on_iris_and_never_decreases():
    data, start, history = run("lbfgs", m_steps=15, tol=1e-6)
    expected = sklearn_log_likelihood(data, start)
    per_sample = history["log_likelihood"][-1] / len(data)
    assert abs(per_sample - expected) < 1e-4, (per_sample, expected)
    assert min(history["increase"]) > -1e-9


def test_closed_form_m_step_matches_sklearn_and_lbfgs_step():
    data, start, history = run(closed_form, tol=1e-10)
    assert abs(history["log_likelihood"][-1] / len(data) - sklearn_log_likelihood(data, start)) \
        < 1e-8
    assert min(history["increase"]) > -1e-9
    # one L-BFGS M-step lands where the closed form does
    pyro.clear_param_store()
    model = lv.models.GaussianMixture(3, 4, init_params=start)
    lv.ExactEM(model, m_steps=200).step(data)
    assert torch.allclose(model.params()["locs"], history.params["locs"][0], atol=1e-5)


def test_planted_bug_uncentred_covariance_misses_sklearn():
    """Control: an M-step with a wrong covariance update fails the same check."""
    data, start, history = run(lambda m, d: closed_form(m, d, center=False), tol=1e-10)
    per_sample = history["log_likelihood"][-1] / len(data)
    assert abs(per_sample - sklearn_log_likelihood(data, start)) > 1e-4


def test_adam_m_step_and_hmm_structure():
    """Two chained enumerated sites (an HMM of length 2): the log-likelihood after a step
    is the brute-force sum over both hidden states."""
    x = torch.tensor([[0.3, -1.2, 2.0], [1.5, 0.1, -0.4]])  # (T = 2, N = 3)

    def hmm(x):
        init = pyro.param("init", torch.tensor([0.6, 0.4]),
                          constraint=torch.distributions.constraints.simplex)
        trans = pyro.param("trans", torch.tensor([[0.7, 0.3], [0.2, 0.8]]),
                           constraint=torch.distributions.constraints.simplex)
        locs = pyro.param("locs", torch.tensor([-1.0, 1.0]))
        with pyro.plate("n", x.shape[1]):
            z1 = pyro.sample("z1", pyro.distributions.Categorical(init),
                             infer={"enumerate": "parallel"})
            pyro.sample("x1", pyro.distributions.Normal(locs[z1], 1.0), obs=x[0])
            z2 = pyro.sample("z2", pyro.distributions.Categorical(trans[z1]),
                             infer={"enumerate": "parallel"})
            pyro.sample("x2", pyro.distributions.Normal(locs[z2], 1.0), obs=x[1])

    em = lv.ExactEM(hmm, pyro.optim.Adam({"lr": 0.01}), m_steps=5)
    metrics = em.step(x)
    store = pyro.get_param_store()
    init, trans, locs = store["init"], store["trans"], store["locs"]
    normal = torch.distributions.Normal
    terms = []
    for a in range(2):
        for b in range(2):
            terms.append(init[a].log() + normal(locs[a], 1.0).log_prob(x[0])
                         + trans[a, b].log() + normal(locs[b], 1.0).log_prob(x[1]))
    total = torch.stack(terms).logsumexp(0).sum()
    assert abs(metrics["log_likelihood"] - total.item()) < 1e-10
    pairwise = em.posterior(x).marginals()["z2"]  # p(z1, z2 | x), (2, 2, N)
    assert pairwise.shape == (2, 2, 3)
    assert torch.allclose(pairwise.sum((0, 1)), torch.ones(3))


def sklearn_optimum(data):
    """scikit-learn's best mean log-likelihood on iris over 10 k-means starts."""
    from sklearn.mixture import GaussianMixture

    fit = GaussianMixture(3, covariance_type="full", tol=1e-12, max_iter=5000, n_init=10,
                          random_state=0).fit(data.numpy())
    return fit.score(data.numpy())


def iris():
    from sklearn.datasets import load_iris

    return torch.tensor(load_iris().data)


def test_default_data_driven_start_reaches_sklearn_optimum_on_iris():
    """ExactEM on the reference GaussianMixture as built, no start given: the parameters
    start from k-means++ seeds on the data and EM reaches scikit-learn's optimum (its
    reg_covar=1e-6 costs it about 1e-9 per datum)."""
    data = iris()
    em = lv.ExactEM(lv.models.GaussianMixture(3, 4), m_steps=15, tol=1e-6)
    history = em.run(data, num_steps=200, progress=False)
    assert em.converged
    assert abs(history["log_likelihood"][-1] / len(data) - sklearn_optimum(data)) < 1e-6


def test_planted_bug_old_fixed_default_start_collapses_on_iris():
    """Control: from the fixed defaults (equal weights, unit covariances, means from a fixed
    seed, the start before data-driven initialization) EM on iris ends with a collapsing
    component and far below the optimum."""
    data = iris()
    model = lv.models.GaussianMixture(3, 4)
    model.set_params({n: model.initial_value(n) for n in model.param_names})
    history = lv.ExactEM(model, m_steps=15, tol=1e-6).run(data, num_steps=10, progress=False)
    assert history["log_likelihood"][-1] / len(data) < sklearn_optimum(data) - 1.0
    assert model.params()["weights"].min() < 1e-2
