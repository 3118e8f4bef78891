"""Bad input, as a user meets it, gets a ``ValueError`` or ``TypeError`` that names the
argument or site: objectives, samplers, the MCMC gradient, drivers, reference models, saved
states and the command line (whose argparse errors exit with status 2 naming the option).

Each case is ``(id, call, exception type, regex the message must match)``.
"""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal

import pyro_lvmle as lv
from pyro_lvmle import cli
from pyro_lvmle.em import History, saem_step_size
from pyro_lvmle.samplers import BatchedKernel, ChainStore, PyroKernel, hmc_init, hmc_step
from pyro_lvmle.traces import Potential

INF, NAN = math.inf, math.nan


def linear():
    return lv.models.LinearGaussian(dim=2)


def data2():
    return torch.randn(20, 2)


def gmm():
    return lv.models.GaussianMixture(2, 2)


def bernoulli_model(x):
    p = pyro.param("p", torch.tensor(0.3), constraint=dist.constraints.unit_interval)
    with pyro.plate("n", len(x)):
        z = pyro.sample("z", dist.Bernoulli(p))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def bernoulli_guide(x):
    q = pyro.param("q", torch.tensor(0.5), constraint=dist.constraints.unit_interval)
    with pyro.plate("n", len(x)):
        pyro.sample("z", dist.Bernoulli(q))


def no_latent_model(x):
    loc = pyro.param("loc", torch.tensor(0.0))
    with pyro.plate("n", len(x)):
        pyro.sample("x", dist.Normal(loc, 1.0), obs=x)


def svi_step(loss, model=bernoulli_model, guide=bernoulli_guide, data=None):
    data = torch.randn(5) if data is None else data
    return SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), loss).step(data)


def mcmc_step(model, data, **options):
    loss = lv.MCMCGradient(**{"kernel": "hmc", "warmup_steps": 5, **options})
    return SVI(model, lv.empty_guide, pyro.optim.Adam({"lr": 0.01}), loss).step(data)


def potential():
    model = linear()
    return Potential(model, (model.simulate(4),))


def chains():
    target = potential()
    return hmc_init(torch.zeros(2, target.dim), target)


# ------------------------------------------------------------------------------ objectives
OBJECTIVES = [
    ("iwae-num_particles-0", lambda: lv.TraceIWAE_ELBO(num_particles=0), ValueError,
     "num_particles"),
    ("iwae-num_particles-negative", lambda: lv.TraceIWAE_ELBO(-3), ValueError, "num_particles"),
    ("iwae-num_particles-float", lambda: lv.TraceIWAE_ELBO(2.5), TypeError, "num_particles"),
    ("iwae-num_particles-bool", lambda: lv.TraceIWAE_ELBO(True), TypeError, "num_particles"),
    ("iwae-num_particles-str", lambda: lv.TraceIWAE_ELBO("8"), TypeError, "num_particles"),
    ("iwae-estimator-x", lambda: lv.TraceIWAE_ELBO(estimator="x"), ValueError, "estimator"),
    ("iwae-estimator-None", lambda: lv.TraceIWAE_ELBO(estimator=None), ValueError,
     "estimator"),
    ("iwae-max_plate_nesting-negative", lambda: lv.TraceIWAE_ELBO(max_plate_nesting=-1),
     ValueError, "max_plate_nesting"),
    ("iwae-max_plate_nesting-float", lambda: lv.TraceIWAE_ELBO(max_plate_nesting=1.5),
     TypeError, "max_plate_nesting"),
    ("iwae-dreg-discrete-site", lambda: svi_step(lv.TraceIWAE_ELBO(4, "dreg")), ValueError,
     "'z'"),
    ("iwae-reparam-discrete-site", lambda: svi_step(lv.TraceIWAE_ELBO(4, "reparam")),
     ValueError, "'z'"),
    ("stl-num_particles-0", lambda: lv.TraceSTL_ELBO(0), ValueError, "num_particles"),
    ("renyi-alpha-negative", lambda: lv.TraceRenyi_ELBO(alpha=-1.0), ValueError, "alpha"),
    ("renyi-alpha-nan", lambda: lv.TraceRenyi_ELBO(alpha=NAN), ValueError, "alpha"),
    ("renyi-alpha-inf", lambda: lv.TraceRenyi_ELBO(alpha=INF), ValueError, "alpha"),
    ("renyi-num_particles-0", lambda: lv.TraceRenyi_ELBO(0.5, num_particles=0), ValueError,
     "num_particles"),
    ("tvo-num_betas-0", lambda: lv.TraceTVO_ELBO(num_betas=0), ValueError, "num_betas"),
    ("tvo-min_beta-above-1", lambda: lv.TraceTVO_ELBO(min_beta=1.5), ValueError, "min_beta"),
    ("tvo-betas-decreasing", lambda: lv.TraceTVO_ELBO(betas=[0.0, 0.5, 0.2]), ValueError,
     "betas"),
    ("tvo-betas-not-from-0", lambda: lv.TraceTVO_ELBO(betas=[0.1, 0.5]), ValueError, "betas"),
    ("rws-num_particles-1", lambda: lv.TraceRWS_ELBO(num_particles=1), ValueError,
     "num_particles"),
    ("rws-num_particles-str", lambda: lv.TraceRWS_ELBO(num_particles="5"), TypeError,
     "num_particles"),
]

