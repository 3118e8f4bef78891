"""Data-parallel fits: two gloo processes started by the test, against one process."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import SGD

import pyro_lvmle as lv
from pyro_lvmle.parallel import DataParallel, shard
from pyro_lvmle.traces.params import program_params
from tests.launch import launch, requires_distributed

pytestmark = requires_distributed

NUM_DATA = 12


# ---------------------------------------------------------------- a user's model
def data_set():
    return torch.linspace(-2.0, 3.0, NUM_DATA).unsqueeze(-1) + \
        torch.tensor([[0.5, -1.0]]) * torch.arange(NUM_DATA).remainder(3).unsqueeze(-1)


def model(x, idx, num_data):
    """z_n ~ N(w, 1), x_n ~ N(z_n, sigma): each rank's x is its shard, idx its global indices."""
    w = pyro.param("w", torch.zeros(2))
    sigma = pyro.param("sigma", torch.tensor(1.5), constraint=dist.constraints.positive)
    with pyro.plate("data", num_data, subsample=idx):
        z = pyro.sample("z", dist.Normal(w, 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z, sigma).to_event(1), obs=x)


def guide(x, idx, num_data):
    loc = pyro.param("loc", torch.zeros(num_data, 2))
    scale = pyro.param("scale", torch.tensor(0.8), constraint=dist.constraints.positive)
    with pyro.plate("data", num_data, subsample=idx):
        pyro.sample("z", dist.Normal(loc[idx], scale).to_event(1))


def empty_model(x, idx, num_data):
    """No latents: the loss is deterministic."""
    w = pyro.param("w", torch.zeros(2))
    with pyro.plate("data", num_data, subsample=idx):
        pyro.sample("x", dist.Normal(w, 1.5).to_event(1), obs=x)


def empty_guide(x, idx, num_data):
    pass


def local_model(x, idx, num_data):
    """The classic mistake: the plate sized by the shard, not the data set (no N/B scale)."""
    model(x, torch.arange(len(idx)), len(idx))


def local_guide(x, idx, num_data):
    loc = pyro.param("loc", torch.zeros(NUM_DATA, 2))
    scale = pyro.param("scale", torch.tensor(0.8), constraint=dist.constraints.positive)
    with pyro.plate("data", len(idx)):
        pyro.sample("z", dist.Normal(loc[idx], scale).to_event(1))


LOSSES = {
    "trace_elbo": lambda: Trace_ELBO(),
    "iwae": lambda: lv.TraceIWAE_ELBO(num_particles=4),
    "dreg": lambda: lv.TraceIWAE_ELBO(num_particles=4, estimator="dreg"),
    "stl": lambda: lv.TraceSTL_ELBO(num_particles=2),
    "renyi": lambda: lv.TraceRenyi_ELBO(alpha=0.5, num_particles=4),
    "tvo": lambda: lv.TraceTVO_ELBO(num_particles=4, num_betas=3),
}


def _grads(loss, model_fn, guide_fn, args, num_draws):
    """``num_draws`` gradient draws of every parameter, flattened: ``(num_draws, P)``."""
    rows = []
    for _ in range(num_draws):
        with pyro.poutine.trace(param_only=True) as capture:
            loss.loss_and_grads(model_fn, guide_fn, *args)
        params = {name: site["value"].unconstrained()
                  for name, site in capture.trace.nodes.items()}
        rows.append(torch.cat([params[n].grad.reshape(-1) for n in sorted(params)]))
        for leaf in params.values():
            leaf.grad = None
    return torch.stack(rows)


def _gradient_draws(rank, world_size, names, num_draws, model_fn, guide_fn):
    x = data_set()
    idx = shard(NUM_DATA)
    out = {}
    for name in names:
        pyro.clear_param_store()
        out[name] = _grads(DataParallel(LOSSES[name]()), model_fn, guide_fn,
                           (x[idx], idx, NUM_DATA), num_draws)
    return out


def _single_process_draws(names, num_draws):
    x = data_set()
    idx = torch.arange(NUM_DATA)
    pyro.set_rng_seed(0)
    out = {}
    for name in names:
        pyro.clear_param_store()
        out[name] = _grads(LOSSES[name](), model, guide, (x, idx, NUM_DATA), num_draws)
    return out


