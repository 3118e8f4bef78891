"""One shared invariance harness for every kernel: one transition applied to many exact draws
of a target keeps its first and second moments within 4 standard errors, and the same kernel
aimed at a wrong (tilted) target fails the same check.

If a kernel leaves the target invariant, ``NUM_CHAINS`` exact draws moved by one transition are
again ``NUM_CHAINS`` independent exact draws, so every moment of the moved draws is within a few
standard errors (the exact draws' standard deviation over ``sqrt(NUM_CHAINS)``) of the exact
moment; a kernel invariant for another target drifts towards that one, and the control checks
that one transition drifts far enough for the check to see it (else the test has no power).

To add a kernel, add a line to ``KERNELS``: :func:`functional` wraps a step function,
:func:`protocol` anything with the sampler protocol's ``init`` and ``step`` (e.g. Pyro's NUTS
through :class:`~pyro_lvmle.samplers.PyroKernel`, with fewer chains: ``num_chains=500``, as
it loops over them). To add a target, give it ``sample(n)``,
``exact_moments()`` (or leave it out: the truth is then estimated from ten times as many exact
draws) and the target protocol. Then add a ``(kernel, target)`` line to ``CASES``.

ULA is left out: it is not invariant (its stationary law is off by O(step size), which
``test_hmc.test_ula_is_biased_where_mala_is_not`` checks).
"""

from __future__ import annotations

import inspect
import math
from functools import partial

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_lvmle.samplers import (
    BatchedKernel,
    DiscreteBlock,
    PyroKernel,
    gibbs_with_gradients_step,
    hmc_init,
    hmc_step,
    make_sampler,
    mala_step,
    metropolis_within_gibbs_step,
    mixed_step,
)
from pyro_lvmle.traces import Potential
from tests.common import assert_within_stderr

NUM_CHAINS = 20_000


# ---------------------------------------------------------------------------------- targets


class _Target:
    """A pure-tensor target: subclasses define ``energy`` (differentiable) and, with discrete
    coordinates, ``discrete_mask``, ``discrete_blocks`` and ``block_energy``."""

    discrete_mask = None
    discrete_blocks = ()

    def __call__(self, q):
        return self.energy(q).detach()

    def value_and_grad(self, q):
        with torch.enable_grad():
            q = q.detach().requires_grad_(True)
            energy = self.energy(q)
            (grad,) = torch.autograd.grad(energy.sum(), q)
        if self.discrete_mask is not None:
            grad = grad.masked_fill(self.discrete_mask, 0.0)
        return energy.detach(), grad


def _mask(dim, *discrete):
    mask = torch.zeros(dim, dtype=torch.bool)
    mask[list(discrete)] = True
    return mask


def _enumerated_moments(states, log_weights):
    """Exact mean and second moment matrix of a finite distribution."""
    probs = log_weights.softmax(0)
    return probs @ states, states.T @ (probs.unsqueeze(-1) * states)


class Gaussian(_Target):
    """A correlated Gaussian in three dimensions."""

    dim = 3

    def __init__(self):
        self.loc = torch.tensor([1.0, -2.0, 0.5])
        scale = torch.tensor([0.5, 1.0, 2.0])
        corr = torch.tensor([[1.0, 0.6, 0.3], [0.6, 1.0, -0.4], [0.3, -0.4, 1.0]])
        self.cov = scale.unsqueeze(-1) * corr * scale
        self.precision = torch.linalg.inv(self.cov)
        self.chol = torch.linalg.cholesky(self.cov)

    def energy(self, q):
        z = q - self.loc
        return 0.5 * ((z @ self.precision) * z).sum(-1)

    def sample(self, n):
        return self.loc + torch.randn(n, self.dim) @ self.chol.T

    def exact_moments(self):
        return self.loc, self.cov + torch.outer(self.loc, self.loc)


class Banana(_Target):
    """Haario et al.'s twisted Gaussian: x1 ~ N(0, 1), x2 | x1 ~ N(b (x1^2 - 1), s^2)."""

    dim, b, s = 2, 1.0, 0.5

    def energy(self, q):
        x1, x2 = q.unbind(-1)
        return 0.5 * x1**2 + 0.5 * ((x2 - self.b * (x1**2 - 1)) / self.s) ** 2

    def sample(self, n):
        x1 = torch.randn(n)
        return torch.stack([x1, self.b * (x1**2 - 1) + self.s * torch.randn(n)], -1)

    def exact_moments(self):
        # E x2 = 0, E x1 x2 = b E[x1^3 - x1] = 0, E x2^2 = b^2 Var(x1^2) + s^2
        second = torch.diag(torch.tensor([1.0, 2 * self.b**2 + self.s**2]))
        return torch.zeros(2), second