# -------------------------------------------------------------------------------- samplers
SAMPLERS = [
    ("kernel-step-str", lambda: BatchedKernel("hmc"), TypeError, "step"),
    ("kernel-step_size-0", lambda: BatchedKernel(hmc_step, step_size=0.0), ValueError,
     "step_size"),
    ("kernel-step_size-negative", lambda: BatchedKernel(hmc_step, step_size=-0.1), ValueError,
     "step_size"),
    ("kernel-step_size-nan", lambda: BatchedKernel(hmc_step, step_size=NAN), ValueError,
     "step_size"),
    pytest.param("kernel-step_size-inf", lambda: BatchedKernel(hmc_step, step_size=INF),
                 ValueError, "step_size"),
    pytest.param("kernel-step_size-str", lambda: BatchedKernel(hmc_step, step_size="0.1"),
                 TypeError, "step_size"),
    ("kernel-track_rate-negative", lambda: BatchedKernel(hmc_step, track_rate=-0.1),
     ValueError, "track_rate"),
    pytest.param("kernel-num_steps-0", lambda: BatchedKernel(hmc_step, num_steps=0),
                 ValueError, "num_steps"),
    pytest.param("kernel-target_accept-2", lambda: BatchedKernel(hmc_step, target_accept=2.0),
                 ValueError, "target_accept"),
    ("hmc_init-position-1d", lambda: hmc_init(torch.zeros(3), potential()), ValueError,
     "position"),
    ("hmc_init-step_size-0", lambda: hmc_init(torch.zeros(2, 3), potential(), step_size=0.0),
     ValueError, "step_size"),
    ("hmc_init-position-wrong-dim", lambda: hmc_init(torch.zeros(2, 50), potential()),
     ValueError, "position"),
    ("hmc_step-jitter-1.5", lambda: hmc_step(chains(), potential(), jitter=1.5), ValueError,
     "jitter"),
    pytest.param("hmc_step-num_steps-0", lambda: hmc_step(chains(), potential(), num_steps=0),
                 ValueError, "num_steps"),
    ("pyro_kernel-str", lambda: PyroKernel("nuts"), TypeError, "kernel"),
    ("pyro_kernel-jit", lambda: PyroKernel(pyro.infer.NUTS(linear(), jit_compile=True)),
     ValueError, "jit_compile"),
    pytest.param("chain_store-num_chains-0", lambda: ChainStore(0), ValueError, "num_chains"),
]

