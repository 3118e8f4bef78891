"""Chains under torch.func.vmap: models written for one sample, the automatic choice between
the plate and vmap paths, and the tempered target, all against hand-written densities."""

from functools import partial

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.distributions import constraints

import pyro_lvmle as lv
from pyro_lvmle.samplers import BatchedKernel, hmc_step
from pyro_lvmle.traces import Potential
from tests.common import assert_close, assert_within_stderr
from tests.traces.test_potential import mixture, mixture_log_joint

NUM_HERDS = 15
HERD = torch.arange(NUM_HERDS).repeat_interleave(4)


def glmm(herd, size, y):
    """A binomial GLMM with a herd effect, written as lme4 users write it: ``u[herd]``."""
    mu = pyro.param("mu", torch.tensor(-0.3))
    sd = pyro.param("sd", torch.tensor(0.8), constraint=constraints.positive)
    with pyro.plate("herds", int(herd.max()) + 1):
        u = pyro.sample("u", dist.Normal(0.0, sd))
    with pyro.plate("obs", len(y)):
        pyro.sample("y", dist.Binomial(size, logits=mu + u[herd]), obs=y)


def glmm_data(herd=HERD):
    size = torch.full(herd.shape, 10.0)
    return herd, size, dist.Binomial(size, logits=torch.randn(int(herd.max()) + 1)[herd]).sample()


def glmm_log_joint(u, herd, size, y):
    """Hand-written :math:`\\log p(y, u)` of one chain ``u`` ``(H,)``."""
    mu, sd = pyro.param("mu"), pyro.param("sd")
    return dist.Normal(0.0, sd).log_prob(u).sum() \
        + dist.Binomial(size, logits=mu + u[herd]).log_prob(y).sum()


def loadings(x):
    """Factor analysis with global latent loadings ``W`` and noise ``s``: ``z @ W``."""
    loc = pyro.param("loc", torch.zeros(x.shape[-1]))
    w = pyro.sample("W", dist.Normal(0.0, 1.0).expand([2, x.shape[-1]]).to_event(2))
    s = pyro.sample("s", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        pyro.sample("x", dist.Normal(z @ w + loc, s).to_event(1), obs=x)


def loadings_energy(q, x):
    """Hand-written energy of one chain ``q`` of :func:`loadings`, Jacobian of ``s`` included."""
    d, n = x.shape[-1], len(x)
    w, log_s, z = q[:2 * d].reshape(2, d), q[2 * d], q[2 * d + 1:].reshape(n, 2)
    s = log_s.exp()
    log_joint = dist.Normal(0.0, 1.0).log_prob(w).sum() + dist.LogNormal(0.0, 1.0).log_prob(s) \
        + dist.Normal(0.0, 1.0).log_prob(z).sum() \
        + dist.Normal(z @ w + pyro.param("loc"), s).log_prob(x).sum()
    return -(log_joint + log_s)


def per_chain(fn, position):
    """Values and position-gradients of ``fn`` evaluated one chain at a time."""
    values, grads = [], []
    for q in position:
        q = q.detach().requires_grad_(True)
        value = fn(q)
        values.append(value.detach())
        grads.append(torch.autograd.grad(value, q)[0])
    return torch.stack(values), torch.stack(grads)


def param_jacobian(log_joint, params):
    """``(C, P)``: each chain's gradient of its log joint in the (unconstrained) params."""
    return torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(
        value, params, retain_graph=True)]) for value in log_joint])


def test_glmm_indexing_its_herd_effect_plainly_runs_under_vmap_exactly():
    data = glmm_data()
    potential = Potential(glmm, data)
    assert potential.vectorization == "vmap"
    position = potential.sample_prior(5)
    energy, grad = potential.value_and_grad(position)
    expected, expected_grad = per_chain(lambda u: -glmm_log_joint(u, *data), position)
    assert_close(energy, expected, atol=1e-10, what="energies")
    assert_close(grad, expected_grad, atol=1e-10, what="position gradients")
    params = [pyro.param("mu").unconstrained(), pyro.param("sd").unconstrained()]
    assert_close(param_jacobian(potential.log_joint(position), params),
                 param_jacobian([glmm_log_joint(u, *data) for u in position], params),
                 atol=1e-10, what="parameter gradients of log_joint")