class Poisson(_Target):
    """Independent counts n_m ~ Poisson(rate_m): the count conditional of Poisson-Gamma with
    the rate fixed (one block of three elements, unbounded support)."""

    dim = 3

    def __init__(self):
        self.rate = torch.tensor([0.5, 3.0, 10.0])
        self.discrete_mask = _mask(3, 0, 1, 2)
        self.discrete_blocks = (DiscreteBlock("n", 0, 3, (3,), 1, 0.0, math.inf, "count"),)

    def block_energy(self, q, block):
        return -(q * self.rate.log() - torch.lgamma(q + 1))

    def energy(self, q):
        return self.block_energy(q, None).sum(-1)

    def sample(self, n):
        return torch.poisson(self.rate.expand(n, 3))

    def exact_moments(self):
        return self.rate, torch.outer(self.rate, self.rate) + torch.diag(self.rate)


class PoissonGamma(_Target):
    """lam ~ Gamma(a, b), n_1, n_2 | lam ~ Poisson(lam), position (n_1, n_2, log lam)."""

    dim, a, b = 3, 3.0, 1.0

    def __init__(self):
        self.discrete_mask = _mask(3, 0, 1)
        self.discrete_blocks = (DiscreteBlock("n", 0, 2, (2,), 1, 0.0, math.inf, "count"),)

    def block_energy(self, q, block):
        n, u = q[:, :2], q[:, 2:]
        return -(n * u - torch.lgamma(n + 1))

    def energy(self, q):  # Gamma on lam = exp(u) with its Jacobian, then the Poisson terms
        u = q[:, 2]
        return -(self.a * u - self.b * u.exp()) + 2 * u.exp() \
            + self.block_energy(q, None).sum(-1)

    def sample(self, n):
        lam = torch.distributions.Gamma(self.a, self.b).sample((n,))
        return torch.stack([torch.poisson(lam), torch.poisson(lam), lam.log()], -1)

    def exact_moments(self):
        a, b = torch.tensor(self.a), self.b
        mean_n, mean_lam2 = a / b, a * (a + 1) / b**2
        mean_u = torch.digamma(a) - math.log(b)
        mean_u2 = torch.polygamma(1, a) + mean_u**2
        mean_nu = a / b * (torch.digamma(a + 1) - math.log(b))  # E[lam log lam]
        second = torch.stack([torch.stack([mean_n + mean_lam2, mean_lam2, mean_nu]),
                              torch.stack([mean_lam2, mean_n + mean_lam2, mean_nu]),
                              torch.stack([mean_nu, mean_nu, mean_u2])])
        return torch.stack([mean_n, mean_n, mean_u]), second


class FiniteSupport(_Target):
    """Two Binomial(6, p_m) counts (a bounded count block, drawn exactly) and a pair of
    dependent categorical values in {0, 1, 2} (one element of two coordinates)."""

    dim, total = 4, 6

    def __init__(self):
        self.probs = torch.tensor([0.3, 0.8])
        self.table = torch.tensor([[0.0, 1.0, -0.5], [2.0, 0.3, 0.0], [-1.0, 0.5, 1.5]])
        self.discrete_mask = _mask(4, 0, 1, 2, 3)
        self.discrete_blocks = (
            DiscreteBlock("b", 0, 2, (2,), 1, 0.0, float(self.total), "count"),
            DiscreteBlock("c", 2, 2, (), 2, 0.0, 2.0, "categorical"),
        )

    def block_energy(self, q, block):
        if block.name == "b":
            return -torch.distributions.Binomial(self.total, self.probs).log_prob(q[:, :2])
        return self.table[q[:, 2].long(), q[:, 3].long()]

    def energy(self, q):
        return self.block_energy(q, self.discrete_blocks[0]).sum(-1) \
            + self.block_energy(q, self.discrete_blocks[1])

    def _pairs(self):
        return torch.cartesian_prod(torch.arange(3.0), torch.arange(3.0))

    def sample(self, n):
        counts = torch.distributions.Binomial(self.total, self.probs).sample((n,))
        pairs = self._pairs()
        index = torch.distributions.Categorical(logits=-self.table.reshape(-1)).sample((n,))
        return torch.cat([counts, pairs[index]], -1)

    def exact_moments(self):
        p, t = self.probs, self.total
        mean_b = t * p
        second_b = torch.outer(mean_b, mean_b) + torch.diag(t * p * (1 - p))
        mean_c, second_c = _enumerated_moments(self._pairs(), -self.table.reshape(-1))
        mean = torch.cat([mean_b, mean_c])
        second = torch.outer(mean, mean)
        second[:2, :2], second[2:, 2:] = second_b, second_c
        return mean, second


