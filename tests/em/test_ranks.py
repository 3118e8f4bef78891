"""Data-parallel EM: two gloo processes started by the test, each holding half the data,
against one process holding all of it (exact E-step and fixed draws: equal to 1e-10), the
ranks in step (identical parameters and histories), exact resume from per-rank states, a
rank's error ending both, and SAEM reaching the closed-form PPCA maximum likelihood."""

import io
import math
from functools import partial

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from pyro.infer import config_enumerate
from pyro.ops.stats import effective_sample_size

import pyro_lvmle as lv
from pyro_lvmle.em.ranks import OneProcess, RankSum, all_reduce_sum
from pyro_lvmle.parallel import shard
from pyro_lvmle.samplers import ChainState, StepInfo
from pyro_lvmle.traces import EnumeratedPosterior
from pyro_lvmle.traces.plate import data_share
from tests.common import likelihood_gap_tolerance
from tests.launch import launch, requires_distributed

pytestmark = requires_distributed

NUM_DATA, DATA_DIM, LATENT_DIM = 40, 4, 2


class Unreduced(RankSum):
    """The planted bug: a rank's sums are its own (the shares are still checked)."""

    def sum(self, tensors):
        return list(tensors)


def data_set(num_data=NUM_DATA, seed=0):
    """The same data on every rank (each keeps its shard); the ranks' own random streams
    (seeded apart by the launcher) go on untouched: identical streams would give the shards'
    chains the same noise, correlating their Monte Carlo errors."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        truth = lv.models.PPCA(DATA_DIM, LATENT_DIM, prefix="truth_")
        return truth.simulate(num_data).detach()


# ------------------------------------------------------------------ a user's models
def mixture(x, idx, num_data):
    """Two Gaussian components, the assignments enumerated; the plate over all data."""
    weights = pyro.param("weights", torch.tensor([0.3, 0.7]), constraint=dist.constraints.simplex)
    locs = pyro.param("locs", torch.tensor([[-1.0] * DATA_DIM, [1.0] * DATA_DIM]))
    scale = pyro.param("scale", torch.tensor(1.0), constraint=dist.constraints.positive)
    with pyro.plate("data", num_data, subsample=idx):
        c = pyro.sample("c", dist.Categorical(weights), infer={"enumerate": "parallel"})
        pyro.sample("x", dist.Normal(locs[c], scale).to_event(1), obs=x)


def ppca(x, idx, num_data):
    """Probabilistic PCA as a user writes it, the plate over all data."""
    W = pyro.param("W", 0.5 * torch.sin(torch.arange(DATA_DIM * LATENT_DIM) + 1.0)
                   .reshape(DATA_DIM, LATENT_DIM))
    mu = pyro.param("mu", torch.zeros(DATA_DIM))
    sigma = pyro.param("sigma", torch.tensor(1.0), constraint=dist.constraints.positive)
    with pyro.plate("data", num_data, subsample=idx):
        z = pyro.sample("z", dist.Normal(torch.zeros(LATENT_DIM), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ W.T + mu, sigma).to_event(1), obs=x)


def ppca_statistics(samples, x, idx, num_data):
    """Sums over this rank's data of PPCA's sufficient statistics (z augmented by 1)."""
    z = samples["z"]  # (C, B, q)
    z1 = torch.cat([z, torch.ones_like(z[..., :1])], -1)
    return {"zz": z1.mT @ z1, "xz": x.mT @ z1, "xx": (x**2).sum().expand(len(z))}


def ppca_m_step(stats, x, idx, num_data):
    """Tipping & Bishop's update from the summed statistics."""
    wmu = torch.linalg.solve(stats["zz"], stats["xz"].mT).mT
    resid = stats["xx"] - (wmu * stats["xz"]).sum()
    return {"W": wmu[:, :-1], "mu": wmu[:, -1], "sigma": (resid / (num_data * DATA_DIM)).sqrt()}


