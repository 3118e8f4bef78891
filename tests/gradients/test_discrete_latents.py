"""MCMCGradient on models with discrete latents, written as users write them (plain plates, no
enumeration marks): the mean gradient against the exact one (autograd of an exact log
marginal) within 4 ESS-based standard errors, and SGD to NMixture's exact MLE.

- NMixture: only a latent Poisson count per site (sampled by the discrete step);
- a Poisson count with a Normal random effect on its log rate (a discrete and a continuous
  latent per site; exact by Gauss-Hermite quadrature times a truncated sum);
- an unmarked Bernoulli assignment next to a continuous latent (summed out automatically);
- Bernoulli flags coupled by an observed total (not enumerable: sampled binary latents, the
  case for Gibbs-with-gradients; exact by summing over all 2^N configurations).

Controls that must fail: a discrete step aimed at a tilted target (counts pulled down by a
factor exp(-0.3 n)), a discrete step that never moves the counts, an over-dispersed
continuous sampler (unadjusted Langevin with a large step).
"""

import itertools

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy import stats
from torch.distributions import constraints

import pyro_lvmle as lv
from pyro_lvmle.samplers import StepInfo, metropolis_within_gibbs_step
from pyro_lvmle.traces import Potential
from tests.common import (
    assert_close,
    assert_polyak_average,
    assert_within_stderr,
    capped_effective_sample_size,
)
from tests.gradients.test_fisher import (
    _flat,
    assert_mean_gradient,
    exact_gradient,
    gradient_series,
    polyak_fit,
)

NUM_CALLS = 150


# ------------------------------------------------------------------ planted-bug discrete steps
TILT = 0.3


class _Tilted:
    """The target with every count's energy raised by ``tilt * n``: a wrong target."""

    def __init__(self, target, tilt=TILT):
        self.target = target
        self.tilt = tilt

    def __getattr__(self, name):
        return getattr(self.target, name)

    def block_energy(self, position, block):
        values = position[:, block.offset:block.offset + block.numel]
        values = values.reshape(position.shape[0], *block.batch_shape, block.event_numel)
        return self.target.block_energy(position, block) + self.tilt * values.sum(-1)


def tilted_step(state, target, tilt=TILT, **kwargs):
    """Planted bug: Metropolis-within-Gibbs aimed at the target tilted by ``exp(-tilt n)``."""
    return metropolis_within_gibbs_step(state, _Tilted(target, tilt), **kwargs)


def frozen_step(state, target, **kwargs):
    """Planted bug: a discrete step that never moves the counts."""
    ones = torch.ones_like(state.potential_energy)
    no = torch.zeros_like(ones, dtype=torch.bool)
    return state, StepInfo(ones, no, no, torch.zeros_like(ones))


# ------------------------------------------------------------------ NMixture
def n_mixture(num_sites=20):
    model = lv.models.NMixture(num_visits=3, init_params={"rate": torch.tensor(4.0),
                                                          "detection": torch.tensor(0.6)})
    data = model.simulate(num_sites, {"rate": torch.tensor(5.0),
                                      "detection": torch.tensor(0.5)})
    return model, data


@pytest.mark.parametrize("kernel,discrete_step", [("hmc", "mwg"), ("mala", "gwg")])
def test_nmixture_mean_gradient_matches_the_exact_gradient(kernel, discrete_step):
    # "gwg" updates count blocks by Metropolis-within-Gibbs (its flips are for binary blocks)
    # and a target with counts alone gives the continuous kernel nothing to move: both cases
    # run the same chains from the same seed, a check that neither path adds anything
    model, data = n_mixture()
    assert Potential(model, (data,)).discrete_blocks[0].kind == "count"
    loss = lv.MCMCGradient(kernel, num_chains=8, warmup_steps=50, discrete_step=discrete_step)
    assert_mean_gradient(model, data, loss, num_calls=NUM_CALLS)


def test_planted_bug_a_tilted_discrete_step_fails_the_nmixture_gradient_test():
    model, data = n_mixture()
    loss = lv.MCMCGradient("hmc", num_chains=8, warmup_steps=50, discrete_step=tilted_step)
    with pytest.raises(AssertionError, match="standard errors"):
        assert_mean_gradient(model, data, loss, num_calls=NUM_CALLS)


