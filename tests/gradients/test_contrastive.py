"""ContrastiveDivergence against the exact log-likelihood gradient of models with a known
partition function: a small RBM (exact log Z by enumeration) and a Gaussian energy model."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.distributions import constraints

import pyro_lvmle as lv
from pyro_lvmle.samplers import BlockGibbs


def _rbm_setup(num_data=30):
    torch.manual_seed(0)
    truth = lv.models.RBM(4, 3, init_params={"weights": 2 * torch.randn(4, 3),
                                             "visible_bias": torch.randn(4)})
    data = truth.simulate(num_data)
    rbm = lv.models.RBM(4, 3, init_params={"weights": torch.randn(4, 3)})
    rbm.model(data)  # the parameters enter Pyro's param store
    return rbm, data


def _store_grad(loss_value):
    """The gradient of a scalar with respect to every parameter in the store, flattened."""
    params = dict(pyro.get_param_store().named_parameters())
    names = sorted(params)
    grads = torch.autograd.grad(loss_value, [params[n] for n in names], allow_unused=True)
    return torch.cat([(torch.zeros_like(params[n]) if g is None else g).flatten()
                      for n, g in zip(names, grads, strict=True)])


def _exact_rbm_grad(rbm, data):
    return _store_grad(-rbm.log_marginal(data))  # the gradient of minus the log-likelihood


def _cd_draws(loss, model, data, num_draws, **kwargs):
    return torch.stack([_store_grad(loss.differentiable_loss(model, None, data, **kwargs))
                        for _ in range(num_draws)])


def _z_scores(draws, exact):
    """|mean - exact| / standard error, per coordinate, for independent draws."""
    se = draws.std(0) / math.sqrt(draws.shape[0])
    return ((draws.mean(0) - exact) / se.clamp(min=1e-12)).abs()


def test_long_chains_match_exact_gradient_and_cd1_bias_shows():
    rbm, data = _rbm_setup()
    exact = _exact_rbm_grad(rbm, data)
    sampler = BlockGibbs(rbm.hidden_conditional, rbm.visible_conditional)
    long = lv.ContrastiveDivergence(num_steps=30, num_chains=20, sampler=sampler)
    z_long = _z_scores(_cd_draws(long, rbm.model, data, 60), exact)
    assert z_long.max() < 4, z_long
    short = lv.ContrastiveDivergence(num_steps=1, num_chains=20, sampler=sampler)
    z_short = _z_scores(_cd_draws(short, rbm.model, data, 60), exact)
    assert z_short.max() > 10, z_short  # CD-1's bias (Carreira-Perpinan & Hinton 2005)


def test_planted_control_without_negative_phase_fails():
    rbm, data = _rbm_setup()
    exact = _exact_rbm_grad(rbm, data)
    loss = lv.ContrastiveDivergence(num_steps=30, num_chains=20, sampler=BlockGibbs(
        rbm.hidden_conditional, rbm.visible_conditional))

    def positive_only():
        potential, positions, _ = loss.draw(rbm.model, (data,))
        return -potential.log_joint(positions[:1])[0]

    draws = torch.stack([_store_grad(positive_only()) for _ in range(20)])
    assert _z_scores(draws, exact).max() > 100


@pytest.mark.parametrize("jit_compile", [False, True], ids=["eager", "jit"])
def test_persistent_chains_at_fixed_parameters_match_exact_gradient(jit_compile):
    rbm, data = _rbm_setup()
    exact = _exact_rbm_grad(rbm, data)
    loss = lv.ContrastiveDivergence(num_steps=1, persistent=True, num_chains=20,
                                    sampler=BlockGibbs(rbm.hidden_conditional,
                                                       rbm.visible_conditional),
                                    jit_compile=jit_compile)
    _cd_draws(loss, rbm.model, data, 20)  # burn-in
    draws = _cd_draws(loss, rbm.model, data, 200)
    batches = draws.reshape(10, 20, -1).mean(1)  # batch means: the chains are correlated
    assert _z_scores(batches, exact).max() < 4
    assert loss.chains.position["v"].shape == (20, 30, 4)
    assert bool(loss._compiled) == jit_compile


def test_planted_control_compiled_chains_not_kept_fail():
    """The compiled step with its chains' new states dropped (every call restarts from the
    same states): the exact-gradient test above detects it."""
    rbm, data = _rbm_setup()
    exact = _exact_rbm_grad(rbm, data)
    loss = lv.ContrastiveDivergence(num_steps=1, persistent=True, num_chains=20,
                                    sampler=BlockGibbs(rbm.hidden_conditional,
                                                       rbm.visible_conditional),
                                    jit_compile=True)
    loss.differentiable_loss(rbm.model, None, data)  # chains at the data, then frozen
    loss.chains.save = lambda potential, state: None
    draws = _cd_draws(loss, rbm.model, data, 200)
    assert _z_scores(draws.reshape(10, 20, -1).mean(1), exact).max() > 4
    assert loss._compiled  # the compiled step ran


def _same_step(loss, model, data, chains):
    """The surrogate's gradient and the new chains of one call from given chains and seed."""
    loss.chains.position["v"] = chains.clone()
    pyro.set_rng_seed(7)
    return _store_grad(loss.differentiable_loss(model, None, data)), \
        loss.chains.position["v"].clone()