class FixedDraws:
    """A sampler of exact PPCA posterior draws whose noise is fixed per (transition, chain,
    global datum): the same draws for a datum whichever process holds it."""

    def __init__(self, num_chains, num_steps=50):
        generator = torch.Generator().manual_seed(0)
        self.noise = torch.randn(num_steps, num_chains, NUM_DATA, LATENT_DIM,
                                 generator=generator)
        self.calls = 0

    def init(self, position, target, *, like=None):
        num_chains = position.shape[0]
        zeros = position.new_zeros(num_chains)
        return ChainState(position, zeros, torch.zeros_like(position), position.new_ones(
            num_chains), torch.ones_like(position), None)

    def warmup(self, state, target, num_steps):
        raise AssertionError("no warm-up: warmup_steps=0")

    def step(self, state, target):
        store = pyro.get_param_store()
        W, mu, sigma = (store[n].detach() for n in ("W", "mu", "sigma"))
        x, idx = target.args[0], target.subsample_indices["data"]
        precision = W.T @ W + sigma**2 * torch.eye(LATENT_DIM)
        mean = torch.linalg.solve(precision, W.T @ (x - mu).T).T  # (B, q)
        chol = torch.linalg.cholesky(sigma**2 * torch.linalg.inv(precision))
        z = mean + self.noise[self.calls][:, idx] @ chol.T  # (C, B, q)
        self.calls += 1
        position = target.pack({"z": z})
        ones = position.new_ones(len(position))
        return state._replace(position=position), StepInfo(ones, ones > 0, ones < 0, 0 * ones)


# ------------------------------------------------------------------ what each rank runs
def comparable(driver):
    """A driver's parameters and history, without the time column (each rank's own)."""
    history = driver.history.to_dict()
    return {"params": {n: v.clone() for n, v in driver.constrained_params().items()},
            "metrics": history["metrics"], "recorded": history["params"]}


def exact_em(ranks, x, idx, num_steps=4, m_step="adam"):
    """Exact EM; its M-step by 30 Adam steps (a fixed sequence of arithmetic: equal to
    round-off), or by L-BFGS (to its tolerance: it stops where the gradient is below 1e-9,
    and round-off may move that iteration)."""
    pyro.clear_param_store()
    em = lv.ExactEM(config_enumerate(mixture), ranks=ranks, m_steps=30,
                    m_step=pyro.optim.Adam({"lr": 0.05}) if m_step == "adam" else m_step)
    em.run(x, idx, NUM_DATA, num_steps=num_steps, progress=False)
    return comparable(em)


def saem_fixed(ranks, x, idx, num_steps=6):
    pyro.clear_param_store()
    saem = lv.SAEM(ppca, FixedDraws(3), burn_in=2, num_chains=3, warmup_steps=0,
                   statistics=ppca_statistics, m_step=ppca_m_step, ranks=ranks)
    saem.run(x, idx, NUM_DATA, num_steps=num_steps, progress=False)
    return comparable(saem)


def resumed(make, x, idx, num_steps, split, seed):
    """``num_steps`` steps in one go, and ``split`` steps, a save, a new driver that loads
    the state (through torch.save and torch.load(weights_only=True)) and the rest."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    whole = make()
    whole.run(x, idx, NUM_DATA, num_steps=num_steps, progress=False)
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    first = make()
    first.run(x, idx, NUM_DATA, num_steps=split, progress=False)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    pyro.clear_param_store()
    pyro.set_rng_seed(12345)  # the loaded state sets the generator
    second = make()
    second.load_state_dict(torch.load(buffer, weights_only=True))
    second.run(x, idx, NUM_DATA, num_steps=num_steps - split, progress=False)
    return {"whole": comparable(whole), "resumed": comparable(second)}


def _fail_at(rank, step, model):
    """The model, raising on rank 1 once ``step`` steps are done."""
    done = [0]

    def faulty(*args):
        if rank == 1 and done[0] >= step:
            raise ValueError("boom on purpose")
        return model(*args)

    return faulty, done


def _mcem(ranks):
    return lv.MCEM(ppca, "hmc", num_samples=4, num_chains=2, warmup_steps=100, m_steps=10,
                   max_num_samples=8, ranks=ranks)


def _saem_hmc():
    return lv.SAEM(ppca, "hmc", burn_in=2, num_chains=2, warmup_steps=50, m_steps=5,
                   ranks=RankSum())


def _mcem_unreduced(x, idx):
    pyro.clear_param_store()
    mcem = _mcem(Unreduced())
    mcem.run(x, idx, NUM_DATA, num_steps=2, progress=False)
    return comparable(mcem)


def _fault(rank, x, idx):
    """A rank raising in its E-step: both end, each with its error, and can go on."""
    pyro.clear_param_store()
    faulty, done = _fail_at(rank, 2, ppca)
    saem = lv.SAEM(faulty, "hmc", burn_in=2, num_chains=2, warmup_steps=50, ranks=RankSum())

    def count(driver, metrics):
        done[0] += 1

    try:
        saem.run(x, idx, NUM_DATA, num_steps=5, progress=False, callback=count)
        return {"error": "no error", "iteration": saem.iteration}
    except Exception as error:
        return {"error": f"{type(error).__name__}: {error}", "iteration": saem.iteration}


def _shared_mean(x, idx, num_data):
    """A latent outside the data plate (a population mean): its posterior needs every
    rank's data."""
    scale = pyro.param("scale", torch.tensor(1.0), constraint=constraints.positive)
    mean = pyro.sample("mean", dist.Normal(0.0, 10.0))
    with pyro.plate("data", num_data, subsample=idx):
        pyro.sample("x", dist.Normal(mean, scale).expand([len(idx), x.shape[-1]]).to_event(1),
                    obs=x)