def test_matmul_with_global_latent_loadings_runs_under_vmap_exactly():
    x = torch.randn(6, 3)
    potential = Potential(loadings, (x,))
    assert potential.vectorization == "vmap" and potential.dim == 6 + 1 + 12
    position = torch.randn(4, potential.dim)
    energy, grad = potential.value_and_grad(position)
    expected, expected_grad = per_chain(lambda q: loadings_energy(q, x), position)
    assert_close(energy, expected, atol=1e-10, what="energies")
    assert_close(grad, expected_grad, atol=1e-10, what="position gradients")
    loc = pyro.param("loc").unconstrained()
    jacobian = torch.stack([torch.autograd.grad(-loadings_energy(q, x), loc)[0] for q in position])
    assert_close(param_jacobian(potential.log_joint(position), [loc]), jacobian, atol=1e-10)


def test_first_coordinate_of_a_per_datum_latent_runs_under_vmap_exactly():
    def model(x):  # x[:, 0]: a per-datum latent pair, the first coordinate as the mean
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        pyro.sample("x", dist.Normal(z[:, 0], z[:, 1].exp()).to_event(1), obs=x)

    x = torch.randn(5)
    potential = Potential(model, (x,))
    assert potential.vectorization == "vmap"
    position = torch.randn(3, 10)

    def energy(q):
        z = q.reshape(5, 2)
        return -(dist.Normal(0.0, 1.0).log_prob(z).sum()
                 + dist.Normal(z[:, 0], z[:, 1].exp()).log_prob(x).sum())

    expected, expected_grad = per_chain(energy, position)
    energy_, grad = potential.value_and_grad(position)
    assert_close(energy_, expected, atol=1e-10)
    assert_close(grad, expected_grad, atol=1e-10)


def test_subsampled_glmm_under_vmap_keeps_its_batch_and_drops_the_scale_for_sampling():
    def model(herd, size, y, subsample_size=None):
        mu = pyro.param("mu", torch.tensor(-0.3))
        with pyro.plate("herds", NUM_HERDS):
            u = pyro.sample("u", dist.Normal(0.0, 1.0))
        with pyro.plate("obs", len(y), subsample_size=subsample_size) as idx:
            pyro.sample("y", dist.Binomial(size[idx], logits=mu + u[herd[idx]]), obs=y[idx])

    herd, size, y = glmm_data()
    potential = Potential(model, (herd, size, y), {"subsample_size": 20})
    assert potential.vectorization == "vmap"
    idx = potential.subsample_indices["obs"]
    position = torch.randn(3, NUM_HERDS)
    prior = dist.Normal(0.0, 1.0).log_prob(position).sum(-1)
    likelihood = dist.Binomial(size[idx], logits=pyro.param("mu") + position[:, herd[idx]]) \
        .log_prob(y[idx]).sum(-1)
    assert_close(potential(position), -(prior + likelihood), atol=1e-10)
    assert_close(potential.log_joint(position), prior + 3.0 * likelihood, atol=1e-10)  # N/B


@pytest.mark.parametrize("subsample_size", [None, 4])
def test_plate_and_vmap_paths_agree_on_a_model_written_for_batches(subsample_size):
    model = lv.models.LinearGaussian(dim=2)
    data = model.simulate(10)
    kwargs = {"subsample_size": subsample_size}
    pyro.set_rng_seed(1)  # the same mini-batch for both
    plate = Potential(model, (data,), kwargs)
    assert plate.vectorization == "plate"
    pyro.set_rng_seed(1)
    mapped = Potential(model, (data,), kwargs, vectorization="vmap")
    assert torch.equal(plate.subsample_indices.get("data", 0),
                       mapped.subsample_indices.get("data", 0))
    position = torch.randn(5, plate.dim)
    for a, b in zip(plate.value_and_grad(position), mapped.value_and_grad(position), strict=True):
        assert_close(a, b, atol=1e-10)
    params = [pyro.param(name).unconstrained() for name in ("w", "sigma")]
    assert_close(param_jacobian(plate.log_joint(position), params),
                 param_jacobian(mapped.log_joint(position), params), atol=1e-10)


