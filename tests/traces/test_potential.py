"""The batched potential: energies by hand, gradients, layout, and exact posteriors by HMC;
discrete latents summed out or sampled; the observed sites as the target."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.distributions import constraints

import pyro_lvmle as lv
from pyro_lvmle.samplers import hmc_init, hmc_step, warmup
from pyro_lvmle.traces import DiscreteBlock, Potential
from tests.common import (
    assert_close,
    assert_within_stderr,
    capped_effective_sample_size,
    central_difference,
)


def global_model(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    s = pyro.sample("s", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(mu, s), obs=x)


def test_energy_of_a_plated_model_by_hand():
    model = lv.models.LinearGaussian(dim=2)
    data = model.simulate(5)
    potential = Potential(model, (data,))
    q = torch.randn(3, potential.dim)
    z, p = q.reshape(3, 5, 2), model.params()
    log_joint = dist.Normal(p["w"], 1.0).log_prob(z).sum((-1, -2)) \
        + dist.Normal(z, p["sigma"]).log_prob(data).sum((-1, -2))
    assert_close(potential(q), -log_joint, atol=1e-10)
    assert_close(potential.log_joint(q), log_joint, atol=1e-10)


def test_energy_with_constrained_global_sites_includes_the_jacobian():
    x = torch.randn(7)
    potential = Potential(global_model, (x,))
    q = torch.randn(4, 2)
    mu, log_s = q[:, 0], q[:, 1]
    log_joint = dist.Normal(0.0, 1.0).log_prob(mu) + dist.LogNormal(0.0, 1.0).log_prob(
        log_s.exp()) + dist.Normal(mu[:, None], log_s.exp()[:, None]).log_prob(x).sum(-1)
    assert_close(potential(q), -(log_joint + log_s), atol=1e-10)


def test_gradient_matches_finite_differences():
    potential = Potential(global_model, (torch.randn(7),))
    q = torch.randn(1, 2)
    _, grad = potential.value_and_grad(q)
    numeric = central_difference(lambda v: potential(v.unsqueeze(0)).sum(), q[0])
    assert_close(grad[0], numeric, atol=1e-6)


def test_pack_inverts_unpack():
    potential = Potential(lv.models.Theophylline(), (lv.models.load_theophylline(),))
    q = torch.randn(3, potential.dim)
    assert_close(potential.pack(potential.unpack(q)), q, atol=1e-12)
    assert potential.dim == 36


def test_a_model_whose_only_latent_is_summed_out_has_nothing_to_sample():
    def model():
        pyro.sample("c", dist.Bernoulli(0.5))

    with pytest.raises(ValueError, match="no latent sites to sample.*summed out"):
        Potential(model)


def test_hmc_on_the_potential_recovers_the_exact_posterior():
    model = lv.models.LinearGaussian(dim=1)
    data = model.simulate(3, {"w": torch.tensor([0.5]), "sigma": torch.tensor(0.7)})
    potential = Potential(model, (data,))
    state = hmc_init(torch.zeros(8, potential.dim), potential, step_size=0.3)
    state = warmup(state, potential, 200, num_steps=5).state
    draws = []
    for _ in range(600):
        state, _ = hmc_step(state, potential, num_steps=5)
        draws.append(state.position)
    draws = torch.stack(draws, 1)
    ess = capped_effective_sample_size(draws)
    posterior = model.posterior(data)
    truth = posterior.base_dist.loc.reshape(-1)
    sd = posterior.base_dist.scale.reshape(-1)
    assert_within_stderr(draws.mean((0, 1)), truth, sd / ess.sqrt(), what="posterior mean")


def test_energy_of_a_model_without_plates_is_per_chain():
    # max_plate_nesting = 0: the chain dimension is the only one
    def model(x):
        pyro.sample("z", dist.Normal(x, 1.0))

    potential = Potential(model, (torch.tensor(0.5),))
    q = torch.tensor([[0.0], [1.0]])
    assert_close(potential(q), -dist.Normal(0.5, 1.0).log_prob(q[:, 0]), atol=1e-12)


def test_marked_discrete_latents_are_summed_out_of_the_energy():
    x, weights = torch.tensor([-1.0, 0.5, 2.0, 3.0]), torch.tensor([0.7, 0.3])
    potential = Potential(pyro.infer.config_enumerate(mixture), (x, weights))
    assert potential.enumerated == ("c",) and potential.dim == 4
    q = torch.randn(3, 4)
    assert_close(potential(q), -mixture_log_joint(q, x, weights), atol=1e-10)


def test_subsampled_plate_keeps_its_indices_and_samples_without_the_scale():
    model = lv.models.LinearGaussian(dim=1)
    data = model.simulate(10)
    potential = Potential(model, (data,), {"subsample_size": 4})
    index = potential.subsample_indices["data"]
    assert potential.sites[0].subsampled == (("data", 1, 10),)
    q = torch.randn(2, 4)
    p = model.params()
    log_joint = dist.Normal(p["w"], 1.0).log_prob(q) \
        + dist.Normal(q, p["sigma"]).log_prob(data[index, 0])
    assert_close(potential(q), -log_joint.sum(-1), atol=1e-10)
    assert_close(potential.log_joint(q), 2.5 * log_joint.sum(-1), atol=1e-10)  # N/B = 10/4


# ---------------------------------------------------------------- discrete latents, summed out
def mixture(x, weights):
    """A user's mixture: an unmarked discrete label per datum, a continuous latent per datum."""
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        if len(weights) == 2:
            c = pyro.sample("c", dist.Bernoulli(weights[1]))
        else:
            c = pyro.sample("c", dist.Categorical(weights)).double()
        pyro.sample("x", dist.Normal(z + 2.0 * c, 1.0), obs=x)