def test_one_model_run_and_compiled_paths_equal_the_two_run_path():
    """Warm PCD reads the data inside the one run of the model for both phases, and
    jit_compile traces that step: both give the gradient and the chains of the eager
    two-run path (the data's position by its own run, then the log joint at data and
    chains) from the same chains and seed."""
    rbm, data = _rbm_setup()
    chains = rbm.simulate(4 * 30).reshape(4, 30, 4)
    sampler = BlockGibbs(rbm.hidden_conditional, rbm.visible_conditional)
    results = {}
    for name in ("two_runs", "one_run", "jit"):
        loss = lv.ContrastiveDivergence(persistent=True, num_chains=4, sampler=sampler,
                                        jit_compile=name == "jit")
        for _ in range(3):  # warm, traced, checked against an eager run
            loss.differentiable_loss(rbm.model, None, data)
        if name == "two_runs":
            loss.chains.position["v"] = chains.clone()
            pyro.set_rng_seed(7)
            potential, positions, _ = loss.draw(rbm.model, (data,))
            log_density = potential.log_joint(positions)
            grad = _store_grad(log_density[1:].mean() - log_density[0])
            results[name] = grad, loss.chains.position["v"].clone()
        else:
            results[name] = _same_step(loss, rbm.model, data, chains)
    reference, reference_chains = results["two_runs"]
    for name in ("one_run", "jit"):
        grad, new_chains = results[name]
        assert (grad - reference).abs().max() < 1e-10, name
        assert torch.equal(new_chains, reference_chains), name
    assert not torch.equal(reference_chains, chains)
    # planted control: the same comparison sees a step from other chains
    other, _ = _same_step(loss, rbm.model, data, 1 - chains)
    assert (other - reference).abs().max() > 1e-3


# its factor reads the data argument, not the site's value: the chains do not reach it
@pytest.mark.filterwarnings("ignore:ContrastiveDivergence. the pyro.factor sites")
def test_compiled_step_that_disagrees_with_the_model_is_refused():
    """A model branching in Python on its data: the trace fixes the branch of the batch it
    saw, and the check of the next call against an eager run catches it."""
    rbm, data = _rbm_setup()

    def branching(data):
        rbm.model(data)
        pyro.factor("branch", torch.tensor(1.0 if float(data.sum()) > 60 else 0.0) * data.sum())

    loss = lv.ContrastiveDivergence(persistent=True, jit_compile=True, sampler=BlockGibbs(
        rbm.hidden_conditional, rbm.visible_conditional))
    high, low = data.clone(), data.clone()
    high[:, 0], low[:, 0] = 1.0, 0.0
    assert float(high.sum()) > 60 > float(low.sum())
    for _ in range(2):
        loss.differentiable_loss(branching, None, high)
    with pytest.raises(ValueError, match="branch on tensor values"):
        loss.differentiable_loss(branching, None, low)


@pytest.mark.parametrize("name,num_steps", [("gibbs", 4), ("gwg", 10)])
def test_generic_discrete_samplers_match_exact_gradient(name, num_steps):
    rbm, data = _rbm_setup(num_data=10)
    exact = _exact_rbm_grad(rbm, data)
    loss = lv.ContrastiveDivergence(num_steps=num_steps, num_chains=30, sampler=name)
    assert _z_scores(_cd_draws(loss, rbm.model, data, 20), exact).max() < 4


