r"""A model written for one sample, ``u[herd]``, through MCMCGradient: the batched kernels
(on the vmap path, chosen automatically) and Pyro's NUTS give the exact gradient.

The model is lme4's binomial GLMM on a simulated data set laid out as its ``cbpp`` data
(15 herds, 3 or 4 periods each, binomial trials ``size``):

.. math::

    u_h \sim N(0, \sigma^2), \qquad
    y_{hj} \mid u_h \sim \mathrm{Binomial}\big(n_{hj}, \mathrm{logit}^{-1}(\mu + u_h)\big),

whose log-likelihood is a sum over herds of one-dimensional integrals, computed here by
adaptive Gauss-Hermite quadrature and differentiated by autograd. Mean gradients are held
to 4 standard errors from the effective sample size of the per-call gradient series (as in
``test_fisher.py``); the planted controls (the exact gradient at another parameter, a
sampler aimed at a tempered posterior) must fail. The same model written for batches
(``u[..., herd]``) runs on both paths, which agree to 1e-10 at the chains' positions. A count
latent indexed plainly (the N-mixture model in long format, ``n[site]``) is sampled on the
vmap path too, against the exact gradient by truncated summation.
"""

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.distributions import constraints

import pyro_lvmle as lv
from pyro_lvmle.samplers import make_sampler
from pyro_lvmle.traces import Potential
from tests.common import assert_close, assert_within_stderr, capped_effective_sample_size
from tests.gradients.test_fisher import gradient_series
from tests.traces.test_vmap import param_jacobian

NUM_HERDS = 15
PARAMS = {"mu": -1.2, "sd": 0.8}  # where the gradient is taken (not the truth, below)


def cbpp_like():
    """``(y, herd, size)`` laid out as lme4's ``cbpp``: 15 herds, 3 or 4 periods each,
    2 to 34 trials per period, simulated with intercept -1.5 and herd sd 0.65 (about lme4's
    fit) from a generator of its own, so the data do not depend on the test order."""
    generator = torch.Generator().manual_seed(2026)
    periods = 4 - (torch.rand(NUM_HERDS, generator=generator) < 0.25).long()
    herd = torch.arange(NUM_HERDS).repeat_interleave(periods)
    size = torch.randint(2, 35, herd.shape, generator=generator).double()
    effect = 0.65 * torch.randn(NUM_HERDS, generator=generator, dtype=torch.float64)
    y = torch.binomial(size, torch.sigmoid(-1.5 + effect[herd]), generator=generator)
    return y, herd, size


def _params():
    mu = pyro.param("mu", torch.tensor(PARAMS["mu"]))
    sd = pyro.param("sd", torch.tensor(PARAMS["sd"]), constraint=constraints.positive)
    return mu, sd


def glmm(y, herd, size):
    """lme4's ``cbind(incidence, size - incidence) ~ 1 + (1 | herd)``, as lme4 users write it."""
    mu, sd = _params()
    with pyro.plate("herds", NUM_HERDS):
        u = pyro.sample("u", dist.Normal(0.0, sd))
    with pyro.plate("obs", len(y)):
        pyro.sample("y", dist.Binomial(size, logits=mu + u[herd]), obs=y)


def glmm_for_batches(y, herd, size):
    """The same model written for a batch of chains on the left: ``u[..., herd]``."""
    mu, sd = _params()
    with pyro.plate("herds", NUM_HERDS):
        u = pyro.sample("u", dist.Normal(0.0, sd))
    with pyro.plate("obs", len(y)):
        pyro.sample("y", dist.Binomial(size, logits=mu + u[..., herd]), obs=y)


def _herd_log_joint(u, y, herd, size, mu, sd):
    r""":math:`\log N(u_h; 0, \sigma^2) + \sum_j \log p(y_{hj} \mid u_h)` for ``u`` ``(K, H)``."""
    per_obs = dist.Binomial(size, logits=mu + u[:, herd]).log_prob(y)  # (K, N)
    return dist.Normal(0.0, sd).log_prob(u) + torch.zeros_like(u).index_add(1, herd, per_obs)