# ------------------------------------------------------------------ a Poisson count with a
# ------------------------------------------------------------------ Normal random effect
EFFECT_SD = 0.5


class RandomEffectCounts:
    """log rate_i = mu + u_i, u_i ~ N(0, 0.5^2), n_i ~ Poisson(rate_i), y_ij ~ Binomial(n_i, p).

    The exact marginal integrates u_i by Gauss-Hermite quadrature and sums n_i up to
    ``bound``; :func:`test_random_effect_exact_marginal_is_converged` checks both limits.
    """

    def __call__(self, y):
        mu = pyro.param("mu", torch.tensor(1.2))
        detection = pyro.param("detection", torch.tensor(0.6), constraint=constraints.unit_interval)
        with pyro.plate("sites", y.shape[0], dim=-2):
            u = pyro.sample("u", dist.Normal(0.0, EFFECT_SD))
            n = pyro.sample("n", dist.Poisson(torch.exp(mu + u)))
            with pyro.plate("visits", y.shape[1], dim=-1):
                pyro.sample("y", dist.Binomial(n, detection), obs=y)

    def log_marginal(self, y, num_nodes=40, bound=150, per_datum=False):
        mu, detection = pyro.param("mu"), pyro.param("detection")
        nodes, weights = (torch.tensor(a) for a in np.polynomial.hermite.hermgauss(num_nodes))
        log_rate = mu + EFFECT_SD * 2**0.5 * nodes  # (Q,)
        n = torch.arange(bound + 1.0)
        log_poisson = dist.Poisson(log_rate.exp().unsqueeze(-1)).log_prob(n)  # (Q, K)
        rest = (n - y.unsqueeze(-1)).clamp(min=0)  # (N, J, K)
        log_binomial = (torch.lgamma(n + 1) - torch.lgamma(y.unsqueeze(-1) + 1)
                        - torch.lgamma(rest + 1) + y.unsqueeze(-1) * detection.log()
                        + rest * torch.log1p(-detection)).sum(-2)  # (N, K)
        possible = n >= y.max(-1, keepdim=True).values
        log_binomial = torch.where(possible, log_binomial, torch.full_like(log_binomial, -1e300))
        per_node = (log_poisson + log_binomial.unsqueeze(-2)).logsumexp(-1)  # (N, Q)
        per_site = (per_node + (weights / np.pi**0.5).log()).logsumexp(-1)
        return per_site if per_datum else per_site.sum()


def random_effect_counts(num_sites=15):
    model = RandomEffectCounts()
    u = EFFECT_SD * torch.randn(num_sites, 1)
    n = dist.Poisson(torch.exp(1.5 + u)).sample()
    data = dist.Binomial(n.expand(num_sites, 3), 0.5).sample()
    model(data)  # creates the params
    return model, data


def scipy_random_effect_log_marginal(model, y, num_points=2001, bound=300):
    """Each site's log marginal by scipy's pmfs on a dense grid of u (the trapezoid rule,
    spectrally accurate for this smooth, fast-decaying integrand): an independent check."""
    mu, detection = pyro.param("mu").item(), pyro.param("detection").item()
    u = np.linspace(-10 * EFFECT_SD, 10 * EFFECT_SD, num_points)
    n = np.arange(bound + 1)
    terms = stats.poisson.pmf(n, np.exp(mu + u)[:, None])[:, None, :]  # (U, 1, K)
    for j in range(y.shape[1]):
        terms = terms * stats.binom.pmf(y[:, j].numpy()[None, :, None], n, detection)
    integrand = terms.sum(-1) * stats.norm.pdf(u, 0.0, EFFECT_SD)[:, None]  # (U, N)
    return torch.tensor(np.log(np.trapezoid(integrand, u, axis=0)))


def test_random_effect_exact_marginal_is_converged_and_right():
    model, data = random_effect_counts()
    with torch.no_grad():
        exact = model.log_marginal(data, per_datum=True)
        reference = model.log_marginal(data, num_nodes=80, bound=400, per_datum=True)
    assert_close(exact, reference, atol=1e-10, what="quadrature")
    assert_close(exact, scipy_random_effect_log_marginal(model, data), atol=1e-9,
                 what="scipy on a grid")