def _wrong_uses(x, idx):
    errors = {}
    for name, build in {
        "global_latent": lambda: lv.SAEM(_shared_mean, "hmc", warmup_steps=2,
                                         ranks=RankSum()).step(x, idx, NUM_DATA),
        "global_latent_mcem": lambda: lv.MCEM(_shared_mean, "hmc", warmup_steps=2,
                                              num_samples=2, auto=False,
                                              ranks=RankSum()).step(x, idx, NUM_DATA),
        "newton": lambda: lv.MCEM(ppca, newton=True, ranks=RankSum()),
        "saem_newton": lambda: lv.SAEM(ppca, newton=True, ranks=RankSum()),
        "closed_form": lambda: lv.ExactEM(mixture, m_step=lambda m, *a: {}, ranks=RankSum()),
        # a plate sized by the shard: the shares add up to 2 x 1, not 1
        "local_plate": lambda: lv.SAEM(ppca, ranks=RankSum()).step(
            x, torch.arange(len(idx)), len(idx)),
    }.items():
        pyro.clear_param_store()
        try:
            build()
            errors[name] = "no error"
        except Exception as error:  # noqa: BLE001 - the test reads the type and the message
            errors[name] = f"{type(error).__name__}: {error}"
    return errors


def _ranks_suite(rank, world_size):
    x = data_set()
    idx = shard(NUM_DATA)
    x = x[idx]
    parts = {
        "exact": lambda: exact_em(RankSum(), x, idx),
        "exact_unreduced": lambda: exact_em(Unreduced(), x, idx),
        "exact_lbfgs": lambda: exact_em(RankSum(), x, idx, m_step="lbfgs"),
        "saem_fixed": lambda: saem_fixed(RankSum(), x, idx),
        "saem_fixed_unreduced": lambda: saem_fixed(Unreduced(), x, idx),
        "saem_resume": lambda: resumed(_saem_hmc, x, idx, 4, 2, 7 + rank),
        "mcem_resume": lambda: resumed(lambda: _mcem(RankSum()), x, idx, 3, 1, 7 + rank),
        "mcem_unreduced": lambda: _mcem_unreduced(x, idx),
        "fault": lambda: _fault(rank, x, idx),
        "errors": lambda: _wrong_uses(x, idx),
    }
    out = {}
    for name, part in parts.items():  # an error is the part's result (the ranks stay in step)
        try:
            out[name] = part()
        except Exception as error:
            out[name] = f"{type(error).__name__}: {error}"
    return out


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """One two-process run of every data-parallel check but the long one."""
    return launch(_ranks_suite, tmp_path_factory.mktemp("ranks"))


def single_process(run):
    """``run(ranks=None, all data)`` in this process: the reference."""
    x = data_set()
    pyro.set_rng_seed(0)
    return run(None, x, torch.arange(NUM_DATA))