def log_likelihood(y, herd, size, num_nodes, mu=None, sd=None):
    r""":math:`\log p(y)` by adaptive Gauss-Hermite quadrature, ``num_nodes`` nodes per herd
    centred at the herd's posterior mode :math:`m_h` and scaled by its Laplace standard
    deviation :math:`s_h` (Liu & Pierce 1994):
    :math:`\int e^{f(u)} du \approx \sqrt2 s \sum_k w_k e^{x_k^2} f(m + \sqrt2 s x_k)`.
    The nodes are held fixed, so the rule is differentiable in ``mu`` and ``sd`` (the params
    by default)."""
    if mu is None:
        mu, sd = pyro.param("mu"), pyro.param("sd")
    m, s = _laplace(y, herd, size, mu.detach(), sd.detach())
    nodes, weights = (torch.from_numpy(a) for a in np.polynomial.hermite.hermgauss(num_nodes))
    u = m + 2**0.5 * s * nodes[:, None]  # (K, H)
    log_w = (weights.log() + nodes**2)[:, None] + (2**0.5 * s).log()
    return (log_w + _herd_log_joint(u, y, herd, size, mu, sd)).logsumexp(0).sum()


def _laplace(y, herd, size, mu, sd):
    r"""Each herd's posterior mode and Laplace standard deviation, by Newton's method (the
    log joint is concave in :math:`u_h`: its second derivative is
    :math:`-1/\sigma^2 - \sum_j n_{hj} p_{hj}(1 - p_{hj})`)."""
    u = torch.zeros(NUM_HERDS)
    for _ in range(50):
        p = torch.sigmoid(mu + u[herd])
        grad = -u / sd**2 + torch.zeros(NUM_HERDS).index_add(0, herd, y - size * p)
        curvature = 1 / sd**2 + torch.zeros(NUM_HERDS).index_add(0, herd, size * p * (1 - p))
        u = u + grad / curvature
        if grad.abs().max() < 1e-12:
            return u, curvature.rsqrt()
    raise AssertionError("Newton did not converge")


def exact_gradient(data, num_nodes=30, **at):
    """The gradient of :func:`log_likelihood` in the unconstrained ``(mu, log sd)``, as the
    loss's gradient series are flattened (the order of ``pyro.param`` calls)."""
    leaves = [pyro.param(name).unconstrained() for name in ("mu", "sd")]
    mu, sd = (pyro.param(name) for name in ("mu", "sd"))
    if at:  # a planted wrong parameter: the same expression at other values
        mu, sd = mu + (at["mu"] - mu.detach()), sd * (at["sd"] / sd.detach())
    grads = torch.autograd.grad(log_likelihood(*data, num_nodes, mu, sd), leaves)
    return torch.stack(grads)


def mean_gradient(data, kernel, num_calls, **options):
    """The mean of ``num_calls`` successive gradients and its ESS-based standard error."""
    loss = lv.MCMCGradient(kernel, **options)
    series, names = gradient_series(glmm, data[0], loss, num_calls, herd=data[1], size=data[2])
    assert names == ["mu", "sd"]
    ess = capped_effective_sample_size(series.unsqueeze(0))
    return series.mean(0), series.std(0) / ess.sqrt(), loss


def test_quadrature_has_converged():
    data = cbpp_like()
    glmm(*data)  # the params
    assert_close(log_likelihood(*data, 60), log_likelihood(*data, 30), atol=1e-10)
    assert_close(exact_gradient(data, 60), exact_gradient(data, 30), atol=1e-10)
    # control: one node (the Laplace approximation) is visibly off
    assert (log_likelihood(*data, 1) - log_likelihood(*data, 30)).abs() > 1e-3
    # and quadrature agrees with the integral done by brute force on a fine grid
    u = torch.linspace(-8.0, 8.0, 20001)
    mu, sd = pyro.param("mu"), pyro.param("sd")
    dens = _herd_log_joint(u[:, None].expand(-1, NUM_HERDS), *data, mu, sd)
    brute = (torch.logsumexp(dens, 0) + (u[1] - u[0]).log()).sum()
    assert_close(brute, log_likelihood(*data, 30), atol=1e-6)