def test_subsampled_plate_gives_the_full_data_gradient():
    rbm, data = _rbm_setup()
    exact = _exact_rbm_grad(rbm, data)
    loss = lv.ContrastiveDivergence(num_steps=20, num_chains=5, sampler=BlockGibbs(
        rbm.hidden_conditional, rbm.visible_conditional))
    draws = _cd_draws(loss, rbm.model, data, 100, subsample_size=10)
    assert _z_scores(draws, exact).max() < 4


def gaussian_energy(data):
    """x ~ ImproperUniform on R^2 with log p~(x) = -|x - mu|^2 / (2 s^2): Z = 2 pi s^2."""
    mu = pyro.param("mu", torch.tensor([0.5, -0.5]))
    s = pyro.param("s", torch.tensor(0.8), constraint=constraints.positive)
    with pyro.plate("data", data.shape[0]):
        x = pyro.sample("x", dist.ImproperUniform(constraints.real, (), (2,)), obs=data)
        pyro.factor("energy", -((x - mu) ** 2).sum(-1) / (2 * s**2))


def test_langevin_negative_phase_on_continuous_sites_matches_exact_gradient():
    torch.manual_seed(0)
    data = torch.randn(20, 2) * 1.3 + 1.0
    gaussian_energy(data)

    def minus_log_likelihood():
        mu, s = pyro.param("mu"), pyro.param("s")
        return -dist.Normal(mu, s).log_prob(data).sum()

    exact = _store_grad(minus_log_likelihood())
    loss = lv.ContrastiveDivergence(num_steps=1, persistent=True, num_chains=10,
                                    sampler="mala", step_size=0.5)
    _cd_draws(loss, gaussian_energy, data, 50)  # burn-in and step-size tracking
    draws = _cd_draws(loss, gaussian_energy, data, 400)
    batches = draws.reshape(20, 20, -1).mean(1)
    assert _z_scores(batches, exact).max() < 4
    assert loss.diagnostics["accept_prob"] > 0.3


def test_a_factor_not_depending_on_the_observed_sites_is_named():
    """A penalty written as ``pyro.factor`` cancels with log Z: CD's gradient was the
    unpenalized one, silently, where Pyro's ELBOs apply the penalty (outside-in review)."""
    def penalized(data):
        pyro.factor("penalty", -5.0 * (pyro.param("mu", torch.tensor([0.5, -0.5])) ** 2).sum())
        gaussian_energy(data)

    data = torch.randn(8, 2)
    loss = lv.ContrastiveDivergence(num_steps=1, num_chains=4, sampler="mala")
    with pytest.warns(UserWarning, match=r"\[.penalty.\] do not depend.*weight_decay"):
        loss.differentiable_loss(penalized, lv.empty_guide, data)
    loss.differentiable_loss(penalized, lv.empty_guide, data)  # once per loss
    again = lv.ContrastiveDivergence(num_steps=1, num_chains=4, sampler="mala")
    again.differentiable_loss(gaussian_energy, lv.empty_guide, data)  # no warning (errors)

    def of_the_argument(data):  # the energy of `data`, not of the value the site returns
        mu = pyro.param("mu", torch.tensor([0.5, -0.5]))
        with pyro.plate("data", data.shape[0]):
            pyro.sample("x", dist.ImproperUniform(constraints.real, (), (2,)), obs=data)
            pyro.factor("energy", -((data - mu) ** 2).sum(-1))

    loss = lv.ContrastiveDivergence(num_steps=1, num_chains=4, sampler="mala")
    with pytest.warns(UserWarning, match=r"\['energy'\] do not depend"):
        loss.differentiable_loss(of_the_argument, lv.empty_guide, data)