def assert_same(a, b, atol):
    """Two ``comparable`` results agree to ``atol`` (``0``: bitwise)."""
    assert a["params"].keys() == b["params"].keys()
    for name in a["params"]:
        difference = (a["params"][name] - b["params"][name]).abs().max().item()
        assert difference <= atol, (name, difference)
    assert a["metrics"].keys() == b["metrics"].keys()
    for name, column in a["metrics"].items():
        other = b["metrics"][name]
        assert len(column) == len(other), name
        for u, v in zip(column, other, strict=True):
            assert (math.isnan(u) and math.isnan(v)) or abs(u - v) <= atol, (name, u, v)
    for name, values in a["recorded"].items():
        assert (values - b["recorded"][name]).abs().max().item() <= atol, name


def max_difference(a, b):
    return max((a["params"][n] - b["params"][n]).abs().max().item() for n in a["params"])


# ------------------------------------------------------------------ the tests
def test_exact_em_on_two_processes_equals_one_process(suite):
    reference = single_process(exact_em)
    assert reference["metrics"]["increase"][-1] > 0  # still moving: a real comparison
    lbfgs = single_process(partial(exact_em, m_step="lbfgs"))
    for result in suite:
        assert_same(result["exact"], reference, 1e-10)
        assert_same(result["exact_lbfgs"], lbfgs, 1e-7)
    assert_same(suite[0]["exact_lbfgs"], suite[1]["exact_lbfgs"], 0.0)  # in step
    # control: without the reduction each rank fits its own shard
    unreduced = [result["exact_unreduced"] for result in suite]
    assert max_difference(unreduced[0], reference) > 1e-3
    assert max_difference(unreduced[0], unreduced[1]) > 1e-3


def test_saem_fast_path_with_fixed_draws_equals_one_process(suite):
    reference = single_process(saem_fixed)
    for result in suite:
        assert_same(result["saem_fixed"], reference, 1e-10)
    unreduced = [result["saem_fixed_unreduced"] for result in suite]
    assert max_difference(unreduced[0], reference) > 1e-3
    assert max_difference(unreduced[0], unreduced[1]) > 1e-3


@pytest.mark.parametrize("driver", ["saem", "mcem"])
def test_ranks_stay_in_step_and_resume_exactly(suite, driver):
    """HMC chains, each rank its own: every rank holds the same parameters and history, and
    running N steps equals running k, saving each rank's state, loading it into a new driver
    and running N - k (bitwise)."""
    runs = [result[f"{driver}_resume"] for result in suite]
    assert_same(runs[0]["whole"], runs[1]["whole"], 0.0)
    for run in runs:
        assert_same(run["resumed"], run["whole"], 0.0)
    assert runs[0]["whole"]["params"]["sigma"].item() != 1.0  # it moved


def test_mcem_control_without_reduction_drifts_apart(suite):
    assert max_difference(suite[0]["mcem_unreduced"], suite[1]["mcem_unreduced"]) > 1e-3


def test_a_rank_raising_ends_both_with_its_error(suite):
    assert suite[1]["fault"]["error"].startswith("ValueError: boom on purpose")
    assert suite[0]["fault"]["error"].startswith("RankFailure: rank 1 raised ValueError: boom")
    assert suite[0]["fault"]["iteration"] == suite[1]["fault"]["iteration"] == 2  # put back


def test_wrong_uses_are_told(suite):
    for result in suite:
        errors = result["errors"]
        assert "not data-parallel" in errors["newton"]
        assert "not data-parallel" in errors["saem_newton"]
        assert "['mean'] lie outside the data plate" in errors["global_latent"]
        assert "['mean'] lie outside the data plate" in errors["global_latent_mcem"]
        assert "closed-form m_step" in errors["closed_form"]
        assert "add up to" in errors["local_plate"]


def test_one_process_stand_in_and_the_share_of_a_shard():
    assert OneProcess().sum([torch.ones(2)])[0].tolist() == [1.0, 1.0]
    assert OneProcess().share(ppca) == 1.0
    x = data_set()
    idx = shard(NUM_DATA, rank=1, world_size=4)
    assert data_share(ppca, (x[idx], idx, NUM_DATA)) == 0.25
    with pytest.raises(ValueError, match="init_process_group"):
        RankSum()
    with pytest.raises(ValueError, match="init_process_group"):
        all_reduce_sum([torch.ones(1)])
    with pytest.raises(TypeError, match="RankSum"):
        lv.SAEM(ppca, ranks="all")