def mixture_log_joint(q, x, weights, summed=True, beta=1.0):
    """log p(x, z) with the label summed out by hand (or, planted, fixed at 0), the
    likelihood tempered by ``beta`` (a float or ``(C, 1)``)."""
    log_weights = weights.log()
    terms = torch.stack([log_weights[k] + beta * dist.Normal(q + 2.0 * k, 1.0).log_prob(x)
                         for k in range(len(weights))])
    mixed = terms.logsumexp(0) if summed else terms[0]
    return (dist.Normal(0.0, 1.0).log_prob(q) + mixed).sum(-1)


@pytest.mark.parametrize("weights", [[0.7, 0.3], [0.5, 0.2, 0.3]], ids=["bernoulli", "categorical"])
def test_unmarked_discrete_latent_is_summed_out_with_its_gradient(weights):
    x = torch.tensor([-1.0, 0.5, 2.0, 3.0])
    weights = torch.tensor(weights)
    potential = Potential(mixture, (x, weights))
    assert potential.enumerated == ("c",) and potential.dim == 4
    assert potential.discrete_blocks == () and potential.discrete_mask is None
    q = torch.randn(3, 4)
    energy, grad = potential.value_and_grad(q)
    expected = -mixture_log_joint(q, x, weights)
    assert_close(energy, expected, atol=1e-10)
    q_ = q.clone().requires_grad_(True)
    (hand,) = torch.autograd.grad(-mixture_log_joint(q_, x, weights).sum(), q_)
    assert_close(grad, hand, atol=1e-10)
    # planted control: the label held at 0 instead of summed out is far off
    assert (energy + mixture_log_joint(q, x, weights, summed=False)).abs().min() > 0.1


def test_marked_sequential_or_large_discrete_latents_are_sampled():
    x = torch.tensor([-1.0, 0.5, 2.0])

    def model(x, mark, num_classes):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            c = pyro.sample("c", dist.Categorical(torch.ones(num_classes) / num_classes),
                            infer={"enumerate": mark} if mark else {})
            pyro.sample("x", dist.Normal(z + c, 1.0), obs=x)

    for mark, num_classes in (("sequential", 3), (None, 300)):
        potential = Potential(model, (x, mark, num_classes))
        assert potential.enumerated == ()
        assert potential.discrete_blocks == (
            DiscreteBlock("c", 3, 3, (3,), 1, 0.0, num_classes - 1.0, "categorical"),)
        q = potential.sample_prior(4)
        c = potential.unpack(q)["c"]
        assert c.dtype == torch.long and c.shape == (4, 3)
        assert_close(potential.pack(potential.unpack(q)), q, atol=0.0)
        z = q[:, :3]
        expected = dist.Normal(0.0, 1.0).log_prob(z) \
            + dist.Normal(z + c, 1.0).log_prob(x) - math.log(num_classes)
        assert_close(potential(q), -expected.sum(-1), atol=1e-10)