# -------------------------------------------------------------------------- MCMC gradient
MCMC = [
    ("mcmc-kernel-unknown", lambda: lv.MCMCGradient("gibbs-ish"), ValueError, "kernel"),
    ("mcmc-kernel-int", lambda: lv.MCMCGradient(3), TypeError, "kernel"),
    ("mcmc-num_samples-0", lambda: lv.MCMCGradient("hmc", num_samples=0), ValueError,
     "num_samples"),
    ("mcmc-num_chains-0", lambda: lv.MCMCGradient("hmc", num_chains=0), ValueError,
     "num_chains"),
    pytest.param("mcmc-num_chains-float", lambda: lv.MCMCGradient("hmc", num_chains=2.0),
                 TypeError, "num_chains"),
    ("mcmc-warmup_steps-negative", lambda: lv.MCMCGradient("hmc", warmup_steps=-1),
     ValueError, "warmup_steps"),
    ("mcmc-thinning-0", lambda: lv.MCMCGradient("hmc", thinning=0), ValueError, "thinning"),
    ("mcmc-step_size-0", lambda: lv.MCMCGradient("hmc", step_size=0.0), ValueError,
     "step_size"),
    ("mcmc-step_size-nan", lambda: lv.MCMCGradient("hmc", step_size=NAN), ValueError,
     "step_size"),
    pytest.param("mcmc-step_size-inf", lambda: lv.MCMCGradient("hmc", step_size=INF),
                 ValueError, "step_size"),
    ("mcmc-target_accept-1.5", lambda: lv.MCMCGradient("hmc", target_accept=1.5), ValueError,
     "target_accept"),
    ("mcmc-target_accept-0", lambda: lv.MCMCGradient("hmc", target_accept=0.0), ValueError,
     "target_accept"),
    ("mcmc-num_steps-0", lambda: lv.MCMCGradient("hmc", num_steps=0), ValueError, "num_steps"),
    ("mcmc-precondition-unknown", lambda: lv.MCMCGradient("hmc", precondition="newton"),
     ValueError, "precondition"),
    ("preconditioner-memory-0", lambda: lv.NewtonPreconditioner(memory=0), ValueError,
     "memory"),
    ("preconditioner-max_step-nan", lambda: lv.NewtonPreconditioner(max_step=NAN), ValueError,
     "max_step"),
    pytest.param("mcmc-max_plate_nesting-negative",
                 lambda: lv.MCMCGradient("hmc", max_plate_nesting=-1), ValueError,
                 "max_plate_nesting"),
    ("mcmc-no-latent-sites", lambda: mcmc_step(no_latent_model, torch.randn(5)), ValueError,
     "latent"),
    ("mcmc-discrete-latent-under-hmc", lambda: mcmc_step(bernoulli_model, torch.randn(5)),
     ValueError, "'z'"),
    pytest.param("mcmc-load_state_dict-empty", lambda: lv.MCMCGradient("hmc").load_state_dict(
        {}), ValueError, "position"),
]


# -------------------------------------------------------------------------------- drivers
def sgmm(**options):
    return lv.SAEM(linear(), "hmc", warmup_steps=5, **options)