class Bernoulli(_Target):
    """Independent Bernoullis: a binary block of three elements of two coordinates each."""

    dim = 6

    def __init__(self):
        self.probs = torch.tensor([[0.2, 0.5], [0.9, 0.7], [0.05, 0.4]])
        self.discrete_mask = torch.ones(6, dtype=torch.bool)
        self.discrete_blocks = (DiscreteBlock("z", 0, 6, (3,), 2, 0.0, 1.0, "binary"),)

    def block_energy(self, q, block):
        return -(q.reshape(-1, 3, 2) * self.probs.logit()).sum(-1)

    def energy(self, q):
        return self.block_energy(q, None).sum(-1)

    def sample(self, n):
        return torch.bernoulli(self.probs.reshape(-1).expand(n, 6))

    def exact_moments(self):
        p = self.probs.reshape(-1)
        return p, torch.outer(p, p) + torch.diag(p - p**2)


class Ising(_Target):
    """Four coupled binary spins in {0, 1} with no known independence (a block of batch
    shape ``()``): exact by enumeration of the 16 states."""

    dim = 4

    def __init__(self):
        self.field = torch.tensor([0.5, -0.3, 0.2, -1.0])
        self.coupling = torch.tensor([[0.0, 1.0, -0.8, 0.5], [1.0, 0.0, 0.7, -1.2],
                                      [-0.8, 0.7, 0.0, 0.9], [0.5, -1.2, 0.9, 0.0]])
        self.discrete_mask = torch.ones(4, dtype=torch.bool)
        self.discrete_blocks = (DiscreteBlock("s", 0, 4, (), 4, 0.0, 1.0, "binary"),)
        self.states = torch.cartesian_prod(*[torch.tensor([0.0, 1.0])] * 4)

    def energy(self, q):
        return -(q @ self.field + 0.5 * ((q @ self.coupling) * q).sum(-1))

    def block_energy(self, q, block):
        return self.energy(q)

    def sample(self, n):
        index = torch.distributions.Categorical(logits=-self.energy(self.states)).sample((n,))
        return self.states[index]

    def exact_moments(self):
        return _enumerated_moments(self.states, -self.energy(self.states))


class BernoulliGaussian(_Target):
    """z_k ~ Bernoulli(p), x_k | z_k ~ N(mu[z_k], s^2) for k = 1, 2; position
    (x_1, z_1, z_2, x_2): a binary block in the middle of continuous coordinates."""

    dim, p, mu, s = 4, 0.3, (-1.0, 2.0), 0.7

    def __init__(self):
        self.discrete_mask = _mask(4, 1, 2)
        self.discrete_blocks = (DiscreteBlock("z", 1, 2, (2,), 1, 0.0, 1.0, "binary"),)

    def block_energy(self, q, block):
        z, x = q[:, 1:3], q[:, [0, 3]]
        loc = self.mu[0] + z * (self.mu[1] - self.mu[0])
        return -(z * math.log(self.p) + (1 - z) * math.log(1 - self.p)) \
            + 0.5 * ((x - loc) / self.s) ** 2

    def energy(self, q):
        return self.block_energy(q, None).sum(-1)

    def sample(self, n):
        z = torch.bernoulli(torch.full((n, 2), self.p))
        x = self.mu[0] + z * (self.mu[1] - self.mu[0]) + self.s * torch.randn(n, 2)
        return torch.stack([x[:, 0], z[:, 0], z[:, 1], x[:, 1]], -1)

    def exact_moments(self):
        p, (mu0, mu1), s = self.p, self.mu, self.s
        mean_x = p * mu1 + (1 - p) * mu0
        mean = torch.tensor([mean_x, p, p, mean_x])
        second = torch.outer(mean, mean)
        for x, z in ((0, 1), (3, 2)):  # within one pair (z_k, x_k)
            second[z, z] = p
            second[x, x] = p * mu1**2 + (1 - p) * mu0**2 + s**2
            second[x, z] = second[z, x] = p * mu1
        return mean, second