BATCHED = {"num_calls": 150, "num_chains": 8, "warmup_steps": 150, "num_steps": 5}


@pytest.mark.parametrize("kernel", ["hmc", "mala"])
def test_batched_kernels_give_the_exact_gradient_and_pyros_nuts_on_the_vmap_path(kernel):
    data = cbpp_like()
    assert Potential(glmm, data).vectorization == "vmap"  # chosen: the plate path cannot run
    mean, stderr, loss = mean_gradient(data, kernel, **BATCHED)
    assert loss.diagnostics["accept_prob"] > 0.3
    assert_within_stderr(mean, exact_gradient(data), stderr, what=f"{kernel} mean gradient")
    pyro.set_rng_seed(1)
    nuts_mean, nuts_stderr, _ = mean_gradient(data, "nuts", num_calls=150, num_chains=1,
                                              warmup_steps=50)
    assert_within_stderr(mean, nuts_mean, (stderr**2 + nuts_stderr**2).sqrt(),
                         what=f"{kernel} against NUTS")


def test_pyros_nuts_gives_the_exact_gradient():
    data = cbpp_like()
    mean, stderr, _ = mean_gradient(data, "nuts", num_calls=150, num_chains=1, warmup_steps=50)
    assert_within_stderr(mean, exact_gradient(data), stderr, what="NUTS mean gradient")


def test_planted_bug_the_gradient_at_another_parameter_fails():
    # the same series against the exact gradient at sd = 0.7 instead of 0.8
    data = cbpp_like()
    mean, stderr, _ = mean_gradient(data, "hmc", **BATCHED)
    with pytest.raises(AssertionError, match="standard errors"):
        assert_within_stderr(mean, exact_gradient(data, mu=PARAMS["mu"], sd=0.7), stderr)


class _TemperedHMC:
    """Planted bug: batched HMC aimed at the posterior tempered at ``beta`` (a wrong
    tempering power), a :class:`~pyro_lvmle.samplers.Sampler` MCMCGradient takes as it is."""

    def __init__(self, beta):
        self.inner, self.beta = make_sampler("hmc", num_steps=5), beta

    def init(self, position, target, *, like=None):
        return self.inner.init(position, target.tempered(self.beta), like=like)

    def warmup(self, state, target, num_steps):
        return self.inner.warmup(state, target.tempered(self.beta), num_steps)

    def step(self, state, target):
        return self.inner.step(state, target.tempered(self.beta))


def test_planted_bug_a_sampler_on_the_wrong_target_fails():
    data = cbpp_like()
    options = dict(BATCHED, num_steps=10)  # the sampler's own
    mean, stderr, _ = mean_gradient(data, _TemperedHMC(0.5), **options)
    with pytest.raises(AssertionError, match="standard errors"):
        assert_within_stderr(mean, exact_gradient(data), stderr)


def test_forcing_the_plate_path_on_the_plainly_indexed_glmm_is_an_error():
    # not a statistical control: under the chain plate u is (C, 15) and u[herd] indexes chains
    data = cbpp_like()
    forced = Potential(glmm, data, vectorization="plate")
    with pytest.raises(IndexError):
        make_sampler("hmc").init(torch.zeros(4, NUM_HERDS), forced)


NUM_SITES, NUM_VISITS = 10, 3