DRIVERS = [
    ("mcem-model-str", lambda: lv.MCEM("not a model"), TypeError, "model"),
    ("mcem-num_samples-0", lambda: lv.MCEM(linear(), num_samples=0), ValueError,
     "num_samples"),
    ("mcem-num_samples-float", lambda: lv.MCEM(linear(), num_samples=2.5), TypeError,
     "num_samples"),
    ("mcem-burn_in-negative", lambda: lv.MCEM(linear(), burn_in=-1), ValueError, "burn_in"),
    ("mcem-max_num_samples-below", lambda: lv.MCEM(linear(), num_samples=50,
                                                   max_num_samples=10),
     ValueError, "max_num_samples"),
    ("mcem-alpha-0.7", lambda: lv.MCEM(linear(), alpha=0.7), ValueError, "alpha"),
    ("mcem-alpha-str", lambda: lv.MCEM(linear(), alpha="0.2"), TypeError, "alpha"),
    ("mcem-beta-0", lambda: lv.MCEM(linear(), beta=0.0), ValueError, "beta"),
    ("mcem-gamma-0.5", lambda: lv.MCEM(linear(), gamma=0.5), ValueError, "gamma"),
    ("mcem-tol-0", lambda: lv.MCEM(linear(), tol=0.0), ValueError, "tol"),
    ("mcem-tol-inf", lambda: lv.MCEM(linear(), tol=INF), ValueError, "tol"),
    ("mcem-tol-nan", lambda: lv.MCEM(linear(), tol=NAN), ValueError, "tol"),
    ("mcem-m_step-adam-str", lambda: lv.MCEM(linear(), m_step="adam"), TypeError, "m_step"),
    ("mcem-m_step-torch-optim", lambda: lv.MCEM(linear(), m_step=torch.optim.Adam),
     TypeError, "m_step"),
    ("mcem-m_steps-0", lambda: lv.MCEM(linear(), m_steps=0), ValueError, "m_steps"),
    ("mcem-acceleration-unknown", lambda: lv.MCEM(linear(), acceleration="aitken"),
     ValueError, "acceleration"),
    ("mcem-acceleration-with-newton",
     lambda: lv.MCEM(linear(), acceleration="squarem", newton=True), ValueError,
     "acceleration"),
    ("mcem-newton-str", lambda: lv.MCEM(linear(), newton="yes"), TypeError, "newton"),
    ("mcem-auto-str", lambda: lv.MCEM(linear(), auto="no"), TypeError, "auto"),
    ("mcem-num_chains-0", lambda: lv.MCEM(linear(), num_chains=0), ValueError, "num_chains"),
    ("mcem-warmup_steps-negative", lambda: lv.MCEM(linear(), warmup_steps=-5), ValueError,
     "warmup_steps"),
    ("mcem-kernel-unknown", lambda: lv.MCEM(linear(), kernel="gibbs-ish"), ValueError,
     "kernel"),
    ("mcem-kernel_options-step_size-inf",
     lambda: lv.MCEM(linear(), kernel_options={"step_size": INF}), ValueError, "step_size"),
    ("mcem-kernel_options-sets-num_chains",
     lambda: lv.MCEM(linear(), kernel_options={"num_chains": 4}), ValueError, "num_chains"),
    ("mcem-kernel_options-typo", lambda: lv.MCEM(linear(), kernel_options={"stepsize": 0.1}),
     ValueError, "stepsize"),
    ("mcem-kernel_options-list", lambda: lv.MCEM(linear(), kernel_options=[("step_size", 1)]),
     TypeError, "kernel_options"),
    ("mcem-kernel_options-num_steps-0",
     lambda: lv.MCEM(linear(), kernel_options={"num_steps": 0}), ValueError, "num_steps"),
    ("mcem-kernel_options-target_accept-1",
     lambda: lv.MCEM(linear(), kernel_options={"target_accept": 1.0}), ValueError,
     "target_accept"),
    ("saem-min_weight-1", lambda: sgmm(min_weight=1.0), ValueError, "min_weight"),
    ("saem-min_weight-above-1/num_chains", lambda: sgmm(min_weight=0.3, num_chains=4),
     ValueError, "min_weight"),
    ("saem-min_weight-negative", lambda: sgmm(min_weight=-1e-3), ValueError, "min_weight"),
    ("saem-step_size-0.3", lambda: sgmm(step_size=0.3), ValueError, "alpha"),
    ("saem-step_size-str", lambda: sgmm(step_size="fast"), TypeError, "step_size"),
    ("saem-step_size-bool", lambda: sgmm(step_size=True), TypeError, "step_size"),
    ("saem-burn_in-negative", lambda: sgmm(burn_in=-1), ValueError, "burn_in"),
    ("saem-burn_in-float", lambda: sgmm(burn_in=2.5, step_size=lambda k: 1 / k), TypeError,
     "burn_in"),
    ("saem-num_transitions-0", lambda: sgmm(num_transitions=0), ValueError,
     "num_transitions"),
    ("saem-num_chains-0", lambda: sgmm(num_chains=0), ValueError, "num_chains"),
    ("saem-only-statistics", lambda: sgmm(statistics=lambda s: s), ValueError, "m_step"),
    ("saem-statistics-not-callable", lambda: sgmm(statistics=3, m_step=4), TypeError,
     "statistics"),
    ("saem-anneal_rate-1", lambda: sgmm(anneal_rate=1.0), ValueError, "anneal_rate"),
    ("saem-anneal-int", lambda: sgmm(anneal=3), TypeError, "anneal"),
    ("saem-anneal_steps-negative", lambda: sgmm(anneal_steps=-2), ValueError,
     "anneal_steps"),
    ("saem-anneal-unknown-name", lambda: sgmm(anneal=("nope",)).step(linear().simulate(5)),
     ValueError, "anneal"),
    ("saem-max_memory-small", lambda: sgmm(max_memory=3, num_chains=4), ValueError,
     "max_memory"),
    ("saem-m_steps-0", lambda: sgmm(m_steps=0), ValueError, "m_steps"),
    ("saem-kernel_options-step_size-inf", lambda: sgmm(kernel_options={"step_size": INF}),
     ValueError, "step_size"),
    ("saem-kernel_options-sets-thinning", lambda: sgmm(kernel_options={"thinning": 2}),
     ValueError, "num_transitions"),
    ("saem-schedule-gamma-2", lambda: sgmm(step_size=lambda k: 2.0).step(linear().simulate(5)),
     ValueError, "gamma"),
    ("vem-guide-str", lambda: lv.VariationalEM(linear(), "guide"), TypeError, "guide"),
    ("vem-guide-is-model", lambda: (lambda m: lv.VariationalEM(m, m))(linear()), ValueError,
     "guide"),
    ("vem-loss-class", lambda: lv.VariationalEM(linear(), AutoNormal(linear()),
                                                loss=Trace_ELBO), TypeError, "loss"),
    ("vem-loss-int", lambda: lv.VariationalEM(linear(), AutoNormal(linear()), loss=3),
     TypeError, "loss"),
    ("vem-optim-torch", lambda: lv.VariationalEM(linear(), AutoNormal(linear()),
                                                 optim=torch.optim.Adam), TypeError, "optim"),
    ("vem-m_optim-torch", lambda: lv.VariationalEM(linear(), AutoNormal(linear()),
                                                   m_optim=torch.optim.SGD),
     TypeError, "m_optim"),
    ("vem-e_steps-negative", lambda: lv.VariationalEM(linear(), AutoNormal(linear()),
                                                      e_steps=-1), ValueError, "e_steps"),
    ("vem-e_steps-float", lambda: lv.VariationalEM(linear(), AutoNormal(linear()),
                                                   e_steps=1.5), TypeError, "e_steps"),
    ("vem-m_steps-0", lambda: lv.VariationalEM(linear(), AutoNormal(linear()), m_steps=0),
     ValueError, "m_steps"),
    ("exact-tol-0", lambda: lv.ExactEM(gmm(), tol=0.0), ValueError, "tol"),
    ("exact-tol-inf", lambda: lv.ExactEM(gmm(), tol=INF), ValueError, "tol"),
    ("exact-m_step-str", lambda: lv.ExactEM(gmm(), "em"), TypeError, "m_step"),
    ("exact-max_plate_nesting-negative", lambda: lv.ExactEM(gmm(), max_plate_nesting=-1),
     ValueError, "max_plate_nesting"),
    ("exact-not-enumerable", lambda: lv.ExactEM(linear()).step(linear().simulate(5)),
     ValueError, "enumerable"),
    ("exact-no-params", lambda: lv.ExactEM(lambda x: None).step(torch.zeros(3)), ValueError,
     "pyro.param"),
    ("driver-record_params-str", lambda: lv.ExactEM(gmm(), record_params="locs"), TypeError,
     "record_params"),
    ("driver-record_params-unknown",
     lambda: lv.ExactEM(gmm(), record_params=["mean"]).step(gmm().simulate(10)), ValueError,
     "record_params"),
    ("run-num_steps-0", lambda: lv.ExactEM(gmm()).run(data2(), num_steps=0), ValueError,
     "num_steps"),
    ("run-num_steps-float", lambda: lv.ExactEM(gmm()).run(data2(), num_steps=2.0), TypeError,
     "num_steps"),
    ("run-callback-int", lambda: lv.ExactEM(gmm()).run(data2(), callback=3), TypeError,
     "callback"),
    ("run-num_restarts-0", lambda: lv.ExactEM(gmm()).run(data2(), num_restarts=0),
     ValueError, "num_restarts"),
    ("run-init_params-dict", lambda: lv.ExactEM(gmm()).run(data2(), init_params={}),
     TypeError, "init_params"),
    ("saem_step_size-burn_in-negative", lambda: saem_step_size(burn_in=-1), ValueError,
     "burn_in"),
    ("saem_step_size-alpha-0.4", lambda: saem_step_size(alpha=0.4), ValueError, "alpha"),
    ("saem_step_size-alpha-str", lambda: saem_step_size(alpha="1"), TypeError, "alpha"),
    ("history-update-empty", lambda: History().update({"a": 1.0}), ValueError, "no step"),
    ("history-metric-str", lambda: History().append(1, 0.0, {"a": "x"}, {}), TypeError,
     "metric"),
    ("history-metric-vector", lambda: History().append(1, 0.0, {"a": torch.ones(2)}, {}),
     ValueError, "metric"),
    ("history-plot-x", lambda: History().plot(x="iteration"), ValueError, "x must be"),
    ("history-from_dict-empty", lambda: History.from_dict({}), ValueError, "step"),
]