def _tilt(unconstrained, tilt):
    if tilt is not None:
        pyro.factor("tilt", -(unconstrained * tilt).sum())


def gaussian_model(tilt=None):
    """z ~ MVN(mu, Sigma) in two dimensions, written as a Pyro model."""
    cov = torch.tensor([[1.0, 0.6], [0.6, 2.0]])
    z = pyro.sample("z", dist.MultivariateNormal(torch.tensor([1.0, -1.0]), cov))
    _tilt(z, tilt)


def poisson_gamma_model(tilt=None):
    """lam ~ Gamma(3, 1) and two unmarked Poisson(lam) counts in a plate: the potential
    samples the counts (they cannot be summed out)."""
    lam = pyro.sample("lam", dist.Gamma(3.0, 1.0))
    with pyro.plate("counts", 2):
        n = pyro.sample("n", dist.Poisson(lam))
    _tilt(torch.cat([lam.log().reshape(-1), n.reshape(-1)]), tilt)


class _ModelTarget:
    """A Pyro model without observations, as users write one, turned into a target by
    :class:`~pyro_lvmle.traces.Potential`: its posterior is its prior, so the potential's own
    prior draws are exact draws. :meth:`tilt` adds ``tilt . q`` (q unconstrained) to the
    energy by a ``pyro.factor``: the wrong target of the controls, as a model that Pyro's
    kernels can run too."""

    def __init__(self, model, tilt=None):
        self.model = partial(model, tilt=tilt)
        self._plain = model
        self.potential = Potential(self.model, max_plate_nesting=1)

    def __getattr__(self, name):  # the target protocol and layout: the potential's
        if name == "potential":
            raise AttributeError(name)
        return getattr(self.potential, name)

    def __call__(self, q):
        return self.potential(q)

    def sample(self, n):
        return self.potential.sample_prior(n)

    def tilt(self, tilt):
        return _ModelTarget(self._plain, tilt)


TARGETS = {
    "gaussian": Gaussian,
    "banana": Banana,
    "poisson": Poisson,
    "poisson_gamma": PoissonGamma,
    "finite_support": FiniteSupport,
    "bernoulli": Bernoulli,
    "ising": Ising,
    "bernoulli_gaussian": BernoulliGaussian,
    "gaussian_model": partial(_ModelTarget, gaussian_model),
    "poisson_gamma_model": partial(_ModelTarget, poisson_gamma_model),
}


class Tilted:
    """``target`` with ``tilt . q`` added to its energy: the wrong target of the controls."""

    def __init__(self, target, tilt):
        self.target, self.tilt = target, tilt
        self.dim = target.dim
        self.discrete_mask = target.discrete_mask
        self.discrete_blocks = target.discrete_blocks

    def __call__(self, q):
        return self.target(q) + q @ self.tilt

    def value_and_grad(self, q):
        energy, grad = self.target.value_and_grad(q)
        tilt = self.tilt if self.discrete_mask is None \
            else self.tilt.masked_fill(self.discrete_mask, 0.0)
        return energy + q @ self.tilt, grad + tilt

    def block_energy(self, q, block):
        end = block.offset + block.numel
        shape = (q.shape[0], *block.batch_shape, block.event_numel)
        tilt = self.tilt[block.offset:end].reshape(shape[1:])
        return self.target.block_energy(q, block) + (q[:, block.offset:end].reshape(shape)
                                                     * tilt).sum(-1)


# ---------------------------------------------------------------------------------- kernels


def functional(step, step_size=0.1, num_chains=NUM_CHAINS, **kwargs):
    """One transition of a functional ``step(state, target, **kwargs)``, step size fixed,
    applied to ``num_chains`` exact draws."""

    def move(position, target):
        state = hmc_init(position, target, step_size=step_size)
        state, _ = step(state, target, **kwargs)
        return state.position

    move.num_chains = num_chains
    return move