def _agree(a, b, num_se=4.0):
    """Whether two sets of independent gradient draws have the same mean, within 4 SE."""
    se = (a.var(0) / a.shape[0] + b.var(0) / b.shape[0]).sqrt()
    return bool(((a.mean(0) - b.mean(0)).abs() <= num_se * se + 1e-12).all())


# ---------------------------------------------------------------- the tests
def test_shard_covers_the_data_once():
    pieces = [shard(10, rank=r, world_size=3) for r in range(3)]
    assert torch.cat(pieces).tolist() == list(range(10))
    with pytest.raises(ValueError, match="rank"):
        shard(10, rank=3, world_size=3)
    with pytest.raises(ValueError, match="init_process_group"):
        shard(10)
    with pytest.raises(TypeError, match="loss_and_grads"):
        DataParallel(object())


def test_deterministic_gradient_equals_the_single_process_one(tmp_path):
    results = launch(_gradient_draws, tmp_path, ["trace_elbo"], 1, empty_model, empty_guide)
    x = data_set()
    idx = torch.arange(NUM_DATA)
    reference = _grads(Trace_ELBO(), empty_model, empty_guide, (x, idx, NUM_DATA), 1)
    for result in results:
        assert torch.allclose(result["trace_elbo"], reference, atol=1e-10, rtol=0)


def _unequal_shards(rank, world_size, num_data):
    """The deterministic gradient on shards of unequal sizes, and this rank's own."""
    x = data_set()[:num_data]
    idx = shard(num_data)
    pyro.clear_param_store()
    own = _grads(Trace_ELBO(), empty_model, empty_guide, (x[idx], idx, num_data), 1)
    pyro.clear_param_store()
    mixed = _grads(DataParallel(Trace_ELBO()), empty_model, empty_guide,
                   (x[idx], idx, num_data), 1)
    return {"own": own, "mixed": mixed, "size": len(idx)}


def test_shards_of_unequal_sizes_give_the_full_data_gradient(tmp_path):
    """Five data on two ranks (3 and 2): an equal mean over ranks counted the smaller
    shard's data more (a fit of a mean moved from the MLE 4.0 to 5.0)."""
    num_data = NUM_DATA - 1 if NUM_DATA % 2 == 0 else NUM_DATA
    results = launch(_unequal_shards, tmp_path, num_data)
    assert sorted(r["size"] for r in results) == [num_data // 2, num_data // 2 + 1]
    x = data_set()[:num_data]
    reference = _grads(Trace_ELBO(), empty_model, empty_guide,
                       (x, torch.arange(num_data), num_data), 1)
    for result in results:
        assert torch.allclose(result["mixed"], reference, atol=1e-10, rtol=0)
    # control: the equal mean of the ranks' gradients is not the full-data gradient
    equal = sum(r["own"] for r in results) / len(results)
    assert (equal - reference).abs().max() > 0.01


def test_each_objective_gradient_matches_full_data_in_expectation(tmp_path):
    names = sorted(LOSSES)
    num_draws = 200
    results = launch(_gradient_draws, tmp_path, names, num_draws, model, guide)
    single = _single_process_draws(names, num_draws)
    for name in names:
        # every rank holds the same averaged gradient
        assert torch.equal(results[0][name], results[1][name]), name
        assert _agree(results[0][name], single[name]), name


def test_planted_control_shard_sized_plate_is_detected(tmp_path):
    """A plate sized by the shard loses the N/B scale: half the gradient, caught."""
    results = launch(_gradient_draws, tmp_path, ["trace_elbo"], 300, local_model, local_guide)
    single = _single_process_draws(["trace_elbo"], 300)
    assert not _agree(results[0]["trace_elbo"], single["trace_elbo"])


def _faulty_fit(rank, world_size, fail_at):
    x = data_set()
    idx = shard(NUM_DATA)

    def faulty(x, idx, num_data):
        if rank == 1 and step[0] == fail_at:
            raise ValueError("boom on purpose")
        model(x, idx, num_data)

    step = [0]
    svi = SVI(faulty, guide, SGD({"lr": 0.01}), loss=DataParallel(Trace_ELBO()))
    for step[0] in range(10):
        svi.step(x[idx], idx, NUM_DATA)
    return {"steps": step[0]}


def test_a_rank_that_raises_ends_every_rank_with_its_error(tmp_path):
    results = launch(_faulty_fit, tmp_path, 3)
    assert results[1]["error"].startswith("ValueError: boom on purpose")
    assert results[0]["error"].startswith("RankFailure: rank 1 raised ValueError: boom")


def _mcmc_fit(rank, world_size, num_steps, state_file, resume):
    x = data_set()
    idx = shard(NUM_DATA)
    loss = DataParallel(lv.MCMCGradient("hmc", num_samples=2, warmup_steps=20, num_chains=2))
    optim = pyro.optim.Adam({"lr": 0.05})
    svi = SVI(model, lv.empty_guide, optim, loss=loss)
    path = f"{state_file}.{rank}"
    if resume:  # a fresh process: create the parameters, then set them as saved
        state = torch.load(path, weights_only=True)
        program_params(model, x[idx], idx, NUM_DATA)
        with torch.no_grad():
            for name, leaf in pyro.get_param_store().named_parameters():
                leaf.copy_(state["params"][name])
        optim.set_state(state["optim"])
        loss.load_state_dict(state["loss"])
        torch.set_rng_state(state["rng"])
    losses = [svi.step(x[idx], idx, NUM_DATA) for _ in range(num_steps)]
    if not resume:
        params = {n: p.detach().clone() for n, p in pyro.get_param_store().named_parameters()}
        torch.save({"params": params, "optim": optim.get_state(),
                    "loss": loss.state_dict(), "rng": torch.get_rng_state()}, path)
        losses += [svi.step(x[idx], idx, NUM_DATA) for _ in range(num_steps)]
    return {"losses": torch.tensor(losses), "w": pyro.param("w").detach().clone()}


def test_mcmc_gradient_resumes_exactly_per_rank(tmp_path):
    state_file = str(tmp_path / "state")
    first = launch(_mcmc_fit, tmp_path, 5, state_file, False)
    second = launch(_mcmc_fit, tmp_path, 5, state_file, True)
    for before, after in zip(first, second, strict=True):
        assert torch.equal(before["losses"][5:], after["losses"])
        assert torch.equal(before["w"], after["w"])
    assert torch.equal(first[0]["w"], first[1]["w"])  # the ranks stay in step
    assert math.isfinite(float(first[0]["losses"][-1]))


# ---------------------------------------------------------------- reaching the MLE
def ppca_model(x, idx, num_data):
    """Probabilistic PCA as a user writes it (d = 6, q = 2), the plate over all data."""
    W = pyro.param("W", 0.1 * torch.ones(6, 2))
    mu = pyro.param("mu", torch.zeros(6))
    sigma = pyro.param("sigma", torch.tensor(1.0), constraint=dist.constraints.positive)
    with pyro.plate("data", num_data, subsample=idx):
        z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ W.T + mu, sigma).to_event(1), obs=x)


