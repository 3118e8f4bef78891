"""Every estimator's mean gradient against the exact gradient of its own objective.

Tolerance: 4 standard errors of the mean of ``num_draws`` independent gradient draws
(check_gradient flags a parameter as biased beyond that). Each family has a planted-bug
control that the same check must catch.
"""

import pyro
import pytest
import torch
from pyro.infer import RenyiELBO

import pyro_lvmle as lv
from tests.objectives import exact
from tests.objectives.exact import (
    BERNOULLI_DATA,
    GAUSSIAN_DATA,
    GAUSSIAN_MODEL,
    bernoulli_guide,
    bernoulli_model,
    gaussian_guide,
)

K = 3


def _init(model, guide, data):
    pyro.poutine.trace(guide).get_trace(data)
    pyro.poutine.trace(model).get_trace(data)


BERNOULLI_CASES = [
    ("iwae-vimco", lambda: lv.TraceIWAE_ELBO(K, "vimco", max_plate_nesting=1), exact.iwae),
    ("iwae-auto", lambda: lv.TraceIWAE_ELBO(K, "auto", max_plate_nesting=1), exact.iwae),
    ("renyi-0.5", lambda: lv.TraceRenyi_ELBO(0.5, K, max_plate_nesting=1), exact.renyi(0.5)),
    ("renyi-1", lambda: lv.TraceRenyi_ELBO(1.0, K, max_plate_nesting=1), exact.elbo),
    ("stl", lambda: lv.TraceSTL_ELBO(K, max_plate_nesting=1), exact.elbo),
    ("tvo-beta0", lambda: lv.TraceTVO_ELBO(K, betas=[0.0], max_plate_nesting=1), exact.elbo),
]


@pytest.mark.parametrize("name,make_loss,objective", BERNOULLI_CASES, ids=[c[0] for c in
                                                                           BERNOULLI_CASES])
def test_discrete_guide_gradients_are_unbiased(name, make_loss, objective):
    _init(bernoulli_model, bernoulli_guide, BERNOULLI_DATA)
    truth = exact.exact_gradient(exact.bernoulli_expected(objective, K))
    assert truth["q_logits"].abs().min() > 1e-3  # the guide gradient is not trivially zero
    check = lv.check_gradient(bernoulli_model, bernoulli_guide, make_loss(), BERNOULLI_DATA,
                              num_draws=2000, exact=truth)
    assert check.biased == [], check.table()


def test_planted_bug_pyros_renyi_elbo_zero_guide_gradient_is_caught():
    # Pyro's RenyiELBO(alpha=0) gives exactly zero for a Bernoulli guide: the check must fail
    _init(bernoulli_model, bernoulli_guide, BERNOULLI_DATA)
    truth = exact.exact_gradient(exact.bernoulli_expected(exact.iwae, K))
    pyros = RenyiELBO(alpha=0.0, num_particles=K, vectorize_particles=True, max_plate_nesting=1)
    check = lv.check_gradient(bernoulli_model, bernoulli_guide, pyros, BERNOULLI_DATA,
                              num_draws=300, exact=truth)
    assert torch.all(check.rows["q_logits"].mean == 0)
    assert "q_logits" in check.biased


def test_rws_wake_gradients_match_their_expectations():
    _init(bernoulli_model, bernoulli_guide, BERNOULLI_DATA)
    truth = exact.exact_gradient(exact.bernoulli_expected(exact.iwae, K))
    wake_phi = exact.exact_gradient(
        exact.bernoulli_expected(None, K, weight_fn=lambda lw: torch.softmax(lw, -1)))
    truth["q_logits"] = wake_phi["q_logits"]
    check = lv.check_gradient(bernoulli_model, bernoulli_guide,
                              lv.TraceRWS_ELBO(K, max_plate_nesting=1), BERNOULLI_DATA,
                              num_draws=2000, exact=truth)
    assert check.biased == [], check.table()


GAUSSIAN_CASES = [
    ("iwae-reparam", lambda: lv.TraceIWAE_ELBO(2, "reparam", max_plate_nesting=1), exact.iwae),
    ("iwae-dreg", lambda: lv.TraceIWAE_ELBO(2, "dreg", max_plate_nesting=1), exact.iwae),
    ("iwae-auto", lambda: lv.TraceIWAE_ELBO(2, "auto", max_plate_nesting=1), exact.iwae),
    ("renyi-0.5", lambda: lv.TraceRenyi_ELBO(0.5, 2, max_plate_nesting=1), exact.renyi(0.5)),
    ("stl", lambda: lv.TraceSTL_ELBO(2, max_plate_nesting=1), exact.elbo),
    ("tvo-beta0", lambda: lv.TraceTVO_ELBO(2, betas=[0.0], max_plate_nesting=1), exact.elbo),
]


@pytest.mark.parametrize("name,make_loss,objective", GAUSSIAN_CASES, ids=[c[0] for c in
                                                                          GAUSSIAN_CASES])
def test_continuous_guide_and_model_gradients_are_unbiased(name, make_loss, objective):
    _init(GAUSSIAN_MODEL, gaussian_guide, GAUSSIAN_DATA)
    truth = exact.exact_gradient(exact.gaussian_expected(objective, 2))
    check = lv.check_gradient(GAUSSIAN_MODEL, gaussian_guide, make_loss(), GAUSSIAN_DATA,
                              num_draws=2000, exact=truth)
    assert check.biased == [], check.table()


def test_planted_bug_iwae_gradient_against_the_elbo_is_caught():
    # the control: the K=2 bound's gradient differs from the ELBO's, and the check sees it
    _init(GAUSSIAN_MODEL, gaussian_guide, GAUSSIAN_DATA)
    wrong = exact.exact_gradient(exact.gaussian_expected(exact.elbo, 1))
    check = lv.check_gradient(GAUSSIAN_MODEL, gaussian_guide,
                              lv.TraceIWAE_ELBO(2, "dreg", max_plate_nesting=1), GAUSSIAN_DATA,
                              num_draws=2000, exact=wrong)
    assert check.biased, check.table()


def test_quadrature_is_converged():
    # log-mean-exp is smooth but not polynomial, so the rule converges slowly; 1e-6 is four
    # orders below the gradient tests' standard errors (about 1e-2)
    _init(GAUSSIAN_MODEL, gaussian_guide, GAUSSIAN_DATA)
    a = exact.gaussian_expected(exact.iwae, 2, num_nodes=40)
    b = exact.gaussian_expected(exact.iwae, 2, num_nodes=80)
    assert abs(a.item() - b.item()) < 1e-6