def protocol(make_sampler, num_chains=NUM_CHAINS):
    """One transition of a sampler with the protocol's ``init`` and ``step``, applied to
    ``num_chains`` exact draws."""

    def move(position, target):
        sampler = make_sampler(target) if inspect.signature(make_sampler).parameters \
            else make_sampler()
        state = sampler.init(position, target)
        state, _ = sampler.step(state, target)
        return state.position

    move.num_chains = num_chains
    return move


KERNELS = {
    "hmc": functional(hmc_step, step_size=0.3, num_steps=5),
    "mala": functional(mala_step, step_size=0.5),
    "mwg": functional(metropolis_within_gibbs_step),
    "mwg_window3": functional(metropolis_within_gibbs_step, window=3),
    "gwg": functional(gibbs_with_gradients_step),
    "mixed": functional(mixed_step, step_size=0.3, num_steps=5),
    "mixed_gwg_mala": functional(mixed_step, step_size=0.5, continuous_step=mala_step,
                                 discrete_step=gibbs_with_gradients_step),
    # Pyro's own kernels through the adapter, on model-built targets (a kernel per chain)
    "pyro_nuts": protocol(lambda target: PyroKernel(pyro.infer.NUTS(
        target.model, step_size=0.5, adapt_step_size=False, adapt_mass_matrix=False)),
        num_chains=2000),
    "pyro_hmc": protocol(lambda target: PyroKernel(pyro.infer.HMC(
        target.model, step_size=0.4, num_steps=4, adapt_step_size=False,
        adapt_mass_matrix=False)), num_chains=2000),
    "make_sampler_hmc": protocol(lambda: make_sampler("hmc", step_size=0.3, num_steps=5,
                                                      adapt_step_size=False)),
    "batched_kernel_mixed": protocol(lambda: BatchedKernel(
        partial(mixed_step, num_steps=5), step_size=0.3, adapt_step_size=False)),
}

CASES = [
    # continuous targets
    ("hmc", "gaussian"),
    ("mala", "gaussian"),
    ("mixed", "gaussian"),
    ("hmc", "banana"),
    ("mala", "banana"),
    # discrete targets
    ("mwg", "poisson"),
    ("mwg_window3", "poisson"),
    ("mixed", "poisson"),
    ("mwg", "finite_support"),
    ("gwg", "finite_support"),
    ("mwg", "bernoulli"),
    ("gwg", "bernoulli"),
    ("mwg", "ising"),
    ("gwg", "ising"),
    # mixed targets: each half alone is invariant too
    ("hmc", "poisson_gamma"),
    ("mwg", "poisson_gamma"),
    ("mixed", "poisson_gamma"),
    ("batched_kernel_mixed", "poisson_gamma"),
    ("hmc", "bernoulli_gaussian"),
    ("gwg", "bernoulli_gaussian"),
    ("mixed", "bernoulli_gaussian"),
    ("mixed_gwg_mala", "bernoulli_gaussian"),
    # model-built targets: the posterior target of Potential, Pyro's kernels, make_sampler
    ("pyro_nuts", "gaussian_model"),
    ("pyro_hmc", "gaussian_model"),
    ("make_sampler_hmc", "gaussian_model"),
    ("make_sampler_hmc", "poisson_gamma_model"),
]
IDS = [f"{kernel}-{target}" for kernel, target in CASES]


# ---------------------------------------------------------------------------------- harness


def _statistics(x):
    """Every first moment and every product ``x_i x_j``, ``i <= j``, per draw."""
    i, j = torch.triu_indices(x.shape[-1], x.shape[-1])
    return torch.cat([x, x[:, i] * x[:, j]], -1)


def exact_statistics(target, num_chains):
    """The exact moments, or an estimate from ten times ``num_chains`` exact draws with the
    factor its own error adds to the tolerance."""
    if hasattr(target, "exact_moments"):
        mean, second = target.exact_moments()
        i, j = torch.triu_indices(len(mean), len(mean))
        return torch.cat([mean, second[i, j]]), 1.0
    return _statistics(target.sample(10 * num_chains)).mean(0), math.sqrt(1.1)