def _ppca_sgd(rank, world_size, num_steps, parallel):
    pyro.set_rng_seed(0)  # the same data set on every rank
    data = lv.models.PPCA(6, 2, prefix="truth_").simulate(200).detach()
    idx = shard(200)
    pyro.set_rng_seed(10 + rank)
    loss = lv.MCMCGradient("hmc", num_samples=1, warmup_steps=50, num_chains=4)
    svi = SVI(ppca_model, lv.empty_guide, pyro.optim.Adam({"lr": 0.01}),
              loss=DataParallel(loss) if parallel else loss)
    path = []
    for _ in range(num_steps):
        svi.step(data[idx], idx, 200)
        path.append(torch.cat([pyro.param("mu").detach(), pyro.param("sigma").detach()[None]]))
    return {"path": torch.stack(path), "data": data}


@pytest.mark.integration
@pytest.mark.parametrize("parallel", [True, False], ids=["data-parallel", "control-unreduced"])
def test_sgd_with_mcmc_gradient_reaches_the_ppca_mle(tmp_path, parallel):
    """Two ranks, 100 data each: the iterates' mean over the last 300 steps is within 4
    batch-means standard errors of the closed-form MLE (mu, sigma). Control: without
    DataParallel each rank fits its own shard, which the test catches."""
    results = launch(_ppca_sgd, tmp_path, 600, parallel)
    tail = results[0]["path"][300:]
    batches = tail.reshape(10, 30, -1).mean(1)
    stderr = batches.std(0) / math.sqrt(10)
    mle = lv.models.PPCA(6, 2, prefix="truth_").mle(results[0]["data"])
    target = torch.cat([mle["mu"], mle["sigma"][None]])
    reached = bool(((tail.mean(0) - target).abs() <= 4 * stderr).all())
    assert reached == parallel