# --------------------------------------------------------------------------------- models
MODELS = [
    ("gmm-num_components-0", lambda: lv.models.GaussianMixture(0, 2), ValueError,
     "num_components"),
    ("gmm-num_components-float", lambda: lv.models.GaussianMixture(2.5, 2), TypeError,
     "num_components"),
    ("gmm-data_dim-0", lambda: lv.models.GaussianMixture(2, 0), ValueError, "data_dim"),
    ("gmm-log_marginal-columns", lambda: gmm().log_marginal(torch.randn(5, 3)), ValueError,
     "columns"),
    ("gmm-log_marginal-numpy", lambda: gmm().log_marginal(np.zeros((5, 2))), TypeError,
     "data"),
    ("gmm-log_marginal-int-tensor", lambda: gmm().log_marginal(torch.zeros(5, 2,
                                                                           dtype=torch.long)),
     TypeError, "data"),
    ("gmm-log_marginal-nan", lambda: gmm().log_marginal(torch.full((5, 2), NAN)), ValueError,
     "NaN"),
    ("gmm-log_marginal-1d", lambda: gmm().log_marginal(torch.zeros(5)), ValueError, "shape"),
    ("gmm-mle-too-few-data", lambda: lv.models.GaussianMixture(3, 2).mle(torch.randn(2, 2)),
     ValueError, "more data"),
    ("gmm-mle-num_starts-0", lambda: gmm().mle(torch.randn(20, 2), num_starts=0), ValueError,
     "num_starts"),
    ("gmm-data_init-too-few-data",
     lambda: lv.models.GaussianMixture(3, 2).data_init(torch.randn(3, 2)), ValueError,
     "more data"),
    ("gmm-simulate-0", lambda: gmm().simulate(0), ValueError, "num_data"),
    ("gmm-simulate-float", lambda: gmm().simulate(10.0), TypeError, "num_data"),
    ("gmm-init_params-unknown", lambda: lv.models.GaussianMixture(
        2, 2, init_params={"means": torch.zeros(2, 2)}), ValueError, "means"),
    ("gmm-init_params-list", lambda: lv.models.GaussianMixture(2, 2, init_params=[1, 2]),
     TypeError, "init_params"),
    ("gmm-prefix-int", lambda: lv.models.GaussianMixture(2, 2, prefix=3), TypeError,
     "prefix"),
    ("gmm-params-wrong-shape", lambda: gmm().log_marginal(torch.randn(5, 2),
                                                          {"locs": torch.zeros(3, 2)}),
     ValueError, "locs"),
    ("gmm-model-no-data", lambda: gmm().model(), ValueError, "num_data"),
    ("gmm-model-num_data-mismatch", lambda: gmm().model(torch.randn(4, 2), num_data=5),
     ValueError, "num_data"),
    ("linear-dim-0", lambda: lv.models.LinearGaussian(dim=0), ValueError, "dim"),
    ("linear-sigma-negative", lambda: lv.models.LinearGaussian(sigma=-1.0), ValueError,
     "sigma"),
    ("linear-log_marginal-columns", lambda: linear().log_marginal(torch.randn(4, 5)),
     ValueError, "columns"),
    ("ppca-latent-above-data", lambda: lv.models.PPCA(data_dim=2, latent_dim=3), ValueError,
     "latent_dim"),
    ("ppca-data_dim-str", lambda: lv.models.PPCA(data_dim="5", latent_dim=2), TypeError,
     "data_dim"),
    ("rbm-non-binary-data", lambda: lv.models.RBM(3, 2).log_marginal(torch.full((2, 3), 0.5)),
     ValueError, "0 and 1"),
    ("rbm-num_hidden-0", lambda: lv.models.RBM(3, 0), ValueError, "num_hidden"),
    ("theophylline-data-tensor",
     lambda: lv.models.Theophylline().log_marginal(torch.zeros(3, 2)), TypeError, "data"),
]