def test_loss_values_agree_and_say_what_they_are():
    rbm, data = _rbm_setup()
    loss = lv.ContrastiveDivergence(num_steps=1, sampler=BlockGibbs(
        rbm.hidden_conditional, rbm.visible_conditional))
    values = []
    for method in ("loss", "differentiable_loss", "loss_and_grads"):
        pyro.set_rng_seed(3)
        value = getattr(loss, method)(rbm.model, lv.empty_guide, data)
        values.append(float(torch.as_tensor(value).detach()))
    assert values[0] == pytest.approx(values[1]) == pytest.approx(values[2])
    diag = loss.diagnostics
    assert values[0] == pytest.approx(float(diag["negative"] - diag["positive"]))
    assert "not a log-likelihood" in lv.ContrastiveDivergence.__doc__


def test_svi_step_and_state_dict_round_trip(tmp_path):
    rbm, data = _rbm_setup()
    loss = lv.ContrastiveDivergence(num_steps=2, persistent=True, num_chains=3, sampler=BlockGibbs(
        rbm.hidden_conditional, rbm.visible_conditional))
    svi = pyro.infer.SVI(rbm.model, lv.empty_guide, pyro.optim.SGD({"lr": 0.01}), loss)
    before = pyro.param("weights").detach().clone()
    svi.step(data)
    assert not torch.equal(before, pyro.param("weights"))
    torch.save(loss.state_dict(), tmp_path / "cd.pt")
    other = lv.ContrastiveDivergence(num_chains=3, persistent=True)
    other.load_state_dict(torch.load(tmp_path / "cd.pt", weights_only=True))
    assert torch.equal(other.chains.position["v"], loss.chains.position["v"])
    # the negative phase's chains are not a posterior's: was loaded without a word
    with pytest.raises(ValueError, match="saved by ContrastiveDivergence"):
        lv.MCMCGradient("hmc", num_chains=3).load_state_dict(
            torch.load(tmp_path / "cd.pt", weights_only=True))


@pytest.mark.parametrize("jit_compile", [False, True])
def test_a_run_resumed_from_its_state_continues_exactly(tmp_path, jit_compile):
    # compiled, the resumed loss traced its graph on its first step, which ran the step three
    # times on the random stream: every step after the resume differed
    rbm, data = _rbm_setup()

    def make():
        loss = lv.ContrastiveDivergence(1, persistent=True, num_chains=4, sampler=BlockGibbs(
            rbm.hidden_conditional, rbm.visible_conditional), jit_compile=jit_compile)
        return loss, pyro.infer.SVI(rbm.model, lv.empty_guide, pyro.optim.SGD({"lr": 0.1}),
                                    loss)

    def leaves():
        return {n: p.detach().clone() for n, p in pyro.get_param_store().named_parameters()}

    def set_leaves(values):
        with torch.no_grad():
            for name, leaf in pyro.get_param_store().named_parameters():
                leaf.copy_(values[name])

    start = leaves()
    pyro.set_rng_seed(0)
    loss, svi = make()
    uninterrupted = [svi.step(data) for _ in range(6)]
    set_leaves(start)
    pyro.set_rng_seed(0)
    loss, svi = make()
    first = [svi.step(data) for _ in range(3)]
    torch.save({"loss": loss.state_dict(), "params": leaves(), "rng": torch.get_rng_state()},
               tmp_path / "pcd.pt")
    saved = torch.load(tmp_path / "pcd.pt", weights_only=True)
    loss, svi = make()
    loss.load_state_dict(saved["loss"])
    set_leaves(saved["params"])
    torch.set_rng_state(saved["rng"])
    assert first + [svi.step(data) for _ in range(3)] == uninterrupted


def test_bad_input_is_refused_with_a_clear_message():
    with pytest.raises(ValueError, match="num_steps"):
        lv.ContrastiveDivergence(num_steps=0)
    with pytest.raises(ValueError, match="unknown kernel"):
        lv.ContrastiveDivergence(sampler="nope")
    with pytest.raises(ValueError, match="not a saved ContrastiveDivergence state"):
        lv.ContrastiveDivergence().load_state_dict({"x": 1})
    with pytest.raises(ValueError, match="jit_compile"):
        lv.ContrastiveDivergence(persistent=True, sampler="gibbs", jit_compile=True)
    with pytest.raises(ValueError, match="jit_compile"):
        lv.ContrastiveDivergence(sampler=BlockGibbs(print, print), jit_compile=True)

    def latent_model(data):  # a continuous latent: no positive phase without posterior draws
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        with pyro.plate("data", data.shape[0]):
            pyro.sample("x", dist.ImproperUniform(constraints.real, (), ()), obs=data)
            pyro.factor("f", -(data - z) ** 2)

    with pytest.raises(ValueError, match="latent sites"):
        lv.ContrastiveDivergence().loss(latent_model, None, torch.zeros(3))
    # data outside the observed site's support: the chains live on {0, 1}
    rbm, data = _rbm_setup()
    with pytest.raises(ValueError, match="'v': observed values lie outside its support"):
        lv.ContrastiveDivergence(sampler="gibbs").loss(rbm.model, None, 2 * data)