def test_a_sampled_one_hot_latent_is_stored_by_its_index():
    x = torch.tensor([-1.0, 0.5, 2.0])

    def model(x):
        with pyro.plate("data", len(x)):
            c = pyro.sample("c", dist.OneHotCategorical(torch.tensor([0.2, 0.3, 0.5])),
                            infer={"enumerate": "sequential"})
            pyro.sample("x", dist.Normal(c @ torch.tensor([-1.0, 0.0, 1.0]), 1.0), obs=x)

    potential = Potential(model, (x,))
    assert potential.discrete_blocks == (
        DiscreteBlock("c", 0, 3, (3,), 1, 0.0, 2.0, "categorical"),)
    q = torch.tensor([[0.0, 2.0, 1.0]])
    one_hot = potential.unpack(q)["c"]
    assert torch.equal(one_hot, torch.eye(3)[[0, 2, 1]].unsqueeze(0))
    assert torch.equal(potential.pack({"c": one_hot}), q)
    expected = torch.tensor([0.2, 0.5, 0.3]).log() \
        + dist.Normal(torch.tensor([-1.0, 1.0, 0.0]), 1.0).log_prob(x)
    assert_close(potential(q), -expected.sum(-1, keepdim=True), atol=1e-10)


def test_binomial_latents_are_summed_out_when_small_and_sampled_otherwise():
    x = torch.tensor([1.0, 2.0, 0.0])

    def model(x, total_count):
        scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
        with pyro.plate("data", len(x)):
            k = pyro.sample("k", dist.Binomial(total_count, 0.3))
            pyro.sample("x", dist.Normal(k, scale), obs=x)

    assert Potential(model, (x, 10)).enumerated == ("k",)
    for total_count, upper in ((1000, 1000.0), (torch.tensor([3.0, 4.0, 9.0]), 9.0)):
        potential = Potential(model, (x, total_count))
        assert potential.enumerated == ()
        assert potential.discrete_blocks == (DiscreteBlock("k", 1, 3, (3,), 1, 0.0, upper,
                                                           "count"),)


def test_discrete_sites_that_can_be_neither_summed_nor_sampled_are_refused_with_advice():
    def multinomial():
        pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("m", dist.Multinomial(5, torch.ones(3) / 3))

    def marked_poisson():
        pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("n", dist.Poisson(3.0), infer={"enumerate": "parallel"})

    with pytest.raises(ValueError, match="'m'.*chain of Binomials"):
        Potential(multinomial)
    with pytest.raises(ValueError, match="'n'.*remove the mark"):
        Potential(marked_poisson)


def test_a_latent_used_outside_its_plate_is_sampled_not_summed_out():
    # Pyro's tensor variable elimination cannot sum c out: "total" lies outside c's plate
    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(x)):
            c = pyro.sample("c", dist.Bernoulli(0.3))
            pyro.sample("x", dist.Normal(mu + c, 1.0), obs=x)
        pyro.sample("total", dist.Poisson(c.sum() + 1.0), obs=torch.tensor(2.0))

    potential = Potential(model, (torch.tensor([0.0, 1.0, 2.0]),))
    assert potential.enumerated == ()
    assert potential.discrete_blocks == (DiscreteBlock("c", 1, 3, (), 3, 0.0, 1.0, "binary"),)


# ---------------------------------------------------------------- discrete latents, sampled
COUNTS = torch.tensor([1.0, 4.0, 0.0, 2.0])
DETECTION = 0.6


def n_mixture(y, total=None):
    """An N-mixture abundance model: a latent Poisson count per site, binomial detections;
    with ``total``, an observed total over the counts (a site outside the plate)."""
    rate = pyro.sample("rate", dist.Gamma(2.0, 0.5))
    with pyro.plate("sites", len(y)):
        n = pyro.sample("n", dist.Poisson(rate))
        pyro.sample("y", dist.Binomial(n, DETECTION), obs=y)
    if total is not None:
        pyro.sample("total", dist.Poisson(n.sum() + 1.0), obs=total)