# ---------------------------------------------------------------------------- saved states
def ran_mcem():
    model = linear()
    data = model.simulate(10)
    # ten draws a chain: with two, both chains stay put with probability ~1/3 at this
    # acceptance rate (0.42), which MCEM refuses, whatever state the test then corrupts
    driver = lv.MCEM(model, "hmc", num_samples=10, num_chains=2, warmup_steps=50, m_steps=2,
                     auto=False)
    driver.run(data, num_steps=1, progress=False)
    return driver


def corrupt(change):
    """A state of a run MCEM, changed by ``change(state)``, loaded into a new MCEM."""
    def load():
        state = ran_mcem().state_dict()
        change(state)
        lv.MCEM(linear(), "hmc", num_samples=2, num_chains=2, warmup_steps=5).load_state_dict(
            state)
    return load


def into(driver_factory):
    def load():
        driver_factory().load_state_dict(ran_mcem().state_dict())
    return load


def from_bigger_model():
    big = lv.models.LinearGaussian(dim=3)
    driver = lv.MCEM(big, "hmc", num_samples=2, num_chains=2, warmup_steps=50, auto=False)
    driver.run(big.simulate(10), num_steps=1, progress=False)
    state = driver.state_dict()
    small = linear()
    data = small.simulate(10)
    target = lv.MCEM(small, "hmc", num_samples=2, num_chains=2, warmup_steps=5, auto=False)
    target.load_state_dict(state)  # parameters not created yet: checked when they are
    target.step(data)