def test_what_users_write_wrong_is_named():
    """Found from outside: each of these was accepted silently, crashed with a KeyError, or
    gave advice that led back to the same error."""
    with pytest.raises(TypeError, match="persistent must be True or False, got 'no'"):
        lv.ContrastiveDivergence(persistent="no")  # was taken as True
    for sampler in ("nuts", pyro.infer.NUTS(gaussian_energy)):  # was a KeyError at step 1
        with pytest.raises(ValueError, match="latent sites.*'hmc', 'mala' or 'ula'"):
            lv.ContrastiveDivergence(sampler=sampler)
    with pytest.raises(ValueError, match="log_partition: Pyro's HMC and NUTS"):
        lv.log_partition(gaussian_energy, torch.zeros(1, 2), method="ais", sampler="nuts")
    data = torch.zeros(3, 2)

    def factor_only(data):  # no observed site: said "no latent sites to sample"
        pyro.factor("energy", -(data - pyro.param("mu", torch.zeros(2))).pow(2).sum())

    for run in (lambda: lv.ContrastiveDivergence().loss(factor_only, None, data),
                lambda: lv.log_partition(factor_only, data)):
        with pytest.raises(ValueError, match="no observed site for the chains"):
            run()

    rbm, binary = _rbm_setup()  # a parameter gone NaN: a distribution's message, no name
    pyro.get_param_store()["weights"] = torch.full((4, 3), math.nan)
    with pytest.raises(ValueError, match=r"parameters \['weights'\] are not finite"):
        lv.ContrastiveDivergence(sampler="gibbs").loss(rbm.model, None, binary)

    def hidden_as_event(data):  # the advice was "remove the mark", then "add the mark"
        w = pyro.param("w", torch.zeros(2, 2))
        with pyro.plate("data", data.shape[0]):
            v = pyro.sample("v", dist.ImproperUniform(constraints.boolean, (), (2,)), obs=data)
            h = pyro.sample("h", dist.Bernoulli(0.5 * torch.ones(2)).to_event(1),
                            infer={"enumerate": "parallel"})
            pyro.factor("coupling", ((v @ w) * h).sum(-1))

    with pytest.raises(ValueError, match=r"ContrastiveDivergence: .*'h'.*\.to_event\(\).*"
                                         r"pyro\.plate"):
        lv.ContrastiveDivergence().loss(hidden_as_event, None, data)


def test_a_poutine_scale_on_an_undirected_model_is_refused_and_a_subsampled_plate_is_not():
    """s log p(x) (a data weight: chains on p~) or p~(x)^s (tempered: chains on p~^s) give
    different gradients and log Z; the user says which."""
    rbm, data = _rbm_setup()
    for scale in (2.0, torch.full((len(data),), 0.5)):
        scaled = pyro.poutine.scale(rbm.model, scale=scale)
        with pytest.raises(ValueError, match=r"poutine.scale other than a subsampled"):
            lv.ContrastiveDivergence(sampler="gibbs").loss(scaled, None, data)
        with pytest.raises(ValueError, match=r"poutine.scale other than a subsampled"):
            lv.log_partition(scaled, data[:1])
    # a scale of one, and the plate's own N/B, are not a user's weight
    lv.ContrastiveDivergence(sampler="gibbs").loss(pyro.poutine.scale(rbm.model, scale=1.0),
                                                   None, data)
    lv.ContrastiveDivergence(sampler="gibbs").loss(rbm.model, None, data, subsample_size=5)


def _digits():
    load_digits = pytest.importorskip("sklearn.datasets").load_digits
    return torch.tensor(load_digits().data > 7, dtype=torch.get_default_dtype())