def n_mixture_log_joint(q, y=COUNTS):
    """The N-mixture log joint by hand, per chain and site, with the log-transform's
    Jacobian, at positions ``(C, 1 + S)``."""
    log_rate, n = q[:, :1], q[:, 1:]
    rate = log_rate.exp()
    per_site = dist.Poisson(rate).log_prob(n) + dist.Binomial(n, DETECTION).log_prob(y)
    return dist.Gamma(2.0, 0.5).log_prob(rate[:, 0]) + log_rate[:, 0], per_site


def counts_at_least(y, num_chains):
    return y + torch.randint(0, 5, (num_chains, len(y))).double()


def test_latent_counts_get_exact_integer_coordinates():
    potential = Potential(n_mixture, (COUNTS,))
    assert potential.enumerated == () and potential.dim == 5
    assert potential.discrete_blocks == (
        DiscreteBlock("n", 1, 4, (4,), 1, 0.0, math.inf, "count"),)
    assert potential.discrete_mask.tolist() == [False, True, True, True, True]
    assert [site.discrete for site in potential.sites] == [False, True]
    n = torch.tensor([[0.0, 7.0, 2.0**40, 123456789.0]])
    values = {"rate": torch.tensor([[0.5]]), "n": n}
    q = potential.pack(values)
    assert torch.equal(q[:, 1:], n) and torch.equal(potential.unpack(q)["n"], n)
    prior = potential.sample_prior(64)[:, 1:]
    assert (prior == prior.round()).all() and (prior >= 0).all() and prior.std() > 0


def test_energy_with_latent_counts_by_hand_and_zero_gradient_at_counts():
    potential = Potential(n_mixture, (COUNTS,))
    q = torch.cat([torch.randn(3, 1), counts_at_least(COUNTS, 3)], -1)
    energy, grad = potential.value_and_grad(q)
    global_part, per_site = n_mixture_log_joint(q)
    assert_close(energy, -(global_part + per_site.sum(-1)), atol=1e-10)
    assert (grad[:, 1:] == 0).all()
    q_ = q.clone().requires_grad_(True)
    global_part, per_site = n_mixture_log_joint(q_)
    (hand,) = torch.autograd.grad(-(global_part + per_site.sum(-1)).sum(), q_)
    assert_close(grad[:, 0], hand[:, 0], atol=1e-10)


def test_block_energy_splits_the_energy_change_per_site():
    potential = Potential(n_mixture, (COUNTS,))
    (block,) = potential.discrete_blocks
    old = torch.cat([torch.randn(3, 1), counts_at_least(COUNTS, 3)], -1)
    new = old.clone()
    new[:, 1:] = counts_at_least(COUNTS, 3)
    change = potential.block_energy(new, block) - potential.block_energy(old, block)
    assert change.shape == (3, 4)
    assert_close(change.sum(-1), potential(new) - potential(old), atol=1e-10)
    # each element is the hand-written per-site term
    assert_close(potential.block_energy(old, block), -n_mixture_log_joint(old)[1], atol=1e-10)
    # moving site 0 alone changes entry 0 alone
    one = old.clone()
    one[:, 1] += 1.0
    moved = potential.block_energy(one, block) - potential.block_energy(old, block)
    assert (moved[:, 0] != 0).all() and (moved[:, 1:] == 0).all()
    # differentiable at the counts, as Gibbs-with-gradients needs
    q = old.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(potential.block_energy(q, block).sum(), q)
    q_ = old.clone().requires_grad_(True)
    (hand,) = torch.autograd.grad(-n_mixture_log_joint(q_)[1].sum(), q_)
    assert_close(grad, hand, atol=1e-10)