def test_enumerated_shard_posteriors_add_up_to_the_full_data():
    """The exact E-step of two shards, each weighted by its share, adds up to the full one."""
    x = data_set()
    model = config_enumerate(mixture)
    full = EnumeratedPosterior(model, (x, torch.arange(NUM_DATA), NUM_DATA), {})
    parts = [EnumeratedPosterior(model, (x[i], i, NUM_DATA), {}, data_share=0.5)
             for i in (shard(NUM_DATA, r, 2) for r in range(2))]
    total = sum(p.log_marginal for p in parts)
    assert torch.allclose(total, full.log_marginal, atol=1e-10, rtol=0)
    q = sum(p.expected_log_joint() for p in parts)
    assert torch.allclose(q, full.expected_log_joint(), atol=1e-10, rtol=0)
    # control: a share that leaves the N/B scale inside the enumeration (a tempered
    # posterior) is refused, as is a subsampled plate without a share
    with pytest.raises(ValueError, match="does not match"):
        EnumeratedPosterior(model, (x[:20], torch.arange(20), NUM_DATA), {}, data_share=1.0)
    # a user's poutine.scale on the shard's sites is not mistaken for a site outside it
    scaled = pyro.poutine.scale(model, scale=2.0)
    EnumeratedPosterior(scaled, (x[:20], torch.arange(20), NUM_DATA), {},
                        data_share=20 / NUM_DATA)

    def global_label(x, idx, num_data):  # one label for all the data: outside the plate
        c = pyro.sample("c", dist.Categorical(torch.tensor([0.5, 0.5])),
                        infer={"enumerate": "parallel"})
        with pyro.plate("data", num_data, subsample=idx):
            loc = torch.tensor([-1.0, 1.0])[c].unsqueeze(-1).unsqueeze(-1)
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)

    with pytest.raises(ValueError, match="outside the data plate"):
        EnumeratedPosterior(global_label, (x[:20], torch.arange(20), NUM_DATA), {},
                            data_share=20 / NUM_DATA)
    with pytest.raises(ValueError, match="subsampled"):
        EnumeratedPosterior(model, (x[:20], torch.arange(20), NUM_DATA), {})


# ------------------------------------------------------------------ reaching the MLE
def _saem_ppca(rank, world_size, ranks_class, num_data, num_steps, burn_in, num_chains):
    x = data_set(num_data)
    idx = shard(num_data)
    saem = lv.SAEM(ppca, "hmc", burn_in=burn_in, num_chains=num_chains, warmup_steps=100,
                   statistics=ppca_statistics, m_step=ppca_m_step, ranks=ranks_class())
    history = saem.run(x[idx], idx, num_data, num_steps=num_steps, progress=False)
    return {"params": saem.constrained_params(), "log_joint": torch.tensor(
        history["log_joint"]), "data": x}


@pytest.mark.integration
@pytest.mark.parametrize("ranks_class", [RankSum, Unreduced], ids=["reduced", "control"])
def test_saem_on_two_processes_reaches_the_ppca_mle(tmp_path, ranks_class):
    """Fast path, HMC chains on two ranks of 100 data each: the log-likelihood gap to the
    closed-form MLE is within the Monte Carlo tolerance of the draws averaged after the
    burn-in (the single-process test's rule). Control: unreduced, each rank fits its shard."""
    num_data, burn_in, num_chains = 200, 50, 16
    results = launch(_saem_ppca, tmp_path, ranks_class, num_data, 300, burn_in, num_chains)
    truth = lv.models.PPCA(DATA_DIM, LATENT_DIM)
    data = results[0]["data"]
    best = truth.log_marginal(data, truth.mle(data)).item()
    series = results[0]["log_joint"][burn_in:]
    draws = float(effective_sample_size(series[None, :, None])) * num_chains  # per datum
    tol = likelihood_gap_tolerance(DATA_DIM * (LATENT_DIM + 1) + 1, draws)
    gaps = [best - truth.log_marginal(data, r["params"]).item() for r in results]
    if ranks_class is RankSum:
        assert torch.equal(results[0]["params"]["W"], results[1]["params"]["W"])
        assert -1e-8 <= gaps[0] < tol, (gaps, tol)
    else:
        assert max(gaps) > tol, (gaps, tol)