def train_digits_rbm(persistent, num_epochs=300, learning_rate=0.1, batch_size=100):
    """The 64 x 16 RBM on binarized digits by CD-1 or PCD-1 (batches of 100, SGD with a
    per-datum learning rate of 0.1): returns the model and the data."""
    data = _digits()
    rbm = lv.models.RBM(64, 16)
    loss = lv.ContrastiveDivergence(num_steps=1, persistent=persistent, sampler=BlockGibbs(
        rbm.hidden_conditional, rbm.visible_conditional))
    svi = pyro.infer.SVI(rbm.model, lv.empty_guide,
                         pyro.optim.SGD({"lr": learning_rate / batch_size}), loss)
    for _ in range(num_epochs):
        order = torch.randperm(data.shape[0])
        for start in range(0, data.shape[0] - batch_size + 1, batch_size):
            svi.step(data[order[start:start + batch_size]])
    return rbm, data


@pytest.mark.integration
@pytest.mark.parametrize("persistent", [False, True], ids=["cd1", "pcd1"])
def test_digits_rbm_reaches_the_issue_log_likelihood(persistent):
    rbm, data = train_digits_rbm(persistent)
    average = float(rbm.log_marginal(data).detach()) / data.shape[0]
    rates = data.mean(0)
    baseline = float(dist.Bernoulli(rates).log_prob(data).sum(-1).mean())
    assert baseline == pytest.approx(-25.1, abs=0.05)
    assert average > -18.3, average


class _PositiveOnly(lv.ContrastiveDivergence):
    """The planted control: the negative phase dropped (what an ELBO would do)."""

    def differentiable_loss(self, model, guide, *args, **kwargs):
        potential, positions, _ = self.draw(model, args, kwargs)
        return -potential.log_joint(positions[:1])[0]


@pytest.mark.integration
def test_pcd_with_langevin_recovers_a_2d_gaussian_mixture():
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).parents[2] / "examples" / "ebm_2d.py"
    spec = importlib.util.spec_from_file_location("ebm_2d", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    kl = example.train(num_steps=400)[-1][1]
    assert kl < 0.06, kl
    pyro.clear_param_store()
    control = example.train(num_steps=100, loss=_PositiveOnly(persistent=True))[-1][1]
    assert control > 0.3, control


def test_hidden_units_written_as_sites_are_summed_out():
    """The RBM with its hidden units as Bernoulli sites: Pyro enumerates them, and the CD
    gradient matches the exact one (the prior's 2^-H per datum does not depend on theta)."""
    torch.manual_seed(0)
    truth = lv.models.RBM(3, 2, init_params={"weights": 2 * torch.randn(3, 2)})
    data = truth.simulate(4)

    def model(data):
        w = pyro.param("weights", torch.randn(3, 2))
        b = pyro.param("visible_bias", torch.zeros(3))
        c = pyro.param("hidden_bias", torch.zeros(2))
        cube = dist.ImproperUniform(constraints.boolean, (), (3,))
        with pyro.plate("data", len(data), dim=-2):
            v = pyro.sample("v", cube, obs=data.unsqueeze(-2))
            pyro.factor("visible", v @ b)
            with pyro.plate("hidden", 2, dim=-1):
                h = pyro.sample("h", dist.Bernoulli(0.5))
                pyro.factor("coupling", h * ((v @ w).squeeze(-2) + c))

    model(data)
    exact = _store_grad(-lv.models.RBM(3, 2).log_marginal(data))

    def hidden(v):
        return dist.Bernoulli(logits=v @ pyro.param("weights") + pyro.param("hidden_bias"))

    def visible(h):
        return dist.Bernoulli(logits=h @ pyro.param("weights").T + pyro.param("visible_bias"))

    loss = lv.ContrastiveDivergence(num_steps=20, num_chains=20,
                                    sampler=BlockGibbs(hidden, visible))
    assert _z_scores(_cd_draws(loss, model, data, 30), exact).max() < 4
    assert loss.potential(model, (data,)).enumerated == ("h",)
    # one chain (the default): packing drops the chain plate's size-1 dimension
    one = lv.ContrastiveDivergence(num_steps=20, sampler=BlockGibbs(hidden, visible))
    assert torch.isfinite(_cd_draws(one, model, data, 2)).all()