@pytest.mark.parametrize("kernel,discrete_step", [("hmc", "mwg"), ("mala", "gwg")])
def test_random_effect_mean_gradient_matches_the_exact_gradient(kernel, discrete_step):
    model, data = random_effect_counts()
    potential = Potential(model, (data,))
    assert potential.discrete_mask.any() and not potential.discrete_mask.all()
    loss = lv.MCMCGradient(kernel, num_chains=8, warmup_steps=100, discrete_step=discrete_step)
    assert_mean_gradient(model, data, loss, num_calls=NUM_CALLS)


def test_planted_bug_frozen_counts_fail_the_random_effect_gradient_test():
    # counts stuck at their starting values: the detection gradient, a function of the
    # counts alone, never varies (the harness refuses a zero standard error), and mu's mean
    # gradient is off by many standard errors
    model, data = random_effect_counts()
    loss = lv.MCMCGradient("hmc", num_chains=8, warmup_steps=100, discrete_step=frozen_step)
    series, names = gradient_series(model, data, loss, NUM_CALLS)
    exact = _flat(exact_gradient(model, data, names), names)
    stderr = series.std(0) / capped_effective_sample_size(series.unsqueeze(0)).sqrt()
    assert names == ["mu", "detection"] and stderr[1] == 0
    with pytest.raises(AssertionError, match="standard errors"):
        assert_within_stderr(series[:, 0].mean(), exact[0], stderr[0], what="mu")


def test_planted_bug_a_biased_continuous_sampler_fails_the_random_effect_gradient_test():
    model, data = random_effect_counts()
    loss = lv.MCMCGradient("ula", num_chains=8, warmup_steps=0, step_size=1.0)
    with pytest.raises(AssertionError, match="standard errors"):
        assert_mean_gradient(model, data, loss, num_calls=NUM_CALLS)


# ------------------------------------------------------------------ an unmarked Bernoulli
class PlainMixture:
    """z_n ~ N(0, 1), c_n ~ Bernoulli(w) (no enumeration mark), x_n ~ N(z_n + loc c_n, 0.5^2);
    exactly x_n ~ (1 - w) N(0, 1.25) + w N(loc, 1.25)."""

    def __call__(self, x):
        loc = pyro.param("loc", torch.tensor(0.5))
        weight = pyro.param("weight", torch.tensor(0.3), constraint=constraints.unit_interval)
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            c = pyro.sample("c", dist.Bernoulli(weight))
            pyro.sample("x", dist.Normal(z + loc * c, 0.5), obs=x)

    def log_marginal(self, x):
        loc, weight = pyro.param("loc"), pyro.param("weight")
        scale = 1.25**0.5
        return torch.stack([dist.Normal(0.0, scale).log_prob(x) + torch.log1p(-weight),
                            dist.Normal(loc, scale).log_prob(x) + weight.log()]
                           ).logsumexp(0).sum()


def test_unmarked_bernoulli_is_summed_out_and_gives_the_exact_mean_gradient():
    model = PlainMixture()
    data = torch.tensor([-1.0, 0.5, 2.0, 3.0, 2.5, -0.3])
    potential = Potential(model, (data,))
    assert potential.enumerated == ("c",) and potential.discrete_mask is None
    loss = lv.MCMCGradient("mala", num_chains=8, warmup_steps=100)
    assert_mean_gradient(model, data, loss, num_calls=NUM_CALLS)


class MeanFieldMixture(PlainMixture):
    """Planted bug: the assignment replaced by its prior mean (a sum-out done wrong), against
    the exact marginal of :class:`PlainMixture`."""

    def __call__(self, x):
        loc = pyro.param("loc", torch.tensor(0.5))
        weight = pyro.param("weight", torch.tensor(0.3), constraint=constraints.unit_interval)
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z + loc * weight, 0.5), obs=x)


