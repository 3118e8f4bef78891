"""The integration stage: SAEM and MCEM on the real Theophylline data reach the maximum
likelihood (adaptive Gauss-Hermite quadrature) within 0.05, estimates within 3%.

Deselect locally with ``-m "not integration"``.
"""

import functools

import pytest
import torch

import pyro_lvmle as lv

pytestmark = pytest.mark.integration


@functools.lru_cache(maxsize=1)
def maximum():
    """The MLE and its log-likelihood (L-BFGS on the quadrature likelihood)."""
    model = lv.models.Theophylline(prefix="reference_")
    data = lv.models.load_theophylline(dtype=torch.float64)
    mle = model.mle(data)
    return mle, model.log_marginal(data, mle).item()


def natural(params):
    """ka, CL, V, the omegas and the residual sd: the scale the 3% is read on."""
    return torch.cat([torch.stack([params["tka"], params["tcl"], params["tv"]]).exp(),
                      params["omega"], params["add_sd"].reshape(1)])


def check(model, data):
    mle, best = maximum()
    fit = {k: v.detach() for k, v in model.params().items()}
    gap = best - model.log_marginal(data).item()
    assert -1e-6 <= gap < 0.05, gap
    relative = (natural(fit) - natural(mle)).abs() / natural(mle)
    assert relative.max() < 0.03, relative


def test_saem_reaches_the_maximum_likelihood():
    model = lv.models.Theophylline()
    data = lv.models.load_theophylline()
    saem = lv.SAEM(model, "hmc", burn_in=50, num_chains=64, warmup_steps=30,
                   kernel_options={"num_steps": 4}, statistics=model.sufficient_statistics,
                   m_step=model.maximize_statistics, anneal=("omega", "add_sd"))
    saem.run(data, num_steps=300, progress=False)
    check(model, data)


def test_mcem_reaches_the_maximum_likelihood():
    model = lv.models.Theophylline()
    data = lv.models.load_theophylline()
    mcem = lv.MCEM(model, "hmc", num_samples=5, num_chains=32, warmup_steps=100, tol=0.005,
                   max_num_samples=2000)
    mcem.run(data, num_steps=100, progress=False)
    assert mcem.converged
    check(model, data)