def test_forcing_the_plate_path_on_plainly_indexed_models_fails_or_is_wrong():
    # planted control: the chain plate is what breaks these models
    data = glmm_data()
    position = torch.randn(5, NUM_HERDS)
    with pytest.raises(IndexError):
        Potential(glmm, data, vectorization="plate")(position)
    # z.sum() sums a chain's coordinates, or under the chain plate every chain's: silently
    def summed(x):
        z = pyro.sample("z", dist.Normal(torch.zeros(3), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z.sum(), 1.0), obs=x)

    x, position = torch.tensor(0.4), torch.randn(4, 3)
    expected = -(dist.Normal(0.0, 1.0).log_prob(position).sum(-1)
                 + dist.Normal(position.sum(-1), 1.0).log_prob(x))
    wrong = Potential(summed, (x,), vectorization="plate")(position)
    assert (wrong - expected).abs().max() > 1e-3
    # ... which the automatic choice notices by the values alone
    potential = Potential(summed, (x,))
    assert potential.vectorization == "vmap"
    assert_close(potential(position), expected, atol=1e-10)


def test_a_model_vmap_cannot_run_stays_on_the_plate_path():
    def model(x):  # written for batches, but with .item() on a latent value
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(z + 0.0 * z.sum().item(), 1.0), obs=x)

    x = torch.randn(4)
    assert Potential(model, (x,)).vectorization == "plate"
    with pytest.raises(RuntimeError):
        Potential(model, (x,), vectorization="vmap")(torch.zeros(2, 1))


def test_a_model_neither_path_runs_gets_one_line_saying_what_to_change():
    group = torch.arange(4) % 2

    @pyro.infer.config_enumerate
    def model(x):  # plainly indexed and enumerated: vmap cannot enumerate
        with pyro.plate("groups", 2):
            u = pyro.sample("u", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(x)):
            c = pyro.sample("c", dist.Bernoulli(0.3))
            pyro.sample("x", dist.Normal(u[group] + 2.0 * c, 1.0), obs=x)

    with pytest.raises(ValueError, match=r"u\[\.\.\., herd\]") as error:
        Potential(model, (torch.randn(4),))
    assert "\n" not in str(error.value) and "enumerated" in str(error.value)


def test_enumerated_models_stay_on_the_plate_path():
    args = (torch.randn(4), torch.tensor([0.7, 0.3]))  # the label unmarked, summed out
    assert Potential(mixture, args).vectorization == "plate"
    with pytest.raises(ValueError, match="enumerated sites \\['c'\\]"):
        Potential(mixture, args, vectorization="vmap")(torch.zeros(2, 4))


def test_vectorization_keyword_is_checked():
    with pytest.raises(ValueError, match="vectorization must be one of"):
        Potential(lv.models.LinearGaussian(dim=1), (torch.zeros(3, 1),), vectorization="loop")


def test_the_automatic_choice_leaves_the_random_stream_alone():
    data = glmm_data()
    state = torch.get_rng_state()
    Potential(glmm, data, vectorization="vmap")  # no choice: one run of the model
    after_one_run = torch.get_rng_state()
    torch.set_rng_state(state)
    Potential(glmm, data)
    assert torch.equal(torch.get_rng_state(), after_one_run)