def nmixture_long(y, site):
    """Royle's N-mixture model in long format, indexed plainly: ``n[site]``."""
    lam = pyro.param("lam", torch.tensor(3.0), constraint=constraints.positive)
    p = pyro.param("p", torch.tensor(0.6), constraint=constraints.unit_interval)
    with pyro.plate("sites", NUM_SITES):
        n = pyro.sample("n", dist.Poisson(lam))
    with pyro.plate("obs", len(y)):
        pyro.sample("y", dist.Binomial(n[site], p), obs=y)


def nmixture_log_likelihood(y, site, lam, p, max_count=80):
    r""":math:`\sum_i \log \sum_{n \ge \max_j y_{ij}} \mathrm{Poisson}(n; \lambda)
    \prod_j \mathrm{Binomial}(y_{ij}; n, p)`, truncated at ``max_count`` (the Poisson(3) tail
    beyond 80 is below 1e-80)."""
    count = torch.arange(float(max_count))[:, None]  # (K, 1)
    per_obs = dist.Binomial(count.expand(-1, len(y)), p, validate_args=False).log_prob(y)
    terms = dist.Poisson(lam).log_prob(count) + torch.zeros(max_count, NUM_SITES).index_add(
        1, site, per_obs)
    largest = torch.full((NUM_SITES,), -1.0).scatter_reduce(0, site, y, "amax")
    return terms.masked_fill(count < largest, -torch.inf).logsumexp(0).sum()


def test_a_plainly_indexed_count_latent_gives_the_exact_gradient_on_the_vmap_path():
    generator = torch.Generator().manual_seed(1)
    n = torch.poisson(torch.full((NUM_SITES,), 4.0), generator=generator)
    site = torch.arange(NUM_SITES).repeat_interleave(NUM_VISITS)
    y = torch.binomial(n[site], torch.full(site.shape, 0.5), generator=generator)
    potential = Potential(nmixture_long, (y, site))
    assert potential.vectorization == "vmap" and potential.discrete_blocks[0].kind == "count"
    loss = lv.MCMCGradient("hmc", num_chains=8, warmup_steps=50)
    series, names = gradient_series(nmixture_long, y, loss, 150, site=site)
    ess = capped_effective_sample_size(series.unsqueeze(0))
    mean, stderr = series.mean(0), series.std(0) / ess.sqrt()

    def exact(lam_shift=0.0):
        leaves = [pyro.param(name).unconstrained() for name in names]
        lam, p = pyro.param("lam") + lam_shift, pyro.param("p")
        return torch.stack(torch.autograd.grad(nmixture_log_likelihood(y, site, lam, p), leaves))

    assert_within_stderr(mean, exact(), stderr, what="mean gradient, counts sampled")
    with pytest.raises(AssertionError, match="standard errors"):  # control: lambda 2.5, not 3
        assert_within_stderr(mean, exact(-0.5), stderr)


def test_vmap_and_plate_paths_agree_on_mcmc_gradients_chains():
    # the model written with u[..., herd] runs on both paths (the automatic choice: plate);
    # positions: the chains of MCMCGradient on it and on the plainly indexed one (vmap)
    data = cbpp_like()
    positions = []
    for model, path in ((glmm_for_batches, "plate"), (glmm, "vmap")):
        loss = lv.MCMCGradient("hmc", num_samples=3, num_chains=4, warmup_steps=30)
        draws = loss.draw(model, data)
        assert draws.potential.vectorization == path
        positions.append(draws.positions.flatten(0, 1))
    position = torch.cat(positions)
    potentials = [Potential(glmm_for_batches, data, vectorization="plate"),
                  Potential(glmm_for_batches, data, vectorization="vmap"),
                  Potential(glmm, data)]
    params = [pyro.param(name).unconstrained() for name in ("mu", "sd")]
    results = [(*p.value_and_grad(position), param_jacobian(p.log_joint(position), params))
               for p in potentials]
    for other in results[1:]:
        for what, a, b in zip(("energies", "gradients", "log_joint parameter gradients"),
                              results[0], other, strict=True):
            assert_close(b, a, atol=1e-10, what=what)