@pytest.mark.parametrize("buggy", [False, True], ids=["tempered", "control-untempered"])
def test_block_energy_of_a_tempered_view_splits_its_energy_change(buggy):
    """The discrete steps on a tempered target (AIS, parallel tempering) see the tempered
    conditional: the block energies' change sums to the tempered energy's change. Control:
    the untempered block energies (the bug this test was written for) do not."""
    beta = torch.tensor([0.0, 0.3, 1.0])
    tempered = Potential(n_mixture, (COUNTS,)).tempered(beta)
    (block,) = tempered.discrete_blocks
    old = torch.cat([torch.randn(3, 1), counts_at_least(COUNTS, 3)], -1)
    new = old.clone()
    new[:, 1:] = counts_at_least(COUNTS, 3)
    source = Potential(n_mixture, (COUNTS,)) if buggy else tempered
    change = source.block_energy(new, block) - source.block_energy(old, block)
    agrees = torch.allclose(change.sum(-1), tempered(new) - tempered(old), atol=1e-10)
    assert agrees != buggy


def test_block_energy_under_a_subsampled_plate_is_per_datum_of_the_batch():
    y = torch.tensor([1.0, 4.0, 0.0, 2.0, 3.0, 1.0])

    def model(y, subsample_size):
        rate = pyro.sample("rate", dist.Gamma(2.0, 0.5))
        with pyro.plate("sites", len(y), subsample_size=subsample_size) as index:
            n = pyro.sample("n", dist.Poisson(rate))
            pyro.sample("y", dist.Binomial(n, DETECTION), obs=y[index])

    potential = Potential(model, (y, 3))
    (block,) = potential.discrete_blocks
    assert block.batch_shape == (3,)
    q = torch.cat([torch.randn(2, 1), counts_at_least(y[potential.subsample_indices["sites"]],
                                                      2)], -1)
    # no N/B factor, as in the energy: each datum's count targets its own posterior
    terms = -n_mixture_log_joint(q, y[potential.subsample_indices["sites"]])[1]
    assert_close(potential.block_energy(q, block), terms, atol=1e-10)


def test_counts_used_outside_their_plate_form_one_joint_block():
    total = torch.tensor(9.0)
    potential = Potential(n_mixture, (COUNTS, total))
    (block,) = potential.discrete_blocks
    assert block.batch_shape == () and block.event_numel == 4
    old = torch.cat([torch.randn(2, 1), counts_at_least(COUNTS, 2)], -1)
    new = old.clone()
    new[:, 1:] = counts_at_least(COUNTS, 2)
    change = potential.block_energy(new, block) - potential.block_energy(old, block)
    assert change.shape == (2,)
    assert_close(change, potential(new) - potential(old), atol=1e-10)
    # planted control: the per-site terms alone miss the total's change
    per_site = -n_mixture_log_joint(new)[1] + n_mixture_log_joint(old)[1]
    assert (per_site.sum(-1) - change).abs().min() > 1e-3


def test_counts_mixed_across_their_plate_form_one_joint_block():
    # every site stays inside the plate, but y_i depends on n_(i-1): the perturbation check
    def model(y):
        rate = pyro.sample("rate", dist.Gamma(2.0, 0.5))
        with pyro.plate("sites", len(y)):
            n = pyro.sample("n", dist.Poisson(rate))
            pyro.sample("y", dist.Poisson(n.roll(1, -1) + 0.5), obs=y)

    (block,) = Potential(model, (COUNTS,)).discrete_blocks
    assert block.batch_shape == ()


# ---------------------------------------------------------------- the observed sites as target
def test_rbm_observed_sites_as_target_have_the_free_energy():
    rbm = lv.models.RBM(num_visible=5, num_hidden=3)
    data = rbm.simulate(4)
    potential = Potential(rbm.model, (data,), uncondition=True)
    assert potential.discrete_blocks == (DiscreteBlock("v", 0, 20, (4,), 5, 0.0, 1.0, "binary"),)
    assert potential.sites[0].was_observed
    start = potential.initial_position(3)
    assert torch.equal(start, data.reshape(1, -1).expand(3, -1))
    v = torch.randint(0, 2, (6, 20)).double()
    free_energy = rbm.free_energy(v.reshape(6, 4, 5))
    assert_close(potential(v), free_energy.sum(-1), atol=1e-10)
    assert_close(potential.block_energy(v, potential.discrete_blocks[0]), free_energy,
                 atol=1e-10)
    # its gradient at the visible units, as Gibbs-with-gradients uses it: dF/dv
    p = rbm.params()
    q = v.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(potential.block_energy(q, potential.discrete_blocks[0]).sum(),
                                  q)
    hand = -p["visible_bias"] - torch.sigmoid(v.reshape(6, 4, 5) @ p["weights"]
                                              + p["hidden_bias"]) @ p["weights"].T
    assert_close(grad, hand.reshape(6, 20), atol=1e-10)
    with pytest.raises(ValueError, match="initial_position"):
        potential.sample_prior(3)