def test_prior_draws_on_the_vmap_path_are_independent_draws_of_the_prior():
    data = glmm_data()
    draws = Potential(glmm, data).sample_prior(400)  # (400, 15), u ~ N(0, sd) i.i.d.
    sd = pyro.param("sd").detach()
    flat = draws.reshape(-1)
    assert_within_stderr(flat.mean(), torch.tensor(0.0), sd / flat.numel() ** 0.5, what="mean")
    # Var of a normal's squared value is 2 sd^4
    assert_within_stderr(flat.pow(2).mean(), sd**2, (2 * sd**4 / flat.numel()) ** 0.5,
                         what="second moment")
    assert torch.unique(draws[:, 0]).numel() == 400  # control: a repeated chain would fail


# ------------------------------------------------------------------------------ tempered


def global_model(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    s = pyro.sample("s", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(mu, s), obs=x)


def global_terms(q, x):
    """Hand-written log prior with the Jacobian of ``s``, and log likelihood, per chain."""
    mu, log_s = q[:, 0], q[:, 1]
    prior = dist.Normal(0.0, 1.0).log_prob(mu) + dist.LogNormal(0.0, 1.0).log_prob(log_s.exp()) \
        + log_s
    return prior, dist.Normal(mu[:, None], log_s.exp()[:, None]).log_prob(x).sum(-1)


@pytest.mark.parametrize("vectorization", ["plate", "vmap"])
def test_tempered_energy_with_one_beta_per_chain_by_hand(vectorization):
    x = torch.randn(7)
    potential = Potential(global_model, (x,), vectorization=vectorization)
    beta = torch.tensor([0.0, 0.3, 1.0, 2.5])
    target = potential.tempered(beta)
    q = torch.randn(4, 2)
    prior, likelihood = global_terms(q, x)
    energy, grad = target.value_and_grad(q)
    assert_close(energy, -(prior + beta * likelihood), atol=1e-10)
    rows = []
    for c in range(4):
        v = q[c:c + 1].clone().requires_grad_(True)
        p, lik = global_terms(v, x)
        rows.append(torch.autograd.grad(-(p + beta[c] * lik).sum(), v)[0][0])
    assert_close(grad, torch.stack(rows), atol=1e-10)
    assert_close(target.log_joint(q), prior - q[:, 1] + beta * likelihood, atol=1e-10)
    assert_close(potential.tempered(0.0)(q), -prior, atol=1e-10, what="beta = 0: the prior")
    assert_close(potential.tempered(1.0)(q), potential(q), atol=1e-10, what="beta = 1")
    assert potential.beta is None  # a view: the potential itself is untouched


def test_tempered_glmm_on_the_vmap_path_by_hand():
    data = glmm_data()
    potential = Potential(glmm, data)
    beta = torch.tensor([0.0, 0.5, 1.0])
    position = potential.sample_prior(3)
    sd, mu = pyro.param("sd"), pyro.param("mu")
    herd, size, y = data
    expected = torch.stack([
        -(dist.Normal(0.0, sd).log_prob(u).sum()
          + b * dist.Binomial(size, logits=mu + u[herd]).log_prob(y).sum())
        for u, b in zip(position, beta, strict=True)])
    assert_close(potential.tempered(beta)(position), expected, atol=1e-10)


@pytest.mark.parametrize("vectorization", ["plate", "vmap"])
def test_beta_zero_ignores_an_impossible_observation(vectorization):
    def model(x):
        z = pyro.sample("z", dist.LogNormal(0.0, 1.0))
        pyro.sample("x", dist.Uniform(0.0, z), obs=x)  # density 0 where z <= x

    potential = Potential(model, (torch.tensor(2.0),), vectorization=vectorization)
    q = torch.tensor([[0.0], [0.5]])  # z = 1 and 1.65 < x: log p(x | z) = -inf
    energy, grad = potential.tempered(torch.tensor([0.0, 1.0])).value_and_grad(q)
    prior = dist.LogNormal(0.0, 1.0).log_prob(q[0, 0].exp()) + q[0, 0]
    assert_close(energy[0], -prior, atol=1e-12)
    assert energy[1] == float("inf") and torch.isfinite(grad[0]).all()


def test_tempering_scales_before_enumerated_sites_are_summed_out():
    x, weights = torch.tensor([-1.0, 0.5, 2.0, 3.0]), torch.tensor([0.7, 0.3])
    potential = Potential(mixture, (x, weights))
    beta = torch.tensor([0.0, 0.4, 1.0])
    q = torch.randn(3, 4)
    expected = mixture_log_joint(q, x, weights, beta=beta[:, None])
    assert_close(potential.tempered(beta)(q), -expected, atol=1e-10)


def test_factor_sites_are_tempered_unless_left_out():
    def model(x):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.factor("penalty", -0.5 * z**2)
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    potential = Potential(model, (torch.tensor(0.7),))
    assert potential.likelihood_sites == ("penalty", "x")
    q = torch.randn(2, 1)
    z, beta = q[:, 0], torch.tensor([0.2, 0.9])
    prior, penalty = dist.Normal(0.0, 1.0).log_prob(z), -0.5 * z**2
    likelihood = dist.Normal(z, 1.0).log_prob(torch.tensor(0.7))
    assert_close(potential.tempered(beta)(q), -(prior + beta * (penalty + likelihood)),
                 atol=1e-12)
    assert_close(potential.tempered(beta, sites=["x"])(q),
                 -(prior + penalty + beta * likelihood), atol=1e-12)


def test_tempered_input_is_checked():
    potential = Potential(global_model, (torch.randn(3),))
    with pytest.raises(ValueError, match="non-negative"):
        potential.tempered(torch.tensor([0.5, -0.1]))
    with pytest.raises(ValueError, match="no sample sites \\['y'\\]"):
        potential.tempered(1.0, sites=["y"])
    with pytest.raises(ValueError, match="2 tempering betas for 3 chains"):
        potential.tempered(torch.tensor([0.5, 1.0]))(torch.zeros(3, 2))


def _tempered_chains(beta):
    """Chains of LinearGaussian's tempered target, one beta per chain, started at the prior
    and moved 100 batched HMC transitions (fixed step): ``(C, N, D)`` draws of z."""
    model = lv.models.LinearGaussian(dim=2, init_params={"w": torch.tensor([1.0, -1.0]),
                                                         "sigma": torch.tensor(0.8)})
    data = model.simulate(3, params={"w": torch.tensor([2.0, 0.0])})
    potential = Potential(model, (data,))
    target = potential.tempered(beta)
    kernel = BatchedKernel(partial(hmc_step, num_steps=5), step_size=0.3,
                           adapt_step_size=False)
    state = kernel.init(potential.sample_prior(len(beta)), target)
    for _ in range(100):
        state, _ = kernel.step(state, target)
    z = potential.unpack(state.position)["z"].reshape(len(beta), *data.shape)
    return model, data, z


def _assert_normal_moments(z, loc, scale, what):
    n = z.shape[0]
    assert_within_stderr(z.mean(0), loc, scale / n**0.5, what=f"{what} mean")
    assert_within_stderr(z.var(0), scale**2, scale**2 * (2.0 / n) ** 0.5, what=f"{what} var")


def test_tempered_chains_sample_the_prior_at_beta_0_and_the_posterior_at_beta_1():
    beta = torch.tensor([0.0, 1.0]).repeat(2000)  # one beta per chain, mixed in one batch
    model, data, z = _tempered_chains(beta)
    posterior = model.posterior(data)
    prior_loc = model.params()["w"].detach().expand_as(data)  # z_n ~ N(w, I)
    _assert_normal_moments(z[beta == 0], prior_loc, torch.ones_like(data), "beta = 0 (prior)")
    _assert_normal_moments(z[beta == 1], posterior.mean, posterior.stddev,
                           "beta = 1 (posterior)")


def test_control_tempered_chains_compared_with_the_swapped_target_fail():
    beta = torch.tensor([0.0, 1.0]).repeat(2000)
    model, data, z = _tempered_chains(beta)
    with pytest.raises(AssertionError, match="standard errors"):
        prior_loc = model.params()["w"].detach().expand_as(data)
        _assert_normal_moments(z[beta == 1], prior_loc, torch.ones_like(data),
                               "beta = 1 against the prior")