def other_model_later():
    state = ran_mcem().state_dict()
    pyro.clear_param_store()
    ppca = lv.models.PPCA(3, 1)
    driver = lv.MCEM(ppca, "hmc", num_samples=2, num_chains=2, warmup_steps=5)
    driver.load_state_dict(state)  # its parameters do not exist yet: checked at the first step
    driver.step(ppca.simulate(10))


def into_ran(other_state):
    """Load ``other_state()`` into a driver that has run on another model."""
    def load():
        state = other_state()
        pyro.clear_param_store()
        driver = lv.ExactEM(gmm(), m_steps=2)
        driver.run(gmm().simulate(20), num_steps=1, progress=False)
        state["driver"] = driver.state_dict()["driver"]
        state["driver_class"] = "ExactEM"
        driver.load_state_dict(state)
    return load


def set_key(*path, value=None, delete=False):
    def change(state):
        target = state
        for key in path[:-1]:
            target = target[key]
        if delete:
            del target[path[-1]]
        else:
            target[path[-1]] = value
    return change


STATES = [
    ("state-path-str", lambda: lv.MCEM(linear()).load_state_dict("state.pt"), TypeError,
     "state"),
    ("state-other-driver", into(lambda: lv.SAEM(linear(), "hmc")), ValueError, "MCEM"),
    ("state-not-a-driver-state",
     lambda: lv.MCEM(linear()).load_state_dict(lv.MCMCGradient("hmc").state_dict()),
     ValueError, "kind"),
    ("state-version", corrupt(set_key("version", value=99)), ValueError, "version"),
    ("state-missing-rng", corrupt(set_key("rng", delete=True)), ValueError, "rng"),
    ("state-missing-driver", corrupt(set_key("driver", delete=True)), ValueError, "driver"),
    ("state-iteration-negative", corrupt(set_key("iteration", value=-1)), ValueError,
     "iteration"),
    ("state-iteration-str", corrupt(set_key("iteration", value="3")), ValueError,
     "iteration"),
    ("state-rng-corrupted", corrupt(set_key("rng", "torch", value=torch.zeros(10))),
     ValueError, "rng"),
    ("state-param-missing-value", corrupt(set_key("params", "w", delete=True)), ValueError,
     "params"),
    ("state-param-not-tensor", corrupt(set_key("params", "w", value=[1.0, 2.0])), ValueError,
     "params"),
    ("state-param-wrong-shape-loaded-later", from_bigger_model, ValueError, "'w'.*shape"),
    ("state-other-model-into-new-driver", other_model_later, ValueError, "another model"),
    ("state-other-model-into-ran-driver", into_ran(lambda: ran_mcem().state_dict()),
     ValueError, "another model"),
    ("state-chains-missing", corrupt(set_key("driver", "chains", delete=True)), ValueError,
     "chains"),
    ("state-chains-other-num_chains",
     corrupt(lambda s: s["driver"]["chains"].update(
         step_size=torch.ones(5), position={"z": torch.zeros(5, 10, 1)})),
     ValueError, "num_chains"),
    ("state-chains-step_size-not-tensor",
     corrupt(set_key("driver", "chains", "step_size", value="0.1")), ValueError,
     "step_size"),
    ("state-history-lengths", corrupt(set_key("history", "time", value=[])), ValueError,
     "history"),
    ("state-history-missing-metrics", corrupt(set_key("history", "metrics", delete=True)),
     ValueError, "history"),
    ("state-num_samples-str", corrupt(set_key("driver", "num_samples", value="4")),
     ValueError, "num_samples"),
]