def test_hidden_units_written_out_are_summed_out_of_the_negative_phase():
    # the RBM as a user writes it with its hidden units: unmarked Bernoulli sites in a plate
    rbm = lv.models.RBM(num_visible=4, num_hidden=3)
    p = {name: value.detach() for name, value in rbm.params().items()}
    data = rbm.simulate(5)
    potential = Potential(_hidden_units_model(p), (data,), uncondition=True)
    assert potential.enumerated == ("h",) and potential.dim == 20
    (block,) = potential.discrete_blocks
    assert block.batch_shape == ()  # a summed-out site: one joint block, the whole energy
    v = torch.randint(0, 2, (3, 20)).double()
    # sum_h 2^-3 exp(...) = 2^-3 exp(-F(v)) per datum
    expected = rbm.free_energy(v.reshape(3, 5, 4), p).sum(-1) + 15 * math.log(2.0)
    assert_close(potential(v), expected, atol=1e-10)
    assert_close(potential.block_energy(v, block), expected, atol=1e-10)
    assert torch.equal(potential.initial_position(2)[0], data.reshape(-1))


def test_improper_uniform_observed_site_as_target_with_a_factor():
    precision = torch.tensor([[2.0, 0.5], [0.5, 1.0]])
    data = torch.randn(3, 2)

    def model(data):
        with pyro.plate("data", len(data)):
            x = pyro.sample("x", dist.ImproperUniform(constraints.real, (), (2,)), obs=data)
            pyro.factor("quadratic", -0.5 * ((x @ precision) * x).sum(-1))

    potential = Potential(model, (data,), uncondition=True)
    assert potential.dim == 6 and potential.discrete_mask is None
    assert torch.equal(potential.initial_position(2), data.reshape(1, -1).expand(2, -1))
    q = torch.randn(4, 6)
    x = q.reshape(4, 3, 2)
    energy, grad = potential.value_and_grad(q)
    assert_close(energy, 0.5 * ((x @ precision) * x).sum((-1, -2)), atol=1e-10)
    assert_close(grad, (x @ precision).reshape(4, 6), atol=1e-10)
    with pytest.raises(ValueError, match="'x'.*initial_position"):
        potential.sample_prior(2)
    # planted control: without uncondition the data are fixed and nothing is left to sample
    with pytest.raises(ValueError, match="no latent sites"):
        Potential(model, (data,))


def test_observed_sites_as_target_beside_latents():
    model = lv.models.LinearGaussian(dim=1)
    data = model.simulate(3)
    potential = Potential(model, (data,), uncondition=True)
    assert [(s.name, s.was_observed) for s in potential.sites] == [("z", False), ("x", True)]
    q = potential.sample_prior(5)
    assert not torch.equal(q[:, 3:], data.reshape(1, -1).expand(5, -1))
    p = model.params()
    z, x = q[:, :3], q[:, 3:]
    expected = dist.Normal(p["w"], 1.0).log_prob(z) + dist.Normal(z, p["sigma"]).log_prob(x)
    assert_close(potential(q), -expected.sum(-1), atol=1e-10)
    assert torch.equal(potential.initial_position(5)[:, 3:], data.reshape(1, -1).expand(5, -1))


def _hidden_units_model(p):
    """The RBM with its hidden units written out (summed out by the potential)."""
    def model(data):
        cube = dist.ImproperUniform(constraints.boolean, (), (4,))
        with pyro.plate("data", len(data), dim=-2):
            v = pyro.sample("v", cube, obs=data.unsqueeze(-2))
            pyro.factor("visible", v @ p["visible_bias"])
            with pyro.plate("hidden", 3, dim=-1):
                h = pyro.sample("h", dist.Bernoulli(0.5))
                pyro.factor("coupling", h * ((v @ p["weights"]).squeeze(-2) + p["hidden_bias"]))
    return model