def test_planted_bug_a_wrong_sum_over_the_assignment_fails_the_mixture_gradient_test():
    model = MeanFieldMixture()
    data = torch.tensor([-1.0, 0.5, 2.0, 3.0, 2.5, -0.3])
    loss = lv.MCMCGradient("mala", num_chains=8, warmup_steps=100)
    with pytest.raises(AssertionError, match="standard errors"):
        assert_mean_gradient(model, data, loss, num_calls=NUM_CALLS)


# ------------------------------------------------------------------ sampled binary latents
class FlagsWithTotal:
    """c_n ~ Bernoulli(w), x_n ~ N(loc c_n, 1), and an observed total ~ Poisson(sum c + 1):
    the total couples the flags, so they cannot be summed out one by one and are sampled."""

    def __call__(self, x, total):
        loc = pyro.param("loc", torch.tensor(0.5))
        weight = pyro.param("weight", torch.tensor(0.4), constraint=constraints.unit_interval)
        with pyro.plate("data", len(x)):
            c = pyro.sample("c", dist.Bernoulli(weight))
            pyro.sample("x", dist.Normal(loc * c, 1.0), obs=x)
        pyro.sample("total", dist.Poisson(c.sum(-1) + 1.0), obs=total)

    def log_marginal(self, data):
        x, total = data
        loc, weight = pyro.param("loc"), pyro.param("weight")
        c = torch.tensor(list(itertools.product([0.0, 1.0], repeat=len(x))))  # (2^N, N)
        log_joint = (dist.Bernoulli(weight).log_prob(c).sum(-1)
                     + dist.Normal(loc * c, 1.0).log_prob(x).sum(-1)
                     + dist.Poisson(c.sum(-1) + 1.0).log_prob(total))
        return log_joint.logsumexp(0)


class _Unpacked:
    """Calls ``model(*data)``: the gradient helpers pass the data as one argument."""

    def __init__(self, model):
        self.model = model

    def __call__(self, data):
        return self.model(*data)

    def log_marginal(self, data):
        return self.model.log_marginal(data)


@pytest.mark.parametrize("discrete_step", ["gwg", "mwg"])
def test_sampled_binary_latents_give_the_exact_mean_gradient(discrete_step):
    model = _Unpacked(FlagsWithTotal())
    data = (torch.tensor([1.2, -0.4, 2.0, 0.3, 1.6, -1.0]), torch.tensor(4.0))
    block = Potential(model, (data,)).discrete_blocks[0]
    assert (block.name, block.kind, block.batch_shape) == ("c", "binary", ())
    loss = lv.MCMCGradient("hmc", num_chains=8, warmup_steps=50, discrete_step=discrete_step)
    assert_mean_gradient(model, data, loss, num_calls=NUM_CALLS)


def test_planted_bug_a_tilted_discrete_step_fails_the_binary_gradient_test():
    model = _Unpacked(FlagsWithTotal())
    data = (torch.tensor([1.2, -0.4, 2.0, 0.3, 1.6, -1.0]), torch.tensor(4.0))
    loss = lv.MCMCGradient("hmc", num_chains=8, warmup_steps=50, discrete_step=tilted_step)
    with pytest.raises(AssertionError, match="standard errors"):
        assert_mean_gradient(model, data, loss, num_calls=NUM_CALLS)


# ------------------------------------------------------------------ SGD to NMixture's MLE
def nmixture_fit(discrete_step):
    model, data = n_mixture(num_sites=30)
    mle = model.mle(data)
    loss = lv.MCMCGradient("hmc", num_chains=8, warmup_steps=50, discrete_step=discrete_step)
    trajectory = polyak_fit(model, data, loss, burn_in=300, window=400, lr=0.05)
    return trajectory, mle


def test_sgd_reaches_the_nmixture_mle():
    trajectory, mle = nmixture_fit("mwg")
    for name in ("rate", "detection"):
        assert_polyak_average([t[name] for t in trajectory], mle[name], what=name)


def test_planted_bug_a_tilted_discrete_step_misses_the_nmixture_mle():
    trajectory, mle = nmixture_fit(tilted_step)
    with pytest.raises(AssertionError, match="standard errors"):
        assert_polyak_average([t["rate"] for t in trajectory], mle["rate"], what="rate")