# ------------------------------------------------------------------------------------ CLI
def cli_exit(capsys, argv, match):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    import re

    assert re.search(match, err), err


CLI = [
    (["compare", "--num-data", "0"], "--num-data"),
    (["compare", "--num-data", "-5"], "--num-data"),
    (["compare", "--num-data", "ten"], "--num-data"),
    (["compare", "--num-data", "2.5"], "--num-data"),
    (["compare", "--max-steps", "0"], "--max-steps"),
    (["compare", "--budget", "0"], "--budget"),
    (["compare", "--eval-every", "0"], "--eval-every"),
    (["compare", "--methods", "sgd"], "--methods"),
    (["compare", "--lr", "0"], "--lr"),
    (["compare", "--lr", "-0.1"], "--lr"),
    (["compare", "--lr", "nan"], "--lr"),
    (["compare", "--lr", "inf"], "--lr"),
    (["compare", "--model", "nope"], "--model"),
    (["compare", "--seed", "-1"], "--seed"),
    (["compare", "--seed", "99999999999"], "--seed"),
    (["fit"], "invalid choice"),
    (["compare", "--num-data", "1", "--model", "ppca"], "--num-data"),
]

CASES = OBJECTIVES + SAMPLERS + MCMC + DRIVERS + MODELS + STATES


def _case_id(case):
    return case.values[0] if hasattr(case, "values") else case[0]


@pytest.mark.parametrize("name, call, error, match", CASES, ids=[_case_id(c) for c in CASES])
def test_bad_input_is_refused_naming_the_argument(name, call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("argv, match", CLI, ids=[" ".join(a) for a, _ in CLI])
def test_bad_command_line_exits_with_usage_naming_the_option(capsys, argv, match):
    cli_exit(capsys, argv, match)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cli_device_cuda_without_cuda_is_refused(capsys):
    cli_exit(capsys, ["--device", "cuda"], "cuda is not available")


def test_suite_has_at_least_100_cases():
    assert len(CASES) + len(CLI) + 1 >= 100