@pytest.mark.parametrize("kind", ["rbm", "summed_out", "vmap", "continuous"])
def test_log_joint_at_data_is_the_data_row_then_the_chains_from_one_run(kind):
    torch.manual_seed(0)
    rbm = lv.models.RBM(num_visible=4, num_hidden=3)
    data, other = rbm.simulate(5), rbm.simulate(5)
    model = {"rbm": rbm.model, "vmap": rbm.model,
             "summed_out": _hidden_units_model({k: v.detach() for k, v in rbm.params().items()}),
             "continuous": gaussian_energy_model}[kind]
    if kind == "continuous":
        data, other = torch.randn(5, 2), torch.randn(5, 2)
    potential = Potential(model, (data,), uncondition=True,
                          vectorization="vmap" if kind == "vmap" else None)
    q = potential.initial_position(3) if kind == "continuous" else \
        torch.randint(0, 2, (3, potential.dim)).double()
    q = q + torch.randn_like(q) if kind == "continuous" else q
    expected = potential.log_joint(torch.cat([potential.initial_position(1), q]))
    assert_close(potential.log_joint(q, at_data=True), expected, atol=1e-10, rtol=0)
    # planted control: another batch's data in row 0 is told apart
    stale = Potential(model, (other,), uncondition=True).initial_position(1)
    wrong = potential.log_joint(torch.cat([stale, q]))
    assert (wrong[0] - expected[0]).abs() > 1e-3


def test_log_joint_at_data_needs_the_observed_sites_as_target():
    model = lv.models.LinearGaussian(dim=1)
    potential = Potential(model, (model.simulate(3),))
    with pytest.raises(ValueError, match="uncondition=True"):
        potential.log_joint(potential.sample_prior(2), at_data=True)


def gaussian_energy_model(data):
    loc = pyro.param("loc", torch.tensor([0.5, -0.5]))
    with pyro.plate("data", data.shape[0]):
        x = pyro.sample("x", dist.ImproperUniform(constraints.real, (), (2,)), obs=data)
        pyro.factor("energy", -((x - loc) ** 2).sum(-1) / 2)


def test_one_chain_of_a_model_with_enumerated_sites_equals_the_first_of_two():
    """Packing drops a size-1 chain plate, so the contraction keeps no plate (it raised a
    KeyError deep inside Pyro's contraction before)."""
    def mix(data):
        loc = pyro.param("loc", torch.tensor([-1.0, 2.0]))
        shift = pyro.sample("shift", pyro.distributions.Normal(0.0, 1.0))
        with pyro.plate("data", data.shape[0]):
            k = pyro.sample("k", pyro.distributions.Categorical(torch.tensor([0.3, 0.7])),
                            infer={"enumerate": "parallel"})
            pyro.sample("x", pyro.distributions.Normal(loc[k] + shift, 1.0), obs=data)

    potential = Potential(mix, (torch.randn(6),))
    q = potential.sample_prior(2)
    assert potential.enumerated == ("k",)
    assert torch.allclose(potential(q[:1]), potential(q)[:1], rtol=1e-12, atol=0)
    assert torch.allclose(potential.log_joint(q[1:]), potential.log_joint(q)[1:], rtol=1e-12,
                          atol=0)
    gradient = lv.MCMCGradient(warmup_steps=5)  # the defaults: one chain
    assert math.isfinite(gradient.loss_and_grads(mix, lv.empty_guide, torch.randn(6)))


def test_initial_position_of_latent_sites_is_in_the_support():
    """Without uncondition, initial_position is sample_prior (as documented): prior draws of
    a count below an observed binomial total were 15 starts of 32 at energy +inf, and a
    sampler started there kept 5 chains at impossible states."""
    def counts(y):
        u = pyro.sample("u", dist.Normal(1.5, 0.5))
        n = pyro.sample("n", dist.Poisson(u.exp()))
        pyro.sample("y", dist.Binomial(n, 0.5), obs=y)

    potential = Potential(counts, (torch.tensor(4.0),))
    pyro.set_rng_seed(0)
    starts = potential.initial_position(32)
    assert torch.isfinite(potential(starts)).all()