def check_moments(moved, exact, truth, inflate=1.0):
    """``moved``'s moments within 4 standard errors of ``truth``, the standard error from
    the exact draws' spread."""
    stats = _statistics(exact)
    stderr = inflate * stats.std(0) / math.sqrt(len(stats))
    assert_within_stderr(_statistics(moved).mean(0), truth, stderr,
                         what="moments after one transition")


def _one_transition(kernel_name, target_name, tilted=False):
    target, kernel = TARGETS[target_name](), KERNELS[kernel_name]
    truth, inflate = exact_statistics(target, kernel.num_chains)
    exact = target.sample(kernel.num_chains)
    aim = target
    if tilted:  # one standard deviation per coordinate: |z| >= 7 in every case
        spread = _statistics(exact)[:, :target.dim].std(0)
        aim = target.tilt(1.0 / spread) if isinstance(target, _ModelTarget) \
            else Tilted(target, 1.0 / spread)
    moved = kernel(exact, aim)
    return exact, moved, truth, inflate


@pytest.mark.parametrize(("kernel_name", "target_name"), CASES, ids=IDS)
def test_one_transition_keeps_the_moments(kernel_name, target_name):
    exact, moved, truth, inflate = _one_transition(kernel_name, target_name)
    check_moments(moved, exact, truth, inflate)
    moved_rows = (moved != exact).any(-1).double().mean()
    assert moved_rows > 0.02, f"only {moved_rows:.3f} of the chains moved"


@pytest.mark.parametrize(("kernel_name", "target_name"), CASES, ids=IDS)
def test_control_aimed_at_a_tilted_target_fails(kernel_name, target_name):
    exact, moved, truth, inflate = _one_transition(kernel_name, target_name, tilted=True)
    with pytest.raises(AssertionError, match="standard errors"):
        check_moments(moved, exact, truth, inflate)


# ------------------------------------------------------------------- the targets' own check


def check_block_energy(target, position):
    """``block_energy`` is what the discrete steps assume: changing every element of a block
    changes the energy by the sum of the entries' changes, and changing one element changes
    only its entry. Reusable for any target (e.g. a model-built one)."""
    for block in target.discrete_blocks:
        end = block.offset + block.numel
        shape = (position.shape[0], *block.batch_shape, block.event_numel)
        values = position[:, block.offset:end].reshape(shape)
        new_values = (values + 1).where(values + 1 <= block.upper, values - 1).clamp(
            min=block.lower)
        new = position.clone()
        new[:, block.offset:end] = new_values.reshape(position.shape[0], -1)
        before, after = target.block_energy(position, block), target.block_energy(new, block)
        torch.testing.assert_close((after - before).reshape(len(position), -1).sum(-1),
                                   target(new) - target(position))
        first = new_values.reshape(len(position), -1, block.event_numel)[:, :1]
        one = position.clone()
        flat = one[:, block.offset:end].reshape(len(position), -1, block.event_numel)
        flat[:, :1] = first
        one[:, block.offset:end] = flat.reshape(len(position), -1)
        change = (target.block_energy(one, block) - before).reshape(len(position), -1)
        assert (change[:, 1:] == 0).all(), f"block {block.name}: one element changed others"


@pytest.mark.parametrize("target_name", [t for t in TARGETS if TARGETS[t]().discrete_blocks])
def test_test_targets_block_energy_is_consistent(target_name):
    target = TARGETS[target_name]()
    check_block_energy(target, target.sample(50))


@pytest.mark.parametrize("target_name", ["bernoulli", "ising"])
def test_control_gibbs_with_gradients_without_the_reverse_proposal_fails(
        target_name, monkeypatch):
    # a planted bug: the Metropolis-Hastings ratio forgets q(i | x') / q(i | x) (the second
    # call, at the proposal, returns the forward proposal's log-probabilities)
    from pyro_lvmle.samplers import discrete

    honest, calls = discrete._flip_proposal, []

    def forgetful(position, target, block, values):
        energy, log_q = honest(position, target, block, values)
        calls.append(log_q)
        return energy, calls[-2] if len(calls) % 2 == 0 else log_q

    monkeypatch.setattr(discrete, "_flip_proposal", forgetful)
    exact, moved, truth, inflate = _one_transition("gwg", target_name)
    with pytest.raises(AssertionError, match="standard errors"):
        check_moments(moved, exact, truth, inflate)
